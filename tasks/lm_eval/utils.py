"""Document filters of the lm-eval task YAMLs in this folder (referenced as ``!function utils.NAME``).

The bundled files hold several languages and splits in one JSON-lines file (``split``: train / dev / test),
so each task loads the file once per split it uses and keeps that split's records here.
"""


def _split(dataset, split, lang=None):
    return dataset.filter(lambda r: r["split"] == split and (lang is None or r["lang"] == lang))


# Debian package description -> archive section (alexatm_jax/data/bundled/nlu/debian_section.jsonl.gz).
def debian_section_en_test(dataset):
    return _split(dataset, "test", "en")


def debian_section_en_dev(dataset):
    return _split(dataset, "dev", "en")


# Debian summary lines, English -> German (alexatm_jax/data/bundled/heldout/debian_translation.jsonl): records
# carry English plus the languages translated for that package; the ones without German are skipped.
def _translation(dataset, split, src="en", tgt="de"):
    def has_pair(record):
        texts = record["texts"] or {}
        return record["split"] == split and bool(texts.get(src)) and bool(texts.get(tgt))

    return dataset.filter(has_pair).map(
        lambda r: {"source": r["texts"][src], "target": r["texts"][tgt]}, remove_columns=["texts"])


def debian_translation_en_de_test(dataset):
    return _translation(dataset, "test")


def debian_translation_en_de_dev(dataset):
    return _translation(dataset, "dev")


# Universal Declaration of Human Rights, English sentences (alexatm_jax/data/bundled/heldout/udhr_parallel.jsonl).
def udhr_en_test(dataset):
    return dataset.filter(lambda r: r["split"] == "test" and bool((r["texts"] or {}).get("en"))).map(
        lambda r: {"text": r["texts"]["en"]}, remove_columns=["texts"])
