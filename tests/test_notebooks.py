"""The Colab notebooks: their plain-code sources and the .ipynb copies agree, and they run end to end.

``notebooks/NN_name.py`` (jupytext percent format) is each notebook's source; the paired ``.ipynb`` next to it
is what Colab opens from GitHub, regenerated with ``make notebooks``. The static tests check that the two
agree cell for cell and that the ``.ipynb`` is Colab-ready (no outputs, an install cell, one ``parameters``
cell, no local paths). The execution tests run the committed ``.ipynb`` with papermill, which injects tiny
settings after the ``parameters`` cell and drives a fresh ``python3`` kernel through nbclient, then check
what the notebook produced: the record the last cell displays as ``application/json``, the markdown tables
and the figures. Figures the notebook reports are recomputed here from outside references (sacrebleu, the
run's ``metrics.jsonl``, orbax's checkpoint manager, the model's own parameter shapes) wherever one exists.
"""

from __future__ import annotations

import glob
import json
import math
import os

import nbformat
import numpy as np
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
NOTEBOOK_DIR = os.path.join(REPO, "notebooks")
SOURCES = sorted(os.path.basename(p)[:-len(".py")] for p in glob.glob(os.path.join(NOTEBOOK_DIR, "[0-9]*.py")))
CELL_TIMEOUT_S = 600
GiB = 1024 ** 3


def _load(name: str) -> nbformat.NotebookNode:
    with open(os.path.join(NOTEBOOK_DIR, name), encoding="utf-8") as f:
        return nbformat.read(f, as_version=4)


def _cells(nb) -> list[tuple]:
    """What a reader sees of each cell: its kind, its source and its tags (ids and outputs aside)."""
    return [(cell.cell_type, cell.source, tuple(cell.metadata.get("tags", ()))) for cell in nb.cells]


def _execute(name: str, parameters: dict, tmp_path, monkeypatch) -> nbformat.NotebookNode:
    """Runs notebooks/``name`` with papermill, ``parameters`` injected; the executed copy (outputs included)
    stays in ``tmp_path`` for debugging."""
    import papermill

    # The kernel inherits this process's environment: CPU JAX with the default device count, and the
    # notebooks' tempfile folders (stand-in model, runs) inside pytest's tmp_path.
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "3")
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    monkeypatch.delenv("XLA_FLAGS", raising=False)
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    # The package importable in the kernel the way it is here (editable install or PYTHONPATH=repo).
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [REPO, os.environ.get("PYTHONPATH")])))
    nb = papermill.execute_notebook(
        os.path.join(NOTEBOOK_DIR, name), str(tmp_path / name), parameters=parameters, kernel_name="python3",
        cwd=str(tmp_path), progress_bar=False, execution_timeout=CELL_TIMEOUT_S)
    injected = [cell for cell in nb.cells if "injected-parameters" in cell.metadata.get("tags", [])]
    assert len(injected) == 1 and all(f"{key} = " in injected[0].source for key in parameters)
    return nb


def _outputs(nb, mime: str) -> list:
    return [out["data"][mime] for cell in nb.cells if cell.cell_type == "code"
            for out in cell.get("outputs", []) if mime in out.get("data", {})]


def _record(nb) -> dict:
    records = _outputs(nb, "application/json")
    assert len(records) == 1, f"expected one JSON record, found {len(records)}"
    return records[0]


def _stream_text(nb) -> str:
    return "".join(out.get("text", "") for cell in nb.cells if cell.cell_type == "code"
                   for out in cell.get("outputs", []) if out.get("output_type") == "stream")


# ----------------------------------------------------------------------------------------------------------
# Static checks: each .ipynb is its .py source's jupytext conversion, outputs cleared, Colab-ready.
# ----------------------------------------------------------------------------------------------------------

def test_every_source_has_its_notebook():
    notebooks = sorted(os.path.basename(path)[:-len(".ipynb")]
                       for path in glob.glob(os.path.join(NOTEBOOK_DIR, "*.ipynb")))
    assert SOURCES and SOURCES == notebooks, "each notebooks/NN_name.py needs its .ipynb: run `make notebooks`"


@pytest.mark.parametrize("name", SOURCES)
def test_notebook_matches_its_source(name):
    import jupytext

    path = os.path.join(NOTEBOOK_DIR, name + ".py")
    with open(path, encoding="utf-8") as f:
        compile(f.read(), path, "exec")  # plain Python: no magics or cell syntax outside comments
    source = jupytext.read(path)
    committed = _load(name + ".ipynb")
    assert _cells(committed) == _cells(source), (
        f"notebooks/{name}.ipynb differs from notebooks/{name}.py: run `make notebooks`")
    assert committed.metadata["jupytext"]["formats"] == "ipynb,py:percent"
    assert committed.metadata["kernelspec"]["name"] == "python3"


@pytest.mark.parametrize("name", SOURCES)
def test_notebook_is_colab_ready(name):
    committed = _load(name + ".ipynb")
    nbformat.validate(committed)
    assert committed.cells[0].cell_type == "markdown" and committed.cells[0].source.startswith("# ")
    install = committed.cells[1]
    assert install.cell_type == "code" and 'run_line_magic("pip"' in install.source
    assert 'find_spec("alexatm_jax") is None' in install.source
    tagged = [cell for cell in committed.cells if "parameters" in cell.metadata.get("tags", [])]
    assert len(tagged) == 1 and tagged[0].cell_type == "code", "a notebook needs one code cell tagged 'parameters'"
    for cell in committed.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None
        # Colab has no local checkout: nothing may point into this machine's filesystem.
        for forbidden in ("/work/", "/tmp/", "/home/", "../shared", "tasks/", "gin_configs/"):
            assert forbidden not in cell.source, f"{name}: local path {forbidden!r} in a cell"


# ----------------------------------------------------------------------------------------------------------
# 01: few-shot in-context learning
# ----------------------------------------------------------------------------------------------------------

FEW_SHOT_PARAMETERS = dict(
    CHECKPOINT=None, MESH=None, TASK="udhr_translation", TASK_PARAMS={"src": "en", "tgt": "de"}, SHOTS=1,
    NUM_CANDIDATES=3, NUM_EXAMPLES=3, MAX_NEW_TOKENS=12, CLASSIFICATION_TASK="debian_language_id", BATCH_SIZE=4,
    STANDIN_PRESET="tiny")


def _reference_scores(predictions, references, spm_path) -> dict:
    """The card's metrics straight from sacrebleu (spBLEU as the metrics module documents it)."""
    import sacrebleu
    import sentencepiece as spm

    from alexatm_jax.evaluation.metrics import official_flores_spm_path

    out = {"chrf++": sacrebleu.CHRF(word_order=2).corpus_score(predictions, [references]).score,
           "bleu": sacrebleu.BLEU().corpus_score(predictions, [references]).score}
    if os.path.exists(official_flores_spm_path()):
        out["spbleu"] = sacrebleu.BLEU(tokenize="flores101").corpus_score(predictions, [references]).score
    else:
        sp = spm.SentencePieceProcessor(model_file=spm_path)
        pieces = lambda text: " ".join(sp.encode(text, out_type=str))  # noqa: E731
        out["spbleu"] = sacrebleu.BLEU(tokenize="none").corpus_score(
            [pieces(p) for p in predictions], [[pieces(r) for r in references]]).score
    return out


def test_few_shot_notebook(tmp_path, monkeypatch):
    nb = _execute("01_few_shot_in_context.ipynb", FEW_SHOT_PARAMETERS, tmp_path, monkeypatch)
    record = _record(nb)
    assert record["random_standin"] is True and os.path.isdir(record["checkpoint"])
    assert "RANDOM stand-in" in _stream_text(nb)
    # AlexaTM's Flores-101 prompt with one shot, rendered from the card.
    prompt = record["prompt"]
    assert prompt.startswith("[CLM] Sentence:  ") and prompt.endswith("; Translation in German:")
    assert prompt.count("Sentence:  ") == 2 and prompt.count("Translation in German:") == 2
    assert ";" not in record["prediction"]  # cut at the example separator

    # Rank classification: one finite log-likelihood per candidate, the true translation first in the list.
    scores = record["candidate_log_likelihoods"]
    assert len(scores) == len(record["candidates"]) == 3 and record["candidates"][0] == record["reference"]
    assert all(math.isfinite(s) and s < 0 for s in scores)

    # Metrics: the notebook's figures are sacrebleu's on its own predictions.
    spm_path = record["spm_path"]
    single = _reference_scores([record["prediction"]], [record["reference"]], spm_path)
    for name, value in single.items():
        np.testing.assert_allclose(record["single_example_scores"][name], value, atol=1e-9)
    assert [run["shots"] for run in record["generation"]] == [0, 1]
    for run in record["generation"]:
        assert len(run["predictions"]) == len(run["references"]) == 3
        expected = _reference_scores(run["predictions"], run["references"], spm_path)
        assert set(run["scores"]) == set(expected)
        for name, value in expected.items():
            np.testing.assert_allclose(run["scores"][name], value, atol=1e-9)
    (classification,) = record["classification"]
    hits = [p == r for p, r in zip(classification["predictions"], classification["references"])]
    assert len(hits) == 3
    np.testing.assert_allclose(classification["scores"]["accuracy"], 100.0 * np.mean(hits), atol=1e-9)

    tables = "\n".join(_outputs(nb, "text/markdown"))
    assert "| shots | examples | spbleu | chrf++ | bleu |" in tables and "| 1 | 3 |" in tables
    assert "| shots | examples | accuracy |" in tables and "| rank | candidate |" in tables


# ----------------------------------------------------------------------------------------------------------
# 02: pretraining a tiny model
# ----------------------------------------------------------------------------------------------------------

PRETRAINING_STEPS = 40


def _latest_checkpoint_step(run_dir: str):
    """The newest finished step under MODEL_DIR/checkpoints, as orbax itself reads it."""
    import orbax.checkpoint as ocp

    with ocp.CheckpointManager(os.path.join(run_dir, "checkpoints"),
                               options=ocp.CheckpointManagerOptions(read_only=True)) as manager:
        return manager.latest_step()


def test_pretraining_notebook(tmp_path, monkeypatch):
    run_dir = str(tmp_path / "run")
    parameters = dict(MIXTURE="alexatm_demo", NUM_EXAMPLES=60, SHOW_EXAMPLES=2, MODEL_PRESET="tiny",
                      TRAIN_STEPS=PRETRAINING_STEPS, BATCH_SIZE=8, INPUTS_LENGTH=32, TARGETS_LENGTH=32,
                      LOG_EVERY_STEPS=5, MODEL_DIR=run_dir,
                      # Any other binding reaches the command line: here, no held-out evaluation at the last
                      # step (its compile is a tenth of this test's time, and it is not what the test checks).
                      GIN_BINDINGS={"EvalConfig.every_steps": 0})
    nb = _execute("02_pretraining_tiny.ipynb", parameters, tmp_path, monkeypatch)
    record = _record(nb)
    assert record["model_dir"] == run_dir
    # The run went through the command line with the notebook's macros.
    text = _stream_text(nb)
    command = next(line for line in text.splitlines() if line.startswith("$ alexatm-jax train "))
    assert command.startswith("$ alexatm-jax train --gin_file=models/tiny.gin --gin_file=runs/pretrain.gin")
    assert f"--gin.TRAIN_STEPS={PRETRAINING_STEPS}" in command and "--gin.EvalConfig.every_steps=0" in command

    # Mixture statistics: measured over the requested examples, rates from the configured 80/20 mixture.
    measured, expected = record["measured"], record["expected"]
    assert measured["examples"] == 60
    np.testing.assert_allclose(expected["objective_rates"]["denoise"], 0.8, atol=1e-9)
    np.testing.assert_allclose(expected["objective_rates"]["clm"], 0.2, atol=1e-9)
    for kind in ("objective_rates", "language_rates"):
        np.testing.assert_allclose(sum(measured[kind].values()), 1.0, atol=1e-9)
        assert set(measured[kind]) <= set(expected[kind])
    assert 0.0 < measured["denoise_dropped_fraction"] < 0.5 and measured["denoise_mean_span_length"] >= 1.0
    assert "--- example 1: objective=" in text

    # The loss curve is the run's own metrics.jsonl, read here line by line, and it went down.
    with open(os.path.join(run_dir, "metrics.jsonl"), encoding="utf-8") as f:
        metrics = list(map(json.loads, f))
    assert not any("eval_loss" in r for r in metrics)  # GIN_BINDINGS was applied
    logged = [r for r in metrics if "loss" in r]
    assert record["steps"] == [r["step"] for r in logged] and record["steps"][-1] == PRETRAINING_STEPS
    assert {5, 10, 35} <= set(record["steps"])  # every LOG_EVERY_STEPS
    np.testing.assert_allclose(record["losses"], [r["loss"] for r in logged], rtol=1e-12)
    assert record["first_loss"] == logged[0]["loss"] and record["last_loss"] == logged[-1]["loss"]
    # From ln(8192) = 9.0 at random init; one batch is noisy, so compare the mean of the last three logs.
    np.testing.assert_allclose(record["first_loss"], math.log(8192), atol=0.3)
    assert np.mean(record["losses"][-3:]) < record["first_loss"] - 0.75, record["losses"]
    assert _latest_checkpoint_step(run_dir) == PRETRAINING_STEPS
    assert len(_outputs(nb, "image/png")) == 1
    assert f"first loss {record['first_loss']:.4f}" in text


# ----------------------------------------------------------------------------------------------------------
# 03: scaling plans
# ----------------------------------------------------------------------------------------------------------

SCALING_PARAMETERS = dict(MODEL="tiny", MESHES=["data=2", "fsdp=2,tensor=2"], SEQUENCES_PER_SHARD=1,
                          INPUTS_LENGTH=32, TARGETS_LENGTH=32, DEVICE_MEMORY_GIB=1, OPTIMIZER="adamw",
                          PLAN_TIMEOUT_S=300)


def _tiny_param_count() -> int:
    import flax.linen as nn
    import jax
    import jax.numpy as jnp

    from alexatm_jax.model.config import get_preset
    from alexatm_jax.model.transformer import AlexaTMTransformer

    model = AlexaTMTransformer(get_preset("tiny"))
    tokens = jnp.ones((1, 4), jnp.int32)
    shapes = jax.eval_shape(lambda: nn.unbox(model.init(jax.random.PRNGKey(0), tokens, tokens,
                                                         enable_dropout=False)["params"]))
    return sum(math.prod(leaf.shape) for leaf in jax.tree_util.tree_leaves(shapes))


def test_scaling_notebook(tmp_path, monkeypatch):
    nb = _execute("03_scaling_plans.ipynb", SCALING_PARAMETERS, tmp_path, monkeypatch)
    record = _record(nb)
    replicated, sharded = record["plans"]
    assert replicated["mesh"] == {"data": 2, "fsdp": 1, "tensor": 1} and replicated["devices"] == 2
    assert sharded["mesh"] == {"data": 1, "fsdp": 2, "tensor": 2} and sharded["devices"] == 4
    assert replicated["batch"] == sharded["batch"] == 2  # one sequence per data x fsdp shard
    count = _tiny_param_count()
    # Pure data parallelism keeps a whole f32 copy of the parameters on every device.
    assert replicated["model_params"] == sharded["model_params"] == count
    np.testing.assert_allclose(replicated["per_device_gib"]["params"], count * 4 / GiB, rtol=1e-12)
    # fsdp x tensor shards them: between a quarter and (strictly) less than the whole.
    ratio = sharded["per_device_gib"]["params"] / replicated["per_device_gib"]["params"]
    assert 0.25 <= ratio < 1.0, ratio
    for plan in (replicated, sharded):
        gib = plan["per_device_gib"]
        np.testing.assert_allclose(gib["optimizer_state"], 2 * gib["params"], rtol=1e-3)  # AdamW: two moments
        assert gib["temporaries"] > 0 and gib["total"] >= gib["params"] + gib["optimizer_state"]
        assert plan["fits"] is True and plan["device_memory_gib"] == 1
    table = "\n".join(_outputs(nb, "text/markdown"))
    assert "| `data=2` | 2 | 2 |" in table and "| `fsdp=2,tensor=2` | 4 | 2 |" in table
    assert len(_outputs(nb, "image/png")) == 1
