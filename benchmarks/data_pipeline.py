#!/usr/bin/env python
"""Is the input pipeline ever the bottleneck? Pipeline tokens/s, in total and per CPU core, next to the
tokens/s a training step consumes.

    PYTHONPATH=. python benchmarks/data_pipeline.py [--length 256] [--batch-size 8] [--out benchmarks/results]

Measures on this machine:
- the ``alexatm_demo`` mixture through ``make_batch_iterator`` (tokenize, pack with [DOC], denoise/CLM,
  mixture sampling, greedy packing, batching), each core count (``--cores``, default 1 and all available) in
  a fresh process whose CPU affinity is limited to that many cores, so that every thread it starts (tf.data's
  pool, which the pipeline sizes from the affinity mask, TensorFlow's own pools, Python) shares them:
  batches/s after a warm-up, as token positions/s (batch x (inputs + targets)) and real (non-padding)
  tokens/s, in total and per core (median of ``--repeats`` timed windows; the best as well). The batches of
  every core count are hashed: the same digest means the thread count did not change the data;
- a jitted forward + backward + AdamW update of ``AlexaTMTransformer`` (tiny and small presets, float32,
  dropout on) on those same batches, in this process on all available cores: steps/s as token positions/s,
  in total and per core.
The ratio pipeline/step > 1 means the pipeline outruns training; per core, it says how many cores of
training one pipeline core feeds. Writes ``data_pipeline.json`` and ``data_pipeline.md`` under ``--out``
(machine, command, date, load averages, figures).
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def available_cpus() -> list[int]:
    return sorted(os.sched_getaffinity(0))


def cpu_seconds() -> float:
    """CPU time (user + system) of this process so far, all its threads."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def time_pipeline(length, batch_size, num_batches, warmup, repeats=1):
    """Pipeline throughput in this process (its thread pool sized by ``pipeline.data_threads()``): ``repeats``
    timed windows of ``num_batches`` batches after ``warmup`` batches. Returns the figures and the warm-up
    batches."""
    from alexatm_jax.data.pipeline import data_threads, make_batch_iterator

    start = time.perf_counter()
    it = make_batch_iterator("alexatm_demo", {"inputs": length, "targets": length}, batch_size, seed=0)
    batches = [next(it) for _ in range(warmup)]
    setup_s = time.perf_counter() - start
    digest = hashlib.sha256()
    windows, real, positions = [], 0, num_batches * batch_size * 2 * length
    cpu_start = cpu_seconds()
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(num_batches):
            batch = next(it)
            real += int((batch["encoder_segment_ids"] > 0).sum() + (batch["decoder_segment_ids"] > 0).sum())
            for key in sorted(batch):
                digest.update(batch[key].tobytes())
        windows.append(time.perf_counter() - start)
    cpu = cpu_seconds() - cpu_start
    seconds = statistics.median(windows)
    return {"setup_s": setup_s, "batches": num_batches, "repeats": repeats, "seconds": seconds,
            "window_seconds": windows, "positions_per_s": positions / seconds,
            "best_positions_per_s": positions / min(windows),
            "real_tokens_per_s": real / repeats / seconds, "real_fraction": real / (repeats * positions),
            "cpu_seconds": cpu, "cores_busy": cpu / sum(windows), "positions_per_cpu_s": repeats * positions / cpu,
            "data_threads": data_threads(), "cpus": len(os.sched_getaffinity(0)),
            "batches_sha256": digest.hexdigest()}, batches


def pipeline_on_cores(cores: int, length, batch_size, num_batches, warmup, repeats) -> dict:
    """``time_pipeline`` in a fresh process limited (CPU affinity, set before it starts) to ``cores`` cores."""
    cpus = available_cpus()[:cores]
    spec = json.dumps({"length": length, "batch_size": batch_size, "num_batches": num_batches, "warmup": warmup,
                       "repeats": repeats})
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]),
               TF_CPP_MIN_LOG_LEVEL="3")
    env.pop("ALEXATM_DATA_THREADS", None)  # the pool follows the affinity mask
    load = os.getloadavg()[0]
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--pipeline-worker", spec], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=1800,
                          preexec_fn=lambda: os.sched_setaffinity(0, cpus))
    if proc.returncode:
        raise RuntimeError(f"pipeline on {cores} cores failed:\n{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result.update(cores=cores, positions_per_s_per_core=result["positions_per_s"] / cores,
                  real_tokens_per_s_per_core=result["real_tokens_per_s"] / cores, load_average_1m_before=load)
    return result


def time_train_step(preset, batches, steps):
    import jax
    import jax.numpy as jnp
    import flax.linen as nn
    import optax

    from alexatm_jax.model.config import get_preset
    from alexatm_jax.model.transformer import AlexaTMTransformer

    length = batches[0]["encoder_input_tokens"].shape[1]
    config = get_preset(preset).replace(pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
                                        vocab_size=max(get_preset(preset).vocab_size, 8192),
                                        max_position_embeddings=max(get_preset(preset).max_position_embeddings,
                                                                    length + 2))
    model = AlexaTMTransformer(config)
    b0 = {k: jnp.asarray(v) for k, v in batches[0].items()}
    params = nn.unbox(model.init({"params": jax.random.PRNGKey(0), "dropout": jax.random.PRNGKey(1)},
                                 b0["encoder_input_tokens"], b0["decoder_input_tokens"], b0["decoder_target_tokens"],
                                 enable_dropout=False)["params"])
    optimizer = optax.adamw(1e-4, weight_decay=0.1)
    opt_state = optimizer.init(params)

    def loss_fn(p, batch, rng):
        logits = model.apply({"params": p}, batch["encoder_input_tokens"], batch["decoder_input_tokens"],
                             batch["decoder_target_tokens"], encoder_segment_ids=batch["encoder_segment_ids"],
                             decoder_segment_ids=batch["decoder_segment_ids"],
                             encoder_positions=batch["encoder_positions"],
                             decoder_positions=batch["decoder_positions"], enable_dropout=True,
                             rngs={"dropout": rng})
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, batch["decoder_target_tokens"])
        w = batch["decoder_loss_weights"]
        return (ce * w).sum() / jnp.maximum(w.sum(), 1.0)

    @jax.jit
    def step(p, s, batch, rng):
        loss, grads = jax.value_and_grad(loss_fn)(p, batch, rng)
        updates, s = optimizer.update(grads, s, p)
        return optax.apply_updates(p, updates), s, loss

    rng = jax.random.PRNGKey(2)
    start = time.perf_counter()
    params, opt_state, loss = step(params, opt_state, b0, rng)
    loss.block_until_ready()
    compile_s = time.perf_counter() - start
    start, cpu_start = time.perf_counter(), cpu_seconds()
    for i in range(steps):
        batch = {k: jnp.asarray(v) for k, v in batches[(i + 1) % len(batches)].items()}
        params, opt_state, loss = step(params, opt_state, batch, jax.random.fold_in(rng, i))
    loss.block_until_ready()
    elapsed, cpu = time.perf_counter() - start, cpu_seconds() - cpu_start
    n_params = sum(x.size for x in jax.tree_util.tree_leaves(params))
    bsz = batches[0]["encoder_input_tokens"].shape[0]
    return {"preset": preset, "parameters": int(n_params), "compile_s": compile_s, "steps": steps,
            "seconds": elapsed, "positions_per_s": steps * bsz * 2 * length / elapsed, "cpu_seconds": cpu,
            "cores_busy": cpu / elapsed, "positions_per_cpu_s": steps * bsz * 2 * length / cpu,
            "final_loss": float(loss)}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--length", type=int, default=256, help="inputs and targets length")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--pipeline-batches", type=int, default=200, help="batches per timed window")
    parser.add_argument("--repeats", type=int, default=3, help="timed pipeline windows (median reported)")
    parser.add_argument("--cores", type=int, nargs="+", default=None,
                        help="pipeline core counts (default: 1 and all available)")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--presets", nargs="*", default=["tiny", "small"])
    parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    parser.add_argument("--pipeline-worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.pipeline_worker:
        spec = json.loads(args.pipeline_worker)
        print(json.dumps(time_pipeline(spec["length"], spec["batch_size"], spec["num_batches"], spec["warmup"],
                                       spec["repeats"])[0]))
        return

    available = len(available_cpus())
    load_start = os.getloadavg()
    cores = sorted(set(args.cores or [1, available]))
    if max(cores) > available or min(cores) < 1:
        parser.error(f"--cores must be between 1 and the {available} available CPUs")
    pipes = []
    for n in cores:
        pipes.append(pipeline_on_cores(n, args.length, args.batch_size, args.pipeline_batches, 10, args.repeats))
        print(f"pipeline on {n} core(s): {pipes[-1]['positions_per_s']:,.0f} positions/s", file=sys.stderr, flush=True)
    from alexatm_jax.data.pipeline import make_batch_iterator

    it = make_batch_iterator("alexatm_demo", {"inputs": args.length, "targets": args.length}, args.batch_size, seed=0)
    batches = [next(it) for _ in range(10)]  # the train steps' batches (the pipeline's first ten)
    train = []
    for p in args.presets:
        t = time_train_step(p, batches, args.steps)
        t.update(cores=available, positions_per_s_per_core=t["positions_per_s"] / available)
        train.append(t)
    full = pipes[-1]
    scaling = {str(p["cores"]): p["positions_per_s"] / (p["cores"] * pipes[0]["positions_per_s"] / pipes[0]["cores"])
               for p in pipes}
    result = {
        "benchmark": "data_pipeline",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(["python", "benchmarks/data_pipeline.py"] + (argv if argv is not None else sys.argv[1:])),
        "machine": {"platform": platform.platform(), "processor": platform.processor(),
                    "cpu_count": os.cpu_count(), "cpus_available": available, "python": platform.python_version(),
                    "load_average_at_start": load_start, "load_average_at_end": os.getloadavg(),
                    "load_average_1m": load_start[0]},
        "settings": {"mixture": "alexatm_demo", "inputs_length": args.length, "targets_length": args.length,
                     "batch_size": args.batch_size},
        "pipeline": full,  # on all available cores
        "pipeline_by_cores": pipes,
        "pipeline_scaling_efficiency": scaling,  # per-core throughput relative to 1 core
        "same_batches_for_every_core_count": len({p["batches_sha256"] for p in pipes}) == 1,
        "train_steps": train,
        "pipeline_over_train": {t["preset"]: full["positions_per_s"] / t["positions_per_s"] for t in train},
        # how many cores of training one pipeline core feeds (1-core pipeline vs the train step per core)
        "pipeline_over_train_per_core": {t["preset"]: pipes[0]["positions_per_s_per_core"]
                                         / t["positions_per_s_per_core"] for t in train},
        # the same from CPU time actually used (less sensitive to other jobs on the machine)
        "pipeline_over_train_per_cpu_s": {t["preset"]: pipes[0]["positions_per_cpu_s"] / t["positions_per_cpu_s"]
                                          for t in train},
    }
    os.makedirs(args.out, exist_ok=True)
    m = result["machine"]
    lines = [
        "# Data pipeline vs training step throughput", "",
        f"- date: {result['date']}", f"- command: `{result['command']}`",
        f"- machine: {m['platform']}, {m['cpu_count']} CPUs ({available} available); load average (1/5/15 min) "
        f"{'/'.join(f'{x:.2f}' for x in load_start)} at the start, "
        f"{'/'.join(f'{x:.2f}' for x in m['load_average_at_end'])} at the end (shared machine)",
        f"- batches: {args.batch_size} x ({args.length} inputs + {args.length} targets), mixture alexatm_demo",
        f"- pipeline: one fresh process per core count, its CPU affinity limited to that many cores; tf.data's "
        f"thread pool sized from the affinity mask (`pipeline.data_threads()`); {args.repeats} windows of "
        f"{args.pipeline_batches} batches after 10 warm-up batches, median (best in brackets)",
        f"- train step: this process, all {available} cores (XLA's CPU thread pool), {args.steps} steps after "
        "the compile",
        "- per core = total / cores allowed; busy = CPU seconds / wall seconds (all the process's threads; "
        "under 1 per allowed core when other jobs take the cores, or when a serial stage bounds the pipeline); "
        "per CPU-s = token positions per CPU-second actually used", "",
        "| what | cores allowed | token positions/s | per core | busy | per CPU-s | note |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for p in pipes:
        lines.append(f"| input pipeline | {p['cores']} | {p['positions_per_s']:,.0f} "
                     f"({p['best_positions_per_s']:,.0f}) | {p['positions_per_s_per_core']:,.0f} | "
                     f"{p['cores_busy']:.2f} | {p['positions_per_cpu_s']:,.0f} | "
                     f"{p['data_threads']} tf.data threads; real tokens/s {p['real_tokens_per_s']:,.0f} "
                     f"({p['real_tokens_per_s_per_core']:,.0f} per core); per-core throughput vs 1 core "
                     f"{scaling[str(p['cores'])]:.2f}; setup {p['setup_s']:.1f}s; "
                     f"load {p['load_average_1m_before']:.1f} |")
    for t in train:
        lines.append(f"| train step, {t['preset']} ({t['parameters'] / 1e6:.1f}M params) | {t['cores']} | "
                     f"{t['positions_per_s']:,.0f} | {t['positions_per_s_per_core']:,.1f} | {t['cores_busy']:.2f} | "
                     f"{t['positions_per_cpu_s']:,.1f} | pipeline ({full['cores']} cores) is "
                     f"{result['pipeline_over_train'][t['preset']]:,.1f}x faster; one pipeline core feeds "
                     f"{result['pipeline_over_train_per_core'][t['preset']]:,.0f} cores of this step "
                     f"({result['pipeline_over_train_per_cpu_s'][t['preset']]:,.0f} by CPU time); compile "
                     f"{t['compile_s']:.1f}s |")
    lines += ["", f"Same batches for every core count (sha256 of the timed batches): "
                  f"{'yes' if result['same_batches_for_every_core_count'] else 'NO'}."]
    for name, text in (("data_pipeline.json", json.dumps(result, indent=1) + "\n"),
                       ("data_pipeline.md", "\n".join(lines) + "\n")):
        fd, tmp = tempfile.mkstemp(dir=args.out, prefix=".tmp-")
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, os.path.join(args.out, name))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
