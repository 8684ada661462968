"""The fast paths compute what the plain ones do: the scanned layer stacks (the default layout) against the
unrolled ones on the same weights, decoding with scanned weights (which unrolls them), the transposed decoding
caches, and the argmax of greedy decoding. Golden tokens were produced by the code before these changes
(commit fe96d88), so the decoded outputs are also checked against what the project gave before."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import flax.linen as nn
import pytest

from alexatm_jax.decoding import generate
from alexatm_jax.decoding.search import first_argmax
from alexatm_jax.model import param_layout
from alexatm_jax.model.config import ModelConfig
from alexatm_jax.model.transformer import AlexaTMTransformer
from alexatm_jax.training import losses

UNROLLED = ModelConfig(vocab_size=64, d_model=32, encoder_layers=2, decoder_layers=3, num_heads=4,
                       encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=48, dropout_rate=0.0,
                       init_std=0.3, scan_layers=False)
SCANNED = UNROLLED.replace(scan_layers=True)
TOKENS = np.array([[28, 19, 30, 20, 58, 16, 15, 36, 10, 21], [27, 48, 31, 51, 35, 48, 1, 1, 1, 1],
                   [4, 13, 40, 1, 1, 1, 1, 1, 1, 1]], np.int32)
# generate(UNROLLED, params of PRNGKey(7), TOKENS, max_new_tokens=9[, num_beams=3]) at fe96d88.
GOLDEN_GREEDY = [[24, 1, 15, 42, 15, 16, 16, 33, 16], [22, 30, 30, 59, 15, 59, 30, 59, 59],
                 [24, 24, 24, 24, 24, 24, 24, 24, 24]]
GOLDEN_BEAM = [[24, 1, 30, 42, 15, 16, 2, 1, 1], [63, 30, 59, 59, 15, 59, 30, 59, 59],
               [24, 24, 30, 24, 24, 24, 24, 24, 24]]


def _stacked(params, config):
    """Unrolled parameters -> the scanned layout (the inverse of param_layout.unrolled_params)."""
    params = dict(params)
    for side in ("encoder", "decoder"):
        tree = dict(params[side])
        count = getattr(config, f"{side}_layers")
        layers = [tree.pop(f"layers_{i}") for i in range(count)]
        tree["layers"] = jax.tree_util.tree_map(lambda *leaves: jnp.stack(leaves), *layers)
        params[side] = tree
    return params


@pytest.fixture(scope="module")
def weights():
    dummy = jnp.ones((1, 4), jnp.int32)
    unrolled = nn.unbox(AlexaTMTransformer(UNROLLED).init(jax.random.PRNGKey(7), dummy, dummy,
                                                          enable_dropout=False)["params"])
    return unrolled, _stacked(unrolled, UNROLLED)


def test_default_layout_is_scanned():
    assert ModelConfig().scan_layers is True


def test_unrolled_params_inverts_stacking(weights):
    unrolled, scanned = weights
    back = param_layout.unrolled_params(scanned, SCANNED)
    assert jax.tree_util.tree_structure(back) == jax.tree_util.tree_structure(unrolled)
    for a, b in zip(jax.tree_util.tree_leaves(back), jax.tree_util.tree_leaves(unrolled)):
        np.testing.assert_array_equal(a, b)
    assert param_layout.unrolled_params(unrolled, UNROLLED) is unrolled


def test_decoding_tokens_are_what_they_were(weights):
    unrolled, scanned = weights
    for config, params in ((UNROLLED, unrolled), (SCANNED, scanned)):
        np.testing.assert_array_equal(generate(config, params, TOKENS, max_new_tokens=9), GOLDEN_GREEDY)
        np.testing.assert_array_equal(generate(config, params, TOKENS, max_new_tokens=9, num_beams=3), GOLDEN_BEAM)


def _loss_and_grads(config, params, batch):
    model = AlexaTMTransformer(config)

    def loss(p):
        logits = model.apply({"params": p}, batch["inputs"], batch["decoder_inputs"], enable_dropout=False)
        sums = losses.loss_sums(logits, batch["targets"], batch["weights"])
        return sums.loss / sums.weight, logits
    return jax.jit(jax.value_and_grad(loss, has_aux=True))(params)


def test_scanned_and_unrolled_layers_compute_the_same(weights):
    unrolled, scanned = weights
    rng = np.random.RandomState(0)
    targets = rng.randint(3, 64, size=(3, 7)).astype(np.int32)
    batch = {"inputs": TOKENS, "targets": targets, "weights": np.ones((3, 7), np.float32),
             "decoder_inputs": np.concatenate([np.full((3, 1), 2, np.int32), targets[:, :-1]], axis=1)}
    (loss_u, logits_u), grads_u = _loss_and_grads(UNROLLED, unrolled, batch)
    (loss_s, logits_s), grads_s = _loss_and_grads(SCANNED, scanned, batch)
    np.testing.assert_allclose(logits_s, logits_u, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(loss_s, loss_u, rtol=1e-6)
    grads_s = param_layout.unrolled_params(grads_s, SCANNED)
    for path, a in jax.tree_util.tree_flatten_with_path(grads_u)[0]:
        b = grads_s
        for key in path:
            b = b[key.key]
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-6, err_msg=jax.tree_util.keystr(path))


@pytest.mark.parametrize("rows_per_example", [1, 3])
def test_decoding_caches_are_stored_transposed(rows_per_example):
    """Self-attention keys [B, H, K, L] and values [B, H, L, K]: the layouts the attention products read without
    a copy. Cross-attention values [B, H, S, K]; its keys [B, H, S, K] with one decoder row per example
    (greedy) and [B, H, K, S] with several (beams sharing their example's encoder keys)."""
    model = AlexaTMTransformer(UNROLLED)
    encoded = jnp.zeros((2, 5, 32))
    rows = 2 * rows_per_example
    shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), encoded, None, jnp.zeros((rows, 6), jnp.int32),
                                               encoder_segment_ids=jnp.ones((2, 5), jnp.int32), decode=True,
                                               enable_dropout=False, method=model.decode))["cache"]
    layer = shapes["decoder"]["layers_0"]
    assert layer["self_attention"]["cached_key"].shape == (rows, 4, 8, 6)
    assert layer["self_attention"]["cached_value"].shape == (rows, 4, 6, 8)
    assert layer["encoder_decoder_attention"]["cross_key"].shape == ((2, 4, 5, 8) if rows_per_example == 1
                                                                     else (2, 4, 8, 5))
    assert layer["encoder_decoder_attention"]["cross_value"].shape == (2, 4, 5, 8)


@pytest.mark.parametrize("case", ["random", "ties", "nan", "all_minus_inf", "one_column"])
def test_first_argmax_is_numpy_argmax(case):
    rng = np.random.RandomState(3)
    logits = rng.randn(6, 1 if case == "one_column" else 3001).astype(np.float32)
    if case == "ties":
        logits = np.round(logits)  # many equal maxima: the first one wins
    if case == "nan":
        logits[2, 17], logits[2, 900], logits[4, 0] = np.nan, np.nan, np.nan
    if case == "all_minus_inf":
        logits[1] = -np.inf
    np.testing.assert_array_equal(jax.jit(first_argmax)(logits), np.argmax(logits, axis=-1))


# generate(...) at fe96d88 for UNROLLED with a tied LM head (tie_word_embeddings=True), by share_embeddings:
# decoding now reads the head through an untied transposed copy (param_layout.untied_head).
GOLDEN_TIED = {
    True: ([[32, 32, 32, 32, 32, 32, 32, 25, 25], [32, 32, 32, 32, 32, 32, 32, 17, 25],
            [32, 32, 32, 32, 32, 32, 25, 25, 25]],
           [[32, 32, 32, 32, 32, 32, 32, 25, 25], [32, 32, 32, 32, 32, 17, 17, 17, 17],
            [32, 32, 32, 32, 32, 32, 25, 25, 25]]),
    False: ([[16, 16, 16, 16, 16, 16, 16, 16, 16], [15, 5, 16, 16, 21, 21, 21, 16, 16],
             [5, 16, 16, 40, 40, 40, 40, 41, 41]],
            [[16, 16, 16, 16, 16, 16, 16, 16, 16], [15, 5, 16, 16, 21, 21, 21, 16, 16],
             [14, 61, 16, 61, 16, 16, 16, 16, 41]]),
}


@pytest.mark.parametrize("share", [True, False])
def test_tied_head_decodes_what_it_did(share):
    config = UNROLLED.replace(tie_word_embeddings=True, share_embeddings=share)
    dummy = jnp.ones((1, 4), jnp.int32)
    params = nn.unbox(AlexaTMTransformer(config).init(jax.random.PRNGKey(7), dummy, dummy,
                                                      enable_dropout=False)["params"])
    tokens = np.random.RandomState(11).randint(3, 64, size=(3, 10)).astype(np.int32)
    tokens[1, 6:] = 1
    greedy, beam = GOLDEN_TIED[share]
    np.testing.assert_array_equal(generate(config, params, tokens, max_new_tokens=9), greedy)
    np.testing.assert_array_equal(generate(config, params, tokens, max_new_tokens=9, num_beams=3), beam)
    untied, untied_config = param_layout.untied_head(params, config)
    assert not untied_config.tie_word_embeddings and untied_config.share_embeddings == share
    dec_in = np.full((3, 4), 2, np.int32)
    np.testing.assert_allclose(
        AlexaTMTransformer(untied_config).apply({"params": untied}, tokens, dec_in, enable_dropout=False),
        AlexaTMTransformer(config).apply({"params": params}, tokens, dec_in, enable_dropout=False),
        rtol=1e-5, atol=1e-5)


def test_generate_converts_the_layout_once_per_parameter_set(weights):
    import gc

    from alexatm_jax import inference
    from alexatm_jax.models import DecodingSettings, EncoderDecoderModel

    _, scanned = weights
    runner = inference.InferenceRunner(EncoderDecoderModel(SCANNED), inference.default_partitioner())
    conversions = []
    convert = runner._to_decoding_layout
    runner.__dict__["_to_decoding_layout"] = lambda p: conversions.append(1) or convert(p)
    params = runner.place_params(scanned)
    segments = (TOKENS != 1).astype(np.int32)
    greedy, beam = DecodingSettings(max_new_tokens=9), DecodingSettings(max_new_tokens=9, num_beams=3)
    for _ in range(2):
        np.testing.assert_array_equal(runner.generate(params, TOKENS, segments, greedy)[0], GOLDEN_GREEDY)
        np.testing.assert_array_equal(runner.generate(params, TOKENS, segments, beam)[0], GOLDEN_BEAM)
    assert len(conversions) == 1
    # The in-jit conversion (model.predict_batch, as training-time evaluation calls it) decodes the same.
    batch = {"encoder_input_tokens": jnp.asarray(TOKENS), "encoder_segment_ids": jnp.asarray(segments)}
    out, _ = jax.jit(lambda p, b: runner.model.predict_batch(p, b, settings=beam))(params, batch)
    np.testing.assert_array_equal(out, GOLDEN_BEAM)
    # Other arrays (equal values) convert again; freeing the parameters frees the converted copy.
    other = jax.tree_util.tree_map(jnp.copy, params)
    runner.generate(other, TOKENS, segments, greedy)
    assert len(conversions) == 2 and runner._decoding_params_cache is not None
    del other
    gc.collect()
    assert runner._decoding_params_cache is None


def test_large_models_convert_inside_every_generate_call(weights, monkeypatch):
    from alexatm_jax import inference
    from alexatm_jax.models import DecodingSettings, EncoderDecoderModel

    monkeypatch.setattr(inference, "DECODING_PARAMS_MAX_BYTES", 1024)  # this model counts as large
    _, scanned = weights
    runner = inference.InferenceRunner(EncoderDecoderModel(SCANNED), inference.default_partitioner())
    params = runner.place_params(scanned)
    out, _ = runner.generate(params, TOKENS, (TOKENS != 1).astype(np.int32), DecodingSettings(max_new_tokens=9))
    np.testing.assert_array_equal(out, GOLDEN_GREEDY)
    assert runner._decoding_params_cache is None and "_to_decoding_layout" not in runner.__dict__


def test_beams_share_one_row_of_cross_attention_keys():
    from alexatm_jax.model import layers as L

    rng = np.random.RandomState(3)
    beams, length, heads, head_dim, keys = 3, 1, 4, 8, 7
    query = jnp.asarray(rng.randn(2 * beams, length, heads, head_dim), jnp.float32)
    key, value = (jnp.asarray(rng.randn(2, keys, heads, head_dim), jnp.float32) for _ in range(2))
    segments = jnp.asarray([[1] * 7, [1] * 4 + [0] * 3], jnp.int32)
    mask = L.make_self_attention_mask(jnp.ones((2, length), jnp.int32), segments, causal=False)
    attend = functools.partial(L.dot_product_attention, implementation="plain")
    grouped = L._grouped_cross_attention(attend, query, key, value, mask)
    repeated = attend(query, jnp.repeat(key, beams, 0), jnp.repeat(value, beams, 0), jnp.repeat(mask, beams, 0))
    np.testing.assert_allclose(grouped, repeated, rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="multiple"):
        L._grouped_cross_attention(attend, query[:5], key, value, mask)
