"""The main job end to end on the bundled data (``make demo`` / ``alexatm-jax demo``): the Alexa Teacher Model
pipeline at a size that runs on a laptop CPU.

text -> SentencePiece vocabulary -> a 4+4-layer teacher pretrained on the 12-language denoising + CLM mixture
-> second-stage pretraining of the teacher on in-domain text (the Debian package descriptions) -> a 2+2-layer
student started from every other teacher layer and distilled from the stage-2 teacher on that text -> the
student fine-tuned on the English Debian section labels -> zero-shot evaluation in all 8 languages, next to the
same small model fine-tuned without a teacher and to the majority class -> few-shot (in-context) evaluation of
the teacher on held-out translation and summarization -> tables, PNGs and ``demo_results.json``.

Every stage is a gin-configured ``train`` run (``gin_configs/runs/demo*.gin``) in ``OUTPUT/models/<role>`` and
every evaluation a results file; each is skipped when its result is already there, so an interrupted demo
resumes (training from its last checkpoint) and a finished one only prints its report. ``fresh=True`` starts
over.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Callable, Optional, Sequence

from alexatm_jax import storage

TOKENIZER_VOCAB_SIZE = 8092  # + 100 seqio sentinel ids = 8192, the tiny preset's vocabulary


@dataclasses.dataclass(frozen=True)
class Stage:
    """One training run of the pipeline: its role (the model directory's name), gin files and what it starts
    from (``init_from``/``teacher``: roles of earlier stages)."""

    role: str
    title: str
    gin_files: tuple[str, ...]
    init_from: Optional[str] = None
    teacher: Optional[str] = None
    task: Optional[str] = None          # None: the gin files' mixture; "in_domain": the in-domain text files


STAGES = (
    Stage("teacher", "Teacher: 4+4 layers pretrained on the 12-language mixture (80% denoising, 20% CLM)",
          ("models/tiny_deep.gin", "runs/pretrain.gin", "runs/demo.gin")),
    Stage("teacher_stage2", "Stage-2 pretraining of the teacher on in-domain text (Debian descriptions, 7 languages)",
          ("models/tiny_deep.gin", "runs/stage2_pretrain.gin", "runs/demo_stage2.gin"), init_from="teacher",
          task="in_domain"),
    Stage("student", "Student: 2+2 layers from every other teacher layer, distilled from the stage-2 teacher",
          ("models/tiny.gin", "runs/distill.gin", "runs/demo_distill.gin"), init_from="teacher_stage2",
          teacher="teacher_stage2", task="in_domain"),
    Stage("student_nlu", "Fine-tuning the distilled student on English Debian section labels",
          ("models/tiny.gin", "runs/finetune_debian_section.gin", "runs/demo_finetune.gin"), init_from="student"),
    Stage("baseline_nlu", "Baseline: the same 2+2-layer model fine-tuned on the labels without a teacher",
          ("models/tiny.gin", "runs/finetune_debian_section.gin", "runs/demo_finetune.gin")),
)
NLU_TASK = "debian_section"
NLU_MODELS = ("student_nlu", "baseline_nlu")
# Few-shot (in-context) evaluation of the pretrained teacher: (card name, card params, test examples). The
# tiny models have 512 positions, so summarization documents are cut at a sentence boundary to 150 tokens.
FEW_SHOT_MODEL = "teacher"
EVALUATIONS = (
    ("udhr_translation", {"src": "en", "tgt": "fr"}, 24),
    ("debian_summarization", {"lang": "en"}, 40),
)
SHOTS = (0, 1)
SUMMARY_DOCUMENT_TOKENS = 150


def _header(number: int, total: int, text: str, log: Callable[[str], None]) -> None:
    log(f"\n[{number}/{total}] {text}")


# ---------------------------------------------------------------------------------------------- stages
def train_tokenizer(output: Path, log: Callable[[str], None]) -> Path:
    """SentencePiece unigram model with AlexaTM's special tokens on the bundled pretraining text."""
    from alexatm_jax.data import bundled, tasks
    from alexatm_jax.data.tokenizer_training import train_sentencepiece

    path = output / "tokenizer" / "alexatm_demo.model"
    if path.exists():
        log(f"  reusing {path}")
        return path
    texts = {lang: [doc["text"] for doc in bundled.pretrain_documents(lang)] for lang in tasks.LANGS}
    log(f"  {sum(map(len, texts.values())):,} documents in {len(texts)} languages")
    return Path(train_sentencepiece(texts, str(path.with_suffix("")), vocab_size=TOKENIZER_VOCAB_SIZE,
                                    num_threads=os.cpu_count() or 1))


def write_in_domain_text(output: Path, log: Callable[[str], None]) -> dict:
    """The in-domain unlabelled text of stage 2 and distillation, as a user would bring it: one JSON-lines file
    per language (``{"text"}`` records) of the bundled Debian package descriptions (summary + description; no
    description of the section task's dev/test split, which the bundle already keeps out of pretraining)."""
    from alexatm_jax.data import bundled

    folder = output / "in_domain"
    files, counts = {}, {}
    for lang in bundled.LANGS:
        texts = [doc["text"] for split in ("train", "validation") for doc in bundled.pretrain_documents(lang, split)
                 if doc["source"] == "debian"]
        if not texts:
            continue
        path = folder / f"{lang}.jsonl"
        if not path.exists():
            storage.write_text(path, "".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in texts))
        files[lang], counts[lang] = str(path), len(texts)
    log(f"  in-domain text: {', '.join(f'{lang} {n}' for lang, n in counts.items())} documents in {folder}")
    return files


def train_stage(stage: Stage, output: Path, tokenizer: Path, in_domain: dict, train_steps: Optional[int],
                log: Callable[[str], None]) -> Path:
    """Runs (or resumes, or reuses) one stage's gin-configured training run in ``output/models/<role>``."""
    import gin

    from alexatm_jax.checkpoints.model_dir import latest_run_step
    from alexatm_jax.commands.train import parse_gin
    from alexatm_jax.training import trainer

    model_dir = output / "models" / stage.role
    bindings = [("MODEL_DIR", repr(str(model_dir))), ("DataConfig.tokenizer_path", repr(str(tokenizer)))]
    if stage.init_from or any(f.startswith("runs/finetune") for f in stage.gin_files):
        init = output / "models" / stage.init_from if stage.init_from else None
        bindings.append(("INIT_FROM", repr(str(init)) if init else "None"))
    if stage.teacher:
        bindings.append(("TEACHER", repr(str(output / "models" / stage.teacher))))
    if stage.task == "in_domain":
        bindings.append(("text_files_mixture.files", repr(in_domain)))
        bindings.append(("text_files_mixture.tokenizer_path", repr(str(tokenizer))))
        if "runs/stage2_pretrain.gin" in stage.gin_files:
            bindings += [("TEXT_FILES", repr(in_domain)), ("TOKENIZER", repr(str(tokenizer)))]
    if train_steps is not None:
        bindings.append(("TRAIN_STEPS", str(train_steps)))
    # A stage built on earlier ones is only reused while they are unchanged (a longer run of the teacher makes
    # every later stage start over).
    upstream = {role: latest_run_step(output / "models" / role) for role in (stage.init_from, stage.teacher) if role}
    record = model_dir / "demo_upstream.json"
    if model_dir.exists() and upstream and (not record.exists() or json.loads(record.read_text()) != upstream):
        log(f"  {', '.join(upstream)} changed since {model_dir} was trained: starting it over")
        shutil.rmtree(model_dir)
    gin.clear_config()
    try:
        parse_gin(list(stage.gin_files), bindings, [])
        wanted = gin.query_parameter("%TRAIN_STEPS")
        done = latest_run_step(model_dir)
        if done is not None and done >= wanted:
            log(f"  reusing {model_dir} (trained to step {done})")
            return model_dir
        log(f"  gin files: {', '.join(stage.gin_files)}; {wanted} steps; "
            f"{'resuming from step ' + str(done) if done else 'new run'}")
        # The bundled tasks re-registered with the demo's own vocabulary (the gin files name them).
        if upstream:
            storage.write_text(record, json.dumps(upstream) + "\n")
        result = trainer.train()  # re-registers the bundled tasks with the demo's vocabulary (tokenizer_path)
    finally:
        gin.clear_config()
    log(f"  {result['status']} at step {result['step']}")
    return model_dir


# ------------------------------------------------------------------------------------------ evaluation
def _reusable(results_file: Path, step, limit) -> Optional[dict]:
    if not results_file.exists():
        return None
    results = json.loads(results_file.read_text(encoding="utf-8"))
    return results if results.get("checkpoint_step") == step and results.get("limit") == limit else None


def evaluate_nlu(output: Path, models: dict, log: Callable[[str], None], eval_limit: Optional[int]) -> dict:
    """Zero-shot section classification in every language (rank classification over the label set) for each
    fine-tuned model; ``{role: languages results}``, each also in ``eval/<task>_<role>/results.json``."""
    import alexatm_jax
    from alexatm_jax.checkpoints.model_dir import latest_run_step
    from alexatm_jax.evaluation import cards, languages

    card = cards.load_card(NLU_TASK, {})
    langs = languages.resolve_languages(card, "all")
    collected = {}
    for role in NLU_MODELS:
        model_dir = models[role]
        step = latest_run_step(model_dir)
        results_file = output / "eval" / f"{NLU_TASK}_{role}" / "results.json"
        results = _reusable(results_file, step, eval_limit)
        if results is not None:
            log(f"  reusing {results_file}")
        else:
            log(f"  {NLU_TASK} with {role} ({model_dir.name}): {len(langs)} languages, 0 shots")
            results = languages.evaluate_languages(alexatm_jax.load(model_dir), card, [0], langs=langs,
                                                   limit=eval_limit, progress=False, checkpoint=str(model_dir))
            results.update(checkpoint_step=step, limit=eval_limit)
            languages.write_results(results, str(results_file.parent))
        collected[role] = results
    return collected


def evaluate_few_shot(output: Path, model_dir: Path, log: Callable[[str], None],
                      eval_limit: Optional[int] = None) -> list[dict]:
    """0- and 1-shot runs of the held-out generation tasks; each task's results.json is reused if it is for
    this checkpoint."""
    import alexatm_jax
    from alexatm_jax.checkpoints.model_dir import latest_run_step
    from alexatm_jax.evaluation import cards, runner

    step = latest_run_step(model_dir)
    lm = None
    collected = []
    for name, params, limit in EVALUATIONS:
        limit = limit if eval_limit is None else min(limit, eval_limit)
        directory = output / "eval" / name
        results = _reusable(directory / "results.json", step, limit)
        if results is not None:
            log(f"  reusing {directory / 'results.json'}")
            collected.append(results)
            continue
        lm = lm or alexatm_jax.load(model_dir)
        card = cards.load_card(name, params)
        if card.truncate:
            card.truncate = dict(card.truncate, max_tokens=min(card.truncate["max_tokens"], SUMMARY_DOCUMENT_TOKENS))
        log(f"  {name} {params}: {limit} test examples, shots {list(SHOTS)}")
        results = runner.evaluate(lm, card, SHOTS, limit=limit, checkpoint=str(model_dir))
        results["checkpoint_step"] = step
        runner.write_results(results, str(directory))
        collected.append(results)
    return collected


# ---------------------------------------------------------------------------------------------- report
def loss_curve(model_dir: Path) -> dict:
    """First/last train loss (and its parts, when distilled), the last validation loss and the step count."""
    from alexatm_jax.training.metrics import read_metrics

    records = read_metrics(model_dir)  # one record per step, even for steps repeated after a resume
    train = [r for r in records if "loss" in r]
    evals = [r for r in records if "eval_loss" in r]
    curve = {"steps": [r["step"] for r in train], "loss": [r["loss"] for r in train],
             "eval_steps": [r["step"] for r in evals], "eval_loss": [r["eval_loss"] for r in evals],
             "first_step": train[0]["step"], "first_loss": train[0]["loss"], "last_step": train[-1]["step"],
             "last_loss": train[-1]["loss"], "last_eval_loss": evals[-1]["eval_loss"] if evals else None,
             "tokens_per_second": train[-1].get("tokens_per_second")}
    if "kl_loss" in train[-1]:
        # Distilled: "loss" is the objective (alpha * T^2 * KL + (1 - alpha) * CE). Its CE part is what the
        # validation loss (plain CE on the labels) compares with.
        curve.update(ce_loss=[r["ce_loss"] for r in train], kl_loss=[r["kl_loss"] for r in train],
                     first_ce_loss=train[0]["ce_loss"], last_ce_loss=train[-1]["ce_loss"])
    return curve


def plot_losses(curves: dict, destination: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(curves), figsize=(3.6 * len(curves), 3.4), squeeze=False)
    for axis, (role, curve) in zip(axes[0], curves.items()):
        axis.plot(curve["steps"], curve["loss"], label="train loss")
        if "kl_loss" in curve:
            axis.plot(curve["steps"], curve["ce_loss"], label="labels (CE)", alpha=0.7)
            axis.plot(curve["steps"], curve["kl_loss"], label="teacher (KL)", alpha=0.7)
        if curve["eval_steps"]:
            axis.plot(curve["eval_steps"], curve["eval_loss"], "o-", label="validation")
        axis.set_title(role, fontsize=10)
        axis.set_xlabel("step")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7)
    axes[0][0].set_ylabel("nats/token")
    figure.tight_layout()
    with storage.atomic_path(destination) as temporary:
        figure.savefig(temporary, dpi=110)
    plt.close(figure)


def accuracy_table(nlu: dict) -> list[dict]:
    """One row per language: n, majority baseline and each fine-tuned model's accuracy (fractions, stderr)."""
    rows = {}
    for role, results in nlu.items():
        for row in results["rows"]:
            entry = rows.setdefault(row["lang"], {"lang": row["lang"], "n": row["n"], "majority": row["baseline"]})
            entry[role] = row["metrics"]["accuracy"]
    return list(rows.values())


def plot_accuracies(table: Sequence[dict], destination: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    series = [("majority", "majority class")] + [(role, role) for role in NLU_MODELS]
    x = np.arange(len(table))
    width = 0.8 / len(series)
    figure, axis = plt.subplots(figsize=(8, 3.6))
    for i, (key, label) in enumerate(series):
        values = [100 * row[key]["value"] if row.get(key) else 0.0 for row in table]
        errors = [100 * (row[key].get("stderr") or 0.0) if row.get(key) else 0.0 for row in table]
        axis.bar(x + (i - (len(series) - 1) / 2) * width, values, width, yerr=errors, capsize=2, label=label)
    axis.set_xticks(x, [row["lang"] + (" (fine-tuned)" if row["lang"] == "en" else "") for row in table],
                    fontsize=8)
    axis.set_ylabel("accuracy %")
    axis.set_title("Debian section classification, zero-shot outside English", fontsize=10)
    axis.grid(axis="y", alpha=0.3)
    axis.legend(fontsize=8)
    figure.tight_layout()
    with storage.atomic_path(destination) as temporary:
        figure.savefig(temporary, dpi=110)
    plt.close(figure)


def _percent(estimate: Optional[dict]) -> str:
    if not estimate:
        return "—"
    return f"{100 * estimate['value']:.1f} ± {100 * (estimate.get('stderr') or 0):.1f}"


def markdown_accuracy_table(table: Sequence[dict]) -> str:
    lines = ["| language | examples | majority class | " + " | ".join(NLU_MODELS) + " |",
             "|---|---:|---:|" + "---:|" * len(NLU_MODELS)]
    for row in table:
        lines.append(f"| {row['lang']} | {row['n']} | {_percent(row['majority'])} | "
                     + " | ".join(_percent(row.get(role)) for role in NLU_MODELS) + " |")
    zero_shot = [row for row in table if row["lang"] != "en"]
    if zero_shot:
        def mean(key):
            values = [row[key]["value"] for row in zero_shot if row.get(key)]
            return f"{100 * sum(values) / len(values):.1f}" if values else "—"
        lines.append(f"| mean of the {len(zero_shot)} zero-shot languages | | {mean('majority')} | "
                     + " | ".join(mean(role) for role in NLU_MODELS) + " |")
    return "\n".join(lines)


def report(output: Path, tokenizer: Path, models: dict, nlu: dict, few_shot: list[dict], seconds: dict,
           log: Callable[[str], None]) -> dict:
    from alexatm_jax.evaluation import runner

    curves = {role: loss_curve(path) for role, path in models.items()}
    plot_losses(curves, output / "loss_curves.png")
    table = accuracy_table(nlu)
    plot_accuracies(table, output / "nlu_accuracy.png")
    summary = {
        "tokenizer": str(tokenizer),
        "models": {role: str(path) for role, path in models.items()},
        "stages": {stage.role: {"title": stage.title, "gin_files": list(stage.gin_files),
                                "init_from": stage.init_from, "teacher": stage.teacher,
                                "seconds": seconds.get(stage.role),
                                **{k: v for k, v in curves[stage.role].items()
                                   if k in ("first_step", "first_loss", "last_step", "last_loss", "last_eval_loss",
                                            "first_ce_loss", "last_ce_loss", "tokens_per_second")}}
                   for stage in STAGES},
        "nlu": {"task": NLU_TASK, "classifier": next(iter(nlu.values()))["classifier"], "rows": table,
                "results_files": {role: str(output / "eval" / f"{NLU_TASK}_{role}" / "results.json")
                                  for role in nlu}},
        "few_shot": {"model": FEW_SHOT_MODEL,
                     "evaluations": [{"task": r["task"]["name"], "params": r["task"]["params"], "data": r["data"],
                                      "results_file": str(output / "eval" / r["task"]["name"] / "results.json"),
                                      "runs": [{"shots": run["shots"], "num_examples": run["num_examples"],
                                                "scores": run["scores"], "signatures": run["signatures"]}
                                               for run in r["runs"]]} for r in few_shot]},
        "plots": {"losses": str(output / "loss_curves.png"), "nlu_accuracy": str(output / "nlu_accuracy.png")},
    }
    storage.write_text(output / "demo_results.json", json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
    log("\nTraining stages:")
    for stage in STAGES:
        s = summary["stages"][stage.role]
        distilled = "last_ce_loss" in s
        log(f"  {stage.role:15s} {'distillation objective' if distilled else 'loss'} {s['first_loss']:.3f} -> "
            f"{s['last_loss']:.3f} at step {s['last_step']}"
            + (f", its CE on the labels {s['first_ce_loss']:.3f} -> {s['last_ce_loss']:.3f}" if distilled else "")
            + (f" (validation CE {s['last_eval_loss']:.3f})" if s["last_eval_loss"] is not None else "")
            + f"  {models[stage.role]}")
    log(f"\nDebian section classification ({summary['nlu']['classifier']}), fine-tuned on English, accuracy % "
        "± standard error:\n\n" + markdown_accuracy_table(table))
    for results in few_shot:
        log(f"\nFew-shot, {FEW_SHOT_MODEL}:\n" + runner.markdown_table(results))
    log(f"\nWrote {output / 'demo_results.json'}, {output / 'loss_curves.png'}, {output / 'nlu_accuracy.png'} "
        f"and {output / 'eval'}/*/results.json")
    return summary


def run(output_dir: str = "demo_output", fresh: bool = False, train_steps: Optional[int] = None,
        eval_limit: Optional[int] = None,
        log: Callable[[str], None] = lambda text: print(text, flush=True)) -> dict:
    """Runs (or resumes) the pipeline in ``output_dir``; returns the summary written to demo_results.json.
    ``train_steps`` overrides TRAIN_STEPS of every stage (a quick smoke run); ``eval_limit`` caps the examples
    per task and language."""
    output = Path(output_dir).absolute()
    if fresh and output.exists():
        shutil.rmtree(output)
    output.mkdir(parents=True, exist_ok=True)
    started = time.time()
    total = len(STAGES) + 4
    _header(1, total, "SentencePiece vocabulary on the bundled corpus", log)
    tokenizer = train_tokenizer(output, log)
    in_domain = write_in_domain_text(output, log)
    models, seconds = {}, {}
    for number, stage in enumerate(STAGES, start=2):
        _header(number, total, stage.title, log)
        stage_start = time.time()
        models[stage.role] = train_stage(stage, output, tokenizer, in_domain, train_steps, log)
        seconds[stage.role] = round(time.time() - stage_start, 1)
    _header(len(STAGES) + 2, total, "Zero-shot cross-lingual evaluation of the fine-tuned models (8 languages)", log)
    nlu = evaluate_nlu(output, models, log, eval_limit)
    _header(len(STAGES) + 3, total, "Few-shot evaluation of the teacher on held-out translation and summarization", log)
    few_shot = evaluate_few_shot(output, models[FEW_SHOT_MODEL], log, eval_limit)
    _header(len(STAGES) + 4, total, "Report", log)
    summary = report(output, tokenizer, models, nlu, few_shot, seconds, log)
    log(f"Demo finished in {time.time() - started:.0f} s.")
    return summary


if __name__ == "__main__":
    sys.exit(0 if run() else 1)
