"""MASSIVE (FitzGerald et al. 2022) in its release format: reading, slot annotations -> words and tags, and the
mT5 text-to-text format of the MASSIVE baselines.

The release is one JSON-lines file per locale (``1.0/data/<locale>.jsonl``); each line has ``id, locale,
partition (train|dev|test|MMNLU-22), scenario, intent, utt, annot_utt, worker_id, slot_method, judgments``.
Slots are written inline in ``annot_utt`` as ``[slot_type : words]``; the ``MMNLU-22`` lines carry no labels.

Words and tags follow MASSIVE's own conversion (``scripts/create_hf_dataset.py`` in github.com/alexa/massive):

* words are ``utt`` split on whitespace, each tagged with the slot type of its ``annot_utt`` chunk or
  ``Other``; punctuation attached to a word belongs to the word (``pm]?`` is the word ``pm?`` in the slot);
* ja-JP, zh-CN and zh-TW are split per character, except that an all-ASCII chunk (a Latin word, a number in
  a code-switched utterance) stays one word; there the words come from ``annot_utt`` itself;
* a word's tag is its slot type (the same name repeated over a multi-word slot), and BIO tags come from
  MASSIVE's ``convert_to_bio``: ``B-`` where the type changes, ``I-`` where it repeats, ``O`` for ``Other``.
  So two adjacent slots of the same type become one span, as in MASSIVE's scoring.

Where MASSIVE's script goes wrong on an annotation (a closing ``]`` followed by punctuation leaves its slot
open for the rest of the utterance; an all-ASCII ``word]`` in a per-character locale does the same) this
parser closes the slot at the ``]``, as the annotation says. On every annotation the script handles
correctly the two agree. Annotations the script cannot handle at all (unbalanced brackets, an empty slot, a
word count that differs from ``utt``) raise ``ValueError`` naming the file and line.

Text-to-text (MASSIVE's mT5 baseline, ``t2t_args`` of ``examples/mt5_base_t2t_20220411.yml``): the input is
``Annotate: `` + the words joined by spaces; the target is one tag per word (``Other`` outside slots, the
slot type inside) followed by the intent, all joined by spaces.

The parser is written here rather than taken from the ``massive`` package: that package pulls in torch,
transformers and datasets, and its conversion lives in a script, not an importable function.
"""

from __future__ import annotations

import os
import re
from typing import Iterable, Optional, Sequence

DEFAULT_LOCALE = "en-US"
PARTITIONS = ("train", "dev", "test")
UNLABELLED_PARTITIONS = ("MMNLU-22",)
CHAR_SPLIT_LOCALES = ("ja-JP", "zh-CN", "zh-TW")
OUTSIDE = "Other"
INPUT_PROMPT = "Annotate: "
# Where a release folder keeps its locale files, relative to the folder the user names.
_DATA_SUBDIRS = ("", "data", os.path.join("1.0", "data"), os.path.join("1.1", "data"))

# "[slot_type : " — the slot type is one whitespace-free name (date, place_name, ...).
_SLOT_OPEN = re.compile(r"\[([^\s\[\]:]+)\s*:\s*")


class AnnotationError(ValueError):
    """An ``annot_utt`` that does not follow ``[slot_type : words]``; the message says where and why."""


# ----------------------------------------------------------------------------------------------------------
# annot_utt -> words and tags
# ----------------------------------------------------------------------------------------------------------

def _tagged_characters(annot_utt: str) -> list[tuple[str, str]]:
    """Every character of ``annot_utt`` outside the markup, with the slot type it lies in (``Other``
    outside slots). Spaces are kept: they separate words."""
    out: list[tuple[str, str]] = []
    label, slot_start, i = OUTSIDE, 0, 0
    while i < len(annot_utt):
        char = annot_utt[i]
        if char == "[":
            if label != OUTSIDE:
                raise AnnotationError(f"'[' at character {i} opens a slot inside slot '{label}'")
            match = _SLOT_OPEN.match(annot_utt, i)
            if match is None:
                raise AnnotationError(f"'[' at character {i} is not followed by 'slot_type : '")
            label, slot_start, i = match.group(1), len(out), match.end()
            continue
        if char == "]":
            if label == OUTSIDE:
                raise AnnotationError(f"']' at character {i} closes no slot")
            if not "".join(c for c, _ in out[slot_start:]).strip():
                raise AnnotationError(f"slot '{label}' ending at character {i} has no words")
            label, i = OUTSIDE, i + 1
            continue
        out.append((char, label))
        i += 1
    if label != OUTSIDE:
        raise AnnotationError(f"slot '{label}' is not closed with ']'")
    return out


def _chunks(characters: Sequence[tuple[str, str]]) -> list[list[tuple[str, str]]]:
    """Whitespace-separated chunks (``str.split()``'s notion of whitespace) of tagged characters."""
    chunks, current = [], []
    for char, label in characters:
        if char.isspace():
            if current:
                chunks.append(current)
            current = []
        else:
            current.append((char, label))
    if current:
        chunks.append(current)
    return chunks


def _chunk_label(chunk: Sequence[tuple[str, str]]) -> str:
    """A chunk's tag: the first slot type among its characters, so that punctuation attached to a slot word
    (``hoy]?``, ``¿[date : hoy]``) does not take the word out of its slot."""
    return next((label for _, label in chunk if label != OUTSIDE), OUTSIDE)


def split_per_character(locale: str) -> bool:
    """Whether MASSIVE splits ``locale`` per character (ja-JP, zh-CN, zh-TW) instead of on whitespace."""
    return locale in CHAR_SPLIT_LOCALES


def parse_annotation(annot_utt: str, locale: str, utt: Optional[str] = None) -> tuple[list[str], list[str]]:
    """``annot_utt`` -> (words, tags), both of length N: one slot type or ``Other`` per word.

    Whitespace locales take the words from ``utt`` (as MASSIVE does; ``utt`` defaults to the annotation's
    own text) and must have one annotation chunk per word. Per-character locales take them from the
    annotation: every character a word, except all-ASCII chunks, which stay whole.
    Raises ``AnnotationError`` for malformed markup or a word-count mismatch.
    """
    chunks = _chunks(_tagged_characters(annot_utt))
    if split_per_character(locale):
        words, tags = [], []
        for chunk in chunks:
            text = "".join(c for c, _ in chunk)
            if text.isascii():
                words.append(text)
                tags.append(_chunk_label(chunk))
            else:
                words.extend(c for c, _ in chunk)
                tags.extend(label for _, label in chunk)
        return words, tags
    tags = [_chunk_label(chunk) for chunk in chunks]
    words = ["".join(c for c, _ in chunk) for chunk in chunks] if utt is None else utt.split()
    if len(words) != len(tags):
        raise AnnotationError(f"utt has {len(words)} words but annot_utt has {len(tags)}; the annotation must "
                              f"be utt with slots marked, word for word")
    return words, tags


def to_bio(tags: Sequence[str], outside: str = OUTSIDE) -> list[str]:
    """Per-word slot types -> BIO tags as MASSIVE's ``convert_to_bio`` makes them for scoring.

    ``['Other', 'time', 'time', 'date'] -> ['O', 'B-time', 'I-time', 'B-date']``; a type repeated on the next
    word continues the span, so adjacent same-type slots merge (the per-word tags cannot tell them apart)."""
    bio, previous = [], None
    for tag in tags:
        if tag == outside:
            bio.append("O")
        elif tag != previous:
            bio.append("B-" + tag)
        else:
            bio.append("I-" + tag)
        previous = tag
    return bio


# ----------------------------------------------------------------------------------------------------------
# Text-to-text format
# ----------------------------------------------------------------------------------------------------------

def t2t_input(words: Sequence[str]) -> str:
    """``['wake', 'me', 'up']`` -> ``'Annotate: wake me up'``."""
    return INPUT_PROMPT + " ".join(words)


def t2t_target(tags: Sequence[str], intent: str) -> str:
    """``(['Other', 'time'], 'alarm_set')`` -> ``'Other time alarm_set'``."""
    return " ".join([*tags, intent])


def parse_t2t_target(text: str, num_words: Optional[int] = None) -> tuple[list[str], str]:
    """A (generated) target string -> (tags, intent): the last whitespace token is the intent, the ones
    before it the tags (MASSIVE's ``convert_t2t_batch_to_intents_slots``). An empty string gives no tags and
    the intent ``''``. With ``num_words``, the tags are cut or padded with ``Other`` to that length, as
    MASSIVE's scoring does with a prediction of the wrong length."""
    parts = text.split()
    tags, intent = (parts[:-1], parts[-1]) if parts else ([], "")
    if num_words is not None:
        tags = tags[:num_words] + [OUTSIDE] * (num_words - len(tags))
    return tags, intent


# ----------------------------------------------------------------------------------------------------------
# Release files
# ----------------------------------------------------------------------------------------------------------

def parse_line(raw: dict, where: str, default_locale: Optional[str] = None) -> Optional[dict]:
    """One release record -> our record, or None for a line without labels (MMNLU-22).

    Our record keeps every release field and adds ``split`` (the partition), ``words``, ``tags`` (per-word
    slot types), ``bio``, ``t2t_input`` and ``t2t_target``. ``where`` ('file:line') goes into errors."""
    partition = raw.get("partition")
    if partition in UNLABELLED_PARTITIONS:
        return None
    if partition not in PARTITIONS:
        raise ValueError(f"{where}: partition {partition!r} is not one of "
                         f"{', '.join(PARTITIONS + UNLABELLED_PARTITIONS)}")
    if not raw.get("intent") or raw.get("annot_utt") is None:
        return None  # a labelled partition's line with its labels missing: nothing to score it against
    locale = raw.get("locale") or default_locale
    if not locale:
        raise ValueError(f"{where}: the line has no 'locale' (e.g. \"locale\": \"en-US\")")
    if not isinstance(raw.get("utt"), str) or not isinstance(raw["annot_utt"], str):
        raise ValueError(f"{where}: 'utt' and 'annot_utt' must be strings")
    try:
        words, tags = parse_annotation(raw["annot_utt"], locale, raw["utt"])
    except AnnotationError as error:
        raise ValueError(f"{where}: malformed annot_utt {raw['annot_utt']!r}: {error}") from None
    if not words:
        raise ValueError(f"{where}: the utterance has no words")
    intent = str(raw["intent"])
    return {**raw, "id": str(raw.get("id", where)), "locale": locale, "split": partition, "intent": intent,
            "words": words, "tags": tags, "bio": to_bio(tags), "t2t_input": t2t_input(words),
            "t2t_target": t2t_target(tags, intent)}


def read_file(path: str, default_locale: Optional[str] = None) -> list[dict]:
    """The labelled records of one ``<locale>.jsonl`` (all partitions; MMNLU-22 lines skipped)."""
    from alexatm_jax.data import text_files

    records = []
    for where, _, raw in text_files.json_lines(path, "one JSON object per line, as in a MASSIVE file"):
        record = parse_line(raw, where, default_locale)
        if record is not None:
            records.append(record)
    return records


def _locale_files(folder: str) -> list[str]:
    return sorted(name[:-len(".jsonl")] for name in os.listdir(folder) if name.endswith(".jsonl"))


def locale_path(location: str, locale: str) -> str:
    """``<locale>.jsonl`` in ``location``: the release's data folder, or a parent of it (``1.0/data``)."""
    if not os.path.isdir(location):
        raise FileNotFoundError(f"MASSIVE data path {location} does not exist")
    found = {}
    for sub in _DATA_SUBDIRS:
        folder = os.path.join(location, sub)
        if os.path.isdir(folder):
            path = os.path.join(folder, f"{locale}.jsonl")
            if os.path.isfile(path):
                return path
            found.update({name: folder for name in _locale_files(folder)})
    if found:
        raise FileNotFoundError(f"No {locale}.jsonl in the MASSIVE data at {location}; it has the locales "
                                f"{', '.join(sorted(found))}. Pick one with --param locale=LOCALE.")
    raise FileNotFoundError(f"No MASSIVE data in {location}: expected <locale>.jsonl files (en-US.jsonl, ...) "
                            f"there or in its 1.0/data folder, as the release tarball unpacks them.")


def load(location: Optional[str], locale: str = DEFAULT_LOCALE,
         partitions: Optional[Iterable[str]] = None) -> list[dict]:
    """Labelled records of ``locale`` from a release folder (or one ``<locale>.jsonl`` file), optionally only
    those of ``partitions`` (a subset of train, dev, test). MMNLU-22 lines are skipped."""
    if location is None:
        raise ValueError("MASSIVE cannot be downloaded here: pass --data DIR, the release's data folder (the "
                         "1.0/data folder of amazon-massive-dataset-1.0.tar.gz, holding <locale>.jsonl files), "
                         "and pick the locale with --param locale=de-DE")
    wanted = PARTITIONS if partitions is None else tuple(partitions)
    unknown = sorted(set(wanted) - set(PARTITIONS))
    if unknown:
        raise ValueError(f"Unknown MASSIVE partition(s) {unknown}; choose from {', '.join(PARTITIONS)}")
    if os.path.isfile(location):
        records = read_file(location, default_locale=locale)
        others = sorted({r["locale"] for r in records} - {locale})
        records = [r for r in records if r["locale"] == locale]
        if not records and others:
            raise ValueError(f"{location} holds locale(s) {', '.join(others)}, not {locale}: pass "
                             f"--param locale={others[0]}")
    else:
        records = read_file(locale_path(location, locale), default_locale=locale)
    return [r for r in records if r["split"] in wanted]
