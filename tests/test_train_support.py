"""Test support for the training tests: a deterministic synthetic batch source with the data pipeline's
interface (``make_batch_iterator`` signature, ``.state()`` / ``.restore()``), used where a test needs
batches that do not depend on the number of data shards (multi-process parity). Its own tests are below."""

from __future__ import annotations

import socket

import gin
import numpy as np

from alexatm_jax.features import BATCH_FEATURES as FEATURES


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (for a jax.distributed coordinator or an emulator)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class CopyBatches:
    """Packed copy task: each row holds two segments of random tokens; the target repeats the input.

    Global batch ``n`` is a function of (seed, n) only; shard ``i`` of ``k`` takes rows
    [i * b, (i + 1) * b) of it, so any process split sees the same global batches."""

    def __init__(self, task_feature_lengths, batch_size, shard_index=0, num_shards=1, seed=0, token_range=(4, 68)):
        self.length = int(task_feature_lengths["inputs"])
        if int(task_feature_lengths["targets"]) != self.length:
            raise ValueError("CopyBatches needs equal inputs and targets lengths")
        self.batch_size, self.shard_index, self.num_shards = batch_size, shard_index, num_shards
        self.seed, self.token_range, self.index = seed, token_range, 0

    def state(self):
        return {"index": self.index}

    def restore(self, state):
        self.index = int(state["index"])

    def __iter__(self):
        return self

    def __next__(self):
        rng = np.random.RandomState([self.seed, self.index])
        self.index += 1
        total, length = self.batch_size * self.num_shards, self.length
        tokens = rng.randint(*self.token_range, size=(total, length)).astype(np.int32)
        cut = rng.randint(length // 4, length - length // 4, size=total)
        pad_from = rng.randint(length - length // 8, length + 1, size=total)
        col = np.arange(length)[None, :]
        segments = np.where(col < cut[:, None], 1, 2).astype(np.int32)
        segments = np.where(col < pad_from[:, None], segments, 0)
        positions = np.where(segments == 2, col - cut[:, None], col).astype(np.int32) * (segments > 0)
        tokens = tokens * (segments > 0)
        inputs = np.where(positions == 0, 0, np.roll(tokens, 1, axis=1)) * (segments > 0)
        batch = dict(encoder_input_tokens=tokens, encoder_segment_ids=segments, encoder_positions=positions,
                     decoder_input_tokens=inputs.astype(np.int32), decoder_target_tokens=tokens,
                     decoder_loss_weights=(segments > 0).astype(np.int32), decoder_segment_ids=segments,
                     decoder_positions=positions)
        rows = slice(self.shard_index * self.batch_size, (self.shard_index + 1) * self.batch_size)
        return {k: v[rows] for k, v in batch.items()}


@gin.configurable
def copy_batches(mixture_or_task_name, task_feature_lengths, batch_size, *, split="train", shard_index=0,
                 num_shards=1, seed=0, pack=True, shuffle=True, repeat=True):
    """The pipeline's ``make_batch_iterator`` signature over CopyBatches (validation: another seed)."""
    del mixture_or_task_name, pack, shuffle, repeat
    return CopyBatches(task_feature_lengths, batch_size, shard_index, num_shards,
                       seed=seed + (1000 if split != "train" else 0))


def test_copy_batches_are_deterministic_resumable_and_shard_independent():
    lengths = {"inputs": 16, "targets": 16}
    full = CopyBatches(lengths, 4)
    first = [next(full) for _ in range(3)]
    halves = [CopyBatches(lengths, 2, shard_index=i, num_shards=2) for i in range(2)]
    for batch in first:
        parts = [next(h) for h in halves]
        for key in FEATURES:
            np.testing.assert_array_equal(batch[key], np.concatenate([p[key] for p in parts]))
    resumed = CopyBatches(lengths, 4)
    resumed.restore({"index": 2})
    np.testing.assert_array_equal(next(resumed)["encoder_input_tokens"], first[2]["encoder_input_tokens"])
    # Decoder inputs are the targets shifted right inside each segment, starting from id 0.
    b = first[0]
    starts = b["decoder_positions"] == 0
    assert np.all(b["decoder_input_tokens"][starts] == 0)
    inner = (~starts) & (b["decoder_segment_ids"] > 0)
    np.testing.assert_array_equal(b["decoder_input_tokens"][:, 1:][inner[:, 1:]],
                                  b["decoder_target_tokens"][:, :-1][inner[:, 1:]])


# Token ids of the bundled seqio vocabulary (the model files in gin_configs/models bind the same).
SEQIO_IDS = dict(pad_token_id=0, eos_token_id=1, decoder_start_token_id=0, bos_token_id=3)
_OPTIMIZER_KEYS = {"learning_rate", "min_learning_rate", "warmup_steps", "decay_steps", "weight_decay", "clip_norm",
                   "freeze_encoder_steps"}
_STEP_KEYS = {"num_microbatches", "label_smoothing", "z_loss", "nonfinite"}


def run_train(*, model_dir, train_steps, batch_size, task_feature_lengths, mesh="data=-1", model_preset="tiny",
              model_overrides=None, batch_iterator_fn=None, log_every_steps=1, checkpoint_every_steps=1000,
              keep_checkpoints=3, keep_best_checkpoints=0, async_checkpointing=True, tensorboard=False,
              eval_every_steps=0, eval_steps=2, mixture_or_task_name="alexatm_demo", seed=0, data_seed=0,
              init_from=None, eval_only=False, optimizer="adamw", distillation=None, init_layers=None, **rest):
    """``trainer.train`` from flat keyword arguments (the tests' shorthand for the gin-bound dataclasses)."""
    from alexatm_jax.model.config import get_preset
    from alexatm_jax.training import configs, trainer

    unknown = set(rest) - _OPTIMIZER_KEYS - _STEP_KEYS
    assert not unknown, f"run_train does not know {unknown}"
    config = get_preset(model_preset).replace(**SEQIO_IDS, **dict(model_overrides or {}))
    return trainer.train(
        model_dir=model_dir, train_steps=train_steps, model_config=config, mesh=mesh, seed=seed, init_from=init_from,
        eval_only=eval_only, distillation=distillation, init_layers=init_layers,
        data=configs.DataConfig(mixture_or_task_name=mixture_or_task_name, task_feature_lengths=task_feature_lengths,
                                batch_size=batch_size, seed=data_seed, batch_iterator_fn=batch_iterator_fn),
        optimizer=configs.OptimizerConfig(name=optimizer, **{k: v for k, v in rest.items() if k in _OPTIMIZER_KEYS}),
        step=configs.StepConfig(**{k: v for k, v in rest.items() if k in _STEP_KEYS}),
        checkpoint=configs.CheckpointConfig(every_steps=checkpoint_every_steps, keep=keep_checkpoints,
                                            keep_best=keep_best_checkpoints, async_save=async_checkpointing),
        logging=configs.LoggingConfig(every_steps=log_every_steps, tensorboard=tensorboard),
        evaluation=configs.EvalConfig(every_steps=eval_every_steps, steps=eval_steps))
