"""Convert a Hugging Face-format AlexaTM checkpoint (the released 20B, or any AlexaTMSeq2Seq) to our format.

Input: a ``from_pretrained`` directory: ``config.json`` plus weights as sharded ``pytorch_model-*.bin`` with
``pytorch_model.bin.index.json``, a single ``pytorch_model.bin``, or safetensors (``model.safetensors``
with or without an index). The tokenizer (``20b_tokenizer.model`` or any ``*.model`` SentencePiece file)
is copied when present.

Shards are read one at a time (``torch.load(weights_only=True, mmap=True)``) and each tensor is converted
into a preallocated destination array as it arrives, so host memory holds the converted parameters plus
at most one source shard, never two full copies. The per-layer weights of a scanned layout are written
straight into their slot of the stacked ``[layers, ...]`` array.

PyTorch ``Linear`` weights are ``[out, in]``; our kernels are ``[in, out]`` with heads split out:
query/key/value ``[D, H, K]``, attention output ``[H, K, D]``.

``config.json`` fields are judged by what the reference's code does with them (``reference_config``): fields
it never reads are reported in one warning line and ignored. Damaged, truncated or pickle-bearing weight files,
invalid JSON and a tokenizer that is not SentencePiece are refused with one line naming the file.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any, Callable, Iterator, NamedTuple, Optional

import numpy as np

# ConversionError is raised here and re-exported for callers of this module.
from alexatm_jax.checkpoints.reference_config import ConversionError, read_reference_config  # noqa: F401
from alexatm_jax.model.config import ModelConfig


def config_from_reference(ref: dict, scan_layers: bool = False, param_dtype: str = "float32") -> ModelConfig:
    """Maps a reference ``config.json`` dict to our ModelConfig, refusing what we cannot reproduce (see
    ``reference_config``; the fields it ignores are dropped silently here: ``convert`` reports them)."""
    return read_reference_config(ref, scan_layers=scan_layers, param_dtype=param_dtype).config


# --- key mapping (read forwards by ``convert``, backwards by ``export_pytorch``) ---------------------------

class Transform(NamedTuple):
    """A pair of inverse maps between a reference tensor and our parameter (numpy arrays in and out)."""

    to_ours: Callable[[np.ndarray], np.ndarray]
    to_reference: Callable[[np.ndarray], np.ndarray]


IDENTITY = Transform(lambda x: x, lambda x: x)
# PyTorch Linear weights are [out, in]; our kernels [in, out].
TRANSPOSE = Transform(lambda w: w.T, lambda p: p.T)


def layer_families(cfg: ModelConfig) -> dict[str, dict[str, tuple[str, Transform]]]:
    """family -> {reference suffix ('weight' | 'bias') -> (our leaf name, transform)} for layer tensors.
    Attention projections split heads out: query/key/value weight [H*K, D] <-> kernel [D, H, K], bias
    [H*K] <-> [H, K]; output weight [D, H*K] <-> kernel [H, K, D]."""
    h, k, d = cfg.num_heads, cfg.head_dim, cfg.d_model
    return {
        "norm": {"weight": ("scale", IDENTITY), "bias": ("bias", IDENTITY)},
        "linear": {"weight": ("kernel", TRANSPOSE), "bias": ("bias", IDENTITY)},
        "qkv": {"weight": ("kernel", Transform(lambda w: w.T.reshape(d, h, k), lambda p: p.reshape(d, h * k).T)),
                "bias": ("bias", Transform(lambda b: b.reshape(h, k), lambda p: p.reshape(h * k)))},
        "out": {"weight": ("kernel", Transform(lambda w: w.T.reshape(h, k, d), lambda p: p.reshape(h * k, d).T)),
                "bias": ("bias", IDENTITY)},
    }


# Reference module name inside one layer -> (our sub-path inside the layer, family).
ENCODER_LAYER = {
    "layer_norm": (("pre_attention_layer_norm",), "norm"),
    "attention.self.query": (("attention", "query"), "qkv"),
    "attention.self.key": (("attention", "key"), "qkv"),
    "attention.self.value": (("attention", "value"), "qkv"),
    "attention.output.dense": (("attention", "out"), "out"),
    "intermediate.layer_norm": (("pre_mlp_layer_norm",), "norm"),
    "intermediate.dense": (("mlp", "wi"), "linear"),
    "output.dense": (("mlp", "wo"), "linear"),
}
DECODER_LAYER = {
    "self_attn_layer_norm": (("pre_self_attention_layer_norm",), "norm"),
    "self_attn.q_proj": (("self_attention", "query"), "qkv"),
    "self_attn.k_proj": (("self_attention", "key"), "qkv"),
    "self_attn.v_proj": (("self_attention", "value"), "qkv"),
    "self_attn.out_proj": (("self_attention", "out"), "out"),
    "encoder_attn_layer_norm": (("pre_cross_attention_layer_norm",), "norm"),
    "encoder_attn.q_proj": (("encoder_decoder_attention", "query"), "qkv"),
    "encoder_attn.k_proj": (("encoder_decoder_attention", "key"), "qkv"),
    "encoder_attn.v_proj": (("encoder_decoder_attention", "value"), "qkv"),
    "encoder_attn.out_proj": (("encoder_decoder_attention", "out"), "out"),
    "final_layer_norm": (("pre_mlp_layer_norm",), "norm"),
    "fc1": (("mlp", "wi"), "linear"),
    "fc2": (("mlp", "wo"), "linear"),
}
# The layer stacks: (our stack name, reference key prefix (then "<index>.<module>.<weight|bias>"), modules,
# the ModelConfig field with the layer count).
LAYER_STACKS = (
    ("encoder", "model.encoder.pre_ln_encoder.layer.", ENCODER_LAYER, "encoder_layers"),
    ("decoder", "model.decoder.layers.", DECODER_LAYER, "decoder_layers"),
)
_LAYER_RES = {stack: re.compile("^" + re.escape(prefix) + r"(\d+)\.(.+)\.(weight|bias)$")
              for stack, prefix, _, _ in LAYER_STACKS}

# Tensors outside the layer stacks: reference key -> (our parameter path, transform), in the reference's
# order. The encoder's token table is saved under two names (``model.shared`` and the encoder's alias of it;
# transformers may drop either), so both map to it.
TOP_LEVEL = {
    "model.shared.weight": (("encoder_token_embedder", "embedding"), IDENTITY),
    "model.encoder.token_embeddings.weight": (("encoder_token_embedder", "embedding"), IDENTITY),
    "model.encoder.position_embeddings.weight": (("encoder", "position_embedder", "embedding"), IDENTITY),
    "model.encoder.token_type_embeddings.weight": (("encoder", "token_type_embedder", "embedding"), IDENTITY),
    "model.encoder.pre_ln_encoder.layer_norm.weight": (("encoder", "encoder_norm", "scale"), IDENTITY),
    "model.encoder.pre_ln_encoder.layer_norm.bias": (("encoder", "encoder_norm", "bias"), IDENTITY),
    "model.decoder.embed_tokens.weight": (("decoder_token_embedder", "embedding"), IDENTITY),
    "model.decoder.embed_positions.weight": (("decoder", "position_embedder", "embedding"), IDENTITY),
    "model.decoder.layernorm_output.weight": (("decoder", "decoder_norm", "scale"), IDENTITY),
    "model.decoder.layernorm_output.bias": (("decoder", "decoder_norm", "bias"), IDENTITY),
    # [1, V] in the reference (a buffer), [V] here.
    "final_logits_bias": (("decoder", "final_logits_bias"),
                          Transform(lambda b: b.reshape(-1), lambda p: p.reshape(1, -1))),
    "lm_head.weight": (("decoder", "logits_dense", "kernel"), TRANSPOSE),
}
# The encoder's position ids: a buffer (arange), not a parameter.
POSITION_IDS_KEY = "model.encoder.position_ids"
_SKIPPED_KEYS = {POSITION_IDS_KEY}


def tied_to(key: str, cfg: ModelConfig) -> Optional[str]:
    """The key whose tensor ``key`` is the very same tensor of under ``cfg``'s sharing switches, or None:
    ``share_embeddings`` gives the decoder the encoder's token table, ``tie_word_embeddings`` makes the LM head
    the decoder's token table ([V, D] both: no transpose)."""
    if key == "model.decoder.embed_tokens.weight" and cfg.share_embeddings:
        return "model.shared.weight"
    if key == "lm_head.weight" and cfg.tie_word_embeddings:
        return "model.decoder.embed_tokens.weight"
    return None


def layer_key(prefix: str, index: int, module: str, kind: str) -> str:
    return f"{prefix}{index}.{module}.{kind}"


class _Target:
    """Where one source tensor goes: a parameter path, an optional layer slot, and a transform."""

    def __init__(self, path: tuple, transform: Callable, layer: Optional[int] = None, stack: str = ""):
        self.path, self.transform, self.layer, self.stack = path, transform, layer, stack


def layer_path(stack: str, index: int, sub: tuple, leaf: str, cfg: ModelConfig) -> tuple[tuple, Optional[int]]:
    """Our path of one layer's leaf, and the slot on the stacked axis (scanned layouts) or None."""
    if cfg.scan_layers:
        return (stack, "layers") + sub + (leaf,), index
    return (stack, f"layers_{index}") + sub + (leaf,), None


def target_for_key(key: str, cfg: ModelConfig) -> Optional[list[_Target]]:
    """The destination(s) of a reference state-dict key, or None if the key is not part of the model."""
    if key in _SKIPPED_KEYS or tied_to(key, cfg) is not None:  # buffers, and copies of a tensor read elsewhere
        return []
    for stack, _, table, count_field in LAYER_STACKS:
        match = _LAYER_RES[stack].match(key)
        if match:
            index, module, kind = int(match.group(1)), match.group(2), match.group(3)
            if module not in table or index >= getattr(cfg, count_field):
                return None
            sub, family = table[module]
            leaf, transform = layer_families(cfg)[family][kind]
            path, slot = layer_path(stack, index, sub, leaf, cfg)
            return [_Target(path, transform.to_ours, layer=slot, stack=stack)]
    if key in TOP_LEVEL:
        path, transform = TOP_LEVEL[key]
        return [_Target(path, transform.to_ours)]
    return None


# --- reading the source ------------------------------------------------------------------------------------

def read_json(path: Path) -> Any:
    """The JSON value of ``path``; a ``ConversionError`` naming the file, line and column if it is not JSON."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise ConversionError(f"{path} is not UTF-8 text (byte {error.start} is not UTF-8), so not a JSON file; "
                              f"re-save it with save_pretrained") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise ConversionError(f"{path} is not valid JSON: {error.msg} at line {error.lineno}, column "
                              f"{error.colno}; fix the file or re-save it with save_pretrained") from None


def weight_files(source: Path) -> list[Path]:
    """The weight files of a Hugging Face checkpoint directory, in index order."""
    if not source.is_dir():
        raise ConversionError(f"{source} is not a directory; expected a Hugging Face checkpoint directory "
                              f"(config.json + pytorch_model*.bin or model*.safetensors)")
    for index_name in ("pytorch_model.bin.index.json", "model.safetensors.index.json"):
        index = source / index_name
        if index.is_file():
            weight_map = read_json(index)
            weight_map = weight_map.get("weight_map") if isinstance(weight_map, dict) else None
            if not isinstance(weight_map, dict) or not all(isinstance(f, str) for f in weight_map.values()):
                raise ConversionError(f"{index} has no \"weight_map\" object of tensor name -> shard file name; "
                                      f"re-save the checkpoint with save_pretrained")
            files = list(dict.fromkeys(weight_map.values()))
            missing = [f for f in files if not (source / f).is_file()]
            if missing:
                raise ConversionError(f"{index} lists shard(s) that are missing: {missing}")
            return [source / f for f in files]
    for single in ("pytorch_model.bin", "model.safetensors"):
        if (source / single).is_file():
            return [source / single]
    raise ConversionError(f"{source} holds no checkpoint weights: expected pytorch_model.bin(.index.json) or "
                          f"model.safetensors(.index.json)")


def _damaged(path: Path, kind: str, error: BaseException) -> ConversionError:
    reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return ConversionError(f"{path} cannot be read as a {kind} file ({reason}); it may be truncated or damaged: "
                           f"copy or download it again")


def _load_torch_state(path: Path) -> dict:
    """The state dict of a ``.bin`` file, read with ``weights_only=True`` (tensors only, no code runs)."""
    import pickle
    import zipfile

    try:
        import torch
    except ImportError:
        raise ConversionError("Reading .bin checkpoints needs PyTorch: pip install 'alexatm_jax[convert]'") from None
    try:
        # mmap needs torch's zip format (torch >= 1.6); the legacy format is read whole.
        state = torch.load(str(path), map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except pickle.UnpicklingError as error:
        if "global" in str(error).lower():  # the weights-only unpickler met a class or function reference
            raise ConversionError(
                f"{path} contains pickled Python objects, not only tensors; refusing to load it (unsafe). "
                f"Re-save it with torch.save(state_dict) or convert to safetensors") from None
        raise _damaged(path, "PyTorch checkpoint", error) from None
    except Exception as error:  # noqa: BLE001  (torch reports a damaged file as any of several types)
        raise _damaged(path, "PyTorch checkpoint", error) from None
    if not isinstance(state, dict):
        raise ConversionError(f"{path} holds a {type(state).__name__}, not a state dict of named tensors; "
                              f"re-save it with torch.save(model.state_dict())")
    return state


def iterate_tensors(path: Path) -> Iterator[tuple[str, np.ndarray]]:
    """(key, float32-or-native numpy array) pairs of one weight file, loaded lazily where possible."""
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError, safe_open

        try:
            handle = safe_open(str(path), framework="numpy")
        except (SafetensorError, OSError) as error:
            raise _damaged(path, "safetensors", error) from None
        with handle:
            for key in handle.keys():
                try:
                    tensor = handle.get_tensor(key)
                except (SafetensorError, OSError) as error:
                    raise _damaged(path, "safetensors", error) from None
                yield key, tensor
        return
    import torch

    state = _load_torch_state(path)
    for key in list(state):
        tensor = state.pop(key)
        if not isinstance(tensor, torch.Tensor):
            raise ConversionError(f"{path} holds a {type(tensor).__name__} under {key!r}, not a tensor; a "
                                  f"checkpoint shard must map parameter names to tensors only")
        if tensor.dtype == torch.bfloat16:
            tensor = tensor.float()
        yield key, tensor.numpy()
        del tensor


def find_tokenizer(source: Path) -> Optional[Path]:
    preferred = source / "20b_tokenizer.model"
    if preferred.is_file():
        return preferred
    candidates = sorted(source.glob("*.model"))
    return candidates[0] if candidates else None


# --- conversion --------------------------------------------------------------------------------------------

def _set_path(tree: dict, path: tuple, value):
    for name in path[:-1]:
        tree = tree.setdefault(name, {})
    tree[path[-1]] = value


def _get_path(tree: dict, path: tuple):
    for name in path:
        tree = tree[name]
    return tree


def convert_state(source: Path, cfg: ModelConfig, expected: Any, param_dtype: str) -> dict:
    """Builds our parameter tree from the source shards. ``expected`` holds the abstract (shape, dtype)
    tree the model needs; every leaf must be filled exactly once (a shared table may arrive twice)."""
    import jax
    import ml_dtypes  # noqa: F401  (registers bfloat16 with numpy)

    dtype = np.dtype(jax.numpy.dtype(param_dtype))
    params: dict = {}
    filled: dict[tuple, set] = {}
    unexpected, mismatched = [], []
    for path in weight_files(source):
        for key, tensor in iterate_tensors(path):
            targets = target_for_key(key, cfg)
            if targets is None:
                unexpected.append(key)
                continue
            for target in targets:
                try:
                    want = _get_path(expected, target.path)
                except KeyError:
                    unexpected.append(key)
                    continue
                value = target.transform(tensor)
                want_shape = want.shape[1:] if target.layer is not None else want.shape
                if tuple(value.shape) != tuple(want_shape):
                    mismatched.append(f"{key}: source {tuple(tensor.shape)} -> {tuple(value.shape)}, "
                                      f"model expects {tuple(want_shape)} at {'/'.join(target.path)}")
                    continue
                if target.layer is None:
                    _set_path(params, target.path, np.asarray(value, dtype=dtype))
                    filled.setdefault(target.path, set()).add(None)
                else:
                    try:
                        stacked = _get_path(params, target.path)
                    except KeyError:
                        stacked = np.empty(want.shape, dtype=dtype)
                        _set_path(params, target.path, stacked)
                    stacked[target.layer] = value
                    filled.setdefault(target.path, set()).add(target.layer)
    missing = []
    for path, leaf in _flatten(expected):
        got = filled.get(path, set())
        layers_needed = set(range(leaf.shape[0])) if path[1:2] == ("layers",) else {None}
        if not layers_needed <= got:
            absent = sorted(layers_needed - got, key=lambda x: -1 if x is None else x)
            missing.append("/".join(path) + ("" if absent == [None] else f" (layers {absent})"))
    problems = []
    if missing:
        problems.append(f"missing weights for {missing}")
    if unexpected:
        problems.append(f"unexpected keys {sorted(set(unexpected))[:20]}"
                        + (f" (+{len(set(unexpected)) - 20} more)" if len(set(unexpected)) > 20 else ""))
    if mismatched:
        problems.append("shape mismatches: " + "; ".join(mismatched[:10]))
    if problems:
        raise ConversionError(f"Checkpoint {source} does not match its config.json: " + " | ".join(problems))
    return params


def _flatten(tree, prefix=()):
    if isinstance(tree, dict):
        for name, sub in tree.items():
            yield from _flatten(sub, prefix + (name,))
    else:
        yield prefix, tree


def _report_to_log(line: str) -> None:
    logging.getLogger("alexatm_jax.convert").warning(line)


def convert(source: str | Path, destination: str | Path, scan_layers: bool = False,
            param_dtype: str = "float32", overwrite: bool = False,
            report: Callable[[str], None] = _report_to_log) -> Path:
    """Converts a Hugging Face AlexaTM directory into an alexatm_jax model directory; returns its path.

    Everything that can be checked cheaply (config fields, weight files, tokenizer) is checked before any
    tensor is read. ``report`` receives one line listing the config fields the conversion ignores, if any.
    """
    from alexatm_jax.checkpoints.model_dir import abstract_params, save_model_dir
    from alexatm_jax.data.vocab import load_sentencepiece

    source = Path(source)
    if Path(destination).exists() and not overwrite:  # before the long part; save_model_dir checks it again
        raise FileExistsError(f"{Path(destination).absolute()} already exists; pass overwrite=True (--overwrite) "
                              f"or choose another path")
    config_path = source / "config.json"
    if not config_path.is_file():
        raise ConversionError(f"{source} is not a checkpoint directory: {config_path.name} is missing")
    reference_config = read_json(config_path)
    reading = read_reference_config(reference_config, scan_layers=scan_layers, param_dtype=param_dtype,
                                    name=str(config_path))
    cfg = reading.config
    weight_files(source)  # fails early on a missing or unreadable index
    tokenizer = find_tokenizer(source)
    if tokenizer is not None:
        load_sentencepiece(tokenizer)
    warning = reading.warning(str(config_path))
    if warning:
        report(warning)
    expected = abstract_params(cfg)
    params = convert_state(source, cfg, expected, param_dtype)
    provenance = {"converted_from": str(source.absolute()), "reference_config": reference_config,
                  "ignored_config_fields": sorted(reading.ignored), "scan_layers": scan_layers,
                  "param_dtype": param_dtype}
    return save_model_dir(destination, cfg, params, tokenizer_path=tokenizer,
                          provenance=provenance, overwrite=overwrite)
