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
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import numpy as np

from alexatm_jax.model.config import ModelConfig

# Fields of the reference config (AlexaTMSeq2SeqConfig + transformers' PretrainedConfig, 4.26) that we read,
# or that cannot change what the model computes at inference (generation defaults, bookkeeping, training-only
# switches). Anything else is refused: silently ignoring an unknown architecture switch gives wrong numbers.
_IGNORED_CONFIG_FIELDS = frozenset("""
_name_or_path activation_dropout add_cross_attention architectures attention_dropout attention_probs_dropout_prob
bad_words_ids begin_suppress_tokens chunk_size_feed_forward cross_attention_hidden_size decoder_layerdrop
diversity_penalty do_sample dropout early_stopping encoder_layerdrop encoder_no_repeat_ngram_size
exponential_decay_length_penalty extra_pos_embeddings finetuning_task force_bos_token_to_be_generated
forced_bos_token_id forced_eos_token_id fp32_cast_layer_norm fp32_cast_query_key gradient_checkpointing
hidden_dropout_prob id2label init_std initializer_range is_decoder is_encoder_decoder label2id length_penalty
max_length min_length model_type no_repeat_ngram_size num_beam_groups num_beams num_hidden_layers
num_return_sequences output_attentions output_hidden_states output_scores prefix problem_type pruned_heads
remove_invalid_values repetition_penalty return_dict return_dict_in_generate sep_token_id suppress_tokens
task_specific_params temperature tf_legacy_loss tie_encoder_decoder tokenizer_class top_k top_p torch_dtype
torchscript transformers_version typical_p use_bfloat16 use_cache intermediate_size output_past
""".split())
_READ_CONFIG_FIELDS = frozenset("""
vocab_size d_model encoder_layers decoder_layers encoder_attention_heads decoder_attention_heads encoder_ffn_dim
decoder_ffn_dim max_position_embeddings type_vocab_size layer_norm_eps hidden_act position_embedding_type
share_embeddings tie_word_embeddings pad_token_id bos_token_id eos_token_id decoder_start_token_id
""".split())


class ConversionError(ValueError):
    """The source is not a convertible AlexaTM checkpoint; the message says what is wrong."""


def config_from_reference(ref: dict, scan_layers: bool = False, param_dtype: str = "float32") -> ModelConfig:
    """Maps a reference ``config.json`` dict to our ModelConfig, refusing what we cannot reproduce."""
    unknown = sorted(set(ref) - _IGNORED_CONFIG_FIELDS - _READ_CONFIG_FIELDS)
    if unknown:
        raise ConversionError(f"Unknown field(s) in config.json: {unknown}. They may change the architecture, "
                              f"so the conversion stops rather than guess.")
    problems = []
    if ref.get("encoder_attention_heads", 16) != ref.get("decoder_attention_heads", 16):
        problems.append("encoder and decoder head counts differ (unsupported)")
    if ref.get("position_embedding_type", "absolute") != "absolute":
        problems.append(f"position_embedding_type={ref['position_embedding_type']!r} (only 'absolute')")
    act = ref.get("hidden_act", "gelu")
    if act not in ("gelu", "relu"):
        problems.append(f"hidden_act={act!r} (supported: 'gelu', 'relu')")
    if problems:
        raise ConversionError("Cannot convert this config: " + "; ".join(problems))
    bos = ref.get("bos_token_id", 0)
    start = ref.get("decoder_start_token_id")
    return ModelConfig(
        vocab_size=ref.get("vocab_size", 50265), d_model=ref.get("d_model", 1024),
        encoder_layers=ref.get("encoder_layers", 12), decoder_layers=ref.get("decoder_layers", 12),
        num_heads=ref.get("encoder_attention_heads", 16), encoder_ffn_dim=ref.get("encoder_ffn_dim", 4096),
        decoder_ffn_dim=ref.get("decoder_ffn_dim", 4096),
        max_position_embeddings=ref.get("max_position_embeddings", 1024),
        type_vocab_size=ref.get("type_vocab_size", 2), layer_norm_eps=ref.get("layer_norm_eps", 1e-12),
        norm_type="alexatm_layernorm", ffn_type=act,
        share_embeddings=bool(ref.get("share_embeddings", True)),
        tie_word_embeddings=bool(ref.get("tie_word_embeddings", True)),
        use_final_logits_bias=True,
        dropout_rate=ref.get("dropout", 0.1), attention_dropout_rate=ref.get("attention_dropout", 0.0),
        pad_token_id=ref.get("pad_token_id", 1), bos_token_id=bos, eos_token_id=ref.get("eos_token_id", 2),
        # transformers falls back to bos when the config names no decoder start token; so do we.
        decoder_start_token_id=bos if start is None else start,
        scan_layers=scan_layers, param_dtype=param_dtype,
        dtype="float32" if param_dtype == "float32" else param_dtype)


# --- key mapping -------------------------------------------------------------------------------------------

def _linear_qkv(cfg: ModelConfig):
    h, k, d = cfg.num_heads, cfg.head_dim, cfg.d_model
    return {"weight": ("kernel", lambda w: w.T.reshape(d, h, k)), "bias": ("bias", lambda b: b.reshape(h, k))}


def _linear_out(cfg: ModelConfig):
    h, k, d = cfg.num_heads, cfg.head_dim, cfg.d_model
    return {"weight": ("kernel", lambda w: w.T.reshape(h, k, d)), "bias": ("bias", lambda b: b)}


_LINEAR = {"weight": ("kernel", lambda w: w.T), "bias": ("bias", lambda b: b)}
_NORM = {"weight": ("scale", lambda w: w), "bias": ("bias", lambda b: b)}

_ENCODER_LAYER = {
    "layer_norm": (("pre_attention_layer_norm",), "norm"),
    "attention.self.query": (("attention", "query"), "qkv"),
    "attention.self.key": (("attention", "key"), "qkv"),
    "attention.self.value": (("attention", "value"), "qkv"),
    "attention.output.dense": (("attention", "out"), "out"),
    "intermediate.layer_norm": (("pre_mlp_layer_norm",), "norm"),
    "intermediate.dense": (("mlp", "wi"), "linear"),
    "output.dense": (("mlp", "wo"), "linear"),
}
_DECODER_LAYER = {
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
_ENC_RE = re.compile(r"^model\.encoder\.pre_ln_encoder\.layer\.(\d+)\.(.+)\.(weight|bias)$")
_DEC_RE = re.compile(r"^model\.decoder\.layers\.(\d+)\.(.+)\.(weight|bias)$")
# Buffers and aliases that carry no parameter of their own.
_SKIPPED_KEYS = {"model.encoder.position_ids"}


class _Target:
    """Where one source tensor goes: a parameter path, an optional layer slot, and a transform."""

    def __init__(self, path: tuple, transform: Callable, layer: Optional[int] = None, stack: str = ""):
        self.path, self.transform, self.layer, self.stack = path, transform, layer, stack


def target_for_key(key: str, cfg: ModelConfig) -> Optional[list[_Target]]:
    """The destination(s) of a reference state-dict key, or None if the key is not part of the model."""
    if key in _SKIPPED_KEYS:
        return []
    for regex, stack, table, count in ((_ENC_RE, "encoder", _ENCODER_LAYER, cfg.encoder_layers),
                                       (_DEC_RE, "decoder", _DECODER_LAYER, cfg.decoder_layers)):
        match = regex.match(key)
        if match:
            index, module, kind = int(match.group(1)), match.group(2), match.group(3)
            if module not in table or index >= count:
                return None
            sub, family = table[module]
            mapping = {"norm": _NORM, "linear": _LINEAR, "qkv": _linear_qkv(cfg), "out": _linear_out(cfg)}[family]
            leaf, transform = mapping[kind]
            layers = "layers" if cfg.scan_layers else f"layers_{index}"
            return [_Target((stack, layers) + sub + (leaf,), transform,
                            layer=index if cfg.scan_layers else None, stack=stack)]
    embed = lambda w: w  # noqa: E731
    simple = {
        "final_logits_bias": [_Target(("decoder", "final_logits_bias"), lambda b: b.reshape(-1))],
        "model.encoder.position_embeddings.weight": [_Target(("encoder", "position_embedder", "embedding"), embed)],
        "model.encoder.token_type_embeddings.weight": [
            _Target(("encoder", "token_type_embedder", "embedding"), embed)],
        "model.encoder.pre_ln_encoder.layer_norm.weight": [_Target(("encoder", "encoder_norm", "scale"), embed)],
        "model.encoder.pre_ln_encoder.layer_norm.bias": [_Target(("encoder", "encoder_norm", "bias"), embed)],
        "model.decoder.embed_positions.weight": [_Target(("decoder", "position_embedder", "embedding"), embed)],
        "model.decoder.layernorm_output.weight": [_Target(("decoder", "decoder_norm", "scale"), embed)],
        "model.decoder.layernorm_output.bias": [_Target(("decoder", "decoder_norm", "bias"), embed)],
        # The encoder's table is saved under either name (transformers drops one of two aliased tensors).
        "model.shared.weight": [_Target(("encoder_token_embedder", "embedding"), embed)],
        "model.encoder.token_embeddings.weight": [_Target(("encoder_token_embedder", "embedding"), embed)],
    }
    if key in simple:
        return simple[key]
    if key == "model.decoder.embed_tokens.weight":
        return [] if cfg.share_embeddings else [_Target(("decoder_token_embedder", "embedding"), embed)]
    if key == "lm_head.weight":
        return [] if cfg.tie_word_embeddings else [_Target(("decoder", "logits_dense", "kernel"), lambda w: w.T)]
    return None


# --- reading the source ------------------------------------------------------------------------------------

def weight_files(source: Path) -> list[Path]:
    """The weight files of a Hugging Face checkpoint directory, in index order."""
    if not source.is_dir():
        raise ConversionError(f"{source} is not a directory; expected a Hugging Face checkpoint directory "
                              f"(config.json + pytorch_model*.bin or model*.safetensors)")
    for index_name in ("pytorch_model.bin.index.json", "model.safetensors.index.json"):
        index = source / index_name
        if index.is_file():
            weight_map = json.loads(index.read_text())["weight_map"]
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


def iterate_tensors(path: Path) -> Iterator[tuple[str, np.ndarray]]:
    """(key, float32-or-native numpy array) pairs of one weight file, loaded lazily where possible."""
    if path.suffix == ".safetensors":
        from safetensors import safe_open
        with safe_open(str(path), framework="numpy") as handle:
            for key in handle.keys():
                yield key, handle.get_tensor(key)
        return
    try:
        import torch
    except ImportError:
        raise ConversionError("Reading .bin checkpoints needs PyTorch: pip install 'alexatm_jax[convert]'") from None
    state = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
    for key in list(state):
        tensor = state.pop(key)
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


def convert(source: str | Path, destination: str | Path, scan_layers: bool = False,
            param_dtype: str = "float32", overwrite: bool = False) -> Path:
    """Converts a Hugging Face AlexaTM directory into an alexatm_jax model directory; returns its path."""
    from alexatm_jax.checkpoints.model_dir import abstract_params, save_model_dir

    source = Path(source)
    config_path = source / "config.json"
    if not config_path.is_file():
        raise ConversionError(f"{source} is not a checkpoint directory: {config_path.name} is missing")
    reference_config = json.loads(config_path.read_text())
    cfg = config_from_reference(reference_config, scan_layers=scan_layers, param_dtype=param_dtype)
    expected = abstract_params(cfg)
    params = convert_state(source, cfg, expected, param_dtype)
    provenance = {"converted_from": str(source.absolute()), "reference_config": reference_config,
                  "scan_layers": scan_layers, "param_dtype": param_dtype}
    return save_model_dir(destination, cfg, params, tokenizer_path=find_tokenizer(source),
                          provenance=provenance, overwrite=overwrite)
