#!/usr/bin/env python
"""Zero-shot cross-lingual transfer of a classifier fine-tuned on English: does pretraining on the multilingual
mixture help, and by how much over the majority class?

    PYTHONPATH=. python benchmarks/nlu_transfer.py --workdir /tmp/nlu_transfer [--model tiny]
        [--pretrain-steps 300] [--finetune-steps 150] [--out benchmarks/results]

Runs, each stage with the repository's own CLI (the commands are recorded in the results):

1. ``alexatm-jax train`` with ``runs/pretrain.gin`` on the bundled ``alexatm_demo`` mixture (12 languages,
   denoising + CLM), ``--pretrain-steps`` steps;
2. ``alexatm-jax train`` with ``runs/finetune_debian_section.gin`` on the English Debian section task (16
   classes, 4000 descriptions), twice with the same steps and data: from the pretrained run (``INIT_FROM``)
   and from a random initialisation (``INIT_FROM=None``);
3. ``alexatm-jax eval --task debian_section --langs all --shots 0`` on both: rank classification over the 16
   section names on the 200 test descriptions of each of the 8 languages (the same descriptions, translated;
   7 of the languages were never seen in fine-tuning).

Writes ``nlu_transfer.json`` and ``nlu_transfer.md`` under ``--out``: machine, commands, date, and one table
with each language's accuracy +- standard error for both fine-tunings next to the majority-class baseline
(the most frequent training label, ``libs``, predicted for every test description). A stage whose output is
already in ``--workdir`` is not run again (delete the folder to start over).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _label_count() -> int:
    with open(os.path.join(REPO, "alexatm_jax", "data", "bundled", "manifest.json"), encoding="utf-8") as f:
        return len(json.load(f)["nlu"]["debian_section"]["labels"])


def _cli() -> list[str]:
    return [sys.executable, "-m", "alexatm_jax.cli"]


def _run(command: list[str], log_path: str) -> float:
    """Runs ``command`` in the repository root with its output in ``log_path``; -> seconds. Fails loudly."""
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.setdefault("JAX_PLATFORMS", "cpu")
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    print("$ " + shlex.join(command), flush=True)
    start = time.perf_counter()
    with open(log_path, "w", encoding="utf-8") as log:
        done = subprocess.run(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        with open(log_path, encoding="utf-8") as log:
            tail = log.read()[-4000:]
        raise SystemExit(f"command failed ({done.returncode}) after {seconds:.0f}s, log {log_path}:\n{tail}")
    print(f"  done in {seconds:.0f}s", flush=True)
    return seconds


def _stage(workdir: str, name: str, command: list[str], record: dict) -> None:
    """Runs a stage once: its marker file holds the command and time; a later call reuses it."""
    marker = os.path.join(workdir, f"{name}.done.json")
    if os.path.exists(marker):
        with open(marker, encoding="utf-8") as f:
            record[name] = dict(json.load(f), reused=True)
        print(f"{name}: reusing {marker}", flush=True)
        return
    seconds = _run(command, os.path.join(workdir, f"{name}.log"))
    record[name] = {"command": shlex.join(command), "seconds": round(seconds, 1),
                    "finished": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    with open(marker, "w", encoding="utf-8") as f:
        json.dump(record[name], f, indent=1)


def _final_metrics(model_dir: str) -> dict:
    """The last logged train metrics (and eval loss) of a run's metrics.jsonl."""
    last, eval_loss = {}, None
    path = os.path.join(model_dir, "metrics.jsonl")
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            for line in f:
                row = json.loads(line)
                if "loss" in row:
                    last = row
                if "eval_loss" in row:
                    eval_loss = row["eval_loss"]
    return {"step": last.get("step"), "loss": last.get("loss"), "accuracy": last.get("accuracy"),
            "eval_loss": eval_loss}


def _machine() -> dict:
    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    try:
        load = os.getloadavg()
    except OSError:
        load = None
    import jax

    return {"platform": platform.platform(), "cpu": cpu, "cpus": os.cpu_count(), "python": platform.python_version(),
            "jax": jax.__version__, "device": str(jax.devices()[0].platform),
            "load_average_at_end": [round(x, 1) for x in load] if load else None}


def _cell(estimate: dict) -> str:
    return f"{100 * estimate['value']:.1f} ± {100 * estimate['stderr']:.1f}"


def table(results: dict) -> str:
    """| language | examples | majority | fine-tuned from random init | fine-tuned from pretrained | rows."""
    random_rows = {r["lang"]: r for r in results["evaluations"]["random_init"]["rows"]}
    pretrained_rows = {r["lang"]: r for r in results["evaluations"]["pretrained"]["rows"]}
    lines = ["| language | test examples | majority class (`{}`) | fine-tuned from random init | fine-tuned from "
             "pretrained |".format(results["majority_label"]),
             "|---|---:|---:|---:|---:|"]
    for lang in results["languages"]:
        r, p = random_rows[lang], pretrained_rows[lang]
        lines.append(f"| {lang}{' (fine-tuning language)' if lang == 'en' else ''} | {p['n']} | "
                     f"{_cell(p['baseline'])} | {_cell(r['metrics']['accuracy'])} | {_cell(p['metrics']['accuracy'])} |")
    mean = {key: sum(rows[lang]["metrics"]["accuracy"]["value"] for lang in results["languages"] if lang != "en")
            / max(1, len(results["languages"]) - 1) for key, rows in (("r", random_rows), ("p", pretrained_rows))}
    base = sum(pretrained_rows[lang]["baseline"]["value"] for lang in results["languages"] if lang != "en") \
        / max(1, len(results["languages"]) - 1)
    lines.append(f"| mean of the 7 zero-shot languages | | {100 * base:.1f} | {100 * mean['r']:.1f} | "
                 f"{100 * mean['p']:.1f} |")
    return "\n".join(lines)


def retrieval_table(retrieval: dict) -> list[str]:
    """Mean nearest-neighbour translation-retrieval accuracy over all ordered language pairs, per encoder."""
    names = {"pretrain": "pretrained only", "finetune_pretrained": "pretrained, then fine-tuned on English",
             "finetune_random_init": "random init, fine-tuned on English"}
    lines = ["Cross-lingual representation check (`alexatm-jax eval --task udhr_retrieval` / `debian_retrieval`): "
             "mean over ordered language pairs of the share of texts whose cosine nearest neighbour (mean-pooled "
             "encoder states) in the other language is their translation; per-pair matrices in nlu_transfer.json.",
             "", "| encoder | " + " | ".join(f"{task} (%)" for task in retrieval) + " |",
             "|---|" + "---:|" * len(retrieval)]
    runs = list(next(iter(retrieval.values())))
    for name in runs:
        cells = [f"{100 * retrieval[task][name]['mean_accuracy']:.1f}" for task in retrieval]
        lines.append(f"| {names.get(name, name)} | " + " | ".join(cells) + " |")
    chance = []
    for task, by_run in retrieval.items():
        first = next(iter(by_run.values()))
        sizes = sorted({cell["n"] for row in first["matrix"].values() for cell in row.values()})
        chance.append(f"{task}: {len(first['languages'])} languages, {first['pairs']} pairs, {sizes[0]}-{sizes[-1]} "
                      f"candidates per pair (chance {100 / sizes[-1]:.1f}-{100 / sizes[0]:.1f}%)")
    lines += ["", "; ".join(chance) + "."]
    return lines


def _without_notes(command: str) -> str:
    """The command with each ``--note TEXT`` shown as ``--note NOTE`` (the notes are listed in the report)."""
    words = shlex.split(command)
    return shlex.join([("NOTE" if i and words[i - 1] == "--note" else w) for i, w in enumerate(words)])


def write_report(results: dict, out: str) -> None:
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "nlu_transfer.json"), "w", encoding="utf-8") as f:
        json.dump(results, f, indent=1, ensure_ascii=False)
        f.write("\n")
    machine, settings = results["machine"], results["settings"]
    stages = results["stages"]
    lines = [
        "# Zero-shot cross-lingual transfer: Debian section classification",
        "",
        f"- date: {results['date']}",
        f"- command: `{_without_notes(results['command'])}`",
        f"- machine: {machine['cpu']}, {machine['cpus']} CPUs, {machine['platform']}, jax {machine['jax']} on "
        f"{machine['device']}; load average at the end {machine['load_average_at_end']} (a shared machine: other "
        f"jobs ran at the same time, so the seconds below are not throughput figures)",
        f"- model: `{settings['model']}` preset; pretraining {settings['pretrain_steps']} steps x "
        f"{settings['pretrain_batch_size']} packed rows of {settings['pretrain_length']}+{settings['pretrain_length']} "
        f"tokens on the bundled `alexatm_demo` mixture; each fine-tuning {settings['finetune_steps']} steps x "
        f"{settings['finetune_batch_size']} packed rows of {settings['finetune_length']}+8 tokens, dropout 0, on the "
        f"English train split (4000 descriptions), same data order for both",
        "- evaluation: `alexatm-jax eval --task debian_section --langs all --shots 0`: **rank classification** "
        f"over the {_label_count()} section names (each scored by its log-likelihood as the target; the best one is the "
        "prediction, so every prediction is a valid label), 200 test descriptions per language, the same ones "
        "in all 8 languages; ± is the standard error sqrt(p(1-p)/n)",
        "- majority class: the most frequent label of the English train split, predicted for every test example",
        "",
        table(results),
        "",
    ]
    if results.get("retrieval"):
        lines += retrieval_table(results["retrieval"]) + [""]
    lines += [
        "Stages (seconds on the shared machine):",
        "",
    ]
    for name, stage in stages.items():
        lines.append(f"- {name}: {stage.get('seconds')}s{' (reused from an earlier run)' if stage.get('reused') else ''}: "
                     f"`{stage['command']}`")
    lines += ["", "Final training metrics:", ""]
    for name, metrics in results["training"].items():
        lines.append(f"- {name}: step {metrics['step']}, train loss {metrics['loss']}, token accuracy "
                     f"{metrics['accuracy']}, eval loss {metrics['eval_loss']}")
    if results.get("notes"):
        lines += ["", "Notes:", ""] + [f"- {note}" for note in results["notes"]]
    with open(os.path.join(out, "nlu_transfer.md"), "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", required=True, help="runs, evaluation outputs and logs go here")
    parser.add_argument("--model", default="tiny", help="model preset file in gin_configs/models (default tiny)")
    parser.add_argument("--pretrain-steps", type=int, default=300)
    parser.add_argument("--pretrain-batch-size", type=int, default=8)
    parser.add_argument("--pretrain-length", type=int, default=128, help="inputs and targets length")
    parser.add_argument("--pretrain-learning-rate", type=float, default=1e-3)
    parser.add_argument("--finetune-steps", type=int, default=400)
    parser.add_argument("--finetune-batch-size", type=int, default=32)
    parser.add_argument("--finetune-length", type=int, default=128,
                        help="fine-tuning inputs length (the run file's 256 costs twice the CPU time per row)")
    parser.add_argument("--eval-batch-size", type=int, default=96,
                        help="alexatm-jax eval --batch-size: label scores per call (96 = 6 prompts x 16 labels)")
    parser.add_argument("--limit", type=int, help="evaluate only the first N test examples per language")
    parser.add_argument("--stop-after", choices=("pretrain", "finetune"),
                        help="run the stages up to this one and stop (the rest reuse them later)")
    parser.add_argument("--no-retrieval", action="store_true",
                        help="skip the translation-retrieval check (udhr_retrieval, debian_retrieval)")
    parser.add_argument("--note", action="append", default=[], help="a line for the report's notes")
    parser.add_argument("--out", default=os.path.join(REPO, "benchmarks", "results"))
    args = parser.parse_args(argv)

    workdir = os.path.abspath(args.workdir)
    os.makedirs(workdir, exist_ok=True)
    model_gin = f"--gin_file=gin_configs/models/{args.model}.gin"
    pretrain_dir = os.path.join(workdir, "pretrain")
    stages: dict = {}
    started = time.perf_counter()

    _stage(workdir, "pretrain", _cli() + [
        "train", model_gin, "--gin_file=gin_configs/runs/pretrain.gin", f"--gin.MODEL_DIR='{pretrain_dir}'",
        f"--gin.TRAIN_STEPS={args.pretrain_steps}", f"--gin.BATCH_SIZE={args.pretrain_batch_size}",
        f"--gin.TASK_FEATURE_LENGTHS={{'inputs': {args.pretrain_length}, 'targets': {args.pretrain_length}}}",
        f"--gin.OptimizerConfig.learning_rate={args.pretrain_learning_rate}",
        f"--gin.OptimizerConfig.warmup_steps={max(1, args.pretrain_steps // 10)}",
        "--gin.EvalConfig.every_steps=0", f"--gin.CheckpointConfig.every_steps={args.pretrain_steps}",
        "--gin.LOG_EVERY_STEPS=25"], stages)
    if args.stop_after == "pretrain":
        return 0

    runs = {"pretrained": pretrain_dir, "random_init": None}
    for name, init_from in runs.items():
        model_dir = os.path.join(workdir, f"finetune_{name}")
        _stage(workdir, f"finetune_{name}", _cli() + [
            "train", model_gin, "--gin_file=gin_configs/runs/finetune_debian_section.gin",
            f"--gin.MODEL_DIR='{model_dir}'", f"--gin.INIT_FROM={repr(init_from)}",
            f"--gin.TRAIN_STEPS={args.finetune_steps}", f"--gin.BATCH_SIZE={args.finetune_batch_size}",
            f"--gin.TASK_FEATURE_LENGTHS={{'inputs': {args.finetune_length}, 'targets': 8}}",
            "--gin.ModelConfig.dropout_rate=0.0",
            f"--gin.OptimizerConfig.warmup_steps={max(1, args.finetune_steps // 10)}",
            f"--gin.CheckpointConfig.every_steps={args.finetune_steps}",
            f"--gin.EvalConfig.every_steps={args.finetune_steps}", "--gin.LOG_EVERY_STEPS=25"], stages)
    if args.stop_after == "finetune":
        return 0

    evaluations = {}
    for name in runs:
        output = os.path.join(workdir, f"eval_{name}")
        command = _cli() + ["eval", "--checkpoint", os.path.join(workdir, f"finetune_{name}"),
                            "--task", "debian_section", "--langs", "all", "--shots", "0",
                            "--batch-size", str(args.eval_batch_size), "--output", output, "--no-progress"]
        if args.limit:
            command += ["--limit", str(args.limit)]
        _stage(workdir, f"eval_{name}", command, stages)
        with open(os.path.join(output, "results.json"), encoding="utf-8") as f:
            evaluations[name] = json.load(f)

    # The cross-lingual representation check (retrieval of translations by mean-pooled encoder states) on the
    # pretrained encoder and on both fine-tuned ones.
    retrieval_runs = {"pretrain": pretrain_dir, "finetune_pretrained": os.path.join(workdir, "finetune_pretrained"),
                      "finetune_random_init": os.path.join(workdir, "finetune_random_init")}
    retrieval_results: dict = {}
    if not args.no_retrieval:
        for task in ("udhr_retrieval", "debian_retrieval"):
            for name, model_dir in retrieval_runs.items():
                output = os.path.join(workdir, f"{task}_{name}")
                _stage(workdir, f"{task}_{name}", _cli() + [
                    "eval", "--checkpoint", model_dir, "--task", task, "--batch-size", "32", "--output", output,
                    "--no-progress"], stages)
                with open(os.path.join(output, "results.json"), encoding="utf-8") as f:
                    run = json.load(f)["runs"][0]
                retrieval_results.setdefault(task, {})[name] = {
                    "mean_accuracy": run["scores"]["retrieval_accuracy"] / 100.0, "languages": run["languages"],
                    "pairs": run["metrics"]["retrieval_accuracy"]["pairs"], "matrix": run["matrix"],
                    "mean_as_query": run["mean_as_query"]}

    pretrained = evaluations["pretrained"]
    results = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": shlex.join(["python", "benchmarks/nlu_transfer.py"] + (argv if argv is not None else sys.argv[1:])),
        "machine": _machine(),
        "settings": {"model": args.model, "pretrain_steps": args.pretrain_steps,
                     "pretrain_batch_size": args.pretrain_batch_size, "pretrain_length": args.pretrain_length,
                     "pretrain_learning_rate": args.pretrain_learning_rate, "finetune_steps": args.finetune_steps,
                     "finetune_batch_size": args.finetune_batch_size, "finetune_length": args.finetune_length,
                     "limit": args.limit},
        "languages": pretrained["languages"],
        "majority_label": pretrained["baseline"]["label"],
        "stages": stages,
        "training": {name: _final_metrics(os.path.join(workdir, name)) for name in
                     ("pretrain", "finetune_pretrained", "finetune_random_init")},
        "evaluations": {name: {"rows": ev["rows"], "classifier": ev["classifier"]} for name, ev in evaluations.items()},
        "retrieval": retrieval_results,
        "total_seconds_this_call": round(time.perf_counter() - started, 1),
        "notes": args.note,
    }
    write_report(results, args.out)
    print(table(results))
    print(f"\nwrote {os.path.join(args.out, 'nlu_transfer.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
