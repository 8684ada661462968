"""The Flax encoder-decoder: masking of packed examples, layouts, ablations, norms, logical axes, errors."""

import json
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alexatm_jax.model import layers as L
from alexatm_jax.model.config import PRESETS, REMAT_POLICIES, ModelConfig, get_preset
from alexatm_jax.model.transformer import AlexaTMTransformer

TINY = PRESETS["tiny"].replace(vocab_size=97, d_model=32, num_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64,
                               max_position_embeddings=64, dropout_rate=0.0, pad_token_id=0, eos_token_id=1,
                               decoder_start_token_id=0, scan_layers=False)


def init(config, enc_len=10, dec_len=6, seed=0):
    model = AlexaTMTransformer(config)
    tokens = jnp.ones((2, enc_len), jnp.int32)
    variables = model.init(jax.random.PRNGKey(seed), tokens, jnp.ones((2, dec_len), jnp.int32), enable_dropout=False)
    return model, variables


def random_tokens(shape, seed, vocab=97):
    return jnp.asarray(np.random.RandomState(seed).randint(3, vocab, size=shape), jnp.int32)


def test_packed_examples_never_see_each_other():
    """Logits of two examples packed in one row equal the logits of each example alone."""
    model, variables = init(TINY)
    params = nn.unbox(variables["params"])
    a_in, b_in = random_tokens((1, 5), 1), random_tokens((1, 4), 2)
    a_out, b_out = random_tokens((1, 3), 3), random_tokens((1, 4), 4)
    pad = lambda x, n: jnp.pad(x, ((0, 0), (0, n - x.shape[1])))  # noqa: E731
    packed = dict(
        encoder_input_tokens=pad(jnp.concatenate([a_in, b_in], 1), 11),
        encoder_segment_ids=jnp.asarray([[1] * 5 + [2] * 4 + [0] * 2]),
        encoder_positions=jnp.asarray([list(range(5)) + list(range(4)) + [0, 0]]),
        decoder_input_tokens=pad(jnp.concatenate([a_out, b_out], 1), 8),
        decoder_segment_ids=jnp.asarray([[1] * 3 + [2] * 4 + [0]]),
        decoder_positions=jnp.asarray([list(range(3)) + list(range(4)) + [0]]))
    packed_logits = model.apply({"params": params}, enable_dropout=False, **packed)
    alone_a = model.apply({"params": params}, a_in, a_out, enable_dropout=False)
    alone_b = model.apply({"params": params}, b_in, b_out, enable_dropout=False)
    np.testing.assert_allclose(packed_logits[0, :3], alone_a[0], atol=2e-5)
    np.testing.assert_allclose(packed_logits[0, 3:7], alone_b[0], atol=2e-5)


def test_encoder_padding_does_not_change_real_positions():
    model, variables = init(TINY)
    params = nn.unbox(variables["params"])
    tokens = random_tokens((1, 6), 5)
    padded = jnp.pad(tokens, ((0, 0), (0, 4)))  # pad id 0
    dec = random_tokens((1, 5), 6)
    short = model.apply({"params": params}, tokens, dec, enable_dropout=False)
    long = model.apply({"params": params}, padded, dec, enable_dropout=False)
    np.testing.assert_allclose(short, long, atol=2e-5)


@pytest.mark.parametrize("remat", REMAT_POLICIES)  # every policy the config accepts runs
def test_scanned_layout_and_remat_compute_the_same_function(remat):
    model, variables = init(TINY)
    params = nn.unbox(variables["params"])
    scanned_cfg = TINY.replace(scan_layers=True, remat_policy=remat)
    scanned_model, scanned_vars = init(scanned_cfg)
    # Stack the unscanned layers into the scanned layout.
    scanned = jax.tree_util.tree_map(lambda x: x, nn.unbox(scanned_vars["params"]))
    for stack, n in (("encoder", TINY.encoder_layers), ("decoder", TINY.decoder_layers)):
        scanned[stack]["layers"] = jax.tree_util.tree_map(
            lambda *xs: jnp.stack(xs), *[params[stack][f"layers_{i}"] for i in range(n)])
        for key in params[stack]:
            if not key.startswith("layers"):
                scanned[stack][key] = params[stack][key]
    for key in params:
        if key not in ("encoder", "decoder"):
            scanned[key] = params[key]
    enc, dec = random_tokens((2, 9), 7), random_tokens((2, 5), 8)
    expected = model.apply({"params": params}, enc, dec, enable_dropout=False)
    got = scanned_model.apply({"params": scanned}, enc, dec, enable_dropout=False)
    np.testing.assert_allclose(got, expected, atol=2e-5)

    # Gradients too: remat changes memory, never the math.
    def loss(p, m):
        return m.apply({"params": p}, enc, dec, enable_dropout=False).mean()
    g1 = jax.grad(loss)(params, model)["encoder"]["layers_1"]["mlp"]["wo"]["kernel"]
    g2 = jax.grad(loss)(scanned, scanned_model)["encoder"]["layers"]["mlp"]["wo"]["kernel"][1]
    np.testing.assert_allclose(g2, g1, atol=1e-6)


def test_incremental_decoding_with_cache_equals_full_forward():
    for scan in (False, True):
        cfg = TINY.replace(scan_layers=scan)
        model, variables = init(cfg)
        params = nn.unbox(variables["params"])
        enc, dec = random_tokens((2, 7), 9), random_tokens((2, 6), 10)
        full = model.apply({"params": params}, enc, dec, enable_dropout=False)
        encoded = model.apply({"params": params}, enc, enable_dropout=False, method=model.encode)
        cache = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), encoded, enc, jnp.zeros((2, 8), jnp.int32),
                                                  decode=True, enable_dropout=False, method=model.decode))["cache"]
        cache = jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), cache)
        pieces = []
        # A 2-token prefill, then one token at a time (cross-attention K/V only on the first call).
        for start, stop in ((0, 2), (2, 3), (3, 4), (4, 5), (5, 6)):
            logits, mutated = model.apply({"params": params, "cache": cache}, encoded if start == 0 else None, enc,
                                          dec[:, start:stop], decode=True, enable_dropout=False, method=model.decode,
                                          mutable=["cache"])
            cache = mutated["cache"]
            pieces.append(logits)
        np.testing.assert_allclose(jnp.concatenate(pieces, 1), full, atol=2e-5)


def test_norms_match_outside_definitions():
    x = jax.random.normal(jax.random.PRNGKey(0), (3, 5, 16)) * 3 + 1
    def run(norm_type):
        cfg = TINY.replace(d_model=16, norm_type=norm_type, layer_norm_eps=1e-6)
        module = L.Norm(cfg)
        variables = module.init(jax.random.PRNGKey(1), x)
        return module.apply(variables, x)
    # Textbook LayerNorm equals flax's own nn.LayerNorm.
    reference = nn.LayerNorm(epsilon=1e-6)
    np.testing.assert_allclose(run("layernorm"), reference.apply(reference.init(jax.random.PRNGKey(2), x), x),
                               atol=1e-5)
    # RMSNorm equals flax's nn.RMSNorm.
    rms = nn.RMSNorm(epsilon=1e-6)
    np.testing.assert_allclose(run("rmsnorm"), rms.apply(rms.init(jax.random.PRNGKey(2), x), x), atol=1e-5)
    # The reference's LayerNorm divides the centred input by the uncentred second moment.
    xn = np.asarray(x, np.float64)
    expected = (xn - xn.mean(-1, keepdims=True)) / np.sqrt((xn ** 2).mean(-1, keepdims=True) + 1e-6)
    np.testing.assert_allclose(run("alexatm_layernorm"), expected, atol=1e-5)
    assert not np.allclose(run("alexatm_layernorm"), run("layernorm"), atol=1e-3)


def test_ablation_switches_change_the_parameter_tree():
    def names(cfg):
        _, variables = init(cfg)
        return {"/".join(str(getattr(k, "key", k)) for k in path)
                for path, _ in jax.tree_util.tree_flatten_with_path(nn.unbox(variables["params"]))[0]}
    untied = names(TINY)
    assert "decoder_token_embedder/embedding" in untied and "decoder/logits_dense/kernel" in untied
    tied = names(TINY.replace(share_embeddings=True, tie_word_embeddings=True))
    assert "decoder_token_embedder/embedding" not in tied and "decoder/logits_dense/kernel" not in tied
    gated = names(TINY.replace(ffn_type="gated_gelu"))
    assert "encoder/layers_0/mlp/wi_0/kernel" in gated and "encoder/layers_0/mlp/wi/kernel" not in gated
    rms = names(TINY.replace(norm_type="rmsnorm"))
    assert "encoder/encoder_norm/bias" not in rms and "encoder/encoder_norm/scale" in rms
    no_bias = names(TINY.replace(use_final_logits_bias=False))
    assert "decoder/final_logits_bias" not in no_bias
    for cfg in (TINY.replace(share_embeddings=True, tie_word_embeddings=True), TINY.replace(ffn_type="gated_gelu"),
                TINY.replace(norm_type="rmsnorm")):
        model, variables = init(cfg)
        out = model.apply(variables, random_tokens((2, 4), 1), random_tokens((2, 3), 2), enable_dropout=False)
        assert np.isfinite(np.asarray(out)).all()


def test_tied_head_uses_the_decoder_table():
    cfg = TINY.replace(tie_word_embeddings=True)
    model, variables = init(cfg)
    params = nn.unbox(variables["params"])
    enc, dec = random_tokens((1, 4), 1), random_tokens((1, 3), 2)
    before = model.apply({"params": params}, enc, dec, enable_dropout=False)
    params["decoder_token_embedder"]["embedding"] = params["decoder_token_embedder"]["embedding"].at[50].add(1.0)
    after = model.apply({"params": params}, enc, dec, enable_dropout=False)
    changed = np.abs(np.asarray(after - before)).max(axis=(0, 1))
    assert changed[50] > changed[np.arange(97) != 50].max()


def test_every_parameter_has_logical_axis_names():
    for cfg in (TINY, TINY.replace(scan_layers=True)):
        _, variables = init(cfg)
        specs = nn.get_partition_spec(variables["params"])
        shapes = nn.unbox(variables["params"])
        for (path, spec), (_, leaf) in zip(jax.tree_util.tree_flatten_with_path(specs)[0],
                                           jax.tree_util.tree_flatten_with_path(shapes)[0]):
            assert len(spec) == leaf.ndim and all(isinstance(n, str) for n in spec), (path, spec)
            if cfg.scan_layers and "layers" in [getattr(p, "key", None) for p in path]:
                assert spec[0] == "layers"


def test_dropout_is_active_only_when_enabled():
    cfg = TINY.replace(dropout_rate=0.5)
    model, variables = init(cfg)
    enc, dec = random_tokens((2, 5), 1), random_tokens((2, 4), 2)
    a = model.apply(variables, enc, dec, enable_dropout=False)
    b = model.apply(variables, enc, dec, enable_dropout=False)
    np.testing.assert_array_equal(a, b)
    c = model.apply(variables, enc, dec, enable_dropout=True, rngs={"dropout": jax.random.PRNGKey(3)})
    assert not np.allclose(a, c)


def test_bfloat16_compute_with_float32_params():
    cfg = TINY.replace(dtype="bfloat16", param_dtype="float32")
    model, variables = init(cfg)
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree_util.tree_leaves(nn.unbox(variables["params"])))
    out = model.apply(variables, random_tokens((2, 5), 1), random_tokens((2, 4), 2), enable_dropout=False)
    assert out.dtype == jnp.float32 and np.isfinite(np.asarray(out)).all()


def test_bad_inputs_and_configs_give_clear_errors():
    model, variables = init(TINY)
    with pytest.raises(ValueError, match="has 64 positions"):
        model.apply(variables, random_tokens((1, 65), 1), random_tokens((1, 3), 2), enable_dropout=False)
    with pytest.raises(ValueError, match="not divisible by num_heads"):
        TINY.replace(d_model=30)
    with pytest.raises(ValueError, match="norm_type"):
        TINY.replace(norm_type="batchnorm")
    with pytest.raises(ValueError, match="Unknown model preset 'huge'"):
        get_preset("huge")
    with pytest.raises(ValueError, match=r"Unknown ModelConfig field\(s\) \['d_ff'\]"):
        ModelConfig.from_dict({"d_ff": 3})


def test_config_round_trips_through_json():
    for cfg in PRESETS.values():
        assert ModelConfig.from_json(cfg.to_json()) == cfg


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "alexatm_jax.cli", *args], capture_output=True, text=True,
                          timeout=300)


def test_describe_20b_matches_the_paper_within_one_percent():
    result = run_cli("describe", "--model", "20b")
    assert result.returncode == 0, result.stderr
    counts = json.loads(result.stdout.strip().splitlines()[-1])["parameters"]
    assert abs(counts["total"] - 19.75e9) / 19.75e9 < 0.01
    assert counts["encoder_layers"] > counts["decoder_layers"] > counts["lm_head"] > 0
    xl = json.loads(run_cli("describe", "--model", "xl").stdout.strip().splitlines()[-1])["parameters"]["total"]
    assert 2.5e9 < xl < 3.5e9


def test_cli_help_is_clear():
    top = run_cli("--help")
    assert top.returncode == 0 and "describe" in top.stdout and "convert-pytorch" in top.stdout
    for command in ("describe", "convert-pytorch"):
        sub = run_cli(command, "--help")
        assert sub.returncode == 0 and "usage: alexatm-jax " + command in sub.stdout
    bad = run_cli("describe", "--model", "huge")
    assert bad.returncode == 2 and "Unknown model preset 'huge'" in bad.stderr
