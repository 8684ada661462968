"""Building blocks of the encoder-decoder: norms, projections, attention with a KV cache, feed-forward.

Every parameter is created with logical axis names (the T5X vocabulary: ``vocab``, ``embed``, ``mlp``,
``heads``, ``kv``, ``layers``...), and the main activations carry logical sharding constraints, so that a
set of logical-axis rules alone decides how the model is laid out on a device mesh.

Shapes in docstrings use: B batch, L query length, S key length, D d_model (``embed``), H heads, K head
dim (``kv``), F feed-forward width (``mlp``), V vocabulary.
"""

from __future__ import annotations

import functools
from typing import Callable, Optional

import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name
import flax.linen as nn

from alexatm_jax.model.attention import dot_product_attention
from alexatm_jax.model.config import ModelConfig

Array = jax.Array

# Logical names of activations (see alexatm_jax.partitioning for the rules that map them to the mesh).
ACT_EMBED = ("batch", "length", "embed")
ACT_HEADS = ("batch", "length", "heads", "kv")
ACT_MLP = ("batch", "length", "mlp")
ACT_VOCAB = ("batch", "length", "vocab")


def dtype_of(name: str):
    return jnp.dtype(name)


def normal_init(std: float, names: tuple):
    return nn.with_logical_partitioning(nn.initializers.normal(stddev=std), names)


def zeros_init(names: tuple):
    return nn.with_logical_partitioning(nn.initializers.zeros_init(), names)


def ones_init(names: tuple):
    return nn.with_logical_partitioning(nn.initializers.ones_init(), names)


class Norm(nn.Module):
    """Normalisation over the last (``embed``) axis: [..., D] -> [..., D].

    ``alexatm_layernorm`` is the reference implementation's LayerNorm, reproduced on purpose: it divides
    the centred input by sqrt(mean(x**2) + eps), the *uncentred* second moment, not the variance. The
    released weights were trained with it, so exact parity needs it. ``layernorm`` is the textbook one and
    ``rmsnorm`` has no centring and no bias. Statistics are computed in float32 whatever the compute dtype.
    """

    config: ModelConfig

    @nn.compact
    def __call__(self, x: Array) -> Array:
        cfg = self.config
        param_dtype = dtype_of(cfg.param_dtype)
        features = x.shape[-1]
        scale = self.param("scale", ones_init(("embed",)), (features,), param_dtype)
        x32 = x.astype(jnp.float32)
        if cfg.norm_type == "rmsnorm":
            y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + cfg.layer_norm_eps)
            return (y * scale.astype(jnp.float32)).astype(dtype_of(cfg.dtype))
        mean = jnp.mean(x32, axis=-1, keepdims=True)
        if cfg.norm_type == "alexatm_layernorm":
            second_moment = jnp.mean(x32 * x32, axis=-1, keepdims=True)
        else:
            second_moment = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
        y = (x32 - mean) * jax.lax.rsqrt(second_moment + cfg.layer_norm_eps)
        bias = self.param("bias", zeros_init(("embed",)), (features,), param_dtype)
        y = y * scale.astype(jnp.float32) + bias.astype(jnp.float32)
        return y.astype(dtype_of(cfg.dtype))


class Embed(nn.Module):
    """A lookup table [num, D] with logical axes ``(table_axis, 'embed')``: ids [...] -> [..., D]."""

    num_embeddings: int
    config: ModelConfig
    table_axis: str = "vocab"

    def setup(self):
        cfg = self.config
        self.embedding = self.param(
            "embedding", normal_init(cfg.init_std, (self.table_axis, "embed")),
            (self.num_embeddings, cfg.d_model), dtype_of(cfg.param_dtype))

    def __call__(self, ids: Array) -> Array:
        # Gather the fsdp-sharded `embed` axis before the lookup (FSDP's just-in-time all-gather); looking
        # rows up in the sharded table makes XLA replicate the activations to reshard them by batch.
        table = nn.with_logical_constraint(self.embedding, (self.table_axis, None))
        return jnp.take(table, ids, axis=0).astype(dtype_of(self.config.dtype))

    def attend(self, x: Array) -> Array:
        """Tied output projection: [..., D] -> [..., num] (x times the table's transpose)."""
        return jnp.einsum("...d,vd->...v", x, self.embedding.astype(x.dtype))


class Dense(nn.Module):
    """A projection contracting ``axis`` of x with a kernel of shape ``x.shape[axis] + features``.

    Hand-written instead of ``nn.DenseGeneral`` because flax 0.12's DenseGeneral initialises multi-axis
    kernels through a flattened 2-D shape, which breaks logical partitioning metadata (a 3-axis name tuple on
    a 2-D array) as soon as a mesh and logical-axis rules are active.
    """

    config: ModelConfig
    features: tuple
    kernel_axes: tuple
    bias_axes: Optional[tuple] = None  # None: no bias
    axis: tuple = (-1,)

    @nn.compact
    def __call__(self, x: Array) -> Array:
        cfg = self.config
        axis = tuple(a % x.ndim for a in self.axis)
        kernel_shape = tuple(x.shape[a] for a in axis) + tuple(self.features)
        kernel = self.param("kernel", normal_init(cfg.init_std, self.kernel_axes), kernel_shape,
                            dtype_of(cfg.param_dtype))
        dtype = dtype_of(cfg.dtype)
        y = jax.lax.dot_general(x.astype(dtype), kernel.astype(dtype),
                                ((axis, tuple(range(len(axis)))), ((), ())))
        if self.bias_axes is not None:
            bias = self.param("bias", zeros_init(self.bias_axes), tuple(self.features), dtype_of(cfg.param_dtype))
            y = y + bias.astype(dtype)
        return y


def dense(config: ModelConfig, features, kernel_axes: tuple, bias_axes: tuple, axis=-1, name=None):
    """A biased projection whose kernel and bias carry logical axis names."""
    features = tuple(features) if isinstance(features, (tuple, list)) else (features,)
    axis = tuple(axis) if isinstance(axis, (tuple, list)) else (axis,)
    return Dense(config, features, kernel_axes, bias_axes, axis, name=name)


def attention_bias(mask: Array, dtype) -> Array:
    """Boolean mask [B, 1, L, S] (True = may attend) -> additive bias (0 or the dtype's minimum)."""
    return jnp.where(mask, 0.0, jnp.finfo(dtype).min).astype(dtype)


def make_self_attention_mask(query_segments: Array, key_segments: Array, causal: bool,
                             query_positions: Optional[Array] = None,
                             key_positions: Optional[Array] = None) -> Array:
    """[B, L], [B, S] segment ids (0 = padding) -> boolean mask [B, 1, L, S].

    A key is visible when it is not padding and belongs to the query's segment (packed examples never see
    each other). Padding queries may attend to any real key of the row (harmless: their outputs are never
    used), which keeps their softmax well defined. ``causal`` adds key position <= query position.
    """
    key_valid = key_segments[:, None, None, :] > 0
    same_segment = query_segments[:, None, :, None] == key_segments[:, None, None, :]
    query_is_pad = (query_segments == 0)[:, None, :, None]
    mask = key_valid & (same_segment | query_is_pad)
    if causal:
        if query_positions is None:
            query_positions = jnp.arange(query_segments.shape[1])[None, :]
        if key_positions is None:
            key_positions = jnp.arange(key_segments.shape[1])[None, :]
        mask = mask & (key_positions[:, None, None, :] <= query_positions[:, None, :, None])
    return mask


class MultiHeadAttention(nn.Module):
    """Multi-head dot-product attention with biased q/k/v/out projections.

    In ``decode`` mode a self-attention layer keeps a KV cache (keys and values plus an index) and takes any
    number of new query tokens per call; a cross-attention layer computes the keys and values of the encoder
    output once, on the call that passes ``kv_inputs``, and reuses them afterwards. Caches are stored in the
    layouts the score and context products read: keys [B, H, K, max_len], values [B, H, max_len, K]. Stored
    as [B, max_len, H, K], every decoding step re-transposed every layer's caches (on CPU that was over half
    the time of a step). Only the storage changes; the attention is computed the same.

    The cross-attention keys depend on how many query rows read each cache row (``_cross_key_layout``):
    [B, H, K, S] for beam search (the beams' queries make the scores a small matrix product, fastest with the
    keys' K before S), [B, H, S, K] for one query row per example (greedy, sampling: the scores are
    matrix-vector products, 1.8x faster when each key's K values are contiguous; a greedy step at d_model 512
    takes 5% less).
    """

    config: ModelConfig
    is_cross_attention: bool = False
    deterministic: bool = True
    decode: bool = False

    @nn.compact
    def __call__(self, x: Array, kv_inputs: Optional[Array], mask: Array) -> Array:
        """x [B, L, D]; kv_inputs [B, S, D] or None (self-attention, or cached cross-attention);
        mask [B, 1, L, S] boolean (for cached self-attention: [B, 1, L, max_len]). Returns [B, L, D]."""
        cfg = self.config
        heads, head_dim = cfg.num_heads, cfg.head_dim
        project = functools.partial(dense, cfg, (heads, head_dim), ("embed", "heads", "kv"), ("heads", "kv"))
        query = project(name="query")(x)
        query = nn.with_logical_constraint(query, ACT_HEADS)

        if self.is_cross_attention:
            key, value = self._cross_keys_values(project, x, kv_inputs)
        else:
            key = project(name="key")(x)
            value = project(name="value")(x)
            if self.decode:
                key, value = self._update_self_cache(key, value)
        key = nn.with_logical_constraint(key, ACT_HEADS)
        value = nn.with_logical_constraint(value, ACT_HEADS)

        # model/attention.py: the hand-written attention (scores and softmax in float32) or the fused op.
        dropout_fn = None  # attention dropout takes the plain path whatever attention_impl says
        if cfg.attention_dropout_rate > 0 and not self.deterministic:
            dropout_fn = functools.partial(nn.Dropout(cfg.attention_dropout_rate), deterministic=False)
        attend = functools.partial(dot_product_attention, implementation=cfg.attention_impl,
                                   dtype=dtype_of(cfg.dtype), dropout_fn=dropout_fn)
        if self.is_cross_attention and query.shape[0] != key.shape[0]:
            context = _grouped_cross_attention(attend, query, key, value, mask)
        else:
            context = attend(query, key, value, mask)
        context = nn.with_logical_constraint(context, ACT_HEADS)
        out = dense(cfg, cfg.d_model, ("heads", "kv", "embed"), ("embed",), axis=(-2, -1), name="out")(context)
        # Named so that remat_policy='save_attention_out' can keep it and recompute only the cheaper rest.
        out = checkpoint_name(out, "attention_out")
        return nn.with_logical_constraint(out, ACT_EMBED)

    def _cross_keys_values(self, project, x, kv_inputs):
        """x [B * G, L, D] (G query rows per example, e.g. beams), kv_inputs [B, S, D] or None -> keys, values
        [B, S, H, K]; in decode mode cached on the call with ``kv_inputs`` and read from the cache afterwards."""
        if not self.decode:
            return project(name="key")(kv_inputs), project(name="value")(kv_inputs)
        if kv_inputs is not None:
            key, value = project(name="key")(kv_inputs), project(name="value")(kv_inputs)
            key_layout = _cross_key_layout(x.shape[0], key.shape[0])
            # The barrier keeps XLA from moving these transposes back into the decoding loop: the cross cache
            # never changes there, and XLA otherwise carries it untransposed and transposes it every step.
            stored_key, stored_value = jax.lax.optimization_barrier(
                (_stored_key(key, key_layout), _stored_value(value)))
            self.variable("cache", "cross_key", lambda: stored_key).value = stored_key
            self.variable("cache", "cross_value", lambda: stored_value).value = stored_value
            return key, value
        if not self.has_variable("cache", "cross_key"):
            raise ValueError("Cross-attention in decode mode needs the encoder output on the first call "
                             "(it computes the keys/values once and caches them); got none and no cache.")
        stored_key = self.get_variable("cache", "cross_key")
        return (_read_key(stored_key, _cross_key_layout(x.shape[0], stored_key.shape[0])),
                _read_value(self.get_variable("cache", "cross_value")))

    def _update_self_cache(self, key, value):
        """key, value [B, L, H, K] of the new tokens -> the whole cache's [B, max_len, H, K] (read through a
        transpose of the stored layouts, which XLA folds into the products that consume them)."""
        initialised = self.has_variable("cache", "cached_key")
        cached_key = self.variable("cache", "cached_key", jnp.zeros, _stored_key(key).shape, key.dtype)
        cached_value = self.variable("cache", "cached_value", jnp.zeros, _stored_value(value).shape, value.dtype)
        cache_index = self.variable("cache", "cache_index", lambda: jnp.array(0, dtype=jnp.int32))
        if not initialised:
            # Cache creation (model.init with decode=True): shapes only, plain attention this call.
            return key, value
        index = cache_index.value
        new_tokens = key.shape[1]
        cached_key.value = jax.lax.dynamic_update_slice(
            cached_key.value, _stored_key(key).astype(cached_key.value.dtype), (0, 0, 0, index))
        cached_value.value = jax.lax.dynamic_update_slice(
            cached_value.value, _stored_value(value).astype(cached_value.value.dtype), (0, 0, index, 0))
        cache_index.value = index + new_tokens
        return _read_key(cached_key.value), _read_value(cached_value.value)


def _grouped_cross_attention(attend, query: Array, key: Array, value: Array, mask: Array) -> Array:
    """Cross-attention of G query rows per key row: query [B * G, L, H, K] (row b * G + g, e.g. beam g of
    example b), key/value [B, S, H, K], mask [B, 1, L, S] -> context [B * G, L, H, K].

    Beam search caches the encoder's keys/values once per example, not once per beam: the G beams of an
    example attend to the same keys, so they are folded into the query length ([B, G * L, H, K]) and the
    cache is read once for all of them, instead of being repeated G times (G times the bytes every step)."""
    rows, length = query.shape[:2]
    batch = key.shape[0]
    if rows % batch:
        raise ValueError(f"cross-attention got {rows} query rows for {batch} rows of keys/values; the query "
                         f"rows must be a multiple (beams of each example, in order)")
    group = rows // batch
    folded = query.reshape((batch, group * length) + query.shape[2:])
    mask = jnp.broadcast_to(mask[:, :, None], (batch, mask.shape[1], group) + mask.shape[2:])
    mask = mask.reshape((batch, mask.shape[1], group * length, mask.shape[-1]))
    context = attend(folded, key, value, mask)
    return context.reshape(query.shape[:2] + context.shape[2:])


KEYS_LAST, KEY_DIM_LAST = "keys_last", "key_dim_last"


def _cross_key_layout(query_rows: int, key_rows: int) -> str:
    """The cross-attention key cache's layout for ``query_rows`` decoder rows reading ``key_rows`` cached
    rows: KEYS_LAST [B, H, K, S] when several query rows share a cache row (beams), else KEY_DIM_LAST
    [B, H, S, K]. Both the call that fills the cache and the calls that read it derive it from the same
    shapes, so they always agree."""
    return KEYS_LAST if query_rows != key_rows else KEY_DIM_LAST


def _stored_key(key: Array, layout: str = KEYS_LAST) -> Array:
    """Keys [B, L, H, K] -> their cache layout: [B, H, K, L] (KEYS_LAST: the contraction axis K before the
    keys) or the values' [B, H, L, K] (KEY_DIM_LAST)."""
    return jnp.transpose(key, (0, 2, 3, 1)) if layout == KEYS_LAST else _stored_value(key)


def _read_key(stored: Array, layout: str = KEYS_LAST) -> Array:
    """A key cache in ``layout`` -> [B, L, H, K], as the attention reads keys."""
    return jnp.transpose(stored, (0, 3, 1, 2)) if layout == KEYS_LAST else _read_value(stored)


def _stored_value(value: Array) -> Array:
    """Values [B, L, H, K] -> [B, H, L, K], their cache layout."""
    return jnp.swapaxes(value, 1, 2)


def _read_value(stored: Array) -> Array:
    """A value cache [B, H, L, K] -> [B, L, H, K]."""
    return jnp.swapaxes(stored, 1, 2)


class MlpBlock(nn.Module):
    """Feed-forward: [B, L, D] -> [B, L, D] through F hidden units (GeLU, gated GeLU or ReLU)."""

    config: ModelConfig
    hidden_dim: int
    deterministic: bool = True

    @nn.compact
    def __call__(self, x: Array) -> Array:
        cfg = self.config
        activation: Callable = (jax.nn.relu if cfg.ffn_type == "relu"
                                else functools.partial(jax.nn.gelu, approximate=False))
        if cfg.ffn_type == "gated_gelu":
            gate = dense(cfg, self.hidden_dim, ("embed", "mlp"), ("mlp",), name="wi_0")(x)
            linear = dense(cfg, self.hidden_dim, ("embed", "mlp"), ("mlp",), name="wi_1")(x)
            hidden = activation(gate) * linear
        else:
            hidden = activation(dense(cfg, self.hidden_dim, ("embed", "mlp"), ("mlp",), name="wi")(x))
        hidden = nn.with_logical_constraint(hidden, ACT_MLP)
        out = dense(cfg, cfg.d_model, ("mlp", "embed"), ("embed",), name="wo")(hidden)
        return nn.with_logical_constraint(out, ACT_EMBED)
