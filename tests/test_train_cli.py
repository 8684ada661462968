"""`alexatm-jax train` end to end on the bundled corpus (real data pipeline, tiny model, one CPU device):

* a bad binding, an unknown macro, a mesh that does not divide the devices or a too-long sequence is a
  clear error (exit 2) before anything compiles;
* the tiny model visibly learns (loss well below its start after a couple of hundred steps);
* kill -9 mid-run, restart the same command: it resumes from the last checkpoint, and every later loss
  equals the uninterrupted run's (model, optimiser and data-pipeline state restored); SIGTERM saves a
  checkpoint at the current step and exits cleanly.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from alexatm_jax import cli
from alexatm_jax.training.metrics import read_metrics

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
STEPS = 150


def _command(model_dir: str, *extra: str) -> list[str]:
    return [sys.executable, "-c", "import sys; from alexatm_jax.cli import main; sys.exit(main())", "train",
            "--gin_file=gin_configs/models/tiny.gin", "--gin_file=gin_configs/runs/pretrain.gin",
            f"--gin.MODEL_DIR={model_dir}", f"--gin.TRAIN_STEPS={STEPS}", "--gin.BATCH_SIZE=8",
            "--gin.TASK_FEATURE_LENGTHS={'inputs': 32, 'targets': 32}", "--gin.LOG_EVERY_STEPS=1",
            "--gin.train.learning_rate=3e-3", "--gin.train.warmup_steps=20", "--gin.train.checkpoint_every_steps=8",
            "--gin.train.eval_every_steps=0", "--gin.train.tensorboard=False", *extra]


def _env():
    return dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=os.pathsep.join([REPO, os.environ.get("PYTHONPATH", "")]))


def _committed_steps(model_dir: str) -> list[int]:
    directory = os.path.join(model_dir, "checkpoints")
    if not os.path.isdir(directory):
        return []
    return sorted(int(name) for name in os.listdir(directory) if name.isdigit()
                  and os.path.exists(os.path.join(directory, name, "commit_success.txt")))


def _last_step(model_dir: str) -> int:
    try:
        return max((r["step"] for r in read_metrics(model_dir) if "loss" in r), default=0)
    except FileNotFoundError:
        return 0


def _start(model_dir: str, log):
    return subprocess.Popen(_command(model_dir), cwd=REPO, env=_env(), stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)


def _wait_until(proc, condition, what: str, timeout=400):
    deadline = time.time() + timeout
    while not condition():
        assert proc.poll() is None, f"the run ended (rc {proc.returncode}) before {what}"
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


@pytest.mark.parametrize("bindings,message", [
    (["--gin.NOT_A_MACRO=3"], "unknown macro --gin.NOT_A_MACRO"),
    (["--gin.train.no_such_parameter=1"], "no_such_parameter"),
    (["--gin.MESH='data=3'"], "Mesh 'data=3' has 3 devices"),
    (["--gin.TASK_FEATURE_LENGTHS={'inputs': 4096, 'targets': 32}"], "exceeds the model's 512 positions"),
    (["--gin.train.num_microbatches=3"], "divisible by num_microbatches=3"),
])
def test_bad_configuration_fails_clearly_before_compiling(tmp_path, capsys, bindings, message):
    model_dir = str(tmp_path / "run")
    argv = _command(model_dir)[3:] + bindings
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert message in err, err
    assert not os.path.exists(os.path.join(model_dir, "checkpoints"))


def test_missing_model_file_and_macro(tmp_path, capsys):
    assert cli.main(["train", "--gin_file=gin_configs/runs/pretrain.gin", f"--gin.MODEL_DIR={tmp_path}"]) == 2
    assert "no model file" in capsys.readouterr().err
    assert cli.main(["train", "--gin_file=gin_configs/models/tiny.gin", "--gin_file=gin_configs/runs/pretrain.gin"]) == 2
    assert "MODEL_DIR is not set" in capsys.readouterr().err


def test_learns_and_resumes_exactly_after_kill_and_preemption(tmp_path):
    reference_dir, resumed_dir = str(tmp_path / "reference"), str(tmp_path / "resumed")
    with open(tmp_path / "reference.log", "wb") as log:
        assert subprocess.run(_command(reference_dir), cwd=REPO, env=_env(), stdout=log, stderr=subprocess.STDOUT,
                              timeout=900).returncode == 0
    reference = {r["step"]: r for r in read_metrics(reference_dir) if "loss" in r}
    assert sorted(reference) == list(range(1, STEPS + 1))

    # It learns: the last 20 steps' mean loss is far below the first step's (ln 8192 = 9.0 at random init).
    first = reference[1]["loss"]
    last = sum(reference[s]["loss"] for s in range(STEPS - 19, STEPS + 1)) / 20
    assert first > 8.5 and last < first - 1.5, (first, last)
    for key in ("accuracy", "learning_rate", "grad_norm", "tokens_per_second", "mfu"):
        assert isinstance(reference[STEPS][key], float), key

    # kill -9 once a checkpoint is committed and training has moved past it.
    with open(tmp_path / "resumed-1.log", "wb") as log:
        proc = _start(resumed_dir, log)
        _wait_until(proc, lambda: _committed_steps(resumed_dir) and _last_step(resumed_dir) >= _committed_steps(resumed_dir)[-1] + 3,
                    "a checkpoint and three more steps")
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    killed_at, restored_from = _last_step(resumed_dir), _committed_steps(resumed_dir)[-1]
    assert killed_at > restored_from

    # Same command again: resumes; SIGTERM later saves at the current step and exits 0.
    with open(tmp_path / "resumed-2.log", "wb") as log:
        proc = _start(resumed_dir, log)
        _wait_until(proc, lambda: _last_step(resumed_dir) >= killed_at + 5, "steps past the kill")
        os.killpg(proc.pid, signal.SIGTERM)
        assert proc.wait(timeout=300) == 0
    output = (tmp_path / "resumed-2.log").read_text()
    assert f"Resumed from step {restored_from}" in output
    preempted_at = _committed_steps(resumed_dir)[-1]
    assert "preempted at step" in output and preempted_at >= killed_at + 5

    resumed = {r["step"]: r for r in read_metrics(resumed_dir) if "loss" in r}
    assert set(range(1, preempted_at + 1)) <= set(resumed)
    for step in range(1, preempted_at + 1):
        assert resumed[step]["loss"] == reference[step]["loss"], (step, resumed[step]["loss"], reference[step]["loss"])
    with open(os.path.join(resumed_dir, "config.json")) as f:
        assert json.load(f)["vocab_size"] == 8192
    assert os.path.exists(os.path.join(resumed_dir, "tokenizer.model"))
