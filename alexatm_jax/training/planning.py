"""Ahead-of-time plans: compile the real train step on abstract shapes over (virtual) devices and report
per-device memory and FLOPs, without allocating parameters or data.

The memory figures are XLA's own buffer assignment for the compiled step (``compiled.memory_analysis()``)
on the backend that compiled it: on virtual CPU devices that is the CPU compiler's assignment, a close but
not exact stand-in for a GPU/TPU compile of the same program. Parameter and optimizer-state bytes are
exact (shard shapes times dtype sizes).
"""

from __future__ import annotations

import math
import time
from typing import Any, Optional

import jax
import jax.numpy as jnp

from alexatm_jax import features, partitioning
from alexatm_jax.model.config import ModelConfig
from alexatm_jax.models import EncoderDecoderModel
from alexatm_jax.training import flops, optimizer as opt_lib, step as step_lib
from alexatm_jax.training.configs import OptimizerConfig
from alexatm_jax.training.train_state import StateLayout

GiB = 1024 ** 3


def per_device_bytes(abstract_tree: Any) -> int:
    """Bytes one device holds of a tree of ShapeDtypeStructs with shardings (its shard of each leaf)."""
    total = 0
    for leaf in jax.tree_util.tree_leaves(abstract_tree):
        shape = leaf.sharding.shard_shape(leaf.shape) if leaf.sharding is not None else leaf.shape
        total += math.prod(shape) * jnp.dtype(leaf.dtype).itemsize
    return total


def plan(config: ModelConfig, mesh_spec: str, batch_size: int, inputs_length: int, targets_length: int, *,
         device_memory_gib: Optional[float] = None, num_microbatches: int = 1, optimizer: str = "adamw",
         rules=None, devices=None) -> dict:
    """Compiles one train step of ``config`` on ``mesh_spec`` (over ``devices``, default all) and returns
    the plan as a JSON-able dict (bytes per device, FLOPs per step, fits, and the seconds spent tracing,
    lowering and compiling the step)."""
    devices = list(jax.devices() if devices is None else devices)
    partitioner = partitioning.Partitioner(mesh_spec, rules, devices)
    sizes = dict(partitioner.mesh.shape)
    problems = []
    if batch_size % num_microbatches or (batch_size // num_microbatches) % partitioner.data_parallel_size:
        problems.append(f"batch {batch_size} / microbatches {num_microbatches} must be divisible by data x fsdp "
                        f"= {partitioner.data_parallel_size}")
    for name, length in (("inputs", inputs_length), ("targets", targets_length)):
        if length > config.max_position_embeddings:
            problems.append(f"--{name} {length} exceeds the model's {config.max_position_embeddings} positions")
    model = EncoderDecoderModel(config)
    problems += partitioner.divisibility_problems(model.abstract_params(), model.param_logical_specs())
    if problems:
        raise ValueError("this plan cannot be laid out: " + "; ".join(problems[:8]) +
                         (f"; and {len(problems) - 8} more" if len(problems) > 8 else "") +
                         ". Change the mesh sizes (or the model's dimensions).")
    tx, schedule = OptimizerConfig(name=optimizer).build(model.abstract_params(), train_steps=1000)
    layout = StateLayout(model, tx, partitioner)
    train_step = step_lib.make_train_step(layout, schedule, step_lib.StepOptions(num_microbatches=num_microbatches))
    batch = {k: jax.ShapeDtypeStruct((batch_size, targets_length if k.startswith("decoder") else inputs_length),
                                     features.feature_dtype(k), sharding=partitioner.data_sharding)
             for k in features.BATCH_FEATURES}
    rng = jax.ShapeDtypeStruct((2,), jnp.uint32, sharding=partitioner.replicated)
    # Three phases, timed apart: tracing the Python step to a jaxpr, lowering the jaxpr to StableHLO (with
    # the shardings), and XLA's compile (SPMD partitioning, optimisation, code generation). With scanned
    # layers the first two see one layer per stack whatever the depth; unrolled, all three grow with it.
    started = time.perf_counter()
    traced = train_step.trace(layout.abstract, batch, rng)
    traced_at = time.perf_counter()
    lowered = traced.lower()
    lowered_at = time.perf_counter()
    compiled = lowered.compile()
    compiled_at = time.perf_counter()
    memory = compiled.memory_analysis()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else (cost or {})
    params_bytes = per_device_bytes(layout.abstract.params)
    opt_bytes = per_device_bytes(layout.abstract.opt_state)
    temp = int(memory.temp_size_in_bytes)
    # Peak live bytes: inputs (state and batch) stay alive; outputs alias the donated state, so only the
    # non-aliased part of the outputs is extra; temporaries come on top.
    total = int(memory.argument_size_in_bytes) + int(memory.output_size_in_bytes) - int(memory.alias_size_in_bytes) + temp
    n_params = opt_lib.count_params(model.abstract_params())
    model_flops = flops.train_step_flops(config, batch_size, inputs_length, targets_length)
    result = {
        "model_params": n_params,
        "mesh": {k: int(v) for k, v in sizes.items()},
        "devices": len(devices),
        "batch": batch_size, "inputs": inputs_length, "targets": targets_length,
        "num_microbatches": num_microbatches, "optimizer": optimizer,
        "encoder_layers": config.encoder_layers, "decoder_layers": config.decoder_layers,
        "scan_layers": config.scan_layers, "remat_policy": config.remat_policy, "dtype": config.dtype,
        "per_device_gib": {
            "params": params_bytes / GiB,
            "optimizer_state": opt_bytes / GiB,
            "temporaries": temp / GiB,
            "total": total / GiB,
        },
        "model_flops_per_step": model_flops,
        "xla_flops_per_step_per_device": float(cost.get("flops", float("nan"))),
        # compile_seconds: the whole ahead-of-time compile (as ``jit(...).lower(...).compile()``), the sum of
        # tracing, lowering to StableHLO and XLA's own compile.
        "compile_seconds": compiled_at - started,
        "trace_seconds": traced_at - started,
        "lower_seconds": lowered_at - traced_at,
        "xla_compile_seconds": compiled_at - lowered_at,
        "compiled_on": f"{devices[0].platform} ({devices[0].device_kind})",
    }
    if device_memory_gib:
        result["device_memory_gib"] = device_memory_gib
        result["fits"] = total / GiB <= device_memory_gib
    return result
