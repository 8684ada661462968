"""The train state (step, params, optimizer state) and where each of its leaves lives on the mesh.

Parameters carry logical axis names from the model; the rules (``alexatm_jax.partitioning``) turn them into
mesh shardings. Optimizer-state leaves have no names of their own: each one takes the sharding of the
parameter it mirrors (found by its tree path), so FSDP shards Adam's moments exactly like the weights.
Factored leaves (Adafactor's row/column statistics) drop the factored axis from the parameter's spec.
"""

from __future__ import annotations

from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from alexatm_jax import partitioning
from alexatm_jax.model.transformer import AlexaTMTransformer


@flax.struct.dataclass
class TrainState:
    """``step``: int32 scalar, updates applied so far; ``params``: plain (unboxed) pytree;
    ``opt_state``: the optax state of ``params``."""

    step: jax.Array
    params: Any
    opt_state: Any


def _names(path) -> tuple:
    return tuple(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k))) for k in path)


def init_inputs(batch_size: int, inputs_length: int, targets_length: int) -> dict:
    """Zero-filled model inputs of the given shape: enough to create parameters."""
    return dict(encoder_input_tokens=jnp.zeros((batch_size, inputs_length), jnp.int32),
                decoder_input_tokens=jnp.zeros((batch_size, targets_length), jnp.int32))


def init_params_boxed(model: AlexaTMTransformer, rng: jax.Array, inputs_length: int, targets_length: int):
    """Boxed (logically-annotated) parameters of ``model``; use under jax.eval_shape for shapes only."""
    inputs = init_inputs(1, inputs_length, targets_length)
    return model.init(rng, inputs["encoder_input_tokens"], inputs["decoder_input_tokens"],
                      enable_dropout=False)["params"]


def opt_state_logical_specs(abstract_opt_state: Any, abstract_params: Any, param_specs: Any) -> Any:
    """Logical PartitionSpecs for every optimizer-state leaf, mirroring the parameter at the end of its path."""
    by_path = {}
    for (path, leaf), spec in zip(jax.tree_util.tree_flatten_with_path(abstract_params)[0],
                                  jax.tree_util.tree_leaves(param_specs, is_leaf=lambda x: isinstance(x, PartitionSpec))):
        by_path[_names(path)] = (leaf.shape, tuple(spec) + (None,) * (len(leaf.shape) - len(spec)))

    def spec_for(path, leaf):
        names = _names(path)
        for start in range(len(names)):
            if names[start:] in by_path:
                shape, spec = by_path[names[start:]]
                if tuple(leaf.shape) == tuple(shape):
                    return PartitionSpec(*spec)
                if len(leaf.shape) == len(shape) - 1:  # factored statistics: one axis reduced away
                    for axis in range(len(shape)):
                        if tuple(shape[:axis] + shape[axis + 1:]) == tuple(leaf.shape):
                            return PartitionSpec(*(spec[:axis] + spec[axis + 1:]))
                break
        return PartitionSpec()  # counters, scalars, dummies: replicated

    return jax.tree_util.tree_map_with_path(spec_for, abstract_opt_state)


class StateLayout:
    """Abstract shapes and shardings of the train state of ``model`` under ``tx`` on ``mesh``.

    Attributes: ``abstract`` (TrainState of ShapeDtypeStructs with shardings), ``logical`` (TrainState of
    logical PartitionSpecs), ``shardings`` (TrainState of NamedShardings), ``param_specs``.
    Nothing is allocated to build it.
    """

    def __init__(self, model: AlexaTMTransformer, tx: optax.GradientTransformation, mesh: Mesh,
                 rules, inputs_length: int, targets_length: int):
        self.model, self.tx, self.mesh, self.rules = model, tx, mesh, tuple(rules)
        self.inputs_length, self.targets_length = inputs_length, targets_length
        boxed = jax.eval_shape(lambda: init_params_boxed(model, jax.random.PRNGKey(0), inputs_length,
                                                         targets_length))
        self.param_specs = nn.get_partition_spec(boxed)
        abstract_params = nn.unbox(boxed)
        abstract_opt = jax.eval_shape(tx.init, abstract_params)
        opt_specs = opt_state_logical_specs(abstract_opt, abstract_params, self.param_specs)
        self.logical = TrainState(step=PartitionSpec(), params=self.param_specs, opt_state=opt_specs)
        self.shardings = partitioning.logical_to_mesh_sharding(self.logical, mesh, self.rules)
        abstract_state = TrainState(step=jax.ShapeDtypeStruct((), jnp.int32), params=abstract_params,
                                    opt_state=abstract_opt)
        self.abstract = jax.tree_util.tree_map(
            lambda leaf, sharding: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding),
            abstract_state, self.shardings)

    @property
    def replicated(self) -> NamedSharding:
        return NamedSharding(self.mesh, PartitionSpec())

    def init(self, rng: jax.Array) -> TrainState:
        """Creates the state directly in its shardings (each device computes only its own slices)."""
        def make(rng):
            params = nn.unbox(init_params_boxed(self.model, rng, self.inputs_length, self.targets_length))
            return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=self.tx.init(params))

        # No rules in context here: Flax's DenseGeneral constrains its kernel while still flat, which
        # the rules would reject; the out_shardings alone place every leaf.
        return jax.jit(make, out_shardings=self.shardings)(rng)
