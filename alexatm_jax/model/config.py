"""Model configuration: one frozen dataclass and the named presets.

The defaults reproduce the AlexaTM 20B architecture family exactly (pre-LN encoder and decoder, the
reference's LayerNorm, learned absolute positions with the BART-style offset of 2 on the decoder side,
RoBERTa-style token-type embeddings on the encoder side, untied embeddings and LM head with a
``final_logits_bias``, exact-erf GeLU, LayerNorm eps 1e-12). Ablation switches select the usual
alternatives (tied embeddings, RMSNorm or textbook LayerNorm, gated-GeLU feed-forward).
"""

from __future__ import annotations

import dataclasses
import json
import numbers
from typing import Any, Mapping

NORM_TYPES = ("alexatm_layernorm", "layernorm", "rmsnorm")
FFN_TYPES = ("gelu", "gated_gelu", "relu")
REMAT_POLICIES = ("none", "full", "dots", "dots_with_no_batch_dims", "save_attention_out")
ATTENTION_IMPLS = ("auto", "plain", "fused")  # model/attention.py: auto = fused on GPU/TPU, plain on CPU


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Architecture of an AlexaTM-style encoder-decoder.

    Sizes follow the reference config names where one exists (``d_model``, ``encoder_layers``...).
    ``dtype`` is the compute dtype of activations; ``param_dtype`` the dtype parameters are stored in.
    """

    vocab_size: int = 32128
    d_model: int = 512
    encoder_layers: int = 6
    decoder_layers: int = 6
    num_heads: int = 8
    encoder_ffn_dim: int = 2048
    decoder_ffn_dim: int = 2048
    max_position_embeddings: int = 1024
    decoder_position_offset: int = 2  # BART-style: decoder position p uses embedding row p + 2.
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    norm_type: str = "alexatm_layernorm"
    ffn_type: str = "gelu"
    # Embedding sharing, as in the reference: ``share_embeddings`` makes the decoder use the encoder's
    # token table; ``tie_word_embeddings`` makes the LM head the decoder's token table (transposed).
    share_embeddings: bool = False
    tie_word_embeddings: bool = False
    use_final_logits_bias: bool = True
    dropout_rate: float = 0.1
    attention_dropout_rate: float = 0.0
    init_std: float = 0.02
    pad_token_id: int = 1
    bos_token_id: int = 0
    eos_token_id: int = 2
    decoder_start_token_id: int = 2
    # Performance switches: none of these change the function the model computes.
    # Scanned layer stacks by default: on a 2-core CPU the train step is 1.2x faster than unrolled
    # (benchmarks/results/train_step.md) and the compile time stays flat in depth; decoding unrolls them
    # itself (decoding/generation.py). Models saved unrolled keep their layout (config.json says which).
    scan_layers: bool = True
    # Save only the weight matmuls' outputs for the backward pass; recompute the elementwise rest and the
    # attention products (batched dots: their [batch, heads, length, length] outputs are the largest
    # residuals and the cheapest to redo). Less memory than "dots" or "none"; on a 2-core CPU the f32 train
    # step is 1.04x "dots" and 1.2x "none" (fewer stacked residuals to write and read;
    # benchmarks/results/train_step.md). Gradients are bit-identical to "dots".
    remat_policy: str = "dots_with_no_batch_dims"
    attention_impl: str = "auto"
    dtype: str = "float32"
    param_dtype: str = "float32"

    def __post_init__(self):
        problems = _type_problems(self)
        if problems:  # e.g. --gin.ModelConfig.d_model=big: the checks below would fail on the arithmetic
            raise ValueError("Invalid ModelConfig: " + "; ".join(problems))
        if self.d_model % self.num_heads:
            problems.append(f"d_model={self.d_model} is not divisible by num_heads={self.num_heads}")
        if self.norm_type not in NORM_TYPES:
            problems.append(f"norm_type={self.norm_type!r} is not one of {NORM_TYPES}")
        if self.ffn_type not in FFN_TYPES:
            problems.append(f"ffn_type={self.ffn_type!r} is not one of {FFN_TYPES}")
        if self.remat_policy not in REMAT_POLICIES:
            problems.append(f"remat_policy={self.remat_policy!r} is not one of {REMAT_POLICIES}")
        if self.attention_impl not in ATTENTION_IMPLS:
            problems.append(f"attention_impl={self.attention_impl!r} is not one of {ATTENTION_IMPLS}")
        for name in ("vocab_size", "d_model", "encoder_layers", "decoder_layers", "num_heads",
                     "encoder_ffn_dim", "decoder_ffn_dim", "max_position_embeddings", "type_vocab_size"):
            if getattr(self, name) <= 0:
                problems.append(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("dtype", "param_dtype"):
            if getattr(self, name) not in ("float32", "bfloat16", "float16"):
                problems.append(f"{name}={getattr(self, name)!r} is not float32, bfloat16 or float16")
        if problems:
            raise ValueError("Invalid ModelConfig: " + "; ".join(problems))

    @property
    def head_dim(self) -> int:
        return self.d_model // self.num_heads

    def replace(self, **changes: Any) -> "ModelConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "ModelConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(
                f"Unknown ModelConfig field(s) {unknown}. Known fields: {sorted(known)}.")
        return cls(**values)

    @classmethod
    def from_json(cls, text: str) -> "ModelConfig":
        return cls.from_dict(json.loads(text))


_FIELD_TYPES = {"int": (numbers.Integral, "an integer"), "float": (numbers.Real, "a number"),
                "bool": (bool, "True or False"), "str": (str, "a string")}


def _type_problems(config: ModelConfig) -> list[str]:
    """Each field whose value is not of its declared type (bools are not integers or numbers here)."""
    problems = []
    for field in dataclasses.fields(config):
        wanted, words = _FIELD_TYPES.get(field.type, (None, None))
        value = getattr(config, field.name)
        if wanted is not None and (not isinstance(value, wanted) or (field.type != "bool" and isinstance(value, bool))):
            problems.append(f"{field.name} must be {words}, got {value!r}")
    return problems


# AlexaTM's tokenizer has about 150K pieces; 150_016 keeps the vocabulary a multiple of 128 (tensor
# parallel friendly) and puts the 20b total within 0.3% of the paper's 19.75B.
_ALEXATM_VOCAB = 150_016

PRESETS: dict[str, ModelConfig] = {
    # CI-sized: trains at hundreds of steps per minute on 2 CPU cores.
    "tiny": ModelConfig(vocab_size=8192, d_model=128, encoder_layers=2, decoder_layers=2, num_heads=4,
                        encoder_ffn_dim=512, decoder_ffn_dim=512, max_position_embeddings=512),
    "small": ModelConfig(vocab_size=32_000, d_model=512, encoder_layers=6, decoder_layers=6, num_heads=8,
                         encoder_ffn_dim=2048, decoder_ffn_dim=2048),
    "base": ModelConfig(vocab_size=_ALEXATM_VOCAB, d_model=768, encoder_layers=12, decoder_layers=12,
                        num_heads=12, encoder_ffn_dim=3072, decoder_ffn_dim=3072),
    "large": ModelConfig(vocab_size=_ALEXATM_VOCAB, d_model=1024, encoder_layers=24, decoder_layers=24,
                         num_heads=16, encoder_ffn_dim=4096, decoder_ffn_dim=4096),
    # About 3B: AlexaTM's depth ratio (encoder deeper than decoder) at d_model 2048.
    "xl": ModelConfig(vocab_size=_ALEXATM_VOCAB, d_model=2048, encoder_layers=24, decoder_layers=16,
                      num_heads=32, encoder_ffn_dim=8192, decoder_ffn_dim=8192),
    # AlexaTM 20B (Soltan et al. 2022): 46 encoder / 32 decoder layers, d_model 4096, 32 heads, FFN 16384.
    "20b": ModelConfig(vocab_size=_ALEXATM_VOCAB, d_model=4096, encoder_layers=46, decoder_layers=32,
                       num_heads=32, encoder_ffn_dim=16384, decoder_ffn_dim=16384,
                       scan_layers=True, remat_policy="full", dtype="bfloat16"),
}


def get_preset(name: str) -> ModelConfig:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"Unknown model preset {name!r}; choose one of {sorted(PRESETS)}") from None
