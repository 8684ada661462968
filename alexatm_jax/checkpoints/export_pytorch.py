"""Export an alexatm_jax model (a converted model directory or a training run) in the reference's own format.

The result is what ``AlexaTMSeq2SeqForConditionalGeneration.from_pretrained(DST)`` (alexa-teacher-models 1.0.1
on transformers 4.26.1) loads::

    DST/config.json                       AlexaTMSeq2SeqConfig fields (the reference's names)
    DST/model.safetensors                 or model-0000i-of-0000n.safetensors + model.safetensors.index.json
      (--format bin: pytorch_model.bin, or pytorch_model-0000i-of-0000n.bin + pytorch_model.bin.index.json)
    DST/20b_tokenizer.model               the SentencePiece model, under the reference tokenizer's file name

The weight names and layouts are the import's (``convert_pytorch``'s tables), read backwards, so PyTorch ->
alexatm_jax -> PyTorch gives back the original tensors bit for bit. Every key ``save_pretrained`` writes is
written, aliases of shared tables included (the reference silently re-initialises a missing ``lm_head.weight``
or ``final_logits_bias``, so leaving one out is never safe).

Memory: the parameters are held once (as loaded); each shard's tensors are made (layer slices of a scanned
layout, transposes, the dtype cast) only while that shard is written, so the host holds the model plus at
most one shard (``max_shard_size``), never two copies of the model.

The output is written to a temporary sibling of DST and renamed into place last: a failure leaves no DST.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from alexatm_jax.checkpoints.convert_pytorch import (LAYER_STACKS, POSITION_IDS_KEY, TOP_LEVEL, layer_families,
                                                     layer_key, layer_path, tied_to)
from alexatm_jax.checkpoints.reference_config import MAPPED
from alexatm_jax.model.config import ModelConfig

FORMATS = ("safetensors", "bin")
DTYPES = ("float32", "bfloat16", "float16")
TOKENIZER_FILE = "20b_tokenizer.model"  # the reference tokenizer's vocab file name (AlexaTMTokenizer)
DEFAULT_MAX_SHARD_SIZE = "5GB"
_WEIGHT_NAMES = {  # format -> (single file, shard file pattern, index file), as transformers names them
    "safetensors": ("model.safetensors", "model-{:05d}-of-{:05d}.safetensors", "model.safetensors.index.json"),
    "bin": ("pytorch_model.bin", "pytorch_model-{:05d}-of-{:05d}.bin", "pytorch_model.bin.index.json"),
}

# Reference config field -> our ModelConfig field: the inverse of ``reference_config.read_reference_config``
# (tests check that reading an exported config back gives the same architecture).
_CONFIG_FIELDS = {
    "vocab_size": "vocab_size", "d_model": "d_model", "encoder_layers": "encoder_layers",
    "decoder_layers": "decoder_layers", "encoder_attention_heads": "num_heads", "decoder_attention_heads": "num_heads",
    "encoder_ffn_dim": "encoder_ffn_dim", "decoder_ffn_dim": "decoder_ffn_dim",
    "max_position_embeddings": "max_position_embeddings", "type_vocab_size": "type_vocab_size",
    "layer_norm_eps": "layer_norm_eps", "hidden_act": "ffn_type", "share_embeddings": "share_embeddings",
    "tie_word_embeddings": "tie_word_embeddings", "pad_token_id": "pad_token_id", "bos_token_id": "bos_token_id",
    "eos_token_id": "eos_token_id", "decoder_start_token_id": "decoder_start_token_id", "dropout": "dropout_rate",
    "attention_dropout": "attention_dropout_rate",
}
# Fields a config.json carried over from the original reference checkpoint must not keep: bookkeeping of the
# writer, and read-only properties the reference derives (it cannot load a config.json that sets them).
_NOT_CARRIED = frozenset({"_name_or_path", "_commit_hash", "transformers_version", "torch_dtype", "hidden_size",
                          "num_attention_heads"})


class ExportError(ValueError):
    """The model cannot be exported as asked; the message says what and how to fix it."""


# --- what can be exported ----------------------------------------------------------------------------------

def export_problems(cfg: ModelConfig) -> list[str]:
    """Architecture switches of ``cfg`` the reference cannot compute (empty when it can run the model)."""
    problems = []
    if cfg.norm_type != "alexatm_layernorm":
        problems.append(f"norm_type={cfg.norm_type!r} (the reference has only its own LayerNorm, "
                        f"norm_type='alexatm_layernorm')")
    if cfg.ffn_type not in ("gelu", "relu"):
        problems.append(f"ffn_type={cfg.ffn_type!r} (the reference's feed-forward is one dense layer with "
                        f"'gelu' or 'relu')")
    if cfg.decoder_position_offset != 2:
        problems.append(f"decoder_position_offset={cfg.decoder_position_offset} (the reference's is fixed at 2)")
    return problems


def reference_config(cfg: ModelConfig, torch_dtype: str, carried: Optional[dict] = None) -> dict:
    """The reference ``config.json`` of ``cfg`` (an ``AlexaTMSeq2SeqConfig`` dict).

    ``carried``: the config.json the model was converted from, if any; its fields that alexatm_jax does not
    model (generation defaults, the encoder's own dropout and init fields...) are kept, so a converted model
    exports with the config it came with. Without it those fields follow ours (encoder dropout = ``dropout``)."""
    out = {key: value for key, value in (carried or {}).items() if key not in _NOT_CARRIED}
    if not carried:
        out.update(hidden_dropout_prob=cfg.dropout_rate, attention_probs_dropout_prob=cfg.attention_dropout_rate,
                   activation_dropout=0.0, init_std=cfg.init_std, initializer_range=cfg.init_std)
    for field, ours in _CONFIG_FIELDS.items():
        value = getattr(cfg, ours)
        # A field the original config left to the reference's default stays out when ours is that default.
        default = MAPPED[field] if field != "decoder_start_token_id" else cfg.bos_token_id  # None means bos
        if carried and field not in carried and value == default and type(value) is type(default):
            continue
        out[field] = value
    for derived, source in (("num_hidden_layers", "encoder_layers"), ("intermediate_size", "encoder_ffn_dim")):
        if derived in out:  # copies the reference recomputes on load: keep them consistent
            out[derived] = out[source]
    out.update(architectures=["AlexaTMSeq2SeqForConditionalGeneration"], model_type="alexatm",
               is_encoder_decoder=True, torch_dtype=torch_dtype)
    return dict(sorted(out.items()))


# --- the tensors -------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class ReferenceTensor:
    """One tensor of the reference state dict: its key, size in bytes, and how to make it (on demand)."""

    key: str
    nbytes: int
    make: Callable[[], np.ndarray]


def _numpy_dtype(name: str) -> np.dtype:
    import ml_dtypes  # numpy has no bfloat16 of its own

    return np.dtype(ml_dtypes.bfloat16) if name == "bfloat16" else np.dtype(name)


def _lookup(tree: Any, path: tuple) -> Any:
    for name in path:
        tree = tree[name]
    return tree


def _has(tree: Any, path: tuple) -> bool:
    try:
        _lookup(tree, path)
        return True
    except (KeyError, TypeError):
        return False


def _maker(params: Any, path: tuple, slot: Optional[int], to_reference: Callable, dtype: np.dtype, key: str):
    def make() -> np.ndarray:
        leaf = _lookup(params, path)
        # Slice a stacked layer on its own device before copying to the host: one layer, not the stack.
        value = np.asarray(leaf if slot is None else leaf[slot])
        with np.errstate(over="ignore"):  # a float16 overflow is reported below, naming the tensor
            out = np.ascontiguousarray(to_reference(value).astype(dtype, copy=False))
        if dtype == np.float16 and not np.isfinite(out).all() and np.isfinite(value).all():
            raise ExportError(f"{key} overflows float16 (largest magnitude {float(np.abs(value).max()):.4g}); "
                              f"export with --dtype bfloat16 or float32")
        return out
    return make


def reference_tensors(cfg: ModelConfig, params: Any, dtype: str) -> list[ReferenceTensor]:
    """Every tensor of the reference state dict of ``cfg`` (the keys ``save_pretrained`` writes), made on demand
    from ``params`` (our tree, scanned or not) in ``dtype``; ``position_ids`` stays int64 as in the reference."""
    np_dtype = _numpy_dtype(dtype)
    out = []

    def add(key: str, path: tuple, slot: Optional[int], transform) -> None:
        leaf = _lookup(params, path)
        size = math.prod(leaf.shape[1:] if slot is not None else leaf.shape)
        out.append(ReferenceTensor(key, size * np_dtype.itemsize,
                                   _maker(params, path, slot, transform.to_reference, np_dtype, key)))

    for key in TOP_LEVEL:
        source = key
        while tied_to(source, cfg) is not None:  # a shared table: the tensor it is the same as
            source = tied_to(source, cfg)
        path, transform = TOP_LEVEL[source]
        if key == "final_logits_bias" and not _has(params, path):  # use_final_logits_bias=False: a zero bias
            vocab = cfg.vocab_size
            out.append(ReferenceTensor(key, vocab * np_dtype.itemsize,
                                       lambda v=vocab: np.zeros((1, v), dtype=np_dtype)))
            continue
        add(key, path, None, transform)
        if key == "model.encoder.position_embeddings.weight":
            positions = cfg.max_position_embeddings  # the buffer the reference registers (arange, [1, P])
            out.append(ReferenceTensor(POSITION_IDS_KEY, positions * 8,
                                       lambda p=positions: np.arange(p, dtype=np.int64)[None, :]))
    families = layer_families(cfg)
    for stack, prefix, table, count_field in LAYER_STACKS:
        for index in range(getattr(cfg, count_field)):
            for module, (sub, family) in table.items():
                for kind in ("weight", "bias"):
                    leaf, transform = families[family][kind]
                    path, slot = layer_path(stack, index, sub, leaf, cfg)
                    add(layer_key(prefix, index, module, kind), path, slot, transform)
    return out


def plan_shards(tensors: list[ReferenceTensor], max_shard_bytes: int) -> list[list[ReferenceTensor]]:
    """Consecutive tensors grouped greedily into shards of at most ``max_shard_bytes`` (a bigger tensor gets a
    shard of its own), as transformers' ``save_pretrained`` shards."""
    shards: list[list[ReferenceTensor]] = []
    size = 0
    for tensor in tensors:
        if not shards or (shards[-1] and size + tensor.nbytes > max_shard_bytes):
            shards.append([])
            size = 0
        shards[-1].append(tensor)
        size += tensor.nbytes
    return shards


_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B|B)?\s*$", re.IGNORECASE)


def parse_size(text: str | int) -> int:
    """'5GB' -> 5 * 10**9, '500MiB' -> 500 * 2**20, 1000 -> 1000 (transformers' ``max_shard_size`` units)."""
    if isinstance(text, int) and not isinstance(text, bool):
        value = text
    else:
        match = _SIZE.match(str(text))
        if not match:
            raise ExportError(f"max shard size {text!r} is not a size; write e.g. 5GB, 500MB, 2GiB or a byte count")
        number, unit = float(match.group(1)), (match.group(2) or "B").upper()
        power = "BKMGT".index(unit[0])
        value = int(number * ((1024 if "I" in unit else 1000) ** power))
    if value <= 0:
        raise ExportError(f"max shard size {text!r} must be positive")
    return value


# --- writing -----------------------------------------------------------------------------------------------

def _write_safetensors(path: Path, arrays: dict) -> None:
    from safetensors.numpy import save_file

    # transformers refuses safetensors files whose metadata does not name the framework.
    save_file(arrays, str(path), metadata={"format": "pt"})


def _write_bin(path: Path, arrays: dict) -> None:
    try:
        import torch
    except ImportError:
        raise ExportError("--format bin needs PyTorch: pip install 'alexatm_jax[convert]', or export the "
                          "default safetensors") from None
    state = {}
    for key, array in arrays.items():
        if array.dtype.name == "bfloat16":  # torch cannot read ml_dtypes' bfloat16: hand it the bits
            state[key] = torch.from_numpy(array.view(np.uint16)).view(torch.bfloat16)
        else:
            state[key] = torch.from_numpy(array)
    torch.save(state, str(path))


def write_weights(directory: Path, tensors: list[ReferenceTensor], weight_format: str,
                  max_shard_bytes: int) -> list[str]:
    """Writes the tensors shard by shard (plus the index when there are several); returns the file names."""
    single, pattern, index_name = _WEIGHT_NAMES[weight_format]
    writer = _write_safetensors if weight_format == "safetensors" else _write_bin
    shards = plan_shards(tensors, max_shard_bytes)
    names = [single] if len(shards) == 1 else [pattern.format(i + 1, len(shards)) for i in range(len(shards))]
    weight_map = {}
    for name, shard in zip(names, shards):
        arrays = {tensor.key: tensor.make() for tensor in shard}
        writer(directory / name, arrays)
        weight_map.update({key: name for key in arrays})
        del arrays  # before the next shard is made: at most one shard in memory
    if len(shards) > 1:
        index = {"metadata": {"total_size": sum(t.nbytes for t in tensors)},
                 "weight_map": dict(sorted(weight_map.items()))}
        (directory / index_name).write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
        return names + [index_name]
    return names


@dataclasses.dataclass(frozen=True)
class Exported:
    """What ``export`` wrote."""

    path: Path
    files: list
    num_tensors: int
    total_bytes: int
    dtype: str
    tokenizer: bool


def _carried_config(root) -> Optional[dict]:
    """The reference config.json a converted model directory came from (its provenance), if recorded."""
    meta = root / "alexatm_jax.json"
    try:
        provenance = json.loads(meta.read_text()).get("provenance", {}) if meta.exists() else {}
    except (OSError, ValueError, AttributeError):
        return None  # provenance is informative only; a damaged one is not worth failing an export over
    config = provenance.get("reference_config") if isinstance(provenance, dict) else None
    return config if isinstance(config, dict) else None


def _check_source(root, source) -> None:
    """Clear errors for a source that is not one of ours (before anything slow)."""
    if not root.exists():
        raise FileNotFoundError(f"No model directory at {os.fspath(source)!r}")
    if not root.is_dir():
        raise ExportError(f"{os.fspath(source)} is a file; give a model directory (convert-pytorch output) or "
                          f"a training MODEL_DIR")
    ours = (root / "params").exists() or (root / "checkpoints").exists()
    pytorch = any(root.glob("pytorch_model*.bin")) or any(root.glob("model*.safetensors"))
    if not ours and pytorch:
        raise ExportError(f"{os.fspath(source)} is already a PyTorch/Hugging Face checkpoint; export-pytorch reads "
                          f"alexatm_jax model directories and training runs (convert it with "
                          f"`alexatm-jax convert-pytorch` first if you want ours)")


def _publish(staging: Path, target: Path) -> None:
    """Puts the finished ``staging`` directory at ``target``, replacing an old one only once the new is whole."""
    old = None
    if target.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
        os.replace(target, old / "previous")
    os.replace(staging, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def export(source: str | os.PathLike, destination: str | os.PathLike, dtype: Optional[str] = None,
           weight_format: str = "safetensors", max_shard_size: str | int = DEFAULT_MAX_SHARD_SIZE,
           overwrite: bool = False, step: Optional[int] = None, mesh: Any = None) -> Exported:
    """Exports ``source`` (a model directory or a training run; its newest checkpoint unless ``step``) to
    ``destination`` in the reference's format. ``dtype``: the weights' dtype (default: the model's parameter
    dtype). ``mesh``: where to load the parameters (see ``alexatm_jax.load``)."""
    from alexatm_jax import load, storage
    from alexatm_jax.checkpoints import model_dir

    if weight_format not in FORMATS:
        raise ExportError(f"format {weight_format!r} is not one of {list(FORMATS)}")
    if dtype is not None and dtype not in DTYPES:
        raise ExportError(f"dtype {dtype!r} is not one of {list(DTYPES)}")
    max_shard_bytes = parse_size(max_shard_size)
    if storage.is_remote(destination):
        raise ExportError(f"{os.fspath(destination)}: export writes a local directory; export locally, then copy "
                          f"it (e.g. gcloud storage cp -r)")
    target = Path(destination).expanduser().absolute()
    root = storage.resolve(source)
    if target.exists() and not overwrite:
        raise FileExistsError(f"{target} already exists; pass --overwrite (overwrite=True) or choose another path")
    if not storage.is_remote(root) and target.resolve() == Path(os.fspath(root)).resolve():
        raise ExportError(f"{target} is the source directory; export to another path")
    _check_source(root, source)
    cfg = model_dir.read_config(root)
    problems = export_problems(cfg)
    if problems:
        raise ExportError(f"{os.fspath(source)} cannot be exported to the AlexaTM PyTorch format: "
                          + "; ".join(problems))
    dtype = dtype or cfg.param_dtype
    config_json = reference_config(cfg, dtype, _carried_config(root))
    tokenizer = model_dir.tokenizer_path(root)

    lm = load(source, mesh=mesh, step=step)
    tensors = reference_tensors(cfg, lm.params, dtype)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        (staging / "config.json").write_text(json.dumps(config_json, indent=2) + "\n", encoding="utf-8")
        files = ["config.json"] + write_weights(staging, tensors, weight_format, max_shard_bytes)
        if tokenizer is not None:
            (staging / TOKENIZER_FILE).write_bytes(tokenizer.read_bytes())
            files.append(TOKENIZER_FILE)
        _publish(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return Exported(path=target, files=files, num_tensors=len(tensors),
                    total_bytes=sum(t.nbytes for t in tensors), dtype=dtype, tokenizer=tokenizer is not None)
