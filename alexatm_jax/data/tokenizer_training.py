"""Train an AlexaTM-style SentencePiece unigram vocabulary (used by the build script and ``train-tokenizer``).

Id layout follows the seqio/T5 convention so that seqio's padding (0) and EOS (1) are right without
remapping: ``[PAD]``=0, ``</s>``=1, ``<unk>``=2, ``<s>``=3, then the user-defined AlexaTM tokens
``[MASK] [CLM] [DOC]``, the UL2 mode tokens ``[NLU] [NLG] [S2S]``, and a block of reserved tags
``[TAG_0]``... for downstream use (prompt markers, task tags). Byte fallback is on, so text in any script
encodes without ``<unk>``. seqio appends its ``extra_ids`` (T5 sentinels) after the SentencePiece pieces.
"""

from __future__ import annotations

import os
import tempfile
from typing import Mapping, Sequence

ALEXATM_TOKENS = ("[MASK]", "[CLM]", "[DOC]")
UL2_MODE_TOKENS = ("[NLU]", "[NLG]", "[S2S]")
NUM_RESERVED_TAGS = 32
RESERVED_TAGS = tuple(f"[TAG_{i}]" for i in range(NUM_RESERVED_TAGS))
USER_DEFINED_SYMBOLS = ALEXATM_TOKENS + UL2_MODE_TOKENS + RESERVED_TAGS
# Smallest vocabulary that still leaves room for byte fallback (256) and the special tokens.
MIN_VOCAB_SIZE = 4 + len(USER_DEFINED_SYMBOLS) + 256 + 64


def language_repeats(char_counts: Mapping[str, int], alpha: float = 0.5, max_repeat: int = 32) -> dict:
    """How often to repeat each language's text so its share follows n^alpha (as mixtures sample), capped.

    Without this the unigram model spends almost no pieces on low-resource scripts (they would encode
    as single characters or bytes).
    """
    if not char_counts:
        return {}
    largest = max(char_counts.values())
    return {lang: max(1, min(max_repeat, round((largest / max(n, 1)) ** (1.0 - alpha))))
            for lang, n in char_counts.items()}


def train_sentencepiece(texts_by_lang: Mapping[str, Sequence[str]], model_prefix: str, *, vocab_size: int = 8092,
                        alpha: float = 0.5, character_coverage: float = 0.9995, seed: int = 0,
                        num_threads: int = 1) -> str:
    """Train a unigram model on ``texts_by_lang`` (lang -> documents); writes ``<prefix>.model/.vocab``.

    Deterministic for a seed with ``num_threads=1`` (the build script commits the result). Written to a
    temporary folder first and moved into place, so a crash never leaves a half-written model.
    Returns the path of the ``.model`` file.
    """
    import sentencepiece as spm

    if vocab_size < MIN_VOCAB_SIZE:
        raise ValueError(f"vocab_size {vocab_size} is too small: use at least {MIN_VOCAB_SIZE} "
                         "(specials + 256 byte-fallback pieces + some real pieces)")
    texts_by_lang = {lang: [t for t in texts if t.strip()] for lang, texts in texts_by_lang.items()}
    texts_by_lang = {lang: texts for lang, texts in texts_by_lang.items() if texts}
    if not texts_by_lang:
        raise ValueError("no text to train the tokenizer on: all documents are empty")
    repeats = language_repeats({lang: sum(map(len, texts)) for lang, texts in texts_by_lang.items()}, alpha)
    out_dir = prepare_output_prefix(model_prefix)
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".spm-") as tmp:
        corpus = os.path.join(tmp, "corpus.txt")
        with open(corpus, "w", encoding="utf-8") as f:
            for lang in sorted(texts_by_lang):
                for _ in range(repeats[lang]):
                    for text in texts_by_lang[lang]:
                        for line in text.split("\n"):
                            if line.strip():
                                f.write(line.strip() + "\n")
        spm.set_random_generator_seed(seed)
        tmp_prefix = os.path.join(tmp, "spm")
        spm.SentencePieceTrainer.train(
            input=corpus, model_prefix=tmp_prefix, model_type="unigram", vocab_size=vocab_size,
            pad_id=0, eos_id=1, unk_id=2, bos_id=3, pad_piece="[PAD]", eos_piece="</s>", unk_piece="<unk>",
            bos_piece="<s>", user_defined_symbols=list(USER_DEFINED_SYMBOLS), byte_fallback=True,
            character_coverage=character_coverage, split_digits=True, num_threads=num_threads,
            minloglevel=2,
            input_sentence_size=0, shuffle_input_sentence=False, max_sentence_length=8192)
        _strip_paths(tmp_prefix + ".model", os.path.basename(model_prefix))
        for ext in (".model", ".vocab"):
            os.replace(tmp_prefix + ext, model_prefix + ext)
    return model_prefix + ".model"


def prepare_output_prefix(model_prefix: str) -> str:
    """Creates the folder of ``model_prefix`` and returns it; a ``ValueError`` naming the prefix when it is a
    directory or its folder cannot be created or written (checked before any text is read or trained on)."""
    if not os.path.basename(model_prefix) or os.path.isdir(model_prefix):
        raise ValueError(f"{model_prefix!r} is a directory; give a file prefix such as "
                         f"{os.path.join(model_prefix, 'spm')!r} (writes .model and .vocab with it)")
    out_dir = os.path.dirname(os.path.abspath(model_prefix))
    try:
        os.makedirs(out_dir, exist_ok=True)
    except OSError as error:
        raise ValueError(f"cannot create the folder {out_dir} for {model_prefix}.model: "
                         f"{error.strerror or error}") from None
    if not os.access(out_dir, os.W_OK):
        raise ValueError(f"cannot write {model_prefix}.model: the folder {out_dir} is not writable")
    return out_dir


def _strip_paths(model_path: str, name: str) -> None:
    """The trainer records its (random) temporary input path and prefix in the model: replace them, so the
    same corpus and settings give byte-identical models."""
    from sentencepiece import sentencepiece_model_pb2

    proto = sentencepiece_model_pb2.ModelProto()
    with open(model_path, "rb") as f:
        proto.ParseFromString(f.read())
    del proto.trainer_spec.input[:]
    proto.trainer_spec.input.append("corpus.txt")
    proto.trainer_spec.model_prefix = name
    with open(model_path, "wb") as f:
        f.write(proto.SerializeToString())


def special_token_ids_from_processor(sp) -> dict:
    """Ids of the special tokens in a SentencePiece processor (-1 where a piece is missing)."""
    names = ("[PAD]", "</s>", "<unk>", "<s>") + USER_DEFINED_SYMBOLS
    out = {}
    for name in names:
        piece_id = sp.piece_to_id(name)
        out[name] = piece_id if sp.id_to_piece(piece_id) == name else -1
    return out

