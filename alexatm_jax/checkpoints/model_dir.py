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

from alexatm_jax.model.config import ModelConfig

FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
PARAMS_DIR = "params"
TOKENIZER_FILE = "tokenizer.model"
META_FILE = "alexatm_jax.json"
RUN_CHECKPOINTS_DIR = "checkpoints"


def save_model_dir(directory: str | os.PathLike, config: ModelConfig, params: Any,
                   tokenizer_path: Optional[str | os.PathLike] = None,
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


def read_config(directory: str | os.PathLike) -> ModelConfig:
    path = Path(directory) / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{directory} is not an alexatm_jax model directory: {CONFIG_FILE} is missing. Convert a "
            f"PyTorch checkpoint with `alexatm-jax convert-pytorch SRC DST` or point at a training MODEL_DIR.")
    return ModelConfig.from_json(path.read_text(encoding="utf-8"))


def tokenizer_path(directory: str | os.PathLike) -> Optional[Path]:
    path = Path(directory) / TOKENIZER_FILE
    return path if path.is_file() else None


def latest_run_step(directory: str | os.PathLike) -> Optional[int]:
    """The newest complete step of a training run's CheckpointManager directory (None if there is none)."""
    root = Path(directory) / RUN_CHECKPOINTS_DIR
    if not root.is_dir():
        return None
    import orbax.checkpoint as ocp
    with ocp.CheckpointManager(root.absolute()) as manager:
        return manager.latest_step()


def restore_params(directory: str | os.PathLike, abstract_params: Any, step: Optional[int] = None) -> Any:
    """Restores the parameter tree of either layout onto ``abstract_params`` (a pytree of
    ``jax.ShapeDtypeStruct``, optionally with shardings: restoring onto any mesh is supported)."""
    import orbax.checkpoint as ocp

    directory = Path(directory).absolute()
    if (directory / PARAMS_DIR).is_dir():
        with ocp.StandardCheckpointer() as checkpointer:
            return checkpointer.restore(directory / PARAMS_DIR, abstract_params)
    step = latest_run_step(directory) if step is None else step
    if step is None:
        raise FileNotFoundError(
            f"No parameters under {directory}: expected {PARAMS_DIR}/ (an exported model) or "
            f"{RUN_CHECKPOINTS_DIR}/<step>/ (a training run with at least one finished checkpoint).")
    with ocp.CheckpointManager(directory / RUN_CHECKPOINTS_DIR) as manager:
        restored = manager.restore(step, args=ocp.args.Composite(params=ocp.args.StandardRestore(abstract_params)))
    return restored["params"]


def abstract_params(config: ModelConfig, shardings: Any = None) -> Any:
    """ShapeDtypeStructs of the model's parameters (unboxed), computed without allocating anything."""
    import flax.linen as nn
    from alexatm_jax.model.transformer import AlexaTMTransformer

    model = AlexaTMTransformer(config)
    tokens = jnp.ones((1, 1), jnp.int32)
    variables = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), tokens, tokens, enable_dropout=False))
    shapes = nn.unbox(variables["params"])
    if shardings is None:
        return shapes
    return jax.tree_util.tree_map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                                  shapes, shardings)


def cast_params(params: Any, dtype: str) -> Any:
    return jax.tree_util.tree_map(lambda x: np.asarray(x).astype(jnp.dtype(dtype)), params)
