"""The model object: one place that knows the network, its parameters, the batch features and what to compute
from them (loss, scores, predictions), in the sense of T5X's ``EncoderDecoderModel``.

Everything here is a pure function of ``params`` and a batch, so the caller decides how to compile and shard
it: the train step (``training/step.py``), evaluation, scoring and decoding (``inference.py``) and ``plan``
all go through these methods, under a ``partitioning.Partitioner``.

Batches are dicts of ``[batch, length]`` arrays with the seqio feature names of ``alexatm_jax.features``.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from alexatm_jax import features
from alexatm_jax.model.config import ModelConfig
from alexatm_jax.model.transformer import AlexaTMTransformer
from alexatm_jax.training import losses


@dataclasses.dataclass(frozen=True)
class DecodingSettings:
    """How ``predict_batch`` decodes. Greedy by default; ``num_beams > 1`` is beam search with the T5X brevity
    penalty ((5 + length) / 6) ** length_penalty; ``do_sample`` samples with temperature / top-k (0 = off) /
    top-p (1.0 = off). ``stop_sequences``: token-id tuples that end a row like EOS (kept in the output).
    ``use_cache=False`` recomputes the decoder over the whole prefix at each step (the check on the cache)."""

    max_new_tokens: int = 64
    num_beams: int = 1
    length_penalty: float = 0.6
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    stop_sequences: Optional[tuple[tuple[int, ...], ...]] = None
    use_cache: bool = True

    def normalized(self) -> "DecodingSettings":
        """Settings that do not apply to the chosen search are reset, so equal searches compile once."""
        return dataclasses.replace(
            self, length_penalty=float(self.length_penalty) if self.num_beams > 1 else 0.0,
            temperature=float(self.temperature) if self.do_sample else 1.0,
            top_k=int(self.top_k) if self.do_sample else 0, top_p=float(self.top_p) if self.do_sample else 1.0,
            stop_sequences=None if not self.stop_sequences else tuple(tuple(int(t) for t in s)
                                                                      for s in self.stop_sequences))

    def validate(self, config: ModelConfig) -> None:
        limit = config.max_position_embeddings
        problems = []
        if not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            problems.append(f"max_new_tokens must be an integer >= 1, got {self.max_new_tokens!r}")
        elif self.max_new_tokens > limit:
            problems.append(f"max_new_tokens={self.max_new_tokens} exceeds the model's {limit} decoder positions")
        if not isinstance(self.num_beams, int) or self.num_beams < 1:
            problems.append(f"num_beams must be an integer >= 1, got {self.num_beams!r}")
        elif self.num_beams > 1 and self.do_sample:
            problems.append("beam search with sampling is not supported: use num_beams=1 with do_sample=True, or "
                            "do_sample=False with beams")
        if self.do_sample:
            if not self.temperature > 0:
                problems.append(f"temperature must be > 0 when sampling, got {self.temperature} (use greedy instead)")
            if self.top_k < 0:
                problems.append(f"top_k must be >= 0 (0 = off), got {self.top_k}")
            if not 0.0 < self.top_p <= 1.0:
                problems.append(f"top_p must be in (0, 1], got {self.top_p}")
        for stop in self.stop_sequences or ():
            if len(stop) == 0:
                problems.append("a stop sequence is empty: give at least one token (or text) per stop sequence")
            elif any(not 0 <= t < config.vocab_size for t in stop):
                problems.append(f"stop sequence {list(stop)} holds ids outside the vocabulary (0..{config.vocab_size - 1})")
        if problems:
            raise ValueError("; ".join(problems))


def shift_right(targets: jax.Array, start_id: int) -> jax.Array:
    """targets [B, T] -> decoder inputs [B, T]: the start token, then targets[:, :-1] (seqio's convention)."""
    start = jnp.full((targets.shape[0], 1), start_id, targets.dtype)
    return jnp.concatenate([start, targets[:, :-1]], axis=1)


def token_log_probs_from_logits(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """logits [B, T, V], targets [B, T] int -> log p(target) [B, T] float32."""
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    return jnp.take_along_axis(log_probs, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]


class EncoderDecoderModel:
    """An AlexaTM-style encoder-decoder: ``config`` (a ``ModelConfig``) and its Flax ``module``.

    Parameters are plain (unboxed) pytrees. Logical axis names of every parameter come from
    ``param_logical_specs()``; a ``Partitioner`` turns them into shardings.
    """

    def __init__(self, config: ModelConfig):
        if not isinstance(config, ModelConfig):
            raise TypeError(f"EncoderDecoderModel needs a ModelConfig, got {type(config).__name__}")
        self.config = config
        self.module = AlexaTMTransformer(config)

    def __repr__(self):
        cfg = self.config
        return (f"EncoderDecoderModel(d_model={cfg.d_model}, layers={cfg.encoder_layers}+{cfg.decoder_layers}, "
                f"vocab={cfg.vocab_size}, scan_layers={cfg.scan_layers})")

    # ---- Parameters (nothing is allocated unless asked). ----
    def _init_boxed(self, rng: jax.Array):
        tokens = jnp.zeros((1, 1), jnp.int32)
        return self.module.init(rng, tokens, tokens, enable_dropout=False)["params"]

    @functools.cached_property
    def _abstract_boxed(self):
        return jax.eval_shape(lambda: self._init_boxed(jax.random.PRNGKey(0)))

    def param_logical_specs(self) -> Any:
        """Logical PartitionSpecs of the parameter tree (e.g. ``PartitionSpec('embed', 'heads', 'kv')``)."""
        return nn.get_partition_spec(self._abstract_boxed)

    def abstract_params(self, shardings: Any = None) -> Any:
        """ShapeDtypeStructs of the parameters, carrying ``shardings`` when given (targets for restoring)."""
        shapes = nn.unbox(self._abstract_boxed)
        if shardings is None:
            return shapes
        return jax.tree_util.tree_map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                                      shapes, shardings)

    def init_params(self, rng: jax.Array) -> Any:
        """Freshly initialised parameters (unboxed). Jit it with output shardings to create them sharded."""
        return nn.unbox(self._init_boxed(rng))

    def check_params(self, params: Any, where: str = "params") -> None:
        """Raises ValueError when ``params`` is not this model's parameter tree (another config or layout)."""
        expected = jax.tree_util.tree_structure(self.abstract_params())
        if jax.tree_util.tree_structure(params) != expected:
            raise ValueError(f"{where} do not match the model's parameter tree (saved for another model config, "
                             f"e.g. scan_layers on/off, other layer counts or shared embeddings?)")

    # ---- Pure functions of (params, batch). ----
    def logits(self, params: Any, batch: dict, dropout_rng: Optional[jax.Array] = None) -> jax.Array:
        """Teacher-forced logits [B, T, V] (float32; logical axes batch, length, vocab). Dropout iff a key."""
        rngs = {"dropout": dropout_rng} if dropout_rng is not None else {}
        return self.module.apply({"params": params}, **features.model_inputs(batch),
                                 enable_dropout=dropout_rng is not None, rngs=rngs)

    def loss_fn(self, params: Any, batch: dict, dropout_rng: Optional[jax.Array] = None, *,
                label_smoothing: float = 0.0, z_loss: float = 0.0) -> losses.LossSums:
        """Weighted sums of the cross-entropy (and z-loss) over ``decoder_loss_weights``; the caller divides
        by the total weight once per global batch (so any microbatch or device count gives the same loss)."""
        logits = self.logits(params, batch, dropout_rng)
        return losses.loss_sums(logits, batch["decoder_target_tokens"], batch["decoder_loss_weights"],
                                label_smoothing, z_loss)

    def encode(self, params: Any, encoder_input_tokens: jax.Array,
               encoder_segment_ids: Optional[jax.Array] = None) -> jax.Array:
        """Encoder output [B, S, D] (logical axes batch, length, embed)."""
        return self.module.apply({"params": params}, encoder_input_tokens, encoder_segment_ids,
                                 enable_dropout=False, method=self.module.encode)

    def token_scores(self, params: Any, batch: dict) -> jax.Array:
        """log p(decoder_target_tokens[t] | targets[<t], inputs) [B, T] float32, times decoder_loss_weights.

        ``batch`` needs ``encoder_input_tokens``, ``decoder_target_tokens``, ``decoder_loss_weights`` and
        optionally ``encoder_segment_ids``; decoder inputs default to the targets shifted right."""
        targets = batch["decoder_target_tokens"]
        inputs = dict(batch)
        inputs.setdefault("decoder_input_tokens", shift_right(targets, self.config.decoder_start_token_id))
        logits = self.logits(params, inputs)
        return token_log_probs_from_logits(logits, targets) * batch["decoder_loss_weights"]

    def choice_scores(self, params: Any, batch: dict) -> jax.Array:
        """Summed log-likelihood [B, C] of each of C candidate targets after each of B inputs (rank
        classification), the encoder run once per input rather than once per (input, candidate).

        ``batch``: ``encoder_input_tokens`` [B, S] (and optionally ``encoder_segment_ids``), ``choice_tokens``
        [C, T] and ``choice_weights`` [C, T] (1 on each candidate's tokens, 0 on its padding). Equal to
        ``score_batch`` of every (input, candidate) pair."""
        tokens, segments = batch["encoder_input_tokens"], batch.get("encoder_segment_ids")
        choices, weights = batch["choice_tokens"], batch["choice_weights"]
        num_inputs, num_choices = tokens.shape[0], choices.shape[0]
        encoded = self.encode(params, tokens, segments)
        # Row b * C + c pairs input b with candidate c.
        encoded = jnp.repeat(encoded, num_choices, axis=0)
        tokens = jnp.repeat(tokens, num_choices, axis=0)
        segments = None if segments is None else jnp.repeat(segments, num_choices, axis=0)
        targets = jnp.tile(choices, (num_inputs, 1))
        logits = self.module.apply({"params": params}, encoded, tokens,
                                   shift_right(targets, self.config.decoder_start_token_id),
                                   encoder_segment_ids=segments, enable_dropout=False, method=self.module.decode)
        scores = token_log_probs_from_logits(logits, targets) * jnp.tile(weights, (num_inputs, 1))
        return scores.sum(axis=-1).reshape(num_inputs, num_choices)

    def score_batch(self, params: Any, batch: dict) -> jax.Array:
        """Summed target log-likelihood per row [B] (rank classification, perplexity)."""
        return self.token_scores(params, batch).sum(axis=-1)

    def predict_batch(self, params: Any, batch: dict, rng: Optional[jax.Array] = None,
                      settings: DecodingSettings = DecodingSettings(),
                      decode_fn: Optional[Callable] = None) -> tuple[jax.Array, jax.Array]:
        """Decodes from ``encoder_input_tokens`` [B, S] (and ``encoder_segment_ids``) -> (new tokens
        [B, max_new_tokens] int32 with pad after EOS, scores [B] float32: beam scores, 0 otherwise).

        ``decode_fn`` replaces the search loop (default: ``decoding.search.beam_search`` for beams, else
        ``decoding.search.sample_search``); it receives (initial_logits, cache_state, step_fn, reorder_fn,
        settings, rng) as ``decoding.generation.decode`` documents."""
        from alexatm_jax.decoding import generation

        rng = jax.random.PRNGKey(0) if rng is None else rng
        return generation.decode(self.module, params, batch["encoder_input_tokens"],
                                 batch.get("encoder_segment_ids"), rng, settings, decode_fn=decode_fn)


def stop_sequences_tuple(stop_sequences: Optional[Sequence[Sequence[int]]]):
    """Lists of token ids -> the hashable form ``DecodingSettings`` keeps (None for none)."""
    if not stop_sequences:
        return None
    return tuple(tuple(int(t) for t in stop) for stop in stop_sequences)
