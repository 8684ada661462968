"""Debian package descriptions labelled with their archive section and debtags: the record schema, a checked
reader for users' JSON lines, the bundled split, and the text a classifier reads.

A record is one description in one language::

    {"lang": "de", "summary": "...", "description": "...", "section": "python", "tags": ["role::program", ...]}

``tags`` (debtags ``facet::value`` strings) is optional. The bundled split
(``alexatm_jax/data/bundled/nlu/debian_section.jsonl.gz``, built by ``scripts/build_bundled_data.py``) also has
``id`` (``<md5>/<lang>``), ``md5`` (the English description's md5: the same md5 in two languages is a
translation) and ``split`` (``train`` in English; ``dev`` and ``test`` in all 8 languages, the same md5s in
every language). Package names are never part of a record: they often give the section away.

Pure Python (no TensorFlow): the evaluation loaders and the seqio tasks (``alexatm_jax.data.nlu_tasks``) share it.
"""

from __future__ import annotations

import os
from typing import Iterable, Optional, Sequence

REQUIRED_FIELDS = ("lang", "summary", "description", "section")
SPLITS = ("train", "dev", "test")
BUNDLED_NAME = "debian_section"
# What a classifier reads (fine-tuning inputs and the task card's prompt are both this text, so a fine-tuned
# model can be scored by the card at 0 shots): field names in English in every language, the answer cue last.
ANSWER_CUE = "Section:"
INPUT_TEMPLATE = "Summary: {summary}\nDescription: {description}\n" + ANSWER_CUE
# debtags' placeholder for "not tagged yet": not a label.
UNTAGGED = "TODO"


def input_text(summary: str, description: str) -> str:
    """The classifier's input text for one description (see ``INPUT_TEMPLATE``)."""
    return INPUT_TEMPLATE.format(summary=summary, description=description)


def facets(tags: Iterable[str]) -> dict:
    """``{facet: value}`` for every debtags facet that has exactly one value in ``tags``.

    ``["role::program", "use::editing", "use::viewing"]`` -> ``{"role": "program"}`` (``use`` has two values,
    so it is not a single-label target). debtags' ``TODO`` placeholder is not a value.
    """
    values: dict = {}
    for tag in tags:
        facet, sep, value = tag.partition("::")
        if sep and value != UNTAGGED:
            values.setdefault(facet, []).append(value)
    return {facet: found[0] for facet, found in sorted(values.items()) if len(found) == 1}


def check_record(record, where: str) -> dict:
    """``record`` if it follows the schema, else ``ValueError`` naming ``where`` (``path:line``) and the fix."""
    if not isinstance(record, dict):
        raise ValueError(f"{where}: expected a JSON object with {', '.join(REQUIRED_FIELDS)}, got a "
                         f"{type(record).__name__}")
    for field in REQUIRED_FIELDS:
        value = record.get(field)
        if not isinstance(value, str) or not value.strip():
            problem = "has no" if field not in record else "has an empty or non-string"
            raise ValueError(f"{where}: the record {problem} {field!r} field; every line needs the fields "
                             f"{', '.join(REQUIRED_FIELDS)} (strings) and optionally 'tags' (a list of "
                             f"'facet::value' strings)")
    tags = record.get("tags", [])
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        raise ValueError(f"{where}: 'tags' must be a list of 'facet::value' strings, got {tags!r}")
    split = record.get("split")
    if split is not None and split not in SPLITS:
        raise ValueError(f"{where}: 'split' is {split!r}; use one of {', '.join(SPLITS)} or leave it out")
    return record


def read_records(path: str) -> list[dict]:
    """Checked records of a user's JSON-lines file; each gets ``tags`` (default ``[]``) and an ``id``
    (default ``<file name>:<line>``). Errors name the file and line."""
    from alexatm_jax.data import text_files

    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} does not exist or is not a file: pass a JSON-lines file with the "
                                f"fields {', '.join(REQUIRED_FIELDS)} (and optionally tags)")
    records = []
    for where, number, record in text_files.json_lines(path):
        record = dict(check_record(record, where))
        record.setdefault("tags", [])
        record.setdefault("id", f"{os.path.basename(path)}:{number}")
        records.append(record)
    if not records:
        raise ValueError(f"{path} holds no records: expected one JSON object per line")
    return records


def bundled_path() -> str:
    from alexatm_jax.data import bundled

    return bundled.nlu_path(BUNDLED_NAME)


def bundled_records(split: Optional[str] = None, langs: Optional[Sequence[str]] = None) -> list[dict]:
    """Records of the bundled split, optionally only ``split`` (train/dev/test) and languages ``langs``."""
    from alexatm_jax.data import bundled

    if split is not None and split not in SPLITS:
        raise ValueError(f"unknown split {split!r}: the bundled Debian section data has {', '.join(SPLITS)}")
    return [r for r in bundled.read_jsonl(bundled_path())
            if (split is None or r["split"] == split) and (langs is None or r["lang"] in langs)]


def with_facets(records: Iterable[dict]) -> list[dict]:
    """Records with ``facets`` added (``facets(record["tags"])``), for single-label debtags tasks."""
    return [dict(r, facets=facets(r.get("tags") or [])) for r in records]
