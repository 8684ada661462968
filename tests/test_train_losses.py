"""Losses, schedule, optimiser masks and freezing, microbatching and FLOP counting (one device, fast)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from alexatm_jax import partitioning
from alexatm_jax.model.config import get_preset
from alexatm_jax.models import EncoderDecoderModel
from alexatm_jax.training import flops, losses, optimizer
from alexatm_jax.training import step as step_lib
from alexatm_jax.training.train_state import StateLayout

from test_train_support import CopyBatches


def _logits(seed=0, shape=(2, 5, 11)):
    return jax.random.normal(jax.random.PRNGKey(seed), shape) * 3.0


def test_cross_entropy_matches_optax():
    logits = _logits()
    targets = jax.random.randint(jax.random.PRNGKey(1), logits.shape[:2], 0, logits.shape[-1])
    loss, z = losses.cross_entropy_with_logits(logits, targets)
    np.testing.assert_allclose(loss, optax.softmax_cross_entropy_with_integer_labels(logits, targets), rtol=1e-6)
    np.testing.assert_array_equal(z, 0.0)


@pytest.mark.parametrize("alpha", [0.1, 0.3])
def test_label_smoothing_matches_optax_smooth_labels(alpha):
    logits = _logits(2)
    targets = jax.random.randint(jax.random.PRNGKey(3), logits.shape[:2], 0, logits.shape[-1])
    smoothed = optax.smooth_labels(jax.nn.one_hot(targets, logits.shape[-1]), alpha)
    expected = optax.softmax_cross_entropy(logits, smoothed)
    loss, _ = losses.cross_entropy_with_logits(logits, targets, label_smoothing=alpha)
    np.testing.assert_allclose(loss, expected, rtol=1e-5)


def test_z_loss_and_weighted_sums():
    logits = _logits(4)
    targets = jnp.argmax(logits, -1).at[0, 0].set(0)
    weights = jnp.ones(targets.shape).at[1, 3:].set(0)
    sums = losses.loss_sums(logits, targets, weights, z_loss=1e-2)
    lse = jax.nn.logsumexp(logits, -1)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
    np.testing.assert_allclose(sums.loss, jnp.sum((ce + 1e-2 * lse ** 2) * weights), rtol=1e-5)
    np.testing.assert_allclose(sums.z_loss, jnp.sum(1e-2 * lse ** 2 * weights), rtol=1e-5)
    assert float(sums.weight) == 8.0
    correct = (jnp.argmax(logits, -1) == targets) * weights
    assert float(sums.correct) == float(jnp.sum(correct))


def test_schedule_warmup_decay_floor():
    schedule = optimizer.learning_rate_schedule(1e-4, 5e-6, warmup_steps=10, decay_steps=110)
    assert float(schedule(0)) == 0.0
    np.testing.assert_allclose(float(schedule(5)), 5e-5, rtol=1e-6)
    np.testing.assert_allclose(float(schedule(10)), 1e-4, rtol=1e-6)
    np.testing.assert_allclose(float(schedule(60)), (1e-4 + 5e-6) / 2, rtol=1e-5)
    np.testing.assert_allclose(float(schedule(110)), 5e-6, rtol=1e-5)
    np.testing.assert_allclose(float(schedule(10_000)), 5e-6, rtol=1e-5)
    with pytest.raises(ValueError, match="floor"):
        optimizer.learning_rate_schedule(1e-5, 1e-4)


def _tiny(**changes):
    settings = dict(vocab_size=128, d_model=32, num_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64,
                    pad_token_id=0, eos_token_id=1, decoder_start_token_id=0, bos_token_id=3)
    cfg = get_preset("tiny").replace(**{**settings, **changes})
    return cfg, EncoderDecoderModel(cfg)


def _abstract_params(model):
    return model.abstract_params()


def test_weight_decay_mask_spares_biases_and_norms():
    _, model = _tiny()
    mask = optimizer.weight_decay_mask(_abstract_params(model))
    flat = {"/".join(str(getattr(k, "key", k)) for k in path): v
            for path, v in jax.tree_util.tree_flatten_with_path(mask)[0]}
    assert flat["decoder/final_logits_bias"] is False
    assert flat["encoder/encoder_norm/scale"] is False and flat["encoder/encoder_norm/bias"] is False
    kernels = [k for k in flat if k.endswith("kernel")]
    assert kernels and all(flat[k] for k in kernels)
    assert flat["encoder_token_embedder/embedding"] is True
    biases = [k for k in flat if k.endswith("bias")]
    assert biases and not any(flat[k] for k in biases)


def _layout(model, tx):
    return StateLayout(model, tx, partitioning.Partitioner("data=1", devices=jax.devices()[:1]))


def _batch(layout, batch_size=4, length=16, index=0, vocab=128):
    source = CopyBatches({"inputs": length, "targets": length}, batch_size, token_range=(4, vocab))
    source.restore({"index": index})
    sharding = layout.partitioner.data_sharding
    return {k: jax.device_put(v, sharding) for k, v in next(source).items()}


def test_freeze_encoder_for_first_steps():
    _, model = _tiny(dropout_rate=0.0)
    schedule = optimizer.learning_rate_schedule(1e-2, 1e-3, 0, 10)
    tx = optimizer.make_optimizer(_abstract_params(model), schedule=schedule, freeze_encoder_steps=2)
    layout = _layout(model, tx)
    step = step_lib.make_train_step(layout, schedule, step_lib.StepOptions())
    state = layout.init(jax.random.PRNGKey(0))
    start = jax.tree_util.tree_map(np.asarray, state.params)
    history = []
    for i in range(3):
        state, _ = step(state, _batch(layout, index=i), jax.random.PRNGKey(1))
        history.append(jax.tree_util.tree_map(np.asarray, state.params))
    for snapshot, frozen in zip(history, (True, True, False)):
        enc_same = np.array_equal(snapshot["encoder"]["encoder_norm"]["scale"], start["encoder"]["encoder_norm"]["scale"])
        emb_same = np.array_equal(snapshot["encoder_token_embedder"]["embedding"],
                                  start["encoder_token_embedder"]["embedding"])
        assert enc_same == frozen and emb_same == frozen
        assert not np.array_equal(snapshot["decoder"]["decoder_norm"]["scale"], start["decoder"]["decoder_norm"]["scale"])


def test_microbatches_give_the_full_batch_update_and_nonfinite_is_skipped():
    _, model = _tiny(dropout_rate=0.0)
    schedule = optimizer.learning_rate_schedule(1e-3, 1e-4, 0, 10)
    tx = optimizer.make_optimizer(_abstract_params(model), schedule=schedule)
    layout = _layout(model, tx)
    results = []
    for micro in (1, 4):
        step = step_lib.make_train_step(layout, schedule, step_lib.StepOptions(num_microbatches=micro))
        state, metrics = step(layout.init(jax.random.PRNGKey(0)), _batch(layout), jax.random.PRNGKey(1))
        results.append((metrics, jax.tree_util.tree_map(np.asarray, state.params)))
    (m1, p1), (m4, p4) = results
    np.testing.assert_allclose(float(m1["loss"]), float(m4["loss"]), rtol=1e-6)
    np.testing.assert_allclose(float(m1["grad_norm"]), float(m4["grad_norm"]), rtol=1e-5)
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), p1, p4)

    # A NaN weight makes the loss non-finite: with skip_nonfinite the state is left as it was.
    step = step_lib.make_train_step(layout, schedule, step_lib.StepOptions(skip_nonfinite=True))
    state = layout.init(jax.random.PRNGKey(0))
    poisoned = state.replace(params=jax.tree_util.tree_map(lambda x: x, state.params))
    poisoned.params["decoder"]["final_logits_bias"] = poisoned.params["decoder"]["final_logits_bias"].at[5].set(jnp.nan)
    before = jax.tree_util.tree_map(np.asarray, poisoned.params)
    after, metrics = step(poisoned, _batch(layout), jax.random.PRNGKey(1))
    assert float(metrics["finite"]) == 0.0 and int(after.step) == 1
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_array_equal(a, b), before,
                           jax.tree_util.tree_map(np.asarray, after.params))


def test_flops_matmul_count_agrees_with_the_parameter_tree():
    """The analytic formula's matmul part equals 2 x (kernel parameters x the tokens each is applied to),
    counted from the real parameter tree."""
    cfg, model = _tiny(vocab_size=256)
    params = _abstract_params(model)
    s, t = 24, 16
    total = 0
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        names = [str(getattr(k, "key", k)) for k in path]
        if names[-1] != "kernel":
            continue
        size = int(np.prod(leaf.shape))
        on_encoder_tokens = names[0] == "encoder" or (
            "encoder_decoder_attention" in names and any(n in ("key", "value") for n in names))
        total += 2 * size * (s if on_encoder_tokens else t)
    attention = cfg.encoder_layers * 4 * s * s * cfg.d_model + cfg.decoder_layers * (
        4 * t * t * cfg.d_model + 4 * t * s * cfg.d_model)
    assert flops.forward_flops_per_sequence(cfg, s, t) == pytest.approx(total + attention, rel=1e-12)
    assert flops.train_step_flops(cfg, 3, s, t) == pytest.approx(9 * (total + attention), rel=1e-12)


def test_peak_flops_known_for_the_device_kinds_jax_reports():
    """``device_kind`` strings as JAX reports them (a v5p says "TPU v5", a v5e "TPU v5 lite") all get a peak,
    the two v5 chips different ones; CPUs are measured on this machine, not looked up."""
    kinds = ("TPU v4", "TPU v5", "TPU v5 lite", "TPU v6 lite", "NVIDIA A100-SXM4-80GB", "NVIDIA H100 80GB HBM3",
             "NVIDIA H200")
    peaks = {kind: flops.device_peak_flops(kind) for kind in kinds}
    assert all(peak and peak > 1e13 for peak in peaks.values()), peaks
    assert peaks["TPU v5"] > peaks["TPU v5 lite"]
    assert flops.device_peak_flops("mystery") is None and flops.device_peak_flops("mystery", override=1e9) == 1e9
    cpu = jax.devices("cpu")[0]
    measured = flops.device_peak_flops(cpu, "float32")
    assert measured == flops.measure_cpu_peak_flops("float32") and 1e8 < measured < 1e14
