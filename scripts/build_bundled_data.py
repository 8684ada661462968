#!/usr/bin/env python
"""Build the compact demo corpus shipped in ``alexatm_jax/data/bundled`` from the frozen ``../shared/data``.

    python scripts/build_bundled_data.py --shared ../shared/data --out alexatm_jax/data/bundled

What it writes (all deterministic: the same input gives the same bytes):

- ``heldout/udhr_parallel.jsonl``: UDHR paragraphs aligned across the 12 AlexaTM languages (dev/test).
- ``heldout/debian_translation.jsonl``: Debian package summaries, English plus its translations.
- ``heldout/debian_summarization.jsonl``: Debian description -> summary pairs in 8 languages.
- ``pretrain/{train,validation}/<lang>.jsonl.gz``: monolingual documents ``{"id","lang","source","text"}``,
  one UDHR paragraph or one Debian package text (summary + description) each. No document holds two
  languages, so the corpus holds no translation pairs inside a document (AlexaTM saw no parallel data).
- ``spm/alexatm_demo.model`` (+ ``.vocab``): a SentencePiece unigram model trained on the pretraining text.
- ``manifest.json``: document/character/token counts per language and split (the mixture's language rates
  are computed from the token counts) and a SHA-256 of every file.

Decontamination, as AlexaTM did: a held-out UDHR segment id or Debian md5 is removed from pretraining in every
language (so no translation of a held-out text is trained on), then any pretraining paragraph that shares a
13-gram (characters for Japanese) with any held-out text, or repeats a short held-out text whole, is dropped.
"""

from __future__ import annotations

import argparse
import collections
import gzip
import hashlib
import io
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from alexatm_jax.data import decontamination  # noqa: E402
from alexatm_jax.data import tokenizer_training  # noqa: E402

LANGS = ("ar", "en", "fr", "de", "hi", "it", "ja", "mr", "pt", "es", "ta", "te")
UDHR_CODES = {"ar": "arb", "en": "eng", "fr": "fra", "de": "deu_1996", "hi": "hin", "it": "ita",
              "ja": "jpn", "mr": "mar", "pt": "por_PT", "es": "spa", "ta": "tam", "te": "tel"}
DEBIAN_LANGS = ("en", "it", "fr", "de", "ja", "ru", "es", "pt")  # ru is evaluation-only (not an AlexaTM lang)
DEBIAN_PRETRAIN_LANGS = tuple(lang for lang in DEBIAN_LANGS if lang in LANGS)

UDHR_DEV, UDHR_TEST = 20, 24          # of ~56 paragraphs present in all 12 languages; the rest is pretraining
DEBIAN_DEV, DEBIAN_TEST = 30, 150     # per language
# Per-language cap on Debian pretraining documents: keeps the bundle a few MB.
DEBIAN_PRETRAIN_CAP = {"en": 3000, "it": 2000, "fr": 2000, "de": 2000, "ja": 2000, "es": 2000, "pt": 2000}
VALIDATION_FRACTION = 0.03
SPM_VOCAB_SIZE = 8092  # + 100 seqio extra_ids (T5 sentinels) = 8192 = the tiny preset's vocab_size


def _order_key(*parts: str) -> str:
    """A stable pseudo-random order (sha256), independent of the input files' order."""
    return hashlib.sha256("/".join(parts).encode("utf-8")).hexdigest()


def _read_jsonl_gz(path):
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for line in f:
            yield json.loads(line)


def _clean(text: str) -> str:
    return "\n".join(line.rstrip() for line in text.strip().split("\n"))


# ---------------------------------------------------------------------------------------------- UDHR
def load_udhr(path):
    by_lang = {}
    wanted = {code: lang for lang, code in UDHR_CODES.items()}
    for decl in _read_jsonl_gz(path):
        if decl["code"] in wanted:
            by_lang[wanted[decl["code"]]] = {s["id"]: _clean(s["text"]) for s in decl["segments"]
                                              if s["text"].strip()}
    missing = sorted(set(LANGS) - set(by_lang))
    if missing:
        raise SystemExit(f"udhr.jsonl.gz lacks declarations for {missing}")
    return by_lang


def split_udhr(udhr):
    common = set.intersection(*(set(segs) for segs in udhr.values()))
    ordered = sorted(common, key=lambda i: _order_key("udhr", i))
    dev, test = ordered[:UDHR_DEV], ordered[UDHR_DEV:UDHR_DEV + UDHR_TEST]
    heldout = []
    for split, ids in (("dev", dev), ("test", test)):
        for seg_id in sorted(ids, key=_udhr_sort_key):
            heldout.append({"id": seg_id, "split": split, "texts": {lang: udhr[lang][seg_id] for lang in LANGS}})
    held_ids = set(dev) | set(test)
    pretrain = []
    for lang in LANGS:
        for seg_id in sorted(udhr[lang], key=_udhr_sort_key):
            if seg_id not in held_ids:
                pretrain.append({"id": f"udhr/{UDHR_CODES[lang]}/{seg_id}", "lang": lang, "source": "udhr",
                                 "text": udhr[lang][seg_id]})
    return heldout, pretrain


def _udhr_sort_key(seg_id):
    kind, *nums = seg_id.split(".")
    return (kind != "preamble", [int(n) for n in nums])


# -------------------------------------------------------------------------------------------- Debian
def load_debian(path):
    entries = []
    for rec in _read_jsonl_gz(path):
        langs = {lang: {"summary": _clean(v.get("summary", "")), "description": _clean(v.get("description", ""))}
                 for lang, v in rec["langs"].items() if lang in DEBIAN_LANGS}
        langs = {lang: v for lang, v in langs.items() if v["summary"] and v["description"]}
        if "en" in langs:
            entries.append({"md5": rec["md5"], "langs": langs})
    entries.sort(key=lambda e: _order_key("debian", e["md5"]))
    return entries


def _evaluation_worthy(entry):
    """A real document -> one-line summary pair, not boilerplate (transitional/dummy/debug packages)."""
    en = entry["langs"]["en"]
    low = en["summary"].lower()
    if any(word in low for word in ("transitional", "dummy", "debug symbols", "documentation for")):
        return False
    return len(en["summary"].split()) >= 3 and len(en["description"].split()) >= 25


def choose_debian_heldout(entries):
    """Pick md5s (in hash order): first a dev set, then a test set, each until every non-English Debian
    language has its quota. Returns ``[(split, entry), ...]``; dev and test never share an md5."""
    chosen, taken = [], set()
    for split, quota in (("dev", DEBIAN_DEV), ("test", DEBIAN_TEST)):
        counts = collections.Counter()
        for entry in entries:
            if entry["md5"] in taken or not _evaluation_worthy(entry):
                continue
            if any(lang != "en" and counts[lang] < quota for lang in entry["langs"]):
                chosen.append((split, entry))
                taken.add(entry["md5"])
                counts.update(entry["langs"].keys())
                if all(counts[lang] >= quota for lang in DEBIAN_LANGS if lang != "en"):
                    break
    return chosen


def debian_heldout_records(chosen):
    """Translation and summarization sets, each language capped at its dev/test quota."""
    quota = {"dev": DEBIAN_DEV, "test": DEBIAN_TEST}
    trans_counts, summ_counts = collections.Counter(), collections.Counter()
    translation, summarization = [], []
    for split, entry in chosen:
        langs = entry["langs"]
        texts = {}
        for lang in DEBIAN_LANGS:
            if lang in langs and lang != "en" and trans_counts[(lang, split)] < quota[split]:
                trans_counts[(lang, split)] += 1
                texts[lang] = langs[lang]["summary"]
        if texts:
            texts["en"] = langs["en"]["summary"]
            translation.append({"id": entry["md5"], "split": split,
                                "texts": {lang: texts[lang] for lang in DEBIAN_LANGS if lang in texts}})
        for lang in DEBIAN_LANGS:
            if lang in langs and summ_counts[(lang, split)] < quota[split]:
                summ_counts[(lang, split)] += 1
                summarization.append({"id": entry["md5"], "split": split, "lang": lang,
                                      "document": langs[lang]["description"],
                                      "summary": langs[lang]["summary"]})
    summarization.sort(key=lambda r: (DEBIAN_LANGS.index(r["lang"]), r["split"] != "dev"))
    return translation, summarization


def debian_pretrain_pool(entries, held_md5):
    counts = collections.Counter()
    docs = []
    for entry in entries:
        if entry["md5"] in held_md5:
            continue
        for lang in DEBIAN_PRETRAIN_LANGS:
            if lang in entry["langs"] and counts[lang] < DEBIAN_PRETRAIN_CAP[lang]:
                counts[lang] += 1
                text = entry["langs"][lang]["summary"] + "\n\n" + entry["langs"][lang]["description"]
                docs.append({"id": f"debian/{entry['md5']}/{lang}", "lang": lang, "source": "debian",
                             "text": text})
    return docs


# ------------------------------------------------------------------------------------ decontamination
def heldout_keys(udhr_heldout, debian_chosen):
    keys = set()
    for rec in udhr_heldout:
        for lang, text in rec["texts"].items():
            keys |= decontamination.ngram_keys(text, lang)
    for _, entry in debian_chosen:  # every language of a held-out md5, used or not
        for lang, v in entry["langs"].items():
            keys |= decontamination.ngram_keys(v["summary"], lang)
            keys |= decontamination.ngram_keys(v["description"], lang)
    return keys


def decontaminate(docs, keys):
    """Drop contaminated paragraphs (Debian paragraphs are blank-line separated); drop emptied documents."""
    kept, dropped_paragraphs = [], 0
    for doc in docs:
        paragraphs = [p for p in doc["text"].split("\n\n") if p.strip()]
        clean = [p for p in paragraphs if not (decontamination.document_keys(p, doc["lang"]) & keys)]
        dropped_paragraphs += len(paragraphs) - len(clean)
        # A document that lost its first paragraph (the summary) or everything is dropped whole.
        if clean and clean[0] == paragraphs[0]:
            text = "\n\n".join(clean)
            if not (decontamination.document_keys(text, doc["lang"]) & keys):
                kept.append(dict(doc, text=text))
                continue
        dropped_paragraphs += len(clean)
    return kept, dropped_paragraphs


def split_validation(docs):
    by_lang = collections.defaultdict(list)
    for doc in docs:
        by_lang[doc["lang"]].append(doc)
    train, validation = [], []
    for lang in LANGS:
        lang_docs = sorted(by_lang[lang], key=lambda d: _order_key("validation", d["id"]))
        n_val = max(1, round(VALIDATION_FRACTION * len(lang_docs)))
        validation_ids = {d["id"] for d in lang_docs[:n_val]}
        for doc in by_lang[lang]:
            (validation if doc["id"] in validation_ids else train).append(doc)
    return train, validation


# ----------------------------------------------------------------------------------------- writing
def _write_bytes(path, data: bytes):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".tmp-")
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def _jsonl(records) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in records).encode("utf-8")


def _gzip(data: bytes) -> bytes:
    buf = io.BytesIO()
    # mtime=0 and no file name in the header: identical bytes on every run.
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, mtime=0, compresslevel=9) as f:
        f.write(data)
    return buf.getvalue()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shared", required=True, help="folder holding udhr.jsonl.gz and "
                                                        "debian_descriptions.jsonl.gz")
    parser.add_argument("--out", required=True, help="output folder (alexatm_jax/data/bundled)")
    parser.add_argument("--skip-tokenizer", action="store_true", help="keep the existing spm model")
    args = parser.parse_args(argv)
    start = time.time()
    for name in ("udhr.jsonl.gz", "debian_descriptions.jsonl.gz"):
        if not os.path.exists(os.path.join(args.shared, name)):
            raise SystemExit(f"{name} not found in {args.shared}: pass --shared pointing at the shared data")

    udhr_heldout, udhr_pretrain = split_udhr(load_udhr(os.path.join(args.shared, "udhr.jsonl.gz")))
    entries = load_debian(os.path.join(args.shared, "debian_descriptions.jsonl.gz"))
    chosen = choose_debian_heldout(entries)
    translation, summarization = debian_heldout_records(chosen)
    debian_pretrain = debian_pretrain_pool(entries, {e["md5"] for _, e in chosen})

    keys = heldout_keys(udhr_heldout, chosen)
    pretrain, dropped = decontaminate(udhr_pretrain + debian_pretrain, keys)
    train, validation = split_validation(pretrain)
    print(f"held-out n-gram keys: {len(keys)}; dropped {dropped} contaminated pretraining paragraphs; "
          f"{len(train)} train / {len(validation)} validation documents", flush=True)

    out = args.out
    files = {
        "heldout/udhr_parallel.jsonl": _jsonl(udhr_heldout),
        "heldout/debian_translation.jsonl": _jsonl(translation),
        "heldout/debian_summarization.jsonl": _jsonl(summarization),
    }
    for split, docs in (("train", train), ("validation", validation)):
        for lang in LANGS:
            files[f"pretrain/{split}/{lang}.jsonl.gz"] = _gzip(_jsonl(d for d in docs if d["lang"] == lang))
    for rel, data in files.items():
        _write_bytes(os.path.join(out, rel), data)

    spm_prefix = os.path.join(out, "spm", "alexatm_demo")
    if not args.skip_tokenizer:
        by_lang = collections.defaultdict(list)
        for doc in train:
            by_lang[doc["lang"]].append(doc["text"])
        tokenizer_training.train_sentencepiece(by_lang, spm_prefix, vocab_size=SPM_VOCAB_SIZE)

    manifest = _manifest(out, train, validation, udhr_heldout, translation, summarization, spm_prefix)
    _write_bytes(os.path.join(out, "manifest.json"),
                 (json.dumps(manifest, indent=1, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8"))
    print(f"wrote {out} in {time.time() - start:.1f}s", flush=True)


def _manifest(out, train, validation, udhr_heldout, translation, summarization, spm_prefix):
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=spm_prefix + ".model")
    stats = {}
    for split, docs in (("train", train), ("validation", validation)):
        stats[split] = {}
        for lang in LANGS:
            texts = [d["text"] for d in docs if d["lang"] == lang]
            stats[split][lang] = {
                "documents": len(texts),
                "characters": sum(len(t) for t in texts),
                "tokens": sum(len(ids) for ids in sp.encode(texts)),
                "sources": dict(sorted(collections.Counter(d["source"] for d in docs
                                                           if d["lang"] == lang).items())),
            }
    heldout = {
        "udhr_parallel": dict(collections.Counter(r["split"] for r in udhr_heldout)),
        "debian_translation": {lang: dict(collections.Counter(r["split"] for r in translation
                                                              if lang in r["texts"]))
                               for lang in DEBIAN_LANGS},
        "debian_summarization": {lang: dict(collections.Counter(r["split"] for r in summarization
                                                                if r["lang"] == lang))
                                 for lang in DEBIAN_LANGS},
    }
    digests = {}
    for root, _, names in os.walk(out):
        for name in names:
            path = os.path.join(root, name)
            rel = os.path.relpath(path, out)
            if rel != "manifest.json" and not name.startswith(".tmp-") and not name.endswith(".py"):
                with open(path, "rb") as f:
                    digests[rel] = hashlib.sha256(f.read()).hexdigest()
    return {"languages": list(LANGS), "pretrain": stats, "heldout": heldout,
            "spm_vocab_size": sp.get_piece_size(), "sha256": dict(sorted(digests.items())),
            "built_by": "scripts/build_bundled_data.py"}


if __name__ == "__main__":
    main()
