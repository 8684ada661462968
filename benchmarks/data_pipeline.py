#!/usr/bin/env python
"""Is the input pipeline ever the bottleneck? Pipeline tokens/s next to the tokens/s a training step consumes.

    PYTHONPATH=. python benchmarks/data_pipeline.py [--length 256] [--batch-size 8] [--out benchmarks/results]

Measures, in one process on this machine:
- the ``alexatm_demo`` mixture through ``make_batch_iterator`` (tokenize, pack with [DOC], denoise/CLM,
  mixture sampling, greedy packing, batching): batches/s after a warm-up, as token positions/s
  (batch x (inputs + targets)) and real (non-padding) tokens/s;
- a jitted forward + backward + AdamW update of ``AlexaTMTransformer`` (tiny and small presets, float32,
  dropout on) on those same batches: steps/s as token positions/s.
The ratio pipeline/step > 1 means the pipeline outruns training. Writes ``data_pipeline.json`` and
``data_pipeline.md`` under ``--out`` (machine, command, date, figures).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def time_pipeline(length, batch_size, num_batches, warmup):
    from alexatm_jax.data.pipeline import make_batch_iterator

    start = time.perf_counter()
    it = make_batch_iterator("alexatm_demo", {"inputs": length, "targets": length}, batch_size, seed=0)
    batches = [next(it) for _ in range(warmup)]
    setup_s = time.perf_counter() - start
    real = 0
    start = time.perf_counter()
    for _ in range(num_batches):
        batch = next(it)
        real += int((batch["encoder_segment_ids"] > 0).sum() + (batch["decoder_segment_ids"] > 0).sum())
    elapsed = time.perf_counter() - start
    positions = num_batches * batch_size * 2 * length
    return {"setup_s": setup_s, "batches": num_batches, "seconds": elapsed,
            "positions_per_s": positions / elapsed, "real_tokens_per_s": real / elapsed,
            "real_fraction": real / positions}, batches


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
    start = time.perf_counter()
    for i in range(steps):
        batch = {k: jnp.asarray(v) for k, v in batches[(i + 1) % len(batches)].items()}
        params, opt_state, loss = step(params, opt_state, batch, jax.random.fold_in(rng, i))
    loss.block_until_ready()
    elapsed = time.perf_counter() - start
    n_params = sum(x.size for x in jax.tree_util.tree_leaves(params))
    bsz = batches[0]["encoder_input_tokens"].shape[0]
    return {"preset": preset, "parameters": int(n_params), "compile_s": compile_s, "steps": steps,
            "seconds": elapsed, "positions_per_s": steps * bsz * 2 * length / elapsed, "final_loss": float(loss)}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--length", type=int, default=256, help="inputs and targets length")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--pipeline-batches", type=int, default=200)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--presets", nargs="+", default=["tiny", "small"])
    parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    args = parser.parse_args(argv)

    pipe, batches = time_pipeline(args.length, args.batch_size, args.pipeline_batches, warmup=10)
    train = [time_train_step(p, batches, args.steps) for p in args.presets]
    result = {
        "benchmark": "data_pipeline",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(["python", "benchmarks/data_pipeline.py"] + (argv if argv is not None else sys.argv[1:])),
        "machine": {"platform": platform.platform(), "processor": platform.processor(),
                    "cpu_count": os.cpu_count(), "python": platform.python_version(),
                    "load_average_1m": os.getloadavg()[0]},
        "settings": {"mixture": "alexatm_demo", "inputs_length": args.length, "targets_length": args.length,
                     "batch_size": args.batch_size},
        "pipeline": pipe,
        "train_steps": train,
        "pipeline_over_train": {t["preset"]: pipe["positions_per_s"] / t["positions_per_s"] for t in train},
    }
    os.makedirs(args.out, exist_ok=True)
    lines = [
        "# Data pipeline vs training step throughput", "",
        f"- date: {result['date']}", f"- command: `{result['command']}`",
        f"- machine: {result['machine']['platform']}, {result['machine']['cpu_count']} CPUs, "
        f"1-min load average {result['machine']['load_average_1m']:.1f} (shared machine)",
        f"- batches: {args.batch_size} x ({args.length} inputs + {args.length} targets), mixture alexatm_demo", "",
        "| what | token positions/s | note |", "|---|---:|---|",
        f"| input pipeline | {pipe['positions_per_s']:,.0f} | real (non-padding) tokens/s "
        f"{pipe['real_tokens_per_s']:,.0f}; setup {pipe['setup_s']:.1f}s |",
    ]
    for t in train:
        lines.append(f"| train step, {t['preset']} ({t['parameters'] / 1e6:.1f}M params) | "
                     f"{t['positions_per_s']:,.0f} | pipeline is {result['pipeline_over_train'][t['preset']]:.1f}x "
                     f"faster; compile {t['compile_s']:.1f}s |")
    for name, text in (("data_pipeline.json", json.dumps(result, indent=1) + "\n"),
                       ("data_pipeline.md", "\n".join(lines) + "\n")):
        fd, tmp = tempfile.mkstemp(dir=args.out, prefix=".tmp-")
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, os.path.join(args.out, name))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
