"""Corpus metrics with their signatures: BLEU, chrF, chrF++, spBLEU, multilingual ROUGE, exact match, accuracy.

Every metric returns a ``MetricResult`` (name, score on a 0-100 scale, signature). Scores come from the
reference libraries themselves (sacrebleu, rouge-score); this module only chooses their settings and, where
the defaults are wrong for multilingual text, the tokenizer:

* spBLEU uses sacrebleu's official ``flores101`` SentencePiece tokenizer when its model file is already in
  sacrebleu's cache (it cannot be downloaded here). Otherwise it tokenises with a SentencePiece model we
  are given and scores with ``tokenize='none'``, and the signature says so.
* ROUGE uses rouge-score with a Unicode-aware tokenizer (``MultilingualTokenizer``): rouge-score's default
  keeps only ``[a-z0-9]``, so identical Russian or Japanese strings score 0.
"""

from __future__ import annotations

import dataclasses
import os
import unicodedata
from typing import Callable, Optional, Sequence

# "massive": MASSIVE's intent accuracy, slot micro-F1 and exact match of text-to-text outputs (nlu_metrics.py).
METRIC_NAMES = ("bleu", "chrf", "chrf++", "spbleu", "rouge", "exact_match", "massive", "accuracy")


@dataclasses.dataclass(frozen=True)
class MetricResult:
    name: str
    score: float  # 0-100
    signature: str
    extra: dict = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"name": self.name, "score": self.score, "signature": self.signature, **self.extra}


def _check(predictions: Sequence[str], references: Sequence[str]):
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references; they must pair up")
    if not predictions:
        raise ValueError("No predictions to score (empty evaluation set?)")


# ----------------------------------------------------------------------------------------------------------
# sacrebleu metrics
# ----------------------------------------------------------------------------------------------------------

def bleu(predictions: Sequence[str], references: Sequence[str], tokenize: Optional[str] = None) -> MetricResult:
    """sacrebleu corpus BLEU (default tokenizer ``13a``; ``tokenize`` overrides, e.g. 'ja-mecab' if installed)."""
    import sacrebleu

    _check(predictions, references)
    metric = sacrebleu.metrics.BLEU(**({} if tokenize is None else {"tokenize": tokenize}))
    result = metric.corpus_score(list(predictions), [list(references)])
    return MetricResult("bleu", float(result.score), str(metric.get_signature()))


def chrf(predictions: Sequence[str], references: Sequence[str], word_order: int = 0) -> MetricResult:
    """sacrebleu corpus chrF (``word_order=0``) or chrF++ (``word_order=2``)."""
    import sacrebleu

    _check(predictions, references)
    metric = sacrebleu.metrics.CHRF(word_order=word_order)
    result = metric.corpus_score(list(predictions), [list(references)])
    return MetricResult("chrf++" if word_order else "chrf", float(result.score), str(metric.get_signature()))


def official_flores_spm_path() -> str:
    """Where sacrebleu keeps the official Flores-101 SentencePiece model (present only if downloaded before)."""
    from sacrebleu.tokenizers import tokenizer_spm
    from sacrebleu import utils

    url = tokenizer_spm.SPM_MODELS["flores101"]["url"]
    return os.path.join(utils.SACREBLEU_DIR, "models", os.path.basename(url))


def spbleu(predictions: Sequence[str], references: Sequence[str],
           spm_path: Optional[str] = None) -> MetricResult:
    """spBLEU: BLEU over SentencePiece pieces.

    With the official Flores-101 model in sacrebleu's cache: sacrebleu's ``flores101`` tokenizer (the
    number papers report). Otherwise: pieces of ``spm_path`` joined by spaces, scored with
    ``tokenize='none'``; comparable across systems scored with the same model, but not with published
    Flores-101 spBLEU, and labelled as such.
    """
    import sacrebleu

    _check(predictions, references)
    if os.path.exists(official_flores_spm_path()):
        metric = sacrebleu.metrics.BLEU(tokenize="flores101")
        result = metric.corpus_score(list(predictions), [list(references)])
        return MetricResult("spbleu", float(result.score), str(metric.get_signature()),
                            {"tokenizer": "official flores101"})
    if spm_path is None:
        raise ValueError(
            "spBLEU needs a SentencePiece model: the official Flores-101 tokenizer is not in sacrebleu's cache "
            f"({official_flores_spm_path()}) and cannot be downloaded here. Pass a SentencePiece model "
            "(the checkpoint's tokenizer is used by default) or place the official model file there.")
    pieces = sentencepiece_pieces(spm_path)
    metric = sacrebleu.metrics.BLEU(tokenize="none")
    result = metric.corpus_score([pieces(p) for p in predictions], [[pieces(r) for r in references]])
    signature = (f"{metric.get_signature()}|spm:{os.path.basename(spm_path)} "
                 f"(spBLEU(spm={os.path.basename(spm_path)}), not the official flores101 tokenizer)")
    return MetricResult("spbleu", float(result.score), signature,
                        {"tokenizer": f"spm={os.path.basename(spm_path)}, not the official flores101 tokenizer"})


def sentencepiece_pieces(spm_path: str) -> Callable[[str], str]:
    """A function text -> its SentencePiece pieces joined by single spaces (what sacrebleu's spm does)."""
    import sentencepiece as spm

    from alexatm_jax import storage

    path = storage.resolve(spm_path)  # read as bytes: the model may sit in a remote (gs://) model directory
    if not path.exists():
        raise FileNotFoundError(f"SentencePiece model {spm_path} does not exist")
    processor = spm.SentencePieceProcessor(model_proto=path.read_bytes())
    return lambda text: " ".join(processor.encode(text, out_type=str))


# ----------------------------------------------------------------------------------------------------------
# ROUGE
# ----------------------------------------------------------------------------------------------------------

def _is_cjk(char: str) -> bool:
    code = ord(char)
    return (0x4E00 <= code <= 0x9FFF or 0x3400 <= code <= 0x4DBF or 0x20000 <= code <= 0x2FA1F
            or 0xF900 <= code <= 0xFAFF  # CJK ideographs
            or 0x3040 <= code <= 0x30FF or 0x31F0 <= code <= 0x31FF or 0xFF66 <= code <= 0xFF9F  # kana
            or 0xAC00 <= code <= 0xD7AF  # Hangul syllables
            or 0x0E00 <= code <= 0x0E7F)  # Thai (no spaces between words)


class MultilingualTokenizer:
    """Unicode-aware ROUGE tokenizer (rouge-score's ``Tokenizer`` interface: ``tokenize(text) -> list``).

    NFKC-normalises and lower-cases; a token is a maximal run of letters, combining marks and digits (so
    Devanagari or Arabic words keep their vowel signs), except that CJK ideographs, kana, Hangul and Thai
    characters are one token each (those scripts do not separate words with spaces). Punctuation and
    symbols separate tokens and are dropped, as rouge-score's default tokenizer does for ASCII.
    Hand-written because rouge-score ships only an ASCII tokenizer and the ``regex`` package (with \\p{M})
    is not a dependency here.
    """

    def tokenize(self, text: str) -> list[str]:
        tokens, current = [], []
        for char in unicodedata.normalize("NFKC", text).lower():
            if _is_cjk(char):
                if current:
                    tokens.append("".join(current))
                    current = []
                tokens.append(char)
            elif unicodedata.category(char)[0] in "LMN":
                current.append(char)
            elif current:
                tokens.append("".join(current))
                current = []
        if current:
            tokens.append("".join(current))
        return tokens


def rouge(predictions: Sequence[str], references: Sequence[str],
          rouge_types: Sequence[str] = ("rouge1", "rouge2", "rougeL")) -> dict[str, MetricResult]:
    """rouge-score F-measures (mean over examples, x100) with ``MultilingualTokenizer``, no stemming."""
    from rouge_score import rouge_scorer

    _check(predictions, references)
    scorer = rouge_scorer.RougeScorer(list(rouge_types), use_stemmer=False, tokenizer=MultilingualTokenizer())
    totals = {t: 0.0 for t in rouge_types}
    for prediction, reference in zip(predictions, references):
        scores = scorer.score(reference, prediction)
        for t in rouge_types:
            totals[t] += scores[t].fmeasure
    signature = "rouge-score|tokenizer:alexatm_jax.multilingual(nfkc,lower,cjk-chars)|stemmer:no|f-measure|mean"
    return {t: MetricResult(t, 100.0 * totals[t] / len(predictions), signature) for t in rouge_types}


# ----------------------------------------------------------------------------------------------------------
# Exact match and accuracy
# ----------------------------------------------------------------------------------------------------------

def normalize_answer(text: str) -> str:
    """NFKC, case-folded, whitespace-collapsed: the comparison exact match uses."""
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def exact_match(predictions: Sequence[str], references: Sequence[str]) -> MetricResult:
    _check(predictions, references)
    hits = sum(normalize_answer(p) == normalize_answer(r) for p, r in zip(predictions, references))
    return MetricResult("exact_match", 100.0 * hits / len(predictions),
                        "exact_match|normalize:nfkc,casefold,whitespace")


def accuracy(predicted_indices: Sequence[int], gold_indices: Sequence[int]) -> MetricResult:
    """Rank classification: the share of examples whose highest-scoring candidate is the gold one."""
    if len(predicted_indices) != len(gold_indices) or not gold_indices:
        raise ValueError(f"accuracy needs as many predictions ({len(predicted_indices)}) as gold labels "
                         f"({len(gold_indices)}), and at least one")
    from alexatm_jax.evaluation.nlu_metrics import proportion_stderr

    n = len(gold_indices)
    hits = sum(int(p) == int(g) for p, g in zip(predicted_indices, gold_indices))
    return MetricResult("accuracy", 100.0 * hits / n, "accuracy|rank-classification",
                        {"stderr": 100.0 * proportion_stderr(hits / n, n), "n": n})


def compute(name: str, predictions: Sequence[str], references: Sequence[str], *,
            spm_path: Optional[str] = None) -> list[MetricResult]:
    """One metric by its task-card name -> one or more results (ROUGE gives rouge1/2/L)."""
    if name == "bleu":
        return [bleu(predictions, references)]
    if name == "chrf":
        return [chrf(predictions, references)]
    if name == "chrf++":
        return [chrf(predictions, references, word_order=2)]
    if name == "spbleu":
        return [spbleu(predictions, references, spm_path)]
    if name == "rouge":
        return list(rouge(predictions, references).values())
    if name == "exact_match":
        return [exact_match(predictions, references)]
    if name == "massive":
        from alexatm_jax.evaluation import nlu_metrics

        return [MetricResult(key, 100.0 * e.value, f"massive|{key}|seqeval" if key == "slot_micro_f1" else
                             f"massive|{key}", {"stderr": 100.0 * e.stderr, "n": e.n})
                for key, e in nlu_metrics.t2t_scores(predictions, references).items()]
    raise ValueError(f"Unknown metric {name!r}; choose from {', '.join(METRIC_NAMES)}")
