"""seqio preprocessors for AlexaTM-style pretraining objectives, in TensorFlow ops (they run inside tf.data),
and the stateless (positional) example streams the training pipeline reads.

Every random choice uses stateless ops. In a positional stream (``PositionalTask``, used for every corpus held
in memory) an example is a pure function of (seed, shard, position): documents are reordered each epoch by
``tf.random.experimental.index_shuffle`` and an example's noise is seeded by its position. In the seqio path
(other sources, e.g. TFDS) the seeds come from seqio (``seqio.map_over_dataset(num_seeds=1)``). Either way a
task's stream is a pure function of the seed passed to ``get_dataset(seed=...)``.

Objectives (pick one per task; ``tasks.register_*`` wires them); each is a per-example function
(``denoise_example`` ...) and a seqio preprocessor over a dataset (``alexatm_denoise`` ...):

- ``alexatm_denoise``: drop ``noise_density`` (15%) of the tokens in spans whose lengths are drawn from
  Poisson(``mean_noise_span_length``=3) (clipped to >= 1), insert nothing in their place, and ask the decoder
  for the whole original sequence (AlexaTM 20B's denoising; unlike T5 there are no mask tokens).
- ``alexatm_clm``: ``[CLM]`` then a uniformly random 20-80% prefix of one document as input, the rest as
  target (AlexaTM's causal-LM objective).
- ``t5_span_corruption``: T5's objective: the same fraction in spans, each replaced by a sentinel in the input;
  the target lists sentinel + span. Span lengths are a random partition (T5's), not Poisson.
- UL2 modes (Tay et al. 2022): ``[NLU]`` regular span corruption (mean 3, 15%), ``[NLG]`` extreme span
  corruption (mean 32, 50%), ``[S2S]`` prefix LM; each mode token is prepended to the input.

Document packing (AlexaTM): ``packed_chunks`` / ``pack_documents`` append ``[DOC]`` to every document and cut
the concatenated stream into fixed-size chunks, so a denoising example is a full sequence of consecutive
documents.

Extra integer features ``objective``, ``lang`` and ``num_spans`` (scalars) ride along for statistics; feature converters
drop them. Shapes: token features are 1-D int32 ``[length]``.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import math
import os
from typing import Callable, Dict, Mapping, Optional, Sequence

import numpy as np
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


# ------------------------------------------------------------------------------ stateless streams
# Why corpora held in memory become examples through pure functions of a position, not through ``shuffle``,
# ``unbatch`` or ``flat_map``: TensorFlow 2.21 cannot checkpoint those ops more than once. An iterator that was
# itself restored writes a wrong state for
#   - ``shuffle`` (symbolic checkpoint or not) when two or more shuffle buffers are live, as in every seqio
#     mixture: the slots it has not touched since the restore are saved as empty elements, and the next restore
#     fails with "Expected 1 components but got 0";
#   - ``unbatch`` and ``flat_map`` under symbolic checkpointing whenever a multi-input op (``zip``, which seqio's
#     seeded maps use, or ``sample_from_datasets``, which mixes tasks) sits above them: the input position
#     behind the element in progress is saved wrong, so the next restore silently skips or repeats data.
# Both were the "resume only once" failure (issue 10). Here an example is a pure function of (seed, shard,
# epoch, position), so the whole stream is described by counters: ``pipeline`` keeps them itself (one position
# per task and the mixture's example count) and rebuilds the stream from them, any number of times, in any
# process. Nothing has to be refilled before the first batch either (filling shuffle buffers was most of the
# start-up time, issue 13).

ENDLESS = 2 ** 62  # positions of an endless stream: more than any run reads


def derive_seed(*parts) -> int:
    """A 63-bit seed that is a pure function of ``parts`` (ints and strings; Python's ``hash`` is salted per
    process, sha256 is not), so every (seed, task, split, shard, purpose) has its own random stream."""
    digest = hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def seed_pair(seed: int, counter) -> tf.Tensor:
    """The stateless-RNG seed (int64 ``[2]``) of element ``counter`` (int scalar tensor) of stream ``seed``."""
    return tf.stack([tf.convert_to_tensor(seed, tf.int64), tf.cast(counter, tf.int64)])


def permutation(index, size, seed, epoch) -> tf.Tensor:
    """Where ``index`` (int64, any shape, values in ``[0, size)``) goes in the pseudorandom permutation of
    ``range(size)`` chosen by (``seed``, ``epoch``): ``tf.random.experimental.index_shuffle``, a stateless
    bijection, so no permutation is ever stored. Same shape as ``index``. Scalars may be ints or tensors."""
    return tf.random.experimental.index_shuffle(tf.cast(index, tf.int64), seed=seed_pair(seed, epoch),
                                                max_index=tf.convert_to_tensor(size, tf.int64) - 1)


def stream_seed(seed: Optional[int], name: str, split: str, shard_info: Optional[seqio.ShardInfo],
                shuffle: bool) -> int:
    """The seed of stream ``name`` (a task, a mixture) on one split and shard: processes draw independent
    streams from the one user seed. ``None`` (seqio's "unseeded") draws a fresh seed when shuffling, 0
    otherwise."""
    if seed is None:
        seed = int.from_bytes(os.urandom(8), "little") >> 1 if shuffle else 0
    index, count = (shard_info.index, shard_info.num_shards) if shard_info else (0, 1)
    return derive_seed(seed, name, split, index, count)


def epoch_and_index(position, per_epoch):
    """(epoch, index in the epoch) of ``position`` (int64 scalars; ``per_epoch`` an int or a tensor)."""
    position = tf.cast(position, tf.int64)
    return position // per_epoch, position % per_epoch


class TokenTable:
    """Tokenized documents in one flat array: document ``i`` is ``tokens[row_splits[i]:row_splits[i + 1]]``.

    ``tokens`` int32 ``[total]``, ``row_splits`` int64 ``[num_docs + 1]``; ``constant`` is ``tokens`` as one
    eager tensor, made once, so every task and every map function built on the table shares it.
    """

    def __init__(self, tokens: np.ndarray, row_splits: np.ndarray):
        self.tokens = np.asarray(tokens, np.int32)
        self.row_splits = np.asarray(row_splits, np.int64)
        if self.row_splits[0] != 0 or self.row_splits[-1] != len(self.tokens) or np.any(np.diff(self.row_splits) < 0):
            raise ValueError("row_splits must rise from 0 to len(tokens)")

    @classmethod
    def from_lists(cls, documents) -> "TokenTable":
        lengths = np.fromiter((len(d) for d in documents), np.int64, len(documents))
        tokens = np.fromiter((t for d in documents for t in d), np.int32, int(lengths.sum()))
        return cls(tokens, np.concatenate([[0], np.cumsum(lengths)]))

    @property
    def num_docs(self) -> int:
        return len(self.row_splits) - 1

    @functools.cached_property
    def constant(self) -> tf.Tensor:
        return tf.constant(self.tokens)


def _arrays(params: Mapping[str, object]) -> Dict[str, np.ndarray]:
    return {key: np.asarray(value) for key, value in params.items()}


@dataclasses.dataclass(frozen=True)
class PositionalExamples:
    """An example stream given by position: ``fn(tokens, params, position) -> dict of tensors``.

    ``fn`` is a pure function; ``table`` (a ``TokenTable`` or ``None``) and ``params`` (name -> numpy scalar or
    1-D array, numbers or strings) are this stream's data; ``position`` is an int64 scalar tensor. ``fn`` finds
    the stream's tokens at ``tokens[params["token_offset"]:]`` (the offset is 0 unless streams are stacked).
    ``per_epoch`` examples make one pass over the data: position ``p`` is example ``p % per_epoch`` of epoch
    ``p // per_epoch``, and every epoch may order the data differently.

    Streams with the same ``fn`` object (one objective on several languages) differ only in their data, so
    ``select_examples`` computes all of them with one traced function (tracing a function per task was most of
    the time to build a mixture of many languages).
    """

    per_epoch: int
    fn: Callable
    table: Optional[TokenTable]
    params: Mapping[str, np.ndarray]

    def then(self, step: Callable, **params) -> "PositionalExamples":
        """The stream of ``step(example, params, position)``; ``params`` adds the data ``step`` reads. Pass the
        same ``step`` object for every stream that should share a traced function."""
        return PositionalExamples(self.per_epoch, _compose(self.fn, step), self.table,
                                  {**self.params, **_arrays(params)})

    def example(self, position) -> Dict[str, tf.Tensor]:
        """The example at ``position`` (int scalar tensor)."""
        return select_examples([self])(tf.constant(0, tf.int64), position)

    def dataset(self, num_epochs: Optional[int] = 1, start: int = 0) -> tf.data.Dataset:
        """Examples at positions ``start, start + 1, ...`` for ``num_epochs`` epochs (``None``: endless)."""
        stop = ENDLESS if num_epochs is None else self.per_epoch * num_epochs
        if self.per_epoch == 0:
            stop = start  # nothing to read, however many epochs
        select = select_examples([self])
        example = tf.autograph.experimental.do_not_convert(lambda p: select(tf.constant(0, tf.int64), p))
        return tf.data.Dataset.range(start, stop).map(example, num_parallel_calls=tf.data.AUTOTUNE)


@functools.lru_cache(maxsize=None)
def _compose(first: Callable, step: Callable) -> Callable:
    """``step`` after ``first``; cached, so that streams built the same way share one function object."""

    def composed(tokens, params, position):
        return step(first(tokens, params, position), params, position)

    return composed


def select_examples(streams, keys: Optional[Sequence[str]] = None) -> Callable:
    """``fn(task, position)``: the example of ``streams[task]`` (int64 scalar tensors), only ``keys`` if given
    (then every stream's example must have them, with the same dtypes and ranks).

    Streams sharing an ``fn`` form a family traced once: their tokens and vector params lie end to end, their
    scalar params side by side, and ``task`` picks its own slice. Families are chosen with ``tf.switch_case``.
    """
    families: Dict[Callable, list] = {}
    for index, stream in enumerate(streams):
        families.setdefault(stream.fn, []).append(index)
    family_of, member_of = np.zeros(len(streams), np.int32), np.zeros(len(streams), np.int64)
    branches = []
    for family, (fn, indices) in enumerate(families.items()):
        family_of[indices], member_of[indices] = family, np.arange(len(indices))
        branches.append(_family(fn, [streams[i] for i in indices], keys))
    family_of, member_of = tf.constant(family_of), tf.constant(member_of)

    def select(task, position):
        member = tf.gather(member_of, task)
        if len(branches) == 1:
            return branches[0](member, position)
        return tf.switch_case(tf.gather(family_of, task), [functools.partial(b, member, position) for b in branches])

    return select


def _family(fn: Callable, streams, keys: Optional[Sequence[str]]) -> Callable:
    """``branch(member, position)``: ``fn`` on the data of ``streams[member]`` (see ``select_examples``)."""
    names = sorted(streams[0].params)
    if any(sorted(s.params) != names for s in streams):
        raise ValueError(f"streams sharing {fn} must have the same params, got {[sorted(s.params) for s in streams]}")
    tables = [s.table for s in streams]
    sizes = [0 if t is None else len(t.tokens) for t in tables]
    if len(streams) == 1 and tables[0] is not None:
        tokens = tables[0].constant  # shared with every other user of the table
    else:
        tokens = tf.constant(np.concatenate([t.tokens for t in tables if t is not None] + [np.zeros(0, np.int32)]))
    token_offsets = tf.constant(np.cumsum([0] + sizes[:-1]), tf.int64)
    stacked = {}
    for name in names:
        values = [np.asarray(s.params[name]) for s in streams]
        if values[0].ndim == 0:
            stacked[name] = (tf.constant(np.stack(values)), None)
        else:  # end to end, with the bounds of each stream's slice
            stacked[name] = (tf.constant(np.concatenate(values)),
                             tf.constant(np.cumsum([0] + [len(v) for v in values]), tf.int64))

    def branch(member, position):
        params = {"token_offset": tf.gather(token_offsets, member)}
        for name, (values, bounds) in stacked.items():
            params[name] = tf.gather(values, member) if bounds is None else values[bounds[member]:bounds[member + 1]]
        example = fn(tokens, params, position)
        return {key: example[key] for key in keys} if keys else example

    return branch


def _packed_chunk(tokens, params, position) -> Dict[str, tf.Tensor]:
    """``{"targets": chunk int32 [<= chunk_length]}`` at ``position`` of ``packed_chunks``. ``doc_lengths``
    counts the [DOC] after each document."""
    epoch, index = epoch_and_index(position, params["per_epoch"])
    shuffle, doc_lengths = params["shuffle"], params["doc_lengths"]
    slots = tf.range(tf.size(doc_lengths, out_type=tf.int64))
    order = tf.cond(shuffle, lambda: permutation(slots, tf.size(slots, out_type=tf.int64), params["order_seed"], epoch),
                    lambda: slots)  # slot -> document
    index = tf.cond(shuffle, lambda: permutation(index, params["per_epoch"], params["chunk_seed"], epoch),
                    lambda: index)
    slot_lengths = tf.gather(doc_lengths, order)
    ends = tf.cumsum(slot_lengths)
    begin = index * params["chunk_length"]
    stream = tf.range(begin, tf.minimum(begin + params["chunk_length"], ends[-1]))  # positions in the epoch's stream
    slot = tf.searchsorted(ends, stream, side="right")
    length = tf.gather(slot_lengths, slot)
    offset = stream - (tf.gather(ends, slot) - length)  # position inside the document (+ [DOC])
    is_separator = tf.equal(offset, length - 1)
    starts = params["starts"] + params["token_offset"]
    source = tf.where(is_separator, tf.zeros_like(offset), tf.gather(starts, tf.gather(order, slot)) + offset)
    return {"targets": tf.where(is_separator, params["separator_id"], tf.gather(tokens, source))}


def _document_piece(tokens, params, position) -> Dict[str, tf.Tensor]:
    """``{"targets": piece int32 [<= piece_length]}`` at ``position`` of ``document_pieces``; document ``d``
    has ``piece_counts[d]`` pieces, ``piece_ends`` is their cumulative sum."""
    epoch, index = epoch_and_index(position, params["per_epoch"])
    index = tf.cond(params["shuffle"], lambda: permutation(index, params["per_epoch"], params["seed"], epoch),
                    lambda: index)
    piece_ends, piece_counts = params["piece_ends"], params["piece_counts"]
    doc = tf.searchsorted(piece_ends, tf.reshape(index, [1]), side="right")[0]
    k = index - (piece_ends[doc] - piece_counts[doc])  # piece k of the document
    begin = params["starts"][doc] + params["token_offset"] + k * params["piece_length"]
    end = tf.minimum(begin + params["piece_length"], params["starts"][doc] + params["token_offset"]
                     + params["doc_lengths"][doc])
    return {"targets": tokens[begin:end]}


def packed_chunks(table: TokenTable, chunk_length: int, separator_id: int, *, shuffle: bool,
                  seed: int) -> PositionalExamples:
    """AlexaTM packing as a positional stream: each epoch concatenates the documents, each followed by
    ``separator_id`` ([DOC]), and cuts the result into chunks of ``chunk_length`` tokens (the last one may be
    shorter): ``{"targets": int32 [<= chunk_length]}``.

    Unshuffled: documents in order, chunks in order (exactly ``pack_documents`` on the document stream).
    Shuffled: every epoch packs the documents in a fresh random order and yields its chunks in another random
    order, so the chunks of one document do not follow each other. Work per chunk grows with the number of
    documents (the epoch's document order is recomputed, never stored): microseconds for thousands.
    """
    if chunk_length < 1:
        raise ValueError(f"chunk_length must be positive, got {chunk_length}")
    lengths = np.diff(table.row_splits) + 1  # + [DOC]
    per_epoch = -(-int(lengths.sum()) // chunk_length)
    params = dict(starts=table.row_splits[:-1], doc_lengths=lengths, per_epoch=np.int64(max(per_epoch, 1)),
                  chunk_length=np.int64(chunk_length), separator_id=np.int32(separator_id), shuffle=np.bool_(shuffle),
                  order_seed=np.int64(derive_seed(seed, "document order")),
                  chunk_seed=np.int64(derive_seed(seed, "chunk order")))
    return PositionalExamples(per_epoch, _packed_chunk, table, params)


def document_pieces(table: TokenTable, piece_length: int, *, shuffle: bool, seed: int,
                    min_length: int = 2) -> PositionalExamples:
    """Each document cut into pieces of at most ``piece_length`` tokens, pieces shorter than ``min_length``
    dropped (``split_documents`` + ``drop_short``), as a positional stream ``{"targets": int32 [<= piece_length]}``.

    Unshuffled: pieces in document order. Shuffled: every epoch yields all pieces in a fresh random order.
    """
    if piece_length < 1:
        raise ValueError(f"piece_length must be positive, got {piece_length}")
    lengths = np.diff(table.row_splits)
    counts = lengths // piece_length * (piece_length >= min_length) + (lengths % piece_length >= min_length)
    per_epoch = int(counts.sum())
    params = dict(starts=table.row_splits[:-1], doc_lengths=lengths, piece_ends=np.cumsum(counts), piece_counts=counts,
                  per_epoch=np.int64(max(per_epoch, 1)), piece_length=np.int64(piece_length), shuffle=np.bool_(shuffle),
                  seed=np.int64(derive_seed(seed, "piece order")))
    return PositionalExamples(per_epoch, _document_piece, table, params)


def eos_after_trim(example: Mapping[str, tf.Tensor], output_features: Mapping[str, seqio.Feature],
                   sequence_length: Optional[Mapping[str, int]]) -> Dict[str, tf.Tensor]:
    """seqio's ``append_eos_after_trim`` on one example: features with ``add_eos`` are cut to ``length - 1``
    and get EOS; the rest are cut to ``length`` (when ``sequence_length`` names them)."""
    out = dict(example)
    for key, feature in output_features.items():
        if key not in out or feature.rank != 1:
            continue
        length = (sequence_length or {}).get(key)
        value = out[key]
        if feature.add_eos:
            if length is not None:
                value = value[:length - 1]
            value = tf.concat([value, tf.constant([feature.vocabulary.eos_id], value.dtype)], axis=0)
        elif length is not None:
            value = value[:length]
        out[key] = value
    return out


class PositionalTask(seqio.Task):
    """A seqio Task whose examples are a pure function of (seed, shard, position) when its source allows it.

    Subclasses implement ``positional_examples``; the training pipeline mixes such tasks itself and resumes
    them from plain counters (``pipeline.BatchIterator.state``). ``get_dataset`` gives the same examples to
    seqio users (mixtures, statistics); a source without random access falls back to seqio's own pipeline.
    """

    @property
    def supports_positions(self) -> bool:
        """Whether the source has random access (else ``get_dataset`` is seqio's own pipeline)."""
        return True

    def positional_examples(self, split: str, sequence_length: Optional[Mapping[str, int]],
                            shard_info: Optional[seqio.ShardInfo], shuffle: bool,
                            seed: Optional[int]) -> PositionalExamples:
        """This task's examples for ``split`` on shard ``shard_info``, complete (trimmed, EOS appended); only
        when ``supports_positions``."""
        raise NotImplementedError

    def stream_seed(self, seed: Optional[int], split: str, shard_info: Optional[seqio.ShardInfo],
                    shuffle: bool) -> int:
        """The seed of this task's stream on one shard (``stream_seed``)."""
        return stream_seed(seed, self.name, split, shard_info, shuffle)

    def get_dataset(self, sequence_length=None, split="train", use_cached=False, shuffle=True,
                    shuffle_buffer_size=None, seed=None, shard_info=None, num_epochs=1, trim_output_features=True,
                    try_in_mem_cache=True) -> tf.data.Dataset:
        if not self.supports_positions:
            return super().get_dataset(sequence_length=sequence_length, split=split, use_cached=use_cached,
                                       shuffle=shuffle, shuffle_buffer_size=shuffle_buffer_size, seed=seed,
                                       shard_info=shard_info, num_epochs=num_epochs,
                                       trim_output_features=trim_output_features, try_in_mem_cache=try_in_mem_cache)
        examples = self.positional_examples(split, sequence_length, shard_info, shuffle, seed)
        return examples.dataset(num_epochs).prefetch(tf.data.AUTOTUNE)


# ------------------------------------------------------------------------------------------ sources
def text_to_targets(dataset: tf.data.Dataset, text_key: str = "text") -> tf.data.Dataset:
    """``{text_key: str}`` -> ``{"targets": str}`` (the objective preprocessors build ``inputs``)."""
    return dataset.map(lambda ex: {"targets": ex[text_key]}, num_parallel_calls=tf.data.AUTOTUNE)


def with_labels(example: Mapping[str, tf.Tensor], objective: str, lang_id) -> Dict[str, tf.Tensor]:
    """``inputs`` and ``targets`` of one example plus the int32 scalars ``objective``, ``lang`` and ``num_spans``
    (0 without spans), for statistics; every task then has the same structure, which mixing requires."""
    num_spans = example.get("num_spans", tf.constant(0, tf.int32))
    return {"inputs": example["inputs"], "targets": example["targets"],
            "objective": tf.constant(OBJECTIVE_IDS[objective], tf.int32), "lang": tf.cast(lang_id, tf.int32),
            "num_spans": tf.cast(num_spans, tf.int32)}


def add_labels(dataset: tf.data.Dataset, objective: str, lang_id: int) -> tf.data.Dataset:
    """``with_labels`` on every example."""
    return dataset.map(functools.partial(with_labels, objective=objective, lang_id=lang_id),
                       num_parallel_calls=tf.data.AUTOTUNE)


def drop_short(dataset: tf.data.Dataset, min_tokens: int = 2, key: str = "targets") -> tf.data.Dataset:
    """Drop examples with fewer than ``min_tokens`` tokens (a 1-token document has no 20-80% prefix)."""
    return dataset.filter(lambda ex: tf.size(ex[key]) >= min_tokens)


# ------------------------------------------------------------------------------------------ packing
def pack_documents(dataset: tf.data.Dataset, chunk_length: int, separator_id: int,
                   key: str = "targets") -> tf.data.Dataset:
    """Concatenate tokenized documents, each followed by ``separator_id`` (``[DOC]``), and cut the stream into
    chunks of ``chunk_length`` tokens (the last one may be shorter). Other features are dropped.

    The seqio path for sources without random access (``packed_chunks`` is the positional equivalent).
    """
    if chunk_length < 1:
        raise ValueError(f"chunk_length must be positive, got {chunk_length}")
    sep = tf.constant([separator_id], tf.int32)
    tokens = dataset.map(lambda ex: tf.concat([tf.cast(ex[key], tf.int32), sep], axis=0),
                         num_parallel_calls=tf.data.AUTOTUNE)
    return tokens.unbatch().batch(chunk_length).map(lambda t: {key: t})


def split_documents(dataset: tf.data.Dataset, max_length: int, key: str = "targets") -> tf.data.Dataset:
    """Cut each document into pieces of at most ``max_length`` tokens (one example per piece). The seqio path
    for sources without random access (``document_pieces`` is the positional equivalent)."""
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
# Each objective is a pure function of one example's tokens and a stateless seed (int ``[2]``): the positional
# streams call it with a seed made from the example's position, the seqio preprocessors below with seqio's.

def denoise_example(tokens: tf.Tensor, seed, noise_density: float = 0.15,
                    mean_noise_span_length: float = 3.0) -> Dict[str, tf.Tensor]:
    """``tokens`` ``[n]`` -> ``{"inputs": tokens minus dropped spans, "targets": tokens, "num_spans": scalar}``."""
    tokens = tf.cast(tokens, tf.int32)
    mask = poisson_span_mask(tf.size(tokens), noise_density, mean_noise_span_length, seed)
    return {"inputs": tf.boolean_mask(tokens, tf.logical_not(mask)), "targets": tokens,
            "num_spans": count_spans(mask)}


def clm_example(tokens: tf.Tensor, seed, clm_token_id: int, min_fraction: float = 0.2,
                max_fraction: float = 0.8) -> Dict[str, tf.Tensor]:
    """``tokens`` ``[n]`` (one document piece, n >= 2) -> ``{"inputs": [CLM] + prefix, "targets": rest}``."""
    prefix, rest = clm_prefix_split(tf.cast(tokens, tf.int32), seed, min_fraction, max_fraction)
    return {"inputs": tf.concat([[clm_token_id], prefix], axis=0), "targets": rest}


def span_corruption_example(tokens: tf.Tensor, seed, first_sentinel_id: int, noise_density: float = 0.15,
                            mean_noise_span_length: float = 3.0,
                            prefix_token_id: Optional[int] = None) -> Dict[str, tf.Tensor]:
    """``tokens`` ``[n]`` -> T5 span corruption ``{"inputs", "targets", "num_spans"}`` (see
    ``t5_span_corruption``)."""
    tokens = tf.cast(tokens, tf.int32)
    mask = partition_span_mask(tf.size(tokens), noise_density, mean_noise_span_length, seed)
    inputs = _sentinelize(tokens, mask, first_sentinel_id)
    if prefix_token_id is not None:
        inputs = tf.concat([[prefix_token_id], inputs], axis=0)
    return {"inputs": inputs, "targets": _noise_targets(tokens, mask, first_sentinel_id),
            "num_spans": count_spans(mask)}


def _over_dataset(example_fn):
    """A seqio preprocessor ``fn(dataset)`` applying ``example_fn(ex["targets"], seed)`` with seqio's seeds; the
    result's features replace the example's."""

    @seqio.map_over_dataset(num_seeds=1)
    def fn(ex, seed):
        return dict(ex, **example_fn(ex["targets"], seed))

    return fn


def alexatm_denoise(dataset: tf.data.Dataset, noise_density: float = 0.15, mean_noise_span_length: float = 3.0):
    """``{"targets": [n]}`` -> ``{"inputs": targets minus dropped spans, "targets": original}``."""
    return _over_dataset(functools.partial(denoise_example, noise_density=noise_density,
                                           mean_noise_span_length=mean_noise_span_length))(dataset)


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
    return _over_dataset(functools.partial(clm_example, clm_token_id=clm_token_id, min_fraction=min_fraction,
                                           max_fraction=max_fraction))(dataset)


def t5_span_corruption(dataset: tf.data.Dataset, first_sentinel_id: int, noise_density: float = 0.15,
                       mean_noise_span_length: float = 3.0, prefix_token_id: Optional[int] = None):
    """T5 span corruption: each noise span becomes a sentinel in the input; the target is each sentinel
    followed by the span it hides. Sentinels count down from ``first_sentinel_id`` (seqio's last extra id).
    ``prefix_token_id`` (a UL2 mode token) is prepended to the input when given."""
    return _over_dataset(functools.partial(
        span_corruption_example, first_sentinel_id=first_sentinel_id, noise_density=noise_density,
        mean_noise_span_length=mean_noise_span_length, prefix_token_id=prefix_token_id))(dataset)


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
