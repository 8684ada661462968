"""Checkpoints: an orbax CheckpointManager over the run's ``checkpoints/`` directory (local or gs://).

Each step is a Composite checkpoint with items ``params`` (the plain parameter pytree), ``opt_state``,
``data_state`` (one JSON file per process: each process reads its own shard of the data, so each saves and
restores its own iterator state) and ``train_meta`` (JSON: step, mesh, ...). Orbax writes every save under a
temporary name and commits it by a rename (or a commit marker on object stores) when every item is complete,
so an interrupted save is never mistaken for a good one; saves run in the background while training goes on.

Restoring takes *abstract* arrays that carry the target shardings: orbax reads each shard it needs, so a
checkpoint written on one mesh restores onto any other mesh or device count. A committed step that cannot be
read (a truncated or deleted file) is reported by step and reason, set aside as ``<step>.damaged-<time>``,
and the next older readable step is used: never silently step 0.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import time
from typing import Any, Optional

import jax
import orbax.checkpoint as ocp
from etils import epath
from orbax.checkpoint.checkpoint_managers import preservation_policy as preservation

from alexatm_jax import storage

logger = logging.getLogger("alexatm_jax.checkpoints")

ITEMS = ("params", "opt_state", "data_state", "train_meta")
CHECKPOINTS_DIR = "checkpoints"


class CheckpointError(ValueError):
    """No readable checkpoint where one was expected; the message names the steps and the reasons."""


# ---- Per-process data-pipeline state. ----
@dataclasses.dataclass
class DataStateSave(ocp.args.CheckpointArgs):
    state: dict


@dataclasses.dataclass
class DataStateRestore(ocp.args.CheckpointArgs):
    pass


class DataStateHandler(ocp.CheckpointHandler):
    """Writes ``process_<i>-of-<n>.json`` for every process (orbax's JSON handler writes on the primary host
    only, which would hand every process process 0's data position on resume)."""

    @staticmethod
    def _file(directory: epath.Path, index: int, count: int) -> epath.Path:
        return epath.Path(directory) / f"process_{index}-of-{count}.json"

    def save(self, directory: epath.Path, args: DataStateSave):
        directory = epath.Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self._file(directory, jax.process_index(), jax.process_count()).write_text(json.dumps(args.state))

    def restore(self, directory: epath.Path, args: Optional[DataStateRestore] = None) -> dict:
        directory = epath.Path(directory)
        path = self._file(directory, jax.process_index(), jax.process_count())
        if not path.exists():
            written = sorted(p.name for p in directory.glob("process_*.json"))
            raise CheckpointError(
                f"{directory} holds no data state for process {jax.process_index()} of {jax.process_count()} "
                f"(it has {written}): the checkpoint was written by a different number of processes, so the data "
                f"stream cannot continue exactly. Resume with that many processes, or bind "
                f"--gin.DataConfig.resume_data_state=False to restart the data stream (the model state is kept).")
        return json.loads(path.read_text())

    def metadata(self, directory: epath.Path):
        return None

    def finalize(self, directory: epath.Path) -> None:
        pass

    def close(self):
        pass


ocp.args.register_with_handler(DataStateHandler, for_save=True)(DataStateSave)
ocp.args.register_with_handler(DataStateHandler, for_restore=True)(DataStateRestore)


# ---- The manager. ----
def checkpoint_dir(model_dir) -> epath.Path:
    return storage.resolve(model_dir) / CHECKPOINTS_DIR


def make_manager(model_dir, *, keep: int = 3, keep_best: int = 0, async_save: bool = True,
                 read_only: bool = False) -> ocp.CheckpointManager:
    """The run's CheckpointManager: keeps the latest ``keep`` steps, plus the ``keep_best`` with the
    lowest ``eval_loss`` (among saves made right after an evaluation)."""
    policies = [preservation.LatestN(n=max(keep, 1))]
    if keep_best:
        policies.append(preservation.BestN(get_metric_fn=lambda m: m["eval_loss"], reverse=True, n=keep_best,
                                           keep_checkpoints_without_metrics=False))
    options = ocp.CheckpointManagerOptions(
        preservation_policy=preservation.AnyPreservationPolicy(policies),
        # orbax writes a step's metrics (which BestN ranks) only when best_fn is set.
        best_fn=(lambda m: m["eval_loss"]) if keep_best else None, best_mode="min",
        enable_async_checkpointing=async_save, create=not read_only, read_only=read_only,
        # Leftovers of a save killed mid-way are removed when the next run opens the directory.
        cleanup_tmp_directories=not read_only)
    return ocp.CheckpointManager(checkpoint_dir(model_dir), item_names=ITEMS, options=options)


def save(manager: ocp.CheckpointManager, step: int, state, data_state: Optional[dict], train_meta: dict,
         eval_loss: Optional[float] = None) -> bool:
    """Starts saving ``state`` (a TrainState) at ``step``. ``eval_loss`` only when it was measured on these
    very parameters (best-N retention ranks by it; a stale value would keep the wrong checkpoint)."""
    items = dict(params=ocp.args.StandardSave(state.params), opt_state=ocp.args.StandardSave(state.opt_state),
                 train_meta=ocp.args.JsonSave(dict(train_meta, step=int(step))))
    if data_state is not None:
        items["data_state"] = DataStateSave(data_state)
    metrics = {"eval_loss": float(eval_loss)} if eval_loss is not None else None
    return manager.save(step, args=ocp.args.Composite(**items), metrics=metrics, force=True)


def _restore_step(manager, step, abstract_state, with_data: bool):
    items = dict(params=ocp.args.StandardRestore(abstract_state.params),
                 opt_state=ocp.args.StandardRestore(abstract_state.opt_state),
                 train_meta=ocp.args.JsonRestore())
    if with_data:
        items["data_state"] = DataStateRestore()
    restored = manager.restore(step, args=ocp.args.Composite(**items))
    return (restored.params, restored.opt_state, restored.get("data_state") if with_data else None,
            restored.train_meta)


def describe_error(error: BaseException) -> str:
    """One line for a read failure. orbax wraps TensorStore's error, which names the array and the file that
    failed ("Error reading "decoder.logits_dense.kernel/0.0" ... at local file ..."), in a generic one whose
    text is a page of spec: report the innermost cause's first line."""
    innermost, seen = error, set()
    while id(innermost) not in seen and (innermost.__cause__ or innermost.__context__) is not None:
        seen.add(id(innermost))
        innermost = innermost.__cause__ or innermost.__context__
    text = str(innermost).strip().splitlines()
    first = re.split(r"\s*\[tensorstore_spec", text[0] if text else "")[0]
    return f"{type(innermost).__name__}: {first}"[:500]


def set_aside(manager: ocp.CheckpointManager, step: int) -> Optional[epath.Path]:
    """Renames a damaged step directory to ``<step>.damaged-<time>`` (kept for inspection, out of the
    manager's way) on the primary process; returns the new path."""
    source = epath.Path(manager.directory) / str(step)
    target = None
    if jax.process_index() == 0 and source.exists():
        target = source.parent / f"{step}.damaged-{int(time.time())}"
        source.rename(target)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices(f"alexatm_set_aside_{step}")
    manager.reload()
    return target


def restore_latest(manager: ocp.CheckpointManager, abstract_state, with_data: bool = True,
                   report=print) -> Optional[tuple]:
    """(step, params, opt_state, data_state, train_meta) of the newest readable step, or None when the
    directory holds no checkpoint. Unreadable steps are reported through ``report``, set aside, and skipped;
    CheckpointError when every step is unreadable."""
    failures = []
    for step in sorted(manager.all_steps(), reverse=True):
        try:
            params, opt_state, data_state, meta = _restore_step(manager, step, abstract_state, with_data)
        except CheckpointError:
            raise  # a real mismatch (process count), not damage: falling back would not help
        except Exception as error:  # noqa: BLE001  (any read failure means: this step is damaged)
            reason = describe_error(error)
            failures.append(f"step {step}: {reason}")
            moved = set_aside(manager, step)
            report(f"Checkpoint step {step} in {manager.directory} cannot be read ({reason}); "
                   f"{'moved to ' + str(moved) + ' and ' if moved else ''}trying the previous one.")
            continue
        return step, params, opt_state, data_state, meta
    if failures:
        raise CheckpointError(f"no readable checkpoint in {manager.directory}: " + "; ".join(failures) +
                              ". Delete the directory to start over, or restore it from a backup.")
    return None


def restore_params(model_dir, abstract_params: Any, step: Optional[int] = None) -> tuple[int, Any]:
    """(step, params) of a training run: the given step, or the newest one. Errors name the step and reason."""
    manager = make_manager(model_dir, read_only=True)
    try:
        steps = sorted(manager.all_steps())
        if not steps:
            raise FileNotFoundError(f"No checkpoint in {checkpoint_dir(model_dir)}: train first, or check the path.")
        step = steps[-1] if step is None else int(step)
        if step not in steps:
            raise FileNotFoundError(f"{checkpoint_dir(model_dir)} has no step {step}; it has steps {steps}")
        try:
            restored = manager.restore(step, args=ocp.args.Composite(params=ocp.args.StandardRestore(abstract_params)))
        except Exception as error:  # noqa: BLE001
            raise CheckpointError(f"checkpoint step {step} in {checkpoint_dir(model_dir)} cannot be read "
                                  f"({describe_error(error)}); pick an older step (available: {steps})") from None
        return step, restored.params
    finally:
        manager.close()
