"""Readers of evaluation data in the benchmarks' own file formats, all yielding plain record dicts.

Every loader returns a list of records with an ``id`` and a ``split``; the task card's ``fields`` say which
values of a record fill the prompt. Formats:

* ``bundled``: the repo's held-out sets by name (``udhr_parallel``, ``debian_translation``,
  ``debian_summarization``), records as stored.
* ``jsonl``: any JSON-lines file (a user's own data); ``split`` is taken from each record when present.
* ``flores101``: the Flores-101 release folder (``dev/<code>.dev``, ``devtest/<code>.devtest``, one
  sentence per line, lines aligned across languages; Flores-200 names such as ``eng_Latn`` work too).
  Records: ``{"id", "split", "texts": {lang: sentence}}`` with our two-letter language codes.
* ``xsum``: XSum as JSON lines (``{"document", "summary", "id"}``), a folder with ``train.jsonl``,
  ``validation.jsonl``, ``test.jsonl`` (any subset) or one file.
* ``mlsum``: MLSum's JSON lines (``{"text", "summary", "title", "url", "date", "topic"}``), a folder with
  ``<lang>_train.jsonl``, ``<lang>_val.jsonl``, ``<lang>_test.jsonl``; records get ``lang``.
* ``massive``: the MASSIVE release folder (``1.0/data/<locale>.jsonl``, or that data folder itself) or one
  ``<locale>.jsonl``; the card's ``locale`` param picks the file; records as ``evaluation.massive.load``
  gives them (``split`` = partition, plus ``words``, ``tags``, ``t2t_input``, ``t2t_target``).
* ``debian_labels``: Debian descriptions labelled with their section and debtags (``data.debian_labels``): the
  bundled split when the location is ``bundled`` (or unset), else a JSON-lines file of ``{"lang", "summary",
  "description", "section", "tags"?}`` checked line by line; records get ``facets`` ({facet: its one value}).
"""

from __future__ import annotations

import os
from typing import Optional

from alexatm_jax.data import text_files

FORMATS = ("bundled", "jsonl", "flores101", "xsum", "mlsum", "massive", "debian_labels")

# Flores-101 uses ISO 639-3 file names; Flores-200 adds the script. Arabic is Modern Standard Arabic.
FLORES_CODES = {
    "ar": ("ara", "arb_Arab"), "en": ("eng", "eng_Latn"), "fr": ("fra", "fra_Latn"), "de": ("deu", "deu_Latn"),
    "hi": ("hin", "hin_Deva"), "it": ("ita", "ita_Latn"), "ja": ("jpn", "jpn_Jpan"), "mr": ("mar", "mar_Deva"),
    "pt": ("por", "por_Latn"), "es": ("spa", "spa_Latn"), "ta": ("tam", "tam_Taml"), "te": ("tel", "tel_Telu"),
    "ru": ("rus", "rus_Cyrl"),
}


def read_jsonl(path: str, split: Optional[str] = None) -> list[dict]:
    """Records of a JSON-lines file; ``split`` (if given) is set on records that have none."""
    records = []
    for _, number, record in text_files.json_lines(path):
        record.setdefault("id", f"{os.path.basename(path)}:{number}")
        if split is not None:
            record.setdefault("split", split)
        records.append(record)
    return records


def load_bundled(name: str) -> list[dict]:
    from alexatm_jax.data import bundled

    return list(bundled.heldout_records(name))


def load_flores(directory: str) -> list[dict]:
    """Flores-101/200 folder -> aligned multilingual records, splits ``dev`` and ``devtest``."""
    records = []
    for split in ("dev", "devtest"):
        folder = os.path.join(directory, split)
        if not os.path.isdir(folder):
            continue
        columns = {}
        for lang, codes in FLORES_CODES.items():
            for code in codes:
                path = os.path.join(folder, f"{code}.{split}")
                if os.path.exists(path):
                    with text_files.named_read_errors(path), open(path, encoding="utf-8") as f:
                        columns[lang] = [line.rstrip("\n") for line in f]
                    break
        if not columns:
            continue
        lengths = {lang: len(lines) for lang, lines in columns.items()}
        if len(set(lengths.values())) != 1:
            raise ValueError(f"Flores files in {folder} are not aligned: line counts differ {lengths}")
        for i in range(next(iter(lengths.values()))):
            records.append({"id": f"{split}.{i}", "split": split,
                            "texts": {lang: lines[i] for lang, lines in columns.items()}})
    if not records:
        raise FileNotFoundError(
            f"No Flores data in {directory}: expected dev/<code>.dev and devtest/<code>.devtest files "
            f"(codes such as eng, fra or eng_Latn), as in the flores101_dataset release folder.")
    return records


def load_xsum(path: str) -> list[dict]:
    if os.path.isfile(path):
        return read_jsonl(path)
    records = []
    for split in ("train", "validation", "test"):
        file = os.path.join(path, f"{split}.jsonl")
        if os.path.exists(file):
            records.extend(read_jsonl(file, split))
    if not records:
        raise FileNotFoundError(f"No XSum data in {path}: expected train.jsonl / validation.jsonl / test.jsonl "
                                f"with {{\"document\", \"summary\", \"id\"}} records")
    return records


def load_mlsum(path: str) -> list[dict]:
    if os.path.isfile(path):
        return read_jsonl(path)
    records = []
    for name in sorted(os.listdir(path)) if os.path.isdir(path) else []:
        stem, ext = os.path.splitext(name)
        if ext != ".jsonl" or "_" not in stem:
            continue
        lang, split = stem.split("_", 1)
        split = {"val": "validation"}.get(split, split)
        for i, record in enumerate(read_jsonl(os.path.join(path, name), split)):
            record.setdefault("lang", lang)
            record["id"] = record.get("url") or f"{stem}:{i}"
            records.append(record)
    if not records:
        raise FileNotFoundError(f"No MLSum data in {path}: expected <lang>_train.jsonl, <lang>_val.jsonl, "
                                f"<lang>_test.jsonl with {{\"text\", \"summary\", ...}} records")
    return records


def is_bundled_source(data_format: str, location: Optional[str]) -> bool:
    """Whether a card's data is shipped with the repository (a user's file without splits then takes its
    shots from it)."""
    return bool(location) if data_format == "bundled" else (
        data_format == "debian_labels" and location in (None, "bundled"))


def load_debian_labels(location: Optional[str]) -> list[dict]:
    """The bundled Debian section split (``location`` ``bundled`` or None) or a user's checked JSON lines."""
    from alexatm_jax.data import debian_labels

    if location in (None, "bundled"):
        records = debian_labels.bundled_records()
    else:
        records = debian_labels.read_records(location)
    return debian_labels.with_facets(records)


def load_records(data_format: str, location: Optional[str], params: Optional[dict] = None) -> list[dict]:
    """Records of ``location`` read as ``data_format`` (see the module docstring); ``params`` are the card's
    (MASSIVE reads only the file of ``params['locale']``)."""
    if data_format not in FORMATS:
        raise ValueError(f"Unknown data format {data_format!r}; choose one of {', '.join(FORMATS)}")
    if data_format == "massive":  # its own message when --data is missing: the data cannot be downloaded
        from alexatm_jax.evaluation import massive

        return massive.load(location, (params or {}).get("locale", massive.DEFAULT_LOCALE))
    if data_format == "debian_labels":
        return load_debian_labels(location)
    if location is None:
        raise ValueError(f"This task reads {data_format} data but no location is set: pass --data PATH "
                         f"(or set data.path in the task card)")
    if data_format == "bundled":
        return load_bundled(location)
    if not os.path.exists(location):
        raise FileNotFoundError(f"Data path {location} does not exist")
    if data_format == "flores101":
        return load_flores(location)
    if os.path.isfile(location):  # one JSON-lines file, whatever the benchmark's folder layout
        return read_jsonl(location)
    if data_format == "xsum":
        return load_xsum(location)
    if data_format == "mlsum":
        return load_mlsum(location)
    raise ValueError(f"{location} is a folder; the jsonl format needs a file")
