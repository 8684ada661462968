"""seqio sources, tasks and mixtures for AlexaTM-style pretraining.

Registered on import (stable names; the bundled 12-language demo corpus and vocabulary):

- tasks ``alexatm_demo_<objective>_<lang>`` for objective in ``denoise clm span_corruption ul2_r ul2_x
  ul2_s`` and the 12 languages ``ar en fr de hi it ja mr pt es ta te``; splits ``train`` and ``validation``.
- mixtures ``alexatm_demo`` (AlexaTM: 80% denoising / 20% CLM, languages sampled with p ~ n^0.5),
  ``alexatm_demo_denoise``, ``alexatm_demo_clm`` (one objective), ``alexatm_demo_t5`` (T5 span corruption)
  and ``alexatm_demo_ul2`` (UL2 R/X/S modes).

Rates are read from gin when a dataset is built, so a gin file can change them after import::

    alexatm_mixture.alpha = 0.3
    alexatm_mixture.objective_rates = {"denoise": 0.5, "clm": 0.5}

Your own data as a mixture (files by glob: ``.jsonl[.gz]`` records with a ``text`` field, or ``.txt[.gz]``
with one document per line; or a TFDS dataset such as ``c4/multilingual`` / ``wikipedia``)::

    from alexatm_jax.data import tasks
    sources = {
        "en": tasks.files_source({"train": "/data/en/*.jsonl.gz", "validation": "/data/en-val.jsonl"}),
        "de": tasks.tfds_source("wikipedia/20230601.de:1.0.0", splits={"train": "train[:99%]",
                                                                      "validation": "train[99%:]"}),
    }
    tasks.register_mixture("my_mix", sources, objectives=("denoise", "clm"))
    # then: make_batch_iterator("my_mix", {"inputs": 1024, "targets": 1024}, batch_size=8)

Language sizes for the n^alpha rates default to the number of input examples of each source (pass
``sizes={lang: tokens}`` to weight by tokens, as the bundled mixture does from its manifest).
"""

from __future__ import annotations

import functools
import glob as globlib
import gzip
import json
import os
from typing import Callable, Dict, List, Mapping, Optional, Sequence

import gin
import seqio
import tensorflow as tf

from alexatm_jax.data import bundled, preprocessors, vocab as vocab_lib

LANGS = bundled.LANGS
LANG_IDS = {lang: i for i, lang in enumerate(LANGS)}
DEFAULT_OBJECTIVE_RATES = {"denoise": 0.8, "clm": 0.2}
PREFIX = "alexatm_demo"


# ------------------------------------------------------------------------------------------- sources
class InMemoryTextSource(seqio.DataSource):
    """Documents ``{"text": str}`` held in memory, sharded by record index, then shuffled with the seed.

    Sharding comes before shuffling so that processes with any seeds read disjoint records. ``loader(split)``
    returns the list of texts; it runs once per split (cached).
    """

    def __init__(self, loader: Callable[[str], List[str]], splits: Sequence[str], description: str):
        self._loader = loader
        self._cache: Dict[str, List[str]] = {}
        self._description = description
        super().__init__(splits=splits, num_input_examples=None, caching_permitted=False)

    def __repr__(self):
        return f"InMemoryTextSource({self._description})"

    def texts(self, split: str) -> List[str]:
        if split not in self.splits:
            raise ValueError(f"{self._description} has no split {split!r}: it has {', '.join(self.splits)}")
        if split not in self._cache:
            self._cache[split] = self._loader(split)
        return self._cache[split]

    def num_input_examples(self, split: str) -> int:
        return len(self.texts(split))

    @property
    def supports_arbitrary_sharding(self) -> bool:
        return True

    def list_shards(self, split: str) -> Sequence[str]:
        return [split]

    def get_dataset(self, split: str = "train", shuffle: bool = True, seed: Optional[int] = None,
                    shard_info: Optional[seqio.ShardInfo] = None, *, sequence_length=None, use_cached=False,
                    num_epochs=1) -> tf.data.Dataset:
        texts = self.texts(split)
        if shard_info and shard_info.num_shards > len(texts):
            raise ValueError(f"{self._description} split {split!r} has {len(texts)} documents, fewer than the "
                             f"{shard_info.num_shards} shards requested: use fewer processes or more data")
        # Shuffle record indices, not strings: shuffle buffers then hold int64s, which keeps the
        # checkpointed iterator state (BatchIterator.state) small.
        table = tf.constant(texts, tf.string)
        ds = tf.data.Dataset.range(len(texts))
        if shard_info and shard_info.num_shards > 1:
            ds = ds.shard(shard_info.num_shards, shard_info.index)
        if shuffle:
            ds = ds.shuffle(len(texts), seed=seed, reshuffle_each_iteration=True)
        ds = ds.map(lambda i: {"text": tf.gather(table, i)})
        return ds


def _load_bundled(lang: str, split: str) -> List[str]:
    return [rec["text"] for rec in bundled.pretrain_documents(lang, split)]


def bundled_source(lang: str) -> InMemoryTextSource:
    """The bundled corpus for one language (splits ``train`` and ``validation``)."""
    if lang not in LANGS:
        raise ValueError(f"unknown language {lang!r}: the bundled corpus has {' '.join(LANGS)}")
    return InMemoryTextSource(functools.partial(_load_bundled, lang), ("train", "validation"),
                              f"bundled corpus [{lang}]")


def read_text_files(pattern: str, text_key: str = "text") -> List[str]:
    """Documents from every file matching ``pattern``: ``.jsonl``/``.jsonl.gz`` records (``text_key``) or
    ``.txt``/``.txt.gz``/other text with one document per non-blank line. Sorted file order.

    Raises ``FileNotFoundError`` when nothing matches and ``ValueError`` naming file and line for an empty
    document or a record without ``text_key``.
    """
    paths = sorted(globlib.glob(os.path.expanduser(pattern)))
    if not paths:
        raise FileNotFoundError(f"no files match {pattern!r}: check the path or glob")
    texts = []
    for path in paths:
        opener = gzip.open if path.endswith(".gz") else open
        is_jsonl = path.endswith((".jsonl", ".jsonl.gz", ".json", ".json.gz"))
        with opener(path, "rt", encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                if is_jsonl:
                    try:
                        rec = json.loads(line)
                    except json.JSONDecodeError as error:
                        raise ValueError(f"{path}:{lineno}: not valid JSON ({error})") from None
                    if not isinstance(rec, dict) or text_key not in rec:
                        raise ValueError(f"{path}:{lineno}: record has no {text_key!r} field "
                                         "(set text_key to the field holding the document)")
                    text = rec[text_key]
                    if not isinstance(text, str) or not text.strip():
                        raise ValueError(f"{path}:{lineno}: empty document: remove the record or give it text")
                    texts.append(text)
                else:
                    texts.append(line.rstrip("\n"))
    return texts


def files_source(split_patterns: Mapping[str, str], text_key: str = "text") -> InMemoryTextSource:
    """Local files by glob, one pattern per split (``{"train": "data/*.jsonl.gz", ...}``)."""
    if not split_patterns:
        raise ValueError("files_source needs at least one split, e.g. {'train': 'data/*.jsonl'}")
    for split, pattern in split_patterns.items():
        if not globlib.glob(os.path.expanduser(pattern)):
            raise FileNotFoundError(f"no files match {pattern!r} (split {split!r}): check the path or glob")
    return InMemoryTextSource(lambda split: read_text_files(split_patterns[split], text_key),
                              tuple(split_patterns), f"files {dict(split_patterns)}")


def tfds_source(tfds_name: str, splits: Optional[Mapping[str, str]] = None, data_dir: Optional[str] = None,
                text_key: str = "text") -> seqio.DataSource:
    """A TFDS dataset (mC4 ``c4/multilingual``, ``wikipedia/<date>.<lang>``...) already on disk under
    ``data_dir``; its ``text_key`` feature becomes the document. Nothing is downloaded."""
    return _RenamedTfdsSource(tfds_name, splits=splits, tfds_data_dir=data_dir, text_key=text_key)


class _RenamedTfdsSource(seqio.TfdsDataSource):
    """TfdsDataSource whose documents come out as ``{"text": ...}`` whatever the dataset calls them."""

    def __init__(self, tfds_name, splits, tfds_data_dir, text_key):
        super().__init__(tfds_name=tfds_name, splits=splits, tfds_data_dir=tfds_data_dir)
        self._text_key = text_key

    def get_dataset(self, *args, **kwargs):
        key = self._text_key
        return super().get_dataset(*args, **kwargs).map(lambda ex: {"text": ex[key]},
                                                         num_parallel_calls=tf.data.AUTOTUNE)


# ------------------------------------------------------------------------------------------- features
def output_features(vocabulary=None) -> Dict[str, seqio.Feature]:
    vocabulary = vocabulary or vocab_lib.get_vocabulary()
    label_vocab = seqio.PassThroughVocabulary(size=0)
    label = functools.partial(seqio.Feature, vocabulary=label_vocab, add_eos=False, required=False,
                              dtype=tf.int32, rank=0)
    return {
        "inputs": seqio.Feature(vocabulary=vocabulary, add_eos=True, required=True),
        "targets": seqio.Feature(vocabulary=vocabulary, add_eos=True, required=True),
        "objective": label(),
        "lang": label(),
        "num_spans": label(),
    }


# ------------------------------------------------------------------- objective preprocessing chains
def _pack(dataset, sequence_length, output_features, objective):
    ids = vocab_lib.special_token_ids(output_features["targets"].vocabulary)
    if objective == "denoise":
        length = preprocessors.denoise_chunk_length(sequence_length)
    else:
        _, mean, density = preprocessors.UL2_MODES.get(objective, (None, 3.0, 0.15))
        prefix = 1 if objective.startswith("ul2") else 0
        length = preprocessors.span_corruption_chunk_length(sequence_length, density, mean, prefix)
    return preprocessors.pack_documents(dataset, length, ids["doc"])


def _split_for_prefix_lm(dataset, sequence_length):
    return preprocessors.drop_short(preprocessors.split_documents(
        dataset, preprocessors.clm_piece_length(sequence_length)))


def _objective(dataset, output_features, objective):
    ids = vocab_lib.special_token_ids(output_features["targets"].vocabulary)
    if objective == "denoise":
        return preprocessors.alexatm_denoise(dataset)
    if objective == "clm":
        return preprocessors.alexatm_clm(dataset, ids["clm"])
    if objective == "span_corruption":
        return preprocessors.t5_span_corruption(dataset, ids["sentinels"][0])
    token, mean, density = preprocessors.UL2_MODES[objective]
    mode_id = ids[token.strip("[]").lower()]
    if objective == "ul2_s":
        return preprocessors.prefix_lm(dataset, mode_id)
    return preprocessors.t5_span_corruption(dataset, ids["sentinels"][0], density, mean, prefix_token_id=mode_id)


def objective_preprocessors(objective: str, lang: str) -> list:
    """The seqio preprocessor list for one objective and language (after the source's ``{"text"}``)."""
    if objective not in preprocessors.OBJECTIVES:
        raise ValueError(f"unknown objective {objective!r}: choose from {', '.join(preprocessors.OBJECTIVES)}")
    if lang not in LANG_IDS:
        raise ValueError(f"unknown language {lang!r}: supported languages are {' '.join(LANGS)}")
    prefix_lm = objective in ("clm", "ul2_s")

    def pack(dataset, sequence_length, output_features):
        if sequence_length is None:
            raise ValueError("these tasks need sequence_length={'inputs': N, 'targets': M}")
        if prefix_lm:
            return _split_for_prefix_lm(dataset, sequence_length)
        return _pack(dataset, sequence_length, output_features, objective)

    def apply_objective(dataset, output_features):
        return _objective(dataset, output_features, objective)

    return [
        preprocessors.text_to_targets,
        seqio.preprocessors.tokenize,
        pack,
        apply_objective,
        functools.partial(preprocessors.add_labels, objective=objective, lang_id=LANG_IDS[lang]),
        seqio.preprocessors.append_eos_after_trim,
    ]


def task_name(prefix: str, objective: str, lang: str) -> str:
    return f"{prefix}_{objective}_{lang}"


def register_task(name: str, source: seqio.DataSource, objective: str, lang: str, vocabulary=None,
                  shuffle_buffer_size: int = 32) -> seqio.Task:
    seqio.TaskRegistry.remove(name)
    return seqio.TaskRegistry.add(name, source=source, preprocessors=objective_preprocessors(objective, lang),
                                  output_features=output_features(vocabulary),
                                  shuffle_buffer_size=shuffle_buffer_size)


# ------------------------------------------------------------------------------------------- mixtures
@gin.configurable("alexatm_mixture")
def mixture_settings(alpha: float = 0.5, objective_rates: Optional[Mapping[str, float]] = None):
    """Gin-settable sampling: languages with p ~ n^alpha, objectives at ``objective_rates`` (normalised)."""
    return alpha, dict(objective_rates if objective_rates is not None else DEFAULT_OBJECTIVE_RATES)


def language_probabilities(sizes: Mapping[str, float], alpha: float) -> Dict[str, float]:
    """p_lang = n_lang^alpha / sum n^alpha (AlexaTM/XLM-R sampling)."""
    if not sizes:
        raise ValueError("no languages to sample from")
    if any(n <= 0 for n in sizes.values()):
        raise ValueError(f"every language needs data; got sizes {dict(sizes)}")
    weights = {lang: float(n) ** alpha for lang, n in sizes.items()}
    total = sum(weights.values())
    return {lang: w / total for lang, w in weights.items()}


def mixture_rates(sizes: Mapping[str, float], objectives: Sequence[str],
                  fixed_objective_rates: Optional[Mapping[str, float]] = None) -> Dict[tuple, float]:
    """``{(objective, lang): rate}``: language share times objective share (both from gin unless fixed)."""
    alpha, gin_rates = mixture_settings()
    rates = dict(fixed_objective_rates) if fixed_objective_rates is not None else {
        o: gin_rates.get(o, 0.0) for o in objectives}
    if fixed_objective_rates is None and not any(rates.values()):
        rates = {o: 1.0 for o in objectives}  # gin rates name none of this mixture's objectives: equal
    total = sum(rates.values())
    p_lang = language_probabilities(sizes, alpha)
    return {(o, lang): rates.get(o, 0.0) / total * p for o in objectives for lang, p in p_lang.items()}


def register_mixture(name: str, sources: Mapping[str, seqio.DataSource], objectives: Sequence[str] = ("denoise", "clm"),
                     sizes: Optional[Mapping[str, float]] = None, vocabulary=None,
                     objective_rates: Optional[Mapping[str, float]] = None,
                     task_prefix: Optional[str] = None) -> seqio.Mixture:
    """One task per (objective, language) named ``<task_prefix>_<objective>_<lang>`` and a mixture ``name``.

    ``sizes`` (lang -> n) weights languages by n^alpha; default: each source's number of train examples.
    ``objective_rates`` fixes the objective shares; default: gin's ``alexatm_mixture.objective_rates``.
    """
    task_prefix = task_prefix or name
    for lang in sources:
        if lang not in LANG_IDS:
            raise ValueError(f"unknown language {lang!r}: supported languages are {' '.join(LANGS)}")
    if sizes is None:
        sizes = {lang: source.num_input_examples("train") for lang, source in sources.items()}
    sizes = dict(sizes)
    tasks = []
    for objective in objectives:
        for lang, source in sources.items():
            tasks.append(register_task(task_name(task_prefix, objective, lang), source, objective, lang, vocabulary))

    def rate(task):
        objective, lang = _OBJ_LANG[task.name]
        return mixture_rates(sizes, objectives, objective_rates)[(objective, lang)]

    for objective in objectives:
        for lang in sources:
            _OBJ_LANG[task_name(task_prefix, objective, lang)] = (objective, lang)
    seqio.MixtureRegistry.remove(name)
    return seqio.MixtureRegistry.add(name, [(t.name, rate) for t in tasks])


_OBJ_LANG: Dict[str, tuple] = {}


def bundled_sizes(split: str = "train") -> Dict[str, int]:
    """Tokens per language in the bundled corpus (from its manifest)."""
    return {lang: counts["tokens"] for lang, counts in bundled.manifest()["pretrain"][split].items()}


def register_bundled(vocabulary=None) -> None:
    """Register the demo tasks and mixtures on the bundled corpus (idempotent). ``vocabulary`` (default: the
    bundled SentencePiece model) re-registers them with another tokenizer, e.g. one you trained."""
    sources = {lang: bundled_source(lang) for lang in LANGS}
    sizes = bundled_sizes()
    register = functools.partial(register_mixture, sources=sources, sizes=sizes, task_prefix=PREFIX,
                                 vocabulary=vocabulary)
    register(PREFIX, objectives=("denoise", "clm"))
    register(f"{PREFIX}_denoise", objectives=("denoise",), objective_rates={"denoise": 1.0})
    register(f"{PREFIX}_clm", objectives=("clm",), objective_rates={"clm": 1.0})
    register(f"{PREFIX}_t5", objectives=("span_corruption",), objective_rates={"span_corruption": 1.0})
    # UL2's mixture of denoisers: R and X corruption plus S (prefix LM), each with its mode token.
    register(f"{PREFIX}_ul2", objectives=("ul2_r", "ul2_x", "ul2_s"),
             objective_rates={"ul2_r": 0.4, "ul2_x": 0.4, "ul2_s": 0.2})


register_bundled()
