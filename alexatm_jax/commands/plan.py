"""``alexatm-jax plan``: will this model train on that mesh? Compiles the real train step ahead of time on
abstract shapes over virtual devices (nothing is allocated) and prints per-device memory (parameters,
optimizer state, temporaries), FLOPs per step, whether it fits, and how long the step took to compile (tracing,
lowering and XLA's compile, and whether the layers are scanned); the last line is JSON."""

from __future__ import annotations

import json
import math
import os
import sys

from alexatm_jax.cli import UserError
from alexatm_jax.commands import arg_types


def register(subparsers):
    parser = subparsers.add_parser("plan", help="per-device memory and FLOPs of a train step on a mesh, "
                                                "compiled ahead of time on virtual devices",
                                   description=__doc__)
    parser.add_argument("--model", required=True, help="preset: tiny small base large xl 20b")
    parser.add_argument("--mesh", required=True, help="e.g. 'data=2,fsdp=4,tensor=8' (-1 = the rest; then "
                                                      "give --devices)")
    parser.add_argument("--devices", type=arg_types.positive_int, default=None,
                        help="device count (default: the mesh's product)")
    parser.add_argument("--batch", type=arg_types.positive_int, required=True, help="global batch, in sequences")
    parser.add_argument("--inputs", type=arg_types.positive_int, required=True, help="encoder length")
    parser.add_argument("--targets", type=arg_types.positive_int, required=True, help="decoder length")
    parser.add_argument("--device-memory", type=arg_types.positive_float, default=None, dest="device_memory",
                        help="GiB per device, to say whether it fits")
    parser.add_argument("--microbatches", type=arg_types.positive_int, default=1)
    parser.add_argument("--optimizer", default="adamw", choices=("adamw", "adafactor"))
    parser.add_argument("--remat", default=None, help="override the preset's remat policy "
                                                      "(none full dots dots_with_no_batch_dims)")
    parser.add_argument("--scan", default=None, choices=("true", "false"), help="override scan_layers")
    parser.add_argument("--dtype", default=None, choices=("float32", "bfloat16"), help="compute dtype")
    parser.set_defaults(func=run)


# A plan compiles the step and never runs it: LLVM's optimisation of the CPU code is wasted work. Level 0
# leaves XLA's HLO passes, SPMD partitioning and buffer assignment (the memory figures) as they are and
# cut XLA's compile of the 20b step from 11.2 to 7.1 s (median of 3 A/B pairs; the same plan figures;
# benchmarks/results/compile_time.md).
PLAN_XLA_FLAGS = "--xla_backend_optimization_level=0"


def virtual_device_flags(count: int, user_flags: str = "") -> str:
    """XLA_FLAGS for a plan over ``count`` virtual CPU devices; ``user_flags`` come after the plan's
    defaults (so they can override them) and before the device count."""
    return " ".join(filter(None, (PLAN_XLA_FLAGS, user_flags.strip(),
                                  f"--xla_force_host_platform_device_count={count}")))


def _device_count(mesh: str, devices) -> int:
    sizes = []
    for part in filter(None, (p.strip() for p in mesh.split(","))):
        try:
            sizes.append(int(part.partition("=")[2]))
        except ValueError:
            raise UserError(f"bad --mesh {mesh!r}: write AXIS=SIZE pairs, e.g. 'data=2,fsdp=4'") from None
    if devices:
        return devices
    if -1 in sizes:
        raise UserError("--mesh uses -1: also give --devices N so the plan knows how many devices there are")
    return math.prod(sizes) if sizes else 1


def _check_layout(config, args, count: int) -> None:
    """The mesh spec, the batch and the lengths against the model, from shapes alone (no devices needed):
    the checks ``planning.plan`` makes, made before the device count matters."""
    import types

    from alexatm_jax import partitioning
    from alexatm_jax.models import EncoderDecoderModel

    sizes = partitioning.parse_mesh_spec(args.mesh, count)
    problems = []
    data_parallel = sizes["data"] * sizes["fsdp"]
    if args.batch % args.microbatches or (args.batch // args.microbatches) % data_parallel:
        problems.append(f"--batch {args.batch} / --microbatches {args.microbatches} must be divisible by data x fsdp "
                        f"= {data_parallel}")
    for name, length in (("inputs", args.inputs), ("targets", args.targets)):
        if length > config.max_position_embeddings:
            problems.append(f"--{name} {length} exceeds the model's {config.max_position_embeddings} positions")
    # Partitioner.divisibility_problems reads only .rules and .mesh.shape: a stand-in needs no devices.
    stand_in = types.SimpleNamespace(rules=partitioning.rules_from_pairs(partitioning.DEFAULT_RULES),
                                     mesh=types.SimpleNamespace(shape=sizes))
    model = EncoderDecoderModel(config)
    problems += partitioning.Partitioner.divisibility_problems(stand_in, model.abstract_params(),
                                                               model.param_logical_specs())
    if problems:
        raise UserError(f"--mesh {args.mesh!r} cannot lay out {args.model}: " + "; ".join(problems[:6])
                        + (f"; and {len(problems) - 6} more" if len(problems) > 6 else "")
                        + ". Change the mesh sizes (e.g. a tensor axis that divides num_heads), the batch or the lengths.")


def run(args) -> int:
    count = _device_count(args.mesh, args.devices)
    if "jax" not in sys.modules:
        # Virtual CPU devices must be requested before JAX starts; they compile, never allocate.
        os.environ["XLA_FLAGS"] = virtual_device_flags(count, os.environ.get("XLA_FLAGS", ""))
        os.environ.setdefault("JAX_PLATFORMS", "cpu")
    import jax

    from alexatm_jax.model.config import get_preset
    from alexatm_jax.training import planning

    config = get_preset(args.model)
    changes = {}
    if args.remat:
        changes["remat_policy"] = args.remat
    if args.scan:
        changes["scan_layers"] = args.scan == "true"
    if args.dtype:
        changes["dtype"] = args.dtype
    config = config.replace(**changes)
    _check_layout(config, args, count)  # before devices: a mistake is named even where JAX has too few
    devices = jax.devices()
    if len(devices) < count:
        raise UserError(f"the plan needs {count} devices but JAX has {len(devices)}; run it in a fresh process "
                        "(the command sets up virtual devices itself)")
    result = planning.plan(config, args.mesh, args.batch, args.inputs, args.targets,
                           device_memory_gib=args.device_memory, num_microbatches=args.microbatches,
                           optimizer=args.optimizer, devices=devices[:count])
    gib = result["per_device_gib"]
    print(f"{args.model} ({result['model_params'] / 1e9:.3f}B params) on mesh {result['mesh']}, batch {args.batch}, "
          f"lengths {args.inputs}+{args.targets}, scan={config.scan_layers}, remat={config.remat_policy}, "
          f"dtype={config.dtype}")
    print(f"  per device: params {gib['params']:.2f} GiB, optimizer state {gib['optimizer_state']:.2f} GiB, "
          f"temporaries {gib['temporaries']:.2f} GiB, total {gib['total']:.2f} GiB")
    print(f"  model FLOPs per step {result['model_flops_per_step']:.3e}")
    if "fits" in result:
        print(f"  fits in {args.device_memory} GiB: {'yes' if result['fits'] else 'NO'}")
    layers = (f"{config.encoder_layers}+{config.decoder_layers} layers "
              + ("scanned (one loop body per stack)" if config.scan_layers else "unrolled (not scanned)"))
    print(f"  compiled ahead of time for {result['devices']} devices on {result['compiled_on'].split(' (')[0]} in "
          f"{result['compile_seconds']:.1f} s: trace {result['trace_seconds']:.1f} s, lower "
          f"{result['lower_seconds']:.1f} s, XLA compile {result['xla_compile_seconds']:.1f} s; {layers}")
    print(json.dumps(result, sort_keys=True))
    return 0
