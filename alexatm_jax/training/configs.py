"""What a training run is made of, as small gin-configurable dataclasses (T5X binds its configs the same way).

A model file binds ``ModelConfig`` field by field (``ModelConfig.d_model = 512``); a run file binds the rest:

    train.model_config = @ModelConfig()
    DataConfig.mixture_or_task_name = %MIXTURE_OR_TASK_NAME
    OptimizerConfig.learning_rate = 1e-4
    CheckpointConfig.every_steps = 1000
    LoggingConfig.every_steps = %LOG_EVERY_STEPS

Each dataclass checks its own values (``problems()``), so that every mistake is reported at once, before
anything compiles.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Optional

import gin

from alexatm_jax.model.config import ModelConfig

# The model configuration is bound field by field: `ModelConfig.d_model = 512`, `train.model_config =
# @ModelConfig()`. gin builds a wrapper subclass (the class itself is left alone, so a ModelConfig made in
# Python never picks up bindings of an earlier `train` command); the trainer converts what it receives back to
# a plain ModelConfig.
gin.external_configurable(ModelConfig, module="alexatm_jax")

OPTIMIZERS = ("adamw", "adafactor")
NONFINITE_POLICIES = ("stop", "skip")


def _int_problem(name: str, value: Any, minimum: int) -> Optional[str]:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        return f"{name} must be an integer >= {minimum}, got {value!r}"
    return None


def _number_problem(name: str, value: Any, minimum: float = 0.0) -> Optional[str]:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not value >= minimum:
        return f"{name} must be a number >= {minimum}, got {value!r}"
    return None


def _unregistered_problem(name: str) -> Optional[str]:
    import seqio

    from alexatm_jax.data import tasks  # noqa: F401  (registers the bundled tasks and mixtures)

    if name in seqio.MixtureRegistry.names() or name in seqio.TaskRegistry.names():
        return None
    return (f"MIXTURE_OR_TASK_NAME={name!r} is no registered seqio task or mixture; registered mixtures: "
            f"{', '.join(sorted(seqio.MixtureRegistry.names()))}")


@gin.configurable(module="alexatm_jax")
@dataclasses.dataclass(frozen=True)
class DataConfig:
    """The input pipeline. ``batch_size`` is global (sequences per step, split over processes and devices)."""

    mixture_or_task_name: str = "alexatm_demo"
    task_feature_lengths: Mapping[str, int] = dataclasses.field(
        default_factory=lambda: {"inputs": 512, "targets": 512})
    batch_size: int = 64
    seed: int = 0
    pack: bool = True
    tokenizer_path: Optional[str] = None
    eval_mixture_or_task_name: Optional[str] = None
    eval_split: str = "validation"
    # False starts the data stream afresh on resume (e.g. after changing the number of processes).
    resume_data_state: bool = True
    # fn(name, lengths, batch_size, *, split, shard_index, num_shards, seed, pack, shuffle, repeat) -> iterator
    # with state()/restore(); None: alexatm_jax.data.pipeline.make_batch_iterator.
    batch_iterator_fn: Optional[Callable] = None

    @property
    def inputs_length(self) -> int:
        return int(self.task_feature_lengths["inputs"])

    @property
    def targets_length(self) -> int:
        return int(self.task_feature_lengths["targets"])

    def problems(self, config: ModelConfig) -> list[str]:
        found = [_int_problem("BATCH_SIZE", self.batch_size, 1)]
        lengths = self.task_feature_lengths
        if not isinstance(lengths, Mapping) or set(lengths) != {"inputs", "targets"}:
            found.append(f"TASK_FEATURE_LENGTHS must be {{'inputs': N, 'targets': M}}, got {lengths!r}")
        else:
            for key, value in lengths.items():
                problem = _int_problem(f"TASK_FEATURE_LENGTHS[{key!r}]", value, 1)
                if problem:
                    found.append(problem)
                elif value > config.max_position_embeddings:
                    found.append(f"TASK_FEATURE_LENGTHS[{key!r}]={value} exceeds the model's "
                                 f"{config.max_position_embeddings} positions (max_position_embeddings)")
        if not isinstance(self.mixture_or_task_name, str) or not self.mixture_or_task_name:
            found.append(f"MIXTURE_OR_TASK_NAME must be a task or mixture name, got {self.mixture_or_task_name!r}")
        elif self.batch_iterator_fn is None:
            found.append(_unregistered_problem(self.mixture_or_task_name))
        return [p for p in found if p]


@gin.configurable(module="alexatm_jax")
@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    """AlexaTM's recipe by default: AdamW, linear warmup then linear decay to ``min_learning_rate`` at
    ``decay_steps`` (default: the run's length), weight decay except biases and norms, clipping."""

    name: str = "adamw"
    learning_rate: float = 1e-4
    min_learning_rate: float = 5e-6
    warmup_steps: int = 1000
    decay_steps: Optional[int] = None
    weight_decay: float = 0.1
    b1: float = 0.9
    b2: float = 0.98
    eps: float = 1e-6
    clip_norm: Optional[float] = 1.0
    freeze_encoder_steps: int = 0

    def problems(self) -> list[str]:
        found = [] if self.name in OPTIMIZERS else [f"OptimizerConfig.name={self.name!r} must be one of {OPTIMIZERS}"]
        found += [_number_problem("OptimizerConfig.learning_rate", self.learning_rate),
                  _number_problem("OptimizerConfig.min_learning_rate", self.min_learning_rate),
                  _int_problem("OptimizerConfig.warmup_steps", self.warmup_steps, 0),
                  _number_problem("OptimizerConfig.weight_decay", self.weight_decay),
                  _int_problem("OptimizerConfig.freeze_encoder_steps", self.freeze_encoder_steps, 0)]
        if self.decay_steps is not None:
            found.append(_int_problem("OptimizerConfig.decay_steps", self.decay_steps, 1))
        if self.clip_norm is not None:
            found.append(_number_problem("OptimizerConfig.clip_norm", self.clip_norm))
        return [p for p in found if p]

    def build(self, abstract_params: Any, train_steps: int):
        """(optax transformation, learning-rate schedule) for a run of ``train_steps``."""
        from alexatm_jax.training import optimizer as opt_lib

        warmup = min(self.warmup_steps, train_steps)
        schedule = opt_lib.learning_rate_schedule(self.learning_rate, self.min_learning_rate, warmup,
                                                  max(self.decay_steps or train_steps, warmup))
        tx = opt_lib.make_optimizer(abstract_params, name=self.name, schedule=schedule, b1=self.b1, b2=self.b2,
                                    eps=self.eps, weight_decay=self.weight_decay, clip_norm=self.clip_norm,
                                    freeze_encoder_steps=self.freeze_encoder_steps)
        return tx, schedule


@gin.configurable(module="alexatm_jax")
@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
    """Saves every ``every_steps`` steps, at the end and on preemption; keeps the newest ``keep`` and the
    ``keep_best`` with the lowest evaluation loss."""

    every_steps: int = 1000
    keep: int = 3
    keep_best: int = 0
    async_save: bool = True

    def problems(self) -> list[str]:
        return [p for p in (_int_problem("CheckpointConfig.every_steps", self.every_steps, 0),
                            _int_problem("CheckpointConfig.keep", self.keep, 1),
                            _int_problem("CheckpointConfig.keep_best", self.keep_best, 0)) if p]


@gin.configurable(module="alexatm_jax")
@dataclasses.dataclass(frozen=True)
class LoggingConfig:
    """Metrics every ``every_steps`` steps to metrics.jsonl, TensorBoard and the console. MFU is measured
    against ``peak_flops_per_device`` (default: the device's datasheet peak; measured on CPU)."""

    every_steps: int = 100
    tensorboard: bool = True
    peak_flops_per_device: Optional[float] = None

    def problems(self) -> list[str]:
        return [p for p in (_int_problem("LOG_EVERY_STEPS", self.every_steps, 1),) if p]


@gin.configurable(module="alexatm_jax")
@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """Held-out loss every ``every_steps`` steps (0 = never) over ``steps`` batches of the eval split."""

    every_steps: int = 0
    steps: int = 10

    def problems(self) -> list[str]:
        return [p for p in (_int_problem("EvalConfig.every_steps", self.every_steps, 0),
                            _int_problem("EvalConfig.steps", self.steps, 1)) if p]


@gin.configurable(module="alexatm_jax")
@dataclasses.dataclass(frozen=True)
class StepConfig:
    """The train step: microbatches (gradient accumulation), label smoothing, z-loss, and what to do with a
    non-finite loss ('stop': raise naming the step; 'skip': leave the state unchanged for that batch)."""

    num_microbatches: int = 1
    label_smoothing: float = 0.0
    z_loss: float = 0.0
    nonfinite: str = "stop"

    def problems(self) -> list[str]:
        found = [_int_problem("StepConfig.num_microbatches", self.num_microbatches, 1),
                 _number_problem("StepConfig.label_smoothing", self.label_smoothing),
                 _number_problem("StepConfig.z_loss", self.z_loss)]
        if self.nonfinite not in NONFINITE_POLICIES:
            found.append(f"StepConfig.nonfinite={self.nonfinite!r} must be one of {NONFINITE_POLICIES}")
        return [p for p in found if p]


def plain_model_config(config: Any) -> ModelConfig:
    """gin hands over an instance of its wrapper subclass; compare and save a plain ModelConfig."""
    if not isinstance(config, ModelConfig):
        raise ValueError(f"train.model_config must be a ModelConfig (bind it with a model file: "
                         f"--gin_file=gin_configs/models/<preset>.gin), got {config!r}")
    return ModelConfig(**dataclasses.asdict(config))
