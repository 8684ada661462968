"""The main job end to end (`make demo`), at a small scale: vocabulary, gin-configured pretraining,
few-shot evaluation, report; then a second run reuses everything, and a longer run resumes training."""

import json
import shutil

from alexatm_jax import demo
from alexatm_jax.data import bundled


def test_demo_runs_end_to_end_and_reuses_its_results(tmp_path):
    output = tmp_path / "demo"
    # Seed the vocabulary step with the bundled model (the same recipe) to skip 50 s of SentencePiece training;
    # the step must then reuse it rather than train again.
    (output / "tokenizer").mkdir(parents=True)
    shutil.copyfile(bundled.bundled_spm_path(), output / "tokenizer" / "alexatm_demo.model")
    lines = []
    summary = demo.run(str(output), train_steps=6, eval_limit=3, log=lines.append)

    assert any("reusing" in line and "alexatm_demo.model" in line for line in lines)
    assert (output / "model" / "tokenizer.model").read_bytes() == (output / "tokenizer" /
                                                                   "alexatm_demo.model").read_bytes()
    written = json.loads((output / "demo_results.json").read_text())
    assert written == json.loads(json.dumps(summary))
    assert written["training"]["last_step"] == 6
    assert written["training"]["tokens_per_second"] > 0
    assert (output / "loss_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    tasks = {e["task"]: e for e in written["evaluations"]}
    assert set(tasks) == {"udhr_translation", "debian_summarization"}
    for evaluation in tasks.values():
        assert [run["shots"] for run in evaluation["runs"]] == [0, 1]
        assert all(run["num_examples"] == 3 for run in evaluation["runs"])
        results = json.loads(open(evaluation["results_file"]).read())
        assert results["checkpoint_step"] == 6
        assert len(results["runs"][1]["examples"]) == 3
    assert set(tasks["udhr_translation"]["runs"][0]["scores"]) == {"spbleu", "chrf++", "bleu"}
    assert {"rouge1", "rouge2", "rougeL"} <= set(tasks["debian_summarization"]["runs"][0]["scores"])

    # Second run: nothing is recomputed.
    lines.clear()
    again = demo.run(str(output), train_steps=6, eval_limit=3, log=lines.append)
    reused = [line for line in lines if "reusing" in line]
    assert len(reused) == 4, lines  # tokenizer, model, two evaluations
    assert again["evaluations"] == summary["evaluations"]

    # A longer run resumes training from the checkpoint of step 6 and re-evaluates the new checkpoint.
    lines.clear()
    longer = demo.run(str(output), train_steps=8, eval_limit=3, log=lines.append)
    assert any("resuming from step 6" in line for line in lines), lines
    assert longer["training"]["last_step"] == 8
    assert json.loads(open(longer["evaluations"][0]["results_file"]).read())["checkpoint_step"] == 8
