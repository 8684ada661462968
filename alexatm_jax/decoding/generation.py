"""Decoding as a pure function: the search loops of ``search.py`` bound to the network and its KV cache.

``decode(module, params, tokens, segments, rng, settings)`` runs the encoder once, creates the KV cache, fills
the cross-attention keys/values with the decoder-start step, and then runs the ``lax.while_loop`` of greedy,
sampling or beam search one token per step. It is traced inside ``EncoderDecoderModel.predict_batch`` and
compiled (and sharded) by ``alexatm_jax.inference``; ``generate`` below is the numpy convenience over both.
"""

from __future__ import annotations

import functools
from typing import Callable, Optional, Sequence

import jax
import jax.numpy as jnp

from alexatm_jax.decoding import search
from alexatm_jax.model import param_layout


def _batch_axis(config) -> int:
    # Scanned decoder layers put a leading `layers` axis in front of every cache variable.
    return 1 if config.scan_layers else 0


def _reorder_cache(config, cache, rows):
    """Gathers every batched cache leaf along its batch axis (scalar indices have none).

    Cross-attention keys/values are skipped: a beam's parent is always a beam of the same example, and all
    beams of an example hold the same encoder keys/values, so that gather would copy them onto themselves."""
    axis = _batch_axis(config)

    def gather(path, leaf):
        name = getattr(path[-1], "key", None)
        if leaf.ndim <= axis or name in ("cross_key", "cross_value"):
            return leaf
        return jnp.take(leaf, rows, axis=axis)
    return jax.tree_util.tree_map_with_path(gather, cache)


def default_decode_fn(initial_logits, state, step_fn, reorder, settings, rng, *, eos_id: int, pad_id: int,
                      force_beam_search: bool = False):
    """The search loop ``settings`` ask for: beam search for beams (or ``force_beam_search``, which checks the
    beam loop against greedy with one beam), else greedy / sampling. Returns (tokens [N, T], scores [N])."""
    stops = search.stop_sequences_array(settings.stop_sequences)
    stops = None if stops is None else jnp.asarray(stops)
    if settings.num_beams > 1 or force_beam_search:
        return search.beam_search(initial_logits, state, step_fn, reorder, num_beams=settings.num_beams,
                                  max_new_tokens=settings.max_new_tokens, eos_id=eos_id, pad_id=pad_id,
                                  length_penalty=settings.length_penalty, stops=stops)
    out = search.sample_search(initial_logits, state, step_fn, max_new_tokens=settings.max_new_tokens,
                               eos_id=eos_id, pad_id=pad_id, do_sample=settings.do_sample,
                               temperature=settings.temperature, top_k=settings.top_k, top_p=settings.top_p,
                               rng=rng, stops=stops)
    return out, jnp.zeros((out.shape[0],), jnp.float32)


def decode(model, params, tokens, segments, rng, settings, decode_fn: Optional[Callable] = None):
    """(params, tokens [B, S] int32, segments [B, S] or None, rng) -> (new tokens [B, T] int32, scores [B]).

    ``model`` is the Flax ``AlexaTMTransformer``; ``settings`` a ``models.DecodingSettings``; ``decode_fn``
    a search loop with ``default_decode_fn``'s signature (None: the default)."""
    if model.config.scan_layers or model.config.tie_word_embeddings:
        # Decode with the layers unrolled and the LM head untied: a scanned decoder slices every layer's
        # weights and caches out of the stacks at every step (1.5x slower a step on CPU at d_model 512), and a
        # tied head reads the token table across its rows. Here (``predict_batch`` traced by the caller) the
        # copies are made once per call, before the loop; ``InferenceRunner.generate`` passes parameters
        # already converted, once per parameter set, and skips this.
        params, decode_config = param_layout.for_decoding(params, model.config)
        model = model.clone(config=decode_config, parent=None)
    config = model.config
    max_new_tokens, num_beams = settings.max_new_tokens, settings.num_beams
    decoder_start_token_id, pad_token_id = config.decoder_start_token_id, config.pad_token_id
    if segments is None:
        segments = (tokens != pad_token_id).astype(jnp.int32)
    decode_fn = decode_fn or functools.partial(default_decode_fn, eos_id=config.eos_token_id, pad_id=pad_token_id)

    def run(params, tokens, segments, rng):
        encoded = model.apply({"params": params}, tokens, segments, enable_dropout=False, method=model.encode)
        # Row b * K + k of the decoder is beam k of example b. With the cache, the encoder output and its
        # cross-attention keys/values stay one row per example (the beams' queries are grouped onto them);
        # the uncached reference recomputes cross-attention over a repeated encoder output.
        rows = encoded.shape[0] * num_beams
        if num_beams > 1 and not settings.use_cache:
            encoded = jnp.repeat(encoded, num_beams, axis=0)
            segments = jnp.repeat(segments, num_beams, axis=0)
        start = jnp.full((rows, 1), decoder_start_token_id, jnp.int32)

        def decode(variables, decoder_tokens, enc, **kw):
            return model.apply(variables, enc, None, decoder_tokens, encoder_segment_ids=segments,
                               enable_dropout=False, method=model.decode, **kw)

        if settings.use_cache:
            # Only shapes are needed from init; eval_shape keeps it from computing anything.
            shapes = jax.eval_shape(lambda: model.init(
                jax.random.PRNGKey(0), encoded, None, jnp.zeros((rows, max_new_tokens), jnp.int32),
                encoder_segment_ids=segments, decode=True, enable_dropout=False, method=model.decode))["cache"]
            cache = jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
            logits, mutated = decode({"params": params, "cache": cache}, start, encoded, decode=True,
                                     mutable=["cache"])
            state = mutated["cache"]

            def step_fn(last, cache):
                logits, mutated = decode({"params": params, "cache": cache}, last[:, None], None, decode=True,
                                         mutable=["cache"])
                return logits[:, -1], mutated["cache"]

            reorder = functools.partial(_reorder_cache, config)
        else:
            # Full recomputation of the decoder over the whole prefix at every step: the slow reference
            # the KV cache is checked against.
            buffer = jnp.full((rows, max_new_tokens), pad_token_id, jnp.int32).at[:, 0].set(decoder_start_token_id)
            logits = decode({"params": params}, buffer, encoded)[:, :1]
            state = (buffer, jnp.int32(1))

            def step_fn(last, state):
                buffer, position = state
                buffer = jax.lax.dynamic_update_slice(buffer, last[:, None], (0, position))
                logits = decode({"params": params}, buffer, encoded)
                logits = jax.lax.dynamic_slice_in_dim(logits, position, 1, axis=1)
                return logits[:, 0], (buffer, position + 1)

            def reorder(state, rows):
                return jnp.take(state[0], rows, axis=0), state[1]

        return decode_fn(logits[:, -1], state, step_fn, reorder, settings, rng)

    return run(params, tokens, segments, rng)


def generate(model, params, encoder_input_tokens, encoder_segment_ids=None, *, max_new_tokens: int,
             num_beams: int = 1, length_penalty: float = 0.6, do_sample: bool = False, temperature: float = 1.0,
             top_k: int = 0, top_p: float = 1.0, rng=None, stop_sequences: Optional[Sequence[Sequence[int]]] = None,
             partitioner=None, use_cache: bool = True, return_scores: bool = False):
    """Generates up to ``max_new_tokens`` tokens per row -> np.ndarray int32 [B, max_new_tokens].

    Args:
      model: an ``EncoderDecoderModel`` (or its ``ModelConfig``); params: its plain parameter tree.
      encoder_input_tokens: int [B, S] prompts, right-padded. encoder_segment_ids: [B, S], 1 for tokens and
        0 for padding (the reference's attention_mask); None derives it from the model's pad id.
      num_beams > 1: beam search with the T5X brevity penalty ((5 + len) / 6) ** length_penalty.
      do_sample: sample with ``temperature``, ``top_k`` (0 = off) and ``top_p`` (1.0 = off) from ``rng``.
      stop_sequences: token-id sequences that end a row (kept in the output) like EOS does.
      partitioner: a ``partitioning.Partitioner`` (default: all devices on the data axis); the batch is padded
        to a multiple of its data parallelism and the padding rows dropped from the result.
      use_cache: False recomputes the whole decoder each step (slow; the check that the cache is exact).
      return_scores: also return the beam scores [B] float32 (zeros for greedy and sampling).

    Returns the NEW tokens only (EOS included when produced), the pad id after EOS.
    """
    from alexatm_jax import inference, models

    settings = models.DecodingSettings(
        max_new_tokens=max_new_tokens, num_beams=num_beams, length_penalty=length_penalty, do_sample=do_sample,
        temperature=temperature, top_k=top_k, top_p=top_p,
        stop_sequences=models.stop_sequences_tuple(stop_sequences), use_cache=use_cache)
    if do_sample and rng is None:
        raise ValueError("do_sample=True needs rng=jax.random.PRNGKey(seed)")
    runner = inference.runner_for(model, partitioner)
    out, scores = runner.generate(params, encoder_input_tokens, encoder_segment_ids, settings, rng=rng)
    return (out, scores) if return_scores else out
