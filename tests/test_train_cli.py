"""`alexatm-jax train` end to end on the bundled corpus (real data pipeline, tiny model, one CPU device):

* a bad binding, an unknown macro, a mesh that does not divide the devices or a too-long sequence is a
  clear error (exit 2) before anything compiles;
* the tiny model visibly learns (loss well below its start after a couple of hundred steps);
* faults, several times over on one run: kill -9 mid-run, SIGTERM (saves at the current step and exits 0),
  kill -9 during an asynchronous save, a truncated newest checkpoint; each time the same command resumes
  (model, optimiser and data-pipeline state, from checkpoints written by resumed processes too) and every
  step's loss equals the uninterrupted run's.
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
            "--gin.OptimizerConfig.learning_rate=3e-3", "--gin.OptimizerConfig.warmup_steps=20",
            "--gin.CheckpointConfig.every_steps=8", "--gin.EvalConfig.every_steps=0",
            "--gin.LoggingConfig.tensorboard=False", *extra]


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
    (["--gin.OptimizerConfig.no_such_parameter=1"], "no_such_parameter"),
    (["--gin.OptimizerConfig.learning_rate='fast'"], "learning_rate"),
    (["--gin.MESH='data=3'"], "Mesh 'data=3' has 3 devices"),
    (["--gin.TASK_FEATURE_LENGTHS={'inputs': 4096, 'targets': 32}"], "exceeds the model's 512 positions"),
    (["--gin.StepConfig.num_microbatches=3"], "divisible by StepConfig.num_microbatches=3"),
    # The user's model values are checked against the tokenizer, never silently overwritten.
    (["--gin.ModelConfig.eos_token_id=2"], "ModelConfig.eos_token_id=2 but the vocabulary"),
    (["--gin.ModelConfig.vocab_size=1000"], "ModelConfig.vocab_size=1000 is smaller than the vocabulary's 8192"),
    (["--gin.ModelConfig.remat_policy='everything'"], "remat_policy='everything' is not one of"),
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


def _run_until(model_dir: str, tmp_path, name: str, condition, what: str, sig) -> str:
    """Starts the command, waits for ``condition``, sends ``sig`` to its process group; returns its output."""
    with open(tmp_path / f"{name}.log", "wb") as log:
        proc = _start(model_dir, log)
        _wait_until(proc, condition, what)
        os.killpg(proc.pid, sig)
        code = proc.wait(timeout=300)
    if sig == signal.SIGTERM:
        assert code == 0, (tmp_path / f"{name}.log").read_text()
    return (tmp_path / f"{name}.log").read_text()


def _saving(model_dir: str) -> bool:
    """An asynchronous save is under way: orbax's temporary step directory exists."""
    directory = os.path.join(model_dir, "checkpoints")
    return os.path.isdir(directory) and any("tmp" in name for name in os.listdir(directory))


def _truncate_newest_checkpoint(model_dir: str) -> int:
    step = _committed_steps(model_dir)[-1]
    folder = os.path.join(model_dir, "checkpoints", str(step), "params")
    files = [os.path.join(d, n) for d, _, names in os.walk(folder) for n in names]
    largest = max(files, key=os.path.getsize)
    with open(largest, "r+b") as handle:
        handle.truncate(os.path.getsize(largest) // 2)
    return step


def test_learns_and_resumes_exactly_through_repeated_faults(tmp_path):
    """Five generations of the same command on one run directory: kill -9 after a checkpoint, SIGTERM
    (preemption save), kill -9 during an asynchronous save, a truncated newest checkpoint (falls back to the
    previous one), then to the end. Every step's loss equals the uninterrupted run's; none is missing."""
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

    # 1. kill -9 once a checkpoint is committed and training has moved past it.
    _run_until(resumed_dir, tmp_path, "gen1", lambda: _committed_steps(resumed_dir) and _last_step(resumed_dir)
               >= _committed_steps(resumed_dir)[-1] + 3, "a checkpoint and three more steps", signal.SIGKILL)
    killed_at, restored_from = _last_step(resumed_dir), _committed_steps(resumed_dir)[-1]
    assert killed_at > restored_from

    # 2. The same command resumes; SIGTERM later saves at the current step and exits 0.
    output = _run_until(resumed_dir, tmp_path, "gen2", lambda: _last_step(resumed_dir) >= killed_at + 5,
                        "steps past the kill", signal.SIGTERM)
    assert f"Resumed from step {restored_from}" in output
    preempted_at = _committed_steps(resumed_dir)[-1]
    assert "preempted at step" in output and preempted_at >= killed_at + 5

    # 3. Resumed from a checkpoint that a resumed process wrote; kill -9 while a save is in flight.
    output = _run_until(resumed_dir, tmp_path, "gen3", lambda: _last_step(resumed_dir) > preempted_at + 4
                        and _saving(resumed_dir), "an asynchronous save", signal.SIGKILL)
    assert f"Resumed from step {preempted_at}" in output
    assert not any(name.isdigit() and not os.path.exists(os.path.join(resumed_dir, "checkpoints", name,
                                                                       "commit_success.txt"))
                   for name in os.listdir(os.path.join(resumed_dir, "checkpoints")))

    # 4. The newest checkpoint is damaged: reported, set aside, the previous one is used.
    damaged = _truncate_newest_checkpoint(resumed_dir)
    previous = [s for s in _committed_steps(resumed_dir) if s < damaged][-1]
    output = _run_until(resumed_dir, tmp_path, "gen4", lambda: _last_step(resumed_dir) >= damaged + 10,
                        "steps past the damaged checkpoint", signal.SIGKILL)
    assert f"Checkpoint step {damaged}" in output and "cannot be read" in output, output
    assert f"Resumed from step {previous}" in output, output

    # 5. Runs to the end.
    with open(tmp_path / "gen5.log", "wb") as log:
        assert subprocess.run(_command(resumed_dir), cwd=REPO, env=_env(), stdout=log, stderr=subprocess.STDOUT,
                              timeout=900).returncode == 0
    resumed = {r["step"]: r for r in read_metrics(resumed_dir) if "loss" in r}
    assert sorted(resumed) == list(range(1, STEPS + 1))
    for step in range(1, STEPS + 1):
        assert resumed[step]["loss"] == reference[step]["loss"], (step, resumed[step]["loss"], reference[step]["loss"])
    with open(os.path.join(resumed_dir, "config.json")) as f:
        assert json.load(f)["vocab_size"] == 8192
    assert os.path.exists(os.path.join(resumed_dir, "tokenizer.model"))
