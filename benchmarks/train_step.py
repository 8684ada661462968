#!/usr/bin/env python
"""Train-step throughput: our train step against the AlexaTM PyTorch reference's, same architecture, same batch,
same machine, interleaved.

    PYTHONPATH=. python benchmarks/train_step.py [--rounds 4 --steps 3] [--variants default remat_dots no_remat unscanned bf16]

Peer: the reference model (``alexa_teacher_models``, transformers 4.26.1, in ``.venv-ref``) trained the way its
release trains it: loss from ``labels``, backward, global-norm clipping at 1.0, ``torch.optim.AdamW``. Ours:
the project's own train step (``training/step.py``: the model object's loss, AdamW with clipping at 1.0, the
partitioner's jit, donated state) on one CPU device. Both at dropout 0.1 (the two defaults), f32.

Every implementation is a long-lived worker process (compiled and warmed up once); the driver then runs
``--rounds`` rounds, each asking every worker in turn for ``--steps`` timed steps, so all of them see the same
machine load. The 1-minute load average is recorded before each block. The reported figure is the median step
time over all blocks; the ratio is taken between medians of the same run.

``--breakdown`` adds, for our default variant, the time of the jitted forward pass (loss only), of forward +
backward (loss and gradients), and of the whole step: where the time goes.

Writes ``benchmarks/results/train_step.{json,md}`` (machine, command, date, load, figures).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))
from bench_workers import Worker, write_results  # noqa: E402
DEFAULT_REFERENCE_PYTHON = HERE.parent / ".venv-ref" / "bin" / "python"

# Variants of our step: ModelConfig changes over the default configuration.
VARIANTS = {
    "default": {},  # scanned layers, remat_policy "dots_with_no_batch_dims", f32
    "bf16": {"dtype": "bfloat16"},
    "remat_dots": {"remat_policy": "dots"},  # also save the attention products
    "no_remat": {"remat_policy": "none"},
    "unscanned": {"scan_layers": False},
}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocab", type=int, default=8000)
    parser.add_argument("--d-model", type=int, default=512)
    parser.add_argument("--layers", type=int, default=6, help="encoder and decoder layers each")
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--ffn", type=int, default=2048)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--inputs", type=int, default=256)
    parser.add_argument("--targets", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per worker per round")
    parser.add_argument("--variants", nargs="*", default=["default", "remat_dots", "no_remat", "unscanned", "bf16"],
                        choices=sorted(VARIANTS))
    parser.add_argument("--no-reference", action="store_true", help="time our variants only")
    parser.add_argument("--breakdown", action="store_true")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--output", default=str(HERE / "results" / "train_step"))
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)  # internal: run our worker
    return parser.parse_args(argv)


def model_config(args, changes):
    from alexatm_jax.model.config import ModelConfig
    return ModelConfig(vocab_size=args["vocab"], d_model=args["d_model"], encoder_layers=args["layers"],
                       decoder_layers=args["layers"], num_heads=args["heads"], encoder_ffn_dim=args["ffn"],
                       decoder_ffn_dim=args["ffn"], max_position_embeddings=max(512, args["inputs"],
                                                                                args["targets"])
                       ).replace(**changes)


def random_batch(vocab, batch, inputs, targets):
    import numpy as np
    rng = np.random.RandomState(0)
    enc = rng.randint(4, vocab, size=(batch, inputs)).astype(np.int32)
    tgt = rng.randint(4, vocab, size=(batch, targets)).astype(np.int32)
    dec = np.concatenate([np.full((batch, 1), 2, np.int32), tgt[:, :-1]], axis=1)
    ones_in, ones_tg = np.ones_like(enc), np.ones_like(tgt)
    return dict(encoder_input_tokens=enc, encoder_segment_ids=ones_in,
                encoder_positions=np.tile(np.arange(inputs, dtype=np.int32), (batch, 1)),
                decoder_input_tokens=dec, decoder_target_tokens=tgt, decoder_loss_weights=ones_tg.astype(np.float32),
                decoder_segment_ids=ones_tg, decoder_positions=np.tile(np.arange(targets, dtype=np.int32), (batch, 1)))


def our_step(shape, changes):
    """(model, train_step, batch on the device, {"state": initial state}, dropout rng): the project's real train
    step on one CPU device for ``shape`` (``parse_args``'s sizes) with ``changes`` to the ModelConfig."""
    import jax

    from alexatm_jax.models import EncoderDecoderModel
    from alexatm_jax.partitioning import Partitioner
    from alexatm_jax.training import optimizer, step as step_lib
    from alexatm_jax.training.train_state import StateLayout

    model = EncoderDecoderModel(model_config(shape, changes))
    partitioner = Partitioner("data=1", devices=jax.devices()[:1])
    schedule = optimizer.learning_rate_schedule(1e-4, 5e-6, 10, 1000)
    tx = optimizer.make_optimizer(model.abstract_params(), schedule=schedule)
    layout = StateLayout(model, tx, partitioner)
    train_step = step_lib.make_train_step(layout, schedule, step_lib.StepOptions())
    batch = {k: jax.device_put(v, partitioner.data_sharding)
             for k, v in random_batch(shape["vocab"], shape["batch"], shape["inputs"], shape["targets"]).items()}
    return model, train_step, batch, {"state": layout.init(jax.random.PRNGKey(0))}, jax.random.PRNGKey(1)


def our_worker(job_path):
    """Our side of the protocol (see train_step_reference_worker.py): the project's real train step."""
    import jax

    job = json.loads(Path(job_path).read_text())
    model, train_step, batch, holder, rng = our_step(job, job["changes"])

    def step():
        holder["state"], metrics = train_step(holder["state"], batch, rng)
        return float(metrics["loss"])

    started = time.perf_counter()
    step()
    compile_and_first = time.perf_counter() - started
    step()
    timers = {"step": step}
    if job.get("breakdown"):
        forward = jax.jit(lambda p, b, r: model.loss_fn(p, b, r).loss)
        forward_backward = jax.jit(jax.grad(lambda p, b, r: model.loss_fn(p, b, r).loss))
        timers["forward"] = lambda: forward(holder["state"].params, batch, rng).block_until_ready()
        timers["forward_backward"] = lambda: jax.block_until_ready(forward_backward(holder["state"].params, batch, rng))
        for fn in (timers["forward"], timers["forward_backward"]):
            fn(), fn()
    print(json.dumps({"ready": True, "jax": jax.__version__, "compile_and_first_step_s": compile_and_first,
                      "config": model.config.to_dict()}), flush=True)
    for line in sys.stdin:
        command = line.split()
        if not command or command[0] == "quit":
            break
        what = command[2] if len(command) > 2 else "step"
        seconds = []
        for _ in range(int(command[1])):
            start = time.perf_counter()
            timers[what]()
            seconds.append(time.perf_counter() - start)
        print(json.dumps({"seconds": seconds}), flush=True)


def machine_record(threads):
    import jax
    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "threads": threads, "jax": jax.__version__,
            "device": jax.devices()[0].device_kind}


def main(argv=None):
    args = parse_args(argv)
    if args.worker:
        return our_worker(args.worker)
    from alexatm_jax.training import flops

    reference_python = os.environ.get("ALEXATM_REFERENCE_PYTHON") or str(DEFAULT_REFERENCE_PYTHON)
    if not args.no_reference and not Path(reference_python).is_file():
        sys.exit(f"reference environment missing ({reference_python}): `make refenv`, set ALEXATM_REFERENCE_PYTHON "
                 "or pass --no-reference")
    shape = {"vocab": args.vocab, "d_model": args.d_model, "layers": args.layers, "heads": args.heads,
             "ffn": args.ffn, "batch": args.batch, "inputs": args.inputs, "targets": args.targets}
    work = Path(tempfile.mkdtemp(prefix="train_step_bench_"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("XLA_", "JAX_"))}
    env["PYTHONPATH"] = str(HERE.parent)
    workers = {}
    for variant in args.variants:
        job = work / f"{variant}.json"
        job.write_text(json.dumps({**shape, "changes": VARIANTS[variant],
                                   "breakdown": args.breakdown and variant == args.variants[0]}))
        workers[f"ours {variant}"] = Worker(variant, [sys.executable, __file__, "--worker", str(job)], env)
    if not args.no_reference:
        ref_config = dict(vocab_size=args.vocab, d_model=args.d_model, encoder_layers=args.layers,
                          decoder_layers=args.layers, encoder_attention_heads=args.heads,
                          decoder_attention_heads=args.heads, encoder_ffn_dim=args.ffn, decoder_ffn_dim=args.ffn,
                          max_position_embeddings=max(512, args.inputs, args.targets), share_embeddings=False,
                          dropout=0.1, attention_dropout=0.0, activation_dropout=0.0, hidden_dropout_prob=0.1,
                          attention_probs_dropout_prob=0.0, decoder_start_token_id=2)
        job = work / "reference.json"
        job.write_text(json.dumps({"config": ref_config, "threads": args.threads, "batch": args.batch,
                                   "inputs": args.inputs, "targets": args.targets}))
        ref_env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "XLA_", "JAX_"))}
        ref_env.update(TRANSFORMERS_OFFLINE="1", HF_HUB_OFFLINE="1")
        workers["reference"] = Worker("reference", [reference_python, str(HERE / "train_step_reference_worker.py"),
                                                    str(job)], ref_env)
    timings = {name: [] for name in workers}
    parts = {"forward": [], "forward_backward": []} if args.breakdown else {}
    loads = []
    for round_index in range(args.rounds):
        for name, worker in workers.items():
            loads.append(os.getloadavg()[0])
            timings[name] += worker.request("run", args.steps, "step")["seconds"]
        breakdown_worker = workers.get(f"ours {args.variants[0]}")
        for what in parts:
            parts[what] += breakdown_worker.request("run", args.steps, what)["seconds"]
        print(f"round {round_index + 1}/{args.rounds}: " + ", ".join(
            f"{n} {statistics.median(t):.3f}s" for n, t in timings.items()), flush=True)
    infos = {name: w.info for name, w in workers.items()}
    for worker in workers.values():
        worker.close()

    config = model_config(shape, {})
    step_flops = flops.train_step_flops(config, args.batch, args.inputs, args.targets)
    peak = flops.measure_cpu_peak_flops("float32")
    # bf16 is only worth its rounding where its matmuls are faster: recorded beside the f32 peak.
    peak_bf16 = flops.measure_cpu_peak_flops("bfloat16")
    tokens = args.batch * (args.inputs + args.targets)
    reference_median = statistics.median(timings["reference"]) if "reference" in timings else None
    rows = []
    for name, seconds in timings.items():
        median = statistics.median(seconds)
        rows.append({"implementation": name, "median_step_s": median, "min_step_s": min(seconds),
                     "max_step_s": max(seconds), "steps_timed": len(seconds), "tokens_per_s": tokens / median,
                     "tokens_per_s_per_core": tokens / median / os.cpu_count(),
                     "model_tflop_per_s": step_flops / median / 1e12, "mfu_of_measured_f32_peak": step_flops / median / peak,
                     "speedup_over_reference": (reference_median / median) if reference_median else None,
                     "compile_and_first_step_s": infos[name].get("compile_and_first_step_s")})
    record = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "command": "python benchmarks/train_step.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              "machine": machine_record(args.threads), "shape": shape, "model_tflop_per_step": step_flops / 1e12,
              "measured_f32_matmul_peak_tflop_per_s": peak / 1e12,
              "measured_bf16_matmul_peak_tflop_per_s": peak_bf16 / 1e12,
              "load_average_1m": {"min": min(loads), "max": max(loads), "each_block": loads},
              "rounds": args.rounds, "steps_per_block": args.steps, "results": rows,
              "breakdown_s": {k: statistics.median(v) for k, v in parts.items()} or None,
              "our_config": infos[f"ours {args.variants[0]}"]["config"],
              "reference": infos.get("reference")}
    write_results(args.output, record, markdown(record), indent=2)
    print(markdown(record))


def markdown(record) -> str:
    shape, machine, load = record["shape"], record["machine"], record["load_average_1m"]
    lines = ["# Train step: alexatm_jax vs the AlexaTM PyTorch reference", "",
             f"- date: {record['date']}",
             f"- command: `{record['command']}`",
             f"- machine: {machine['platform']}, {machine['processor']}, {machine['cpu_count']} CPUs "
             f"({machine['threads']} torch threads), JAX {machine['jax']} ({machine['device']})",
             f"- load average (1 min) before each block: {load['min']:.2f} to {load['max']:.2f}",
             f"- model: d_model {shape['d_model']}, {shape['layers']}+{shape['layers']} layers, {shape['heads']} heads, "
             f"FFN {shape['ffn']}, vocabulary {shape['vocab']}; batch {shape['batch']} x ({shape['inputs']} + "
             f"{shape['targets']}) tokens; AdamW, clipping 1.0, dropout 0.1, f32 parameters",
             f"- {record['rounds']} interleaved rounds x {record['steps_per_block']} steps per implementation; "
             f"model FLOPs per step {record['model_tflop_per_step']:.3f} T; MFU against the measured f32 matmul peak "
             f"of this machine ({record['measured_f32_matmul_peak_tflop_per_s'] * 1e3:.0f} GFLOP/s)", "",
             "| implementation | median s/step | min | max | tokens/s | tokens/s per core | MFU | vs reference |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in record["results"]:
        speedup = f"{r['speedup_over_reference']:.2f}x" if r["speedup_over_reference"] else ""
        lines.append(f"| {r['implementation']} | {r['median_step_s']:.3f} | {r['min_step_s']:.3f} | "
                     f"{r['max_step_s']:.3f} | {r['tokens_per_s']:.0f} | {r['tokens_per_s_per_core']:.0f} | "
                     f"{r['mfu_of_measured_f32_peak']:.1%} | {speedup} |")
    floor = record["model_tflop_per_step"] / record["measured_f32_matmul_peak_tflop_per_s"]
    reference = next((r for r in record["results"] if r["implementation"] == "reference"), None)
    lines += ["", f"Matmul floor: the step's model FLOPs at this machine's measured f32 matmul peak take "
                  f"{floor:.2f} s (any f32 implementation that does every multiply needs at least that)."]
    if reference:
        target = reference["median_step_s"] / 1.5
        lines[-1] += (f" 1.5x the reference's tokens/s means {target:.2f} s a step, "
                      f"{'below' if target < floor else 'above'} that floor.")
    if record.get("measured_bf16_matmul_peak_tflop_per_s"):
        bf16 = record["measured_bf16_matmul_peak_tflop_per_s"] / record["measured_f32_matmul_peak_tflop_per_s"]
        lines += ["", f"bf16: the measured bf16 matmul peak here is "
                      f"{record['measured_bf16_matmul_peak_tflop_per_s'] * 1e3:.0f} GFLOP/s, {bf16:.2f}x the f32 one: "
                      f"on this CPU bf16 compute can only save activation bytes, not matmul time."]
    if record.get("breakdown_s"):
        b = record["breakdown_s"]
        step = record["results"][0]["median_step_s"]
        lines += ["", f"Where our default step's time goes (medians): forward {b['forward']:.3f} s, forward + "
                      f"backward {b['forward_backward']:.3f} s, whole step {step:.3f} s (so backward "
                      f"{b['forward_backward'] - b['forward']:.3f} s, optimizer and the rest "
                      f"{step - b['forward_backward']:.3f} s)."]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
