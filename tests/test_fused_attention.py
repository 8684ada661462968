"""Attention implementations (model/attention.py): the plain path is the original formula bit for bit (to
one rounding step for a single decoding query, where XLA lowers the products differently); the fused
path (jax.nn.dot_product_attention, XLA lowering on CPU) agrees with it on every mask the model builds, in
the forward pass and in gradients, for one attention call, the whole model and greedy decoding; the config
switch is validated; the GPU benchmark script runs (on CPU, when told to)."""

import json
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alexatm_jax.checkpoints.layer_init import FREE_FIELDS
from alexatm_jax.decoding import generate
from alexatm_jax.model import attention
from alexatm_jax.model import layers as L
from alexatm_jax.model.config import ATTENTION_IMPLS, ModelConfig, get_preset
from alexatm_jax.models import EncoderDecoderModel
from alexatm_jax.training import losses

ROOT = Path(__file__).resolve().parent.parent
B, H, K = 2, 4, 16


def old_formula(query, key, value, mask, dtype, dropout_fn=None):
    """MultiHeadAttention's attention as it was before model/attention.py, copied verbatim."""
    head_dim = query.shape[-1]
    scores = jnp.einsum("blhk,bshk->bhls", query, key, preferred_element_type=jnp.float32)
    scores = scores / jnp.sqrt(jnp.float32(head_dim))
    scores = scores + L.attention_bias(mask, jnp.float32)
    probs = jax.nn.softmax(scores, axis=-1).astype(dtype)
    if dropout_fn is not None:
        probs = dropout_fn(probs)
    return jnp.einsum("bhls,bshk->blhk", probs, value)


def qkv(length, keys, dtype=jnp.float32, seed=0):
    rq, rk, rv = jax.random.split(jax.random.PRNGKey(seed), 3)
    return (jax.random.normal(rq, (B, length, H, K), dtype), jax.random.normal(rk, (B, keys, H, K), dtype),
            jax.random.normal(rv, (B, keys, H, K), dtype))


def seg(*rows):
    return jnp.asarray(rows, jnp.int32)


# name -> (query length, key length, boolean mask [B, 1, L, S]), each one the model builds.
MASKS = {
    "padding": (8, 8, L.make_self_attention_mask(seg([1] * 5 + [0] * 3, [1] * 3 + [0] * 5),
                                                 seg([1] * 5 + [0] * 3, [1] * 3 + [0] * 5), causal=False)),
    "packed": (8, 8, L.make_self_attention_mask(seg([1, 1, 1, 2, 2, 2, 2, 0], [1, 1, 2, 2, 3, 3, 3, 3]),
                                                seg([1, 1, 1, 2, 2, 2, 2, 0], [1, 1, 2, 2, 3, 3, 3, 3]),
                                                causal=False)),
    "causal": (8, 8, L.make_self_attention_mask(jnp.ones((B, 8), jnp.int32), jnp.ones((B, 8), jnp.int32),
                                                causal=True)),
    "packed_causal": (8, 8, L.make_self_attention_mask(seg([1, 1, 1, 2, 2, 2, 0, 0], [1, 2, 2, 2, 2, 3, 3, 3]),
                                                       seg([1, 1, 1, 2, 2, 2, 0, 0], [1, 2, 2, 2, 2, 3, 3, 3]),
                                                       causal=True)),
    # Cross-attention, decoder rows of 6 over encoder rows of 8; the second batch row is all padding: its
    # queries see no key at all (fully masked rows).
    "cross_fully_masked_rows": (6, 8, L.make_self_attention_mask(seg([1, 1, 1, 2, 2, 0], [0] * 6),
                                                                 seg([1, 1, 1, 1, 2, 2, 2, 0], [0] * 8),
                                                                 causal=False)),
    # A decoding step over a KV cache of max length 10 holding 4 tokens: 1 new query, positions >= 5 unwritten.
    "decode_cache": (1, 10, (jnp.arange(10)[None, None, None, :] <= jnp.full((B, 1, 1, 1), 4))),
}


def visible_rows(mask):
    """[B, L] 1.0 where the query row sees at least one key: the rows whose outputs the model uses."""
    return jnp.any(mask[:, 0], axis=-1).astype(jnp.float32)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("name", sorted(MASKS))
def test_plain_path_is_the_old_formula_bit_for_bit(name, dtype):
    length, keys, mask = MASKS[name]
    q, k, v = qkv(length, keys, dtype)
    new = jax.jit(lambda q, k, v: attention.dot_product_attention(q, k, v, mask, implementation="plain",
                                                                  dtype=dtype))(q, k, v)
    old = jax.jit(lambda q, k, v: old_formula(q, k, v, mask, dtype))(q, k, v)
    assert new.dtype == old.dtype and new.shape == (B, length, H, K)
    if length == 1 and dtype == jnp.float32:
        # One query row: XLA:CPU lowers the two formulas' products to different kernels, which may round the
        # last bit differently (decoding stays token-identical: tests/test_fast_paths.py's golden tokens).
        np.testing.assert_allclose(np.asarray(new), np.asarray(old), rtol=2e-6, atol=1e-7)
    else:
        np.testing.assert_array_equal(np.asarray(new, np.float32), np.asarray(old, np.float32))


def test_dropout_takes_the_plain_path_even_when_fused_is_asked():
    length, keys, mask = MASKS["packed"]
    q, k, v = qkv(length, keys)
    drop = lambda p: p * (jnp.arange(p.shape[-1]) % 3 != 0) * 1.5  # noqa: E731  (a deterministic "dropout")
    new = attention.dot_product_attention(q, k, v, mask, implementation="fused", dtype=jnp.float32, dropout_fn=drop)
    np.testing.assert_array_equal(new, old_formula(q, k, v, mask, jnp.float32, drop))


@pytest.mark.parametrize("dtype,tol", [(jnp.float32, 1e-5), (jnp.bfloat16, 3e-2)])
@pytest.mark.parametrize("name", sorted(MASKS))
def test_fused_agrees_with_plain_forward_and_gradients(name, dtype, tol):
    length, keys, mask = MASKS[name]
    q, k, v = qkv(length, keys, dtype, seed=1)
    # Weights of the outputs, zero on fully masked query rows: the model never uses their outputs, and only
    # the plain path sends gradient through their scores (see model/attention.py).
    weights = jax.random.normal(jax.random.PRNGKey(2), (B, length, H, K)) * visible_rows(mask)[:, :, None, None]

    def run(implementation, q, k, v):
        def loss(q, k, v):
            out = attention.dot_product_attention(q, k, v, mask, implementation=implementation, dtype=dtype,
                                                  fused_backend="xla" if implementation == "fused" else None)
            return jnp.sum(out.astype(jnp.float32) * weights), out
        (_, out), grads = jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True)(q, k, v)
        return out, grads

    # One compilation for both (this test compares within a tolerance, not bit for bit).
    (plain_out, plain_grads), (fused_out, fused_grads) = jax.jit(
        lambda q, k, v: (run("plain", q, k, v), run("fused", q, k, v)))(q, k, v)
    assert fused_out.dtype == plain_out.dtype == dtype
    # Forward: every row, the fully masked ones included (both give the uniform average of the values).
    np.testing.assert_allclose(np.asarray(fused_out, np.float32), np.asarray(plain_out, np.float32),
                               atol=tol, rtol=tol)
    for which, g_fused, g_plain in zip("qkv", fused_grads, plain_grads):
        scale = float(jnp.max(jnp.abs(g_plain.astype(jnp.float32))))
        np.testing.assert_allclose(np.asarray(g_fused, np.float32), np.asarray(g_plain, np.float32),
                                   atol=tol * max(scale, 1.0), rtol=tol, err_msg=f"d/d{which}")


def test_auto_resolves_by_backend_and_bad_values_are_refused():
    assert attention.resolve_implementation("auto", backend="cpu") == "plain"
    assert attention.resolve_implementation("auto", backend="gpu") == "fused"
    assert attention.resolve_implementation("auto", backend="tpu") == "fused"
    assert attention.resolve_implementation("fused", dropout=True) == "plain"
    assert attention.resolve_implementation("plain", backend="gpu") == "plain"
    with pytest.raises(ValueError, match="'flash'"):
        attention.resolve_implementation("flash")
    # Off GPU, and for float32 anywhere, the fused path uses XLA's lowering.
    q = jax.ShapeDtypeStruct((B, 8, H, 64), jnp.bfloat16)
    assert attention.fused_backend_for(q, q, jnp.bfloat16) == ("xla" if jax.default_backend() != "gpu" else "cudnn")
    assert attention.fused_backend_for(q, q, jnp.float32) == "xla"


def test_config_field_is_validated_and_free():
    assert ModelConfig().attention_impl == "auto" and ATTENTION_IMPLS == ("auto", "plain", "fused")
    for good in ATTENTION_IMPLS:
        assert ModelConfig(attention_impl=good).attention_impl == good
    with pytest.raises(ValueError, match="attention_impl='flash'"):
        ModelConfig(attention_impl="flash")
    assert "attention_impl" in FREE_FIELDS  # a performance switch: teacher and student may differ in it
    assert ModelConfig.from_json(ModelConfig(attention_impl="fused").to_json()).attention_impl == "fused"


def _packed_batch(vocab, seed=0):
    rng = np.random.RandomState(seed)
    enc_seg = np.array([[1] * 9 + [2] * 5 + [0] * 2, [1] * 12 + [0] * 4], np.int32)
    dec_seg = np.array([[1] * 4 + [2] * 5 + [0] * 3, [1] * 7 + [0] * 5], np.int32)

    def positions(segments):
        out = np.zeros_like(segments)
        for row in range(segments.shape[0]):
            for s in set(segments[row]) - {0}:
                where = np.flatnonzero(segments[row] == s)
                out[row, where] = np.arange(len(where))
        return out

    enc = rng.randint(3, vocab, size=enc_seg.shape).astype(np.int32) * (enc_seg > 0)
    tgt = rng.randint(3, vocab, size=dec_seg.shape).astype(np.int32) * (dec_seg > 0)
    dec_in = np.where(positions(dec_seg) == 0, 2, np.roll(tgt, 1, axis=1)) * (dec_seg > 0)
    return dict(encoder_input_tokens=enc, encoder_segment_ids=enc_seg, encoder_positions=positions(enc_seg),
                decoder_input_tokens=dec_in.astype(np.int32), decoder_target_tokens=tgt,
                decoder_loss_weights=(dec_seg > 0).astype(np.float32), decoder_segment_ids=dec_seg,
                decoder_positions=positions(dec_seg))


def test_tiny_model_logits_and_gradients_agree():
    config = get_preset("tiny").replace(dropout_rate=0.0)
    plain, fused = (EncoderDecoderModel(config.replace(attention_impl=impl)) for impl in ("plain", "fused"))
    params = jax.jit(plain.init_params)(jax.random.PRNGKey(0))
    batch = _packed_batch(config.vocab_size)

    def logits_and_grads(model):
        def loss(p):  # model.loss_fn, keeping the logits
            logits = model.logits(p, batch)
            sums = losses.loss_sums(logits, batch["decoder_target_tokens"], batch["decoder_loss_weights"])
            return sums.loss, logits
        grads, logits = jax.jit(jax.grad(loss, has_aux=True))(params)
        return logits, grads

    plain_logits, plain_grads = logits_and_grads(plain)
    fused_logits, fused_grads = logits_and_grads(fused)
    np.testing.assert_allclose(fused_logits, plain_logits, atol=1e-5, rtol=1e-5)
    flat_plain, _ = jax.tree_util.tree_flatten_with_path(plain_grads)
    overall = max(float(jnp.max(jnp.abs(g))) for g in jax.tree_util.tree_leaves(plain_grads))
    for (path, g_plain), g_fused in zip(flat_plain, jax.tree_util.tree_leaves(fused_grads)):
        name = jax.tree_util.keystr(path)
        if "['key']['bias']" in name:
            # Zero in exact arithmetic (q . b_k shifts all of a query's scores alike; softmax ignores it):
            # both paths leave rounding noise there, which is checked to be noise, not compared.
            for g in (g_plain, g_fused):
                assert float(jnp.max(jnp.abs(g))) < 1e-6 * overall, name
            continue
        scale = max(float(jnp.max(jnp.abs(g_plain))), 1e-6)
        np.testing.assert_allclose(g_fused, g_plain, atol=1e-4 * scale, rtol=1e-3,
                                   err_msg=jax.tree_util.keystr(path))


def test_greedy_decoding_is_token_identical():
    # A large init_std makes the random model's tokens depend strongly on its inputs (as in test_decoding).
    config = ModelConfig(vocab_size=48, d_model=32, encoder_layers=2, decoder_layers=2, num_heads=4,
                         encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=40, dropout_rate=0.0,
                         init_std=0.3, eos_token_id=47)
    params = jax.jit(EncoderDecoderModel(config).init_params)(jax.random.PRNGKey(3))
    tokens = np.random.RandomState(4).randint(3, 47, size=(3, 9)).astype(np.int32)
    tokens[1, 5:] = tokens[2, 3:] = config.pad_token_id
    out = {impl: generate(config.replace(attention_impl=impl), params, tokens, max_new_tokens=12)
           for impl in ("plain", "fused")}
    assert out["plain"].shape == (3, 12)
    assert len(set(out["plain"].ravel().tolist())) > 3  # not a degenerate constant output
    np.testing.assert_array_equal(out["fused"], out["plain"])


def test_gpu_benchmark_script_runs_on_cpu_when_allowed(tmp_path):
    script = ROOT / "benchmarks" / "gpu_train_step.py"
    env_cmd = [sys.executable, str(script)]
    if jax.default_backend() == "cpu":
        refused = subprocess.run(env_cmd, capture_output=True, text=True, timeout=120, cwd=ROOT)
        assert refused.returncode == 0 and "no GPU/TPU: nothing measured" in refused.stdout
    done = subprocess.run(env_cmd + ["--allow-cpu", "--out", str(tmp_path)], capture_output=True, text=True,
                          timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads((tmp_path / "gpu_train_step.json").read_text())
    assert (tmp_path / "gpu_train_step.md").is_file()
    runs = {run["attention_impl"]: run for run in result["runs"]}
    assert set(runs) == {"plain", "fused"} and result["machine"]["backend"] == "cpu"
    for run in runs.values():
        assert run["status"] == "ok" and run["preset"] == "tiny" and run["step_seconds"] > 0
        assert run["model_flops_per_step"] > 0 and run["xla_flops_per_step"] > 0
