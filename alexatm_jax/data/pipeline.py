"""Batches for the trainer: a seqio mixture/task -> packed encoder-decoder features as numpy arrays.

    from alexatm_jax.data.pipeline import make_batch_iterator
    it = make_batch_iterator("alexatm_demo", {"inputs": 512, "targets": 512}, batch_size=8,
                             shard_index=jax.process_index(), num_shards=jax.process_count(), seed=0)
    batch = next(it)            # dict of [8, 512] arrays (see BATCH_KEYS)
    state = it.state()          # JSON-serialisable; save it next to the model checkpoint
    it2 = make_batch_iterator(... same arguments ...); it2.restore(state)   # continues exactly

Each process reads a disjoint shard of every source (records are split by index before shuffling).

Resuming. Tasks on corpora held in memory (the bundled corpus, ``files_source``, the NLU tasks) compute every
example from its position (``preprocessors.PositionalTask``), so the stream is fixed by a few counters: how many
examples the mixture has drawn and how far each task has read. Each batch carries the counters reached after
its last row; ``state()`` saves them and ``restore()`` rebuilds the stream from there. A resumed run therefore
sees exactly the batches an uninterrupted run would have seen, after any number of restarts, in every process,
at no cost that grows with the step (tf.data's own iterator checkpoints could not be restored twice, issue 10;
see ``preprocessors``). Mixtures with a task on another source (TFDS) cannot be addressed by position: their
state is the number of batches read, and ``restore()`` replays the stream up to it (exact, but its cost grows
with the step).

Registering your own data: see ``alexatm_jax.data.tasks`` (``files_source``, ``tfds_source``,
``register_mixture``); any registered seqio task or mixture name works here.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from alexatm_jax.features import BATCH_FEATURES

BATCH_KEYS = BATCH_FEATURES  # the names live in alexatm_jax.features
# 1: tf.data iterator checkpoints (could not be restored twice); 2: positions or a replay count.
STATE_VERSION = 2
# The data modules whose source decides which example sits at which position.
FINGERPRINTED_FILES = ("pipeline.py", "preprocessors.py", "tasks.py", "vocab.py", "nlu_tasks.py", "debian_labels.py",
                       "text_files.py")

_log = logging.getLogger(__name__)
# Overrides the tf.data thread count (default: the CPUs this process may run on); see ``data_threads``.
THREADS_ENV = "ALEXATM_DATA_THREADS"


def data_threads(num_threads: Optional[int] = None) -> int:
    """Threads for tf.data's private pool: ``num_threads`` if given, else ``$ALEXATM_DATA_THREADS``, else the
    CPUs this process may run on (its affinity mask: a container's or ``taskset``'s limit, not the host's
    count). The AUTOTUNE'd ``map`` parallelism is bounded by it."""
    if num_threads is None and os.environ.get(THREADS_ENV):
        value = os.environ[THREADS_ENV]
        if not value.strip().isdigit() or int(value) < 1:
            raise ValueError(f"{THREADS_ENV}={value!r} is not a thread count; set it to a whole number >= 1 "
                             f"or unset it (default: the CPUs this process may use)")
        num_threads = int(value)
    if num_threads is None:
        try:
            num_threads = len(os.sched_getaffinity(0))
        except (AttributeError, OSError):  # no affinity API (macOS)
            num_threads = os.cpu_count() or 1
    if int(num_threads) < 1:
        raise ValueError(f"the data pipeline needs at least one thread, got {num_threads}")
    return int(num_threads)


def _plain(fn):
    """``fn`` traced as written: these functions use TensorFlow control flow explicitly, and AutoGraph's
    conversion (of them and everything they call) was a large part of the time to build the pipeline."""
    import tensorflow as tf

    return tf.autograph.experimental.do_not_convert(fn)


def _check_lengths(task_feature_lengths: Mapping[str, int]) -> Dict[str, int]:
    if set(task_feature_lengths) != {"inputs", "targets"}:
        raise ValueError(f"task_feature_lengths needs exactly the keys 'inputs' and 'targets', got "
                         f"{sorted(task_feature_lengths)}")
    out = {k: int(v) for k, v in task_feature_lengths.items()}
    if min(out.values()) < 4:
        raise ValueError(f"task_feature_lengths must be at least 4 tokens each, got {out}")
    return out


# ---------------------------------------------------------------------------------------- the plan
def _provider(mixture_or_task_name: str, split: str):
    import seqio

    from alexatm_jax.data import tasks  # noqa: F401  (registers the bundled tasks and mixtures)

    try:
        provider = seqio.get_mixture_or_task(mixture_or_task_name)
    except ValueError:
        names = sorted(n for n in seqio.MixtureRegistry.names() if not n.startswith("_"))
        raise ValueError(f"no seqio task or mixture named {mixture_or_task_name!r}; registered mixtures: "
                         f"{', '.join(names)} (register yours with alexatm_jax.data.tasks.register_mixture)") from None
    if split not in provider.splits:
        raise ValueError(f"{mixture_or_task_name} has no split {split!r}: it has {', '.join(provider.splits)}")
    return provider


def _members(provider, split: str) -> List[Tuple[object, float]]:
    """(task, rate) for every task of ``provider`` with ``split``, in seqio's (name) order; a task has rate 1."""
    import seqio

    if isinstance(provider, seqio.Mixture):
        return [(task, float(provider.get_rate(task))) for task in provider.tasks if split in task.splits]
    return [(provider, 1.0)]


def _positional(members) -> bool:
    """True when every task computes its examples by position (then the stream resumes from counters)."""
    from alexatm_jax.data.preprocessors import PositionalTask

    return all(isinstance(task, PositionalTask) and task.supports_positions for task, _ in members)


class Positions:
    """Where a positional stream stands: ``examples`` drawn by the mixture so far and, per task, the position
    of its next example. Batches carry it as an int64 ``[1 + num_tasks]`` vector (``from_vector``)."""

    def __init__(self, examples: int, tasks: Mapping[str, int]):
        self.examples, self.tasks = int(examples), {name: int(p) for name, p in tasks.items()}

    @classmethod
    def start(cls, task_names: Sequence[str]) -> "Positions":
        return cls(0, {name: 0 for name in task_names})

    @classmethod
    def from_vector(cls, vector, task_names: Sequence[str]) -> "Positions":
        vector = [int(v) for v in vector]
        return cls(vector[0], dict(zip(task_names, vector[1:])))

    def to_json(self) -> dict:
        return {"examples": self.examples, "tasks": dict(self.tasks)}


# ---------------------------------------------------------------------------------- positional path
def task_streams(members, lengths: Mapping[str, int], *, split: str, shard_info, seed: int, shuffle: bool) -> list:
    """Every task's ``preprocessors.PositionalExamples`` on this shard (tokenizing its documents once per
    process). Raises when the rates are unusable or a task that can be drawn has no example."""
    names = [task.name for task, _ in members]
    rates = np.array([rate for _, rate in members], np.float64)
    if np.any(rates < 0) or not rates.sum() > 0:
        raise ValueError(f"mixing rates must be >= 0 and not all 0, got {dict(zip(names, rates))}")
    streams = [task.positional_examples(split, lengths, shard_info, shuffle, seed) for task, _ in members]
    for name, stream, rate in zip(names, streams, rates):
        if rate > 0 and stream.per_epoch == 0:
            raise ValueError(f"task {name} has no examples in split {split!r} for shard {shard_info.index} of "
                             f"{shard_info.num_shards} (documents too short for the objective, or too few): give it "
                             "more data or use fewer processes")
    return streams


def mixed_examples(members, streams, *, split: str, shard_info, seed: int, shuffle: bool, repeat: bool,
                   start: Positions, mixture_name: str):
    """The mixture as one stream of ``{"inputs": int32 [<= inputs], "targets": int32 [<= targets], "cursor":
    int64 [1 + num_tasks]}``, resumable at any example; ``streams`` are the tasks' (``task_streams``).

    Example ``i`` comes from the task drawn by a stateless categorical draw seeded by ``i`` (rates as seqio's
    ``sample_from_datasets``: i.i.d. by rate), at that task's next position; ``cursor`` is ``i + 1`` and the
    tasks' next positions after it. Without ``repeat`` the stream ends when it draws a task with no example
    left (seqio's ``stop_on_empty_dataset``). ``start`` is where to begin.
    """
    import tensorflow as tf

    from alexatm_jax.data import preprocessors

    names = [task.name for task, _ in members]
    rates = np.array([rate for _, rate in members], np.float64)
    cumulative = tf.constant(np.cumsum(rates / rates.sum()), tf.float64)
    limits = tf.constant([preprocessors.ENDLESS if repeat else s.per_epoch for s in streams], tf.int64)
    num_tasks = len(members)
    mix_seed = preprocessors.stream_seed(seed, f"{mixture_name} (mixture)", split, shard_info, shuffle)

    def draw(i):
        """The task (int32 scalar) of mixture example ``i``."""
        if num_tasks == 1:
            return tf.constant(0, tf.int32)
        u = tf.random.stateless_uniform([1], seed=preprocessors.seed_pair(mix_seed, i), dtype=tf.float64)
        return tf.minimum(tf.searchsorted(cumulative, u, side="right")[0], num_tasks - 1)

    def step(positions, i):
        task = draw(i)
        after = positions + tf.one_hot(task, num_tasks, dtype=tf.int64)
        return after, (task, positions[task], tf.concat([[i + 1], after], axis=0))

    select = preprocessors.select_examples(streams, keys=("inputs", "targets"))

    def example(task, position, cursor):
        return dict(select(tf.cast(task, tf.int64), position), cursor=cursor)

    # A scan over the task draws (cheap integers) keeps the per-task positions; the examples themselves are then
    # computed from (task, position) in parallel, in order.
    plan = tf.data.Dataset.range(start.examples, preprocessors.ENDLESS)
    plan = plan.scan(tf.constant([start.tasks[name] for name in names], tf.int64), _plain(step))
    if not repeat:
        plan = plan.take_while(_plain(lambda task, position, cursor: position < tf.gather(limits, task)))
    return plan.map(_plain(example), num_parallel_calls=tf.data.AUTOTUNE)


def _append(row, tokens, segment):
    """``row`` (tokens, segment ids, positions: int32 ``[length]``; filled: int32 scalar) with ``tokens``
    ``[n]`` appended as segment ``segment``."""
    import tensorflow as tf

    buf, seg, pos, filled = row
    n = tf.size(tokens)
    where = (filled + tf.range(n))[:, None]
    return (tf.tensor_scatter_nd_update(buf, where, tokens),
            tf.tensor_scatter_nd_update(seg, where, tf.fill([n], segment)),
            tf.tensor_scatter_nd_update(pos, where, tf.range(n)), filled + n)


def _empty_row(length: int):
    import tensorflow as tf

    zeros = tf.zeros([length], tf.int32)
    return zeros, zeros, zeros, tf.constant(0, tf.int32)


def pack_rows(examples, lengths: Mapping[str, int], finite: bool):
    """Greedy packing of ``mixed_examples`` into rows ``{"inputs", "inputs_segment_ids", "inputs_positions",
    "targets", "targets_segment_ids", "targets_positions": int32 [length], "cursor"}``.

    Examples are appended in order while both features fit; the first one that does not starts the next row
    (seqio's packing without its windows). A row's ``cursor`` is the one after its last example, i.e. the
    start of the next row, so a stream rebuilt from it continues with exactly the next row. A ``scan`` holds the
    row being filled and a ``filter`` keeps the completed ones (no ``unbatch``); ``finite`` streams get a last
    marker element that flushes the final row.
    """
    import tensorflow as tf

    len_in, len_tgt = lengths["inputs"], lengths["targets"]
    width = examples.element_spec["cursor"].shape[0]
    ds = examples.map(_plain(lambda ex: dict(ex, flush=tf.constant(False))))
    if finite:
        ds = ds.concatenate(tf.data.Dataset.from_tensors({
            "inputs": tf.zeros([0], tf.int32), "targets": tf.zeros([0], tf.int32),
            "cursor": tf.zeros([width], tf.int64), "flush": tf.constant(True)}))

    def step(state, ex):
        inputs, targets = ex["inputs"][:len_in], ex["targets"][:len_tgt]
        row_in, row_tgt, segments, cursor = state
        fits = tf.logical_and(row_in[3] + tf.size(inputs) <= len_in, row_tgt[3] + tf.size(targets) <= len_tgt)
        new_row = tf.logical_or(ex["flush"], tf.logical_not(fits))
        out = (tf.logical_and(new_row, segments > 0),
               {"inputs": row_in[0], "inputs_segment_ids": row_in[1], "inputs_positions": row_in[2],
                "targets": row_tgt[0], "targets_segment_ids": row_tgt[1], "targets_positions": row_tgt[2],
                "cursor": cursor})
        row_in, row_tgt, segments = tf.cond(new_row, lambda: (_empty_row(len_in), _empty_row(len_tgt), 0),
                                            lambda: (row_in, row_tgt, segments))
        segment = segments + 1
        state = (_append(row_in, inputs, segment), _append(row_tgt, targets, segment), segment, ex["cursor"])
        return state, out

    initial = (_empty_row(len_in), _empty_row(len_tgt), tf.constant(0, tf.int32), tf.zeros([width], tf.int64))
    ds = ds.scan(initial, _plain(step))
    return ds.filter(_plain(lambda emit, _: emit)).map(_plain(lambda _, row: row))


def single_rows(examples, lengths: Mapping[str, int]):
    """One example per row (``pack=False``), in ``pack_rows``'s format (segment 1, then padding)."""
    import tensorflow as tf

    def row(ex):
        out = {"cursor": ex["cursor"]}
        for key in ("inputs", "targets"):
            tokens = ex[key][:lengths[key]]
            buf, seg, pos, _ = _append(_empty_row(lengths[key]), tokens, tf.constant(1, tf.int32))
            out.update({key: buf, f"{key}_segment_ids": seg, f"{key}_positions": pos})
        return out

    return examples.map(_plain(row), num_parallel_calls=tf.data.AUTOTUNE)


def _model_features(row):
    """Rows -> the model's ``BATCH_KEYS`` (+ ``cursor``): the decoder reads the targets shifted right by one
    within each segment (0 at every segment start), and learns from every real target token."""
    import seqio
    import tensorflow as tf

    seg = row["targets_segment_ids"]
    return {"encoder_input_tokens": row["inputs"], "encoder_segment_ids": row["inputs_segment_ids"],
            "encoder_positions": row["inputs_positions"],
            "decoder_input_tokens": seqio.utils.make_autoregressive_inputs(row["targets"], sequence_id=seg),
            "decoder_target_tokens": row["targets"], "decoder_loss_weights": tf.cast(seg > 0, tf.float32),
            "decoder_segment_ids": seg, "decoder_positions": row["targets_positions"], "cursor": row["cursor"]}


# -------------------------------------------------------------------------------------- seqio path
def _seqio_rows(provider, lengths, *, split, shard_info, seed, shuffle, repeat, pack):
    """seqio's own pipeline and feature converter: for mixtures with a task whose source has no random access
    (TFDS). Its shuffle buffers and ``unbatch`` cannot be checkpointed reliably, hence replay on restore."""
    import seqio

    ds = provider.get_dataset(lengths, split=split, shuffle=shuffle, seed=seed, num_epochs=None if repeat else 1,
                              shard_info=shard_info, use_cached=False, try_in_mem_cache=False)
    return seqio.EncDecFeatureConverter(pack=pack)(ds, lengths)


# ------------------------------------------------------------------------------------------ batches
def _complete_features(ex):
    """Segment ids and positions even when unpacked (1 for real tokens, 0 for padding), int32 everywhere."""
    import tensorflow as tf

    out = {}
    for side, token_key in (("encoder", "encoder_input_tokens"), ("decoder", "decoder_target_tokens")):
        seg_key, pos_key = f"{side}_segment_ids", f"{side}_positions"
        if seg_key not in ex:
            real = tf.cast(tf.not_equal(ex[token_key], 0), tf.int32)
            ex = dict(ex, **{seg_key: real, pos_key: (tf.cumsum(real) - 1) * real})
    for key in BATCH_KEYS:
        out[key] = tf.cast(ex[key], tf.float32 if key == "decoder_loss_weights" else tf.int32)
    if "cursor" in ex:
        out["cursor"] = ex["cursor"]
    return out


def _pad_rows(x, batch_size):
    import tensorflow as tf

    pad = batch_size - tf.shape(x)[0]
    return tf.pad(x, [[0, pad]] + [[0, 0]] * (len(x.shape) - 1))


def _shard_info(config: Mapping):
    import seqio

    return seqio.ShardInfo(index=config["shard_index"], num_shards=config["num_shards"])


def _batched(config: Mapping, start: Optional[Positions] = None, skip_batches: int = 0, streams=None,
             num_threads: Optional[int] = None):
    """The batched dataset of ``config`` (``make_batch_iterator``'s arguments). Positional mixtures start at
    ``start`` and every batch has a ``cursor`` (int64 ``[1 + num_tasks]``: the positions after its last row);
    ``streams`` are their ``task_streams`` if already made. Other mixtures start from the beginning, with
    ``skip_batches`` replayed. Runs on a private pool of ``data_threads(num_threads)`` threads, in a
    deterministic order (the batches do not depend on the thread count)."""
    import tensorflow as tf

    lengths = dict(config["task_feature_lengths"])
    batch_size, repeat, split = config["batch_size"], config["repeat"], config["split"]
    provider = _provider(config["mixture_or_task_name"], split)
    members = _members(provider, split)
    shard_info = _shard_info(config)
    if _positional(members):
        names = [task.name for task, _ in members]
        if streams is None:
            streams = task_streams(members, lengths, split=split, shard_info=shard_info, seed=config["seed"],
                                   shuffle=config["shuffle"])
        examples = mixed_examples(members, streams, split=split, shard_info=shard_info, seed=config["seed"],
                                  shuffle=config["shuffle"], repeat=repeat,
                                  start=start or Positions.start(names), mixture_name=provider.name)
        rows = pack_rows(examples, lengths, finite=not repeat) if config["pack"] else single_rows(examples, lengths)
        ds = rows.map(_plain(_model_features), num_parallel_calls=tf.data.AUTOTUNE)
    else:
        ds = _seqio_rows(provider, lengths, split=split, shard_info=shard_info, seed=config["seed"],
                         shuffle=config["shuffle"], repeat=repeat, pack=config["pack"])
    ds = ds.map(_plain(_complete_features), num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.batch(batch_size, drop_remainder=repeat)

    def finish(batch):
        out = {k: v for k, v in batch.items() if k != "cursor"}
        if not repeat:
            # The final partial batch is padded with all-padding rows (segment id 0, loss weight 0): nothing lost.
            out = {k: _pad_rows(v, batch_size) for k, v in out.items()}
        if "cursor" in batch:
            out["cursor"] = batch["cursor"][-1]  # after the batch's last real row: where the next batch starts
        return out

    ds = ds.map(_plain(finish))
    if skip_batches:
        ds = ds.skip(skip_batches)
    options = tf.data.Options()
    options.deterministic = True  # parallel maps keep their input order: exact resume needs it
    options.threading.private_threadpool_size = data_threads(num_threads)
    return ds.prefetch(2).with_options(options)


def build_dataset(mixture_or_task_name: str, task_feature_lengths: Mapping[str, int], batch_size: int, *,
                  split: str = "train", shard_index: int = 0, num_shards: int = 1, seed: int = 0, pack: bool = True,
                  shuffle: bool = True, repeat: bool = True, num_threads: Optional[int] = None):
    """The batched tf.data.Dataset behind ``make_batch_iterator`` (int32 features ``[batch_size, length]``,
    ``decoder_loss_weights`` float32), from the beginning of the stream."""
    config = _config(mixture_or_task_name, task_feature_lengths, batch_size, split=split, shard_index=shard_index,
                     num_shards=num_shards, seed=seed, pack=pack, shuffle=shuffle, repeat=repeat)
    batches = _batched(config, num_threads=num_threads)
    return batches.map(_plain(lambda b: {k: v for k, v in b.items() if k != "cursor"}))


def check_vocabulary(mixture_or_task_name: str, tokenizer_path: str) -> None:
    """Raises if ``mixture_or_task_name`` tokenizes with a SentencePiece model other than ``tokenizer_path``
    (a model trained on one vocabulary and fed another learns nonsense without any error)."""
    import seqio

    from alexatm_jax.data import tasks  # noqa: F401  (registers the bundled tasks and mixtures)

    provider = seqio.get_mixture_or_task(mixture_or_task_name)
    vocabulary = provider.output_features["targets"].vocabulary
    model_file = getattr(vocabulary, "sentencepiece_model_file", None)
    if model_file is None:
        return
    with open(model_file, "rb") as used, open(tokenizer_path, "rb") as wanted:
        if used.read() == wanted.read():
            return
    raise ValueError(
        f"{mixture_or_task_name} tokenizes with {model_file} but the run's tokenizer is {tokenizer_path}. "
        f"Register the mixture with that vocabulary (e.g. alexatm_jax.data.tasks.register_bundled("
        f"vocabulary=alexatm_jax.data.vocab.get_vocabulary(PATH))) or leave tokenizer_path unset.")


@functools.lru_cache(maxsize=None)
def pipeline_fingerprint() -> str:
    """Identifies the code that decides which example sits at which position: the data modules' source and
    the library versions."""
    import seqio
    import tensorflow as tf

    digest = hashlib.sha256(f"tf={tf.__version__};seqio={getattr(seqio, '__version__', '?')}".encode())
    here = os.path.dirname(os.path.abspath(__file__))
    for name in FINGERPRINTED_FILES:
        with open(os.path.join(here, name), "rb") as source:
            digest.update(source.read())
    return digest.hexdigest()[:16]


class BatchIterator:
    """Iterator of ``dict[str, np.ndarray]`` batches with ``state()`` / ``restore(state)``.

    Arrays: ``encoder_*`` ``[batch_size, inputs_length]``, ``decoder_*`` ``[batch_size, targets_length]``;
    int32 except ``decoder_loss_weights`` (float32). Logical axes: ``('batch', 'length')``.

    The tf.data pipeline is built at the first ``next`` (from the restored position, if any), so
    ``restore`` right after construction costs nothing extra.
    """

    def __init__(self, config: dict, num_threads: Optional[int] = None):
        self._config = dict(config)
        self._num_threads = data_threads(num_threads)  # not in the config: the batches do not depend on it
        members = _members(_provider(config["mixture_or_task_name"], config["split"]), config["split"])
        self._task_names = [task.name for task, _ in members]
        self._positional = _positional(members)
        self._streams = None
        if self._positional:  # made now, so that bad settings (too many shards...) fail here, not at next()
            self._streams = task_streams(members, config["task_feature_lengths"], split=config["split"],
                                         shard_info=_shard_info(config), seed=config["seed"],
                                         shuffle=config["shuffle"])
        self._position = Positions.start(self._task_names) if self._positional else None
        self._batches = 0
        self._iterator = None

    @property
    def config(self) -> dict:
        return dict(self._config)

    def __iter__(self):
        return self

    def __next__(self) -> Dict[str, np.ndarray]:
        if self._iterator is None:
            if self._positional:
                dataset = _batched(self._config, start=self._position, streams=self._streams,
                                   num_threads=self._num_threads)
            else:
                dataset = _batched(self._config, skip_batches=self._batches, num_threads=self._num_threads)
            self._iterator = iter(dataset)
        batch = {k: v.numpy() for k, v in next(self._iterator).items()}
        self._batches += 1
        if self._positional:
            self._position = Positions.from_vector(batch.pop("cursor"), self._task_names)
        return batch

    def _fingerprint(self) -> str:
        return hashlib.sha256(json.dumps(self._config, sort_keys=True).encode()).hexdigest()[:16]

    def state(self) -> dict:
        """JSON-serialisable state: the arguments, the batch count and, for positional streams, the positions
        after the last batch (``{"examples": n, "tasks": {task: position}}``; ``None`` means "replay
        ``batches`` batches"). Restoring needs the same arguments."""
        return {"version": STATE_VERSION, "config": self._config, "fingerprint": self._fingerprint(),
                "pipeline": pipeline_fingerprint(), "batches": self._batches,
                "positions": self._position.to_json() if self._positional else None}

    def restore(self, state: Mapping) -> "BatchIterator":
        """Continue from ``state`` (from ``state()`` of an iterator built with the same arguments)."""
        if not isinstance(state, Mapping) or "batches" not in state or "positions" not in state:
            raise ValueError("not a BatchIterator state (expected the dict returned by BatchIterator.state())")
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"the data state has version {state.get('version')}, this code reads version "
                             f"{STATE_VERSION}: resume with the code that saved it, or start the data stream afresh "
                             "(a new MODEL_DIR, or --gin.DataConfig.resume_data_state=False)")
        if state.get("fingerprint") != self._fingerprint():
            raise ValueError(f"the state was saved by an iterator with different arguments {state.get('config')}; "
                             f"this one has {self._config}: build the iterator with the saved arguments")
        if state.get("pipeline") != pipeline_fingerprint():
            # Another version of the data code may put other examples at the same positions: the resumed run
            # would silently see different data than the interrupted one.
            raise ValueError("the data state was saved by a different version of the input pipeline (alexatm_jax "
                             "data code, TensorFlow or seqio changed), which would continue with other data. Resume "
                             "with the code that saved it, or start the data stream afresh (a new MODEL_DIR).")
        positions = state["positions"]
        if (positions is None) == self._positional:
            raise ValueError(f"the data state {'has no' if positions is None else 'has'} positions but the tasks of "
                             f"{self._config['mixture_or_task_name']} are {'' if self._positional else 'not '}all "
                             "addressable by position: their sources changed since it was saved")
        if positions is not None:
            if sorted(positions.get("tasks", {})) != sorted(self._task_names):
                raise ValueError(f"the data state has positions for the tasks {sorted(positions['tasks'])} but "
                                 f"{self._config['mixture_or_task_name']} now has {sorted(self._task_names)}")
            self._position = Positions(positions["examples"], positions["tasks"])
        else:
            _log.warning("%s has tasks without random access (e.g. TFDS): replaying %d batches to resume",
                         self._config["mixture_or_task_name"], int(state["batches"]))
        self._batches = int(state["batches"])
        self._iterator = None  # rebuilt from the restored position at the next batch
        return self


def _config(mixture_or_task_name: str, task_feature_lengths: Mapping[str, int], batch_size: int, *, split: str,
            shard_index: int, num_shards: int, seed: int, pack: bool, shuffle: bool, repeat: bool) -> dict:
    """Checked, JSON-able arguments of ``make_batch_iterator``."""
    lengths = _check_lengths(task_feature_lengths)
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if not 0 <= int(shard_index) < int(num_shards):
        raise ValueError(f"shard_index {shard_index} must be in [0, num_shards={num_shards})")
    _provider(mixture_or_task_name, split)
    return dict(mixture_or_task_name=mixture_or_task_name, task_feature_lengths=lengths, batch_size=int(batch_size),
                split=split, shard_index=int(shard_index), num_shards=int(num_shards), seed=int(seed),
                pack=bool(pack), shuffle=bool(shuffle), repeat=bool(repeat))


def make_batch_iterator(mixture_or_task_name: str, task_feature_lengths: Mapping[str, int], batch_size: int, *,
                        split: str = "train", shard_index: int = 0, num_shards: int = 1, seed: int = 0,
                        pack: bool = True, shuffle: bool = True, repeat: bool = True,
                        num_threads: Optional[int] = None) -> BatchIterator:
    """Batches of ``mixture_or_task_name`` for this process (``batch_size`` is per process).

    Deterministic for ``seed``; processes with different ``shard_index`` read disjoint documents.
    ``pack`` packs examples greedily into rows (segment ids/positions keep packed examples from attending to
    each other). ``repeat=False`` gives one pass, the last batch padded with empty rows. ``num_threads``:
    tf.data's thread pool (default ``data_threads()``: ``$ALEXATM_DATA_THREADS`` or the CPUs this process may
    use); it changes the speed, never the batches, and a state saved with one count restores with another.
    """
    return BatchIterator(_config(mixture_or_task_name, task_feature_lengths, batch_size, split=split,
                                 shard_index=shard_index, num_shards=num_shards, seed=seed, pack=pack,
                                 shuffle=shuffle, repeat=repeat), num_threads=num_threads)
