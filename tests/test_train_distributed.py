"""Two processes on 127.0.0.1 (jax.distributed, gloo collectives), two virtual CPU devices each, train the
same steps with the same losses as one process with four devices. Each process feeds only its own half of
every global batch (``make_array_from_process_local_data``), and they checkpoint together."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from test_train_support import free_port

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
STEPS = 4


def _env(devices: int) -> dict:
    return dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", JAX_PLATFORMS="cpu",
                PYTHONPATH=os.pathsep.join([REPO, HERE, os.environ.get("PYTHONPATH", "")]))


def worker(model_dir: str, coordinator: str, num_processes: str, process_id: str, teacher: str = ""):
    from alexatm_jax.training import distributed
    if int(num_processes) > 1:
        assert distributed.initialize(coordinator, int(num_processes), int(process_id))
    import jax
    from test_train_support import copy_batches, run_train
    from alexatm_jax.training.distillation import DistillConfig

    result = run_train(model_dir=model_dir, train_steps=STEPS, batch_size=8,
                           task_feature_lengths={"inputs": 32, "targets": 32}, mesh="data=2,fsdp=2",
                           model_overrides={"d_model": 64, "num_heads": 4, "encoder_ffn_dim": 128,
                                            "decoder_ffn_dim": 128},
                           learning_rate=1e-3, warmup_steps=2, log_every_steps=1, checkpoint_every_steps=2,
                           tensorboard=False, batch_iterator_fn=copy_batches,
                           distillation=DistillConfig(teacher=teacher, alpha=0.5) if teacher else None)
    print(json.dumps({"processes": jax.process_count(), "devices": jax.device_count(),
                      "local_devices": jax.local_device_count(), "step": result["step"]}))


def _losses(model_dir):
    from alexatm_jax.training.metrics import read_metrics
    return [r["loss"] for r in read_metrics(model_dir) if "loss" in r]


@pytest.mark.parametrize("distill", [False, True], ids=["plain", "distillation"])
def test_two_processes_match_one(tmp_path, distill):
    """With ``distill``, each process also loads a teacher onto the shared mesh and runs it inside the step."""
    single_dir, multi_dir = str(tmp_path / "single"), str(tmp_path / "multi")
    teacher = ""
    if distill:
        from test_train_support import copy_batches, run_train
        teacher = str(tmp_path / "teacher")
        run_train(model_dir=teacher, train_steps=2, batch_size=8, task_feature_lengths={"inputs": 32, "targets": 32},
                  learning_rate=1e-3, warmup_steps=1, checkpoint_every_steps=2, batch_iterator_fn=copy_batches,
                  async_checkpointing=False)
    single = subprocess.run([sys.executable, __file__, single_dir, "-", "1", "0", teacher], env=_env(4),
                            capture_output=True, text=True, timeout=600)
    assert single.returncode == 0, single.stderr[-4000:]
    coordinator = f"127.0.0.1:{free_port()}"
    procs = [subprocess.Popen([sys.executable, __file__, multi_dir, coordinator, "2", str(i), teacher], env=_env(2),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    outputs = [p.communicate(timeout=600) for p in procs]
    for p, (out, err) in zip(procs, outputs):
        assert p.returncode == 0, err[-4000:]
    reports = [json.loads(out.strip().splitlines()[-1]) for out, _ in outputs]
    assert all(r["processes"] == 2 and r["devices"] == 4 and r["local_devices"] == 2 for r in reports)
    assert json.loads(single.stdout.strip().splitlines()[-1])["devices"] == 4
    single_losses, multi_losses = _losses(single_dir), _losses(multi_dir)
    assert len(single_losses) == STEPS
    np.testing.assert_allclose(multi_losses, single_losses, atol=1e-5, rtol=0)
    steps = sorted(int(n) for n in os.listdir(os.path.join(multi_dir, "checkpoints")) if n.isdigit())
    assert steps[-1] == STEPS
    if distill:
        from alexatm_jax.training.metrics import read_metrics
        assert all(r["kl_loss"] > 0 for r in read_metrics(multi_dir) if "loss" in r)


if __name__ == "__main__":
    worker(*sys.argv[1:])
