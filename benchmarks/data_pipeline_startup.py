#!/usr/bin/env python
"""Time to the first batch of the input pipeline, and to the first batch after a resume.

    PYTHONPATH=. python benchmarks/data_pipeline_startup.py [--runs 3] [--baseline-rev REV] [--out benchmarks/results]

Each run is a fresh Python process (nothing cached) that imports the data modules, then times
``make_batch_iterator("alexatm_demo", {"inputs": 256, "targets": 256}, batch_size=8)`` up to its first batch
(``first_batch_s``), reads 20 more batches, saves ``state()``, and times a new iterator's ``restore(state)`` up
to its first batch (``resume_s``). With ``--baseline-rev``, the same runs use the data modules of that git
revision (the rest of the tree as it is), interleaved with the current code's runs so that both see the same
machine load. Writes ``data_pipeline_startup.json`` and ``.md`` under ``--out`` (machine, command, date,
figures).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA_MODULES = ("pipeline.py", "preprocessors.py", "tasks.py")

# Runs in the child process: prints one JSON line of timings.
CHILD = r"""
import json, time
t0 = time.perf_counter()
from alexatm_jax.data import pipeline, tasks  # noqa: F401  (TensorFlow, seqio, task registration)
t1 = time.perf_counter()
kwargs = dict(task_feature_lengths={"inputs": 256, "targets": 256}, batch_size=8, seed=0)
it = pipeline.make_batch_iterator("alexatm_demo", **kwargs)
next(it)
t2 = time.perf_counter()
for _ in range(20):
    next(it)
state = json.loads(json.dumps(it.state()))
t3 = time.perf_counter()
resumed = pipeline.make_batch_iterator("alexatm_demo", **kwargs)
resumed.restore(state)
next(resumed)
t4 = time.perf_counter()
print(json.dumps({"import_s": t1 - t0, "first_batch_s": t2 - t1, "resume_s": t4 - t3,
                  "state_bytes": len(json.dumps(state)), "code": pipeline.__file__}))
"""


def baseline_tree(rev: str, workdir: str) -> str:
    """A copy of the package with the data modules of ``rev``; returns the directory for PYTHONPATH."""
    shutil.copytree(os.path.join(ROOT, "alexatm_jax"), os.path.join(workdir, "alexatm_jax"),
                    ignore=shutil.ignore_patterns("__pycache__"))
    for name in DATA_MODULES:
        source = subprocess.run(["git", "show", f"{rev}:alexatm_jax/data/{name}"], cwd=ROOT, check=True,
                                capture_output=True).stdout
        with open(os.path.join(workdir, "alexatm_jax", "data", name), "wb") as f:
            f.write(source)
    return workdir


def one_run(pythonpath: str) -> dict:
    env = dict(os.environ, PYTHONPATH=pythonpath, TF_CPP_MIN_LOG_LEVEL="3", JAX_PLATFORMS="cpu")
    # Run from the tree itself: ``python -c`` puts the working directory first on sys.path.
    done = subprocess.run([sys.executable, "-c", CHILD], env=env, cwd=pythonpath, check=True, capture_output=True,
                          text=True)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["load_average_1m"] = os.getloadavg()[0]
    return result


def summary(runs):
    return {key: {"median": statistics.median(r[key] for r in runs), "min": min(r[key] for r in runs),
                  "max": max(r[key] for r in runs)} for key in ("import_s", "first_batch_s", "resume_s")}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--baseline-rev", help="git revision whose data modules to time as well (interleaved)")
    parser.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results"))
    args = parser.parse_args(argv)

    variants = {"current": ROOT}
    with tempfile.TemporaryDirectory(prefix="alexatm-baseline-") as workdir:
        if args.baseline_rev:
            variants = {f"baseline {args.baseline_rev}": baseline_tree(args.baseline_rev, workdir), **variants}
        runs = {name: [] for name in variants}
        for _ in range(args.runs):
            for name, path in variants.items():
                runs[name].append(one_run(path))
                print(name, runs[name][-1], flush=True)
    result = {
        "benchmark": "data_pipeline_startup",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(["python", "benchmarks/data_pipeline_startup.py"]
                            + (argv if argv is not None else sys.argv[1:])),
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "cpu_count": os.cpu_count(),
                    "python": platform.python_version()},
        "settings": {"mixture": "alexatm_demo", "inputs_length": 256, "targets_length": 256, "batch_size": 8,
                     "resume_after_batches": 21},
        "runs": runs, "summary": {name: summary(r) for name, r in runs.items()},
    }
    os.makedirs(args.out, exist_ok=True)
    lines = ["# Input pipeline start-up", "", f"- date: {result['date']}", f"- command: `{result['command']}`",
             f"- machine: {result['machine']['platform']}, {result['machine']['cpu_count']} CPUs (shared: see the "
             "1-min load average of each run)",
             "- what: `make_batch_iterator(\"alexatm_demo\", {\"inputs\": 256, \"targets\": 256}, batch_size=8)` "
             "to its first batch, in a fresh process after importing the data modules; resume: a new iterator's "
             "`restore(state)` (state after 21 batches) to its first batch", "",
             "| code | run | import s | first batch s | resume s | state bytes | load 1m |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for name, rs in runs.items():
        for i, r in enumerate(rs):
            lines.append(f"| {name} | {i + 1} | {r['import_s']:.1f} | {r['first_batch_s']:.1f} | {r['resume_s']:.1f} | "
                         f"{r['state_bytes']:,} | {r['load_average_1m']:.1f} |")
    for name, rs in result["summary"].items():
        lines.append(f"| {name} | median | {rs['import_s']['median']:.1f} | {rs['first_batch_s']['median']:.1f} | "
                     f"{rs['resume_s']['median']:.1f} | | |")
    for name, text in (("data_pipeline_startup.json", json.dumps(result, indent=1) + "\n"),
                       ("data_pipeline_startup.md", "\n".join(lines) + "\n")):
        fd, tmp = tempfile.mkstemp(dir=args.out, prefix=".tmp-")
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, os.path.join(args.out, name))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
