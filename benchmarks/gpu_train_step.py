#!/usr/bin/env python
"""Train-step throughput on one accelerator: fused against plain attention, for each remat policy, from the
``xl`` preset up as far as memory allows.

    PYTHONPATH=. python benchmarks/gpu_train_step.py [--presets xl 20b] [--batch 8 --inputs 512 --targets 512]
        [--remat full save_attention_out] [--attention fused plain] [--steps 5]

Each run is the project's own train step (``training/step.py``: the model's loss, AdamW with clipping at 1.0,
the partitioner's jit, donated state) on ONE device (mesh ``data=1``), compute in bf16 and parameters in
f32 by default. For every (preset, remat policy, attention implementation) it compiles the step ahead of
time, then times ``--steps`` steps after ``--warmup`` untimed ones and reports the median step time,
tokens/s (inputs + targets), model TFLOP/s from ``training.flops.train_step_flops`` (the analytic count,
remat not included), MFU against ``flops.device_peak_flops`` and XLA's own FLOP count of the compiled
step (``compiled.cost_analysis()``) with its ratio to the model count. XLA's count includes what remat
recomputes, and does not see inside custom calls: cuDNN's fused attention kernels count as zero there.

A run that runs out of memory is recorded as ``oom`` and the next one goes on; a preset none of whose runs
fits stops the climb to larger presets.

Without a GPU or TPU it prints one line and exits 0 without writing anything, unless ``--allow-cpu`` is given:
then it runs the tiny preset on CPU for 2 steps (f32, short sequences) and writes its results under
``--out`` (required then, so that CPU figures never replace accelerator ones).

Writes ``<out>/gpu_train_step.json`` and ``.md`` (default out: benchmarks/results): machine (device kind and
count, host), command, date, load average, and one record per run.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import math
import os
import platform
import statistics
import sys
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
NAME = "gpu_train_step"
DEFAULT_PRESETS = ("xl", "20b")
CPU_PRESET = "tiny"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="*", default=None,
                        help=f"presets in increasing size (default {' '.join(DEFAULT_PRESETS)}; with --allow-cpu "
                             f"on CPU: {CPU_PRESET})")
    parser.add_argument("--batch", type=int, default=None, help="global batch (default 8; CPU: 2)")
    parser.add_argument("--inputs", type=int, default=None, help="encoder length (default 512; CPU: 32)")
    parser.add_argument("--targets", type=int, default=None, help="decoder length (default 512; CPU: 32)")
    parser.add_argument("--remat", nargs="*", default=None,
                        help="remat policies to try (default: full save_attention_out; CPU: none)")
    parser.add_argument("--attention", nargs="*", default=["fused", "plain"], choices=["fused", "plain", "auto"])
    parser.add_argument("--dtype", default=None, choices=["bfloat16", "float16", "float32"],
                        help="compute dtype (default bfloat16; CPU: float32); parameters stay float32")
    parser.add_argument("--scan", default="true", choices=["true", "false"], help="scan_layers")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per run (default 5; CPU: 2)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps after compiling (default 2; CPU: 1)")
    parser.add_argument("--peak-flops", type=float, default=None, help="override the device's peak FLOP/s")
    parser.add_argument("--allow-cpu", action="store_true", help="without an accelerator, run the tiny preset on CPU")
    parser.add_argument("--out", default=None, help="directory for gpu_train_step.{json,md} (default "
                                                     "benchmarks/results; required with --allow-cpu on CPU)")
    return parser.parse_args(argv)


def resolve(args, on_cpu: bool):
    """Fills the defaults that differ between an accelerator run and the CPU smoke run."""
    def pick(value, accelerator, cpu):
        return value if value is not None else (cpu if on_cpu else accelerator)
    args.presets = pick(args.presets, list(DEFAULT_PRESETS), [CPU_PRESET])
    args.batch = pick(args.batch, 8, 2)
    args.inputs = pick(args.inputs, 512, 32)
    args.targets = pick(args.targets, 512, 32)
    args.remat = pick(args.remat, ["full", "save_attention_out"], ["none"])
    args.dtype = pick(args.dtype, "bfloat16", "float32")
    args.steps = pick(args.steps, 5, 2)
    args.warmup = pick(args.warmup, 2, 1)
    return args


def random_batch(vocab: int, batch: int, inputs: int, targets: int) -> dict:
    """Unpadded random examples, one per row (segment ids all 1: the masks are still built and applied)."""
    import numpy as np
    rng = np.random.RandomState(0)
    enc = rng.randint(4, vocab, size=(batch, inputs)).astype(np.int32)
    tgt = rng.randint(4, vocab, size=(batch, targets)).astype(np.int32)
    dec = np.concatenate([np.full((batch, 1), 2, np.int32), tgt[:, :-1]], axis=1)
    return dict(encoder_input_tokens=enc, encoder_segment_ids=np.ones_like(enc),
                encoder_positions=np.tile(np.arange(inputs, dtype=np.int32), (batch, 1)),
                decoder_input_tokens=dec, decoder_target_tokens=tgt,
                decoder_loss_weights=np.ones(tgt.shape, np.float32), decoder_segment_ids=np.ones_like(tgt),
                decoder_positions=np.tile(np.arange(targets, dtype=np.int32), (batch, 1)))


def is_oom(error: BaseException) -> bool:
    text = f"{type(error).__name__}: {error}".lower()
    return any(word in text for word in ("resource_exhausted", "resource exhausted", "out of memory", "oom"))


def attention_backends(config, batch: int, inputs: int, targets: int) -> dict:
    """Which kernel the fused path picks for each attention of the model (model/attention.py)."""
    import jax
    import jax.numpy as jnp
    from alexatm_jax.model import attention

    def shape(length):
        return jax.ShapeDtypeStruct((batch, length, config.num_heads, config.head_dim), jnp.dtype(config.dtype))
    return {"encoder_self": attention.fused_backend_for(shape(inputs), shape(inputs), config.dtype),
            "decoder_self": attention.fused_backend_for(shape(targets), shape(targets), config.dtype),
            "cross": attention.fused_backend_for(shape(targets), shape(inputs), config.dtype)}


def run_one(preset: str, remat: str, impl: str, args) -> dict:
    import jax

    from alexatm_jax.model import attention
    from alexatm_jax.model.config import get_preset
    from alexatm_jax.models import EncoderDecoderModel
    from alexatm_jax.partitioning import Partitioner
    from alexatm_jax.training import flops, optimizer, step as step_lib
    from alexatm_jax.training.train_state import StateLayout

    config = get_preset(preset).replace(dtype=args.dtype, param_dtype="float32", remat_policy=remat,
                                        attention_impl=impl, scan_layers=args.scan == "true",
                                        max_position_embeddings=max(get_preset(preset).max_position_embeddings,
                                                                    args.inputs, args.targets))
    tokens = args.batch * (args.inputs + args.targets)
    record = {"preset": preset, "remat_policy": remat, "attention_impl": impl,
              "attention_path": attention.resolve_implementation(impl, dropout=config.attention_dropout_rate > 0),
              "batch": args.batch, "inputs": args.inputs, "targets": args.targets, "dtype": config.dtype,
              "param_dtype": config.param_dtype, "scan_layers": config.scan_layers,
              "config": config.to_dict()}
    if record["attention_path"] == "fused":
        record["fused_backends"] = attention_backends(config, args.batch, args.inputs, args.targets)
    device = jax.devices()[0]
    state = compiled = None
    try:
        model = EncoderDecoderModel(config)
        partitioner = Partitioner("data=1", devices=[device])
        schedule = optimizer.learning_rate_schedule(1e-4, 5e-6, 10, 1000)
        tx = optimizer.make_optimizer(model.abstract_params(), schedule=schedule)
        layout = StateLayout(model, tx, partitioner)
        train_step = step_lib.make_train_step(layout, schedule, step_lib.StepOptions())
        batch = {k: jax.device_put(v, partitioner.data_sharding)
                 for k, v in random_batch(config.vocab_size, args.batch, args.inputs, args.targets).items()}
        rng = jax.random.PRNGKey(1)
        started = time.perf_counter()
        compiled = train_step.lower(layout.abstract, batch, rng).compile()
        record["compile_seconds"] = time.perf_counter() - started
        cost = compiled.cost_analysis()
        cost = cost[0] if isinstance(cost, (list, tuple)) else (cost or {})
        hlo = compiled.as_text() or ""
        record["cudnn_attention_calls_in_hlo"] = hlo.count("__cudnn$fmha")
        memory = compiled.memory_analysis()
        if memory is not None:
            record["xla_temp_gib"] = int(memory.temp_size_in_bytes) / 2 ** 30
        state = layout.init(jax.random.PRNGKey(0))
        for _ in range(args.warmup):
            state, metrics = compiled(state, batch, rng)
            float(metrics["loss"])
        seconds = []
        for _ in range(args.steps):
            start = time.perf_counter()
            state, metrics = compiled(state, batch, rng)
            loss = float(metrics["loss"])  # waits for the step
            seconds.append(time.perf_counter() - start)
        step_seconds = statistics.median(seconds)
        model_flops = flops.train_step_flops(config, args.batch, args.inputs, args.targets)
        xla_flops = float(cost.get("flops", float("nan")))
        peak = flops.device_peak_flops(device, config.dtype, override=args.peak_flops)
        record.update(
            status="ok", loss=loss, step_seconds=step_seconds, step_seconds_all=seconds,
            tokens_per_second=tokens / step_seconds, model_params=sum(
                math.prod(x.shape) for x in jax.tree_util.tree_leaves(model.abstract_params())),
            model_flops_per_step=model_flops, model_tflops_per_second=model_flops / step_seconds / 1e12,
            xla_flops_per_step=xla_flops, xla_over_model_flops=xla_flops / model_flops,
            peak_flops=peak, mfu=(model_flops / step_seconds / peak) if peak else None)
        stats = device.memory_stats() if hasattr(device, "memory_stats") else None
        if stats and "peak_bytes_in_use" in stats:
            record["peak_gib_in_use"] = stats["peak_bytes_in_use"] / 2 ** 30
    except Exception as error:  # noqa: BLE001 -- one failed run must not lose the others
        record["status"] = "oom" if is_oom(error) else "error"
        record["error"] = f"{type(error).__name__}: {str(error)[:2000]}"
        if record["status"] == "error":
            traceback.print_exc()
    finally:
        del state, compiled
        gc.collect()
        jax.clear_caches()
    return record


def machine_record():
    import jax
    devices = jax.devices()
    return {"backend": jax.default_backend(), "device_kind": devices[0].device_kind, "device_count": len(devices),
            "devices_used": 1, "host": platform.node(), "platform": platform.platform(),
            "cpu_count": os.cpu_count(), "jax": jax.__version__}


def write_results(out_dir: Path, result: dict) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{NAME}.json").write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    m = result["machine"]
    lines = [f"# Train step on one {m['device_kind']} ({m['backend']}): fused vs plain attention", "",
             f"- command: `{result['command']}`", f"- date: {result['date']}",
             f"- machine: {m['device_count']} x {m['device_kind']} (1 used), host {m['host']}, "
             f"{m['platform']}, jax {m['jax']}",
             f"- load average (1 min) before / after: {result['load_before'][0]:.2f} / {result['load_after'][0]:.2f}",
             f"- batch {result['settings']['batch']}, inputs {result['settings']['inputs']}, targets "
             f"{result['settings']['targets']}, compute {result['settings']['dtype']}, params float32, "
             f"{result['settings']['steps']} timed steps (median) after {result['settings']['warmup']} warm-up",
             "- model FLOPs: analytic (training/flops.py, remat not counted); XLA FLOPs: compiled.cost_analysis() "
             "(remat counted, custom calls such as cuDNN attention not)", "",
             "| preset | remat | attention | kernel | status | step s | tokens/s | model TFLOP/s | MFU | "
             "model GFLOP/step | XLA GFLOP/step | XLA/model | compile s |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["runs"]:
        kernel = ",".join(sorted(set(r.get("fused_backends", {}).values()))) or "-"
        if r["status"] != "ok":
            lines.append(f"| {r['preset']} | {r['remat_policy']} | {r['attention_impl']} | {kernel} | {r['status']} "
                         f"| | | | | | | | |")
            continue
        mfu = f"{100 * r['mfu']:.1f}%" if r.get("mfu") else "n/a"
        lines.append(
            f"| {r['preset']} | {r['remat_policy']} | {r['attention_impl']} | {kernel} | ok | {r['step_seconds']:.4f} "
            f"| {r['tokens_per_second']:.0f} | {r['model_tflops_per_second']:.3f} | {mfu} "
            f"| {r['model_flops_per_step'] / 1e9:.1f} | {r['xla_flops_per_step'] / 1e9:.1f} "
            f"| {r['xla_over_model_flops']:.3f} | {r['compile_seconds']:.1f} |")
    failed = [r for r in result["runs"] if r["status"] != "ok"]
    if failed:
        lines += ["", "Failed runs:", ""] + [f"- {r['preset']} {r['remat_policy']} {r['attention_impl']}: "
                                              f"{r['error'][:300]}" for r in failed]
    (out_dir / f"{NAME}.md").write_text("\n".join(lines) + "\n")


def main(argv=None) -> int:
    args = parse_args(argv)
    import jax
    backend = jax.default_backend()
    on_cpu = backend not in ("gpu", "tpu")
    if on_cpu and not args.allow_cpu:
        print("no GPU/TPU: nothing measured")
        return 0
    if on_cpu and args.out is None:
        sys.exit("--allow-cpu on CPU needs --out DIR (CPU figures must not replace the accelerator results)")
    args = resolve(args, on_cpu)
    out_dir = Path(args.out) if args.out else HERE / "results"
    result = {"machine": machine_record(), "command": " ".join([Path(sys.argv[0]).name] + list(
                  sys.argv[1:] if argv is None else argv)),
              "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "load_before": list(os.getloadavg()),
              "settings": {k: getattr(args, k) for k in ("presets", "batch", "inputs", "targets", "remat",
                                                         "attention", "dtype", "scan", "steps", "warmup")},
              "runs": []}
    for preset in args.presets:
        fitted = False
        for remat in args.remat:
            for impl in args.attention:
                record = run_one(preset, remat, impl, args)
                result["runs"].append(record)
                fitted |= record["status"] == "ok"
                summary = {k: record.get(k) for k in ("preset", "remat_policy", "attention_impl", "status",
                                                      "step_seconds", "tokens_per_second", "mfu",
                                                      "xla_over_model_flops")}
                print(json.dumps(summary), flush=True)
        if not fitted:
            print(f"nothing fits for preset {preset}: not trying larger ones", flush=True)
            break
    result["load_after"] = list(os.getloadavg())
    write_results(out_dir, result)
    print(f"wrote {out_dir / (NAME + '.json')} and .md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
