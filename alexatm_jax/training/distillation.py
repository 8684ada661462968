"""Word-level knowledge distillation: a frozen teacher's token distributions guide the student in its train step.

At every decoder position of the student's batch the teacher (another encoder-decoder sharing the vocabulary)
runs teacher-forced on the same inputs, and the student minimises

    alpha * T^2 * KL(softmax(teacher_logits / T) || softmax(student_logits / T)) + (1 - alpha) * CE(labels)

over the weighted target tokens (padding masked), each term summed over tokens and divided once by the
global batch's target weight like the plain loss (``training/losses.py``). ``T^2`` keeps the gradient scale
of the soft term independent of the temperature (Hinton et al., 2015). ``alpha`` and ``T`` may move linearly
over the run (``alpha_end``, ``temperature_end``).

The teacher lives inside the same jitted step: its parameters are an argument of the compiled step (never a
constant baked into it), sharded on the student's mesh by the same logical-axis rules, with no optimizer
state and no gradient; ``teacher_dtype='bfloat16'`` halves its memory and compute.

Gin (``gin_configs/runs/distill.gin``)::

    train.distillation = @DistillConfig()
    DistillConfig.teacher = %TEACHER          # a run directory or an exported/converted model directory
    DistillConfig.alpha = 0.5
    DistillConfig.temperature = 2.0
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple, Optional

import gin
import jax
import jax.numpy as jnp

from alexatm_jax import storage
from alexatm_jax.model.config import ModelConfig

Array = jax.Array
TEACHER_DTYPES = ("float32", "bfloat16")


@gin.configurable(module="alexatm_jax")
@dataclasses.dataclass(frozen=True)
class DistillConfig:
    """The teacher and the weights of the two loss terms. ``alpha_end``/``temperature_end``: values reached
    linearly at the last step (None: constant). ``teacher_step``: which checkpoint of a run directory
    (None: the newest)."""

    teacher: Optional[str] = None
    alpha: float = 0.5
    temperature: float = 2.0
    alpha_end: Optional[float] = None
    temperature_end: Optional[float] = None
    teacher_dtype: str = "float32"
    teacher_step: Optional[int] = None

    def problems(self) -> list[str]:
        found = []
        if not isinstance(self.teacher, str) or not self.teacher:
            found.append("DistillConfig.teacher is not set: bind it to the teacher's run or model directory, "
                         "e.g. --gin.TEACHER=\"'/path/teacher_run'\"")
        for name in ("alpha", "alpha_end"):
            value = getattr(self, name)
            if value is None and name == "alpha_end":
                continue
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0.0 <= value <= 1.0:
                found.append(f"DistillConfig.{name} must be a number in [0, 1], got {value!r}")
        for name in ("temperature", "temperature_end"):
            value = getattr(self, name)
            if value is None and name == "temperature_end":
                continue
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0:
                found.append(f"DistillConfig.{name} must be a number > 0, got {value!r}")
        if self.teacher_dtype not in TEACHER_DTYPES:
            found.append(f"DistillConfig.teacher_dtype={self.teacher_dtype!r} must be one of {TEACHER_DTYPES}")
        if self.teacher_step is not None and (not isinstance(self.teacher_step, int) or self.teacher_step < 0):
            found.append(f"DistillConfig.teacher_step must be None or a step >= 0, got {self.teacher_step!r}")
        return found

    def schedules(self, train_steps: int) -> tuple[Callable[[Array], Array], Callable[[Array], Array]]:
        """(alpha(step), temperature(step)): linear from the start value at step 0 to the end value at the last
        step (``train_steps - 1``), constant when no end value is set."""
        def linear(start, end):
            if end is None or end == start:
                return lambda step: jnp.asarray(start, jnp.float32)
            span = max(train_steps - 1, 1)
            return lambda step: jnp.asarray(start, jnp.float32) + (end - start) * jnp.minimum(
                step.astype(jnp.float32) / span, 1.0)

        return linear(self.alpha, self.alpha_end), linear(self.temperature, self.temperature_end)


# ---- Pure loss functions. ----
def kl_divergence_sum(student_logits: Array, teacher_logits: Array, weights: Array, temperature: Array) -> Array:
    """sum over tokens of weights * KL(softmax(teacher / T) || softmax(student / T)) (float32 scalar).

    student_logits, teacher_logits [B, L, V] (logical axes batch, length, vocab); weights [B, L] (0 on padding).
    Computed from log-softmaxes, so a teacher probability of 0 contributes exactly 0."""
    t_log_p = jax.nn.log_softmax(teacher_logits.astype(jnp.float32) / temperature, axis=-1)
    s_log_p = jax.nn.log_softmax(student_logits.astype(jnp.float32) / temperature, axis=-1)
    per_token = jnp.sum(jnp.exp(t_log_p) * (t_log_p - s_log_p), axis=-1)
    return jnp.sum(per_token * weights.astype(jnp.float32))


def distillation_objective(ce_sum: Array, kl_sum: Array, alpha: Array, temperature: Array) -> Array:
    """alpha * T^2 * KL + (1 - alpha) * CE, on sums (the caller divides by the batch's target weight)."""
    return alpha * jnp.square(temperature) * kl_sum + (1.0 - alpha) * ce_sum


class Teacher(NamedTuple):
    """A loaded teacher: its model object, its parameters (sharded on the student's mesh) and their shardings."""

    model: Any
    params: Any
    shardings: Any
    directory: str
    step: Optional[int]


def vocabulary_problems(teacher_config: ModelConfig, student_config: ModelConfig, teacher_dir: str,
                        tokenizer_path: Optional[str]) -> list[str]:
    """Teacher and student must read and write the same token ids: same vocabulary size, special ids and (where
    the teacher directory has one) tokenizer file."""
    from alexatm_jax.checkpoints import model_dir as model_dir_lib

    problems = []
    fields = ("vocab_size", "pad_token_id", "eos_token_id", "decoder_start_token_id", "bos_token_id")
    differing = [f"{f} {getattr(teacher_config, f)} (teacher) vs {getattr(student_config, f)} (student)"
                 for f in fields if getattr(teacher_config, f) != getattr(student_config, f)]
    if differing:
        problems.append(f"the teacher {teacher_dir} and the student do not share the vocabulary: "
                        + "; ".join(differing) + ". Distillation compares token distributions, so both models "
                        "must use the same vocabulary: bind the student's ModelConfig to the teacher's values")
    teacher_tokenizer = model_dir_lib.tokenizer_path(teacher_dir)
    if teacher_tokenizer is not None and tokenizer_path is not None:
        if storage.resolve(teacher_tokenizer).read_bytes() != storage.resolve(tokenizer_path).read_bytes():
            problems.append(f"the teacher's tokenizer ({teacher_tokenizer}) differs from the run's ({tokenizer_path}): "
                            f"train the student with the teacher's vocabulary, "
                            f"--gin.DataConfig.tokenizer_path=\"'{teacher_tokenizer}'\"")
    return problems


def read_teacher_config(teacher_dir: str) -> ModelConfig:
    """The teacher's ModelConfig, with a clear error when the directory is not a model."""
    from alexatm_jax.checkpoints import model_dir as model_dir_lib

    root = storage.resolve(teacher_dir)
    if not root.exists():
        raise FileNotFoundError(f"DistillConfig.teacher={teacher_dir!r} does not exist: give the teacher's run "
                                f"directory (MODEL_DIR of its training) or a converted/exported model directory")
    return model_dir_lib.read_config(teacher_dir)


def load_teacher(config: DistillConfig, partitioner, report: Callable[[str], None] = lambda _: None) -> Teacher:
    """The teacher's parameters restored straight into their shardings on ``partitioner``'s mesh (the same
    logical rules as the student), cast to ``teacher_dtype``; dropout off, compute in ``teacher_dtype``."""
    from alexatm_jax.checkpoints import model_dir as model_dir_lib
    from alexatm_jax.models import EncoderDecoderModel

    teacher_config = read_teacher_config(config.teacher)
    dtype = config.teacher_dtype
    teacher_config = dataclasses.replace(teacher_config, dropout_rate=0.0, dtype=dtype)
    model = EncoderDecoderModel(teacher_config)
    shardings = partitioner.shardings(model.param_logical_specs())
    step, params = model_dir_lib.restore_params(config.teacher, model.abstract_params(shardings), config.teacher_step)
    if dtype != "float32":
        params = jax.jit(lambda p: jax.tree_util.tree_map(lambda x: x.astype(dtype), p),
                         out_shardings=shardings)(params)
    report(f"Teacher: {config.teacher}" + (f" (step {step})" if step is not None else "") +
           f", {model!r}, {dtype}")
    return Teacher(model=model, params=params, shardings=shardings, directory=config.teacher, step=step)
