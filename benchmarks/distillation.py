"""Distillation at equal student size and equal steps: from scratch vs word-level vs sequence-level.

    python benchmarks/distillation.py --teacher demo_output/models/teacher_stage2 --workdir /tmp/kd_bench

The teacher is a finished run (by default the demo's stage-2 teacher, whose tokenizer the students share). Three
2+2-layer tiny students start from the same random initialisation and train ``--steps`` steps on the same
in-domain text (the demo's Debian descriptions, ``OUTPUT/in_domain/*.jsonl`` next to the teacher's models
folder, or ``--text``):

1. **scratch**: the 80/20 denoising + CLM mixture on the text, labels only (``runs/stage2_pretrain.gin`` with no
   init);
2. **word-level**: the same mixture and steps with the teacher in the step (``runs/distill.gin``, alpha 0.5,
   T 2);
3. **sequence-level**: the teacher's greedy targets for the mixture's first ``--kd-examples`` inputs
   (``alexatm-jax distill-targets``), trained as a task (``runs/train_on_teacher_targets.gin``).

Each is then measured on the same held-out in-domain text (validation loss of the mixture, ``train
--gin.train.eval_only=True``), fine-tuned on the English section labels (``runs/finetune_debian_section.gin``
with ``runs/demo_finetune.gin``) and evaluated zero-shot in the 8 languages. The cost of the teacher's forward
pass in the step is the ratio of the word-level run's training tokens/s to the scratch run's (same machine, same
steps, run one after the other; the median over logged steps). Results go to ``benchmarks/results/
distillation.{json,md}`` with the machine, command and date.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from nlu_transfer import REPO, _cli, _final_metrics, _machine, _stage  # noqa: E402

METHODS = ("scratch", "word_level", "sequence_level")


def _tokens_per_second(model_dir: str) -> float:
    with open(os.path.join(model_dir, "metrics.jsonl"), encoding="utf-8") as f:
        rows = [json.loads(line) for line in f]
    values = [r["tokens_per_second"] for r in rows if "tokens_per_second" in r and r["step"] > 20]
    return statistics.median(values) if values else float("nan")


def _eval_loss(model_dir: str) -> float:
    value = None
    with open(os.path.join(model_dir, "metrics.jsonl"), encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            if "eval_loss" in row:
                value = row["eval_loss"]
    return value


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--teacher", required=True, help="the teacher's run directory")
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--text", default=None, help="JSON of {lang: glob} (default: the demo's in_domain files)")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--kd-examples", type=int, default=1600, help="inputs the teacher decodes (sequence-level)")
    parser.add_argument("--finetune-steps", type=int, default=300, help="runs/demo_finetune.gin's 300")
    parser.add_argument("--finetune-learning-rate", type=float, default=None,
                        help="peak learning rate of the fine-tuning (default: runs/demo_finetune.gin's 2e-3)")
    parser.add_argument("--out", default=os.path.join(REPO, "benchmarks", "results"))
    parser.add_argument("--note", action="append", default=[], help="a line for the report's notes")
    args = parser.parse_args(argv)
    os.makedirs(args.workdir, exist_ok=True)
    teacher = os.path.abspath(args.teacher)
    tokenizer = os.path.join(teacher, "tokenizer.model")
    if args.text:
        text = json.loads(args.text)
    else:
        folder = os.path.join(os.path.dirname(os.path.dirname(teacher)), "in_domain")
        text = {name[:-len(".jsonl")]: os.path.join(folder, name) for name in sorted(os.listdir(folder))}
    cli, stages = _cli(), {}
    student = ["--gin_file=gin_configs/models/tiny.gin"]
    common = [f"--gin.TRAIN_STEPS={args.steps}", "--gin.BATCH_SIZE=8",
              "--gin.TASK_FEATURE_LENGTHS={'inputs': 128, 'targets': 128}", "--gin.LOG_EVERY_STEPS=10",
              "--gin.OptimizerConfig.learning_rate=2e-3", "--gin.OptimizerConfig.min_learning_rate=2e-4",
              f"--gin.OptimizerConfig.warmup_steps={max(1, args.steps // 10)}", "--gin.ModelConfig.dropout_rate=0.0",
              f"--gin.CheckpointConfig.every_steps={args.steps}", "--gin.EvalConfig.every_steps=0",
              "--gin.LoggingConfig.tensorboard=False", "--gin.train.seed=0"]
    text_mixture = [f"--gin.text_files_mixture.files={text!r}", f"--gin.text_files_mixture.tokenizer_path={tokenizer!r}",
                    "--gin.text_files_mixture.name='kd_bench_text'"]
    runs = {m: os.path.join(args.workdir, m) for m in METHODS}
    _stage(args.workdir, "scratch", cli + ["train", *student, "--gin_file=gin_configs/runs/pretrain.gin",
                                           f"--gin.MODEL_DIR={runs['scratch']!r}", *common,
                                           "--gin.MIXTURE_OR_TASK_NAME=@text_files_mixture()", *text_mixture,
                                           f"--gin.DataConfig.tokenizer_path={tokenizer!r}"], stages)
    _stage(args.workdir, "word_level", cli + ["train", *student, "--gin_file=gin_configs/runs/distill.gin",
                                              f"--gin.MODEL_DIR={runs['word_level']!r}", f"--gin.TEACHER={teacher!r}",
                                              *common, "--gin.MIXTURE_OR_TASK_NAME=@text_files_mixture()",
                                              *text_mixture, f"--gin.DataConfig.tokenizer_path={tokenizer!r}"], stages)
    # The sequence-level inputs: the mixture's own (denoising and CLM) inputs, decoded by the teacher.
    register = (f"import sys; from alexatm_jax.data import tasks; tasks.text_files_mixture({text!r}, "
                f"name='kd_bench_text', tokenizer_path={tokenizer!r}); from alexatm_jax.cli import main; "
                "sys.exit(main())")
    targets = os.path.join(args.workdir, "teacher_targets")
    _stage(args.workdir, "teacher_targets", [sys.executable, "-c", register, "distill-targets", "--teacher", teacher,
                                             "--output", targets, "--task", "kd_bench_text",
                                             "--num-examples", str(args.kd_examples),
                                             "--lengths", "inputs=128,targets=64",
                                             "--max-new-tokens", "64", "--batch-size", "64"], stages)
    _stage(args.workdir, "sequence_level", cli + ["train", *student,
                                                  "--gin_file=gin_configs/runs/train_on_teacher_targets.gin",
                                                  f"--gin.MODEL_DIR={runs['sequence_level']!r}",
                                                  f"--gin.TEACHER_TARGETS={targets!r}",
                                                  f"--gin.DataConfig.tokenizer_path={tokenizer!r}",
                                                  *common, "--gin.TASK_FEATURE_LENGTHS={'inputs': 128, 'targets': 64}"],
           stages)
    results = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
               "command": shlex.join([os.path.basename(sys.executable), *sys.argv]),
               "teacher": teacher, "text": text, "settings": vars(args), "stages": stages, "methods": {},
               "notes": args.note}
    for method in METHODS:
        # The same held-out in-domain text for every student: the mixture's validation split.
        _stage(args.workdir, f"{method}_validation", cli + [
            "train", *student, "--gin_file=gin_configs/runs/pretrain.gin", f"--gin.MODEL_DIR={runs[method]!r}",
            *common, "--gin.MIXTURE_OR_TASK_NAME=@text_files_mixture()", *text_mixture,
            f"--gin.DataConfig.tokenizer_path={tokenizer!r}", "--gin.train.eval_only=True",
            "--gin.EvalConfig.steps=10", "--gin.train.distillation=None"], stages)
        finetuned = os.path.join(args.workdir, f"{method}_nlu")
        _stage(args.workdir, f"{method}_nlu", cli + [
            "train", *student, "--gin_file=gin_configs/runs/finetune_debian_section.gin",
            "--gin_file=gin_configs/runs/demo_finetune.gin", f"--gin.MODEL_DIR={finetuned!r}",
            f"--gin.INIT_FROM={runs[method]!r}", f"--gin.TRAIN_STEPS={args.finetune_steps}",
            *([f"--gin.OptimizerConfig.learning_rate={args.finetune_learning_rate}"]
              if args.finetune_learning_rate else []),
            f"--gin.DataConfig.tokenizer_path={tokenizer!r}", "--gin.LoggingConfig.tensorboard=False"], stages)
        evaluation = os.path.join(args.workdir, f"{method}_eval")
        _stage(args.workdir, f"{method}_eval", cli + [
            "eval", "--checkpoint", finetuned, "--task", "debian_section", "--langs", "all", "--shots", "0",
            "--batch-size", "96", "--output", evaluation, "--no-progress"], stages)
        with open(os.path.join(evaluation, "results.json"), encoding="utf-8") as f:
            rows = json.load(f)["rows"]
        results["methods"][method] = {
            "pretraining": _final_metrics(runs[method]), "validation_loss": _eval_loss(runs[method]),
            "tokens_per_second": _tokens_per_second(runs[method]),
            "accuracy": {r["lang"]: r["metrics"]["accuracy"] for r in rows},
            "majority": {r["lang"]: r["baseline"] for r in rows}}
    methods = results["methods"]
    results["teacher_forward_cost"] = {
        "tokens_per_second_without_teacher": methods["scratch"]["tokens_per_second"],
        "tokens_per_second_with_teacher": methods["word_level"]["tokens_per_second"],
        "ratio": methods["word_level"]["tokens_per_second"] / methods["scratch"]["tokens_per_second"]}
    results["machine"] = _machine()
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "distillation.json"), "w", encoding="utf-8") as f:
        json.dump(results, f, indent=1)
    with open(os.path.join(args.out, "distillation.md"), "w", encoding="utf-8") as f:
        f.write(markdown(results))
    print(markdown(results))
    return 0


def _cell(estimate: dict) -> str:
    return f"{100 * estimate['value']:.1f} ± {100 * estimate['stderr']:.1f}"


def markdown(results: dict) -> str:
    methods, langs = results["methods"], list(results["methods"]["scratch"]["accuracy"])
    cost = results["teacher_forward_cost"]
    lines = ["# Distillation at equal student size and steps", "",
             f"- date: {results['date']}", f"- command: `{results['command']}`",
             f"- machine: {results['machine']['cpu']}, {results['machine']['cpus']} CPUs, "
             f"{results['machine']['platform']}, jax {results['machine']['jax']} on {results['machine']['device']}; "
             f"load average at the end {results['machine']['load_average_at_end']}",
             f"- teacher: `{results['teacher']}`; students: the `tiny` preset (2+2 layers), the same random "
             f"initialisation, {results['settings']['steps']} steps x 8 rows of 128+128 tokens on the in-domain "
             f"text; sequence-level: the teacher's greedy targets (at most 64 tokens) for the first "
             f"{results['settings']['kd_examples']} inputs of the same mixture",
             f"- then each fine-tuned {results['settings']['finetune_steps']} steps (peak learning rate "
             f"{results['settings']['finetune_learning_rate'] or 'of runs/demo_finetune.gin, 2e-3'}) on the English "
             "section labels "
             "(runs/finetune_debian_section.gin + runs/demo_finetune.gin) and evaluated zero-shot by rank "
             "classification; ± is the standard error", "",
             "| student | held-out in-domain loss | training tokens/s | " + " | ".join(langs) + " | mean of 7 zero-shot |",
             "|---|---:|---:|" + "---:|" * (len(langs) + 1)]
    for name, label in (("scratch", "from scratch"), ("word_level", "word-level KD (alpha 0.5, T 2)"),
                        ("sequence_level", "sequence-level KD")):
        m = methods[name]
        zero = [m["accuracy"][lang]["value"] for lang in langs if lang != "en"]
        lines.append(f"| {label} | {m['validation_loss']:.3f} | {m['tokens_per_second']:.0f} | "
                     + " | ".join(_cell(m["accuracy"][lang]) for lang in langs)
                     + f" | {100 * sum(zero) / len(zero):.1f} |")
    majority = methods["scratch"]["majority"]
    lines.append("| majority class | | | " + " | ".join(_cell(majority[lang]) for lang in langs) + " | "
                 f"{100 * sum(majority[lang]['value'] for lang in langs if lang != 'en') / (len(langs) - 1):.1f} |")
    lines += ["", f"Cost of the teacher's forward pass in the step: {cost['tokens_per_second_with_teacher']:.0f} "
                  f"training tokens/s with the teacher against {cost['tokens_per_second_without_teacher']:.0f} "
                  f"without (ratio {cost['ratio']:.2f}; medians over the logged steps after step 20, the two runs "
                  "one after the other on the same machine).", "",
              "Stages (seconds on the shared machine):", ""]
    lines += [f"- {name}: {stage.get('seconds')}s" for name, stage in results["stages"].items()]
    if results.get("notes"):
        lines += ["", "Notes:", ""] + [f"- {note}" for note in results["notes"]]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
