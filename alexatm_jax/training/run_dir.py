"""Nothing half-written: a training run that fails before it has trained removes what it wrote to MODEL_DIR.

``train`` writes ``config.json``, ``tokenizer.model``, ``partitioning.json``, the metrics file and the
checkpoint folder before its first step. Left behind by a run that then failed (a bad ``INIT_FROM``, a batch
source that breaks, a compile error, Ctrl-C), they make the directory look like a run, and the next attempt
with a corrected model is refused as "a run of a different model".

``cleaned_up_on_early_failure`` wraps ``train``: it notes which entries of MODEL_DIR exist before the run and,
if the run raises before its first checkpoint was committed and before any step was logged, removes the
entries this run created (and MODEL_DIR itself, with the parent folders the run created, when it made them).
It never touches entries that were there before, and never a directory holding a committed checkpoint or a
run that logged steps (their metrics explain the failure). Only process 0 writes the run directory, so only
process 0 cleans it up.
"""

from __future__ import annotations

import functools
import inspect
import os
from typing import Any, Callable, Optional

CHECKPOINTS_DIR = "checkpoints"
METRICS_FILE = "metrics.jsonl"


def _entries(path) -> set[str]:
    return {p.name for p in path.iterdir()} if path.is_dir() else set()


def _size(path) -> int:
    try:
        return int(path.stat().length) if path.exists() else 0
    except Exception:  # noqa: BLE001  (absent, or a backend without sizes)
        return 0


class RunDirSnapshot:
    """What MODEL_DIR held before a run: enough to undo exactly what the run added."""

    def __init__(self, root, existed: bool, entries: set[str], metrics_size: int, created_top):
        self.root, self.existed, self.entries = root, existed, entries
        self.metrics_size, self.created_top = metrics_size, created_top

    @classmethod
    def take(cls, model_dir: Any) -> Optional["RunDirSnapshot"]:
        """None when there is nothing this process may clean up (not process 0, no usable MODEL_DIR: the
        run's own validation reports that)."""
        import jax

        from alexatm_jax import storage

        if not isinstance(model_dir, (str, os.PathLike)) or not os.fspath(model_dir) or jax.process_index() != 0:
            return None
        try:
            root = storage.resolve(model_dir)
            if root.exists() and not root.is_dir():
                return None
            existed = root.exists()
            created_top = None
            if not existed:  # the outermost folder the run's mkdir(parents=True) will create
                created_top = root
                while not created_top.parent.exists() and created_top.parent != created_top:
                    created_top = created_top.parent
            return cls(root, existed, _entries(root), _size(root / METRICS_FILE), created_top)
        except Exception:  # noqa: BLE001  (an unreadable MODEL_DIR: the run reports it, there is nothing to undo)
            return None

    def made_progress(self) -> bool:
        """A committed checkpoint, or steps logged by this run: then the directory is a run, kept whole."""
        checkpoints = self.root / CHECKPOINTS_DIR
        if checkpoints.is_dir() and any(p.name.isdigit() for p in checkpoints.iterdir()):
            return True
        return _size(self.root / METRICS_FILE) > self.metrics_size

    def undo(self) -> list[str]:
        """Removes what the run created; returns the removed paths."""
        if not self.root.is_dir() or self.made_progress():
            return []
        removed = []
        for name in sorted(_entries(self.root) - self.entries):
            path = self.root / name
            if path.is_dir():
                path.rmtree()
            else:
                path.unlink()
            removed.append(os.fspath(path))
        if not self.existed:
            folder = self.root
            while True:
                if folder.exists() and not any(True for _ in folder.iterdir()):
                    folder.rmdir()
                    removed.append(os.fspath(folder))
                if folder == self.created_top or folder.parent == folder:
                    break
                folder = folder.parent
        return removed


def cleaned_up_on_early_failure(train_fn: Callable) -> Callable:
    """Decorates ``train(model_dir, ...)``: on an exception before the run has trained, removes what it wrote
    to ``model_dir`` (see the module docstring), then re-raises."""
    signature = inspect.signature(train_fn)

    @functools.wraps(train_fn)
    def wrapper(*args, **kwargs):
        try:
            model_dir = signature.bind_partial(*args, **kwargs).arguments.get("model_dir")
        except TypeError:
            model_dir = None  # the call itself is wrong: train_fn raises the TypeError
        snapshot = RunDirSnapshot.take(model_dir)
        try:
            return train_fn(*args, **kwargs)
        except BaseException:
            if snapshot is not None:
                try:
                    snapshot.undo()
                except Exception:  # noqa: BLE001  (never mask the run's own error with the clean-up's)
                    pass
            raise

    return wrapper
