"""Training: the ``Trainer`` loop with hooks, and ``train(...)``, the gin entry point of ``alexatm-jax train``.

``train`` checks the configuration (everything at once, before anything compiles), prepares the run directory
(``config.json``, ``tokenizer.model``, ``partitioning.json``), builds the model object, the partitioner and the
optimiser, restores the newest readable checkpoint (model, optimiser *and* every process's data-pipeline state,
so a resumed run sees exactly the batches an uninterrupted one would) or initialises, and hands the loop to a
``Trainer`` whose hooks log, evaluate, checkpoint and handle preemption (``training/hooks.py``).

Multi-host: every process runs this same function; each feeds its own shard of the batch
(``batch_size / process_count`` rows from data shard ``process_index``) into global arrays.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import gin
import jax
import numpy as np

from alexatm_jax import features, storage
from alexatm_jax.model.config import ModelConfig
from alexatm_jax.training.configs import (CheckpointConfig, DataConfig, EvalConfig, LoggingConfig, OptimizerConfig,
                                          StepConfig, plain_model_config)
from alexatm_jax.training.distillation import DistillConfig
from alexatm_jax.training.hooks import (CheckpointHook, EvalHook, Hook, LoggingHook, NonFiniteHook, PreemptionHook,
                                        StepInfo, TrainingError, host_scalar)
from alexatm_jax.training.run_dir import cleaned_up_on_early_failure

__all__ = ["Trainer", "TrainingError", "train", "GlobalBatches"]


class GlobalBatches:
    """This process's batch iterator, turned into global arrays sharded over the data axes."""

    def __init__(self, iterator, partitioner):
        self.iterator, self.partitioner = iterator, partitioner

    def __next__(self) -> dict:
        local = next(self.iterator)
        features.check_batch(local)
        sharding = self.partitioner.data_sharding
        return {name: jax.make_array_from_process_local_data(
                    sharding, np.asarray(local[name], features.feature_dtype(name)))
                for name in features.BATCH_FEATURES}

    def state(self) -> dict:
        return self.iterator.state()


class Trainer:
    """Steps ``train_step`` over ``batches`` until ``train_steps`` or a hook stops it.

    ``train_step(state, batch, rng) -> (state, metrics)`` is compiled by the partitioner (``training/step.py``);
    ``hooks`` run after every step in order (``training/hooks.py``)."""

    def __init__(self, train_step, batches: GlobalBatches, hooks: Sequence[Hook], *, train_steps: int,
                 rng: jax.Array, writer, checkpoint_dir=None):
        self.train_step, self.batches, self.hooks = train_step, batches, list(hooks)
        self.train_steps, self.rng, self.writer, self.checkpoint_dir = train_steps, rng, writer, checkpoint_dir
        self.last_saved_step: Optional[int] = None

    def fit(self, state, start_step: int) -> tuple[Any, Optional[StepInfo]]:
        for hook in self.hooks:
            hook.on_start(self, start_step)
        info = None
        try:
            for step in range(start_step + 1, self.train_steps + 1):
                batch = next(self.batches)
                state, metrics = self.train_step(state, batch, self.rng)
                tokens = metrics["weight"] + _input_tokens(batch["encoder_segment_ids"])
                info = StepInfo(step=step, state=state, metrics=metrics, tokens=tokens)
                for hook in self.hooks:
                    hook.after_step(self, info)
                if info.stop:
                    break
        finally:
            for hook in self.hooks:
                hook.on_end(self, info)
        return state, info


@jax.jit
def _input_tokens(segment_ids):
    return (segment_ids > 0).sum().astype(np.float32)


# ---- Setting a run up. ----
def _vocabulary_token_ids(vocabulary) -> dict:
    """The ids a model trained on this seqio vocabulary must use (pad = decoder start, T5/seqio style)."""
    from alexatm_jax.data import vocab as vocab_lib

    special = vocab_lib.special_token_ids(vocabulary)
    return dict(pad_token_id=int(special["pad"]), eos_token_id=int(special["eos"]),
                decoder_start_token_id=int(special["pad"]), bos_token_id=int(special["bos"]))


def check_model_against_vocabulary(config: ModelConfig, vocabulary, tokenizer_path) -> list[str]:
    """A model must cover its vocabulary and use its special ids; the user's values are never overwritten."""
    problems = []
    if config.vocab_size < vocabulary.vocab_size:
        problems.append(f"ModelConfig.vocab_size={config.vocab_size} is smaller than the vocabulary's "
                        f"{vocabulary.vocab_size} pieces ({tokenizer_path}); bind ModelConfig.vocab_size >= "
                        f"{vocabulary.vocab_size}")
    for name, wanted in _vocabulary_token_ids(vocabulary).items():
        if getattr(config, name) != wanted:
            problems.append(f"ModelConfig.{name}={getattr(config, name)} but the vocabulary ({tokenizer_path}) "
                            f"needs {wanted}; bind ModelConfig.{name}={wanted} (the model files in "
                            f"gin_configs/models/ do)")
    return problems


def validate(*, model_dir, train_steps, config: ModelConfig, data: DataConfig, optimizer: OptimizerConfig,
             checkpoint: CheckpointConfig, logging: LoggingConfig, evaluation: EvalConfig, step: StepConfig,
             mesh_sizes: Optional[dict], extra: Sequence[str] = ()) -> None:
    """Raises ValueError listing every problem of the configuration."""
    problems = list(extra)
    if not isinstance(model_dir, str) or not model_dir:
        problems.append("MODEL_DIR is not set: bind it, e.g. --gin.MODEL_DIR=\"'/tmp/run1'\"")
    if not isinstance(train_steps, int) or isinstance(train_steps, bool) or train_steps < 1:
        problems.append(f"TRAIN_STEPS must be an integer >= 1, got {train_steps!r}")
    problems += data.problems(config) + optimizer.problems() + checkpoint.problems() + logging.problems()
    problems += evaluation.problems() + step.problems()
    if not problems and mesh_sizes is not None:
        data_parallel = mesh_sizes["data"] * mesh_sizes["fsdp"]
        processes = jax.process_count()
        if data.batch_size % processes:
            problems.append(f"BATCH_SIZE={data.batch_size} must be divisible by the {processes} processes")
        if data.batch_size % step.num_microbatches:
            problems.append(f"BATCH_SIZE={data.batch_size} must be divisible by "
                            f"StepConfig.num_microbatches={step.num_microbatches}")
        elif (data.batch_size // step.num_microbatches) % data_parallel:
            problems.append(f"the microbatch size {data.batch_size // step.num_microbatches} (BATCH_SIZE / "
                            f"num_microbatches) must be divisible by data x fsdp = {data_parallel} of MESH")
        if config.num_heads % mesh_sizes["tensor"]:
            problems.append(f"num_heads={config.num_heads} is not divisible by tensor={mesh_sizes['tensor']} of MESH")
    if problems:
        raise ValueError("Invalid training configuration:\n  - " + "\n  - ".join(problems))


def prepare_run_dir(model_dir, config: ModelConfig, tokenizer_path: str, partitioner) -> None:
    """Writes config.json, tokenizer.model and partitioning.json (process 0), refusing a directory that holds
    a run of another model. Nothing is written before the configuration has been validated."""
    from alexatm_jax.partitioning import save_rules

    root = storage.resolve(model_dir)
    config_path = root / "config.json"
    if config_path.exists():
        try:
            existing = ModelConfig.from_json(config_path.read_text())
        except ValueError as error:
            raise ValueError(f"{config_path} is not a model config ({error}); use a new MODEL_DIR") from None
        if existing != config:
            changed = sorted(k for k, v in config.to_dict().items() if existing.to_dict().get(k) != v)
            raise ValueError(f"{model_dir} holds a run of a different model (fields {changed} differ); "
                             "use a new MODEL_DIR or the same model settings to resume")
    if jax.process_index() != 0:
        return
    root.mkdir(parents=True, exist_ok=True)
    if not config_path.exists():
        storage.write_text(config_path, config.to_json())
    storage.write_bytes(root / "tokenizer.model", storage.resolve(tokenizer_path).read_bytes())
    save_rules(root, partitioner)


def _batch_iterator_fn(data: DataConfig):
    if data.batch_iterator_fn is not None:
        return data.batch_iterator_fn
    from alexatm_jax.data.pipeline import make_batch_iterator
    return make_batch_iterator


def _make_evaluate(eval_step, data: DataConfig, evaluation: EvalConfig, partitioner, mixture_or_task_name: str):
    iterator_fn = _batch_iterator_fn(data)
    local_batch = data.batch_size // jax.process_count()

    def evaluate(params) -> float:
        iterator = iterator_fn(data.eval_mixture_or_task_name or mixture_or_task_name, dict(data.task_feature_lengths),
                               local_batch, split=data.eval_split, shard_index=jax.process_index(),
                               num_shards=jax.process_count(), seed=data.seed, pack=data.pack, shuffle=False,
                               repeat=True)
        batches = GlobalBatches(iterator, partitioner)
        total_loss = total_weight = 0.0
        for _ in range(evaluation.steps):
            sums = eval_step(params, next(batches))
            total_loss += host_scalar(sums.loss)
            total_weight += host_scalar(sums.weight)
        return total_loss / max(total_weight, 1.0)

    return evaluate


def _distillation_problems(distillation, config: ModelConfig, tokenizer_path: str) -> list[str]:
    if distillation is None:
        return []
    from alexatm_jax.training import distillation as distill_lib

    if not isinstance(distillation, distill_lib.DistillConfig):
        return [f"train.distillation must be a DistillConfig (@DistillConfig() in gin), got {distillation!r}"]
    problems = distillation.problems()
    if problems:
        return problems
    teacher_config = distill_lib.read_teacher_config(distillation.teacher)
    return distill_lib.vocabulary_problems(teacher_config, config, distillation.teacher, tokenizer_path)


def _make_train_step(layout, schedule, options, distillation, train_steps: int, data: DataConfig, report):
    """(step(state, batch, rng), extra model FLOPs per step): the plain step, or the distillation step with the
    teacher loaded onto the mesh and passed in as an argument at every call."""
    from alexatm_jax.training import distillation as distill_lib, flops, step as step_lib

    if distillation is None:
        return step_lib.make_train_step(layout, schedule, options), 0.0
    teacher = distill_lib.load_teacher(distillation, layout.partitioner, report)
    alpha, temperature = distillation.schedules(train_steps)
    compiled = step_lib.make_train_step(
        layout, schedule, options, step_lib.DistillationTerms(teacher.model, teacher.shardings, alpha, temperature))
    teacher_flops = data.batch_size * flops.forward_flops_per_sequence(teacher.model.config, data.inputs_length,
                                                                       data.targets_length)
    return (lambda state, batch, rng: compiled(state, batch, rng, teacher.params)), teacher_flops


def _init_params_from(layout, init_from: str, init_layers: Optional[dict], report):
    """The parameters that start a fine-tuning (or distillation) run: ``init_from``'s, restored straight into
    this run's shardings; or, when it has other layer counts (or ``init_layers`` is given), the chosen subset
    of its layers (``checkpoints/layer_init.py``)."""
    from alexatm_jax.checkpoints import layer_init, model_dir as model_dir_lib

    source_config = model_dir_lib.read_config(init_from)
    config = layout.model.config
    layer_counts_differ = (source_config.encoder_layers, source_config.decoder_layers) != (
        config.encoder_layers, config.decoder_layers)
    if init_layers is not None and (not isinstance(init_layers, dict) or set(init_layers) - {"encoder", "decoder"}):
        raise ValueError(f"train.init_layers must be a dict with keys 'encoder' and/or 'decoder' (each a layer "
                         f"choice such as 'every_other' or a list of indices), got {init_layers!r}")
    try:
        layer_init.check_compatible(source_config, config)
    except ValueError as error:
        raise ValueError(f"train.init_from={init_from!r}: {error}") from None
    if not layer_counts_differ and init_layers is None and source_config.scan_layers == config.scan_layers:
        _, params = model_dir_lib.restore_params(init_from, layout.abstract.params)
        report(f"Initialised from {init_from}")
        return params
    _, source_params = model_dir_lib.restore_params(init_from, model_dir_lib.abstract_params(source_config))
    init_layers = init_layers or {}
    params, chosen = layer_init.student_params_from_teacher(
        source_params, source_config, config, encoder_layers=init_layers.get("encoder"),
        decoder_layers=init_layers.get("decoder"))
    report(f"Initialised from {init_from}: encoder layers {chosen['encoder']}, decoder layers {chosen['decoder']} "
           f"of its {source_config.encoder_layers}+{source_config.decoder_layers}")
    return jax.device_put(params, layout.shardings.params)


def _restore_or_init(layout, manager, init_rng, init_from, report, with_data: bool, init_layers=None):
    """(state, start_step, data_state): the newest readable checkpoint, else a fresh state (with the
    parameters of ``init_from`` for fine-tuning: a run directory or an exported model directory)."""
    from alexatm_jax.training import checkpointing
    from alexatm_jax.training.train_state import TrainState

    restored = checkpointing.restore_latest(manager, layout.abstract, with_data=with_data, report=report)
    if restored is not None:
        step, params, opt_state, data_state, meta = restored
        state = TrainState(step=jax.device_put(np.int32(step), layout.partitioner.replicated), params=params,
                           opt_state=opt_state)
        report(f"Resumed from step {step} ({checkpointing.checkpoint_dir(manager.directory.parent)})")
        return state, step, data_state
    if init_from:
        params = _init_params_from(layout, init_from, init_layers, report)
        return layout.init(init_rng, params), 0, None
    return layout.init(init_rng), 0, None


@gin.configurable(module="alexatm_jax")
@cleaned_up_on_early_failure  # a run that fails before it has trained leaves MODEL_DIR as it found it
def train(model_dir: str = gin.REQUIRED, train_steps: int = gin.REQUIRED,
          model_config: ModelConfig = gin.REQUIRED, *,
          data: Optional[DataConfig] = None, optimizer: Optional[OptimizerConfig] = None,
          checkpoint: Optional[CheckpointConfig] = None, logging: Optional[LoggingConfig] = None,
          evaluation: Optional[EvalConfig] = None, step: Optional[StepConfig] = None,
          mesh: str = "data=-1", logical_axis_rules: Optional[Sequence[Sequence[Any]]] = None,
          init_from: Optional[str] = None, init_layers: Optional[dict] = None,
          distillation: Optional[DistillConfig] = None, seed: int = 0, eval_only: bool = False) -> dict:
    """Trains (or resumes training) in ``model_dir``; returns a summary dict (status, step, last metrics).

    The dataclass arguments default to their gin-bound instances (``DataConfig.batch_size = %BATCH_SIZE`` in
    the run files). ``init_from``: a run or model directory whose parameters start this run (fine-tuning, fresh
    optimiser); ignored when ``model_dir`` already has checkpoints (then the run resumes). When ``init_from``
    has more layers than this model (same widths), the student takes a subset of them ("shrink and
    fine-tune"): ``init_layers = {'encoder': spec, 'decoder': spec}``, spec as in
    ``checkpoints.layer_init.choose_layers`` (None: its default). ``distillation``: a ``DistillConfig``
    whose teacher guides every step (``training/distillation.py``). ``eval_only``:
    restore the newest checkpoint, measure the held-out loss, log it, train nothing.
    """
    from alexatm_jax import partitioning
    from alexatm_jax.data import bundled, vocab as vocab_lib
    from alexatm_jax.models import EncoderDecoderModel
    from alexatm_jax.training import checkpointing, flops, metrics as metrics_lib, step as step_lib
    from alexatm_jax.training.train_state import StateLayout

    data, optimizer = data or DataConfig(), optimizer or OptimizerConfig()
    checkpoint, logging, evaluation = checkpoint or CheckpointConfig(), logging or LoggingConfig(), evaluation or EvalConfig()
    step = step or StepConfig()

    # ---- Validation: everything that can be wrong is reported before anything is written or compiled. ----
    config = plain_model_config(model_config)
    tokenizer_path = str(storage.resolve(data.tokenizer_path)) if data.tokenizer_path else bundled.bundled_spm_path()
    vocabulary = vocab_lib.get_vocabulary(tokenizer_path)
    rules = partitioning.rules_from_pairs(logical_axis_rules) if logical_axis_rules else None
    mesh_sizes = partitioning.parse_mesh_spec(mesh, jax.device_count())
    validate(model_dir=model_dir, train_steps=train_steps, config=config, data=data, optimizer=optimizer,
             checkpoint=checkpoint, logging=logging, evaluation=evaluation, step=step, mesh_sizes=mesh_sizes,
             extra=check_model_against_vocabulary(config, vocabulary, tokenizer_path)
             + ([] if isinstance(seed, int) and not isinstance(seed, bool) else [f"train.seed must be an integer, got {seed!r}"])
             + _distillation_problems(distillation, config, tokenizer_path))
    if data.batch_iterator_fn is None:
        from alexatm_jax.data import pipeline as data_pipeline, tasks as tasks_lib
        if data.tokenizer_path and any(tasks_lib.is_bundled(name) for name in (
                data.mixture_or_task_name, data.eval_mixture_or_task_name or "")):
            tasks_lib.use_vocabulary_for_bundled(tokenizer_path)  # the bundled data holds text: any vocabulary
        data_pipeline.check_vocabulary(data.mixture_or_task_name, tokenizer_path)

    # ---- The objects every step goes through. ----
    model = EncoderDecoderModel(config)
    partitioner = partitioning.Partitioner(mesh, rules)
    tx, schedule = optimizer.build(model.abstract_params(), train_steps)
    layout = StateLayout(model, tx, partitioner)
    divisibility = partitioner.divisibility_problems(model.abstract_params(), model.param_logical_specs())
    if divisibility:
        raise ValueError("MESH cannot lay this model out: " + "; ".join(divisibility[:6]) +
                         ". Change the mesh sizes (e.g. a tensor axis that divides num_heads and the FFN width).")
    prepare_run_dir(model_dir, config, tokenizer_path, partitioner)

    writer = metrics_lib.RunWriter(model_dir, enabled=jax.process_index() == 0, tensorboard=logging.tensorboard,
                                   total_steps=train_steps)
    manager = checkpointing.make_manager(model_dir, keep=checkpoint.keep, keep_best=checkpoint.keep_best,
                                         async_save=checkpoint.async_save)
    init_rng, dropout_rng = jax.random.split(jax.random.PRNGKey(seed))
    options = step_lib.StepOptions(num_microbatches=step.num_microbatches, label_smoothing=step.label_smoothing,
                                   z_loss=step.z_loss, skip_nonfinite=step.nonfinite == "skip")
    evaluate = None
    if evaluation.every_steps or eval_only:
        evaluate = _make_evaluate(step_lib.make_eval_step(layout, options), data, evaluation, partitioner,
                                  data.mixture_or_task_name)
    try:
        state, start_step, data_state = _restore_or_init(
            layout, manager, init_rng, init_from, writer.message, with_data=data.resume_data_state and not eval_only,
            init_layers=init_layers)
        if eval_only:
            if manager.latest_step() is None:
                raise ValueError(f"eval_only: no checkpoint in {checkpointing.checkpoint_dir(model_dir)}")
            eval_loss = evaluate(state.params)
            writer.write(start_step, {"eval_loss": eval_loss})
            return {"status": "evaluated", "step": start_step, "metrics": {}, "eval_loss": eval_loss,
                    "model_dir": model_dir}

        iterator = _batch_iterator_fn(data)(
            data.mixture_or_task_name, dict(data.task_feature_lengths), data.batch_size // jax.process_count(),
            split="train", shard_index=jax.process_index(), num_shards=jax.process_count(), seed=data.seed,
            pack=data.pack, shuffle=True, repeat=True)
        if data_state is not None:
            iterator.restore(data_state)
        batches = GlobalBatches(iterator, partitioner)

        meta = dict(mesh=mesh, batch_size=data.batch_size, task_feature_lengths=dict(data.task_feature_lengths),
                    mixture_or_task_name=data.mixture_or_task_name, process_count=jax.process_count(),
                    device_count=jax.device_count())
        nonfinite = NonFiniteHook(step.nonfinite, (logging.every_steps, checkpoint.every_steps,
                                                   evaluation.every_steps), train_steps)
        logging_hook = LoggingHook(
            logging.every_steps, train_steps,
            flops.train_step_flops(config, data.batch_size, data.inputs_length, data.targets_length),
            flops.device_peak_flops(jax.devices()[0], config.dtype, logging.peak_flops_per_device), nonfinite)
        hooks = [PreemptionHook(manager), nonfinite, logging_hook]
        eval_hook = EvalHook(evaluation.every_steps, train_steps, evaluate) if evaluation.every_steps else None
        if eval_hook:
            hooks.append(eval_hook)
        hooks.append(CheckpointHook(manager, checkpoint.every_steps, train_steps, batches.state, meta))
        train_step, step_flops = _make_train_step(layout, schedule, options, distillation, train_steps,
                                                  data, writer.message)
        logging_hook.flops_per_step += step_flops
        if distillation is not None:
            meta["teacher"] = distillation.teacher
        trainer = Trainer(train_step, batches, hooks,
                          train_steps=train_steps, rng=dropout_rng, writer=writer,
                          checkpoint_dir=checkpointing.checkpoint_dir(model_dir))
        trainer.last_saved_step = start_step if start_step else None
        nonfinite.last_saved = trainer.last_saved_step
        state, info = trainer.fit(state, start_step)
    finally:
        manager.wait_until_finished()
        manager.close()
        writer.close()
    final_step = info.step if info is not None else start_step
    return {"status": "preempted" if info is not None and info.stop else "done", "step": final_step,
            "metrics": logging_hook.last_values, "eval_loss": eval_hook.last_eval_loss if eval_hook else None,
            "model_dir": model_dir}
