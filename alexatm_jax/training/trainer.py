"""The training loop, configured by gin: ``train(...)`` is the entry point of ``alexatm-jax train``.

One call: validate the configuration (before anything compiles), write the run directory
(``config.json``, ``tokenizer.model``), build the mesh, the optimiser and the sharded train step, restore the
latest checkpoint if there is one (model, optimiser *and* data-pipeline state, so a resumed run sees
exactly the batches an uninterrupted one would), then step, log, evaluate and checkpoint until
``train_steps``. SIGTERM / SIGINT save a checkpoint and stop cleanly (preemption).

Multi-host: every process runs this same function; each feeds its own shard of the batch
(``batch_size / process_count`` rows from data shard ``process_index``) into global arrays.
"""

from __future__ import annotations

import os
import signal
import time
from typing import Any, Callable, Mapping, Optional, Sequence

import gin

from alexatm_jax import atomic_files
from alexatm_jax.model.config import ModelConfig, get_preset

# Batch iterator contract (alexatm_jax.data.pipeline.make_batch_iterator): called as
# fn(mixture_or_task_name, task_feature_lengths, batch_size, *, split, shard_index, num_shards, seed, pack,
#    shuffle, repeat) -> iterator of dicts of [batch, length] numpy arrays with .state() / .restore(state).
BatchIteratorFn = Callable[..., Any]

NONFINITE_POLICIES = ("stop", "skip")


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. the loss diverged); the message says at which step and what to do."""


def build_model_config(model_preset: str, model_overrides: Optional[Mapping[str, Any]], vocab_size: int) -> ModelConfig:
    """The preset with the overrides, in this repository's token-id convention (T5/seqio: pad 0, eos 1,
    decoder start 0, bos 3) and the vocabulary's size."""
    config = get_preset(model_preset)
    overrides = dict(model_overrides or {})
    unknown = sorted(set(overrides) - set(config.to_dict()))
    if unknown:
        raise ValueError(f"MODEL_OVERRIDES names unknown ModelConfig fields {unknown}; known fields: "
                         f"{sorted(config.to_dict())}")
    overrides.update(pad_token_id=0, eos_token_id=1, decoder_start_token_id=0, bos_token_id=3,
                     vocab_size=int(vocab_size))
    return config.replace(**overrides)


def validate(*, model_dir, train_steps, batch_size, task_feature_lengths, mesh_sizes, config: ModelConfig,
             num_microbatches, process_count, log_every_steps, checkpoint_every_steps, eval_every_steps,
             nonfinite, optimizer_name):
    """Every check that can fail before compiling; raises ValueError listing all the problems."""
    problems = []
    if not isinstance(model_dir, str) or not model_dir:
        problems.append("MODEL_DIR is not set: bind it, e.g. --gin.MODEL_DIR=/tmp/run1")
    for name, value, minimum in (("TRAIN_STEPS", train_steps, 1), ("BATCH_SIZE", batch_size, 1),
                                 ("num_microbatches", num_microbatches, 1), ("LOG_EVERY_STEPS", log_every_steps, 1),
                                 ("checkpoint_every_steps", checkpoint_every_steps, 0),
                                 ("eval_every_steps", eval_every_steps, 0)):
        if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
            problems.append(f"{name} must be an integer >= {minimum}, got {value!r}")
    lengths = task_feature_lengths
    if not isinstance(lengths, Mapping) or set(lengths) != {"inputs", "targets"}:
        problems.append(f"TASK_FEATURE_LENGTHS must be {{'inputs': N, 'targets': M}}, got {lengths!r}")
    else:
        for key, value in lengths.items():
            if not isinstance(value, int) or value < 1:
                problems.append(f"TASK_FEATURE_LENGTHS[{key!r}] must be a positive integer, got {value!r}")
            elif value > config.max_position_embeddings:
                problems.append(f"TASK_FEATURE_LENGTHS[{key!r}]={value} exceeds the model's "
                                f"{config.max_position_embeddings} positions (max_position_embeddings)")
    if nonfinite not in NONFINITE_POLICIES:
        problems.append(f"nonfinite={nonfinite!r} must be one of {NONFINITE_POLICIES}")
    from alexatm_jax.training.optimizer import OPTIMIZERS
    if optimizer_name not in OPTIMIZERS:
        problems.append(f"optimizer={optimizer_name!r} must be one of {OPTIMIZERS}")
    if not problems:
        data_parallel = mesh_sizes["data"] * mesh_sizes["fsdp"]
        if batch_size % process_count:
            problems.append(f"BATCH_SIZE={batch_size} must be divisible by the {process_count} processes")
        if batch_size % num_microbatches:
            problems.append(f"BATCH_SIZE={batch_size} must be divisible by num_microbatches={num_microbatches}")
        elif (batch_size // num_microbatches) % data_parallel:
            problems.append(f"the microbatch size {batch_size // num_microbatches} (BATCH_SIZE / num_microbatches) "
                            f"must be divisible by data x fsdp = {data_parallel} of MESH")
        if config.num_heads % mesh_sizes["tensor"]:
            problems.append(f"num_heads={config.num_heads} is not divisible by tensor={mesh_sizes['tensor']}")
    if problems:
        raise ValueError("Invalid training configuration:\n  - " + "\n  - ".join(problems))


def _default_batch_iterator_fn() -> BatchIteratorFn:
    try:
        from alexatm_jax.data.pipeline import make_batch_iterator
    except ImportError as error:
        raise ValueError(f"The data pipeline (alexatm_jax.data.pipeline) is not available: {error}") from None
    return make_batch_iterator


class _Preemption:
    """Turns SIGTERM / SIGINT into a flag the loop polls, so that it can save before exiting."""

    def __init__(self):
        self.signal = None
        self._previous = {}

    def __enter__(self):
        import threading
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        self.signal = signum

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


@gin.configurable
def train(model_dir: str = gin.REQUIRED, train_steps: int = gin.REQUIRED, batch_size: int = gin.REQUIRED,
          mixture_or_task_name: str = "alexatm_demo",
          task_feature_lengths: Mapping[str, int] = gin.REQUIRED,
          mesh: str = "data=-1",
          model_preset: str = "tiny",
          model_overrides: Optional[Mapping[str, Any]] = None,
          logical_axis_rules: Optional[Sequence[Sequence[Any]]] = None,
          tokenizer_path: Optional[str] = None,
          init_from: Optional[str] = None,
          optimizer: str = "adamw",
          learning_rate: float = 1e-4,
          min_learning_rate: float = 5e-6,
          warmup_steps: int = 1000,
          decay_steps: Optional[int] = None,
          weight_decay: float = 0.1,
          adam_b1: float = 0.9,
          adam_b2: float = 0.98,
          adam_eps: float = 1e-6,
          clip_norm: Optional[float] = 1.0,
          num_microbatches: int = 1,
          label_smoothing: float = 0.0,
          z_loss: float = 0.0,
          freeze_encoder_steps: int = 0,
          nonfinite: str = "stop",
          seed: int = 0,
          data_seed: int = 0,
          pack: bool = True,
          log_every_steps: int = 10,
          checkpoint_every_steps: int = 1000,
          keep_checkpoints: int = 3,
          keep_best_checkpoints: int = 0,
          async_checkpointing: bool = True,
          eval_every_steps: int = 0,
          eval_steps: int = 10,
          eval_mixture_or_task_name: Optional[str] = None,
          eval_split: str = "validation",
          eval_only: bool = False,
          tensorboard: bool = True,
          peak_flops_per_device: Optional[float] = None,
          batch_iterator_fn: Optional[BatchIteratorFn] = None) -> dict:
    """Trains (or resumes training) in ``model_dir``; returns a summary dict (final step, last metrics).

    Macros of the gin files bind the T5X-named arguments: MODEL_DIR, TRAIN_STEPS, BATCH_SIZE (global, in
    sequences), MIXTURE_OR_TASK_NAME, TASK_FEATURE_LENGTHS, MESH, LOG_EVERY_STEPS, MODEL_PRESET.
    ``init_from``: a run directory whose latest ``params`` start this run (fine-tuning); ignored when
    ``model_dir`` already has checkpoints (then the run resumes).
    ``eval_only``: restore the latest checkpoint, measure the eval loss, log it, train nothing.
    ``decay_steps`` (default ``train_steps``) is where the learning rate reaches ``min_learning_rate``.
    ``nonfinite``: 'stop' raises TrainingError naming the step (the last checkpoint stays the last good
    one); 'skip' leaves the state unchanged for that batch and goes on.
    """
    import jax
    import numpy as np

    from alexatm_jax import partitioning
    from alexatm_jax.data import vocab as vocab_lib
    from alexatm_jax.data import bundled
    from alexatm_jax.model.transformer import AlexaTMTransformer
    from alexatm_jax.training import checkpointing, flops, metrics as metrics_lib, optimizer as opt_lib
    from alexatm_jax.training import step as step_lib
    from alexatm_jax.training.train_state import StateLayout, TrainState, init_params_boxed

    # ---- Validation: everything that can be wrong is reported before any compilation. ----
    tokenizer_path = os.path.abspath(tokenizer_path) if tokenizer_path else bundled.bundled_spm_path()
    vocabulary = vocab_lib.get_vocabulary(tokenizer_path)
    config = build_model_config(model_preset, model_overrides, vocabulary.vocab_size)
    rules = partitioning.rules_from_pairs(logical_axis_rules) if logical_axis_rules else partitioning.DEFAULT_RULES
    mesh_sizes = partitioning.parse_mesh_spec(mesh, jax.device_count())
    process_count, process_index = jax.process_count(), jax.process_index()
    validate(model_dir=model_dir, train_steps=train_steps, batch_size=batch_size,
             task_feature_lengths=task_feature_lengths, mesh_sizes=mesh_sizes, config=config,
             num_microbatches=num_microbatches, process_count=process_count, log_every_steps=log_every_steps,
             checkpoint_every_steps=checkpoint_every_steps, eval_every_steps=eval_every_steps,
             nonfinite=nonfinite, optimizer_name=optimizer)
    inputs_length, targets_length = int(task_feature_lengths["inputs"]), int(task_feature_lengths["targets"])
    if batch_iterator_fn is None:
        from alexatm_jax.data import pipeline as data_pipeline
        data_pipeline.check_vocabulary(mixture_or_task_name, tokenizer_path)
    batch_iterator_fn = batch_iterator_fn or _default_batch_iterator_fn()

    # ---- Run directory. ----
    model_dir = os.path.abspath(model_dir)
    is_chief = process_index == 0
    os.makedirs(model_dir, exist_ok=True)
    config_path = os.path.join(model_dir, "config.json")
    if os.path.exists(config_path):
        existing = ModelConfig.from_json(open(config_path, encoding="utf-8").read())
        if existing != config:
            changed = sorted(k for k, v in config.to_dict().items() if existing.to_dict().get(k) != v)
            raise ValueError(f"{model_dir} holds a run of a different model (fields {changed} differ); "
                             "use a new MODEL_DIR or the same model settings to resume")
    elif is_chief:
        atomic_files.write_bytes(config_path, config.to_json().encode())
    if is_chief:
        atomic_files.write_bytes(os.path.join(model_dir, "tokenizer.model"), open(tokenizer_path, "rb").read())

    # ---- Mesh, optimiser, state layout, steps. ----
    device_mesh = partitioning.make_mesh(mesh)
    model = AlexaTMTransformer(config)
    schedule = opt_lib.learning_rate_schedule(learning_rate, min_learning_rate, min(warmup_steps, train_steps),
                                              max(decay_steps or train_steps, min(warmup_steps, train_steps)))
    abstract_params = jax.eval_shape(
        lambda: __import__("flax").linen.unbox(init_params_boxed(model, jax.random.PRNGKey(0), inputs_length,
                                                                 targets_length)))
    tx = opt_lib.make_optimizer(abstract_params, name=optimizer, schedule=schedule, b1=adam_b1, b2=adam_b2,
                                eps=adam_eps, weight_decay=weight_decay, clip_norm=clip_norm,
                                freeze_encoder_steps=freeze_encoder_steps)
    layout = StateLayout(model, tx, device_mesh, rules, inputs_length, targets_length)
    batch_sharding = partitioning.data_sharding(device_mesh, rules)
    options = step_lib.StepOptions(num_microbatches=num_microbatches, label_smoothing=label_smoothing,
                                   z_loss=z_loss, skip_nonfinite=nonfinite == "skip")
    train_step = step_lib.make_train_step(layout, schedule, options, batch_sharding)
    eval_step = step_lib.make_eval_step(layout, options, batch_sharding) if (eval_every_steps or eval_only) else None
    init_rng, dropout_rng = jax.random.split(jax.random.PRNGKey(seed))

    # ---- Restore or initialise. ----
    manager = checkpointing.make_manager(model_dir, keep=keep_checkpoints, keep_best=keep_best_checkpoints,
                                         async_save=async_checkpointing)
    local_batch = batch_size // process_count
    train_data = None if eval_only else batch_iterator_fn(
        mixture_or_task_name, dict(task_feature_lengths), local_batch, split="train", shard_index=process_index,
        num_shards=process_count, seed=data_seed, pack=pack, shuffle=True, repeat=True)
    latest = manager.latest_step()
    if latest is not None:
        params, opt_state, data_state, meta = checkpointing.restore(manager, latest, layout.abstract)
        state = TrainState(step=jax.device_put(np.int32(meta["step"]), layout.replicated), params=params,
                           opt_state=opt_state)
        if train_data is not None:
            train_data.restore(data_state)
        start_step = int(meta["step"])
    else:
        state = layout.init(init_rng)
        if init_from:  # fine-tuning: the weights of another run, a fresh optimiser
            state = state.replace(params=checkpointing.restore_params(init_from, layout.abstract.params))
        start_step = 0

    flops_per_step = flops.train_step_flops(config, batch_size, inputs_length, targets_length)
    peak = flops.device_peak_flops(jax.devices()[0].device_kind, config.dtype, peak_flops_per_device)
    writer = metrics_lib.MetricsWriter(model_dir, enabled=is_chief, tensorboard=tensorboard,
                                       total_steps=train_steps, initial_step=start_step)
    if latest is not None:
        writer.message(f"Resumed from step {start_step} ({checkpointing.checkpoint_dir(model_dir)})")
    meta_base = dict(model_preset=model_preset, mesh=mesh, batch_size=batch_size,
                     task_feature_lengths=dict(task_feature_lengths), mixture_or_task_name=mixture_or_task_name,
                     process_count=process_count, device_count=jax.device_count())

    def to_global(local: dict) -> dict:
        missing = [k for k in step_lib.BATCH_FEATURES if k not in local]
        if missing:
            raise ValueError(f"The batch iterator gave no {missing}: it must yield all of "
                             f"{step_lib.BATCH_FEATURES}")
        return {k: jax.make_array_from_process_local_data(
                    batch_sharding, np.asarray(local[k], np.float32 if k == "decoder_loss_weights" else np.int32))
                for k in step_lib.BATCH_FEATURES}

    def evaluate() -> float:
        data = batch_iterator_fn(eval_mixture_or_task_name or mixture_or_task_name, dict(task_feature_lengths),
                                 local_batch, split=eval_split, shard_index=process_index,
                                 num_shards=process_count, seed=data_seed, pack=pack, shuffle=False, repeat=True)
        total_loss = total_weight = 0.0
        for _ in range(eval_steps):
            sums = eval_step(state.params, to_global(next(data)))
            total_loss += scalar(sums.loss)
            total_weight += scalar(sums.weight)
        return total_loss / max(total_weight, 1.0)

    def check_finite(first_bad, last_saved):
        bad = int(scalar(first_bad))
        if bad >= 0 and nonfinite == "stop":
            where = (f"the last good checkpoint is step {last_saved} in {checkpointing.checkpoint_dir(model_dir)}"
                     if last_saved is not None else "no checkpoint was saved")
            raise TrainingError(
                f"Non-finite loss or gradients at step {bad + 1} (update {bad} -> {bad + 1}); training stopped "
                f"and {where}. Lower the learning rate, enable clipping, or bind train.nonfinite='skip'.")

    def scalar(x) -> float:
        # Replicated outputs are not fully addressable in multi-process runs: read the local copy.
        return float(np.asarray(x.addressable_data(0)) if isinstance(x, jax.Array) else x)

    if eval_only:
        if latest is None:
            raise ValueError(f"eval_only: no checkpoint in {checkpointing.checkpoint_dir(model_dir)}")
        eval_loss = evaluate()
        writer.write(start_step, {"eval_loss": eval_loss})
        writer.close()
        manager.close()
        return {"status": "evaluated", "step": start_step, "metrics": {}, "eval_loss": eval_loss,
                "model_dir": model_dir}

    # ---- The loop. ----
    import jax.numpy as jnp
    first_bad = jnp.array(-1, jnp.int32)  # step index of the first non-finite update; -1 none (on device)
    track_bad = jax.jit(lambda fb, finite, s: jnp.where((fb < 0) & (finite < 1), s, fb))
    last_saved = latest
    last_metrics: dict = {}
    eval_loss = None
    step = start_step
    interval_start, interval_steps, interval_tokens = time.time(), 0, None
    skipped = jnp.zeros((), jnp.float32)
    result = {"status": "done"}
    try:
        with _Preemption() as preemption:
            while step < train_steps:
                batch = to_global(next(train_data))
                state, step_metrics = train_step(state, batch, dropout_rng)
                first_bad = track_bad(first_bad, step_metrics["finite"], step)
                skipped = skipped + (1.0 - step_metrics["finite"])
                step += 1
                interval_steps += 1
                tokens = step_metrics["weight"] + batch_sharding_tokens(batch["encoder_segment_ids"])
                interval_tokens = tokens if interval_tokens is None else interval_tokens + tokens
                at_log = step % log_every_steps == 0 or step == train_steps or step == start_step + 1
                at_eval = bool(eval_every_steps) and (step % eval_every_steps == 0 or step == train_steps)
                at_save = (checkpoint_every_steps and step % checkpoint_every_steps == 0) or step == train_steps
                preempted = preemption.signal is not None
                if at_log or at_save or at_eval or preempted:
                    check_finite(first_bad, last_saved)
                if at_log:
                    values = {k: scalar(v) for k, v in step_metrics.items() if k not in ("finite", "weight")}
                    elapsed = time.time() - interval_start
                    step_time = elapsed / interval_steps
                    values.update(
                        tokens_per_second=scalar(interval_tokens) / elapsed,
                        step_time=step_time,
                        flops_per_step=flops_per_step,
                        mfu=(flops_per_step / step_time / (peak * jax.device_count())) if peak else None,
                        target_tokens=scalar(step_metrics["weight"]))
                    if nonfinite == "skip":
                        values["skipped_updates"] = scalar(skipped)
                    writer.write(step, values)
                    last_metrics = values
                    interval_start, interval_steps, interval_tokens = time.time(), 0, None
                writer.advance(step, last_metrics.get("loss"))
                if at_eval:
                    eval_loss = evaluate()
                    writer.write(step, {"eval_loss": eval_loss})
                if at_save or preempted:
                    checkpointing.save(manager, step, state, train_data.state(), meta_base, eval_loss=eval_loss,
                                       force=True)
                    last_saved = step
                if preempted:
                    writer.message(f"Signal {preemption.signal} received: saved step {step}, stopping.")
                    result["status"] = "preempted"
                    break
    finally:
        manager.wait_until_finished()
        manager.close()
        writer.close()
    result.update(step=step, metrics=last_metrics, eval_loss=eval_loss, model_dir=model_dir)
    return result


def batch_sharding_tokens(segment_ids):
    """Non-padding encoder tokens of a global [B, L] segment-id array (a device scalar)."""
    import jax.numpy as jnp
    return jnp.sum(segment_ids > 0).astype(jnp.float32)
