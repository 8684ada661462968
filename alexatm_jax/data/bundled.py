"""Paths to the demo corpus committed under ``alexatm_jax/data/bundled`` (built by
``scripts/build_bundled_data.py`` from ``../shared/data``; tests and the demo read only these copies).

Layout: ``pretrain/{train,validation}/<lang>.jsonl.gz`` (records ``{"id","lang","source","text"}``),
``heldout/{udhr_parallel,debian_translation,debian_summarization}.jsonl``, labelled NLU data
``nlu/<name>.jsonl.gz`` (``debian_section``: see ``alexatm_jax.data.debian_labels``), ``spm/alexatm_demo.model``,
``manifest.json`` (counts per language and split; the mixture's language rates come from its token counts).
"""

from __future__ import annotations

import gzip
import json
import os
from typing import Dict, Iterator

BUNDLED_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "bundled")
LANGS = ("ar", "en", "fr", "de", "hi", "it", "ja", "mr", "pt", "es", "ta", "te")
# The languages of the Debian description translations (held-out sets, NLU labels); ru is evaluation-only.
DEBIAN_LANGS = ("en", "it", "fr", "de", "ja", "ru", "es", "pt")
PRETRAIN_SPLITS = ("train", "validation")
HELDOUT_NAMES = ("udhr_parallel", "debian_translation", "debian_summarization")
NLU_NAMES = ("debian_section",)


def require_bundled(path: str) -> str:
    """``path`` if that bundled file exists, else FileNotFoundError naming it and the command that builds it."""
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"bundled data file {path} is missing: rebuild it with `make data` "
            "(python scripts/build_bundled_data.py --shared ../shared/data --out alexatm_jax/data/bundled)")
    return path


def heldout_path(name: str) -> str:
    """Path of a held-out evaluation set: ``udhr_parallel``, ``debian_translation`` or ``debian_summarization``."""
    name = name[:-len(".jsonl")] if name.endswith(".jsonl") else name
    if name not in HELDOUT_NAMES:
        raise ValueError(f"unknown held-out set {name!r}: choose one of {', '.join(HELDOUT_NAMES)}")
    return require_bundled(os.path.join(BUNDLED_DIR, "heldout", name + ".jsonl"))


def nlu_path(name: str) -> str:
    """Path of a labelled NLU set (``debian_section``): records of ``alexatm_jax.data.debian_labels``."""
    if name not in NLU_NAMES:
        raise ValueError(f"unknown NLU set {name!r}: choose one of {', '.join(NLU_NAMES)}")
    return require_bundled(os.path.join(BUNDLED_DIR, "nlu", name + ".jsonl.gz"))


def pretrain_paths(split: str = "train") -> Dict[str, str]:
    """``{lang: path}`` of the pretraining documents for ``split`` (``train`` or ``validation``)."""
    if split not in PRETRAIN_SPLITS:
        raise ValueError(f"unknown pretraining split {split!r}: choose one of {', '.join(PRETRAIN_SPLITS)}")
    return {lang: require_bundled(os.path.join(BUNDLED_DIR, "pretrain", split, f"{lang}.jsonl.gz")) for lang in LANGS}


def bundled_spm_path() -> str:
    """The SentencePiece model trained on the bundled pretraining text (vocab 8092 + 100 seqio extra ids)."""
    return require_bundled(os.path.join(BUNDLED_DIR, "spm", "alexatm_demo.model"))


def manifest() -> dict:
    with open(require_bundled(os.path.join(BUNDLED_DIR, "manifest.json")), encoding="utf-8") as f:
        return json.load(f)


def read_jsonl(path: str) -> Iterator[dict]:
    """Records of a ``.jsonl`` or ``.jsonl.gz`` file."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        for line in f:
            if line.strip():
                yield json.loads(line)


def pretrain_documents(lang: str, split: str = "train") -> Iterator[dict]:
    if lang not in LANGS:
        raise ValueError(f"unknown language {lang!r}: the bundled corpus has {' '.join(LANGS)}")
    return read_jsonl(pretrain_paths(split)[lang])


def heldout_records(name: str) -> Iterator[dict]:
    return read_jsonl(heldout_path(name))
