"""Batches for the trainer: a seqio mixture/task -> packed encoder-decoder features as numpy arrays.

    from alexatm_jax.data.pipeline import make_batch_iterator
    it = make_batch_iterator("alexatm_demo", {"inputs": 512, "targets": 512}, batch_size=8,
                             shard_index=jax.process_index(), num_shards=jax.process_count(), seed=0)
    batch = next(it)            # dict of [8, 512] arrays (see BATCH_KEYS)
    state = it.state()          # JSON-serialisable; save it next to the model checkpoint
    it2 = make_batch_iterator(... same arguments ...); it2.restore(state)   # continues exactly

Each process reads a disjoint shard of every source (records are split by index before shuffling). The
iterator's tf.data state (positions and random streams; tf.data's symbolic checkpointing, so tens of KB)
is captured with tf.data's own checkpointing, so a resumed run sees exactly the batches an uninterrupted run would have seen.

Registering your own data: see ``alexatm_jax.data.tasks`` (``files_source``, ``tfds_source``,
``register_mixture``); any registered seqio task or mixture name works here.
"""

from __future__ import annotations

import base64
import glob as globlib
import functools
import hashlib
import io
import json
import os
import tarfile
import tempfile
from typing import Dict, Mapping

import numpy as np

BATCH_KEYS = ("encoder_input_tokens", "encoder_segment_ids", "encoder_positions", "decoder_input_tokens",
              "decoder_target_tokens", "decoder_loss_weights", "decoder_segment_ids", "decoder_positions")
STATE_VERSION = 1


def _check_lengths(task_feature_lengths: Mapping[str, int]) -> Dict[str, int]:
    if set(task_feature_lengths) != {"inputs", "targets"}:
        raise ValueError(f"task_feature_lengths needs exactly the keys 'inputs' and 'targets', got "
                         f"{sorted(task_feature_lengths)}")
    out = {k: int(v) for k, v in task_feature_lengths.items()}
    if min(out.values()) < 4:
        raise ValueError(f"task_feature_lengths must be at least 4 tokens each, got {out}")
    return out


def build_dataset(mixture_or_task_name: str, task_feature_lengths: Mapping[str, int], batch_size: int, *,
                  split: str = "train", shard_index: int = 0, num_shards: int = 1, seed: int = 0, pack: bool = True,
                  shuffle: bool = True, repeat: bool = True):
    """The batched tf.data.Dataset behind ``make_batch_iterator`` (int32 features ``[batch_size, length]``)."""
    import seqio
    import tensorflow as tf

    from alexatm_jax.data import tasks  # noqa: F401  (registers the bundled tasks and mixtures)

    lengths = _check_lengths(task_feature_lengths)
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if not 0 <= shard_index < num_shards:
        raise ValueError(f"shard_index {shard_index} must be in [0, num_shards={num_shards})")
    try:
        provider = seqio.get_mixture_or_task(mixture_or_task_name)
    except ValueError:
        names = sorted(n for n in seqio.MixtureRegistry.names() if not n.startswith("_"))
        raise ValueError(f"no seqio task or mixture named {mixture_or_task_name!r}; registered mixtures: "
                         f"{', '.join(names)} (register yours with alexatm_jax.data.tasks.register_mixture)") from None
    if split not in provider.splits:
        raise ValueError(f"{mixture_or_task_name} has no split {split!r}: it has {', '.join(provider.splits)}")
    ds = provider.get_dataset(lengths, split=split, shuffle=shuffle, seed=seed, num_epochs=None if repeat else 1,
                              shard_info=seqio.ShardInfo(index=shard_index, num_shards=num_shards),
                              use_cached=False, try_in_mem_cache=False)
    ds = seqio.EncDecFeatureConverter(pack=pack)(ds, lengths)
    ds = ds.map(_complete_features, num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.batch(batch_size, drop_remainder=repeat)
    if not repeat:
        # The final partial batch is padded with all-padding rows (segment id 0, loss weight 0): nothing lost.
        ds = ds.map(lambda b: {k: _pad_rows(v, batch_size) for k, v in b.items()})
    options = tf.data.Options()
    # Checkpoint positions and random states, not buffer contents: the state stays tens of KB instead of
    # the shuffle buffers' megabytes, and restoring refills buffers exactly (tested in test_data_pipeline).
    options.experimental_symbolic_checkpoint = True
    return ds.prefetch(2).with_options(options)


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
    return out


def _pad_rows(x, batch_size):
    import tensorflow as tf

    pad = batch_size - tf.shape(x)[0]
    return tf.pad(x, [[0, pad]] + [[0, 0]] * (len(x.shape) - 1))


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
    """Identifies the tf.data graph this code builds: the data modules' source and the library versions."""
    import seqio
    import tensorflow as tf

    digest = hashlib.sha256(f"tf={tf.__version__};seqio={getattr(seqio, '__version__', '?')}".encode())
    here = os.path.dirname(os.path.abspath(__file__))
    for name in ("pipeline.py", "preprocessors.py", "tasks.py", "vocab.py"):
        with open(os.path.join(here, name), "rb") as source:
            digest.update(source.read())
    return digest.hexdigest()[:16]


class BatchIterator:
    """Iterator of ``dict[str, np.ndarray]`` batches with ``state()`` / ``restore(state)``.

    Arrays: ``encoder_*`` ``[batch_size, inputs_length]``, ``decoder_*`` ``[batch_size, targets_length]``;
    int32 except ``decoder_loss_weights`` (float32). Logical axes: ``('batch', 'length')``.
    """

    def __init__(self, config: dict):
        self._config = dict(config)
        self._dataset = build_dataset(**self._config)
        self._iterator = iter(self._dataset)
        self._batches = 0

    @property
    def config(self) -> dict:
        return dict(self._config)

    def __iter__(self):
        return self

    def __next__(self) -> Dict[str, np.ndarray]:
        batch = next(self._iterator)
        self._batches += 1
        return {k: v.numpy() for k, v in batch.items()}

    def _fingerprint(self) -> str:
        return hashlib.sha256(json.dumps(self._config, sort_keys=True).encode()).hexdigest()[:16]

    def state(self) -> dict:
        """JSON-serialisable state: the arguments, the batch count, and tf.data's iterator checkpoint
        (tar of the checkpoint files, base64). Restoring needs the same arguments."""
        import tensorflow as tf

        with tempfile.TemporaryDirectory(prefix="alexatm-data-state-") as tmp:
            tf.train.Checkpoint(iterator=self._iterator).write(os.path.join(tmp, "it"))
            buf = io.BytesIO()
            with tarfile.open(fileobj=buf, mode="w:gz") as tar:
                for path in sorted(globlib.glob(os.path.join(tmp, "it*"))):
                    tar.add(path, arcname=os.path.basename(path))
        return {"version": STATE_VERSION, "config": self._config, "fingerprint": self._fingerprint(),
                "pipeline": pipeline_fingerprint(), "batches": self._batches, "tf_iterator": base64.b64encode(buf.getvalue()).decode("ascii")}

    def restore(self, state: Mapping) -> "BatchIterator":
        """Continue from ``state`` (from ``state()`` of an iterator built with the same arguments)."""
        import tensorflow as tf

        if not isinstance(state, Mapping) or state.get("version") != STATE_VERSION or "tf_iterator" not in state:
            raise ValueError("not a BatchIterator state (expected the dict returned by BatchIterator.state())")
        if state.get("fingerprint") != self._fingerprint():
            raise ValueError(f"the state was saved by an iterator with different arguments {state.get('config')}; "
                             f"this one has {self._config}: build the iterator with the saved arguments")
        if state.get("pipeline") != pipeline_fingerprint():
            # tf.data restores an iterator checkpoint only into the very graph that wrote it; another graph
            # can crash the process inside TensorFlow, so refuse before touching it.
            raise ValueError("the data state was saved by a different version of the input pipeline (alexatm_jax "
                             "data code, TensorFlow or seqio changed), which tf.data cannot restore. Resume with "
                             "the code that saved it, or start the data stream afresh (a new MODEL_DIR).")
        with tempfile.TemporaryDirectory(prefix="alexatm-data-state-") as tmp:
            with tarfile.open(fileobj=io.BytesIO(base64.b64decode(state["tf_iterator"])), mode="r:gz") as tar:
                tar.extractall(tmp, filter="data")
            tf.train.Checkpoint(iterator=self._iterator).read(os.path.join(tmp, "it")).assert_consumed()
        self._batches = int(state["batches"])
        return self


def make_batch_iterator(mixture_or_task_name: str, task_feature_lengths: Mapping[str, int], batch_size: int, *,
                        split: str = "train", shard_index: int = 0, num_shards: int = 1, seed: int = 0,
                        pack: bool = True, shuffle: bool = True, repeat: bool = True) -> BatchIterator:
    """Batches of ``mixture_or_task_name`` for this process (``batch_size`` is per process).

    Deterministic for ``seed``; processes with different ``shard_index`` read disjoint documents.
    ``pack`` uses seqio's ``EncDecFeatureConverter`` packing (segment ids/positions keep packed examples
    from attending to each other). ``repeat=False`` gives one pass, the last batch padded with empty rows.
    """
    config = dict(mixture_or_task_name=mixture_or_task_name, task_feature_lengths=_check_lengths(task_feature_lengths),
                  batch_size=int(batch_size), split=split, shard_index=int(shard_index), num_shards=int(num_shards),
                  seed=int(seed), pack=bool(pack), shuffle=bool(shuffle), repeat=bool(repeat))
    return BatchIterator(config)
