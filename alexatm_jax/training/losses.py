"""Pure loss functions for teacher-forced seq2seq training.

Shapes: logits [B, L, V] (float32, logical axes batch, length, vocab); targets and weights [B, L].
Every function returns *sums* over tokens together with the weight total, never means: the caller divides
once by the weight of the whole global batch, which is what makes gradient accumulation over
microbatches (and any data-parallel split) give exactly the loss of the full batch.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

Array = jax.Array


class LossSums(NamedTuple):
    """Weighted sums over the tokens of a batch (scalars, float32)."""

    loss: Array          # cross entropy (+ z-loss) summed over weighted tokens
    z_loss: Array        # the z-loss part alone
    correct: Array       # weighted count of tokens whose argmax equals the target
    weight: Array        # total token weight (the normaliser)


def cross_entropy_with_logits(logits: Array, targets: Array, label_smoothing: float = 0.0,
                              z_loss: float = 0.0) -> tuple[Array, Array]:
    """Per-token loss [B, L] and its z-loss part [B, L].

    With label smoothing ``a`` the target distribution is ``(1 - a) * onehot + a / V`` (optax.smooth_labels'
    definition). Its cross entropy is ``(1 - a) * (lse - logit_y) + a * (lse - mean(logits))``, computed
    without materialising a [B, L, V] one-hot, which for a 150K vocabulary would dominate memory.
    The z-loss (PaLM / T5X) adds ``z_loss * lse**2`` to keep the softmax normaliser near 1.
    """
    logits = logits.astype(jnp.float32)
    lse = jax.nn.logsumexp(logits, axis=-1)
    target_logit = jnp.take_along_axis(logits, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]
    loss = lse - target_logit
    if label_smoothing:
        loss = (1.0 - label_smoothing) * loss + label_smoothing * (lse - jnp.mean(logits, axis=-1))
    z = z_loss * jnp.square(lse)
    return loss + z, z


def loss_sums(logits: Array, targets: Array, weights: Array, label_smoothing: float = 0.0,
              z_loss: float = 0.0) -> LossSums:
    """Weighted sums of loss, z-loss and correct predictions over a batch; ``weights`` 0 masks padding."""
    weights = weights.astype(jnp.float32)
    per_token, per_token_z = cross_entropy_with_logits(logits, targets, label_smoothing, z_loss)
    correct = (jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32)
    return LossSums(loss=jnp.sum(per_token * weights), z_loss=jnp.sum(per_token_z * weights),
                    correct=jnp.sum(correct * weights), weight=jnp.sum(weights))


def add_sums(a: LossSums, b: LossSums) -> LossSums:
    return LossSums(*(x + y for x, y in zip(a, b)))


def zero_sums() -> LossSums:
    zero = jnp.zeros((), jnp.float32)
    return LossSums(zero, zero, zero, zero)
