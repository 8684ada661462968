"""The train state (step, params, optimizer state) and where each of its leaves lives on the mesh.

Parameters carry logical axis names from the model; the rules (``alexatm_jax.partitioning``) turn them into
mesh shardings. Optimizer-state leaves have no names of their own: each one takes the sharding of the
parameter it mirrors (found by its tree path), so FSDP shards Adam's moments exactly like the weights.
Factored leaves (Adafactor's row/column statistics) drop the factored axis from the parameter's spec.
"""

from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax
from jax.sharding import PartitionSpec

from alexatm_jax import partitioning
from alexatm_jax.models import EncoderDecoderModel


@flax.struct.dataclass
class TrainState:
    """``step``: int32 scalar, updates applied so far; ``params``: plain (unboxed) pytree;
    ``opt_state``: the optax state of ``params``."""

    step: jax.Array
    params: Any
    opt_state: Any


def _names(path) -> tuple:
    return tuple(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k))) for k in path)


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
    """Abstract shapes and shardings of the train state of ``model`` under ``tx``, laid out by ``partitioner``.

    Attributes: ``abstract`` (TrainState of ShapeDtypeStructs with shardings), ``logical`` (TrainState of
    logical PartitionSpecs), ``shardings`` (TrainState of NamedShardings). Nothing is allocated to build it.
    """

    def __init__(self, model: EncoderDecoderModel, tx: optax.GradientTransformation,
                 partitioner: partitioning.Partitioner):
        self.model, self.tx, self.partitioner = model, tx, partitioner
        param_specs = model.param_logical_specs()
        abstract_params = model.abstract_params()
        abstract_opt = jax.eval_shape(tx.init, abstract_params)
        opt_specs = opt_state_logical_specs(abstract_opt, abstract_params, param_specs)
        self.logical = TrainState(step=PartitionSpec(), params=param_specs, opt_state=opt_specs)
        self.shardings = partitioner.shardings(self.logical)
        abstract_state = TrainState(step=jax.ShapeDtypeStruct((), jnp.int32), params=abstract_params,
                                    opt_state=abstract_opt)
        self.abstract = jax.tree_util.tree_map(
            lambda leaf, sharding: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding),
            abstract_state, self.shardings)

    def init(self, rng: jax.Array, params: Any = None) -> TrainState:
        """Creates the state directly in its shardings (each device computes only its own slices); with
        ``params`` (e.g. restored for fine-tuning) only the optimizer state is new."""
        def make(rng, params):
            params = self.model.init_params(rng) if params is None else params
            return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=self.tx.init(params))

        if params is None:
            return jax.jit(lambda rng: make(rng, None), out_shardings=self.shardings)(rng)
        return jax.jit(make, in_shardings=(self.partitioner.replicated, self.shardings.params),
                       out_shardings=self.shardings)(rng, params)
