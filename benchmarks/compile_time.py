#!/usr/bin/env python
"""Compile time by depth: the train step compiled ahead of time on virtual CPU devices, at a fixed width and
growing depth, with scanned layer stacks (and unrolled ones, for the shallow depths only, to show the
contrast).

    PYTHONPATH=. python benchmarks/compile_time.py [--preset 20b] [--scanned 2+2 6+4 12+8 23+16 46+32]
        [--unrolled 2+2 6+4 12+8] [--llvm-default PAIRS] [--mesh fsdp=8] [--batch 8] [--inputs 512]
        [--targets 512] [--out DIR] [--notes TEXT ...] [--render]

Each point runs in a fresh process through ``alexatm_jax.training.planning.plan`` (the code path of
``alexatm-jax plan``, with the XLA flags the plan command sets: ``commands/plan.py: virtual_device_flags``),
with the preset's width and its encoder+decoder depth replaced. It records the seconds spent tracing the
step to a jaxpr, lowering it to StableHLO and in XLA's compile, and the process's wall time (JAX import
and start-up included), in wall and CPU seconds. ``--llvm-default PAIRS`` adds interleaved pairs of rows
at the deepest scanned depth: the plan's flags, and XLA's default LLVM optimisation level (the setting
before the plan command lowered it). Writes ``compile_time.json`` and ``compile_time.md`` under ``--out``
(machine, command, date, load average, figures).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)

SCANNED = ("2+2", "6+4", "12+8", "23+16", "46+32")
UNROLLED = ("2+2", "6+4", "12+8")
LLVM_DEFAULT = "--xla_backend_optimization_level=3"  # XLA's default level, overriding the plan's 0


def parse_depth(text: str) -> tuple[int, int]:
    encoder, _, decoder = text.partition("+")
    return int(encoder), int(decoder)


def compile_point(preset: str, encoder_layers: int, decoder_layers: int, scan: bool, mesh: str, batch: int,
                  inputs: int, targets: int) -> dict:
    """Plans one depth in this process (JAX must already have the mesh's devices) and returns its timings."""
    from alexatm_jax.model.config import get_preset
    from alexatm_jax.training import planning

    config = get_preset(preset).replace(encoder_layers=encoder_layers, decoder_layers=decoder_layers,
                                        scan_layers=scan)
    result = planning.plan(config, mesh, batch, inputs, targets)
    keys = ("encoder_layers", "decoder_layers", "scan_layers", "model_params", "devices", "mesh", "trace_seconds",
            "lower_seconds", "xla_compile_seconds", "compile_seconds", "per_device_gib")
    return {k: result[k] for k in keys}


def run_point(preset: str, depth: str, scan: bool, mesh: str, batch: int, inputs: int, targets: int,
              extra_flags: str = "", timeout: int = 1800) -> dict:
    """``compile_point`` in a fresh process with the plan command's virtual devices and XLA flags."""
    from alexatm_jax.commands.plan import _device_count, virtual_device_flags

    count = _device_count(mesh, None)  # the mesh's product (no -1); JAX is not started in this process
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([REPO, os.environ.get("PYTHONPATH", "")]), JAX_PLATFORMS="cpu",
               XLA_FLAGS=virtual_device_flags(count, extra_flags), TF_CPP_MIN_LOG_LEVEL="3")
    encoder, decoder = parse_depth(depth)
    command = [sys.executable, os.path.abspath(__file__), "--worker", json.dumps(
        {"preset": preset, "encoder_layers": encoder, "decoder_layers": decoder, "scan": scan, "mesh": mesh,
         "batch": batch, "inputs": inputs, "targets": targets})]
    load_before = os.getloadavg()[0]
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime + after.ru_stime) - (children.ru_utime + children.ru_stime)
    if proc.returncode:
        raise RuntimeError(f"{preset} {depth} scan={scan} failed:\n{proc.stderr[-3000:]}")
    point = json.loads(proc.stdout.strip().splitlines()[-1])
    point.update(depth=depth, process_seconds=wall, process_cpu_seconds=cpu, load_1min_before=load_before, load_1min_after=os.getloadavg()[0],
                 xla_flags=env["XLA_FLAGS"])
    return point


def measure(preset: str, scanned, unrolled, mesh: str, batch: int, inputs: int, targets: int,
            llvm_default: int = 0, log=None, into: list = None) -> list[dict]:
    """One fresh process per point: scanned depths, then unrolled ones, then ``llvm_default`` pairs at the
    deepest scanned depth: the plan's flags, then XLA's default LLVM optimisation level (interleaved, so that
    both see the same machine load). Appends each point to ``into`` (if given) as it comes, then calls ``log``
    with a line about it."""
    plan = [(d, True, "", None) for d in scanned] + [(d, False, "", None) for d in unrolled]
    for pair in range(llvm_default if scanned else 0):
        plan += [(scanned[-1], True, "", pair), (scanned[-1], True, LLVM_DEFAULT, pair)]
    points = [] if into is None else into
    for depth, scan, flags, pair in plan:
        point = run_point(preset, depth, scan, mesh, batch, inputs, targets, flags)
        point.update(llvm_default=bool(flags), ab_pair=pair)
        points.append(point)
        if log:
            log(f"{depth} scan={scan}{' llvm-default' if flags else ''}: trace {point['trace_seconds']:.1f} s, "
                f"lower {point['lower_seconds']:.1f} s, XLA {point['xla_compile_seconds']:.1f} s, process "
                f"{point['process_seconds']:.1f} s (load {point['load_1min_before']:.1f})")
    return points


def write(out: str, args, points: list[dict], command: str) -> None:
    """Writes the results of this run (machine, date and load average taken now) under ``out``."""
    from importlib.metadata import version

    machine = {"platform": platform.platform(), "python": platform.python_version(), "cpu_count": os.cpu_count(),
               "cpus_available": len(os.sched_getaffinity(0)), "processor": platform.processor()}
    date = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    render(out, {"date": date, "command": command, "machine": machine, "jax": version("jax"),
                 "load_average_at_end": os.getloadavg(), "preset": args.preset, "mesh": args.mesh,
                 "batch": args.batch, "inputs": args.inputs, "targets": args.targets, "notes": list(args.notes),
                 "points": points})


def render(out: str, data: dict) -> None:
    """compile_time.json and compile_time.md under ``out`` from ``data`` (see ``write``)."""
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "compile_time.json"), "w") as f:
        json.dump(data, f, indent=2, sort_keys=True)
    machine, points, date, command = data["machine"], data["points"], data["date"], data["command"]
    load = data["load_average_at_end"]
    loads = [p["load_1min_before"] for p in points]
    lines = [
        "# Train-step compile time by depth",
        "",
        f"- date: {date}",
        f"- command: `{command}`",
        f"- machine: {machine['platform']}, {machine['cpu_count']} CPUs ({machine['cpus_available']} available), "
        f"jax {data['jax']}; 1-min load average {min(loads):.1f} to {max(loads):.1f} before the points, "
        f"{load[0]:.1f} at the end (a shared machine: other jobs ran alongside)",
        f"- what: the `{data['preset']}` preset's widths with the encoder+decoder depth below, the real train step "
        f"(AdamW, preset remat and dtype) compiled ahead of time by `planning.plan` (the `alexatm-jax plan` code "
        f"path and XLA flags) on {points[0]['devices'] if points else '?'} virtual CPU devices, mesh "
        f"`{data['mesh']}`, batch {data['batch']} x ({data['inputs']}+{data['targets']}); one fresh process per row",
        "- columns: trace = Python step to jaxpr; lower = jaxpr to StableHLO; XLA = XLA's compile (SPMD "
        "partitioning, HLO passes, buffer assignment, CPU code generation); total = the three (the plan's "
        "`compile_seconds`); process = the whole process, JAX start-up and model set-up included, in wall and in "
        "CPU seconds (user + system, all threads: less sensitive to other jobs than wall time)",
        "",
        "| encoder+decoder layers | layers | params (B) | trace s | lower s | XLA s | total s | process s | "
        "process CPU s | temporaries GiB/dev | load |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for p in points:
        kind = "scanned" if p["scan_layers"] else "unrolled"
        if p.get("ab_pair") is not None:
            kind += f", A/B pair {p['ab_pair'] + 1}: " + ("LLVM default opt level" if p["llvm_default"] else
                                                          "plan's flags")
        lines.append(f"| {p['depth']} | {kind} | {p['model_params'] / 1e9:.3g} | {p['trace_seconds']:.1f} | "
                     f"{p['lower_seconds']:.1f} | {p['xla_compile_seconds']:.1f} | {p['compile_seconds']:.1f} | "
                     f"{p['process_seconds']:.1f} | {p['process_cpu_seconds']:.1f} | "
                     f"{p['per_device_gib']['temporaries']:.2f} | "
                     f"{p['load_1min_before']:.1f} |")
    for note in data.get("notes") or []:
        lines += ["", note]
    with open(os.path.join(out, "compile_time.md"), "w") as f:
        f.write("\n".join(lines) + "\n")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--preset", default="20b")
    parser.add_argument("--scanned", nargs="*", default=list(SCANNED), help="ENC+DEC depths, scanned")
    parser.add_argument("--unrolled", nargs="*", default=list(UNROLLED), help="ENC+DEC depths, unrolled")
    parser.add_argument("--llvm-default", type=int, default=0, metavar="PAIRS",
                        help="also PAIRS interleaved pairs at the deepest scanned depth: the plan's XLA flags vs "
                             "XLA's default LLVM optimisation level")
    parser.add_argument("--mesh", default="fsdp=8")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--inputs", type=int, default=512)
    parser.add_argument("--targets", type=int, default=512)
    parser.add_argument("--out", default=os.path.join(HERE, "results"))
    parser.add_argument("--notes", nargs="*", default=[], help="paragraphs appended to the markdown")
    parser.add_argument("--render", action="store_true",
                        help="only re-render the markdown from --out's JSON (with --notes, replacing its notes)")
    args = parser.parse_args(argv)
    if args.render:
        with open(os.path.join(args.out, "compile_time.json")) as f:
            data = json.load(f)
        if args.notes:
            data["notes"] = args.notes
        render(args.out, data)
        return 0
    if args.worker:
        spec = json.loads(args.worker)
        print(json.dumps(compile_point(spec["preset"], spec["encoder_layers"], spec["decoder_layers"], spec["scan"],
                                       spec["mesh"], spec["batch"], spec["inputs"], spec["targets"])))
        return 0
    command = "python benchmarks/compile_time.py " + " ".join(argv if argv is not None else sys.argv[1:])
    points = []

    def log(line):  # after each point: print it and rewrite the results (an interrupted run keeps its rows)
        print(line, file=sys.stderr, flush=True)
        write(args.out, args, points, command.strip())

    measure(args.preset, args.scanned, args.unrolled, args.mesh, args.batch, args.inputs, args.targets,
            llvm_default=args.llvm_default, log=log, into=points)
    write(args.out, args, points, command.strip())
    return 0


if __name__ == "__main__":
    sys.exit(main())
