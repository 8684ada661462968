"""Model FLOPs of a train step, and the peak FLOP/s of a device, for model FLOPs utilisation (MFU).

How FLOPs are counted (analytic, "model FLOPs" in the PaLM/MaxText sense: what the model needs, not what
the hardware runs, so rematerialisation does not inflate it). Per sequence of S encoder and T decoder
positions, with D = d_model, F = ffn width, V = vocabulary, Le / Ld = layer counts, a matmul of an
[m, k] by [k, n] costing 2*m*k*n:

  forward = 2 * ( S * Le * (4 D^2 + 2 D Fe)                  encoder q,k,v,o projections and MLP
                + T * Ld * (4 D^2 + 2 D^2 + 2 D Fd)          decoder self q,k,v,o, cross q,o, MLP
                + S * Ld * 2 D^2                             cross-attention k,v over the encoder output
                + T * D * V )                                LM head
          + Le * 4 S^2 D + Ld * (4 T^2 D + 4 T S D)          attention scores and weighted values
                                                             (full squares: causal masking not discounted)
  train step = 3 * forward * global batch                    backward = 2 x forward

Embedding lookups, norms, softmax and the optimizer are not counted (they are not matmuls). Lengths are
the padded feature lengths: packing fills them, so they are what the step really processes.
"""

from __future__ import annotations

import functools
from typing import Optional

from alexatm_jax.model.config import ModelConfig

# Dense peak FLOP/s per device by compute dtype: the vendors' dense (no sparsity) matmul peaks, with f32 on
# NVIDIA meaning TF32 tensor cores and on TPU the bf16 MXU rate (f32 matmuls are passed through it). Keys are
# ``jax.Device.device_kind`` as JAX reports it, lower-cased; several names can mean one chip (a TPU v5p reports
# "TPU v5", a v5e "TPU v5 lite"). CPUs differ from machine to machine, so their peak is measured instead.
PEAK_FLOPS: dict[str, dict[str, float]] = {
    "a100": {"float32": 156e12, "bfloat16": 312e12},
    "h100": {"float32": 495e12, "bfloat16": 989e12},
    "h200": {"float32": 495e12, "bfloat16": 989e12},
    "tpu v4": {"float32": 275e12, "bfloat16": 275e12},
    "tpu v5": {"float32": 459e12, "bfloat16": 459e12},       # v5p
    "tpu v5p": {"float32": 459e12, "bfloat16": 459e12},
    "tpu v5 lite": {"float32": 197e12, "bfloat16": 197e12},  # v5e
    "tpu v5e": {"float32": 197e12, "bfloat16": 197e12},
    "tpu v6 lite": {"float32": 918e12, "bfloat16": 918e12},  # v6e (Trillium)
    "tpu v6e": {"float32": 918e12, "bfloat16": 918e12},
}
# NVIDIA kinds carry the board name ("NVIDIA H100 80GB HBM3"): matched by the chip's token.
_GPU_TOKENS = ("a100", "h100", "h200")


def forward_flops_per_sequence(config: ModelConfig, inputs_length: int, targets_length: int) -> float:
    """Forward-pass model FLOPs for one (inputs, targets) sequence pair; formula in the module docstring."""
    d, s, t = config.d_model, inputs_length, targets_length
    le, ld = config.encoder_layers, config.decoder_layers
    fe, fd = config.encoder_ffn_dim, config.decoder_ffn_dim
    if config.ffn_type == "gated_gelu":  # two input projections instead of one
        fe, fd = fe * 3 / 2, fd * 3 / 2
    matmul_params_tokens = (s * le * (4 * d * d + 2 * d * fe)
                            + t * ld * (6 * d * d + 2 * d * fd)
                            + s * ld * 2 * d * d
                            + t * d * config.vocab_size)
    attention = le * 4 * s * s * d + ld * (4 * t * t * d + 4 * t * s * d)
    return 2.0 * matmul_params_tokens + attention


def train_step_flops(config: ModelConfig, batch_size: int, inputs_length: int, targets_length: int) -> float:
    """Model FLOPs of one training step over the global batch (forward + backward = 3 x forward)."""
    return 3.0 * batch_size * forward_flops_per_sequence(config, inputs_length, targets_length)


def _table_key(device_kind: str) -> Optional[str]:
    kind = " ".join(device_kind.lower().split())
    if kind in PEAK_FLOPS:
        return kind
    for token in _GPU_TOKENS:
        if token in kind.replace("-", " ").split():
            return token
    return None


@functools.lru_cache(maxsize=4)
def measure_cpu_peak_flops(dtype: str = "float32", size: int = 2048, repeats: int = 5) -> float:
    """This machine's matmul FLOP/s on one CPU device (best of ``repeats`` ``size``^3 products): the peak
    MFU is measured against here, since CPU peaks differ from machine to machine. 2048 rather than a smaller
    size: 1024^3 products ran 1.6x below the 2048^3 rate on one machine, which inflated MFU by as much."""
    import jax
    import jax.numpy as jnp

    x = jnp.ones((size, size), dtype)
    return 2.0 * size ** 3 / best_call_seconds(jax.jit(lambda a: a @ a), x, repeats=repeats)


def best_call_seconds(fn, *args, repeats: int = 5) -> float:
    """The fastest of ``repeats`` timed calls of ``fn(*args)`` (a jitted function, waited for), in seconds,
    after one untimed call that compiles it. Best rather than median: what the machine can do, not its load."""
    import time

    fn(*args).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn(*args).block_until_ready()
        best = min(best, time.perf_counter() - start)
    return best


def device_peak_flops(device, dtype: str = "bfloat16", override: Optional[float] = None) -> Optional[float]:
    """Peak FLOP/s of one device (a ``jax.Device`` or its ``device_kind``), or ``override`` if given; measured
    on CPU; None for an unknown accelerator (MFU is then not reported rather than guessed)."""
    if override:
        return float(override)
    dtype = "bfloat16" if dtype in ("bfloat16", "float16") else "float32"
    platform = getattr(device, "platform", None)
    kind = getattr(device, "device_kind", device)
    if platform == "cpu" or (platform is None and str(kind).lower() == "cpu"):
        return measure_cpu_peak_flops(dtype)
    key = _table_key(str(kind))
    return PEAK_FLOPS[key][dtype] if key else None
