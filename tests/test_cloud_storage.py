"""Run directories on object stores: gs:// paths against a real GCS emulator on loopback (``gcs_emulator``).

What a run writes (small files, orbax checkpoints, TensorBoard events, metrics.jsonl, eval results, an exported
model that ``alexatm_jax.load`` reads) must land in the bucket, read back the same as from local disk, and never
in a local folder named ``gs:``. What is in the bucket is checked through the emulator's own JSON API, not
through the code under test.

Also a script: ``python test_cloud_storage.py save-checkpoints gs://...`` saves checkpoints from a process with
4 virtual CPU devices (the sharded-save half of the round trip).
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from alexatm_jax import storage

from gcs_emulator import gcs_bucket  # noqa: F401  (the fixture)

HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.fixture(autouse=True)
def no_local_gs_folder(tmp_path, monkeypatch):
    """Each test runs in an empty working directory; a gs:// path mistaken for a local one would appear there."""
    monkeypatch.chdir(tmp_path)
    yield
    assert not [name for name in os.listdir(tmp_path) if name.endswith(":")], os.listdir(tmp_path)


# ---- Paths (no emulator needed). ----
def test_resolve_keeps_urls_and_makes_local_paths_absolute(tmp_path):
    assert os.fspath(storage.resolve("gs://bucket/run")) == "gs://bucket/run"
    assert os.fspath(storage.resolve("gs://bucket/run") / "checkpoints") == "gs://bucket/run/checkpoints"
    assert os.fspath(storage.resolve("s3://bucket/a/b")) == "s3://bucket/a/b"
    assert os.fspath(storage.resolve("run")) == os.path.join(str(tmp_path), "run")
    assert os.fspath(storage.resolve("~/run")) == os.path.join(os.path.expanduser("~"), "run")
    assert os.fspath(storage.resolve("file:///tmp/run")) == "/tmp/run"
    assert storage.is_remote("gs://b/x") and storage.is_remote(storage.resolve("gs://b/x"))
    assert not storage.is_remote("run") and not storage.is_remote(tmp_path / "gs:x")
    with pytest.raises(ValueError, match=r"'hdfs://node/run'.*gs://"):
        storage.resolve("hdfs://node/run")


def test_client_settings_point_only_an_emulator_run_at_the_emulator():
    assert storage.client_settings({}) == {"EPATH_USE_TF": "false"}
    emulated = storage.client_settings({"STORAGE_EMULATOR_HOST": "127.0.0.1:9023"})
    assert emulated["TENSORSTORE_GCS_HTTP_URL"] == emulated["STORAGE_EMULATOR_HOST"] == "http://127.0.0.1:9023"
    assert emulated["GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT"] == "false"
    with_scheme = storage.client_settings({"STORAGE_EMULATOR_HOST": "https://gcs.local:1"})
    assert with_scheme["TENSORSTORE_GCS_HTTP_URL"] == "https://gcs.local:1"
    assert "STORAGE_EMULATOR_HOST" not in with_scheme
    # What the user set is never overwritten.
    assert "EPATH_USE_TF" not in storage.client_settings({"EPATH_USE_TF": "true"})


def test_local_atomic_write_replaces_whole_or_not_at_all(tmp_path):
    target = tmp_path / "sub" / "results.json"
    storage.write_text(target, "old")
    with pytest.raises(RuntimeError):
        with storage.atomic_path(target) as temporary:
            with open(temporary, "w") as handle:
                handle.write("half")
            raise RuntimeError("killed mid-write")
    assert target.read_text() == "old"
    assert os.listdir(target.parent) == ["results.json"]  # no temporary file left
    storage.write_bytes(target, b"new")
    assert target.read_bytes() == b"new" and os.listdir(target.parent) == ["results.json"]


# ---- On the emulator. ----
def test_small_files_land_in_the_bucket(gcs_bucket):
    run = gcs_bucket.url("files/run")
    storage.write_text(f"{run}/config.json", '{"d_model": 8}')
    storage.write_bytes(storage.resolve(run) / "tokenizer.model", b"\x00\x01spm")
    with storage.atomic_path(f"{run}/plots/loss.png") as temporary:
        with open(temporary, "wb") as handle:
            handle.write(b"png")
    storage.write_text(f"{run}/config.json", '{"d_model": 16}')  # a rewrite replaces the object

    assert gcs_bucket.list_objects("files/") == {"files/run/config.json": 15, "files/run/tokenizer.model": 5,
                                                 "files/run/plots/loss.png": 3}
    assert gcs_bucket.read_object("files/run/config.json") == b'{"d_model": 16}'
    root = storage.resolve(run)
    assert storage.exists(root / "plots" / "loss.png") and not storage.exists(root / "missing.json")
    assert (root / "tokenizer.model").read_bytes() == b"\x00\x01spm"
    assert sorted(p.name for p in root.iterdir()) == ["config.json", "plots", "tokenizer.model"]


def test_files_written_by_other_hosts_are_seen_at_once(gcs_bucket):
    """A listing cached by this process must not hide another host's new file (its data state, a step)."""
    root = storage.resolve(gcs_bucket.url("hosts/step_1"))
    storage.write_text(root / "process_0-of-2.json", "{}")
    assert [p.name for p in root.iterdir()] == ["process_0-of-2.json"]
    gcs_bucket.write_object("hosts/step_1/process_1-of-2.json", b"{}")
    assert (root / "process_1-of-2.json").exists()
    assert sorted(p.name for p in root.iterdir()) == ["process_0-of-2.json", "process_1-of-2.json"]


def test_copy_tree_publishes_a_local_directory(gcs_bucket, tmp_path):
    source = tmp_path / "model"
    (source / "params" / "d").mkdir(parents=True)
    (source / "config.json").write_text("{}")
    (source / "params" / "d" / "blob").write_bytes(b"x" * 1000)
    assert sorted(storage.copy_tree(source, gcs_bucket.url("tree"))) == ["config.json", "params/d/blob"]
    assert gcs_bucket.list_objects("tree/") == {"tree/config.json": 2, "tree/params/d/blob": 1000}


# Past ~100 arrays in one save, TensorStore's OCDBT writer reads back its manifest and writes it again with a
# generation precondition (an emulator without generations fails there); a real optimizer state has hundreds.
LEAVES = 200


def _tree(step: int) -> dict:
    """The pytree saved at ``step``: a 2-D array (sharded over a 2x2 mesh when saved), a bf16 vector, a scalar
    and ``LEAVES`` small vectors."""
    import jax.numpy as jnp
    return {"w": jnp.arange(64, dtype=jnp.float32).reshape(8, 8) * step, "b": jnp.full((6,), step, jnp.bfloat16),
            "count": jnp.asarray(step, jnp.int32),
            "layers": {f"{i:03d}": jnp.full((4,), i + 1000 * step, jnp.float32) for i in range(LEAVES)}}


def _save_checkpoints(directory: str) -> None:
    """(Script half.) Saves steps 1..3 from 4 devices, keeping the newest 2, as the trainer does: async, a
    Composite of a sharded pytree and JSON."""
    import jax
    import orbax.checkpoint as ocp
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

    mesh = Mesh(np.array(jax.devices()).reshape(2, 2), ("data", "model"))
    options = ocp.CheckpointManagerOptions(max_to_keep=2, enable_async_checkpointing=True)
    manager = ocp.CheckpointManager(storage.resolve(directory), item_names=("params", "meta"), options=options)
    for step in (1, 2, 3):
        tree = _tree(step)
        tree["w"] = jax.device_put(tree["w"], NamedSharding(mesh, P("data", "model")))
        assert len(tree["w"].sharding.device_set) == 4
        manager.save(step, args=ocp.args.Composite(params=ocp.args.StandardSave(tree),
                                                   meta=ocp.args.JsonSave({"step": step, "mesh": "2x2"})))
    manager.wait_until_finished()
    manager.close()


def test_checkpoints_save_sharded_and_restore_on_another_device_count(gcs_bucket, tmp_path):
    import jax
    import orbax.checkpoint as ocp

    directory = gcs_bucket.url("ckpt/run/checkpoints")
    env = dict(gcs_bucket.environ(), JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=4")
    process = subprocess.run([sys.executable, os.path.join(HERE, "test_cloud_storage.py"), "save-checkpoints",
                              directory], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert process.returncode == 0, process.stderr[-3000:]

    objects = gcs_bucket.list_objects("ckpt/run/checkpoints/")
    assert not [name for name in objects if name.startswith("ckpt/run/checkpoints/1/")]  # max_to_keep=2
    for step in (2, 3):  # orbax commits a step on object stores with a marker object, not a rename
        assert f"ckpt/run/checkpoints/{step}/commit_success.txt" in objects
        assert any(name.startswith(f"ckpt/run/checkpoints/{step}/params/") for name in objects)

    manager = ocp.CheckpointManager(storage.resolve(directory), item_names=("params", "meta"),
                                    options=ocp.CheckpointManagerOptions(read_only=True))
    try:
        assert manager.all_steps() == [2, 3]
        abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), _tree(0))
        restored = manager.restore(3, args=ocp.args.Composite(params=ocp.args.StandardRestore(abstract),
                                                              meta=ocp.args.JsonRestore()))
    finally:
        manager.close()
    assert restored.meta == {"step": 3, "mesh": "2x2"}
    expected = dict(jax.tree_util.tree_leaves_with_path(_tree(3)))
    restored_leaves = dict(jax.tree_util.tree_leaves_with_path(restored.params))
    assert restored_leaves.keys() == expected.keys()
    for path, value in restored_leaves.items():
        np.testing.assert_array_equal(np.asarray(value), np.asarray(expected[path]))
        assert value.dtype == expected[path].dtype


def test_tensorboard_events_land_in_the_bucket(gcs_bucket):
    from clu import metric_writers
    from tensorboard.backend.event_processing import event_file_loader
    from tensorboard.util import tensor_util

    staged = storage.StagedDirectory(gcs_bucket.url("tb/run/tensorboard"))
    writer = metric_writers.SummaryWriter(staged.local)

    def logged() -> dict:
        names = list(gcs_bucket.list_objects("tb/run/tensorboard/"))
        assert len(names) == 1 and "/events.out.tfevents." in names[0], names
        local = os.path.join(os.getcwd(), "events.downloaded")
        with open(local, "wb") as handle:
            handle.write(gcs_bucket.read_object(names[0]))
        values = {}
        for event in event_file_loader.EventFileLoader(local).Load():
            for value in event.summary.value:
                values[(event.step, value.tag)] = float(tensor_util.make_ndarray(value.tensor))
        os.unlink(local)
        return values

    try:
        writer.write_scalars(1, {"loss": 2.5})
        writer.flush()
        assert len(staged.sync()) == 1
        assert logged() == {(1, "loss"): 2.5}
        assert staged.sync() == []  # nothing changed, nothing uploaded
        writer.write_scalars(2, {"loss": 1.25, "accuracy": 0.5})
        writer.flush()
    finally:
        writer.close()
        staged.close()
    assert logged() == {(1, "loss"): 2.5, (2, "loss"): 1.25, (2, "accuracy"): 0.5}
    assert not os.path.exists(staged.local)  # the local staging copy is gone


def test_staged_directory_on_local_disk_is_the_directory_itself(tmp_path):
    with storage.StagedDirectory(tmp_path / "tensorboard") as staged:
        assert staged.local == str(tmp_path / "tensorboard") and os.path.isdir(staged.local)
        (tmp_path / "tensorboard" / "events").write_text("x")
        assert staged.sync() == []
    assert (tmp_path / "tensorboard" / "events").read_text() == "x"


def test_metrics_jsonl_is_rewritten_whole_and_survives_a_resume(gcs_bucket):
    from alexatm_jax.training import metrics

    run = gcs_bucket.url("metrics/run")
    writer = metrics.JsonlWriter(storage.resolve(run) / metrics.METRICS_FILE)
    writer.write_scalars(1, {"loss": 3.0})
    writer.write_scalars(2, {"loss": 2.0})
    resumed = metrics.JsonlWriter(storage.resolve(run) / metrics.METRICS_FILE)  # a second command
    resumed.write_scalars(2, {"loss": 1.9})  # the step after the last checkpoint, repeated
    resumed.write_scalars(3, {"loss": 1.5})
    lines = gcs_bucket.read_object("metrics/run/metrics.jsonl").decode().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [1, 2, 2, 3]
    assert [(r["step"], r["loss"]) for r in metrics.read_metrics(run)] == [(1, 3.0), (2, 1.9), (3, 1.5)]


@pytest.fixture(scope="module")
def local_model(tmp_path_factory):
    """A tiny random model exported to a local model directory (config, params, tokenizer)."""
    import flax.linen as nn
    import jax
    import jax.numpy as jnp

    from alexatm_jax.checkpoints.model_dir import save_model_dir
    from alexatm_jax.data.bundled import bundled_spm_path
    from alexatm_jax.model.config import ModelConfig
    from alexatm_jax.model.transformer import AlexaTMTransformer

    config = ModelConfig(vocab_size=8192, d_model=16, encoder_layers=1, decoder_layers=1, num_heads=2,
                         encoder_ffn_dim=32, decoder_ffn_dim=32, max_position_embeddings=512, dropout_rate=0.0,
                         pad_token_id=0, eos_token_id=1, bos_token_id=3, decoder_start_token_id=0)
    dummy = jnp.ones((1, 4), jnp.int32)
    params = nn.unbox(AlexaTMTransformer(config).init(jax.random.PRNGKey(0), dummy, dummy,
                                                      enable_dropout=False)["params"])
    return str(save_model_dir(tmp_path_factory.mktemp("model") / "model", config, params,
                              tokenizer_path=bundled_spm_path()))


@pytest.fixture(scope="module")
def remote_model(gcs_bucket, local_model):
    """``local_model`` published to the bucket."""
    storage.copy_tree(local_model, gcs_bucket.url("models/tiny"))
    return gcs_bucket.url("models/tiny")


def test_load_reads_a_model_from_the_bucket(gcs_bucket, local_model, remote_model):
    import jax

    import alexatm_jax

    remote = alexatm_jax.load(remote_model)
    local = alexatm_jax.load(local_model)
    assert remote.config == local.config
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(remote.params), jax.device_get(local.params))
    assert remote.tokenize("Hello world") == local.tokenize("Hello world")
    with pytest.raises(FileNotFoundError, match="models/missing"):
        alexatm_jax.load(gcs_bucket.url("models/missing"))


def test_eval_reads_the_model_and_writes_results_in_the_bucket(gcs_bucket, remote_model, capsys):
    from alexatm_jax import cli

    code = cli.main(["eval", "--checkpoint", remote_model, "--task", "udhr_translation", "--param", "src=en,tgt=de",
                     "--shots", "0", "--limit", "2", "--output", gcs_bucket.url("eval/out"), "--no-progress"])
    assert code == 0
    assert f"wrote {gcs_bucket.url('eval/out/results.json')}" in capsys.readouterr().out
    results = json.loads(gcs_bucket.read_object("eval/out/results.json"))
    assert results["checkpoint"] == remote_model and results["runs"][0]["num_examples"] == 2
    # spBLEU tokenised with the model directory's own SentencePiece model, read from the bucket.
    assert "spm:tokenizer.model" in results["runs"][0]["signatures"]["spbleu"]


def _train(model_dir: str, steps: int, env: dict, cwd) -> str:
    """``alexatm-jax train`` of the tiny model on the bundled mixture, checkpoints every 2 steps; its output."""
    command = [sys.executable, "-m", "alexatm_jax.cli", "train", "--gin_file=gin_configs/models/tiny.gin",
               "--gin_file=gin_configs/runs/pretrain.gin", f"--gin.MODEL_DIR={model_dir}",
               f"--gin.TRAIN_STEPS={steps}", "--gin.BATCH_SIZE=2", "--gin.LOG_EVERY_STEPS=1",
               "--gin.TASK_FEATURE_LENGTHS={'inputs': 32, 'targets': 32}", "--gin.CheckpointConfig.every_steps=2",
               # The schedule must not depend on TRAIN_STEPS: the bucket run stops at 4 and goes on to 6.
               "--gin.OptimizerConfig.warmup_steps=2", "--gin.OptimizerConfig.decay_steps=100",
               "--gin.CheckpointConfig.keep=2", "--gin.EvalConfig.every_steps=2", "--gin.EvalConfig.steps=1",
               f"--gin_search_path={os.path.join(os.path.dirname(HERE), 'gin_configs')}"]
    env = dict(env, JAX_PLATFORMS="cpu", PYTHONPATH=os.path.dirname(HERE))
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout + done.stderr


def test_train_writes_the_run_to_the_bucket_and_a_second_command_resumes_from_it(gcs_bucket, tmp_path):
    """The CLI end to end: a run on gs:// (checkpoints, per-process data state, metrics, TensorBoard events,
    config, tokenizer, rules) resumes from the bucket, and its losses equal a local uninterrupted run's."""
    from alexatm_jax.training.metrics import read_metrics

    repo = os.path.dirname(HERE)
    run = gcs_bucket.url("train/run")
    first = _train(run, 4, gcs_bucket.environ(), tmp_path)
    assert "Resumed" not in first
    objects = gcs_bucket.list_objects("train/run/")
    for name in ("config.json", "tokenizer.model", "partitioning.json", "metrics.jsonl"):
        assert f"train/run/{name}" in objects, sorted(objects)
    assert any(n.startswith("train/run/checkpoints/4/") and n.endswith("process_0-of-1.json") for n in objects)
    assert any(n.startswith("train/run/tensorboard/") and "tfevents" in n for n in objects), sorted(objects)

    second = _train(run, 6, gcs_bucket.environ(), tmp_path)
    assert "Resumed from step 4" in second, second
    assert any(n.startswith("train/run/checkpoints/6/") for n in gcs_bucket.list_objects("train/run/"))

    local = str(tmp_path / "local")
    _train(local, 6, os.environ, repo)
    losses = lambda records: {r["step"]: r["loss"] for r in records if "loss" in r}  # noqa: E731
    remote_losses, local_losses = losses(read_metrics(run)), losses(read_metrics(local))
    assert sorted(remote_losses) == list(range(1, 7))
    assert remote_losses == local_losses


if __name__ == "__main__":
    if sys.argv[1:2] == ["save-checkpoints"]:
        _save_checkpoints(sys.argv[2])
    else:
        raise SystemExit(f"usage: {sys.argv[0]} save-checkpoints gs://bucket/dir")
