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


def test_no_13gram_overlap_between_heldout_and_pretraining(pretrain, heldout):
    """AlexaTM-style decontamination, checked from scratch: word 13-grams (character 13-grams for Japanese),
    plus whole short segments against whole lines/paragraphs of pretraining text."""
    held = set()
    texts = 0
    for r in heldout["udhr_parallel"] + heldout["debian_translation"]:
        for lang, text in r["texts"].items():
            held |= decontamination.ngram_keys(text, lang)
            texts += 1
    for r in heldout["debian_summarization"]:
        held |= decontamination.ngram_keys(r["document"], r["lang"])
        held |= decontamination.ngram_keys(r["summary"], r["lang"])
    assert texts > 1000 and len(held) > 50_000
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
