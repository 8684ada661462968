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

Corpora held in memory (the bundled one, ``files_source``) are tokenized once per process and shard, and every
example is computed from its position (``ObjectiveTask``, ``preprocessors.PositionalExamples``): documents are
reordered each epoch without shuffle buffers, and the training pipeline resumes such mixtures exactly from a
few counters, however often a job is restarted. TFDS sources go through seqio's own pipeline instead (shuffle
buffer, ``pack_documents``); the training pipeline resumes them by replaying.
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

from alexatm_jax.data import bundled, preprocessors, text_files, vocab as vocab_lib

LANGS = bundled.LANGS
LANG_IDS = {lang: i for i, lang in enumerate(LANGS)}
DEFAULT_OBJECTIVE_RATES = {"denoise": 0.8, "clm": 0.2}
PREFIX = "alexatm_demo"


# ------------------------------------------------------------------------------------------- sources
class InMemorySource(seqio.DataSource):
    """Records held in memory, loaded once per split by ``loader(split)`` (cached), with random access: the
    tasks built on a subclass read a shard's records by position. ``records(split)`` is the whole split."""

    def __init__(self, loader: Callable[[str], list], splits: Sequence[str], description: str):
        self._loader = loader
        self._cache: Dict[str, list] = {}
        self._tables: Dict[tuple, object] = {}
        self._description = description
        super().__init__(splits=splits, num_input_examples=None, caching_permitted=False)

    def __repr__(self):
        return f"{type(self).__name__}({self._description})"

    def records(self, split: str) -> list:
        if split not in self.splits:
            raise ValueError(f"{self._description} has no split {split!r}: it has {', '.join(self.splits)}")
        if split not in self._cache:
            self._cache[split] = self._loader(split)
        return self._cache[split]

    def num_input_examples(self, split: str) -> int:
        return len(self.records(split))

    def shard(self, split: str, shard_info: Optional[seqio.ShardInfo]) -> tuple[list, int, int]:
        """(records of one shard in record order, shard index, shard count): records ``index, index + count,
        ...``, so processes read disjoint records whatever their seeds."""
        records = self.records(split)
        index, count = (shard_info.index, shard_info.num_shards) if shard_info else (0, 1)
        if count > len(records):
            raise ValueError(f"{self._description} split {split!r} has {len(records)} records, fewer than the "
                             f"{count} shards requested: use fewer processes or more data")
        return records[index::count], index, count

    @property
    def supports_arbitrary_sharding(self) -> bool:
        return True

    def list_shards(self, split: str) -> Sequence[str]:
        return [split]


class InMemoryTextSource(InMemorySource):
    """Documents ``{"text": str}`` held in memory, sharded by record index (record ``i`` belongs to shard
    ``i % num_shards``), so processes with any seeds read disjoint records.

    ``loader(split)`` returns the list of texts; it runs once per split (cached). The source has random
    access: ``token_table`` tokenizes a shard once (cached), and the tasks built on it (``ObjectiveTask``)
    turn the table into examples by position, reordering documents every epoch without a shuffle buffer.
    """

    def texts(self, split: str) -> List[str]:
        return self.records(split)

    def shard_texts(self, split: str, shard_info: Optional[seqio.ShardInfo]) -> List[str]:
        """The texts of one shard, in record order: records ``index, index + num_shards, ...``."""
        return self.shard(split, shard_info)[0]

    def token_table(self, split: str, shard_info: Optional[seqio.ShardInfo], vocabulary) -> preprocessors.TokenTable:
        """One shard's documents tokenized with ``vocabulary`` (no EOS), cached per (split, shard, vocabulary)."""
        index, count = (shard_info.index, shard_info.num_shards) if shard_info else (0, 1)
        key = (split, index, count, id(vocabulary))
        if key not in self._tables:
            table = preprocessors.TokenTable.from_lists(tokenize_texts(vocabulary, self.shard_texts(split, shard_info)))
            self._tables[key] = (vocabulary, table)  # the vocabulary keeps its id from being reused while cached
        return self._tables[key][1]

    def get_dataset(self, split: str = "train", shuffle: bool = True, seed: Optional[int] = None,
                    shard_info: Optional[seqio.ShardInfo] = None, *, sequence_length=None, use_cached=False,
                    num_epochs=1) -> tf.data.Dataset:
        """One pass over the shard's ``{"text"}`` records (seqio's source interface), in a random order chosen
        by ``seed`` when ``shuffle``."""
        texts = self.shard_texts(split, shard_info)
        table = tf.constant(texts, tf.string)
        order_seed = preprocessors.stream_seed(seed, self._description, split, shard_info, shuffle)
        size = len(texts)

        def record(index):
            if shuffle:
                index = preprocessors.permutation(index, size, order_seed, tf.constant(0, tf.int64))
            return {"text": tf.gather(table, index)}

        return tf.data.Dataset.range(size).map(tf.autograph.experimental.do_not_convert(record),
                                               num_parallel_calls=tf.data.AUTOTUNE)


def tokenize_texts(vocabulary, texts: Sequence[str]) -> List[List[int]]:
    """``texts`` as token ids (no EOS), as seqio's ``tokenize`` preprocessor would give them. A SentencePiece
    vocabulary encodes the whole list in one call of its C++ tokenizer (the same model that seqio's
    TensorFlow op runs)."""
    if isinstance(vocabulary, seqio.SentencePieceVocabulary):
        return vocabulary.tokenizer.encode(list(texts), out_type=int)
    return [list(vocabulary.encode(text)) for text in texts]


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
        with text_files.named_read_errors(path), opener(path, "rt", encoding="utf-8") as f:
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
    """TfdsDataSource whose documents come out as ``{"text": ...}`` whatever the dataset calls them.

    No random access: its tasks use seqio's own pipeline (a shuffle buffer), and the training pipeline resumes
    them by replaying (``pipeline.BatchIterator.restore``).
    """

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
def _chunk_length(sequence_length: Mapping[str, int], objective: str) -> int:
    """Tokens per packed chunk for a packing objective (denoise, span corruption, UL2 R/X)."""
    if objective == "denoise":
        return preprocessors.denoise_chunk_length(sequence_length)
    _, mean, density = preprocessors.UL2_MODES.get(objective, (None, 3.0, 0.15))
    prefix = 1 if objective.startswith("ul2") else 0
    return preprocessors.span_corruption_chunk_length(sequence_length, density, mean, prefix)


def _is_prefix_lm(objective: str) -> bool:
    """CLM and UL2's S mode read one document piece per example; the others read packed chunks."""
    return objective in ("clm", "ul2_s")


def _pack(dataset, sequence_length, output_features, objective):
    ids = vocab_lib.special_token_ids(output_features["targets"].vocabulary)
    return preprocessors.pack_documents(dataset, _chunk_length(sequence_length, objective), ids["doc"])


def _split_for_prefix_lm(dataset, sequence_length):
    return preprocessors.drop_short(preprocessors.split_documents(
        dataset, preprocessors.clm_piece_length(sequence_length)))


def objective_function(objective: str, vocabulary) -> Callable:
    """``fn(tokens [n], seed [2]) -> {"inputs", "targets"[, "num_spans"]}`` for ``objective``."""
    ids = vocab_lib.special_token_ids(vocabulary)
    if objective == "denoise":
        return preprocessors.denoise_example
    if objective == "clm":
        return functools.partial(preprocessors.clm_example, clm_token_id=ids["clm"])
    if objective == "span_corruption":
        return functools.partial(preprocessors.span_corruption_example, first_sentinel_id=ids["sentinels"][0])
    token, mean, density = preprocessors.UL2_MODES[objective]
    mode_id = ids[token.strip("[]").lower()]
    if objective == "ul2_s":
        return functools.partial(preprocessors.clm_example, clm_token_id=mode_id)
    return functools.partial(preprocessors.span_corruption_example, first_sentinel_id=ids["sentinels"][0],
                             noise_density=density, mean_noise_span_length=mean, prefix_token_id=mode_id)


_STEPS: Dict[tuple, tuple] = {}


def objective_step(objective: str, features: Mapping[str, seqio.Feature],
                   sequence_length: Mapping[str, int]) -> Callable:
    """``step(example, params, position)`` for ``preprocessors.PositionalExamples.then``: the objective on
    ``example["targets"]`` (a chunk or piece), seeded by (``params["noise_seed"]``, position), EOS after
    trimming, and the labels (``params["lang_id"]``). One function object per (objective, vocabulary, lengths),
    so the tasks of every language share one traced graph."""
    key = (objective, id(features["inputs"].vocabulary), id(features["targets"].vocabulary),
           tuple(sorted(sequence_length.items())))
    if key not in _STEPS:
        fn = objective_function(objective, features["targets"].vocabulary)

        # A tf.function, so that seqio's per-task datasets (statistics, seqio mixtures) trace it once too.
        @tf.function(input_signature=[tf.TensorSpec([None], tf.int32), tf.TensorSpec([2], tf.int64)],
                     autograph=False)
        def apply(tokens, seed):
            ex = dict(fn(tokens, seed))
            ex.setdefault("num_spans", tf.constant(0, tf.int32))
            return preprocessors.eos_after_trim(ex, features, sequence_length)

        def step(example, params, position):
            ex = apply(example["targets"], preprocessors.seed_pair(params["noise_seed"], position))
            return preprocessors.with_labels(ex, objective, params["lang_id"])

        _STEPS[key] = (features, step)  # the features keep the ids in the key from being reused
    return _STEPS[key][1]


def _objective(dataset, output_features, objective):
    fn = objective_function(objective, output_features["targets"].vocabulary)

    @seqio.map_over_dataset(num_seeds=1)
    def apply(ex, seed):
        return dict(ex, **fn(ex["targets"], seed))

    return apply(dataset)


def objective_preprocessors(objective: str, lang: str) -> list:
    """The seqio preprocessor list for one objective and language (after the source's ``{"text"}``). Tasks on
    in-memory sources compute the same examples by position instead (``ObjectiveTask``)."""
    _check_objective(objective, lang)

    def pack(dataset, sequence_length, output_features):
        if sequence_length is None:
            raise ValueError("these tasks need sequence_length={'inputs': N, 'targets': M}")
        if _is_prefix_lm(objective):
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


def _check_objective(objective: str, lang: str) -> None:
    if objective not in preprocessors.OBJECTIVES:
        raise ValueError(f"unknown objective {objective!r}: choose from {', '.join(preprocessors.OBJECTIVES)}")
    if lang not in LANG_IDS:
        raise ValueError(f"unknown language {lang!r}: supported languages are {' '.join(LANGS)}")


def task_name(prefix: str, objective: str, lang: str) -> str:
    return f"{prefix}_{objective}_{lang}"


class ObjectiveTask(preprocessors.PositionalTask):
    """One objective on one language. On an ``InMemoryTextSource`` its examples are computed by position: the
    shard's token table -> a packed chunk (``preprocessors.packed_chunks``) or a document piece
    (``document_pieces``) -> the objective, seeded by the position -> labels, EOS after trimming. The same steps
    as ``objective_preprocessors``, which other sources (TFDS) go through in seqio's own pipeline."""

    def __init__(self, *args, objective: str, lang: str, **kwargs):
        super().__init__(*args, **kwargs)
        self.objective, self.lang = objective, lang

    @property
    def supports_positions(self) -> bool:
        return isinstance(self.source, InMemoryTextSource)

    def positional_examples(self, split, sequence_length, shard_info, shuffle, seed):
        if sequence_length is None:
            raise ValueError("these tasks need sequence_length={'inputs': N, 'targets': M}")
        vocabulary = self.output_features["targets"].vocabulary
        table = self.source.token_table(split, shard_info, vocabulary)
        stream_seed = self.stream_seed(seed, split, shard_info, shuffle)
        if _is_prefix_lm(self.objective):
            pieces = preprocessors.document_pieces(table, preprocessors.clm_piece_length(sequence_length),
                                                   shuffle=shuffle, seed=stream_seed)
        else:
            pieces = preprocessors.packed_chunks(table, _chunk_length(sequence_length, self.objective),
                                                 vocab_lib.special_token_ids(vocabulary)["doc"], shuffle=shuffle,
                                                 seed=stream_seed)
        return pieces.then(objective_step(self.objective, self.output_features, sequence_length),
                           noise_seed=preprocessors.derive_seed(stream_seed, "noise"), lang_id=LANG_IDS[self.lang])


def register_task(name: str, source: seqio.DataSource, objective: str, lang: str, vocabulary=None,
                  shuffle_buffer_size: int = 32) -> seqio.Task:
    """One objective on one language (an ``ObjectiveTask``). ``shuffle_buffer_size`` only matters for sources
    without random access (TFDS), whose examples go through seqio's shuffle buffer."""
    _check_objective(objective, lang)
    seqio.TaskRegistry.remove(name)
    return seqio.TaskRegistry.add(name, task_cls=ObjectiveTask, source=source,
                                  preprocessors=objective_preprocessors(objective, lang),
                                  output_features=output_features(vocabulary), shuffle_buffer_size=shuffle_buffer_size,
                                  objective=objective, lang=lang)


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


def held_out_split(texts: Sequence[str], fraction: float, split: str) -> List[str]:
    """Deterministic train/validation split of one language's documents: every document whose position
    falls on the validation grid (about ``fraction`` of them, at least one) goes to ``validation``."""
    if len(texts) < 2:
        raise ValueError(f"{len(texts)} document(s): at least 2 are needed to hold one out for validation "
                         "(or give a 'validation' file pattern)")
    count = max(1, round(fraction * len(texts)))
    held = {round(i * len(texts) / count) for i in range(count)}
    return [t for i, t in enumerate(texts) if (i in held) == (split == "validation")]


@gin.configurable(module="alexatm_jax")
def text_files_mixture(files: Mapping[str, object] = gin.REQUIRED, name: str = "text_files",
                       objectives: Sequence[str] = ("denoise", "clm"), validation_fraction: float = 0.02,
                       text_key: str = "text", tokenizer_path: Optional[str] = None) -> str:
    """Registers the mixture ``name`` (AlexaTM's objectives over your own unlabelled text, e.g. in-domain text
    for second-stage pretraining) and returns its name, so a run file can write
    ``MIXTURE_OR_TASK_NAME = @text_files_mixture()``.

    ``files``: ``{lang: glob}`` (a ``validation_fraction`` of each language's documents is held out, by
    position) or ``{lang: {"train": glob, "validation": glob}}``; files as ``read_text_files`` reads them.
    Languages are weighted by their characters with gin's ``alexatm_mixture.alpha``. ``tokenizer_path``: the
    SentencePiece model of the run (default: the bundled one)."""
    if not isinstance(files, Mapping) or not files:
        raise ValueError(f"text_files_mixture.files must map languages to file globs, e.g. "
                         f"{{'en': '/data/en/*.txt'}}, got {files!r}")
    if not 0.0 < validation_fraction < 1.0:
        raise ValueError(f"text_files_mixture.validation_fraction must be in (0, 1), got {validation_fraction!r}")
    sources, sizes = {}, {}
    for lang, pattern in files.items():
        if lang not in LANG_IDS:
            raise ValueError(f"text_files_mixture.files: unknown language {lang!r}; supported: {' '.join(LANGS)}")
        if isinstance(pattern, Mapping):
            source = files_source(pattern, text_key)
        elif isinstance(pattern, str):
            texts = read_text_files(pattern, text_key)
            source = InMemoryTextSource(functools.partial(held_out_split, texts, validation_fraction),
                                        ("train", "validation"), f"files {pattern!r} [{lang}]")
        else:
            raise ValueError(f"text_files_mixture.files[{lang!r}] must be a glob or {{'train': glob, "
                             f"'validation': glob}}, got {pattern!r}")
        sources[lang] = source
        sizes[lang] = sum(len(t) for t in source.records("train"))
    vocabulary = vocab_lib.get_vocabulary(tokenizer_path) if tokenizer_path else None
    register_mixture(name, sources, objectives=tuple(objectives), sizes=sizes, vocabulary=vocabulary)
    return name


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


def is_bundled(name: str) -> bool:
    """Whether ``name`` is one of the tasks or mixtures registered on the bundled data (re-registrable with any
    vocabulary, since they hold text)."""
    from alexatm_jax.data import nlu_tasks
    return name.startswith(PREFIX) or name == nlu_tasks.TASK_NAME or name.startswith(nlu_tasks.TASK_NAME + "_")


def use_vocabulary_for_bundled(tokenizer_path: str) -> None:
    """Re-registers every bundled task and mixture (pretraining and NLU) with ``tokenizer_path``'s vocabulary:
    what a run on the bundled data with its own tokenizer (a demo model, a converted model) needs."""
    from alexatm_jax.data import nlu_tasks
    vocabulary = vocab_lib.get_vocabulary(tokenizer_path)
    register_bundled(vocabulary=vocabulary)
    nlu_tasks.register_bundled_nlu(vocabulary=vocabulary)


register_bundled()

# Labelled fine-tuning tasks (debian_section, debian_section_<lang>) register with the rest.
from alexatm_jax.data import nlu_tasks  # noqa: E402,F401
