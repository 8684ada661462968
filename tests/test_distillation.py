"""Word-level distillation (training/distillation.py, the distillation train step):

* the KL term against optax's ``kl_divergence`` and the objective against its formula;
* alpha = 0 trains exactly as plain training (same losses, bitwise the same parameters);
* a student that is a copy of its teacher has zero KL at the first step;
* ``gin_configs/runs/distill.gin`` through ``alexatm-jax train``: the same losses on 8 virtual devices
  (data=2,fsdp=2,tensor=2) as on one, and a run killed with -9 mid-way resumes to the uninterrupted losses;
* a teacher with another vocabulary, or a missing one, is a clear error before anything compiles.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from alexatm_jax import cli
from alexatm_jax.checkpoints.model_dir import abstract_params, read_config, restore_params
from alexatm_jax.training import distillation
from alexatm_jax.training.distillation import DistillConfig
from alexatm_jax.training.metrics import read_metrics

from test_train_support import copy_batches, run_train

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
LENGTHS = {"inputs": 16, "targets": 16}
COMMON = dict(batch_size=4, task_feature_lengths=LENGTHS, batch_iterator_fn=copy_batches, async_checkpointing=False,
              model_overrides=dict(dropout_rate=0.0), learning_rate=1e-3, warmup_steps=1)


def test_kl_sum_matches_optax_and_the_objective_its_formula():
    student = jax.random.normal(jax.random.PRNGKey(0), (2, 5, 11)) * 3.0
    teacher = jax.random.normal(jax.random.PRNGKey(1), (2, 5, 11)) * 3.0
    weights = jnp.ones((2, 5)).at[1, 3:].set(0.0)
    for temperature in (1.0, 2.5):
        expected = optax.losses.kl_divergence(jax.nn.log_softmax(student / temperature),
                                              jax.nn.softmax(teacher / temperature))
        got = distillation.kl_divergence_sum(student, teacher, weights, jnp.float32(temperature))
        np.testing.assert_allclose(got, jnp.sum(expected * weights), rtol=1e-5)
    assert float(distillation.kl_divergence_sum(teacher, teacher, weights, jnp.float32(2.0))) == pytest.approx(0, abs=1e-5)
    objective = distillation.distillation_objective(jnp.float32(3.0), jnp.float32(0.5), jnp.float32(0.25),
                                                    jnp.float32(2.0))
    assert float(objective) == pytest.approx(0.25 * 4.0 * 0.5 + 0.75 * 3.0)


def test_schedules_and_config_problems():
    alpha, temperature = DistillConfig(teacher="t", alpha=0.8, alpha_end=0.2, temperature=3.0).schedules(11)
    assert float(alpha(jnp.int32(0))) == pytest.approx(0.8) and float(alpha(jnp.int32(10))) == pytest.approx(0.2)
    assert float(alpha(jnp.int32(5))) == pytest.approx(0.5) and float(temperature(jnp.int32(7))) == 3.0
    problems = DistillConfig(alpha=1.5, temperature=0, teacher_dtype="int8").problems()
    assert any("DistillConfig.teacher is not set" in p for p in problems)
    assert any("alpha must be a number in [0, 1], got 1.5" in p for p in problems)
    assert any("temperature must be a number > 0, got 0" in p for p in problems)
    assert any("teacher_dtype='int8'" in p for p in problems)


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    directory = str(tmp_path_factory.mktemp("distill") / "teacher")
    run_train(model_dir=directory, train_steps=3, checkpoint_every_steps=3, **COMMON)
    return directory


def _params(model_dir):
    return restore_params(model_dir, abstract_params(read_config(model_dir)))[1]


def test_alpha_zero_trains_exactly_like_plain_training(tmp_path, teacher_dir):
    plain, distilled = str(tmp_path / "plain"), str(tmp_path / "alpha0")
    run_train(model_dir=plain, train_steps=3, checkpoint_every_steps=3, **COMMON)
    run_train(model_dir=distilled, train_steps=3, checkpoint_every_steps=3,
              distillation=DistillConfig(teacher=teacher_dir, alpha=0.0), **COMMON)
    plain_metrics = [r for r in read_metrics(plain) if "loss" in r]
    distilled_metrics = [r for r in read_metrics(distilled) if "loss" in r]
    assert [r["loss"] for r in plain_metrics] == [r["loss"] for r in distilled_metrics]
    assert [r["loss"] for r in distilled_metrics] == [r["ce_loss"] for r in distilled_metrics]
    assert all(r["kl_loss"] > 0 and r["alpha"] == 0.0 for r in distilled_metrics)  # the teacher did run
    for a, b in zip(jax.tree_util.tree_leaves(_params(plain)), jax.tree_util.tree_leaves(_params(distilled))):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_a_copy_of_the_teacher_has_zero_kl_at_the_first_step(tmp_path, teacher_dir):
    student = str(tmp_path / "copy")
    run_train(model_dir=student, train_steps=2, init_from=teacher_dir,
              distillation=DistillConfig(teacher=teacher_dir, alpha=0.5, temperature=2.0),
              **dict(COMMON, warmup_steps=0))
    first, second = [r for r in read_metrics(student) if "loss" in r]
    assert first["kl_loss"] == pytest.approx(0.0, abs=1e-6)
    assert first["loss"] == pytest.approx(0.5 * first["ce_loss"], rel=1e-5)
    assert second["kl_loss"] > 0  # the student moved away from the teacher after one update


def test_teacher_with_another_vocabulary_or_missing_is_refused(tmp_path, teacher_dir):
    with pytest.raises(ValueError, match="do not share the vocabulary: vocab_size 8192 \\(teacher\\) vs 8200"):
        run_train(model_dir=str(tmp_path / "s1"), train_steps=1,
                  distillation=DistillConfig(teacher=teacher_dir),
                  **dict(COMMON, model_overrides=dict(dropout_rate=0.0, vocab_size=8200)))
    with pytest.raises(FileNotFoundError, match="DistillConfig.teacher='/nonexistent/teacher' does not exist"):
        run_train(model_dir=str(tmp_path / "s2"), train_steps=1,
                  distillation=DistillConfig(teacher="/nonexistent/teacher"), **COMMON)
    assert not (tmp_path / "s1").exists() and not (tmp_path / "s2").exists()  # nothing written


# ---- The run file through the CLI: 8 devices vs 1, and kill -9 mid-run. ----
STEPS = 8


def _command(model_dir: str, teacher: str, *extra: str) -> list[str]:
    return [sys.executable, "-c", "import sys; from alexatm_jax.cli import main; sys.exit(main())", "train",
            "--gin_file=gin_configs/models/tiny.gin", "--gin_file=gin_configs/runs/distill.gin",
            f"--gin.MODEL_DIR={model_dir}", f"--gin.TEACHER={teacher}", f"--gin.TRAIN_STEPS={STEPS}",
            "--gin.BATCH_SIZE=8", "--gin.TASK_FEATURE_LENGTHS={'inputs': 32, 'targets': 32}",
            "--gin.LOG_EVERY_STEPS=1", "--gin.OptimizerConfig.learning_rate=3e-3",
            "--gin.OptimizerConfig.warmup_steps=2", "--gin.CheckpointConfig.every_steps=3",
            "--gin.EvalConfig.every_steps=0", "--gin.LoggingConfig.tensorboard=False",
            "--gin.DistillConfig.alpha_end=0.1", *extra]


def _env(devices: int = 1):
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    if devices > 1:
        env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    return dict(env, JAX_PLATFORMS="cpu", PYTHONPATH=os.pathsep.join([REPO, os.environ.get("PYTHONPATH", "")]))


def _losses(model_dir):
    return {r["step"]: (r["loss"], r["kl_loss"], r["ce_loss"]) for r in read_metrics(model_dir) if "loss" in r}


def _last_logged(model_dir) -> int:
    try:
        return max(_losses(model_dir), default=0)
    except FileNotFoundError:
        return 0


def _committed(model_dir):
    directory = os.path.join(model_dir, "checkpoints")
    return sorted(int(n) for n in os.listdir(directory) if n.isdigit()
                  and os.path.exists(os.path.join(directory, n, "commit_success.txt"))) if os.path.isdir(directory) else []


def test_distill_run_file_sharded_equals_one_device_and_resumes_after_kill(tmp_path, teacher_dir):
    one, eight, killed = str(tmp_path / "one"), str(tmp_path / "eight"), str(tmp_path / "killed")
    for directory, devices, extra in ((one, 1, ()), (eight, 8, ("--gin.MESH='data=2,fsdp=2,tensor=2'",))):
        done = subprocess.run(_command(directory, teacher_dir, *extra), cwd=REPO, env=_env(devices),
                              capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
    reference, sharded = _losses(one), _losses(eight)
    assert sorted(reference) == list(range(1, STEPS + 1))
    for step in reference:
        np.testing.assert_allclose(sharded[step], reference[step], rtol=2e-5, atol=1e-6)
    assert reference[1][1] > 0 and reference[STEPS][2] < reference[1][2]  # kl > 0; the labels loss falls

    # kill -9 once the step-3 checkpoint is committed and training went on; the same command finishes the run.
    with open(tmp_path / "killed.log", "wb") as log:
        proc = subprocess.Popen(_command(killed, teacher_dir), cwd=REPO, env=_env(), stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.time() + 400
        while not (_committed(killed) and _last_logged(killed) >= 4):
            assert proc.poll() is None and time.time() < deadline, (tmp_path / "killed.log").read_text()[-3000:]
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    assert max(_committed(killed)) < STEPS
    done = subprocess.run(_command(killed, teacher_dir), cwd=REPO, env=_env(), capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Resumed from step 3" in done.stderr + done.stdout
    assert _losses(killed) == reference


def test_cli_names_the_vocabulary_mismatch(tmp_path, teacher_dir, capsys):
    code = cli.main(_command(str(tmp_path / "student"), teacher_dir)[3:] + ["--gin.ModelConfig.vocab_size=8200"])
    assert code == 2
    err = capsys.readouterr().err
    assert "do not share the vocabulary" in err and "Traceback" not in err
