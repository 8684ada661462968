"""The committed demo corpus: formats the evaluation code relies on, and proof of decontamination."""

import collections
import hashlib
import os

import pytest

from alexatm_jax.data import bundled, decontamination

LANGS = bundled.LANGS
DEBIAN_LANGS = ("en", "it", "fr", "de", "ja", "ru", "es", "pt")


@pytest.fixture(scope="module")
def pretrain():
    return {split: [rec for lang in LANGS for rec in bundled.pretrain_documents(lang, split)]
            for split in bundled.PRETRAIN_SPLITS}


@pytest.fixture(scope="module")
def heldout():
    return {name: list(bundled.heldout_records(name)) for name in bundled.HELDOUT_NAMES}


@pytest.fixture(scope="module")
def sections():
    """The Debian section classification split, read straight from its file."""
    return list(bundled.read_jsonl(bundled.nlu_path("debian_section")))


def test_manifest_matches_committed_files():
    manifest = bundled.manifest()
    for rel, digest in manifest["sha256"].items():
        with open(os.path.join(bundled.BUNDLED_DIR, rel), "rb") as f:
            assert hashlib.sha256(f.read()).hexdigest() == digest, f"{rel} changed since the build: run make data"
    total = sum(os.path.getsize(os.path.join(bundled.BUNDLED_DIR, rel)) for rel in manifest["sha256"])
    assert total < 8 * 2 ** 20, "the bundle must stay a few MB"


def test_pretraining_records_are_monolingual_documents(pretrain):
    for split, docs in pretrain.items():
        ids = [d["id"] for d in docs]
        assert len(ids) == len(set(ids))
        langs = collections.Counter(d["lang"] for d in docs)
        assert set(langs) == set(LANGS), f"{split} lacks some language"
        for doc in docs:
            assert set(doc) == {"id", "lang", "source", "text"}
            assert doc["text"].strip()
            assert doc["source"] in ("udhr", "debian")
            assert doc["id"].startswith(doc["source"] + "/")
            # One language per document: a Debian document is the translation into exactly doc["lang"].
            if doc["source"] == "debian":
                assert doc["id"].endswith("/" + doc["lang"])
    assert not set(d["id"] for d in pretrain["train"]) & set(d["id"] for d in pretrain["validation"])


def test_heldout_formats_and_sizes(heldout):
    udhr = heldout["udhr_parallel"]
    assert {r["split"] for r in udhr} == {"dev", "test"}
    for r in udhr:
        assert set(r["texts"]) == set(LANGS) and r["id"].split(".")[0] in ("preamble", "article")
    counts = collections.Counter(r["split"] for r in udhr)
    assert counts["dev"] >= 20 and counts["test"] >= 20
    for r in heldout["debian_translation"]:
        assert "en" in r["texts"] and len(r["texts"]) >= 2 and set(r["texts"]) <= set(DEBIAN_LANGS)
        assert len(r["id"]) == 32 and r["split"] in ("dev", "test")
    summ = collections.Counter((r["lang"], r["split"]) for r in heldout["debian_summarization"])
    trans = collections.Counter((lang, r["split"]) for r in heldout["debian_translation"]
                                for lang in r["texts"] if lang != "en")
    for lang in DEBIAN_LANGS:
        assert 20 <= summ[(lang, "dev")] <= 50 and 100 <= summ[(lang, "test")] <= 200
        if lang != "en":
            assert 20 <= trans[(lang, "dev")] <= 50 and 100 <= trans[(lang, "test")] <= 200
    for r in heldout["debian_summarization"]:
        assert r["document"].strip() and r["summary"].strip() and r["lang"] in DEBIAN_LANGS
    # An md5 is dev or test, never both.
    split_of = collections.defaultdict(set)
    for name in ("debian_translation", "debian_summarization"):
        for r in heldout[name]:
            split_of[r["id"]].add(r["split"])
    assert all(len(s) == 1 for s in split_of.values())


def test_no_heldout_segment_or_translation_in_pretraining_by_id(pretrain, heldout):
    udhr_ids = {r["id"] for r in heldout["udhr_parallel"]}
    md5s = {r["id"] for name in ("debian_translation", "debian_summarization") for r in heldout[name]}
    for docs in pretrain.values():
        for doc in docs:
            parts = doc["id"].split("/")
            if doc["source"] == "udhr":
                assert parts[2] not in udhr_ids, doc["id"]
            else:
                assert parts[1] not in md5s, doc["id"]


def test_no_13gram_overlap_between_heldout_and_pretraining(pretrain, heldout, sections):
    """AlexaTM-style decontamination, checked from scratch: word 13-grams (character 13-grams for Japanese),
    plus whole short segments against whole lines/paragraphs of pretraining text. The Debian section dev/test
    descriptions (every language) are held out too; its training descriptions may be pretrained on."""
    held = set()
    texts = 0
    for r in heldout["udhr_parallel"] + heldout["debian_translation"]:
        for lang, text in r["texts"].items():
            held |= decontamination.ngram_keys(text, lang)
            texts += 1
    for r in heldout["debian_summarization"]:
        held |= decontamination.ngram_keys(r["document"], r["lang"])
        held |= decontamination.ngram_keys(r["summary"], r["lang"])
    for r in sections:
        if r["split"] != "train":
            held |= decontamination.ngram_keys(r["summary"], r["lang"])
            held |= decontamination.ngram_keys(r["description"], r["lang"])
            texts += 1
    assert texts > 3000 and len(held) > 50_000
    contaminated = [doc["id"] for docs in pretrain.values() for doc in docs
                    if decontamination.document_keys(doc["text"], doc["lang"]) & held]
    assert contaminated == []


def test_ngram_keys_catch_real_overlap(heldout):
    # The detector itself works: a pretraining document quoting a held-out paragraph (or a Japanese one
    # reflowed without spaces) is caught.
    en = heldout["udhr_parallel"][0]["texts"]["en"]
    ja = heldout["udhr_parallel"][0]["texts"]["ja"]
    held = decontamination.ngram_keys(en, "en") | decontamination.ngram_keys(ja, "ja")
    assert decontamination.document_keys("Preface. " + en.upper() + " Fin.", "en") & held
    assert decontamination.document_keys("前文" + ja.replace("、", " "), "ja") & held
    assert not decontamination.document_keys("An unrelated sentence about package managers.", "en") & held


# ------------------------------------------------------------------------------ Debian section classification
NLU_FIELDS = {"id", "md5", "lang", "split", "summary", "description", "section", "tags"}


def test_section_records_and_splits(sections):
    """English-only training; dev and test in all 8 languages, parallel (the same md5s in every language);
    only the summary and description as text (no package names); ids unique."""
    assert [r["id"] for r in sections] == [f"{r['md5']}/{r['lang']}" for r in sections]
    assert len({r["id"] for r in sections}) == len(sections)
    for r in sections:
        assert set(r) == NLU_FIELDS, "records hold exactly these fields: no package names"
        assert r["summary"].strip() and r["description"].strip() and len(r["md5"]) == 32
        assert isinstance(r["tags"], list) and all("::" in t for t in r["tags"])
    assert {r["lang"] for r in sections if r["split"] == "train"} == {"en"}
    md5s = collections.defaultdict(set)
    for r in sections:
        md5s[(r["split"], r["lang"])].add(r["md5"])
    for split in ("dev", "test"):
        assert {lang for s, lang in md5s if s == split} == set(DEBIAN_LANGS)
        assert all(md5s[(split, lang)] == md5s[(split, "en")] for lang in DEBIAN_LANGS)
    train, dev, test = md5s[("train", "en")], md5s[("dev", "en")], md5s[("test", "en")]
    assert not (train & dev or train & test or dev & test)
    # Each description has one section whatever its language.
    section_of = collections.defaultdict(set)
    for r in sections:
        section_of[r["md5"]].add(r["section"])
    assert all(len(s) == 1 for s in section_of.values())


def test_section_counts_and_labels_match_the_manifest(sections):
    info = bundled.manifest()["nlu"]["debian_section"]
    labels = info["labels"]
    assert len(labels) >= 15 and labels == sorted(labels)
    assert {r["section"] for r in sections} <= set(labels)
    counts = collections.Counter((r["split"], r["lang"]) for r in sections)
    assert counts == collections.Counter({(split, lang): n for split, by_lang in info["counts"].items()
                                          for lang, n in by_lang.items()})
    assert 3000 <= counts[("train", "en")] <= 6000
    for lang in DEBIAN_LANGS:
        assert 40 <= counts[("dev", lang)] <= 60 and 150 <= counts[("test", lang)] <= 250
    train_labels = collections.Counter(r["section"] for r in sections if r["split"] == "train")
    assert set(train_labels) == set(labels) and min(train_labels.values()) >= 40, "every label is learnable"
    for key, by_label in info["label_counts"].items():
        split, lang = key.split("/")
        assert by_label == dict(collections.Counter(r["section"] for r in sections
                                                    if r["split"] == split and r["lang"] == lang))
    majority = max(sorted(train_labels), key=train_labels.get)
    assert info["majority_class"] == majority
    for (split, lang), n in counts.items():
        hits = sum(r["section"] == majority for r in sections if r["split"] == split and r["lang"] == lang)
        assert info["majority_accuracy"][split][lang] == pytest.approx(hits / n, abs=1e-4)


def test_section_train_and_test_are_one_population(sections):
    """The English training descriptions follow the dev/test label distribution (drawn per section to it), so
    the majority class is the same in both and a classifier's test accuracy measures what it learned."""
    train = collections.Counter(r["section"] for r in sections if r["split"] == "train")
    held = collections.Counter(r["section"] for r in sections if r["split"] != "train" and r["lang"] == "en")
    n_train, n_held = sum(train.values()), sum(held.values())
    total_variation = 0.5 * sum(abs(train[s] / n_train - held[s] / n_held) for s in set(train) | set(held))
    assert total_variation < 0.1, total_variation
    assert max(train, key=train.get) == max(held, key=held.get)
    assert set(train) == set(held) == set(bundled.manifest()["nlu"]["debian_section"]["labels"])


def test_section_eval_md5s_are_new_and_not_pretrained_on(pretrain, heldout, sections):
    """No dev/test md5 (in any language) is a pretraining document, and none of the section task's md5s (train
    included) is in the older held-out Debian sets."""
    eval_md5 = {r["md5"] for r in sections if r["split"] != "train"}
    assert len(eval_md5) >= 200
    old_md5 = {r["id"] for name in ("debian_translation", "debian_summarization") for r in heldout[name]}
    assert not {r["md5"] for r in sections} & old_md5
    pretrained = {doc["id"].split("/")[1] for docs in pretrain.values() for doc in docs if doc["source"] == "debian"}
    assert not eval_md5 & pretrained
