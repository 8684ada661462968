"""Teacher-forced scoring: the log-likelihood of given targets, for rank classification.

The decoder input is the decoder-start token followed by the targets shifted right by one (seqio's
autoregressive convention); the score of a row is the sum of log p(target_t | targets_<t, input) over the
positions where ``target_mask`` is 1.
"""

from __future__ import annotations

import threading

import jax
import jax.numpy as jnp
import numpy as np
import flax.linen as nn

_COMPILED: dict = {}
_LOCK = threading.Lock()


def shift_right(targets: jax.Array, start_id: int) -> jax.Array:
    """targets [B, T] -> decoder inputs [B, T]: start token, then targets[:, :-1]."""
    start = jnp.full((targets.shape[0], 1), start_id, targets.dtype)
    return jnp.concatenate([start, targets[:, :-1]], axis=1)


def token_log_probs_from_logits(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """logits [B, T, V] float32, targets [B, T] int -> log p(target) [B, T] float32."""
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    return jnp.take_along_axis(log_probs, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]


def _compiled(model, decoder_start_token_id: int):
    key = (type(model), model.config, decoder_start_token_id)
    with _LOCK:
        fn = _COMPILED.get(key)
    if fn is None:
        def run(params, tokens, segments, targets, mask):
            decoder_inputs = shift_right(targets, decoder_start_token_id)
            # No decoder segment ids: causal masking already keeps right-padding out of the real tokens'
            # view, and the encoder segments mask padded encoder positions out of the cross-attention.
            logits = model.apply({"params": params}, tokens, decoder_inputs, encoder_segment_ids=segments,
                                 enable_dropout=False)
            return token_log_probs_from_logits(logits, targets) * mask
        fn = jax.jit(run)
        with _LOCK:
            _COMPILED[key] = fn
    return fn


def token_scores(model, params, encoder_input_tokens, encoder_segment_ids, target_tokens, target_mask, *,
                 decoder_start_token_id: int) -> np.ndarray:
    """Per-token log-probabilities of ``target_tokens`` [B, T] -> float32 [B, T] (0 where mask is 0).

    encoder_input_tokens [B, S] int; encoder_segment_ids [B, S] (1 token, 0 padding) or None (derived from
    the model's pad id); target_tokens [B, T] int; target_mask [B, T] (1 for tokens that count).
    """
    tokens = np.asarray(encoder_input_tokens, np.int32)
    targets = np.asarray(target_tokens, np.int32)
    if tokens.ndim != 2 or targets.ndim != 2 or tokens.shape[0] != targets.shape[0]:
        raise ValueError(f"encoder_input_tokens {tokens.shape} and target_tokens {targets.shape} must both be "
                         f"[batch, length] with the same batch")
    mask = np.ones_like(targets, np.float32) if target_mask is None else np.asarray(target_mask, np.float32)
    if mask.shape != targets.shape:
        raise ValueError(f"target_mask has shape {mask.shape}, target_tokens {targets.shape}; they must match")
    limit = model.config.max_position_embeddings
    for name, array in (("encoder_input_tokens", tokens), ("target_tokens", targets)):
        if array.shape[1] > limit:
            raise ValueError(f"{name} has {array.shape[1]} tokens but the model has {limit} positions")
    if encoder_segment_ids is None:
        segments = (tokens != model.config.pad_token_id).astype(np.int32)
    else:
        segments = (np.asarray(encoder_segment_ids) > 0).astype(np.int32)
    fn = _compiled(model, int(decoder_start_token_id))
    return np.asarray(jax.device_get(fn(nn.unbox(params), tokens, segments, targets, mask)))


def score(model, params, encoder_input_tokens, encoder_segment_ids, target_tokens, target_mask, *,
          decoder_start_token_id: int) -> np.ndarray:
    """Summed log-probability of each row's targets (teacher forcing) -> float32 [B]."""
    return token_scores(model, params, encoder_input_tokens, encoder_segment_ids, target_tokens, target_mask,
                        decoder_start_token_id=decoder_start_token_id).sum(axis=-1)
