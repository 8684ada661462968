"""From records to prompts: field extraction, shot selection, sentence-boundary truncation, rendering.

All pure functions of a ``TaskCard`` and plain data; tokenisation enters only as callables.

A shot renders as ``template + target_prefix + target + example_separator``; the query as ``template``
alone; the prompt is the shots followed by the query, preceded by the CLM token and a space in CLM mode.
With AlexaTM's Flores-101 card this gives exactly
``[CLM] Sentence:  {src}; Translation in French: {tgt}; Sentence:  {src}; Translation in French:``.
"""

from __future__ import annotations

import random
import re
from typing import Callable, Optional, Sequence

from alexatm_jax.evaluation.cards import CardError, TaskCard
from alexatm_jax.evaluation.metrics import MultilingualTokenizer

_MISSING = object()


def get_field(record: dict, path: str):
    """``'texts.fr'`` -> record['texts']['fr']; ``_MISSING`` when any step is absent."""
    value = record
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            return _MISSING
        value = value[part]
    return value


def example_values(card: TaskCard, record: dict) -> Optional[dict]:
    """The card's fields of ``record`` as strings ({'source': ..., 'target': ...}), or None when a field is
    missing and the card allows skipping (``data.skip_missing``); otherwise a missing field is an error."""
    values = {}
    for name, path in card.field_paths().items():
        value = get_field(record, path)
        if value is _MISSING or value is None:
            if card.data["skip_missing"]:
                return None
            raise CardError(
                f"Task {card.name}: record {record.get('id', '?')!r} has no field {path!r} (data.fields.{name}). "
                f"Its keys are {sorted(record)}; fix the data or the card's data.fields (or set "
                f"data.skip_missing: true when some records legitimately lack it).")
        values[name] = value if isinstance(value, str) else str(value)
    return values


def _matches_filter(card: TaskCard, record: dict) -> bool:
    for path, wanted in card.data["filter"].items():
        value = get_field(record, path)
        if value is _MISSING or str(value) != card.fill(str(wanted)):
            return False
    return True


def split_records(card: TaskCard, records: Sequence[dict], has_splits: bool = True
                  ) -> tuple[list[tuple[dict, dict]], list[tuple[dict, dict]]]:
    """-> (shot pool, evaluation set), each a list of (record, values), after the card's filter.

    Without splits in the data (``has_splits=False``: a user's file with no ``split`` key) every record is
    an evaluation record and the shot pool is empty."""
    shot_split, eval_split = card.data["shot_split"], card.data["eval_split"]
    pool, evaluation = [], []
    for record in records:
        if not _matches_filter(card, record):
            continue
        split = record.get("split")
        if has_splits and split not in (shot_split, eval_split):
            continue
        values = example_values(card, record)
        if values is None:
            continue
        if not has_splits or split == eval_split:
            evaluation.append((record, values))
        else:
            pool.append((record, values))
    return pool, evaluation


def word_count(text: str) -> int:
    """Words for the shots' length filter: Unicode word tokens (CJK characters count one each)."""
    return len(MultilingualTokenizer().tokenize(text))


def choose_shots(card: TaskCard, pool: Sequence[tuple[dict, dict]], count: int,
                 seed: Optional[int] = None) -> list[tuple[dict, dict]]:
    """``count`` shots from the pool: the first ones (AlexaTM's Flores protocol) or a seeded random sample,
    after the ``shots.max_words`` filter on the source field (AlexaTM's XSum: documents under 192 words)."""
    if count == 0:
        return []
    max_words = card.shots.get("max_words")
    field = card.shots.get("max_words_field", "source")
    eligible = [item for item in pool if max_words is None or word_count(item[1].get(field, "")) < max_words]
    if len(eligible) < count:
        raise CardError(
            f"Task {card.name}: {count} shots requested but only {len(eligible)} eligible examples in the "
            f"'{card.data['shot_split']}' split (of {len(pool)}; shots.max_words={max_words}). Use fewer shots.")
    if card.shots["selection"] == "first":
        return list(eligible[:count])
    rng = random.Random(card.shots["seed"] if seed is None else seed)
    return rng.sample(list(eligible), count)


# Sentence ends: . ! ? (and their full-width / Devanagari forms) followed by space, or CJK/danda ends.
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|(?<=[。！？।॥])\s*|\n+")


def split_sentences(text: str) -> list[str]:
    """Sentences of ``text``, each keeping its trailing whitespace so that ''.join gives the text back."""
    pieces, start = [], 0
    for match in _SENTENCE_END.finditer(text):
        if match.end() > start:
            pieces.append(text[start:match.end()])
            start = match.end()
    if start < len(text):
        pieces.append(text[start:])
    return pieces


def truncate_at_sentence(text: str, max_tokens: int, count_tokens: Callable[[str], int],
                         cut_tokens: Callable[[str, int], str]) -> tuple[str, bool]:
    """The longest prefix of whole sentences of ``text`` within ``max_tokens`` tokens (AlexaTM's XSum:
    550 tokens). If even the first sentence is longer, it is cut at the token budget. Returns (text, cut?)."""
    if count_tokens(text) <= max_tokens:
        return text, False
    kept = ""
    for sentence in split_sentences(text):
        if count_tokens((kept + sentence).rstrip()) > max_tokens:
            break
        kept += sentence
    if not kept.strip():
        return cut_tokens(text, max_tokens), True
    return kept.rstrip(), True


def render_example(card: TaskCard, values: dict, with_target: bool, target: Optional[str] = None) -> str:
    text = card.prompt["template"].format_map({**card.values(), **values})
    if with_target:
        text += card.prompt["target_prefix"] + (values["target"] if target is None else target)
        text += card.prompt["example_separator"]
    return text


def render_prompt(card: TaskCard, shots: Sequence[dict], query: dict,
                  shot_targets: Optional[Sequence[str]] = None) -> str:
    """The full prompt text: [CLM token + ' '] + rendered shots + the query's template.

    ``shot_targets`` replaces each shot's ``target`` value (rank classification: the gold choice text)."""
    body = "".join(render_example(card, s, True, None if shot_targets is None else shot_targets[i])
                   for i, s in enumerate(shots))
    body += render_example(card, query, False)
    return f"{card.prompt['clm_token']} {body}" if card.prompt["mode"] == "clm" else body


def postprocess(card: TaskCard, text: str) -> str:
    """Cuts the generated text at the first cut string (the example separator by default), then strips."""
    for cut in card.cut_at:
        index = text.find(cut)
        if index >= 0:
            text = text[:index]
    return text.strip() if card.postprocess.get("strip", True) else text
