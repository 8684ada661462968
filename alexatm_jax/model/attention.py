"""Dot-product attention of the multi-head attention layer: the hand-written ("plain") computation and the
"fused" one through ``jax.nn.dot_product_attention`` (cuDNN flash attention on NVIDIA GPUs when it can take
the case, XLA's own lowering otherwise).

Both compute ``softmax(q k^T / sqrt(K) + bias(mask)) v`` per head, the softmax in float32. They differ in
rounding only, and in one place: a query row whose mask is all False (a row of pure padding) gets the
uniform average of the values from both, but the plain path sends gradient through that row's scores (the
mask is an additive bias there) and the fused one does not (its mask is a select). Such rows' outputs are
never used by the model (zero loss weight, masked as keys), so the model's gradients are the same.

Shapes: B batch, L query length, S key length (for a decoding self-attention cache, its max length), H heads,
K head dim. Logical axes of query/key/value and of the result: ("batch", "length", "heads", "kv").
"""

from __future__ import annotations

from typing import Callable, Optional

import jax
import jax.numpy as jnp

from alexatm_jax.model.config import ATTENTION_IMPLS as IMPLEMENTATIONS

Array = jax.Array

FUSED_BACKENDS = ("xla", "cudnn")


def resolve_implementation(implementation: str, *, dropout: bool = False, backend: Optional[str] = None) -> str:
    """``"auto"``/``"plain"``/``"fused"`` -> the path actually taken, ``"plain"`` or ``"fused"``.

    ``"auto"`` is fused on accelerators and plain on CPU, where the fused op (XLA's lowering there) was not
    faster: whole-model forward + backward on 2 CPU cores, median fused / plain time 1.035 for the tiny
    preset (batch 8, 128 + 64 tokens) and 1.01 for small (batch 4, 256 + 128 tokens). Attention dropout
    (``dropout=True``) always takes the plain path: ``jax.nn.dot_product_attention`` has no dropout on the
    probabilities (cuDNN's kernel has one, but JAX's public function does not expose it)."""
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"attention implementation {implementation!r} is not one of {IMPLEMENTATIONS}")
    if dropout:
        return "plain"
    if implementation == "auto":
        backend = jax.default_backend() if backend is None else backend
        return "plain" if backend == "cpu" else "fused"
    return implementation


def dot_product_attention(query: Array, key: Array, value: Array, mask: Array, *, implementation: str = "auto",
                          dtype=None, dropout_fn: Optional[Callable[[Array], Array]] = None,
                          fused_backend: Optional[str] = None) -> Array:
    """Multi-head attention of ``query`` over ``key``/``value`` -> context [B, L, H, K].

    Args:
      query: [B, L, H, K]; key, value: [B, S, H, K] (logical axes batch, length, heads, kv), in ``dtype``.
      mask: boolean, broadcastable to [B, 1, L, S]: True where a query may attend to a key (for a decoding
        self-attention cache, S is the cache's max length and positions not yet written are False).
      implementation: ``"plain"``, ``"fused"`` or ``"auto"`` (see ``resolve_implementation``).
      dtype: compute dtype (the probabilities are cast to it before the weighted sum of the values);
        default: ``query.dtype``.
      dropout_fn: dropout on the attention probabilities [B, H, L, S], or None. When given, the plain path is
        taken whatever ``implementation`` says (the fused op has no dropout).
      fused_backend: for the fused path, ``"xla"`` or ``"cudnn"``; None chooses cuDNN when it can take the
        case (see ``fused_backend_for``) and XLA otherwise.
    """
    dtype = jnp.dtype(query.dtype if dtype is None else dtype)
    path = resolve_implementation(implementation, dropout=dropout_fn is not None)
    if path == "plain":
        return _plain_attention(query, key, value, mask, dtype, dropout_fn)
    if fused_backend is None:
        fused_backend = fused_backend_for(query, key, dtype)
    elif fused_backend not in FUSED_BACKENDS:
        raise ValueError(f"fused_backend {fused_backend!r} is not one of {FUSED_BACKENDS}")
    head_dim = query.shape[-1]
    # jax.nn.dot_product_attention wants one dtype for q, k and v (ours already are, in the compute dtype),
    # and a mask of rank 4 that broadcasts to [B, N, T, S] = [B, H, L, S]: ours is [B, 1, L, S].
    return jax.nn.dot_product_attention(
        query.astype(dtype), key.astype(dtype), value.astype(dtype), mask=jnp.asarray(mask, bool),
        scale=1.0 / float(head_dim) ** 0.5, implementation=fused_backend)


def _plain_attention(query, key, value, mask, dtype, dropout_fn):
    """The hand-written attention, operation for operation as MultiHeadAttention always computed it."""
    head_dim = query.shape[-1]
    # Both products run head-major ([B, H, ...] operands, batch axes leading, as a batched matmul wants them),
    # with the transposes written out. Written as "blhk,bshk->bhls" and "bhls,bshk->blhk", the same products
    # left XLA:CPU to pick strided layouts, and the forward attention took 3.8x as long at B=8, L=256, H=8.
    # Every score and context element is the same dot product, so the results are bit-identical.
    query_heads = jnp.transpose(query, (0, 2, 1, 3))    # [B, H, L, K]
    key_heads = jnp.transpose(key, (0, 2, 3, 1))        # [B, H, K, S]
    value_heads = jnp.transpose(value, (0, 2, 1, 3))    # [B, H, S, K]
    # Scores in float32: softmax over thousands of keys in bf16 loses the small probabilities.
    scores = jnp.einsum("bhlk,bhks->bhls", query_heads, key_heads, preferred_element_type=jnp.float32)
    scores = scores / jnp.sqrt(jnp.float32(head_dim))
    scores = scores + _mask_bias(mask, jnp.float32)
    probs = jax.nn.softmax(scores, axis=-1).astype(dtype)
    if dropout_fn is not None:
        probs = dropout_fn(probs)
    return jnp.transpose(jnp.einsum("bhls,bhsk->bhlk", probs, value_heads), (0, 2, 1, 3))


def _mask_bias(mask: Array, dtype) -> Array:
    """Boolean mask -> additive bias, 0 or the dtype's minimum (``layers.attention_bias``; repeated here
    because layers.py imports this module)."""
    return jnp.where(mask, 0.0, jnp.finfo(dtype).min).astype(dtype)


def fused_backend_for(query: Array, key: Array, dtype) -> str:
    """``"cudnn"`` when cuDNN's flash attention (as JAX 0.10 wraps it) accepts this case, else ``"xla"``.

    ``implementation=None`` in ``jax.nn.dot_product_attention`` does not choose for us: in JAX 0.10 it always
    means XLA. cuDNN is asked for explicitly, and only where its checks (jax/_src/cudnn/
    fused_attention_stablehlo.py) pass, since they raise at trace time rather than falling back:

    - an NVIDIA GPU with CUDA (not ROCm) and cuDNN present;
    - bf16 or fp16 q/k/v (no float32 path: an f32 model uses XLA);
    - head dim a multiple of 8 and at most 128 (256 from Hopper, compute capability 9.0, on);
    - query and key lengths both even: our boolean mask reaches cuDNN as an additive bias [B, 1, L, S]
      (0 or a large negative), and training with a bias needs even lengths. This also sends single-token
      decoding steps (L = 1) to XLA, where a fused kernel would gain nothing anyway.

    Arbitrary boolean masks (packed segments, padding, causal, a decoding cache's) all go through the bias;
    they are not rewritten as ``is_causal`` / sequence lengths (which cuDNN could skip work for), since packed
    masks cannot be expressed that way and correctness comes first.
    """
    if jax.default_backend() != "gpu":
        return "xla"
    dtype = jnp.dtype(dtype)
    if dtype not in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16)):
        return "xla"
    length, keys, head_dim = query.shape[1], key.shape[1], query.shape[-1]
    if length % 2 or keys % 2:
        return "xla"
    try:
        from jax._src.lib import cuda_versions  # None without CUDA (or cuDNN)
        device = jax.local_devices(backend="gpu")[0]
        if cuda_versions is None or "cuda" not in device.client.platform_version.lower():
            return "xla"
        capability = tuple(int(x) for x in str(device.compute_capability).split("."))
    except Exception:  # an unknown GPU runtime: XLA is always correct
        return "xla"
    max_head_dim = 256 if capability >= (9, 0) else 128
    if head_dim % 8 or head_dim > max_head_dim:
        return "xla"
    return "cudnn"
