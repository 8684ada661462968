"""`alexatm-jax export-pytorch`: our models back in the AlexaTM reference's own format, judged by the reference.

Every export is loaded by the reference itself (alexa-teacher-models 1.0.1 on transformers 4.26.1, in its own
environment, one subprocess for the whole module: ``tests/export_reference_worker.py``) with
``AlexaTMSeq2SeqForConditionalGeneration.from_pretrained``, which must report nothing missing, unexpected or
mismatched (it would otherwise silently re-initialise e.g. ``lm_head.weight``). Then:

* round trip: the parity models (PyTorch) -> ``convert-pytorch`` (scanned and unscanned) -> ``export-pytorch``
  give the original tensors bit for bit (same keys, dtypes, bits) and the original config.json;
* a run trained here for a few steps through ``alexatm-jax train`` (scanned layers): the reference's logits are
  within 1e-4 of ours and its greedy tokens are ours;
* a bfloat16 export as sharded ``.bin``: exactly our parameters rounded to bfloat16, and the reference on them
  matches our model on the same rounded parameters;
* bad input is one clear line and leaves nothing behind.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import alexatm_jax
from alexatm_jax import cli
from alexatm_jax.checkpoints import export_pytorch as ex
from alexatm_jax.checkpoints.reference_config import read_reference_config
from alexatm_jax.model.config import ModelConfig
from reference_utils import HERE, MAX_NEW_TOKENS, reference_python

REPO = HERE.parent
# (parity model, scanned layout, --max-shard-size or None for the default single file)
ROUND_TRIPS = [("untied", False, "100KB"), ("untied", True, None), ("shared_tied", True, None),
               ("deep_decoder", False, "60KB")]
TRAIN_STEPS = 12
TEXTS = ["The weather today is", "[CLM] Human rights are universal and", "Le chat"]
ARCHITECTURE = ("vocab_size", "d_model", "encoder_layers", "decoder_layers", "num_heads", "encoder_ffn_dim",
                "decoder_ffn_dim", "max_position_embeddings", "type_vocab_size", "layer_norm_eps", "norm_type",
                "ffn_type", "share_embeddings", "tie_word_embeddings", "pad_token_id", "bos_token_id",
                "eos_token_id", "decoder_start_token_id")


def _case_id(case):
    name, scan, shard = case
    return f"{name}-{'scan' if scan else 'noscan'}-{'sharded' if shard else 'single'}"


# --- fixtures ----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def round_trips(reference_models, tmp_path_factory):
    """case -> (converted model dir, exported dir)."""
    root = tmp_path_factory.mktemp("round_trip")
    out = {}
    for case in ROUND_TRIPS:
        name, scan, shard = case
        converted, exported = root / f"{_case_id(case)}_ours", root / f"{_case_id(case)}_hf"
        assert cli.main(["convert-pytorch", str(reference_models[name]["checkpoint"]), str(converted),
                         "--scan" if scan else "--no-scan"]) == 0
        assert cli.main(["export-pytorch", str(converted), str(exported)]
                        + (["--max-shard-size", shard] if shard else [])) == 0
        out[case] = (converted, exported)
    return out


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny run (scanned layers, the bundled tokenizer and corpus) trained for a few steps by the CLI, its
    default export (float32 safetensors), and a bfloat16 export as sharded .bin."""
    root = tmp_path_factory.mktemp("trained")
    run = root / "run"
    command = [sys.executable, "-c", "import sys; from alexatm_jax.cli import main; sys.exit(main())", "train",
               "--gin_file=gin_configs/models/tiny.gin", "--gin_file=gin_configs/runs/pretrain.gin",
               "--gin_file=gin_configs/runs/demo.gin", f"--gin.MODEL_DIR='{run}'", f"--gin.TRAIN_STEPS={TRAIN_STEPS}",
               "--gin.BATCH_SIZE=4", "--gin.TASK_FEATURE_LENGTHS={'inputs': 32, 'targets': 32}",
               "--gin.ModelConfig.scan_layers=True", "--gin.ModelConfig.d_model=64",
               "--gin.ModelConfig.encoder_ffn_dim=128", "--gin.ModelConfig.decoder_ffn_dim=96",
               "--gin.EvalConfig.every_steps=0"]
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    exported, bf16 = root / "export", root / "export_bf16"
    assert cli.main(["export-pytorch", str(run), str(exported)]) == 0
    assert cli.main(["export-pytorch", str(run), str(bf16), "--dtype", "bfloat16", "--format", "bin",
                     "--max-shard-size", "1MB"]) == 0
    # Our model on the bfloat16 parameters: the export converted back (the .bin reader widens to float32).
    bf16_ours = root / "bf16_ours"
    assert cli.main(["convert-pytorch", str(bf16), str(bf16_ours), "--scan"]) == 0
    return {"run": run, "export": exported, "bf16": bf16, "bf16_ours": bf16_ours}


def _trained_batch(lm) -> dict:
    rows = lm.tokenize(TEXTS)
    width = max(len(r) for r in rows)
    ids = np.full((len(rows), width), lm.config.pad_token_id, dtype=np.int64)
    mask = np.zeros_like(ids)
    for i, row in enumerate(rows):
        ids[i, :len(row)], mask[i, :len(row)] = row, 1
    rng = np.random.RandomState(0)
    decoder = rng.randint(4, 1000, size=(len(rows), 7))
    decoder[:, 0] = lm.config.decoder_start_token_id
    return {"input_ids": ids.tolist(), "attention_mask": mask.tolist(), "decoder_input_ids": decoder.tolist()}


@pytest.fixture(scope="module")
def reference_results(reference_models, round_trips, trained, tmp_path_factory):
    """Every export checked by the reference in one subprocess: name -> (report dict, outputs dict)."""
    root = tmp_path_factory.mktemp("reference_checks")
    checks = {}
    for case, (_, exported) in round_trips.items():
        built = reference_models[case[0]]
        checks[_case_id(case)] = {"destination": str(exported), "original": str(built["checkpoint"]),
                                  "batch": {k: v.tolist() for k, v in built["batch"].items()
                                            if k in ("input_ids", "attention_mask", "decoder_input_ids")}}
    batch = _trained_batch(alexatm_jax.load(trained["run"]))
    checks["trained"] = {"destination": str(trained["export"]), "batch": batch}
    checks["bf16"] = {"destination": str(trained["bf16"]), "batch": batch}
    for name, check in checks.items():
        check.update(max_new_tokens=MAX_NEW_TOKENS, text=TEXTS[1], output_file=str(root / f"{name}.npz"),
                     report_file=str(root / f"{name}.json"))
    job = root / "job.json"
    job.write_text(json.dumps({"checks": list(checks.values())}))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "XLA_", "JAX_"))}
    env.update(TRANSFORMERS_OFFLINE="1", HF_HUB_OFFLINE="1")
    probe = subprocess.run([reference_python(), "-c", "import safetensors"], capture_output=True, env=env)
    assert probe.returncode == 0, ("the reference environment lacks the safetensors package, without which "
                                   "transformers 4.26 cannot read safetensors: add it to `make refenv`")
    done = subprocess.run([reference_python(), str(HERE / "export_reference_worker.py"), str(job)],
                          capture_output=True, text=True, env=env, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-4000:]
    return {name: (json.loads(Path(c["report_file"]).read_text()), dict(np.load(c["output_file"])))
            for name, c in checks.items()}


def _assert_loaded_completely(report):
    assert report["loading_info"] == {"missing_keys": [], "unexpected_keys": [], "mismatched_keys": [],
                                      "error_msgs": []}


def _assert_same_greedy(ours, reference_tokens, pad_id):
    """transformers stops once every row has finished, so its output can be shorter; beyond it we emit pad."""
    width = reference_tokens.shape[1]
    np.testing.assert_array_equal(ours[:, :width], reference_tokens)
    assert (ours[:, width:] == pad_id).all()


def _assert_greedy_is_decisive(lm, batch, generated):
    """Along our greedy path the top two logits differ by far more than the 1e-4 tolerance, so the token
    comparison cannot hinge on float rounding (it tests the weights, not luck)."""
    start = np.full((generated.shape[0], 1), lm.config.decoder_start_token_id)
    logits = lm.logits(batch["input_ids"], np.concatenate([start, generated[:, :-1]], 1),
                       attention_mask=batch["attention_mask"])
    top2 = np.sort(logits, axis=-1)[..., -2:]
    live = np.concatenate([np.ones_like(generated[:, :1], bool),
                           (generated[:, :-1] != lm.config.eos_token_id)
                           & (generated[:, :-1] != lm.config.pad_token_id)], 1)
    margins = (top2[..., 1] - top2[..., 0])[live]
    assert margins.min() > 1e-3, f"greedy path has near-ties (min top-2 margin {margins.min():.2e})"


# --- round trip of the parity models -----------------------------------------------------------------------

@pytest.mark.parametrize("case", ROUND_TRIPS, ids=_case_id)
def test_round_trip_gives_the_original_tensors_and_config(case, reference_models, round_trips, reference_results):
    name, scan, shard = case
    converted, exported = round_trips[case]
    report, outputs = reference_results[_case_id(case)]
    _assert_loaded_completely(report)
    assert report["differences"] == []  # same keys (aliases and position_ids included), dtypes and bits
    files = report["files"]
    if shard:
        assert "model.safetensors.index.json" in files and sum(f.endswith(".safetensors") for f in files) >= 2
        index = json.loads((exported / "model.safetensors.index.json").read_text())
        assert set(index["weight_map"].values()) == {f for f in files if f.endswith(".safetensors")}
    else:
        assert "model.safetensors" in files
    original = json.loads((reference_models[name]["checkpoint"] / "config.json").read_text())
    del original["transformers_version"]
    assert json.loads((exported / "config.json").read_text()) == original

    reference, batch = reference_models[name]["outputs"], reference_models[name]["batch"]
    np.testing.assert_allclose(outputs["logits"], reference["logits"], atol=1e-6, rtol=0)
    np.testing.assert_array_equal(outputs["generated"], reference["generated"])
    lm = alexatm_jax.load(converted)
    assert lm.config.scan_layers is scan
    ours = lm.logits(batch["input_ids"], batch["decoder_input_ids"], attention_mask=batch["attention_mask"])
    np.testing.assert_allclose(outputs["logits"], ours, atol=1e-4, rtol=0)


# --- a run trained here ------------------------------------------------------------------------------------

def test_trained_run_exports_to_what_the_reference_runs_like_ours(trained, reference_results):
    report, outputs = reference_results["trained"]
    _assert_loaded_completely(report)
    lm = alexatm_jax.load(trained["run"])
    assert lm.config.scan_layers
    batch = {k: np.asarray(v) for k, v in _trained_batch(lm).items()}
    ours = lm.logits(batch["input_ids"], batch["decoder_input_ids"], attention_mask=batch["attention_mask"])
    np.testing.assert_allclose(outputs["logits"], ours, atol=1e-4, rtol=0)

    generated = lm.generate(batch["input_ids"], attention_mask=batch["attention_mask"],
                            max_new_tokens=MAX_NEW_TOKENS)
    assert (outputs["decoder_start"] == lm.config.decoder_start_token_id).all()
    _assert_same_greedy(generated, outputs["generated"], lm.config.pad_token_id)
    _assert_greedy_is_decisive(lm, batch, generated)

    # The reference's config class reads our config.json as our architecture; the tokenizer is the run's.
    config = report["config"]
    assert (config["d_model"], config["encoder_layers"], config["decoder_layers"], config["pad_token_id"],
            config["decoder_start_token_id"], config["vocab_size"]) == (
        lm.config.d_model, lm.config.encoder_layers, lm.config.decoder_layers, lm.config.pad_token_id,
        lm.config.decoder_start_token_id, lm.config.vocab_size)
    assert set(report["exported_dtypes"].values()) == {"torch.float32", "torch.int64"}
    assert (trained["export"] / ex.TOKENIZER_FILE).read_bytes() == (trained["run"] / "tokenizer.model").read_bytes()
    assert report["tokenized"] == lm.tokenizer.encode(TEXTS[1])


def test_bfloat16_bin_export_is_our_parameters_rounded(trained, reference_results):
    import jax
    import ml_dtypes

    report, outputs = reference_results["bf16"]
    _assert_loaded_completely(report)
    files = report["files"]
    assert "pytorch_model.bin.index.json" in files and sum(f.endswith(".bin") for f in files) >= 2
    dtypes = report["exported_dtypes"]
    assert dtypes.pop("model.encoder.position_ids") == "torch.int64"
    assert set(dtypes.values()) == {"torch.bfloat16"}
    assert json.loads((trained["bf16"] / "config.json").read_text())["torch_dtype"] == "bfloat16"

    original = alexatm_jax.load(trained["run"]).params
    rounded = alexatm_jax.load(trained["bf16_ours"])
    flat = dict(jax.tree_util.tree_leaves_with_path(rounded.params))
    assert len(flat) == len(jax.tree_util.tree_leaves(original))
    for path, leaf in jax.tree_util.tree_leaves_with_path(original):
        expected = np.asarray(leaf).astype(ml_dtypes.bfloat16).astype(np.float32)
        np.testing.assert_array_equal(np.asarray(flat[path]), expected, err_msg=jax.tree_util.keystr(path))

    batch = {k: np.asarray(v) for k, v in _trained_batch(rounded).items()}
    ours = rounded.logits(batch["input_ids"], batch["decoder_input_ids"], attention_mask=batch["attention_mask"])
    np.testing.assert_allclose(outputs["logits"], ours, atol=1e-4, rtol=0)
    generated = rounded.generate(batch["input_ids"], attention_mask=batch["attention_mask"],
                                 max_new_tokens=MAX_NEW_TOKENS)
    _assert_same_greedy(generated, outputs["generated"], rounded.config.pad_token_id)


# --- the config and the shards, without the reference ------------------------------------------------------

@pytest.mark.parametrize("changes", [
    {}, dict(share_embeddings=True, tie_word_embeddings=True, ffn_type="relu"),
    dict(share_embeddings=False, tie_word_embeddings=True, use_final_logits_bias=False, decoder_start_token_id=0,
         pad_token_id=0, eos_token_id=1, bos_token_id=3, layer_norm_eps=1e-5, dropout_rate=0.2,
         attention_dropout_rate=0.05, type_vocab_size=1),
], ids=["default", "shared-tied-relu", "tied-nobias"])
def test_exported_config_reads_back_as_the_same_architecture(changes):
    cfg = ModelConfig(vocab_size=300, d_model=48, encoder_layers=3, decoder_layers=1, num_heads=6,
                      encoder_ffn_dim=80, decoder_ffn_dim=64, max_position_embeddings=40).replace(**changes)
    exported = ex.reference_config(cfg, "float32")
    back = read_reference_config(exported).config
    assert {f: getattr(back, f) for f in ARCHITECTURE} == {f: getattr(cfg, f) for f in ARCHITECTURE}
    assert (back.dropout_rate, back.attention_dropout_rate) == (cfg.dropout_rate, cfg.attention_dropout_rate)
    assert exported["hidden_dropout_prob"] == cfg.dropout_rate  # the reference's encoder dropout follows ours


def test_shards_are_planned_greedily_and_made_one_shard_at_a_time(tmp_path, monkeypatch):
    made = []

    def tensor(key, nbytes):
        def make():
            made.append(key)
            return np.zeros(nbytes, np.uint8)
        return ex.ReferenceTensor(key, nbytes, make)

    tensors = [tensor(f"t{i}", n) for i, n in enumerate([3, 3, 3, 5, 1, 10, 2])]
    plan = ex.plan_shards(tensors, 6)
    assert [[t.key for t in shard] for shard in plan] == [["t0", "t1"], ["t2"], ["t3", "t4"], ["t5"], ["t6"]]
    assert made == []  # planning makes nothing

    written = []

    def fake_writer(path, arrays):
        # Everything made so far is this shard or already written: never more than one shard in memory.
        assert made == [key for _, keys in written for key in keys] + list(arrays)
        written.append((path.name, list(arrays)))

    monkeypatch.setattr(ex, "_write_safetensors", fake_writer)
    names = ex.write_weights(tmp_path, tensors, "safetensors", 6)
    assert names == [f"model-0000{i}-of-00005.safetensors" for i in range(1, 6)] + ["model.safetensors.index.json"]
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert index["metadata"]["total_size"] == 27
    assert index["weight_map"]["t4"] == "model-00003-of-00005.safetensors"


def test_tied_unshared_head_and_absent_bias_export_as_the_reference_computes():
    """LM head tied to an unshared decoder table: ``lm_head.weight`` is that table ([V, D], not transposed); no
    ``final_logits_bias`` in our model: the reference's buffer is written as zeros (it adds it to the logits)."""
    import jax

    from alexatm_jax.checkpoints.model_dir import abstract_params

    cfg = ModelConfig(vocab_size=50, d_model=8, encoder_layers=1, decoder_layers=1, num_heads=2, encoder_ffn_dim=16,
                      decoder_ffn_dim=16, max_position_embeddings=10, share_embeddings=False,
                      tie_word_embeddings=True, use_final_logits_bias=False)
    rng = np.random.default_rng(0)
    params = jax.tree_util.tree_map(lambda s: rng.standard_normal(s.shape).astype(np.float32), abstract_params(cfg))
    made = {t.key: t.make() for t in ex.reference_tensors(cfg, params, "float32")}
    np.testing.assert_array_equal(made["lm_head.weight"], params["decoder_token_embedder"]["embedding"])
    np.testing.assert_array_equal(made["model.decoder.embed_tokens.weight"],
                                  params["decoder_token_embedder"]["embedding"])
    np.testing.assert_array_equal(made["model.shared.weight"], params["encoder_token_embedder"]["embedding"])
    np.testing.assert_array_equal(made["final_logits_bias"], np.zeros((1, 50), np.float32))
    assert made["model.decoder.layers.0.self_attn.q_proj.weight"].shape == (8, 8)


@pytest.mark.parametrize("text,expected", [("5GB", 5 * 10**9), ("2GiB", 2 * 2**30), ("100KB", 100_000),
                                           ("1.5MB", 1_500_000), ("4096", 4096), (123, 123)])
def test_max_shard_size_units(text, expected):
    assert ex.parse_size(text) == expected


def test_float16_overflow_is_named(round_trips):
    import jax

    converted, _ = round_trips[("untied", False, "100KB")]
    lm = alexatm_jax.load(converted)
    params = jax.tree_util.tree_map(np.asarray, lm.params)
    params["decoder"]["layers_1"]["mlp"]["wo"]["kernel"] = params["decoder"]["layers_1"]["mlp"]["wo"]["kernel"] * 1e6
    by_key = {t.key: t for t in ex.reference_tensors(lm.config, params, "float16")}
    assert by_key["model.decoder.layers.0.fc2.weight"].make().dtype == np.float16
    with pytest.raises(ex.ExportError, match=r"model\.decoder\.layers\.1\.fc2\.weight overflows float16"):
        by_key["model.decoder.layers.1.fc2.weight"].make()


# --- bad input ---------------------------------------------------------------------------------------------

def _export_error(capsys, *argv) -> str:
    assert cli.main(["export-pytorch", *map(str, argv)]) == 2
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    return captured.err


def test_bad_sources_are_named(tmp_path, capsys, reference_models):
    destination = tmp_path / "out"
    assert "No model directory at" in _export_error(capsys, tmp_path / "missing", destination)
    (tmp_path / "empty").mkdir()
    assert "config.json is missing" in _export_error(capsys, tmp_path / "empty", destination)
    error = _export_error(capsys, reference_models["untied"]["checkpoint"], destination)
    assert "is already a PyTorch/Hugging Face checkpoint" in error and "convert-pytorch" in error
    assert not destination.exists()


def test_unexportable_architecture_is_refused(round_trips, tmp_path, capsys):
    import shutil

    source = tmp_path / "rms"
    shutil.copytree(round_trips[("untied", False, "100KB")][0], source)
    config = json.loads((source / "config.json").read_text())
    config.update(norm_type="rmsnorm", ffn_type="gated_gelu")
    (source / "config.json").write_text(json.dumps(config))
    error = _export_error(capsys, source, tmp_path / "out")
    assert "cannot be exported" in error and "norm_type='rmsnorm'" in error and "ffn_type='gated_gelu'" in error
    assert not (tmp_path / "out").exists()


def test_destination_rules_and_atomic_writes(round_trips, tmp_path, capsys, monkeypatch):
    source = round_trips[("untied", False, "100KB")][0]
    destination = tmp_path / "out"
    destination.mkdir()
    (destination / "keep.txt").write_text("mine")
    assert "already exists; pass --overwrite" in _export_error(capsys, source, destination)
    assert "is not a size" in _export_error(capsys, source, tmp_path / "x", "--max-shard-size", "lots")
    assert "export writes a local directory" in _export_error(capsys, source, "gs://bucket/model")
    assert "is the source directory" in _export_error(capsys, source, source, "--overwrite")

    # A failure half way (here: the second shard) leaves the old destination as it was and no temporary files.
    real_writer, calls = ex._write_safetensors, []

    def failing_writer(path, arrays):
        calls.append(path.name)
        if len(calls) == 2:
            raise OSError("disk full")
        real_writer(path, arrays)

    monkeypatch.setattr(ex, "_write_safetensors", failing_writer)
    with pytest.raises(OSError, match="disk full"):
        ex.export(source, destination, max_shard_size="100KB", overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert [p.name for p in destination.iterdir()] == ["keep.txt"]
    monkeypatch.undo()

    assert cli.main(["export-pytorch", str(source), str(destination), "--overwrite"]) == 0
    assert sorted(p.name for p in destination.iterdir()) == ["config.json", "model.safetensors"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
