"""seqio tasks for fine-tuning on labelled NLU data: Debian section classification as text to text.

Registered on import (``alexatm_jax.data.tasks`` imports this module), with the bundled SentencePiece
vocabulary, from the bundled split ``nlu/debian_section.jsonl.gz`` (see ``alexatm_jax.data.debian_labels``):

- ``debian_section``: English; splits ``train`` (about 4000 descriptions), ``validation`` (the bundled ``dev``
  split) and ``test``. This is the fine-tuning task.
- ``debian_section_<lang>`` for ``en it fr de ja ru es pt``: splits ``validation`` (dev) and ``test`` in that
  language, the same descriptions in every language: zero-shot cross-lingual evaluation of a model fine-tuned
  on ``debian_section``.

An example is ``{"inputs": "Summary: ...\\nDescription: ...\\nSection:", "targets": "python"}`` (the input is
``debian_labels.input_text``, the same text the ``debian_section`` task card prompts with, so a fine-tuned
model can also be scored by rank classification with the card at 0 shots), tokenized with EOS appended to
both; an input too long for ``TASK_FEATURE_LENGTHS`` loses the end of its description but keeps the final
``Section:``. ``id`` and ``lang`` ride along as strings (feature converters drop them). Fine-tune with::

    alexatm-jax train --gin_file=gin_configs/models/tiny.gin --gin_file=gin_configs/runs/finetune.gin \\
      --gin.MIXTURE_OR_TASK_NAME="'debian_section'" --gin.TASK_FEATURE_LENGTHS="{'inputs': 256, 'targets': 8}" ...

Your own data (JSON lines with ``lang, summary, description, section`` and optionally ``tags`` and ``split``)::

    from alexatm_jax.data import nlu_tasks
    nlu_tasks.register_debian_section_task("my_sections", "data.jsonl")   # splits from each record's "split"
    nlu_tasks.register_debian_section_task("my_sections", {"train": "train.jsonl", "validation": "dev.jsonl"})
"""

from __future__ import annotations

import functools
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Union

import numpy as np
import seqio
import tensorflow as tf

from alexatm_jax.data import bundled, debian_labels, preprocessors, tasks, vocab as vocab_lib

TASK_NAME = "debian_section"
LANGS = bundled.DEBIAN_LANGS
# seqio split name -> the bundled file's split name.
SEQIO_SPLITS = {"train": "train", "validation": "dev", "test": "test"}
STRING_FEATURES = ("id", "lang", "inputs", "targets")


class InMemoryExamplesSource(tasks.InMemorySource):
    """Examples (dicts of the string features ``STRING_FEATURES``) held in memory; sharded by example index
    (example ``i`` belongs to shard ``i % num_shards``), so processes read disjoint examples whatever their seeds.

    ``loader(split)`` returns the list of examples; it runs once per split (cached). seqio's
    ``FunctionDataSource`` cannot be sharded across processes, hence this source. It has random access:
    ``ExamplesTask`` reads a shard's examples by position (``shard_tables``), reordered every epoch.
    """

    def examples(self, split: str) -> List[dict]:
        return self.records(split)

    def shard_tables(self, split: str, shard_info: Optional[seqio.ShardInfo]) -> Dict[str, np.ndarray]:
        """One shard's examples as ``{feature: string array [num_examples]}`` (record order), cached."""
        shard, index, count = self.shard(split, shard_info)
        if (split, index, count) not in self._tables:
            self._tables[(split, index, count)] = {key: np.array([ex[key] for ex in shard], dtype=object)
                                                   for key in STRING_FEATURES}
        return self._tables[(split, index, count)]

    def get_dataset(self, split: str = "train", shuffle: bool = True, seed: Optional[int] = None,
                    shard_info: Optional[seqio.ShardInfo] = None, *, sequence_length=None, use_cached=False,
                    num_epochs=1) -> tf.data.Dataset:
        """One pass over the shard's examples (seqio's source interface), in a random order chosen by ``seed``
        when ``shuffle``."""
        tables = {key: tf.constant(values, tf.string) for key, values in self.shard_tables(split, shard_info).items()}
        size = int(tables[STRING_FEATURES[0]].shape[0])
        order_seed = preprocessors.stream_seed(seed, self._description, split, shard_info, shuffle)

        def record(index):
            if shuffle:
                index = preprocessors.permutation(index, size, order_seed, tf.constant(0, tf.int64))
            return {key: tf.gather(table, index) for key, table in tables.items()}

        return tf.data.Dataset.range(size).map(tf.autograph.experimental.do_not_convert(record),
                                               num_parallel_calls=tf.data.AUTOTUNE)


_EXAMPLE_FNS: Dict[tuple, tuple] = {}


def example_fn(features: Mapping[str, seqio.Feature], sequence_length) -> Callable:
    """``fn(tokens, params, position)`` for ``preprocessors.PositionalExamples``: the example at the epoch's
    (permuted, when ``params["shuffle"]``) index of the string tables ``params[feature]`` -> tokenized
    ``inputs``/``targets`` -> long inputs cut keeping the answer cue -> EOS after trimming. One function object
    per (features, lengths), so tasks on different data share one traced graph."""
    key = (tuple((name, id(f.vocabulary), f.add_eos, f.dtype, f.rank) for name, f in sorted(features.items())),
           tuple(sorted((sequence_length or {}).items())))
    if key not in _EXAMPLE_FNS:
        cut = answer_cue_cut(sequence_length, features)

        def fn(tokens, params, position):
            size = params["size"]
            epoch, index = preprocessors.epoch_and_index(position, size)
            index = tf.cond(params["shuffle"], lambda: preprocessors.permutation(index, size, params["seed"], epoch),
                            lambda: index)
            ex = {key: tf.gather(params[key], index) for key in STRING_FEATURES}
            for key in ("inputs", "targets"):
                ex[f"{key}_pretokenized"] = ex[key]
                ex[key] = tf.cast(features[key].vocabulary.encode_tf(ex[key]), tf.int32)
            return preprocessors.eos_after_trim(cut(ex), features, sequence_length)

        _EXAMPLE_FNS[key] = (features, fn)  # the features keep the vocabularies' ids from being reused
    return _EXAMPLE_FNS[key][1]


class ExamplesTask(preprocessors.PositionalTask):
    """A text-to-text task on an ``InMemoryExamplesSource``, computed by position (``example_fn``): the same
    steps as its seqio ``preprocessors``, which other sources go through."""

    @property
    def supports_positions(self) -> bool:
        return isinstance(self.source, InMemoryExamplesSource)

    def positional_examples(self, split, sequence_length, shard_info, shuffle, seed):
        tables = self.source.shard_tables(split, shard_info)
        size = len(tables[STRING_FEATURES[0]])
        seed = preprocessors.derive_seed(self.stream_seed(seed, split, shard_info, shuffle), "order")
        params = dict(tables, size=np.int64(max(size, 1)), shuffle=np.bool_(shuffle), seed=np.int64(seed))
        return preprocessors.PositionalExamples(size, example_fn(self.output_features, sequence_length), None, params)


def to_example(record: dict) -> dict:
    """A ``debian_labels`` record -> the task's string features (input text, target = the section name)."""
    return {"id": str(record.get("id", "")), "lang": record["lang"],
            "inputs": debian_labels.input_text(record["summary"], record["description"]),
            "targets": record["section"]}


def output_features(vocabulary=None) -> Dict[str, seqio.Feature]:
    vocabulary = vocabulary or vocab_lib.get_vocabulary()
    return {"inputs": seqio.Feature(vocabulary=vocabulary, add_eos=True, required=True),
            "targets": seqio.Feature(vocabulary=vocabulary, add_eos=True, required=True)}


def accuracy(targets: Sequence[str], predictions: Sequence[str]) -> dict:
    """seqio metric: % of predictions equal to the target label (a one-line mean needs no library)."""
    if not targets:
        return {"accuracy": 0.0}
    return {"accuracy": 100.0 * sum(t == p for t, p in zip(targets, predictions)) / len(targets)}


def _strip(text, example=None, is_target=False):
    return text.strip()


def answer_cue_cut(sequence_length=None, output_features=None):
    """``fn(example) -> example`` whose ``inputs`` (int ``[length]``), when longer than
    ``sequence_length["inputs"] - 1`` (room for EOS), lose the end of the description, not the answer cue:
    ``tokens[:limit - len(cue)] + cue``. Plain trimming would cut ``Section:`` off, and the model would see a
    different format on long inputs than on short ones. The identity without an inputs length."""
    if not sequence_length or not sequence_length.get("inputs"):
        return lambda ex: ex
    cue_ids = output_features["inputs"].vocabulary.encode(debian_labels.ANSWER_CUE)
    limit = int(sequence_length["inputs"]) - 1
    if limit <= len(cue_ids):
        raise ValueError(f"inputs length {sequence_length['inputs']} leaves no room for the text: use at least "
                         f"{len(cue_ids) + 2} (256 is typical for Debian descriptions)")

    def fn(ex):
        ids = ex["inputs"]
        cue = tf.constant(cue_ids, ids.dtype)
        cut = tf.concat([ids[:limit - len(cue_ids)], cue], axis=0)
        return dict(ex, inputs=tf.cond(tf.shape(ids)[0] > limit, lambda: cut, lambda: ids))

    return fn


def keep_answer_cue(dataset: tf.data.Dataset, sequence_length=None, output_features=None) -> tf.data.Dataset:
    """``answer_cue_cut`` on every example (the seqio preprocessor). Shapes: ``inputs`` [length]."""
    if not sequence_length or not sequence_length.get("inputs"):
        return dataset
    return dataset.map(answer_cue_cut(sequence_length, output_features), num_parallel_calls=tf.data.AUTOTUNE)


def register_task(name: str, source: seqio.DataSource, vocabulary=None) -> seqio.Task:
    """(Re-)register ``name``: tokenize inputs and targets, trim long inputs keeping the answer cue, append EOS
    after trimming to the feature lengths."""
    seqio.TaskRegistry.remove(name)
    return seqio.TaskRegistry.add(
        name, task_cls=ExamplesTask, source=source, output_features=output_features(vocabulary),
        preprocessors=[seqio.preprocessors.tokenize, keep_answer_cue, seqio.preprocessors.append_eos_after_trim],
        postprocess_fn=_strip, metric_fns=[accuracy], shuffle_buffer_size=64)


@functools.lru_cache(maxsize=1)
def _bundled() -> tuple:
    return tuple(debian_labels.bundled_records())


def _bundled_examples(langs: Sequence[str], split: str) -> List[dict]:
    file_split = SEQIO_SPLITS[split]
    return [to_example(r) for r in _bundled() if r["split"] == file_split and r["lang"] in langs]


def register_bundled_nlu(vocabulary=None) -> None:
    """Register ``debian_section`` and ``debian_section_<lang>`` on the bundled split (idempotent);
    ``vocabulary`` re-registers them with another tokenizer."""
    register_task(TASK_NAME, InMemoryExamplesSource(functools.partial(_bundled_examples, ("en",)),
                                                    tuple(SEQIO_SPLITS), "bundled debian_section [en]"),
                  vocabulary)
    for lang in LANGS:
        source = InMemoryExamplesSource(functools.partial(_bundled_examples, (lang,)), ("validation", "test"),
                                        f"bundled debian_section [{lang}]")
        register_task(f"{TASK_NAME}_{lang}", source, vocabulary)


def _split_of(record: dict) -> str:
    return {"dev": "validation"}.get(record.get("split", "train"), record.get("split", "train"))


def register_debian_section_task(name: str, data: Union[str, Mapping[str, str]], *, lang: Optional[str] = None,
                                 vocabulary=None) -> seqio.Task:
    """Register ``name`` on your own JSON lines (fields ``lang, summary, description, section``, optional
    ``tags``; see ``debian_labels``). ``data`` is one file, whose records go to the seqio split named by their
    ``split`` (``train``, ``dev`` -> ``validation``, ``test``; none -> ``train``), or ``{seqio split: file}``.
    ``lang`` keeps only that language. Files are read and checked now: errors name the file and line."""
    if isinstance(data, str):
        by_split: Dict[str, List[dict]] = {}
        for record in debian_labels.read_records(data):
            by_split.setdefault(_split_of(record), []).append(record)
    else:
        if not data:
            raise ValueError("register_debian_section_task needs a file or a {split: file} mapping, got {}")
        by_split = {split: debian_labels.read_records(path) for split, path in data.items()}
    examples = {split: [to_example(r) for r in records if lang is None or r["lang"] == lang]
                for split, records in by_split.items()}
    examples = {split: exs for split, exs in examples.items() if exs}
    if not examples:
        raise ValueError(f"{data} has no records in language {lang!r}: check the 'lang' fields or the lang argument")
    source = InMemoryExamplesSource(examples.__getitem__, tuple(sorted(examples)), f"{name} from {data}")
    return register_task(name, source, vocabulary)


register_bundled_nlu()
