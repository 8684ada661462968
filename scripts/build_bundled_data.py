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
- ``nlu/debian_section.jsonl.gz``: Debian descriptions labelled with their archive section (and debtags), one
  line per description and language ``{"id","md5","lang","split","summary","description","section","tags"}``:
  an English ``train`` split and ``dev``/``test`` splits that are parallel across the 8 Debian languages (the
  same md5s in each). Labels are the sections of the dev/test descriptions; the English training descriptions
  are drawn per section to the dev/test label distribution, so train and test are one population.
- ``spm/alexatm_demo.model`` (+ ``.vocab``): a SentencePiece unigram model trained on the pretraining text.
- ``manifest.json``: document/character/token counts per language and split (the mixture's language rates
  are computed from the token counts) and a SHA-256 of every file.

Decontamination, as AlexaTM did: a held-out UDHR segment id or Debian md5 is removed from pretraining in every
language (so no translation of a held-out text is trained on), then any pretraining paragraph that shares a
13-gram (characters for Japanese) with any held-out text, or repeats a short held-out text whole, is dropped.
The Debian section dev/test md5s are held out the same way (training md5s may stay in pretraining); they are
chosen among the descriptions translated into all 8 languages, cheapest first: the fewest pretraining
documents that holding them out removes or changes.
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
from alexatm_jax.data.bundled import DEBIAN_LANGS, LANGS  # noqa: E402

UDHR_CODES = {"ar": "arb", "en": "eng", "fr": "fra", "de": "deu_1996", "hi": "hin", "it": "ita",
              "ja": "jpn", "mr": "mar", "pt": "por_PT", "es": "spa", "ta": "tam", "te": "tel"}
DEBIAN_PRETRAIN_LANGS = tuple(lang for lang in DEBIAN_LANGS if lang in LANGS)

UDHR_DEV, UDHR_TEST = 20, 24          # of ~56 paragraphs present in all 12 languages; the rest is pretraining
DEBIAN_DEV, DEBIAN_TEST = 30, 150     # per language
# Per-language cap on Debian pretraining documents: keeps the bundle a few MB.
DEBIAN_PRETRAIN_CAP = {"en": 3000, "it": 2000, "fr": 2000, "de": 2000, "ja": 2000, "es": 2000, "pt": 2000}
# Debian section classification (nlu/debian_section.jsonl).
NLU_LABEL_SHARE = 0.01                # a section is a label if it holds >= 1% of the usable labelled descriptions
NLU_TRAIN = 4000                      # English training descriptions
NLU_DEV, NLU_TEST = 50, 200           # descriptions per language (the same md5s in every language)
NLU_MIN_PER_LABEL = 40                # training descriptions per label at least
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


# ------------------------------------------------------------------- Debian section classification
def load_debian_labels(path):
    """``{md5: {"section", "tags"}}`` from debian_labels.jsonl.gz."""
    return {rec["md5"]: {"section": rec["section"], "tags": sorted(rec["tags"])} for rec in _read_jsonl_gz(path)}


def _classifiable(entry):
    """Not a transitional/dummy package: their text ("can safely be removed") says nothing of the section."""
    en = entry["langs"]["en"]
    text = (en["summary"] + " " + en["description"]).lower()
    return "transitional" not in text and "dummy package" not in text


def nlu_candidates(entries, labels, excluded_md5):
    """Entries usable for the section task (labelled, classifiable, not already held out) and the label set:
    the sections that hold at least ``NLU_LABEL_SHARE`` of them (smaller ones are too rare to learn from a few
    thousand examples)."""
    usable = [e for e in entries if e["md5"] in labels and e["md5"] not in excluded_md5 and _classifiable(e)]
    counts = collections.Counter(labels[e["md5"]]["section"] for e in usable)
    label_set = sorted(s for s, n in counts.items() if n >= NLU_LABEL_SHARE * len(usable))
    return [e for e in usable if labels[e["md5"]]["section"] in label_set], label_set


def _entry_keys(entry):
    keys = set()
    for lang, v in entry["langs"].items():
        keys |= decontamination.ngram_keys(v["summary"], lang)
        keys |= decontamination.ngram_keys(v["description"], lang)
    return keys


def choose_nlu_eval(candidates, pretrain_docs):
    """Dev/test md5s: ``NLU_DEV + NLU_TEST`` candidates, those with the most languages first (all 8 where the
    translations allow, so the per-language sets are parallel), and among those greedily the ones whose holding
    out touches the fewest documents of ``pretrain_docs`` (the pretraining text without this task): its own
    translations, plus documents sharing an n-gram with any of its texts. Documents already touched by an
    earlier choice cost nothing (greedy; ties in hash order, so the result is deterministic).
    Returns ``[(split, entry)]``: the first ``NLU_DEV`` in hash order are dev, the rest test."""
    index = collections.defaultdict(list)
    by_md5 = collections.defaultdict(list)
    for i, doc in enumerate(pretrain_docs):
        if doc["source"] == "debian":
            by_md5[doc["id"].split("/")[1]].append(i)
        for key in decontamination.document_keys(doc["text"], doc["lang"]):
            index[key].append(i)

    def touched(entry):
        hit = set(by_md5.get(entry["md5"], ()))
        for key in _entry_keys(entry):
            hit.update(index.get(key, ()))
        return hit

    wanted = NLU_DEV + NLU_TEST
    chosen, covered = [], set()
    tiers = collections.defaultdict(list)
    for entry in candidates:
        tiers[len(entry["langs"])].append(entry)
    for n_langs in sorted(tiers, reverse=True):
        if len(chosen) == wanted:
            break
        # Exact greedy (a few hundred candidates): each round takes the smallest marginal cost.
        left = {e["md5"]: (e, touched(e), _order_key("debian_section", e["md5"])) for e in tiers[n_langs]}
        while left and len(chosen) < wanted:
            md5 = min(left, key=lambda m: (len(left[m][1] - covered), left[m][2]))
            entry, docs, _ = left.pop(md5)
            chosen.append(entry)
            covered |= docs
    chosen.sort(key=lambda e: _order_key("debian_section", e["md5"]))
    print(f"debian_section: {len(chosen)} dev/test md5s ({sorted(collections.Counter(len(e['langs']) for e in chosen).items())} "
          f"by language count) touch {len(covered)} of {len(pretrain_docs)} pretraining documents", flush=True)
    return [("dev" if i < NLU_DEV else "test", e) for i, e in enumerate(chosen)]


def eval_label_set(eval_chosen, labels):
    """The labels: the sections that occur among the dev/test descriptions. A label the evaluation never asks
    for would only be a distractor that training pushes up."""
    return sorted({labels[e["md5"]]["section"] for _, e in eval_chosen})


def train_quotas(eval_chosen, labels, n_train):
    """Training examples per section: proportional to the dev/test label distribution (largest remainders),
    with at least ``NLU_MIN_PER_LABEL`` each so every label is learnable.

    Why stratify: the dev/test descriptions are the ones translated into all 8 languages, mostly end-user
    programs (utils, admin, x11, games), while a plain sample of English descriptions is mostly libraries and
    language bindings (python, libdevel, perl). Trained on the latter, a classifier learns the wrong prior and
    its test accuracy says little; drawn to the same label distribution, train and test are one population and
    the majority class is the same in both."""
    counts = collections.Counter(labels[e["md5"]]["section"] for _, e in eval_chosen)
    total = sum(counts.values())
    spare = n_train - NLU_MIN_PER_LABEL * len(counts)
    exact = {s: spare * n / total for s, n in counts.items()}
    quotas = {s: NLU_MIN_PER_LABEL + int(x) for s, x in exact.items()}
    for s in sorted(exact, key=lambda s: (-(exact[s] - int(exact[s])), s))[:n_train - sum(quotas.values())]:
        quotas[s] += 1
    return quotas


def choose_nlu_train(candidates, eval_chosen, labels):
    """``NLU_TRAIN`` English training entries drawn per section to ``train_quotas``: none is a dev/test md5 or
    shares an English 13-gram (or a whole short text) with one, so near-copies of test descriptions are not
    trained on. Within a section, descriptions translated into more languages come first (the population the
    dev/test set is drawn from), then hash order."""
    eval_md5 = {e["md5"] for _, e in eval_chosen}
    eval_keys = set()
    for _, e in eval_chosen:
        en = e["langs"]["en"]
        eval_keys |= decontamination.ngram_keys(en["summary"], "en") | decontamination.ngram_keys(en["description"], "en")
    quotas = train_quotas(eval_chosen, labels, NLU_TRAIN)
    train = []
    by_section = collections.defaultdict(list)
    for entry in candidates:
        section = labels[entry["md5"]]["section"]
        if section in quotas and entry["md5"] not in eval_md5:
            by_section[section].append(entry)
    for section in sorted(quotas):
        taken = []
        for entry in sorted(by_section[section],
                            key=lambda e: (-len(e["langs"]), _order_key("debian_section", e["md5"]))):
            en = entry["langs"]["en"]
            if decontamination.document_keys(en["summary"] + "\n\n" + en["description"], "en") & eval_keys:
                continue
            taken.append(entry)
            if len(taken) == quotas[section]:
                break
        if len(taken) < quotas[section]:
            raise SystemExit(f"debian_section: only {len(taken)} English training descriptions of section "
                             f"{section!r} for a quota of {quotas[section]}: lower NLU_TRAIN")
        train += taken
    train.sort(key=lambda e: _order_key("debian_section", e["md5"]))
    return train


def nlu_records(train, eval_chosen, labels):
    """The file's records: English train, then dev and test in every language of each md5 (language order of
    DEBIAN_LANGS, hash order within)."""
    def record(entry, lang, split):
        text = entry["langs"][lang]
        label = labels[entry["md5"]]
        return {"id": f"{entry['md5']}/{lang}", "md5": entry["md5"], "lang": lang, "split": split,
                "summary": text["summary"], "description": text["description"], "section": label["section"],
                "tags": label["tags"]}

    records = [record(e, "en", "train") for e in train]
    for split in ("dev", "test"):
        for lang in DEBIAN_LANGS:
            records += [record(e, lang, split) for s, e in eval_chosen if s == split and lang in e["langs"]]
    return records


def nlu_summary(records, label_set):
    """Manifest entry: label set, counts per split and language, label counts, majority-class baselines."""
    counts = collections.defaultdict(dict)
    labels_by = collections.defaultdict(collections.Counter)
    for r in records:
        counts[r["split"]][r["lang"]] = counts[r["split"]].get(r["lang"], 0) + 1
        labels_by[(r["split"], r["lang"])][r["section"]] += 1
    train_counts = labels_by[("train", "en")]
    majority = sorted(train_counts, key=lambda s: (-train_counts[s], s))[0]
    baseline = {split: {lang: round(labels_by[(split, lang)][majority] / n, 4) for lang, n in sorted(by_lang.items())}
                for split, by_lang in counts.items()}
    return {
        "file": "nlu/debian_section.jsonl.gz",
        "labels": label_set,
        "label_rule": f"the sections of the dev/test descriptions (candidates: sections holding >= {NLU_LABEL_SHARE:.0%} "
                      "of the usable labelled descriptions)",
        "train_rule": f"English descriptions drawn per section in proportion to the dev/test label distribution "
                      f"(at least {NLU_MIN_PER_LABEL} a label), most-translated first",
        "counts": {split: dict(sorted(by_lang.items())) for split, by_lang in counts.items()},
        "label_counts": {f"{split}/en": dict(sorted(labels_by[(split, "en")].items())) for split in ("train", "dev", "test")},
        "majority_class": majority,
        "majority_accuracy": baseline,
        "parallel_dev_test": all(len({r["md5"] for r in records if r["split"] == split and r["lang"] == lang})
                                 == counts[split]["en"] for split in ("dev", "test") for lang in counts[split]),
    }


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
    parser.add_argument("--shared", required=True, help="folder holding udhr.jsonl.gz, "
                                                        "debian_descriptions.jsonl.gz and debian_labels.jsonl.gz")
    parser.add_argument("--out", required=True, help="output folder (alexatm_jax/data/bundled)")
    parser.add_argument("--skip-tokenizer", action="store_true", help="keep the existing spm model")
    args = parser.parse_args(argv)
    start = time.time()
    for name in ("udhr.jsonl.gz", "debian_descriptions.jsonl.gz", "debian_labels.jsonl.gz"):
        if not os.path.exists(os.path.join(args.shared, name)):
            raise SystemExit(f"{name} not found in {args.shared}: pass --shared pointing at the shared data")

    udhr_heldout, udhr_pretrain = split_udhr(load_udhr(os.path.join(args.shared, "udhr.jsonl.gz")))
    entries = load_debian(os.path.join(args.shared, "debian_descriptions.jsonl.gz"))
    chosen = choose_debian_heldout(entries)
    translation, summarization = debian_heldout_records(chosen)

    # Debian section classification: dev/test md5s are chosen against the pretraining text they would change.
    labels = load_debian_labels(os.path.join(args.shared, "debian_labels.jsonl.gz"))
    held_md5 = {e["md5"] for _, e in chosen}
    candidates, label_set = nlu_candidates(entries, labels, held_md5)
    without_nlu, _ = decontaminate(udhr_pretrain + debian_pretrain_pool(entries, held_md5),
                                   heldout_keys(udhr_heldout, chosen))
    nlu_eval = choose_nlu_eval(candidates, without_nlu)
    label_set = eval_label_set(nlu_eval, labels)
    nlu = nlu_records(choose_nlu_train(candidates, nlu_eval, labels), nlu_eval, labels)
    all_held = chosen + nlu_eval
    debian_pretrain = debian_pretrain_pool(entries, {e["md5"] for _, e in all_held})

    keys = heldout_keys(udhr_heldout, all_held)
    pretrain, dropped = decontaminate(udhr_pretrain + debian_pretrain, keys)
    train, validation = split_validation(pretrain)
    print(f"held-out n-gram keys: {len(keys)}; dropped {dropped} contaminated pretraining paragraphs; "
          f"{len(train)} train / {len(validation)} validation documents", flush=True)

    out = args.out
    files = {
        "heldout/udhr_parallel.jsonl": _jsonl(udhr_heldout),
        "heldout/debian_translation.jsonl": _jsonl(translation),
        "heldout/debian_summarization.jsonl": _jsonl(summarization),
        "nlu/debian_section.jsonl.gz": _gzip(_jsonl(nlu)),  # 4 MB as text: gzip keeps the bundle small
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
    manifest["nlu"] = {"debian_section": nlu_summary(nlu, label_set)}
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
