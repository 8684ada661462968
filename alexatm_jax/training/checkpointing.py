"""Checkpoints: an orbax CheckpointManager over the run's ``checkpoints/`` directory.

Each step is a Composite checkpoint with items ``params`` (the plain f32 parameter pytree), ``opt_state``,
``data_state`` (the input pipeline's JSON state) and ``train_meta`` (JSON: step, mesh, model preset...).
Orbax writes every save under a temporary name and renames it when complete, so an interrupted save is
never mistaken for a good one; saves run in the background while training continues.

Restoring takes *abstract* arrays that carry the target shardings: orbax reads each shard it needs, so a
checkpoint written on one mesh restores onto any other mesh or device count.
"""

from __future__ import annotations

import os
from typing import Any, Optional

import orbax.checkpoint as ocp
from orbax.checkpoint.checkpoint_managers import preservation_policy as preservation

ITEMS = ("params", "opt_state", "data_state", "train_meta")


def checkpoint_dir(model_dir: str) -> str:
    return os.path.join(os.path.abspath(model_dir), "checkpoints")


def make_manager(model_dir: str, *, keep: int = 3, keep_best: int = 0, async_save: bool = True,
                 read_only: bool = False) -> ocp.CheckpointManager:
    """The run's CheckpointManager: keeps the latest ``keep`` steps, plus the ``keep_best`` with the
    lowest ``eval_loss`` (among saves that were given metrics)."""
    policies = [preservation.LatestN(n=max(keep, 1))]
    if keep_best:
        policies.append(preservation.BestN(get_metric_fn=lambda m: m["eval_loss"], reverse=True, n=keep_best,
                                           keep_checkpoints_without_metrics=False))
    options = ocp.CheckpointManagerOptions(
        preservation_policy=preservation.AnyPreservationPolicy(policies),
        enable_async_checkpointing=async_save, create=not read_only, read_only=read_only,
        # Leftovers of a save killed mid-way are removed when the next run opens the directory.
        cleanup_tmp_directories=not read_only)
    return ocp.CheckpointManager(checkpoint_dir(model_dir), item_names=ITEMS, options=options)


def save(manager: ocp.CheckpointManager, step: int, state, data_state: dict, train_meta: dict,
         eval_loss: Optional[float] = None, force: bool = False) -> bool:
    """Starts saving ``state`` (a TrainState) at ``step``; returns whether a save was started."""
    args = ocp.args.Composite(
        params=ocp.args.StandardSave(state.params),
        opt_state=ocp.args.StandardSave(state.opt_state),
        data_state=ocp.args.JsonSave(data_state),
        train_meta=ocp.args.JsonSave(dict(train_meta, step=int(step))))
    metrics = {"eval_loss": float(eval_loss)} if eval_loss is not None else None
    return manager.save(step, args=args, metrics=metrics, force=force)


def restore(manager: ocp.CheckpointManager, step: int, abstract_state) -> tuple[Any, Any, dict, dict]:
    """Restores (params, opt_state, data_state, train_meta) of ``step`` into the shardings that the
    abstract TrainState's leaves carry."""
    restored = manager.restore(step, args=ocp.args.Composite(
        params=ocp.args.StandardRestore(abstract_state.params),
        opt_state=ocp.args.StandardRestore(abstract_state.opt_state),
        data_state=ocp.args.JsonRestore(),
        train_meta=ocp.args.JsonRestore()))
    return restored.params, restored.opt_state, restored.data_state, restored.train_meta


def restore_params(model_dir: str, abstract_params: Any, step: Optional[int] = None) -> Any:
    """Only the ``params`` item (of the latest step unless given), e.g. for evaluation or inference."""
    manager = make_manager(model_dir, read_only=True)
    step = manager.latest_step() if step is None else step
    if step is None:
        raise FileNotFoundError(f"No checkpoint in {checkpoint_dir(model_dir)}; train first or check the path.")
    restored = manager.restore(step, args=ocp.args.Composite(params=ocp.args.StandardRestore(abstract_params)))
    manager.close()
    return restored.params
