"""Natural-language-understanding scores with standard errors: MASSIVE's official metrics and plain accuracy.

MASSIVE (``eval_preds`` in github.com/alexa/massive, ``src/massive/utils/training_utils.py``) reports

* intent accuracy;
* slot micro-F1: seqeval's ``f1_score`` over BIO tags made from per-word slot types (``massive.to_bio``),
  after cutting or padding each prediction with ``Other`` to the gold length;
* exact match: the intent and every BIO tag right;

each with the standard error ``sqrt(p (1 - p) / n)`` of a proportion, where n is the number of examples for
accuracy and exact match and, as MASSIVE computes it, the number of words (tag positions) for slot F1.
Scores here are fractions in [0, 1], as MASSIVE reports them; ``metrics.compute('massive', ...)`` turns them
into 0-100 ``MetricResult``s for the evaluation runner.
"""

from __future__ import annotations

import collections
import dataclasses
import math
from typing import Optional, Sequence

from alexatm_jax.evaluation import massive

# Per-example prediction or gold label: (intent, per-word slot types with ``Other`` outside slots).
Parse = tuple[str, Sequence[str]]


@dataclasses.dataclass(frozen=True)
class Estimate:
    """A proportion-like score in [0, 1], its standard error sqrt(p(1-p)/n), and n."""
    value: float
    stderr: float
    n: int

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def proportion_stderr(p: float, n: int) -> float:
    """sqrt(p (1 - p) / n): the standard error of a proportion p measured on n trials (0 for n = 0)."""
    return math.sqrt(p * (1.0 - p) / n) if n > 0 else 0.0


def accuracy_with_stderr(predicted: Sequence, gold: Sequence) -> Estimate:
    """Share of positions where ``predicted[i] == gold[i]`` (any comparable labels), with its stderr."""
    if len(predicted) != len(gold):
        raise ValueError(f"{len(predicted)} predictions but {len(gold)} gold labels; they must pair up")
    if not gold:
        raise ValueError("No examples to score (empty evaluation set?)")
    value = sum(p == g for p, g in zip(predicted, gold)) / len(gold)
    return Estimate(value, proportion_stderr(value, len(gold)), len(gold))


def majority_baseline(labels: Sequence, gold: Optional[Sequence] = None) -> tuple[object, Estimate]:
    """(the most frequent label of ``labels``, the accuracy of always predicting it on ``gold``).

    Pass the training labels and the gold test labels for the usual baseline; with ``gold`` omitted the
    majority label is scored on ``labels`` themselves. Ties go to the smallest label (sorted by ``str``), so
    the result does not depend on the order of the data."""
    if not labels:
        raise ValueError("majority_baseline needs at least one label")
    counts = collections.Counter(labels)
    top = max(counts.values())
    label = min((lab for lab, count in counts.items() if count == top), key=str)
    gold = labels if gold is None else gold
    return label, accuracy_with_stderr([label] * len(gold), gold)


def _fitted(predicted: Sequence[str], length: int) -> list[str]:
    """A predicted tag list cut or padded with ``Other`` to the gold length (MASSIVE's ``pad``)."""
    predicted = list(predicted)[:length]
    return predicted + [massive.OUTSIDE] * (length - len(predicted))


def slot_micro_f1(predicted_tags: Sequence[Sequence[str]], gold_tags: Sequence[Sequence[str]]) -> Estimate:
    """seqeval micro-F1 over the BIO forms of per-word slot types; n = the number of gold words."""
    from seqeval.metrics import f1_score

    if len(predicted_tags) != len(gold_tags):
        raise ValueError(f"{len(predicted_tags)} predicted tag lists but {len(gold_tags)} gold ones")
    gold_bio = [massive.to_bio(g) for g in gold_tags]
    predicted_bio = [massive.to_bio(_fitted(p, len(g))) for p, g in zip(predicted_tags, gold_tags)]
    # zero_division=0 is seqeval's default value without its warning (no entities at all scores 0).
    value = float(f1_score(gold_bio, predicted_bio, zero_division=0))
    words = sum(len(g) for g in gold_tags)
    return Estimate(value, proportion_stderr(value, words), words)


def exact_match(predicted: Sequence[Parse], gold: Sequence[Parse]) -> Estimate:
    """Share of examples whose intent and BIO tags (after fitting to the gold length) are all right."""
    hits = [p_intent == g_intent and massive.to_bio(_fitted(p_tags, len(g_tags))) == massive.to_bio(g_tags)
            for (p_intent, p_tags), (g_intent, g_tags) in zip(predicted, gold)]
    return accuracy_with_stderr(hits, [True] * len(hits))


def nlu_scores(predicted: Sequence[Parse], gold: Sequence[Parse]) -> dict[str, Estimate]:
    """MASSIVE's three official scores for paired lists of (intent, per-word slot types).

    -> {'intent_acc', 'slot_micro_f1', 'ex_match_acc'}: ``Estimate``s (value in [0, 1], stderr, n)."""
    if len(predicted) != len(gold):
        raise ValueError(f"{len(predicted)} predictions but {len(gold)} gold parses; they must pair up")
    if not gold:
        raise ValueError("No examples to score (empty evaluation set?)")
    return {
        "intent_acc": accuracy_with_stderr([p[0] for p in predicted], [g[0] for g in gold]),
        "slot_micro_f1": slot_micro_f1([p[1] for p in predicted], [g[1] for g in gold]),
        "ex_match_acc": exact_match(predicted, gold),
    }


def t2t_scores(predictions: Sequence[str], references: Sequence[str]) -> dict[str, Estimate]:
    """``nlu_scores`` of text-to-text strings (``'Other time alarm_set'``): the reference gives each
    example's word count, and a prediction of the wrong length is cut or padded to it."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references; they must pair up")
    gold = [massive.parse_t2t_target(r) for r in references]
    predicted = [massive.parse_t2t_target(p, len(g_tags)) for p, (g_tags, _) in zip(predictions, gold)]
    return nlu_scores([(intent, tags) for tags, intent in predicted], [(intent, tags) for tags, intent in gold])
