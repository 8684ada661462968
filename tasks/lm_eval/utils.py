"""The data loader and document filters of the lm-eval task YAMLs in this folder (``!function utils.NAME``).

The data are the files bundled inside the installed package (``alexatm_jax/data/bundled``), found through the
package rather than the working directory, so the tasks run from anywhere (and from the copy of this folder
that ``pip install`` puts in ``alexatm_jax/task_cards/lm_eval``). Each bundled file holds several languages and
splits in one JSON-lines file (``split``: train / dev / test): a task loads it once as every split it uses,
and the filters below keep that split's records.
"""

import os


def bundled_dataset(bundled_file, splits=("test",), **_metadata):
    """``custom_dataset`` of the YAMLs: the bundled JSON-lines file ``bundled_file`` (relative to
    ``alexatm_jax/data/bundled``, e.g. ``nlu/debian_section.jsonl.gz``) as a DatasetDict with the same records
    under each name in ``splits``. lm-eval passes the task's ``metadata`` (its version...) too: ignored."""
    import datasets

    from alexatm_jax.data import bundled

    if isinstance(splits, str):
        splits = [splits]
    path = bundled.require_bundled(os.path.join(bundled.BUNDLED_DIR, bundled_file))
    records = datasets.load_dataset("json", data_files=path, split="train")
    return datasets.DatasetDict({name: records for name in splits})


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
