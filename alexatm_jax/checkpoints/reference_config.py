"""What each field of a reference ``config.json`` means to a conversion, judged by the reference's own code.

The reference is alexa-teacher-models 1.0.1 (``AlexaTMSeq2SeqConfig``, ``modeling_atm``) on transformers 4.26.1
(``PretrainedConfig``, ``PreTrainedModel``, ``generate``). Its config class descends from BART's, and configs
saved by it can carry keys that no code reads. So a field is judged by what that code does with it, not by
its name:

* mapped: read by the reference and reproduced by our ``ModelConfig`` (values checked, then used).
* must match: read by the reference, and any other value changes or breaks what it computes; we do not
  reproduce it, so another value is a ``ConversionError`` naming the field and why.
* neutral: read, but only for training (dropout, layer drop, init), memory (gradient checkpointing, FFN
  chunking, KV cache), output format, loading bookkeeping, or precision paths our model always takes
  (LayerNorm statistics and attention scores in float32): accepted silently.
* generation defaults: read only by the reference's ``generate()`` as defaults; ours takes them as arguments.
  Listed in the warning when they differ from transformers' defaults.
* declared but unread: stored by the reference's config class, read by none of its code (BART leftovers);
  listed in the warning when they differ from the class default.
* derived: copies the reference's config recomputes from another field when it loads.
* anything else: read by nobody; listed in the warning and ignored.

The tables were made by reading that code; ``tests/test_input_errors_convert.py`` checks them against the
reference (its config classes' fields and defaults, and its outputs with the ignored fields set).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Optional

from alexatm_jax.model.config import ModelConfig


class ConversionError(ValueError):
    """The source is not a convertible AlexaTM checkpoint; the message says what is wrong."""


# Mapped fields and the reference's default for each (AlexaTMSeq2SeqConfig; PretrainedConfig for
# tie_word_embeddings and decoder_start_token_id, whose None means "use bos").
MAPPED: dict[str, Any] = {
    "vocab_size": 50265, "d_model": 1024, "encoder_layers": 12, "decoder_layers": 12,
    "encoder_attention_heads": 16, "decoder_attention_heads": 16, "encoder_ffn_dim": 4096, "decoder_ffn_dim": 4096,
    "max_position_embeddings": 1024, "type_vocab_size": 2, "layer_norm_eps": 1e-12, "hidden_act": "gelu",
    "share_embeddings": True, "tie_word_embeddings": True, "pad_token_id": 1, "bos_token_id": 0,
    "eos_token_id": 2, "decoder_start_token_id": None, "dropout": 0.1, "attention_dropout": 0.0,
}
_POSITIVE_INTS = ("vocab_size", "d_model", "encoder_layers", "decoder_layers", "encoder_attention_heads",
                  "decoder_attention_heads", "encoder_ffn_dim", "decoder_ffn_dim", "max_position_embeddings",
                  "type_vocab_size")
_TOKEN_IDS = ("pad_token_id", "bos_token_id", "eos_token_id", "decoder_start_token_id")
# transformers' ACT2FN names whose function we compute exactly ("gelu" is the erf GeLU).
_ACTIVATIONS = {"gelu": "gelu", "relu": "relu"}

# field -> (is the value accepted?, the reference's value, what another value does in the reference).
MUST_MATCH: dict[str, tuple[Callable[[Any], bool], Any, str]] = {
    "is_decoder": (lambda v: v is False, False,
                   "it makes the reference's encoder attend causally (transformers' decoder mask), which "
                   "alexatm_jax does not implement"),
    "add_cross_attention": (lambda v: v is False, False,
                            "it adds cross-attention to the reference's encoder layers, which the reference "
                            "itself refuses to build"),
    "pruned_heads": (lambda v: not v, {}, "the reference cannot load pruned attention heads (its encoder has no "
                                          "head pruning) and alexatm_jax has none either"),
    "is_encoder_decoder": (lambda v: v is True, True,
                           "the reference then runs the model as decoder-only, which fails"),
}

NEUTRAL = frozenset("""
activation_dropout hidden_dropout_prob attention_probs_dropout_prob decoder_layerdrop init_std initializer_range
gradient_checkpointing chunk_size_feed_forward use_cache output_attentions output_hidden_states return_dict
torchscript output_scores return_dict_in_generate fp32_cast_layer_norm fp32_cast_query_key tie_encoder_decoder
torch_dtype architectures model_type _name_or_path name_or_path _commit_hash transformers_version tokenizer_class
prefix task_specific_params finetuning_task id2label label2id num_labels problem_type sep_token_id
cross_attention_hidden_size use_bfloat16 tf_legacy_loss xla_device
""".split())
# tie_encoder_decoder is read by PreTrainedModel.tie_weights, but the reference's encoder and decoder share no
# module names, so nothing is tied (its outputs are unchanged with it set).

# transformers 4.26.1 GenerationConfig defaults of the fields generate() reads from a model config.
GENERATION_DEFAULTS: dict[str, Any] = {
    "max_length": 20, "max_new_tokens": None, "min_length": 0, "min_new_tokens": None, "early_stopping": False,
    "max_time": None, "do_sample": False, "num_beams": 1, "num_beam_groups": 1, "penalty_alpha": None,
    "temperature": 1.0, "top_k": 50, "top_p": 1.0, "typical_p": 1.0, "epsilon_cutoff": 0.0, "eta_cutoff": 0.0,
    "diversity_penalty": 0.0, "repetition_penalty": 1.0, "encoder_repetition_penalty": 1.0,
    "length_penalty": 1.0, "no_repeat_ngram_size": 0, "bad_words_ids": None, "force_words_ids": None,
    "renormalize_logits": False, "constraints": None, "forced_bos_token_id": None, "forced_eos_token_id": None,
    "remove_invalid_values": False, "exponential_decay_length_penalty": None, "suppress_tokens": None,
    "begin_suppress_tokens": None, "forced_decoder_ids": None, "num_return_sequences": 1,
    "encoder_no_repeat_ngram_size": 0,
}

# Stored by AlexaTMSeq2SeqConfig, read by none of the reference's code (the decoder's position offset is fixed at
# 2, the encoder's positions are always absolute, the encoder has no layer drop), with the class defaults.
DECLARED_UNREAD: dict[str, Any] = {
    "extra_pos_embeddings": 2, "force_bos_token_to_be_generated": False, "position_embedding_type": "absolute",
    "encoder_layerdrop": 0.0,
}

# Copies the reference's config recomputes on load: field -> the field it is copied from. The first two are
# overwritten (a value in config.json is ignored); the last two are read-only properties (the reference
# cannot load a config.json that sets them), accepted here only when they agree.
DERIVED_OVERWRITTEN = {"num_hidden_layers": "encoder_layers", "intermediate_size": "encoder_ffn_dim"}
DERIVED_PROPERTIES = {"hidden_size": "d_model", "num_attention_heads": "encoder_attention_heads"}


@dataclasses.dataclass(frozen=True)
class ReferenceConfig:
    """A reference config read for conversion: the model config, and what was left out of it."""

    config: ModelConfig
    ignored: dict  # field -> value: fields the reference's code never reads
    generation: dict  # field -> value: non-default generation defaults of the reference's generate()

    def warning(self, name: str = "config.json") -> Optional[str]:
        """One line listing what the conversion ignores, or None when nothing is."""
        parts = []
        if self.ignored:
            parts.append(f"ignoring {len(self.ignored)} field(s) that the reference's code never reads: "
                         + _listing(self.ignored))
        if self.generation:
            parts.append("not applying the reference's generate() defaults (pass them to generate): "
                         + _listing(self.generation))
        return f"{name}: " + "; ".join(parts) if parts else None


def _listing(fields: dict) -> str:
    return ", ".join(f"{key}={value!r}" for key, value in sorted(fields.items()))


def _same(a, b) -> bool:
    """Equal as JSON values (1 is not True; 1 equals 1.0)."""
    return a == b and isinstance(a, bool) == isinstance(b, bool)


def _check_mapped(ref: dict) -> list[str]:
    """Type and range problems of the mapped fields, each naming the field and its value."""
    problems = []
    value = lambda name: ref.get(name, MAPPED[name])  # noqa: E731
    for name in _POSITIVE_INTS:
        v = value(name)
        if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
            problems.append(f"{name}={v!r} must be a positive integer")
    vocab = value("vocab_size")
    for name in _TOKEN_IDS:
        v = value(name)
        if v is None and name == "decoder_start_token_id":
            continue
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            problems.append(f"{name}={v!r} must be a token id (an integer >= 0)")
        elif isinstance(vocab, int) and v >= vocab:
            problems.append(f"{name}={v} is outside the vocabulary (vocab_size={vocab})")
    eps = value("layer_norm_eps")
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps > 0 or not math.isfinite(eps):
        problems.append(f"layer_norm_eps={eps!r} must be a positive number")
    for name in ("dropout", "attention_dropout"):
        v = value(name)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v < 1:
            problems.append(f"{name}={v!r} must be a probability in [0, 1)")
    for name in ("share_embeddings", "tie_word_embeddings"):
        if not isinstance(value(name), bool):
            problems.append(f"{name}={value(name)!r} must be true or false")
    act = value("hidden_act")
    if act not in _ACTIVATIONS:
        problems.append(f"hidden_act={act!r} is not supported: alexatm_jax computes {sorted(_ACTIVATIONS)} "
                        f"exactly and would give different numbers for another activation")
    heads = (value("encoder_attention_heads"), value("decoder_attention_heads"))
    if not problems and heads[0] != heads[1]:
        problems.append(f"encoder_attention_heads={heads[0]} and decoder_attention_heads={heads[1]} differ "
                        f"(alexatm_jax uses one head count for both stacks)")
    if not problems and value("d_model") % heads[0]:
        problems.append(f"d_model={value('d_model')} is not divisible by encoder_attention_heads={heads[0]}")
    return problems


def read_reference_config(ref: Any, scan_layers: bool = False, param_dtype: str = "float32",
                          name: str = "config.json") -> ReferenceConfig:
    """Maps a reference ``config.json`` dict to our ModelConfig; raises ``ConversionError`` naming every field
    we cannot reproduce, and reports the fields it ignores (see the module docstring)."""
    if not isinstance(ref, dict):
        raise ConversionError(f"{name} holds a JSON {type(ref).__name__}, expected an object of config fields")
    problems = _check_mapped(ref)
    for field, (accepted, reference_value, why) in MUST_MATCH.items():
        if field in ref and not accepted(ref[field]):
            problems.append(f"{field}={ref[field]!r} cannot be converted (only {reference_value!r}): {why}")
    for field, source in DERIVED_PROPERTIES.items():
        if field in ref and not _same(ref[field], ref.get(source, MAPPED[source])):
            problems.append(f"{field}={ref[field]!r} contradicts {source}={ref.get(source, MAPPED[source])!r} "
                            f"(the reference derives {field} from {source} and cannot load a config that sets it)")
    if problems:
        raise ConversionError(f"Cannot convert {name}: " + "; ".join(problems))

    ignored, generation = {}, {}
    for field, value in ref.items():
        if field in MAPPED or field in MUST_MATCH or field in NEUTRAL or field in DERIVED_PROPERTIES:
            continue
        if field in GENERATION_DEFAULTS:
            if not _same(value, GENERATION_DEFAULTS[field]):
                generation[field] = value
        elif field in DECLARED_UNREAD:
            if not _same(value, DECLARED_UNREAD[field]):
                ignored[field] = value
        elif field in DERIVED_OVERWRITTEN:
            source = DERIVED_OVERWRITTEN[field]
            if not _same(value, ref.get(source, MAPPED[source])):
                ignored[field] = value
        else:
            ignored[field] = value

    get = lambda field: ref.get(field, MAPPED[field])  # noqa: E731
    start = get("decoder_start_token_id")
    config = ModelConfig(
        vocab_size=get("vocab_size"), d_model=get("d_model"), encoder_layers=get("encoder_layers"),
        decoder_layers=get("decoder_layers"), num_heads=get("encoder_attention_heads"),
        encoder_ffn_dim=get("encoder_ffn_dim"), decoder_ffn_dim=get("decoder_ffn_dim"),
        max_position_embeddings=get("max_position_embeddings"), type_vocab_size=get("type_vocab_size"),
        layer_norm_eps=float(get("layer_norm_eps")), norm_type="alexatm_layernorm",
        ffn_type=_ACTIVATIONS[get("hidden_act")], share_embeddings=get("share_embeddings"),
        tie_word_embeddings=get("tie_word_embeddings"), use_final_logits_bias=True,
        dropout_rate=float(get("dropout")), attention_dropout_rate=float(get("attention_dropout")),
        pad_token_id=get("pad_token_id"), bos_token_id=get("bos_token_id"), eos_token_id=get("eos_token_id"),
        # transformers falls back to bos when the config names no decoder start token; so do we.
        decoder_start_token_id=get("bos_token_id") if start is None else start,
        scan_layers=scan_layers, param_dtype=param_dtype,
        dtype="float32" if param_dtype == "float32" else param_dtype)
    return ReferenceConfig(config=config, ignored=ignored, generation=generation)
