"""Model directories: what ``alexatm_jax.load`` reads and ``convert-pytorch`` writes.

Two layouts are understood:

* an exported model (written by ``save_model_dir``, e.g. by ``convert-pytorch``)::

      DIR/config.json        ModelConfig as JSON
      DIR/params/            orbax checkpoint of the (unboxed) parameter tree
      DIR/tokenizer.model    SentencePiece model, when one is known
      DIR/alexatm_jax.json   format version and provenance

* a training run directory (``MODEL_DIR`` of ``alexatm-jax train``)::

      MODEL_DIR/config.json, MODEL_DIR/tokenizer.model
      MODEL_DIR/checkpoints/<step>/params   orbax CheckpointManager steps; only ``params`` is read here

Writes are atomic: everything goes to a sibling temporary directory that is renamed into place last, so a
crash never leaves a directory that looks complete.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np

from alexatm_jax import storage
from alexatm_jax.model.config import ModelConfig

FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
PARAMS_DIR = "params"
TOKENIZER_FILE = "tokenizer.model"
META_FILE = "alexatm_jax.json"
RUN_CHECKPOINTS_DIR = "checkpoints"


def save_model_dir(directory, config: ModelConfig, params: Any, tokenizer_path=None,
                   provenance: Optional[dict] = None, overwrite: bool = False) -> Path:
    """Writes ``config``, ``params`` (a pytree of arrays) and the tokenizer atomically to ``directory``."""
    import orbax.checkpoint as ocp

    target = Path(directory).absolute()
    if target.exists() and not overwrite:
        raise FileExistsError(f"{target} already exists; pass overwrite=True (--overwrite) or choose another path")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        (staging / CONFIG_FILE).write_text(config.to_json() + "\n", encoding="utf-8")
        checkpointer = ocp.StandardCheckpointer()
        checkpointer.save(staging / PARAMS_DIR, params)
        checkpointer.wait_until_finished()
        checkpointer.close()
        if tokenizer_path is not None:
            shutil.copyfile(tokenizer_path, staging / TOKENIZER_FILE)
        meta = {"format_version": FORMAT_VERSION, "provenance": provenance or {}}
        (staging / META_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def read_config(directory) -> ModelConfig:
    path = storage.resolve(directory) / CONFIG_FILE
    if not path.exists():
        raise FileNotFoundError(
            f"{directory} is not an alexatm_jax model directory: {CONFIG_FILE} is missing. Convert a "
            f"PyTorch checkpoint with `alexatm-jax convert-pytorch SRC DST` or point at a training MODEL_DIR.")
    try:
        return ModelConfig.from_json(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON (line {error.lineno}, column {error.colno}: {error.msg}); "
                         f"restore the file from the run or the conversion that wrote it") from None
    except (TypeError, ValueError) as error:
        raise ValueError(f"{path} is not a model config: {error}") from None


def tokenizer_path(directory):
    path = storage.resolve(directory) / TOKENIZER_FILE
    return path if path.exists() else None


def restore_params(directory, abstract_params: Any, step: Optional[int] = None) -> tuple[Optional[int], Any]:
    """(step, params) from either layout onto ``abstract_params`` (ShapeDtypeStructs, optionally with
    shardings: restoring onto any mesh works). ``step`` is None for an exported model directory."""
    import orbax.checkpoint as ocp

    from alexatm_jax.training import checkpointing

    root = storage.resolve(directory)
    if (root / PARAMS_DIR).exists():
        try:
            with ocp.StandardCheckpointer() as checkpointer:
                return None, checkpointer.restore(root / PARAMS_DIR, abstract_params)
        except Exception as error:  # noqa: BLE001  (any read failure of a user's directory)
            raise checkpointing.CheckpointError(
                f"the parameters in {root / PARAMS_DIR} cannot be read ({checkpointing.describe_error(error)}); "
                f"re-export or re-convert the model") from None
    if not (root / RUN_CHECKPOINTS_DIR).exists():
        raise FileNotFoundError(
            f"No parameters under {directory}: expected {PARAMS_DIR}/ (an exported model) or "
            f"{RUN_CHECKPOINTS_DIR}/<step>/ (a training run with at least one finished checkpoint).")
    return checkpointing.restore_params(root, abstract_params, step)


def cast_params(params: Any, dtype: str) -> Any:
    return jax.tree_util.tree_map(lambda x: np.asarray(x).astype(jnp.dtype(dtype)), params)


def abstract_params(config: ModelConfig, shardings: Any = None) -> Any:
    """ShapeDtypeStructs of ``config``'s parameters (see ``EncoderDecoderModel.abstract_params``)."""
    from alexatm_jax.models import EncoderDecoderModel
    return EncoderDecoderModel(config).abstract_params(shardings)


def latest_run_step(directory) -> Optional[int]:
    """The newest committed step of a training run directory (None if it has none)."""
    from alexatm_jax.training import checkpointing

    if not checkpointing.checkpoint_dir(directory).exists():
        return None
    manager = checkpointing.make_manager(directory, read_only=True)
    try:
        return manager.latest_step()
    finally:
        manager.close()
