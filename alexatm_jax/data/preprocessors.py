"""seqio preprocessors for AlexaTM-style pretraining objectives, in TensorFlow ops (they run inside tf.data).

Every random choice uses stateless ops seeded by seqio (``seqio.map_over_dataset(num_seeds=1)``), so a
task's stream is a pure function of the seed passed to ``get_dataset(seed=...)``.

Objectives (pick one per task; ``tasks.register_*`` wires them):

- ``alexatm_denoise``: drop ``noise_density`` (15%) of the tokens in spans whose lengths are drawn from
  Poisson(``mean_noise_span_length``=3) (clipped to >= 1), insert nothing in their place, and ask the decoder
  for the whole original sequence (AlexaTM 20B's denoising; unlike T5 there are no mask tokens).
- ``alexatm_clm``: ``[CLM]`` then a uniformly random 20-80% prefix of one document as input, the rest as
  target (AlexaTM's causal-LM objective).
- ``t5_span_corruption``: T5's objective: the same fraction in spans, each replaced by a sentinel in the input;
  the target lists sentinel + span. Span lengths are a random partition (T5's), not Poisson.
- UL2 modes (Tay et al. 2022): ``[NLU]`` regular span corruption (mean 3, 15%), ``[NLG]`` extreme span
  corruption (mean 32, 50%), ``[S2S]`` prefix LM; each mode token is prepended to the input.

Document packing (AlexaTM): ``pack_documents`` appends ``[DOC]`` to every document and cuts the concatenated
stream into fixed-size chunks, so a denoising example is a full sequence of consecutive documents.

Extra integer features ``objective``, ``lang`` and ``num_spans`` (scalars) ride along for statistics; feature converters
drop them. Shapes: token features are 1-D int32 ``[length]``.
"""

from __future__ import annotations

import math
from typing import Mapping, Optional

import seqio
import tensorflow as tf

# TensorFlow only runs the input pipeline, on the host. Left alone it would also claim the GPUs' memory that
# JAX needs for the model (as T5X and MaxText warn). This must run before TF initialises its devices.
try:
    tf.config.set_visible_devices([], "GPU")
except RuntimeError:  # TF's devices were already initialised by an earlier user of TensorFlow: too late.
    pass

OBJECTIVES = ("denoise", "clm", "span_corruption", "ul2_r", "ul2_x", "ul2_s")
OBJECTIVE_IDS = {name: i for i, name in enumerate(OBJECTIVES)}

# UL2 mode settings: (mode token, mean span length, noise density). S (prefix LM) has no spans.
UL2_MODES = {"ul2_r": ("[NLU]", 3.0, 0.15), "ul2_x": ("[NLG]", 32.0, 0.5), "ul2_s": ("[S2S]", None, None)}


# ------------------------------------------------------------------------------------------ sources
def text_to_targets(dataset: tf.data.Dataset, text_key: str = "text") -> tf.data.Dataset:
    """``{text_key: str}`` -> ``{"targets": str}`` (the objective preprocessors build ``inputs``)."""
    return dataset.map(lambda ex: {"targets": ex[text_key]}, num_parallel_calls=tf.data.AUTOTUNE)


def add_labels(dataset: tf.data.Dataset, objective: str, lang_id: int) -> tf.data.Dataset:
    """Attach the scalars ``objective``, ``lang`` and ``num_spans`` (0 without spans) for statistics; every
    task then has the same structure, which mixing datasets requires."""
    obj = OBJECTIVE_IDS[objective]

    def fn(ex):
        num_spans = ex.get("num_spans", tf.constant(0, tf.int32))
        return {"inputs": ex["inputs"], "targets": ex["targets"], "objective": tf.constant(obj, tf.int32),
                "lang": tf.constant(lang_id, tf.int32), "num_spans": tf.cast(num_spans, tf.int32)}

    return dataset.map(fn, num_parallel_calls=tf.data.AUTOTUNE)


def drop_short(dataset: tf.data.Dataset, min_tokens: int = 2, key: str = "targets") -> tf.data.Dataset:
    """Drop examples with fewer than ``min_tokens`` tokens (a 1-token document has no 20-80% prefix)."""
    return dataset.filter(lambda ex: tf.size(ex[key]) >= min_tokens)


# ------------------------------------------------------------------------------------------ packing
def pack_documents(dataset: tf.data.Dataset, chunk_length: int, separator_id: int,
                   key: str = "targets") -> tf.data.Dataset:
    """Concatenate tokenized documents, each followed by ``separator_id`` (``[DOC]``), and cut the stream into
    chunks of ``chunk_length`` tokens (the last one may be shorter). Other features are dropped.

    Token-level ``unbatch().batch()`` keeps this a native, checkpointable tf.data graph (no Python state).
    """
    if chunk_length < 1:
        raise ValueError(f"chunk_length must be positive, got {chunk_length}")
    sep = tf.constant([separator_id], tf.int32)
    tokens = dataset.map(lambda ex: tf.concat([tf.cast(ex[key], tf.int32), sep], axis=0),
                         num_parallel_calls=tf.data.AUTOTUNE)
    return tokens.unbatch().batch(chunk_length).map(lambda t: {key: t})


def split_documents(dataset: tf.data.Dataset, max_length: int, key: str = "targets") -> tf.data.Dataset:
    """Cut each document into pieces of at most ``max_length`` tokens (one example per piece)."""
    if max_length < 1:
        raise ValueError(f"max_length must be positive, got {max_length}")

    def pieces(ex):
        tokens = tf.cast(ex[key], tf.int32)
        n = tf.size(tokens)
        num = (n + max_length - 1) // max_length
        lengths = tf.minimum(max_length, n - tf.range(num) * max_length)
        return {key: tf.RaggedTensor.from_row_lengths(tokens, lengths)}

    return dataset.map(pieces, num_parallel_calls=tf.data.AUTOTUNE).unbatch()


# ------------------------------------------------------------------------------------ noise masks
def _place_spans(length: tf.Tensor, span_lengths: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """Boolean ``[length]`` mask with the given span lengths at random, non-touching places.

    The ``k`` spans are dropped into ``k`` distinct gaps of the ``length - sum(spans)`` kept tokens (gap g is
    "after g kept tokens"), chosen uniformly without replacement, so two spans never merge into one.
    """
    num_spans = tf.size(span_lengths)
    num_kept = length - tf.reduce_sum(span_lengths)
    scores = tf.random.stateless_uniform([num_kept + 1], seed=seed)
    gaps = tf.sort(tf.argsort(scores)[:num_spans])
    starts = gaps + tf.cumsum(span_lengths, exclusive=True)
    ends = starts + span_lengths
    delta = tf.zeros([length + 1], tf.int32)
    delta = tf.tensor_scatter_nd_add(delta, starts[:, None], tf.ones_like(starts))
    delta = tf.tensor_scatter_nd_add(delta, ends[:, None], -tf.ones_like(ends))
    return tf.cast(tf.cumsum(delta)[:length], tf.bool)


def _num_noise(length: tf.Tensor, noise_density: float) -> tf.Tensor:
    num = tf.cast(tf.round(tf.cast(length, tf.float32) * noise_density), tf.int32)
    # At least one noise token and one kept token whenever the sequence has two tokens.
    return tf.clip_by_value(num, tf.minimum(1, length - 1), tf.maximum(length - 1, 0))


def poisson_span_mask(length, noise_density: float, mean_span_length: float, seed) -> tf.Tensor:
    """AlexaTM noise: ``round(noise_density * length)`` noise tokens in spans of Poisson(mean) length (>= 1).

    Lengths are drawn until they cover the noise budget; the last span is cut to fit, which lowers the mean
    span length on short sequences (about 2.9 at 127 tokens, 2.6 at 63; 3.0 at 511). Returns bool ``[length]``.
    """
    length = tf.cast(length, tf.int32)
    num_noise = _num_noise(length, noise_density)
    seeds = tf.random.experimental.stateless_split(seed, 2)
    draws = tf.random.stateless_poisson([tf.maximum(num_noise, 1)], seed=seeds[0], lam=mean_span_length,
                                        dtype=tf.int32)
    draws = tf.maximum(draws, 1)
    total = tf.cumsum(draws)
    num_spans = tf.reduce_sum(tf.cast(total < num_noise, tf.int32)) + 1
    num_spans = tf.minimum(num_spans, tf.size(draws))
    spans = draws[:num_spans]
    spans = tf.concat([spans[:-1], [num_noise - tf.reduce_sum(spans[:-1])]], axis=0)
    spans = tf.cond(num_noise > 0, lambda: spans, lambda: tf.zeros([0], tf.int32))
    return _place_spans(length, spans, seeds[1])


def partition_span_mask(length, noise_density: float, mean_span_length: float, seed) -> tf.Tensor:
    """T5 noise: ``round(noise_density * length)`` noise tokens cut into ``round(noise / mean)`` spans at
    uniformly random points (T5's ``random_spans_noise_mask`` distribution). Returns bool ``[length]``."""
    length = tf.cast(length, tf.int32)
    num_noise = _num_noise(length, noise_density)
    num_spans = tf.maximum(1, tf.cast(tf.round(tf.cast(num_noise, tf.float32) / mean_span_length), tf.int32))
    num_spans = tf.minimum(num_spans, tf.maximum(num_noise, 1))
    seeds = tf.random.experimental.stateless_split(seed, 2)
    # Choose num_spans - 1 distinct cut points in 1..num_noise-1.
    scores = tf.random.stateless_uniform([tf.maximum(num_noise - 1, 0)], seed=seeds[0])
    cuts = tf.sort(tf.argsort(scores)[:num_spans - 1] + 1)
    bounds = tf.concat([[0], cuts, [num_noise]], axis=0)
    spans = bounds[1:] - bounds[:-1]
    spans = tf.cond(num_noise > 0, lambda: spans, lambda: tf.zeros([0], tf.int32))
    return _place_spans(length, spans, seeds[1])


def count_spans(mask: tf.Tensor) -> tf.Tensor:
    """Number of maximal runs of True in a bool ``[length]`` mask (int32 scalar)."""
    prev = tf.concat([[False], mask[:-1]], axis=0)
    return tf.reduce_sum(tf.cast(tf.logical_and(mask, tf.logical_not(prev)), tf.int32))


def _sentinelize(tokens: tf.Tensor, mask: tf.Tensor, first_sentinel: int) -> tf.Tensor:
    """Replace each run of ``mask`` in ``tokens`` by one sentinel (first_sentinel, first_sentinel - 1, ...)."""
    prev = tf.concat([[False], mask[:-1]], axis=0)
    starts = tf.logical_and(mask, tf.logical_not(prev))
    sentinel = first_sentinel + 1 - tf.cumsum(tf.cast(starts, tf.int32))
    out = tf.where(starts, sentinel, tokens)
    keep = tf.logical_or(tf.logical_not(mask), starts)
    return tf.boolean_mask(out, keep)


# ------------------------------------------------------------------------------------- objectives
def alexatm_denoise(dataset: tf.data.Dataset, noise_density: float = 0.15, mean_noise_span_length: float = 3.0):
    """``{"targets": [n]}`` -> ``{"inputs": targets minus dropped spans, "targets": original}``."""

    @seqio.map_over_dataset(num_seeds=1)
    def fn(ex, seed):
        tokens = tf.cast(ex["targets"], tf.int32)
        mask = poisson_span_mask(tf.size(tokens), noise_density, mean_noise_span_length, seed)
        return dict(ex, inputs=tf.boolean_mask(tokens, tf.logical_not(mask)), targets=tokens,
                    num_spans=count_spans(mask))

    return fn(dataset)


def clm_prefix_split(tokens: tf.Tensor, seed, min_fraction: float = 0.2, max_fraction: float = 0.8):
    """Split ``tokens`` ``[n]`` (n >= 2) at a prefix length drawn uniformly from the integers in
    ``[ceil(min_fraction n), floor(max_fraction n)]`` (at least 1 and at most n - 1), so the prefix
    fraction is always inside [min_fraction, max_fraction]. Returns (prefix, rest)."""
    n = tf.size(tokens)
    nf = tf.cast(n, tf.float64)
    low = tf.maximum(1, tf.cast(tf.math.ceil(nf * min_fraction - 1e-9), tf.int32))
    high = tf.minimum(n - 1, tf.cast(tf.math.floor(nf * max_fraction + 1e-9), tf.int32))
    high = tf.maximum(high, low)
    cut = tf.random.stateless_uniform([], seed=seed, minval=low, maxval=high + 1, dtype=tf.int32)
    return tokens[:cut], tokens[cut:]


def alexatm_clm(dataset: tf.data.Dataset, clm_token_id: int, min_fraction: float = 0.2, max_fraction: float = 0.8):
    """``{"targets": [n]}`` (one document piece) -> ``{"inputs": [CLM] + prefix, "targets": rest}``."""

    @seqio.map_over_dataset(num_seeds=1)
    def fn(ex, seed):
        prefix, rest = clm_prefix_split(tf.cast(ex["targets"], tf.int32), seed, min_fraction, max_fraction)
        return dict(ex, inputs=tf.concat([[clm_token_id], prefix], axis=0), targets=rest)

    return fn(dataset)


def t5_span_corruption(dataset: tf.data.Dataset, first_sentinel_id: int, noise_density: float = 0.15,
                       mean_noise_span_length: float = 3.0, prefix_token_id: Optional[int] = None):
    """T5 span corruption: each noise span becomes a sentinel in the input; the target is each sentinel
    followed by the span it hides. Sentinels count down from ``first_sentinel_id`` (seqio's last extra id).
    ``prefix_token_id`` (a UL2 mode token) is prepended to the input when given."""

    @seqio.map_over_dataset(num_seeds=1)
    def fn(ex, seed):
        tokens = tf.cast(ex["targets"], tf.int32)
        mask = partition_span_mask(tf.size(tokens), noise_density, mean_noise_span_length, seed)
        inputs = _sentinelize(tokens, mask, first_sentinel_id)
        targets = _noise_targets(tokens, mask, first_sentinel_id)
        if prefix_token_id is not None:
            inputs = tf.concat([[prefix_token_id], inputs], axis=0)
        return dict(ex, inputs=inputs, targets=targets, num_spans=count_spans(mask))

    return fn(dataset)


def _noise_targets(tokens, mask, first_sentinel_id):
    """For each noise span i (in order): sentinel_i then the span's tokens."""
    prev = tf.concat([[False], mask[:-1]], axis=0)
    starts = tf.logical_and(mask, tf.logical_not(prev))
    span_index = tf.cumsum(tf.cast(starts, tf.int32)) - 1
    noise_tokens = tf.boolean_mask(tokens, mask)
    noise_starts = tf.boolean_mask(starts, mask)
    noise_span = tf.boolean_mask(span_index, mask)
    # Interleave: every noise token that starts a span is preceded by its sentinel.
    sentinels = first_sentinel_id - noise_span
    pairs = tf.stack([sentinels, noise_tokens], axis=1)           # [num_noise, 2]
    keep = tf.stack([noise_starts, tf.ones_like(noise_starts)], axis=1)
    return tf.boolean_mask(tf.reshape(pairs, [-1]), tf.reshape(keep, [-1]))


def prefix_lm(dataset: tf.data.Dataset, mode_token_id: int):
    """UL2 S-mode: mode token + a uniform 20-80% prefix as input, the rest as target."""
    return alexatm_clm(dataset, clm_token_id=mode_token_id)


# ----------------------------------------------------------------------------------- length maths
def denoise_chunk_length(sequence_length: Mapping[str, int], noise_density: float = 0.15) -> int:
    """Tokens per packed chunk: the target (chunk + EOS) fits ``targets`` and the input (chunk minus the
    dropped tokens, + EOS) fits ``inputs``."""
    n = sequence_length["targets"] - 1
    while n > 1 and n - min(max(int(round(n * noise_density)), 1), n - 1) + 1 > sequence_length["inputs"]:
        n -= 1
    return n


def clm_piece_length(sequence_length: Mapping[str, int], max_fraction: float = 0.8,
                     prefix_tokens: int = 1) -> int:
    """Longest document piece whose prefix (<= max_fraction) plus mode token and EOS fits ``inputs`` and
    whose rest (<= max_fraction too, since the prefix is >= 20%) plus EOS fits ``targets``."""
    by_inputs = math.floor((sequence_length["inputs"] - 1 - prefix_tokens) / max_fraction)
    by_targets = math.floor((sequence_length["targets"] - 1) / max_fraction)
    return max(2, min(by_inputs, by_targets))


def span_corruption_chunk_length(sequence_length: Mapping[str, int], noise_density: float,
                                 mean_span_length: float, prefix_tokens: int = 0) -> int:
    """Longest chunk whose corrupted input and target (with sentinels and EOS) both fit, as T5's
    ``random_spans_helper`` computes it."""

    def sizes(n):
        num_noise = min(max(int(round(n * noise_density)), 1), n - 1)
        num_spans = max(1, min(int(round(num_noise / mean_span_length)), num_noise))
        return n - num_noise + num_spans + 1 + prefix_tokens, num_noise + num_spans + 1

    n = 2
    while True:
        inp, tgt = sizes(n + 1)
        if inp > sequence_length["inputs"] or tgt > sequence_length["targets"]:
            return n
        n += 1
