"""Two processes (jax.distributed, gloo on 127.0.0.1) train the bundled mixture through ``alexatm-jax train``:
a SIGTERM to one of them stops both at the same step (JAX's preemption service, through orbax's
``reached_preemption``), each saves its own data-pipeline state into the shared checkpoint, and the same two
commands resume; every loss equals an uninterrupted two-process run's."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

from alexatm_jax.training.metrics import read_metrics

from test_train_support import free_port

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
STEPS = 40  # enough steps that the preemption lands mid-run even on a quiet machine


def _start(model_dir: str, tmp_path, name: str) -> list:
    coordinator = f"127.0.0.1:{free_port()}"
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=os.pathsep.join([REPO, os.environ.get("PYTHONPATH", "")]))
    env.pop("XLA_FLAGS", None)  # one CPU device per process: a 2-device mesh across the two
    procs = []
    for index in range(2):
        command = [sys.executable, "-m", "alexatm_jax.cli", "train", "--gin_file=gin_configs/models/tiny.gin",
                   "--gin_file=gin_configs/runs/pretrain.gin", f"--gin.MODEL_DIR={model_dir}",
                   f"--gin.TRAIN_STEPS={STEPS}", "--gin.BATCH_SIZE=8", "--gin.LOG_EVERY_STEPS=1",
                   "--gin.TASK_FEATURE_LENGTHS={'inputs': 64, 'targets': 64}", "--gin.MESH='data=-1'",
                   "--gin.CheckpointConfig.every_steps=50", "--gin.EvalConfig.every_steps=0",
                   "--gin.LoggingConfig.tensorboard=False", "--gin.OptimizerConfig.warmup_steps=2",
                   f"--coordinator_address={coordinator}", "--num_processes=2", f"--process_id={index}"]
        log = open(tmp_path / f"{name}-{index}.log", "wb")
        procs.append((subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT), log))
    return procs


def _wait(procs, tmp_path, name: str, timeout: float = 600) -> list[str]:
    outputs = []
    for index, (proc, log) in enumerate(procs):
        code = proc.wait(timeout=timeout)
        log.close()
        outputs.append((tmp_path / f"{name}-{index}.log").read_text())
        assert code == 0, outputs[-1][-4000:]
    return outputs


def _last_step(model_dir: str) -> int:
    try:
        return max((r["step"] for r in read_metrics(model_dir) if "loss" in r), default=0)
    except FileNotFoundError:
        return 0


def test_two_process_cli_run_stops_together_and_resumes_exactly(tmp_path):
    reference_dir, resumed_dir = str(tmp_path / "reference"), str(tmp_path / "resumed")
    _wait(_start(reference_dir, tmp_path, "reference"), tmp_path, "reference")
    reference = {r["step"]: r["loss"] for r in read_metrics(reference_dir) if "loss" in r}
    assert sorted(reference) == list(range(1, STEPS + 1))

    procs = _start(resumed_dir, tmp_path, "first")
    deadline = time.time() + 600
    while _last_step(resumed_dir) < 5:
        assert all(p.poll() is None for p, _ in procs), "a process ended before step 5"
        assert time.time() < deadline, "timed out waiting for step 5"
        time.sleep(0.05)
    procs[1][0].send_signal(signal.SIGTERM)  # the cluster preempts one host; both must stop at one step
    outputs = _wait(procs, tmp_path, "first")
    assert all("preempted at step" in out for out in outputs), outputs[0][-2000:]
    steps = sorted(int(n) for n in os.listdir(os.path.join(resumed_dir, "checkpoints")) if n.isdigit())
    stopped_at = steps[-1]
    # Only the preemption saved (every_steps is past the end): both processes agreed on one step mid-run.
    assert 5 <= stopped_at < STEPS and steps == [stopped_at], steps
    data_state = os.path.join(resumed_dir, "checkpoints", str(stopped_at), "data_state")
    assert {"process_0-of-2.json", "process_1-of-2.json"} <= set(os.listdir(data_state))
    states = [json.load(open(os.path.join(data_state, f"process_{i}-of-2.json"))) for i in range(2)]
    assert states[0] != states[1]  # each process saved its own shard's position

    outputs = _wait(_start(resumed_dir, tmp_path, "second"), tmp_path, "second")
    assert f"Resumed from step {stopped_at}" in outputs[0], outputs[0][-2000:]  # process 0 reports
    resumed = {r["step"]: r["loss"] for r in read_metrics(resumed_dir) if "loss" in r}
    assert sorted(resumed) == list(range(1, STEPS + 1))
    assert resumed == reference
