"""The small public API: ``lm = alexatm_jax.load(DIR)``, then ``lm.logits``, ``lm.generate``, ``lm.score``.

Inputs are numpy arrays or (possibly ragged) Python lists of token ids. ``attention_mask`` follows the
reference implementation: 1 for tokens, 0 for padding. Ragged lists are right-padded for you and get the
matching mask. Outputs are numpy arrays.
"""

from __future__ import annotations

import os
from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from alexatm_jax.checkpoints import model_dir
from alexatm_jax.model.config import ModelConfig
from alexatm_jax.model.transformer import AlexaTMTransformer


def _as_batch(ids: Any, mask: Any, pad_id: int, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Token ids (array, list of lists, or one flat list) -> int32 [B, L] ids and mask."""
    if isinstance(ids, np.ndarray) or hasattr(ids, "__array__"):
        array = np.asarray(ids)
        if array.ndim == 1:
            array = array[None, :]
    else:
        rows = list(ids)
        if rows and np.isscalar(rows[0]):
            rows = [rows]
        if not rows or any(len(r) == 0 for r in rows):
            raise ValueError(f"{name} is empty: give at least one token per row")
        width = max(len(r) for r in rows)
        array = np.full((len(rows), width), pad_id, dtype=np.int32)
        made_mask = np.zeros((len(rows), width), dtype=np.int32)
        for i, row in enumerate(rows):
            array[i, :len(row)] = row
            made_mask[i, :len(row)] = 1
        if mask is None:
            mask = made_mask
    if array.ndim != 2 or not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"{name} must be integer token ids of shape [batch, length], got {array.dtype} "
                         f"{array.shape}")
    if mask is None:
        mask = np.ones_like(array, dtype=np.int32)
    mask = np.asarray(mask)
    if mask.ndim == 1:
        mask = mask[None, :]
    if mask.shape != array.shape:
        raise ValueError(f"attention mask shape {mask.shape} does not match {name} shape {array.shape}")
    return array.astype(np.int32), (mask > 0).astype(np.int32)


class LanguageModel:
    """An AlexaTM-style model with its parameters (and tokenizer, when known), ready to run."""

    def __init__(self, config: ModelConfig, params: Any, tokenizer: Any = None, mesh: Any = None,
                 path: Optional[str] = None):
        self.config = config
        self.params = params
        self.tokenizer = tokenizer
        self.mesh = mesh
        self.path = path
        self.model = AlexaTMTransformer(config)
        model = self.model
        self._encode = jax.jit(lambda p, ids, seg: model.apply(
            {"params": p}, ids, encoder_segment_ids=seg, enable_dropout=False, method=model.encode))
        self._logits = jax.jit(lambda p, ids, seg, dec: model.apply(
            {"params": p}, ids, dec, encoder_segment_ids=seg, enable_dropout=False))

    def __repr__(self):
        return (f"LanguageModel(path={self.path!r}, d_model={self.config.d_model}, "
                f"layers={self.config.encoder_layers}+{self.config.decoder_layers}, "
                f"vocab={self.config.vocab_size})")

    def _inputs(self, input_ids, attention_mask):
        ids, mask = _as_batch(input_ids, attention_mask, self.config.pad_token_id, "input_ids")
        if ids.shape[1] > self.config.max_position_embeddings:
            raise ValueError(f"input of {ids.shape[1]} tokens exceeds the model's "
                             f"{self.config.max_position_embeddings} positions; truncate it")
        return ids, mask

    def encode(self, input_ids, attention_mask=None) -> np.ndarray:
        """Encoder output [batch, length, d_model] (float32)."""
        ids, mask = self._inputs(input_ids, attention_mask)
        return np.asarray(self._encode(self.params, ids, mask), dtype=np.float32)

    def logits(self, input_ids, decoder_input_ids, attention_mask=None) -> np.ndarray:
        """Teacher-forced next-token logits [batch, decoder_length, vocab] (float32)."""
        ids, mask = self._inputs(input_ids, attention_mask)
        dec, _ = _as_batch(decoder_input_ids, None, self.config.pad_token_id, "decoder_input_ids")
        if dec.shape[0] != ids.shape[0]:
            raise ValueError(f"decoder_input_ids has batch {dec.shape[0]} but input_ids has {ids.shape[0]}")
        return np.asarray(self._logits(self.params, ids, mask, dec))

    def generate(self, input_ids, attention_mask=None, max_new_tokens: int = 20, num_beams: int = 1,
                 **decoding_options) -> np.ndarray:
        """New token ids [batch, max_new_tokens], EOS included, padded with the pad id after EOS.

        ``decoding_options``: ``length_penalty`` (beam search), ``do_sample``, ``temperature``, ``top_k``,
        ``top_p``, ``rng`` (sampling), ``stop_sequences`` (lists of token ids)."""
        from alexatm_jax import decoding

        ids, mask = self._inputs(input_ids, attention_mask)
        cfg = self.config
        return decoding.generate(
            self.model, self.params, ids, mask, max_new_tokens=max_new_tokens,
            decoder_start_token_id=cfg.decoder_start_token_id, eos_token_id=cfg.eos_token_id,
            pad_token_id=cfg.pad_token_id, num_beams=num_beams, mesh=self.mesh, **decoding_options)

    def score(self, input_ids, target_ids, attention_mask=None, target_mask=None) -> np.ndarray:
        """Summed log-likelihood [batch] of ``target_ids`` given the inputs (teacher forcing)."""
        from alexatm_jax import decoding

        ids, mask = self._inputs(input_ids, attention_mask)
        targets, tmask = _as_batch(target_ids, target_mask, self.config.pad_token_id, "target_ids")
        return decoding.score(self.model, self.params, ids, mask, targets, tmask,
                              decoder_start_token_id=self.config.decoder_start_token_id)

    # Text helpers (need the checkpoint's SentencePiece tokenizer).
    def _require_tokenizer(self):
        if self.tokenizer is None:
            raise ValueError("This model directory has no tokenizer.model; pass token ids instead of text")
        return self.tokenizer

    def tokenize(self, texts: Sequence[str], add_eos: bool = True) -> list[list[int]]:
        sp = self._require_tokenizer()
        return [ids + ([self.config.eos_token_id] if add_eos else []) for ids in sp.encode(list(texts))]

    def detokenize(self, token_rows) -> list[str]:
        sp = self._require_tokenizer()
        special = {self.config.eos_token_id, self.config.pad_token_id}
        texts = []
        for row in np.asarray(token_rows).tolist():
            row = row[:row.index(self.config.eos_token_id)] if self.config.eos_token_id in row else row
            texts.append(sp.decode([t for t in row if t not in special]))
        return texts


def load(path: str | os.PathLike, mesh: Any = None, step: Optional[int] = None) -> LanguageModel:
    """Loads an exported model directory or a training run's latest (or given) checkpoint.

    With ``mesh`` (see ``alexatm_jax.partitioning.make_mesh``), parameters are restored directly into their
    sharded layout by the default logical-axis rules, whatever mesh the checkpoint was saved from."""
    path = os.fspath(path)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"No model directory at {path!r}")
    config = model_dir.read_config(path)
    shardings = None
    if mesh is not None:
        from alexatm_jax import partitioning
        model = AlexaTMTransformer(config)
        tokens = jnp.ones((1, 1), jnp.int32)
        specs = partitioning.params_logical_specs(model, tokens, tokens, enable_dropout=False)
        shardings = partitioning.logical_to_mesh_sharding(specs, mesh)
    abstract = model_dir.abstract_params(config, shardings)
    params = model_dir.restore_params(path, abstract, step=step)
    tokenizer = None
    spm_path = model_dir.tokenizer_path(path)
    if spm_path is not None:
        import sentencepiece as spm
        tokenizer = spm.SentencePieceProcessor(model_file=str(spm_path))
    return LanguageModel(config, params, tokenizer=tokenizer, mesh=mesh, path=path)
