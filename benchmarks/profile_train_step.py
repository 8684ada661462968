#!/usr/bin/env python
"""Where a train step's time goes, op by op: traces one step of the project's train step with the JAX profiler
and sums the XLA CPU runtime's events (one per executed thunk: a fusion, a dot, a copy...) by name.

    PYTHONPATH=. python benchmarks/profile_train_step.py [--scan true|false] [--dtype float32] [--top 30]

Same model and batch as ``benchmarks/train_step.py`` (d_model 512, 6+6 layers, 8 heads, FFN 2048,
vocabulary 8000, batch 8 x (256 + 256)). Prints a table: name, calls, total ms, share of the step, and the
kind (dot / fusion / other) totals. The events come from ``--xla_cpu_enable_xprof_traceme``; the trace is
parsed with TensorFlow's XPlane protobuf (TensorFlow is already a dependency, for tf.data).
"""

from __future__ import annotations

import argparse
import collections
import glob
import os
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scan", default=None, choices=("true", "false"), help="override scan_layers")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--what", default="step", choices=("step", "forward", "forward_backward"))
    parser.add_argument("--hlo", default=None, help="also write the optimised HLO of the step here")
    args = parser.parse_args(argv)
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_cpu_enable_xprof_traceme=true").strip()
    import jax

    import train_step as bench

    shape = dict(vocab=8000, d_model=512, layers=6, heads=8, ffn=2048, batch=8, inputs=256, targets=256)
    changes = {"dtype": args.dtype}
    if args.scan:
        changes["scan_layers"] = args.scan == "true"
    model, train_step, batch, holder, rng = bench.our_step(shape, changes)
    forward = jax.jit(lambda p, b, r: model.loss_fn(p, b, r).loss)
    forward_backward = jax.jit(jax.grad(lambda p, b, r: model.loss_fn(p, b, r).loss))

    def run():
        if args.what == "step":
            holder["state"], metrics = train_step(holder["state"], batch, rng)
            jax.block_until_ready(metrics)
        elif args.what == "forward":
            jax.block_until_ready(forward(holder["state"].params, batch, rng))
        else:
            jax.block_until_ready(forward_backward(holder["state"].params, batch, rng))

    run(), run()
    if args.hlo:
        compiled = {"step": lambda: train_step.lower(holder["state"], batch, rng),
                    "forward": lambda: forward.lower(holder["state"].params, batch, rng),
                    "forward_backward": lambda: forward_backward.lower(holder["state"].params, batch, rng)}
        Path(args.hlo).write_text(compiled[args.what]().compile().as_text())
    start = time.perf_counter()
    run()
    untraced = time.perf_counter() - start
    totals, calls = traced_thunk_times(run)
    print(f"{args.what}: {untraced:.3f} s untraced; {sum(totals.values()) / 1e3:.3f} s of thunk time summed over "
          f"threads ({model.config.scan_layers=}, dtype {args.dtype})")
    print_thunk_table(totals, calls, args.top)


def traced_thunk_times(run) -> tuple[collections.Counter, collections.Counter]:
    """Runs ``run()`` under the JAX profiler -> (milliseconds by thunk name, summed over threads; calls)."""
    import jax
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    trace_dir = tempfile.mkdtemp(prefix="profile_")
    with jax.profiler.trace(trace_dir):
        run()
    path = sorted(glob.glob(os.path.join(trace_dir, "**", "*.xplane.pb"), recursive=True))[-1]
    space = xplane_pb2.XSpace()
    space.ParseFromString(Path(path).read_bytes())
    totals, calls = collections.Counter(), collections.Counter()
    for plane in space.planes:
        names = {k: v.name for k, v in plane.event_metadata.items()}
        for line in plane.lines:
            for event in line.events:
                name = names.get(event.metadata_id, "?")
                if _is_thunk(name):
                    totals[name] += event.duration_ps / 1e9
                    calls[name] += 1
    return totals, calls


def print_thunk_table(totals: collections.Counter, calls: collections.Counter, top: int) -> None:
    """The kind totals (dot / fusion / loop / other) and the ``top`` thunks by time."""
    busy = sum(totals.values())
    kinds = collections.Counter()
    for name, ms in totals.items():
        kinds[_kind(name)] += ms
    print("by kind: " + ", ".join(f"{k} {v / 1e3:.3f} s ({v / busy:.0%})" for k, v in kinds.most_common()))
    print(f"{'name':60s} {'calls':>6s} {'ms':>9s} {'share':>6s}")
    for name, ms in totals.most_common(top):
        print(f"{name[:60]:60s} {calls[name]:6d} {ms:9.1f} {ms / busy:6.1%}")


def _is_thunk(name: str) -> bool:
    # Runtime bookkeeping events (executable launch, the whole program) would double-count their children.
    # Host-side Python events (a jitted call, a transfer to numpy) would count the device time again.
    return not any(word in name for word in ("PjRt", "Execute", "ThunkExecutor", "jit_", "pjit", "XlaModule",
                                             "TfrtCpu", "$", "PjitFunction", "np.asarray", "device_put"))


def _kind(name: str) -> str:
    lowered = name.lower()
    if "dot" in lowered or "gemm" in lowered or "matmul" in lowered or "convolution" in lowered:
        return "dot"
    if "fusion" in lowered:
        return "fusion"
    if "while" in lowered or "loop" in lowered:
        return "loop"
    return "other"


if __name__ == "__main__":
    main()
