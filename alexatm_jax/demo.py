"""The main job end to end on the bundled data (``make demo`` / ``alexatm-jax demo``).

text -> SentencePiece vocabulary -> tiny AlexaTM pretrained on the 80/20 denoising + CLM mixture (gin run
files, checkpoints) -> 0- and 1-shot evaluation on held-out translation and summarization -> results JSON, a
markdown table and the loss curve as a PNG.

Every step leaves its result in the output directory and is skipped when that result is already there: an
interrupted demo resumes (training from its last checkpoint) and a finished one only prints its report.
``fresh=True`` starts over.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Callable, Optional

from alexatm_jax import storage

MODEL_GIN_FILES = ("models/tiny.gin", "runs/pretrain.gin", "runs/demo.gin")
TOKENIZER_VOCAB_SIZE = 8092  # + 100 seqio sentinel ids = 8192, the tiny preset's vocabulary

# Held-out tasks evaluated (card name, card params, how many test examples). The tiny model has 512
# positions, so summarization documents are cut at a sentence boundary to 150 tokens to fit a 1-shot prompt.
EVALUATIONS = (
    ("udhr_translation", {"src": "en", "tgt": "fr"}, 24),
    ("debian_summarization", {"lang": "en"}, 40),
)
SHOTS = (0, 1)
SUMMARY_DOCUMENT_TOKENS = 150


def _stage(number: int, total: int, text: str, log: Callable[[str], None]) -> float:
    log(f"\n[{number}/{total}] {text}")
    return time.time()


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


def pretrain(output: Path, tokenizer: Path, train_steps: Optional[int], log: Callable[[str], None]) -> Path:
    """The gin-configured trainer on the mixture re-registered with the demo's own vocabulary."""
    import gin

    from alexatm_jax.checkpoints.model_dir import latest_run_step
    from alexatm_jax.commands.train import parse_gin
    from alexatm_jax.data import tasks, vocab
    from alexatm_jax.training import trainer

    model_dir = output / "model"
    bindings = [("MODEL_DIR", repr(str(model_dir))), ("DataConfig.tokenizer_path", repr(str(tokenizer)))]
    if train_steps is not None:
        bindings.append(("TRAIN_STEPS", str(train_steps)))
    gin.clear_config()
    parse_gin(list(MODEL_GIN_FILES), bindings, [])
    wanted = gin.query_parameter("%TRAIN_STEPS")
    done = latest_run_step(model_dir)
    if done is not None and done >= wanted:
        log(f"  reusing {model_dir} (trained to step {done})")
        return model_dir
    log(f"  gin files: {', '.join(MODEL_GIN_FILES)}; {'resuming from step ' + str(done) if done else 'new run'}")
    tasks.register_bundled(vocabulary=vocab.get_vocabulary(str(tokenizer)))
    result = trainer.train()
    log(f"  {result['status']} at step {result['step']}")
    return model_dir


def evaluate(output: Path, model_dir: Path, log: Callable[[str], None],
             eval_limit: Optional[int] = None) -> list[dict]:
    """0- and 1-shot runs of the held-out tasks; each task's results.json is reused if it is for this model."""
    import alexatm_jax
    from alexatm_jax.checkpoints.model_dir import latest_run_step
    from alexatm_jax.evaluation import cards, runner

    step = latest_run_step(model_dir)
    lm = None
    collected = []
    for name, params, limit in EVALUATIONS:
        limit = limit if eval_limit is None else min(limit, eval_limit)
        directory = output / "eval" / name
        results_file = directory / "results.json"
        if results_file.exists():
            results = json.loads(results_file.read_text(encoding="utf-8"))
            if results.get("checkpoint_step") == step and results.get("limit") == limit:
                log(f"  reusing {results_file}")
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


def plot_loss(model_dir: Path, destination: Path) -> dict:
    """Training (and eval) loss against step from metrics.jsonl -> PNG; returns first/last train loss."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from alexatm_jax.training.metrics import read_metrics

    records = read_metrics(model_dir)  # one record per step, even for steps repeated after a resume
    train = [(r["step"], r["loss"]) for r in records if "loss" in r]
    evals = [(r["step"], r["eval_loss"]) for r in records if "eval_loss" in r]
    figure, axis = plt.subplots(figsize=(7, 4))
    axis.plot(*zip(*train), label="train loss")
    if evals:
        axis.plot(*zip(*evals), "o-", label="validation loss")
    axis.set_xlabel("step")
    axis.set_ylabel("cross-entropy (nats/token)")
    axis.set_title("Tiny AlexaTM on the bundled 12-language corpus\n(80% denoising, 20% CLM)", fontsize=10)
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    with storage.atomic_path(destination) as temporary:
        figure.savefig(temporary, dpi=120)
    plt.close(figure)
    return {"first_step": train[0][0], "first_loss": train[0][1], "last_step": train[-1][0],
            "last_loss": train[-1][1], "last_eval_loss": evals[-1][1] if evals else None,
            "tokens_per_second": [r for r in records if "loss" in r][-1].get("tokens_per_second")}


def report(output: Path, tokenizer: Path, model_dir: Path, evaluations: list[dict], log) -> dict:
    from alexatm_jax.evaluation import runner

    curve = plot_loss(model_dir, output / "loss_curve.png")
    tables = [runner.markdown_table(r) for r in evaluations]
    summary = {
        "tokenizer": str(tokenizer), "model_dir": str(model_dir), "loss_curve": str(output / "loss_curve.png"),
        "training": curve,
        "evaluations": [{"task": r["task"]["name"], "params": r["task"]["params"], "data": r["data"],
                         "results_file": str(output / "eval" / r["task"]["name"] / "results.json"),
                         "runs": [{"shots": run["shots"], "num_examples": run["num_examples"],
                                   "scores": run["scores"], "signatures": run["signatures"]}
                                  for run in r["runs"]]} for r in evaluations],
    }
    storage.write_text(output / "demo_results.json", json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
    log(f"\nTraining: loss {curve['first_loss']:.3f} at step {curve['first_step']} -> {curve['last_loss']:.3f} "
        f"at step {curve['last_step']}" + (f" (validation {curve['last_eval_loss']:.3f})"
                                           if curve["last_eval_loss"] is not None else ""))
    for table in tables:
        log("\n" + table)
    log(f"\nWrote {output / 'demo_results.json'}, {output / 'loss_curve.png'} and {output / 'eval'}/*/results.json")
    return summary


def run(output_dir: str = "demo_output", fresh: bool = False, train_steps: Optional[int] = None,
        eval_limit: Optional[int] = None,
        log: Callable[[str], None] = lambda text: print(text, flush=True)) -> dict:
    """Runs (or resumes) the demo in ``output_dir``; returns the summary written to demo_results.json.
    ``train_steps`` overrides TRAIN_STEPS of runs/demo.gin; ``eval_limit`` caps the examples per task."""
    output = Path(output_dir).absolute()
    if fresh and output.exists():
        shutil.rmtree(output)
    output.mkdir(parents=True, exist_ok=True)
    started = time.time()
    _stage(1, 4, "SentencePiece vocabulary on the bundled corpus", log)
    tokenizer = train_tokenizer(output, log)
    _stage(2, 4, "Pretraining a tiny AlexaTM model (80% denoising, 20% CLM)", log)
    model_dir = pretrain(output, tokenizer, train_steps, log)
    _stage(3, 4, "Few-shot evaluation on held-out translation and summarization", log)
    evaluations = evaluate(output, model_dir, log, eval_limit)
    _stage(4, 4, "Report", log)
    summary = report(output, tokenizer, model_dir, evaluations, log)
    log(f"Demo finished in {time.time() - started:.0f} s.")
    return summary


if __name__ == "__main__":
    sys.exit(0 if run() else 1)
