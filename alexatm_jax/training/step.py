"""The jitted train and eval steps, with explicit input and output shardings over the mesh.

A batch is a dict of [B, L] int arrays with the seqio feature names (``encoder_input_tokens``,
``encoder_segment_ids``, ``encoder_positions``, ``decoder_input_tokens``, ``decoder_target_tokens``,
``decoder_loss_weights``, ``decoder_segment_ids``, ``decoder_positions``), B the global batch, sharded over
the data-parallel mesh axes.

Parameters, optimizer state and inputs are placed by explicit shardings; inside the step the model's
logical activation constraints are active (``Partitioner.partition``), so activations are laid
out by the same rules as the parameters rather than left to XLA's propagation alone.

The loss is normalised by the total target weight of the whole global batch, once, after summing over
microbatches, so any microbatch count or device count computes the same number.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import optax
from jax.sharding import NamedSharding, PartitionSpec

from alexatm_jax.features import BATCH_FEATURES
from alexatm_jax.training import losses
from alexatm_jax.training.train_state import StateLayout, TrainState


@dataclasses.dataclass(frozen=True)
class StepOptions:
    num_microbatches: int = 1
    label_smoothing: float = 0.0
    z_loss: float = 0.0
    # True: a non-finite loss or gradient leaves params and optimizer state as they were (the step counter
    # still advances, the batch is consumed). False: the update is applied and the trainer stops.
    skip_nonfinite: bool = False


def _split_microbatches(batch: dict, num: int, sharding: NamedSharding) -> dict:
    """[B, L] -> [num, B/num, L], row i going to microbatch i % num: every device keeps its own rows, so
    splitting moves no data between devices."""
    def split(x):
        x = x.reshape((x.shape[0] // num, num) + x.shape[1:]).swapaxes(0, 1)
        return jax.lax.with_sharding_constraint(
            x, NamedSharding(sharding.mesh, PartitionSpec(None, *sharding.spec)))
    return {k: split(v) for k, v in batch.items()}


@dataclasses.dataclass(frozen=True)
class DistillationTerms:
    """What the train step needs to distill (``training/distillation.py``): the teacher's model object, its
    parameter shardings, and alpha / temperature as functions of the step."""

    teacher_model: Any
    teacher_shardings: Any
    alpha: Callable[[jax.Array], jax.Array]
    temperature: Callable[[jax.Array], jax.Array]


def make_train_step(layout: StateLayout, schedule: optax.Schedule, options: StepOptions,
                    distill: Optional[DistillationTerms] = None) -> Callable:
    """``step(state, batch, rng[, teacher_params]) -> (state, metrics)``, compiled by the layout's partitioner
    with the state's shardings; the input state is donated. Metrics (replicated scalars): loss (the objective),
    z_loss, accuracy, grad_norm, learning_rate, weight (target tokens), finite (1.0 if loss and gradients were
    finite). With ``distill`` the step takes the teacher's parameters as a fourth argument and also reports
    ce_loss, kl_loss, alpha and temperature; loss is then alpha * T^2 * kl_loss + (1 - alpha) * ce_loss."""
    from alexatm_jax.training import distillation

    model, tx, partitioner = layout.model, layout.tx, layout.partitioner
    batch_sharding = partitioner.data_sharding

    def grads_and_sums(params, batch, rng, teacher_params, alpha, temperature):
        def loss_fn(p, mb, r):
            if distill is None:
                sums = model.loss_fn(p, mb, r, label_smoothing=options.label_smoothing, z_loss=options.z_loss)
                return sums.loss, (sums, jnp.zeros((), jnp.float32))
            student_logits = model.logits(p, mb, r)
            sums = losses.loss_sums(student_logits, mb["decoder_target_tokens"], mb["decoder_loss_weights"],
                                    options.label_smoothing, options.z_loss)
            # The teacher is frozen: no gradient reaches its parameters, and no dropout.
            teacher_logits = jax.lax.stop_gradient(distill.teacher_model.logits(teacher_params, mb))
            kl = distillation.kl_divergence_sum(student_logits, teacher_logits, mb["decoder_loss_weights"],
                                                temperature)
            return distillation.distillation_objective(sums.loss, kl, alpha, temperature), (sums, kl)

        grad_fn = jax.grad(loss_fn, has_aux=True)
        if options.num_microbatches == 1:
            grads, (sums, kl) = grad_fn(params, batch, rng)
            return grads, sums, kl
        micro = _split_microbatches(batch, options.num_microbatches, batch_sharding)

        def body(carry, xs):
            acc_grads, acc_sums, acc_kl = carry
            mb, index = xs
            grads, (sums, kl) = grad_fn(params, mb, jax.random.fold_in(rng, index))
            return (jax.tree_util.tree_map(jnp.add, acc_grads, grads), losses.add_sums(acc_sums, sums),
                    acc_kl + kl), None

        zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
        (grads, sums, kl), _ = jax.lax.scan(body, (zeros, losses.zero_sums(), jnp.zeros((), jnp.float32)),
                                            (micro, jnp.arange(options.num_microbatches)))
        return grads, sums, kl

    def step(state: TrainState, batch: dict, rng: jax.Array, teacher_params=None):
        # The dropout key depends only on (seed, step): a resumed run draws the same masks.
        dropout_rng = jax.random.fold_in(rng, state.step)
        alpha = distill.alpha(state.step) if distill else None
        temperature = distill.temperature(state.step) if distill else None
        grads, sums, kl = grads_and_sums(state.params, batch, dropout_rng, teacher_params, alpha, temperature)
        norm = jnp.maximum(sums.weight, 1.0)
        grads = jax.tree_util.tree_map(lambda g: g / norm, grads)
        grad_norm = optax.tree.norm(grads)
        ce_loss = sums.loss / norm
        loss = ce_loss if distill is None else distillation.distillation_objective(ce_loss, kl / norm, alpha,
                                                                                   temperature)
        updates, new_opt_state = tx.update(grads, state.opt_state, state.params)
        new_params = optax.apply_updates(state.params, updates)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        if options.skip_nonfinite:
            keep = lambda new, old: jax.tree_util.tree_map(lambda a, b: jnp.where(finite, a, b), new, old)
            new_params = keep(new_params, state.params)
            new_opt_state = keep(new_opt_state, state.opt_state)
        new_state = TrainState(step=state.step + 1, params=new_params, opt_state=new_opt_state)
        metrics = dict(loss=loss, z_loss=sums.z_loss / norm, accuracy=sums.correct / norm,
                       grad_norm=grad_norm, learning_rate=schedule(state.step), weight=sums.weight,
                       finite=finite.astype(jnp.float32))
        if distill is not None:
            metrics.update(ce_loss=ce_loss, kl_loss=kl / norm, alpha=alpha, temperature=temperature)
        return new_state, metrics

    replicated = partitioner.replicated
    in_shardings = (layout.shardings, partitioner.batch_shardings(BATCH_FEATURES), replicated)
    if distill is None:
        return partitioner.partition(step, in_shardings, (layout.shardings, replicated), donate_argnums=(0,))
    compiled = partitioner.partition(step, in_shardings + (distill.teacher_shardings,),
                                     (layout.shardings, replicated), donate_argnums=(0,))
    return compiled


def make_eval_step(layout: StateLayout, options: StepOptions) -> Callable:
    """``eval_step(params, batch) -> LossSums`` (no dropout), compiled with explicit shardings."""
    model, partitioner = layout.model, layout.partitioner

    def step(params, batch):
        return model.loss_fn(params, batch, None, label_smoothing=options.label_smoothing, z_loss=options.z_loss)

    return partitioner.partition(step, (layout.shardings.params, partitioner.batch_shardings(BATCH_FEATURES)),
                                 partitioner.replicated)
