"""Parity with the AlexaTM PyTorch reference (alexa-teacher-models 1.0.1), the acceptance test of the model.

Random reference models of several shapes are saved in the released checkpoint's format (sharded
``pytorch_model-*.bin`` + index), converted with ``alexatm-jax convert-pytorch`` into both layouts, loaded with
``alexatm_jax.load``, and compared on padded batches: encoder output and logits within 1e-4 (f32), greedy
generation token-identical to the reference's ``generate``, target log-likelihoods within 1e-4.
"""

import json
import shutil

import numpy as np
import pytest

import alexatm_jax
from alexatm_jax import cli
from reference_utils import MAX_NEW_TOKENS, REFERENCE_MODELS

CASES = [(name, scan) for name in sorted(REFERENCE_MODELS) for scan in (False, True)]


@pytest.fixture(scope="module")
def converted(reference_models, tmp_path_factory):
    out = {}
    root = tmp_path_factory.mktemp("converted")
    for name, scan in CASES:
        destination = root / f"{name}_{'scan' if scan else 'noscan'}"
        argv = ["convert-pytorch", str(reference_models[name]["checkpoint"]), str(destination)]
        argv.append("--scan" if scan else "--no-scan")
        assert cli.main(argv) == 0
        out[(name, scan)] = destination
    return out


def test_reference_checkpoints_are_sharded_like_the_release(reference_models):
    for name, built in reference_models.items():
        files = sorted(p.name for p in built["checkpoint"].iterdir())
        assert "pytorch_model.bin.index.json" in files, files
        assert sum(f.startswith("pytorch_model-") for f in files) >= 2, f"{name} is not sharded: {files}"


@pytest.mark.parametrize("name,scan", CASES)
def test_encoder_logits_generate_and_scores_match_reference(name, scan, reference_models, converted):
    built = reference_models[name]
    ref, batch = built["outputs"], built["batch"]
    lm = alexatm_jax.load(converted[(name, scan)])
    assert lm.config.scan_layers is scan
    mask = batch["attention_mask"]

    encoded = lm.encode(batch["input_ids"], attention_mask=mask)
    valid = mask.astype(bool)
    np.testing.assert_allclose(encoded[valid], ref["encoder_output"][valid], atol=1e-4, rtol=0)

    logits = lm.logits(batch["input_ids"], batch["decoder_input_ids"], attention_mask=mask)
    assert logits.shape == ref["logits"].shape
    np.testing.assert_allclose(logits, ref["logits"], atol=1e-4, rtol=0)

    generated = lm.generate(batch["input_ids"], attention_mask=mask, max_new_tokens=MAX_NEW_TOKENS)
    assert int(ref["decoder_start"][0]) == lm.config.decoder_start_token_id
    reference_tokens = ref["generated"]
    # transformers stops once every row has finished, so its output can be shorter; beyond it we emit pad.
    width = reference_tokens.shape[1]
    np.testing.assert_array_equal(generated[:, :width], reference_tokens)
    assert (generated[:, width:] == lm.config.pad_token_id).all()
    produced = (reference_tokens != lm.config.pad_token_id).sum(1)
    assert produced.max() >= 20, f"the comparison must cover at least 20 new tokens, got {produced}"

    scores = lm.score(batch["input_ids"], batch["labels"], attention_mask=mask, target_mask=batch["label_mask"])
    np.testing.assert_allclose(scores, ref["target_logprob"], rtol=1e-5, atol=1e-4)


def test_scan_and_noscan_layouts_hold_the_same_weights(converted):
    a = alexatm_jax.load(converted[("untied", False)]).params
    b = alexatm_jax.load(converted[("untied", True)]).params
    for i in range(2):
        np.testing.assert_array_equal(a["encoder"][f"layers_{i}"]["mlp"]["wi"]["kernel"],
                                      b["encoder"]["layers"]["mlp"]["wi"]["kernel"][i])


def test_conversion_copies_tokenizer_and_refuses_overwrite(reference_models, tmp_path, converted):
    import sentencepiece as spm
    source = tmp_path / "src"
    shutil.copytree(reference_models["untied"]["checkpoint"], source)
    text = tmp_path / "text.txt"
    text.write_text("\n".join(f"sentence number {i} about human rights and freedom" for i in range(200)))
    spm.SentencePieceTrainer.train(input=str(text), model_prefix=str(source / "20b_tokenizer"), vocab_size=40,
                                   model_type="unigram")
    destination = tmp_path / "dst"
    assert cli.main(["convert-pytorch", str(source), str(destination)]) == 0
    assert (destination / "tokenizer.model").read_bytes() == (source / "20b_tokenizer.model").read_bytes()
    assert alexatm_jax.load(destination).tokenizer.encode("human rights")
    assert cli.main(["convert-pytorch", str(source), str(destination)]) == 2  # exists: refuse
    assert cli.main(["convert-pytorch", str(source), str(destination), "--overwrite", "--dtype", "bfloat16"]) == 0
    lm = alexatm_jax.load(destination)
    assert str(lm.params["decoder"]["final_logits_bias"].dtype) == "bfloat16"


def _copy(reference_models, tmp_path, name="untied"):
    source = tmp_path / "src"
    shutil.copytree(reference_models[name]["checkpoint"], source)
    return source


def _convert_error(source, tmp_path, capsys):
    code = cli.main(["convert-pytorch", str(source), str(tmp_path / "out")])
    assert code == 2
    assert not (tmp_path / "out").exists(), "a failed conversion must leave nothing behind"
    return capsys.readouterr().err


def test_shape_mismatch_is_named(reference_models, tmp_path, capsys):
    source = _copy(reference_models, tmp_path)
    config = json.loads((source / "config.json").read_text())
    config["encoder_ffn_dim"] = 72
    (source / "config.json").write_text(json.dumps(config))
    error = _convert_error(source, tmp_path, capsys)
    assert "shape mismatches" in error and "intermediate.dense.weight" in error


def test_missing_and_unexpected_keys_are_named(reference_models, tmp_path, capsys):
    import torch
    source = _copy(reference_models, tmp_path)
    index = json.loads((source / "pytorch_model.bin.index.json").read_text())
    shard = source / index["weight_map"]["model.decoder.layernorm_output.weight"]
    state = torch.load(shard, weights_only=True)
    del state["model.decoder.layernorm_output.weight"]
    state["model.decoder.extra_adapter.weight"] = torch.zeros(3)
    torch.save(state, shard)
    error = _convert_error(source, tmp_path, capsys)
    assert "missing weights for ['decoder/decoder_norm/scale']" in error
    assert "model.decoder.extra_adapter.weight" in error


def test_not_a_checkpoint(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert "config.json is missing" in _convert_error(tmp_path / "empty", tmp_path, capsys)
    (tmp_path / "empty" / "config.json").write_text("{}")
    assert "holds no checkpoint weights" in _convert_error(tmp_path / "empty", tmp_path, capsys)


def test_safetensors_checkpoints_convert_to_the_same_parameters(reference_models, converted, tmp_path):
    """The same reference weights as sharded safetensors + index convert to exactly the same parameters."""
    import torch
    from safetensors.numpy import save_file

    source = _copy(reference_models, tmp_path)
    index = json.loads((source / "pytorch_model.bin.index.json").read_text())
    weight_map = {}
    for number, shard in enumerate(sorted(set(index["weight_map"].values()))):
        state = torch.load(source / shard, weights_only=True)
        name = f"model-{number + 1:05d}.safetensors"
        save_file({k: v.contiguous().numpy() for k, v in state.items()}, str(source / name))
        weight_map.update({k: name for k in state})
        (source / shard).unlink()
    (source / "pytorch_model.bin.index.json").unlink()
    (source / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    destination = tmp_path / "from_safetensors"
    assert cli.main(["convert-pytorch", str(source), str(destination)]) == 0
    import jax
    ours = jax.tree_util.tree_leaves_with_path(alexatm_jax.load(destination).params)
    expected = dict(jax.tree_util.tree_leaves_with_path(alexatm_jax.load(converted[("untied", False)]).params))
    assert len(ours) == len(expected)
    for path, leaf in ours:
        np.testing.assert_array_equal(leaf, expected[path])
