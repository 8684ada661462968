"""Train-step throughput on this machine: our sharded train step (``alexatm_jax.training.step``) against a
plain peer (one ``jax.jit`` of forward + backward + optax.adamw with donated buffers, no meshes, no masks, no clipping) in the
same run, for the tiny and small presets. Reports tokens/s, achieved model TFLOP/s and MFU against the
device peak of ``alexatm_jax.training.flops``; writes benchmarks/train_step_results.json and .md.

    python benchmarks/train_step.py [--presets tiny small] [--steps 10]
"""

from __future__ import annotations

import argparse
import datetime
import functools
import json
import os
import platform
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))


def _batch(vocab, batch, length, seed=0):
    import numpy as np
    rng = np.random.RandomState(seed)
    tokens = rng.randint(4, vocab, size=(batch, length)).astype(np.int32)
    ones = np.ones((batch, length), np.int32)
    positions = np.tile(np.arange(length, dtype=np.int32), (batch, 1))
    shifted = np.concatenate([np.zeros((batch, 1), np.int32), tokens[:, :-1]], axis=1)
    return dict(encoder_input_tokens=tokens, encoder_segment_ids=ones, encoder_positions=positions,
                decoder_input_tokens=shifted, decoder_target_tokens=tokens,
                decoder_loss_weights=ones.astype(np.float32), decoder_segment_ids=ones, decoder_positions=positions)


def _time(fn, steps):
    fn()  # compile and warm up
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    return (time.perf_counter() - start) / steps


def bench(preset: str, batch: int, length: int, steps: int) -> dict:
    import flax.linen as nn
    import jax
    import optax

    from alexatm_jax import partitioning
    from alexatm_jax.model.config import get_preset
    from alexatm_jax.model.transformer import AlexaTMTransformer
    from alexatm_jax.training import flops, losses, optimizer, step as step_lib
    from alexatm_jax.training.train_state import StateLayout, init_params_boxed

    config = get_preset(preset).replace(dropout_rate=0.0)
    model = AlexaTMTransformer(config)
    data = _batch(config.vocab_size, batch, length)
    abstract = jax.eval_shape(lambda: nn.unbox(init_params_boxed(model, jax.random.PRNGKey(0), length, length)))
    schedule = optimizer.learning_rate_schedule(1e-4, 5e-6, 10, 1000)
    tx = optimizer.make_optimizer(abstract, schedule=schedule)
    mesh = partitioning.make_mesh("data=1", jax.devices()[:1])
    layout = StateLayout(model, tx, mesh, partitioning.DEFAULT_RULES, length, length)
    sharding = partitioning.data_sharding(mesh)
    ours = step_lib.make_train_step(layout, schedule, step_lib.StepOptions(), sharding)
    holder = {"state": layout.init(jax.random.PRNGKey(0))}
    device_batch = {k: jax.device_put(v, sharding) for k, v in data.items()}
    rng = jax.random.PRNGKey(1)

    def run_ours():
        holder["state"], metrics = ours(holder["state"], device_batch, rng)
        metrics["loss"].block_until_ready()

    # The peer: the textbook step.
    peer_tx = optax.adamw(1e-4, weight_decay=0.1)
    params = jax.jit(lambda r: nn.unbox(init_params_boxed(model, r, length, length)))(jax.random.PRNGKey(0))
    peer = {"params": params, "opt": peer_tx.init(params)}

    @functools.partial(jax.jit, donate_argnums=(0, 1))  # donated like ours: a fair peer
    def peer_step(params, opt, batch):
        def loss_fn(p):
            logits = model.apply({"params": p}, **{k: v for k, v in batch.items() if k != "decoder_loss_weights"},
                                 enable_dropout=False)
            sums = losses.loss_sums(logits, batch["decoder_target_tokens"], batch["decoder_loss_weights"])
            return sums.loss / sums.weight
        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt = peer_tx.update(grads, opt, params)
        return optax.apply_updates(params, updates), opt, loss

    def run_peer():
        peer["params"], peer["opt"], loss = peer_step(peer["params"], peer["opt"], device_batch)
        loss.block_until_ready()

    ours_s = _time(run_ours, steps)
    peer_s = _time(run_peer, steps)
    model_flops = flops.train_step_flops(config, batch, length, length)
    peak = flops.device_peak_flops(jax.devices()[0].device_kind, config.dtype)
    tokens = batch * 2 * length
    return {"preset": preset, "batch": batch, "inputs": length, "targets": length, "steps_timed": steps,
            "ours_step_s": ours_s, "peer_step_s": peer_s, "ours_over_peer_time": ours_s / peer_s,
            "ours_tokens_per_s": tokens / ours_s, "model_tflops_per_step": model_flops / 1e12,
            "ours_tflop_per_s": model_flops / ours_s / 1e12, "ours_mfu": model_flops / ours_s / peak if peak else None,
            "dtype": config.dtype}


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--presets", nargs="*", default=["tiny", "small"])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()
    rows = [bench(p, args.batch, args.length, args.steps) for p in args.presets]
    import jax
    record = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(),
                          "device": jax.devices()[0].device_kind, "jax": jax.__version__},
              "command": "python benchmarks/train_step.py " + " ".join(sys.argv[1:]), "results": rows}
    for name, text in (("train_step_results.json", json.dumps(record, indent=2)),
                       ("train_step_results.md", _markdown(record))):
        tmp = os.path.join(HERE, name + ".tmp")
        with open(tmp, "w") as f:
            f.write(text + "\n")
        os.replace(tmp, os.path.join(HERE, name))
    print(json.dumps(record))


def _markdown(record) -> str:
    lines = ["# Train step throughput", "",
             f"`{record['command']}` on {record['date']}: {record['machine']['platform']}, "
             f"{record['machine']['cpu_count']} CPUs, device {record['machine']['device']}, jax {record['machine']['jax']}. "
             "Shared machine: other jobs may have been running; compare the ratio column, taken in the same run.", "",
             "| preset | batch x (in+tgt) | ours s/step | peer s/step | ours/peer time | tokens/s | model TFLOP/s | MFU |",
             "|---|---|---|---|---|---|---|---|"]
    for r in record["results"]:
        lines.append(f"| {r['preset']} | {r['batch']} x ({r['inputs']}+{r['targets']}) | {r['ours_step_s']:.3f} | "
                     f"{r['peer_step_s']:.3f} | {r['ours_over_peer_time']:.2f} | {r['ours_tokens_per_s']:.0f} | "
                     f"{r['ours_tflop_per_s']:.3f} | {r['ours_mfu']:.1%} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
