"""Optimisers: AlexaTM's AdamW recipe (and Adafactor), its learning-rate schedule, masks and freezing.

AlexaTM 20B: Adam, lr 1e-4 with warmup then linear decay to 5e-6, weight decay 0.1 on everything except
biases and LayerNorm parameters, gradient clipping, and the encoder frozen for the first ~100k steps.
Everything here is built from optax pieces; the only hand-written transformation is the step-dependent
freeze, which optax has no ready-made form of.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

OPTIMIZERS = ("adamw", "adafactor")

# Leaf names that are biases or normalisation parameters: no weight decay (AlexaTM, as BERT/RoBERTa).
_NO_DECAY_LEAVES = ("bias", "scale", "final_logits_bias")


def learning_rate_schedule(peak: float = 1e-4, floor: float = 5e-6, warmup_steps: int = 1000,
                           decay_steps: int = 500_000) -> optax.Schedule:
    """Linear warmup from 0 to ``peak`` over ``warmup_steps``, then linear decay to ``floor`` at step
    ``decay_steps``, constant ``floor`` after."""
    if peak <= 0 or floor < 0 or floor > peak:
        raise ValueError(f"Learning rates must satisfy 0 <= floor <= peak and peak > 0; got peak={peak}, "
                         f"floor={floor}")
    if warmup_steps < 0 or decay_steps < warmup_steps:
        raise ValueError(f"Need 0 <= warmup_steps <= decay_steps; got warmup_steps={warmup_steps}, "
                         f"decay_steps={decay_steps}")
    warmup = optax.linear_schedule(0.0, peak, max(warmup_steps, 1))
    decay = optax.linear_schedule(peak, floor, max(decay_steps - warmup_steps, 1))
    if warmup_steps == 0:
        return decay
    return optax.join_schedules([warmup, decay], [warmup_steps])


def _path_names(path) -> tuple[str, ...]:
    return tuple(str(getattr(k, "key", getattr(k, "name", k))) for k in path)


def weight_decay_mask(params: Any) -> Any:
    """True for leaves that get weight decay: everything but biases and norm scales/biases."""
    return jax.tree_util.tree_map_with_path(
        lambda path, _: _path_names(path)[-1] not in _NO_DECAY_LEAVES, params)


def encoder_mask(params: Any) -> Any:
    """True for the encoder's parameters (its stack and its token embedding table)."""
    return jax.tree_util.tree_map_with_path(
        lambda path, _: _path_names(path)[0] in ("encoder", "encoder_token_embedder"), params)


class FreezeState(NamedTuple):
    count: jax.Array  # int32 scalar: updates seen so far


def freeze_for_steps(mask: Any, steps: int) -> optax.GradientTransformation:
    """Zeroes the updates of the leaves where ``mask`` is True during the first ``steps`` updates.

    Used twice in the chain: first on the raw gradients (so that frozen leaves neither count in the
    clipping norm nor build Adam moments) and last on the final updates (so that weight decay does not move
    them either). Written by hand because optax's masking is static and this one changes with the step.
    """
    def init_fn(params):
        del params
        return FreezeState(count=jnp.zeros((), jnp.int32))

    def update_fn(updates, state, params=None):
        del params
        frozen = state.count < steps
        updates = jax.tree_util.tree_map(
            lambda u, m: jnp.where(frozen, jnp.zeros_like(u), u) if m else u, updates, mask)
        return updates, FreezeState(count=optax.safe_increment(state.count))

    return optax.GradientTransformation(init_fn, update_fn)


def make_optimizer(params: Any, *, name: str = "adamw", schedule: Optional[optax.Schedule] = None,
                   b1: float = 0.9, b2: float = 0.98, eps: float = 1e-6, weight_decay: float = 0.1,
                   clip_norm: Optional[float] = 1.0, freeze_encoder_steps: int = 0) -> optax.GradientTransformation:
    """The optimiser chain for ``params`` (a plain pytree or its abstract shapes; only the tree is read).

    adamw: clip by global norm -> Adam -> decoupled weight decay (masked) -> -lr.
    adafactor: clip -> optax.adafactor (factored second moments, decoupled weight decay masked the same).
    ``freeze_encoder_steps`` > 0 freezes the encoder for that many updates.
    """
    if name not in OPTIMIZERS:
        raise ValueError(f"Unknown optimizer {name!r}; choose one of {OPTIMIZERS}")
    schedule = schedule or learning_rate_schedule()
    decay_mask = weight_decay_mask(params)
    parts = []
    if freeze_encoder_steps:
        parts.append(freeze_for_steps(encoder_mask(params), freeze_encoder_steps))
    if clip_norm:
        parts.append(optax.clip_by_global_norm(clip_norm))
    if name == "adamw":
        parts.append(optax.adamw(schedule, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay,
                                 mask=decay_mask))
    else:
        parts.append(optax.adafactor(schedule, weight_decay_rate=weight_decay or None,
                                     weight_decay_mask=decay_mask))
    if freeze_encoder_steps:
        parts.append(freeze_for_steps(encoder_mask(params), freeze_encoder_steps))
    return optax.chain(*parts)


def count_params(params: Any) -> int:
    return int(sum(x.size for x in jax.tree_util.tree_leaves(params)))

