"""The SentencePiece vocabulary as a ``seqio.SentencePieceVocabulary``, and the ids of its special tokens."""

from __future__ import annotations

import functools
import os
from typing import Optional

# T5's 100 sentinels: SentencePiece's 8092 pieces + 100 = 8192, the tiny preset's vocab_size.
DEFAULT_EXTRA_IDS = 100


@functools.lru_cache(maxsize=16)
def _cached_vocabulary(path: str, extra_ids: int):
    import seqio

    return seqio.SentencePieceVocabulary(path, extra_ids=extra_ids)


def get_vocabulary(path: Optional[str] = None, extra_ids: int = DEFAULT_EXTRA_IDS):
    """A ``seqio.SentencePieceVocabulary`` for ``path`` (default: the bundled ``alexatm_demo.model``).

    ``extra_ids`` are seqio's sentinel ids appended after the SentencePiece pieces (T5 span corruption
    counts down from the last one). Cached per (path, extra_ids) so every task shares one object.
    """
    from alexatm_jax.data import bundled

    path = os.path.abspath(path) if path else bundled.bundled_spm_path()
    if not os.path.exists(path):
        raise FileNotFoundError(f"SentencePiece model {path} not found: train one with "
                                "`alexatm-jax train-tokenizer` or omit the path for the bundled model")
    if extra_ids < 0:
        raise ValueError(f"extra_ids must be >= 0, got {extra_ids}")
    _check_sentencepiece(path)  # seqio loads the model lazily, deep inside the pipeline; fail here instead
    return _cached_vocabulary(path, int(extra_ids))


@functools.lru_cache(maxsize=16)
def _check_sentencepiece(path: str) -> None:
    load_sentencepiece(path)


def load_sentencepiece(path):
    """A ``sentencepiece.SentencePieceProcessor`` for the model file ``path`` (local or a URL that
    ``alexatm_jax.storage`` reads), or a ``ValueError`` naming the file when it is not a SentencePiece model
    (``FileNotFoundError`` when it does not exist). Read as bytes, so remote directories work too."""
    import sentencepiece as spm

    from alexatm_jax import storage

    resolved = storage.resolve(path)
    try:
        proto = resolved.read_bytes()
    except FileNotFoundError:
        raise FileNotFoundError(f"SentencePiece model {path} not found") from None
    except IsADirectoryError:
        raise ValueError(f"{path} is a directory, not a SentencePiece model file (.model)") from None
    fix = "use the .model file the model was trained with, or train one with `alexatm-jax train-tokenizer`"
    if not proto:
        raise ValueError(f"{path} is empty, not a SentencePiece model; {fix}")
    try:
        processor = spm.SentencePieceProcessor(model_proto=proto)
    except (RuntimeError, OSError) as error:
        reason = str(error).strip().removeprefix("INTERNAL: ") or type(error).__name__
        if "ParseFromArray" in reason or "could not parse" in reason:
            reason = "it does not parse as a SentencePiece model protobuf"
        raise ValueError(f"{path} is not a SentencePiece model ({reason}); {fix}") from None
    if processor.get_piece_size() <= 0:
        raise ValueError(f"{path} is a SentencePiece model with no pieces; {fix}")
    return processor


def special_token_ids(vocab) -> dict:
    """``{"pad", "eos", "unk", "bos", "mask", "clm", "doc", "nlu", "nlg", "s2s", "tags": [...],
    "sentinels": [first, ..., last]}``: the ids every preprocessor and prompt needs.

    Raises ``ValueError`` naming the missing piece when the model lacks an AlexaTM special token (for
    example a T5 vocabulary): train one with ``alexatm-jax train-tokenizer``.
    """
    from alexatm_jax.data.tokenizer_training import RESERVED_TAGS, special_token_ids_from_processor

    sp = vocab.tokenizer
    found = special_token_ids_from_processor(sp)
    names = {"pad": "[PAD]", "eos": "</s>", "unk": "<unk>", "bos": "<s>", "mask": "[MASK]", "clm": "[CLM]",
             "doc": "[DOC]", "nlu": "[NLU]", "nlg": "[NLG]", "s2s": "[S2S]"}
    out = {}
    for key, piece in names.items():
        if found[piece] < 0 and key not in ("pad", "bos"):
            raise ValueError(f"the SentencePiece model {vocab.sentencepiece_model_file} has no {piece} piece: "
                             "train an AlexaTM vocabulary with `alexatm-jax train-tokenizer`")
        out[key] = found[piece]
    out["pad"] = sp.pad_id() if sp.pad_id() >= 0 else 0
    out["eos"] = sp.eos_id()
    out["tags"] = [found[t] for t in RESERVED_TAGS if found[t] >= 0]
    # seqio appends the extra ids at the end; T5 sentinel i is vocab_size - 1 - i.
    out["sentinels"] = [vocab.vocab_size - 1 - i for i in range(vocab.extra_ids)]
    return out
