"""``generate``: the search loops of ``search.py`` bound to an ``AlexaTMTransformer`` and its KV cache.

One jit-compiled function per (model config, batch shape, decoding settings, mesh) runs the encoder once,
creates the KV cache, fills the cross-attention keys/values with the decoder-start step, and then runs the
``lax.while_loop`` of greedy, sampling or beam search one token per step. With a mesh, the batch is split
over the data-parallel axes and the parameters are laid out by the logical-axis rules; the computation is
the same as on one device.
"""

from __future__ import annotations

import functools
import threading
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import flax.linen as nn

from alexatm_jax.decoding import search

_COMPILED: dict = {}
_COMPILED_LOCK = threading.Lock()


def _check_inputs(model, encoder_input_tokens, encoder_segment_ids, max_new_tokens, num_beams, do_sample,
                  temperature, top_k, top_p):
    tokens = np.asarray(encoder_input_tokens)
    if tokens.ndim != 2:
        raise ValueError(f"encoder_input_tokens must be [batch, length], got shape {tokens.shape}")
    if tokens.shape[0] == 0 or tokens.shape[1] == 0:
        raise ValueError(f"encoder_input_tokens is empty (shape {tokens.shape})")
    if encoder_segment_ids is not None and np.shape(encoder_segment_ids) != tokens.shape:
        raise ValueError(f"encoder_segment_ids has shape {np.shape(encoder_segment_ids)} but "
                         f"encoder_input_tokens has shape {tokens.shape}; they must match")
    limit = model.config.max_position_embeddings
    if tokens.shape[1] > limit:
        raise ValueError(f"The input has {tokens.shape[1]} tokens but the model has {limit} positions; "
                         f"truncate the prompt (or use fewer shots).")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if max_new_tokens > limit:
        raise ValueError(f"max_new_tokens={max_new_tokens} exceeds the model's {limit} decoder positions")
    if num_beams < 1:
        raise ValueError(f"num_beams must be >= 1, got {num_beams}")
    if num_beams > 1 and do_sample:
        raise ValueError("Beam search with sampling is not supported: use num_beams=1 with do_sample=True, "
                         "or do_sample=False with beams.")
    if do_sample:
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0 when sampling, got {temperature} (use greedy instead)")
        if top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0 = off), got {top_k}")
        if not 0.0 < top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {top_p}")


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


def _build(model, *, max_new_tokens, decoder_start_token_id, eos_token_id, pad_token_id, num_beams,
           length_penalty, do_sample, temperature, top_k, top_p, stops, use_cache, force_beam_search=False):
    """The pure function (params, tokens [B, S], segments [B, S], rng) -> (tokens [B, T], scores [B]).

    ``force_beam_search`` runs the beam-search loop even with one beam (to check it against greedy)."""
    config = model.config
    stops_array = None if stops is None else jnp.asarray(np.asarray(stops, np.int32))

    def run(params, tokens, segments, rng):
        encoded = model.apply({"params": params}, tokens, segments, enable_dropout=False, method=model.encode)
        if num_beams > 1:
            # Row b * K + k is beam k of example b.
            encoded = jnp.repeat(encoded, num_beams, axis=0)
            segments = jnp.repeat(segments, num_beams, axis=0)
        rows = encoded.shape[0]
        start = jnp.full((rows, 1), decoder_start_token_id, jnp.int32)

        def decode(variables, decoder_tokens, enc, **kw):
            return model.apply(variables, enc, None, decoder_tokens, encoder_segment_ids=segments,
                               enable_dropout=False, method=model.decode, **kw)

        if use_cache:
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

        initial = logits[:, -1]
        if num_beams > 1 or force_beam_search:
            return search.beam_search(initial, state, step_fn, reorder, num_beams=num_beams,
                                      max_new_tokens=max_new_tokens, eos_id=eos_token_id, pad_id=pad_token_id,
                                      length_penalty=length_penalty, stops=stops_array)
        out = search.sample_search(initial, state, step_fn, max_new_tokens=max_new_tokens, eos_id=eos_token_id,
                                   pad_id=pad_token_id, do_sample=do_sample, temperature=temperature,
                                   top_k=top_k, top_p=top_p, rng=rng, stops=stops_array)
        return out, jnp.zeros((out.shape[0],), jnp.float32)

    return run


def _param_shardings(model, params, mesh, rules):
    from alexatm_jax.partitioning import logical_to_mesh_sharding, params_logical_specs

    key = ("shardings", type(model), model.config, mesh, rules)
    with _COMPILED_LOCK:
        shardings = _COMPILED.get(key)
    if shardings is None:
        # Tracing init is not free for a deep model: done once per (config, mesh, rules).
        dummy = jnp.zeros((1, 1), jnp.int32)
        specs = params_logical_specs(model, dummy, dummy, enable_dropout=False)
        shardings = logical_to_mesh_sharding(specs, mesh, rules)
        with _COMPILED_LOCK:
            _COMPILED[key] = shardings
    if jax.tree_util.tree_structure(shardings) != jax.tree_util.tree_structure(params):
        raise ValueError("params do not match the model's parameter tree (was the checkpoint saved for "
                         "another config, e.g. scan_layers on/off?)")
    return shardings


def _compiled(model, settings: tuple, mesh, rules):
    key = (type(model), model.config, settings, mesh, rules)
    with _COMPILED_LOCK:
        fn = _COMPILED.get(key)
    if fn is not None:
        return fn
    run = _build(model, **dict(settings))
    if mesh is None:
        fn = jax.jit(run)
    else:
        from jax.sharding import NamedSharding, PartitionSpec
        from alexatm_jax.partitioning import activation_sharding, data_sharding

        unconstrained = run

        def run(*args):
            with activation_sharding(mesh, rules):  # the model's logical activation constraints apply
                return unconstrained(*args)

        batch = data_sharding(mesh, rules)
        replicated = NamedSharding(mesh, PartitionSpec())
        batch_1d = NamedSharding(mesh, PartitionSpec(batch.spec[0]))
        # Param shardings are applied by device_put before the call (they depend on the params' tree).
        fn = jax.jit(run, in_shardings=(None, batch, batch, replicated), out_shardings=(batch, batch_1d))
    with _COMPILED_LOCK:
        _COMPILED[key] = fn
    return fn


def generate(model, params, encoder_input_tokens, encoder_segment_ids=None, *, max_new_tokens: int,
             decoder_start_token_id: int, eos_token_id: int, pad_token_id: int, num_beams: int = 1,
             length_penalty: float = 0.6, do_sample: bool = False, temperature: float = 1.0, top_k: int = 0,
             top_p: float = 1.0, rng=None, stop_sequences: Optional[Sequence[Sequence[int]]] = None,
             mesh=None, rules=None, use_cache: bool = True, return_scores: bool = False):
    """Generates up to ``max_new_tokens`` tokens per row -> np.ndarray int32 [B, max_new_tokens].

    Args:
      model: an ``AlexaTMTransformer``; params: its plain (unboxed) parameter tree.
      encoder_input_tokens: int [B, S] prompts, right-padded. encoder_segment_ids: [B, S], 1 for tokens and
        0 for padding (the reference's attention_mask); None derives it from ``pad_token_id``.
      num_beams > 1: beam search with the T5X brevity penalty ((5 + len) / 6) ** length_penalty.
      do_sample: sample with ``temperature``, ``top_k`` (0 = off) and ``top_p`` (1.0 = off) from ``rng``.
      stop_sequences: token-id sequences that end a row (kept in the output) like EOS does.
      mesh: a ``jax.sharding.Mesh`` (``alexatm_jax.partitioning.make_mesh``): batch over the data axes,
        parameters by ``rules`` (default ``DEFAULT_RULES``). The batch is padded to a multiple of the data
        parallelism and the padding rows dropped from the result.
      use_cache: False recomputes the whole decoder each step (slow; the check that the cache is exact).
      return_scores: also return the beam scores [B] float32 (zeros for greedy and sampling).

    Returns the NEW tokens only (EOS included when produced), ``pad_token_id`` after EOS.
    """
    _check_inputs(model, encoder_input_tokens, encoder_segment_ids, max_new_tokens, num_beams, do_sample,
                  temperature, top_k, top_p)
    tokens = np.asarray(encoder_input_tokens, np.int32)
    if encoder_segment_ids is None:
        segments = (tokens != pad_token_id).astype(np.int32)
    else:
        segments = (np.asarray(encoder_segment_ids) > 0).astype(np.int32)
    if do_sample and rng is None:
        raise ValueError("do_sample=True needs rng=jax.random.PRNGKey(seed)")
    rng = jax.random.PRNGKey(0) if rng is None else rng
    stops = search.stop_sequences_array(stop_sequences)
    settings = dict(max_new_tokens=int(max_new_tokens), decoder_start_token_id=int(decoder_start_token_id),
                    eos_token_id=int(eos_token_id), pad_token_id=int(pad_token_id), num_beams=int(num_beams),
                    length_penalty=float(length_penalty) if num_beams > 1 else 0.0,
                    do_sample=bool(do_sample), temperature=float(temperature) if do_sample else 1.0,
                    top_k=int(top_k) if do_sample else 0, top_p=float(top_p) if do_sample else 1.0,
                    stops=None if stops is None else tuple(map(tuple, stops.tolist())), use_cache=bool(use_cache))
    params = nn.unbox(params)
    batch = tokens.shape[0]
    if mesh is None:
        fn = _compiled(model, tuple(sorted(settings.items())), None, None)
        out, scores = fn(params, tokens, segments, rng)
    else:
        from alexatm_jax.partitioning import DEFAULT_RULES

        rules = tuple(DEFAULT_RULES if rules is None else rules)
        parallel = mesh.shape["data"] * mesh.shape["fsdp"]
        padded = -batch % parallel
        if padded:
            # Padding rows (all segment 0) decode harmlessly and are dropped below.
            tokens = np.concatenate([tokens, np.full((padded, tokens.shape[1]), pad_token_id, np.int32)])
            segments = np.concatenate([segments, np.zeros((padded, segments.shape[1]), np.int32)])
        params = jax.device_put(params, _param_shardings(model, params, mesh, rules))
        fn = _compiled(model, tuple(sorted(settings.items())), mesh, rules)
        out, scores = fn(params, tokens, segments, rng)
    out = np.asarray(jax.device_get(out))[:batch]
    if return_scores:
        return out, np.asarray(jax.device_get(scores))[:batch]
    return out
