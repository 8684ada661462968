"""Sharded training on 8 virtual CPU devices (mesh data=2, fsdp=2, tensor=2):

* the first 5 losses equal a single-device run's within 1e-5 (float32, dropout on);
* parameters and Adam moments really are sharded as the logical-axis rules say;
* a checkpoint written by the 8-device run restores on 1 and on 4 devices, bit for bit, and training
  continues there with the losses of the 8-device run.

Each device count needs its own process (XLA reads the virtual device count at start-up), so the work runs
in subprocesses of this same file (``python test_partitioning_sharded.py WORKER ...``).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
LENGTHS = {"inputs": 32, "targets": 32}
MODEL_OVERRIDES = {"d_model": 64, "num_heads": 4, "encoder_ffn_dim": 128, "decoder_ffn_dim": 128}


def _run_worker(devices: int, *args: str, timeout=600) -> dict:
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", JAX_PLATFORMS="cpu",
               PYTHONPATH=os.pathsep.join([REPO, HERE, os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), *args], env=env, capture_output=True,
                          text=True, timeout=timeout)
    assert proc.returncode == 0, f"worker {args} failed:\n{proc.stderr[-5000:]}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _train(model_dir: str, mesh: str, steps: int) -> dict:
    from alexatm_jax.training import trainer
    from test_train_support import copy_batches, run_train
    return run_train(model_dir=model_dir, train_steps=steps, batch_size=8, task_feature_lengths=LENGTHS,
                         mesh=mesh, model_overrides=MODEL_OVERRIDES, learning_rate=1e-3, min_learning_rate=1e-4,
                         warmup_steps=2, log_every_steps=1, checkpoint_every_steps=3, tensorboard=False,
                         batch_iterator_fn=copy_batches)


def _losses(model_dir: str) -> dict:
    from alexatm_jax.training.metrics import read_metrics
    return {r["step"]: r["loss"] for r in read_metrics(model_dir) if "loss" in r}


def worker_parity(out_dir: str) -> dict:
    """Five steps on one device and on the 2x2x2 mesh; shardings of the result."""
    import jax
    from jax.sharding import PartitionSpec as P

    from alexatm_jax import partitioning
    from alexatm_jax.model.config import get_preset
    from alexatm_jax.models import EncoderDecoderModel
    from alexatm_jax.training import optimizer, step as step_lib
    from alexatm_jax.training.train_state import StateLayout
    from test_train_support import CopyBatches

    config = get_preset("tiny").replace(vocab_size=256, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
                                        bos_token_id=3, **MODEL_OVERRIDES, scan_layers=False)
    model = EncoderDecoderModel(config)
    schedule = optimizer.learning_rate_schedule(1e-3, 1e-4, 2, 10)
    tx = optimizer.make_optimizer(model.abstract_params(), schedule=schedule)
    result = {}
    for name, spec, devices in (("single", "data=1", jax.devices()[:1]),
                                ("sharded", "data=2,fsdp=2,tensor=2", jax.devices())):
        partitioner = partitioning.Partitioner(spec, devices=devices)
        layout = StateLayout(model, tx, partitioner)
        sharding = partitioner.data_sharding
        train_step = step_lib.make_train_step(layout, schedule, step_lib.StepOptions())
        state = layout.init(jax.random.PRNGKey(0))
        data = CopyBatches(LENGTHS, 8, token_range=(4, 256))
        losses = []
        for _ in range(5):
            batch = {k: jax.make_array_from_process_local_data(sharding, v) for k, v in next(data).items()}
            state, metrics = train_step(state, batch, jax.random.PRNGKey(1))
            losses.append(float(metrics["loss"]))
        result[name] = losses
    params = state.params
    query = params["encoder"]["layers_0"]["attention"]["query"]["kernel"]
    wi = params["decoder"]["layers_0"]["mlp"]["wi"]["kernel"]
    wo = params["decoder"]["layers_0"]["mlp"]["wo"]["kernel"]
    embedding = params["encoder_token_embedder"]["embedding"]
    adam = state.opt_state[1][0]  # chain(clip, adamw): adamw's ScaleByAdamState
    result["specs"] = {
        "query": str(query.sharding.spec), "wi": str(wi.sharding.spec), "wo": str(wo.sharding.spec),
        "embedding": str(embedding.sharding.spec),
        "mu_query": str(adam.mu["encoder"]["layers_0"]["attention"]["query"]["kernel"].sharding.spec),
        "nu_wi": str(adam.nu["decoder"]["layers_0"]["mlp"]["wi"]["kernel"].sharding.spec),
    }
    result["shapes"] = {"query": [list(query.shape), list(query.addressable_shards[0].data.shape)],
                        "wi": [list(wi.shape), list(wi.addressable_shards[0].data.shape)],
                        "embedding": [list(embedding.shape), list(embedding.addressable_shards[0].data.shape)]}
    result["expected"] = {"query": str(P("fsdp", "tensor", None)), "wi": str(P("fsdp", "tensor")),
                          "wo": str(P("tensor", "fsdp")), "embedding": str(P("tensor", "fsdp"))}
    return result


def worker_save(out_dir: str) -> dict:
    """Trains 3 steps on the 2x2x2 mesh (checkpoint at 3), dumps the params, then continues to 5 in a copy."""
    import jax
    from alexatm_jax.training import checkpointing

    model_dir = os.path.join(out_dir, "run8")
    _train(model_dir, "data=2,fsdp=2,tensor=2", 3)
    manager = checkpointing.make_manager(model_dir, read_only=True)
    assert manager.latest_step() == 3
    manager.close()
    shutil.copytree(model_dir, os.path.join(out_dir, "saved"))
    digest = _params_digest(model_dir, "data=2,fsdp=2,tensor=2")
    _train(model_dir, "data=2,fsdp=2,tensor=2", 5)
    return {"losses": _losses(model_dir), "devices": jax.device_count(), "param_digest": digest}


def worker_restore(out_dir: str, mesh: str, name: str) -> dict:
    """Restores the 8-device checkpoint here and trains on to step 5; returns the params and losses."""
    import jax

    model_dir = os.path.join(out_dir, name)
    shutil.copytree(os.path.join(out_dir, "saved"), model_dir)
    digest = _params_digest(model_dir, mesh)
    _train(model_dir, mesh, 5)
    return {"losses": _losses(model_dir), "devices": jax.device_count(), "param_digest": digest}


def _params_digest(model_dir: str, mesh: str) -> dict:
    """Restores only the ``params`` item of the latest step onto ``mesh`` (as evaluation does) and
    summarises every leaf exactly (its sum and first values, as Python floats)."""
    import jax
    from alexatm_jax.training import checkpointing
    from alexatm_jax import partitioning
    from alexatm_jax.model.config import ModelConfig
    from alexatm_jax.models import EncoderDecoderModel

    # The params item alone, as evaluation does, onto this process's mesh.
    config = ModelConfig.from_json(open(os.path.join(model_dir, "config.json")).read())
    model = EncoderDecoderModel(config)
    abstract = model.abstract_params(partitioning.Partitioner(mesh).shardings(model.param_logical_specs()))
    _, params = checkpointing.restore_params(model_dir, abstract)
    return {jax.tree_util.keystr(p): [float(np.asarray(v, np.float64).sum())] + np.asarray(v).ravel()[:4].tolist()
            for p, v in jax.tree_util.tree_flatten_with_path(params)[0]}


@pytest.fixture(scope="module")
def sharded_results(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("sharded"))
    eight = _run_worker(8, "eight", out)
    return out, eight["parity"], eight["save"]


def test_eight_device_losses_equal_single_device(sharded_results):
    _, parity, _ = sharded_results
    np.testing.assert_allclose(parity["sharded"], parity["single"], atol=1e-5, rtol=0)
    assert parity["single"][0] > parity["single"][-1]  # it is really training


def test_parameters_and_moments_are_sharded_as_the_rules_say(sharded_results):
    _, parity, _ = sharded_results
    specs, expected = parity["specs"], parity["expected"]
    for name in ("query", "wi", "wo", "embedding"):
        assert specs[name] == expected[name], name
    assert specs["mu_query"] == expected["query"] and specs["nu_wi"] == expected["wi"]
    (full, shard) = parity["shapes"]["query"]          # [D, H, K]: D over fsdp=2, H over tensor=2
    assert shard == [full[0] // 2, full[1] // 2, full[2]]
    (full, shard) = parity["shapes"]["embedding"]      # [V, D]: V over tensor, D over fsdp
    assert shard == [full[0] // 2, full[1] // 2]


@pytest.mark.parametrize("devices,mesh", [(1, "data=1"), (4, "fsdp=2,tensor=2")])
def test_checkpoint_from_8_devices_restores_and_continues(sharded_results, devices, mesh):
    out, _, saved = sharded_results
    assert saved["devices"] == 8
    restored = _run_worker(devices, "restore", out, mesh, f"run{devices}")
    assert restored["devices"] == devices
    assert restored["param_digest"] == saved["param_digest"]
    for step in (4, 5):
        np.testing.assert_allclose(restored["losses"][str(step)], saved["losses"][str(step)], atol=1e-5, rtol=0)
    for step in (1, 2, 3):  # the copied metrics of the 8-device run are kept
        assert restored["losses"][str(step)] == saved["losses"][str(step)]


if __name__ == "__main__":
    kind, out_dir, *rest = sys.argv[1:]
    workers = {"eight": lambda out: {"parity": worker_parity(out), "save": worker_save(out)},
               "restore": worker_restore}
    print(json.dumps(workers[kind](out_dir, *rest)))
