"""The main job end to end (`make demo`) at a small scale: vocabulary, teacher pretraining, stage-2 pretraining
on in-domain text, distillation into a smaller student started from the teacher's layers, fine-tuning on the
section labels (student and teacher-less baseline), zero-shot evaluation in 8 languages, few-shot evaluation,
report; every model directory loads and evaluates through the public entry points; a second run reuses
everything, and a longer run resumes the teacher and starts the stages built on it over."""

import json
import shutil

import numpy as np

import alexatm_jax
from alexatm_jax import cli, demo
from alexatm_jax.data import bundled, debian_labels

ROLES = ("teacher", "teacher_stage2", "student", "student_nlu", "baseline_nlu")
PNG = b"\x89PNG\r\n\x1a\n"


def test_demo_pipeline_runs_end_to_end_and_reuses_its_results(tmp_path, capsys):
    output = tmp_path / "demo"
    # Seed the vocabulary step with the bundled model (the same recipe) to skip 50 s of SentencePiece training;
    # the step must then reuse it rather than train again.
    (output / "tokenizer").mkdir(parents=True)
    shutil.copyfile(bundled.bundled_spm_path(), output / "tokenizer" / "alexatm_demo.model")
    lines = []
    summary = demo.run(str(output), train_steps=4, eval_limit=3, log=lines.append)

    assert any("reusing" in line and "alexatm_demo.model" in line for line in lines)
    written = json.loads((output / "demo_results.json").read_text())
    assert written == json.loads(json.dumps(summary))
    assert set(written["models"]) == set(ROLES)
    configs = {}
    for role, directory in written["models"].items():
        assert written["stages"][role]["last_step"] == 4, role
        lm = alexatm_jax.load(directory)
        configs[role] = lm.config
        assert (output / "models" / role / "tokenizer.model").read_bytes() == (
            output / "tokenizer" / "alexatm_demo.model").read_bytes()
    assert configs["teacher"].encoder_layers == 4 and configs["student"].encoder_layers == 2
    assert configs["student_nlu"] == configs["baseline_nlu"] == configs["student"]
    assert written["stages"]["student"]["teacher"] == "teacher_stage2"

    # The distilled student logged both loss terms; the student started from teacher layers 0 and 2.
    from alexatm_jax.training.metrics import read_metrics
    student_metrics = [r for r in read_metrics(written["models"]["student"]) if "loss" in r]
    assert all(r["kl_loss"] > 0 and r["ce_loss"] > 0 for r in student_metrics)
    # Its summary reports the CE part beside the objective (the validation loss is plain CE).
    student = written["stages"]["student"]
    assert (student["first_ce_loss"], student["last_ce_loss"]) == (student_metrics[0]["ce_loss"],
                                                                   student_metrics[-1]["ce_loss"])
    assert "first_ce_loss" not in written["stages"]["teacher"]
    captured = capsys.readouterr()
    assert "encoder layers [0, 2], decoder layers [0, 2] of its 4+4" in captured.out + captured.err
    assert any(f"its CE on the labels {student['first_ce_loss']:.3f} -> {student['last_ce_loss']:.3f}" in line
               for line in lines)

    # Zero-shot table: every language, majority baseline and both fine-tuned models, 3 examples each.
    rows = {row["lang"]: row for row in written["nlu"]["rows"]}
    assert set(rows) == set(bundled.DEBIAN_LANGS)
    for row in rows.values():
        assert row["n"] == 3 and row["majority"]["label"] == "libs"
        assert all(0.0 <= row[role]["value"] <= 1.0 for role in ("student_nlu", "baseline_nlu"))
    for key in ("losses", "nlu_accuracy"):
        assert open(written["plots"][key], "rb").read()[:8] == PNG
    tasks = {e["task"]: e for e in written["few_shot"]["evaluations"]}
    assert set(tasks) == {"udhr_translation", "debian_summarization"}
    assert set(tasks["udhr_translation"]["runs"][0]["scores"]) == {"spbleu", "chrf++", "bleu"}
    assert all([run["shots"] for run in e["runs"]] == [0, 1] for e in tasks.values())

    # Every model directory evaluates with the CLI on a user's JSON lines.
    data = tmp_path / "sections.jsonl"
    records = [r for r in debian_labels.bundled_records("test", ["de"])][:2]
    data.write_text("".join(json.dumps({k: r[k] for k in ("lang", "summary", "description", "section")}) + "\n"
                            for r in records))
    for role, directory in written["models"].items():
        code = cli.main(["eval", "--checkpoint", directory, "--task", "debian_section", "--data", str(data),
                         "--param", "lang=de", "--shots", "0", "--output", str(tmp_path / "eval" / role),
                         "--no-progress"])
        assert code == 0, capsys.readouterr().err
        results = json.loads((tmp_path / "eval" / role / "results.json").read_text())
        assert results["runs"][0]["num_examples"] == 2

    # Second run: nothing is recomputed.
    lines.clear()
    again = demo.run(str(output), train_steps=4, eval_limit=3, log=lines.append)
    reused = [line for line in lines if "reusing" in line]
    assert len(reused) == 1 + len(ROLES) + 2 + 2, lines  # tokenizer, 5 models, 2 NLU and 2 few-shot evaluations
    assert again["nlu"] == summary["nlu"] and again["few_shot"] == summary["few_shot"]

    # A longer run resumes the teacher from its step-4 checkpoint; every stage built on it starts over.
    lines.clear()
    longer = demo.run(str(output), train_steps=5, eval_limit=3, log=lines.append)
    assert sum("resuming from step 4" in line for line in lines) == 2, lines  # teacher and the baseline
    assert sum("changed since" in line for line in lines) == 3, lines
    assert all(stage["last_step"] == 5 for stage in longer["stages"].values())
    assert not np.isnan(longer["stages"]["student"]["last_loss"])
