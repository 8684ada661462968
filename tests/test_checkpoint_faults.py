"""Damaged checkpoints: a newest step with a truncated or deleted file is reported by step and reason, set
aside, and the run resumes from the newest readable step with exactly the losses of an undamaged run; when
nothing is readable the run stops with one clear error (never a silent restart from step 0); ``load`` and
``eval`` name the step and the file.

In-process runs of the tiny model on the synthetic copy task (``test_train_support``), so that the tests
exercise checkpointing only. The CLI-level faults (kill -9, SIGTERM, several generations) are in
``test_train_cli.py``."""

from __future__ import annotations

import os
import shutil

import pytest

from test_train_support import copy_batches, run_train

LENGTHS = {"inputs": 16, "targets": 16}


def _train(model_dir, steps, capsys=None, **overrides):
    """Runs to ``steps`` (checkpoints every 2 steps, 3 kept); returns (losses by step, what it printed)."""
    from alexatm_jax.training.metrics import read_metrics

    if capsys is not None:
        capsys.readouterr()
    settings = dict(batch_size=4, task_feature_lengths=LENGTHS, model_overrides=dict(dropout_rate=0.0),
                    batch_iterator_fn=copy_batches, checkpoint_every_steps=2, keep_checkpoints=3,
                    learning_rate=3e-3, warmup_steps=2, decay_steps=100, async_checkpointing=False)
    run_train(model_dir=str(model_dir), train_steps=steps, **{**settings, **overrides})
    printed = capsys.readouterr() if capsys is not None else None
    losses = {r["step"]: r["loss"] for r in read_metrics(str(model_dir)) if "loss" in r}
    return losses, (printed.out + printed.err if printed else "")


def _largest_file(directory):
    files = [os.path.join(d, n) for d, _, names in os.walk(directory) for n in names]
    return max(files, key=os.path.getsize)


def _truncate_largest(step_dir):
    path = _largest_file(os.path.join(step_dir, "params"))
    with open(path, "r+b") as handle:
        handle.truncate(os.path.getsize(path) // 2)
    return path


def _delete_manifest(step_dir):
    manifests = [os.path.join(d, n) for d, _, names in os.walk(os.path.join(step_dir, "opt_state"))
                 for n in names if n == "manifest.ocdbt"]
    assert manifests, os.listdir(step_dir)
    for path in manifests:
        os.remove(path)
    return manifests[0]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An undamaged 8-step run's losses."""
    losses, _ = _train(tmp_path_factory.mktemp("reference") / "run", 8)
    assert sorted(losses) == list(range(1, 9))
    return losses


@pytest.mark.parametrize("damage", [_truncate_largest, _delete_manifest], ids=["truncated", "deleted"])
def test_damaged_newest_step_falls_back_to_the_previous_one(tmp_path, capsys, reference, damage):
    run = tmp_path / "run"
    _train(run, 6)
    checkpoints = run / "checkpoints"
    assert sorted(int(n) for n in os.listdir(checkpoints) if n.isdigit()) == [2, 4, 6]
    damage(str(checkpoints / "6"))

    losses, output = _train(run, 8, capsys)
    assert "Checkpoint step 6" in output and "cannot be read" in output, output
    # The reason names what failed to read: the array and file (truncated data) or the missing file.
    assert "Error reading" in output or "does not exist" in output, output
    assert "tensorstore_spec" not in output
    assert "Resumed from step 4" in output, output
    assert any(name.startswith("6.damaged-") for name in os.listdir(checkpoints)), os.listdir(checkpoints)
    # Steps 5 and 6 were trained again from step 4's state: every loss is the undamaged run's.
    assert losses == reference


def test_every_step_damaged_is_an_error_not_a_fresh_start(tmp_path):
    from alexatm_jax.training.checkpointing import CheckpointError

    run = tmp_path / "run"
    _train(run, 4)
    for step in ("2", "4"):
        _truncate_largest(str(run / "checkpoints" / step))
    with pytest.raises(CheckpointError, match=r"no readable checkpoint.*step 4.*step 2"):
        _train(run, 6)


def test_load_and_eval_name_the_damaged_step_and_file(tmp_path, capsys):
    import alexatm_jax
    from alexatm_jax import cli

    run = tmp_path / "run"
    _train(run, 4)
    shutil.rmtree(run / "checkpoints" / "2")
    _truncate_largest(str(run / "checkpoints" / "4"))
    with pytest.raises(ValueError, match=r"checkpoint step 4 in .*checkpoints.*cannot be read") as caught:
        alexatm_jax.load(str(run))
    assert "\n" not in str(caught.value) and "Error reading" in str(caught.value), caught.value
    code = cli.main(["eval", "--checkpoint", str(run), "--task", "udhr_translation", "--param", "src=en,tgt=de",
                     "--shots", "0", "--limit", "1", "--output", str(tmp_path / "eval"), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "checkpoint step 4" in err and "Traceback" not in err, err
    assert not os.path.exists(tmp_path / "eval" / "results.json")


def test_best_n_ranks_only_losses_measured_on_the_saved_parameters(tmp_path):
    """Saves between evaluations (and preemption saves) carry no eval_loss: a stale one, from an earlier
    evaluation, would let best-N retention keep the wrong checkpoint."""
    from alexatm_jax.training import checkpointing
    from alexatm_jax.training.metrics import read_metrics

    run = tmp_path / "run"
    _train(run, 8, eval_every_steps=4, eval_steps=1, keep_best_checkpoints=1, keep_checkpoints=10)
    measured = {r["step"]: r["eval_loss"] for r in read_metrics(str(run)) if "eval_loss" in r}
    assert sorted(measured) == [4, 8]
    manager = checkpointing.make_manager(str(run), keep_best=1, read_only=True)
    recorded = {step: manager.metrics(step) or {} for step in (2, 4, 6, 8)}
    manager.close()
    assert recorded[2] == {} and recorded[6] == {}, recorded
    assert recorded[4] == {"eval_loss": measured[4]} and recorded[8] == {"eval_loss": measured[8]}, recorded
