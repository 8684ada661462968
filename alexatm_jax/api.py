"""The small public API: ``lm = alexatm_jax.load(DIR)``, then ``lm.logits``, ``lm.generate``, ``lm.score``.

Inputs are numpy arrays or (possibly ragged) Python lists of token ids. ``attention_mask`` follows the
reference implementation: 1 for tokens, 0 for padding. Ragged lists are right-padded for you and get the
matching mask. Outputs are numpy arrays.
"""

from __future__ import annotations

import os
from typing import Any, Optional, Sequence

import jax
import numpy as np

from alexatm_jax.checkpoints import model_dir
from alexatm_jax.model.config import ModelConfig
from alexatm_jax.models import EncoderDecoderModel


def _row_ids(row: Any, name: str, index: int) -> np.ndarray:
    """One row of a (ragged) list of token ids, checked to hold integers (floats are not silently truncated)."""
    if isinstance(row, (str, bytes)):
        raise ValueError(f"{name}[{index}] is the text {row!r}, not token ids; turn text into ids with "
                         f"lm.tokenize(texts)")
    array = np.asarray(row)
    if array.ndim != 1:
        raise ValueError(f"{name}[{index}] must be a flat list of integer token ids, got {row!r}")
    if array.size and not np.issubdtype(array.dtype, np.integer):
        bad = next((t for t in row if not isinstance(t, (int, np.integer)) or isinstance(t, bool)), None)
        if bad is None:  # Python ints beyond int64
            raise ValueError(f"{name}[{index}] holds {max(row)}, which is not a token id of this model")
        raise ValueError(f"{name}[{index}] holds {bad!r}, which is not an integer token id")
    return array.astype(np.int64)


def _as_batch(ids: Any, mask: Any, pad_id: int, name: str, mask_name: str = "attention_mask") \
        -> tuple[np.ndarray, np.ndarray]:
    """Token ids (array, list of lists, or one flat list) -> int64 [B, L] ids and int32 mask. The ids are
    range-checked against the vocabulary (and cast to int32) by the inference runner: casting here would wrap
    an id like 2**32 + 5 into a valid one."""
    if isinstance(ids, (str, bytes)):
        raise ValueError(f"{name} is the text {ids!r}, not token ids; turn text into ids with lm.tokenize(text)")
    if isinstance(ids, np.ndarray) or hasattr(ids, "__array__"):
        array = np.asarray(ids)
        if array.ndim == 1:
            array = array[None, :]
    else:
        rows = list(ids)
        if rows and (np.isscalar(rows[0]) and not isinstance(rows[0], (str, bytes))):
            rows = [rows]
        if not rows or any(len(r) == 0 for r in rows):
            raise ValueError(f"{name} is empty: give at least one token per row")
        rows = [_row_ids(row, name, i) for i, row in enumerate(rows)]
        width = max(len(r) for r in rows)
        array = np.full((len(rows), width), pad_id, dtype=np.int64)
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
        raise ValueError(f"{mask_name} shape {mask.shape} does not match {name} shape {array.shape}")
    return array, (mask > 0).astype(np.int32)


CLM_TOKEN = "[CLM]"


def prompt_token_ids(sp, text: str, eos_id: int, add_eos: bool = True, clm_token: str = CLM_TOKEN) -> list[int]:
    """The one tokenisation of a prompt: a leading ``[CLM] `` becomes the CLM token's own id (as the CLM
    pretraining objective built its inputs), the rest is SentencePiece pieces, then EOS (seqio's ``add_eos``
    on the encoder input). Used by ``lm.tokenize``, ``alexatm-jax generate`` and the evaluation runner."""
    ids: list[int] = []
    prefix = clm_token + " "
    if clm_token and (text.startswith(prefix) or text == clm_token):
        clm_id = sp.piece_to_id(clm_token)
        if clm_id != sp.unk_id() and sp.id_to_piece(clm_id) == clm_token:
            ids, text = [clm_id], text[len(prefix):]
    return ids + list(sp.encode(text)) + ([eos_id] if add_eos else [])


class LanguageModel:
    """An AlexaTM-style model with its parameters (and tokenizer, when known), ready to run.

    ``model`` is the ``EncoderDecoderModel``; ``partitioner`` the mesh and rules its parameters are laid out by
    (one device unless a mesh was given to ``load``). Every method pads the batch to the data parallelism and
    runs sharded, like generation."""

    def __init__(self, config: ModelConfig, params: Any, tokenizer: Any = None, partitioner: Any = None,
                 path: Optional[str] = None):
        from alexatm_jax import inference
        from alexatm_jax.models import EncoderDecoderModel

        self.config = config
        self.model = EncoderDecoderModel(config)
        self.partitioner = partitioner or inference.default_partitioner()
        self.runner = inference.InferenceRunner(self.model, self.partitioner)
        self.params = self.runner.place_params(params)
        self.tokenizer = tokenizer
        self.path = path

    @property
    def mesh(self):
        return self.partitioner.mesh

    def __repr__(self):
        return (f"LanguageModel(path={self.path!r}, d_model={self.config.d_model}, "
                f"layers={self.config.encoder_layers}+{self.config.decoder_layers}, "
                f"vocab={self.config.vocab_size}, {self.partitioner})")

    def _inputs(self, input_ids, attention_mask):
        return _as_batch(input_ids, attention_mask, self.config.pad_token_id, "input_ids")

    def encode(self, input_ids, attention_mask=None) -> np.ndarray:
        """Encoder output [batch, length, d_model] (float32)."""
        ids, mask = self._inputs(input_ids, attention_mask)
        return self.runner.encode(self.params, ids, mask)

    def logits(self, input_ids, decoder_input_ids, attention_mask=None) -> np.ndarray:
        """Teacher-forced next-token logits [batch, decoder_length, vocab] (float32)."""
        ids, mask = self._inputs(input_ids, attention_mask)
        dec, _ = _as_batch(decoder_input_ids, None, self.config.pad_token_id, "decoder_input_ids")
        return self.runner.logits(self.params, ids, mask, dec)

    def generate(self, input_ids, attention_mask=None, max_new_tokens: int = 20, num_beams: int = 1,
                 length_penalty: float = 0.6, do_sample: bool = False, temperature: float = 1.0, top_k: int = 0,
                 top_p: float = 1.0, rng=None, stop_sequences=None, use_cache: bool = True,
                 return_scores: bool = False):
        """New token ids [batch, max_new_tokens], EOS included, padded with the pad id after EOS (with
        ``return_scores``, also the beam scores [batch]). Sampling needs ``rng`` (a PRNGKey);
        ``stop_sequences``: lists of token ids that end a row like EOS."""
        from alexatm_jax.models import DecodingSettings, stop_sequences_tuple

        if do_sample and rng is None:
            raise ValueError("do_sample=True needs rng=jax.random.PRNGKey(seed)")
        ids, mask = self._inputs(input_ids, attention_mask)
        settings = DecodingSettings(max_new_tokens=max_new_tokens, num_beams=num_beams,
                                    length_penalty=length_penalty, do_sample=do_sample, temperature=temperature,
                                    top_k=top_k, top_p=top_p, stop_sequences=stop_sequences_tuple(stop_sequences),
                                    use_cache=use_cache)
        out, scores = self.runner.generate(self.params, ids, mask, settings, rng=rng)
        return (out, scores) if return_scores else out

    def token_scores(self, input_ids, target_ids, attention_mask=None, target_mask=None) -> np.ndarray:
        """log p(target_t | targets_<t, inputs) [batch, target_length] (0 where ``target_mask`` is 0)."""
        ids, mask = self._inputs(input_ids, attention_mask)
        targets, tmask = _as_batch(target_ids, target_mask, self.config.pad_token_id, "target_ids", "target_mask")
        return self.runner.token_scores(self.params, ids, mask, targets, tmask)

    def score(self, input_ids, target_ids, attention_mask=None, target_mask=None) -> np.ndarray:
        """Summed log-likelihood [batch] of ``target_ids`` given the inputs (teacher forcing)."""
        return self.token_scores(input_ids, target_ids, attention_mask, target_mask).sum(axis=-1)

    def score_choices(self, input_ids, choice_ids, attention_mask=None, choice_mask=None) -> np.ndarray:
        """Summed log-likelihood [batch, num_choices] of every candidate target (the rows of ``choice_ids``,
        ragged lists allowed) after every input: ``score`` of each (input, candidate) pair, with one encoder
        pass per input. Rank classification: the prediction is ``argmax`` over the candidates."""
        ids, mask = self._inputs(input_ids, attention_mask)
        choices, cmask = _as_batch(choice_ids, choice_mask, self.config.pad_token_id, "choice_ids", "choice_mask")
        return self.runner.choice_scores(self.params, ids, mask, choices, cmask)

    # Text helpers (need the checkpoint's SentencePiece tokenizer).
    def _require_tokenizer(self):
        if self.tokenizer is None:
            raise ValueError("This model directory has no tokenizer.model; pass token ids instead of text")
        return self.tokenizer

    def tokenize(self, texts: Sequence[str], add_eos: bool = True) -> list[list[int]]:
        """Prompts -> token ids, the way the model was trained to read them (see ``prompt_token_ids``)."""
        sp = self._require_tokenizer()
        if isinstance(texts, str):
            texts = [texts]
        texts = list(texts)
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise ValueError(f"texts[{i}] is {text!r}, not a string: lm.tokenize takes text")
        return [prompt_token_ids(sp, text, self.config.eos_token_id, add_eos) for text in texts]

    def detokenize(self, token_rows) -> list[str]:
        """Token rows -> text, cut at EOS; ids with no text (padding, ids past the SentencePiece pieces) are
        dropped."""
        sp = self._require_tokenizer()
        size = sp.get_piece_size()
        texts = []
        for row in np.asarray(token_rows).tolist():
            row = row[:row.index(self.config.eos_token_id)] if self.config.eos_token_id in row else row
            texts.append(sp.decode([t for t in row if t != self.config.pad_token_id and 0 <= t < size]))
        return texts


def _as_partitioner(mesh: Any, rules):
    """``mesh``: None (one device), a spec string ('data=2,fsdp=-1'), a Mesh, or a Partitioner."""
    from alexatm_jax import inference, partitioning

    if mesh is None:
        return inference.default_partitioner() if rules is None else partitioning.Partitioner(
            partitioning.make_mesh("data=1", [jax.local_devices()[0]]), rules)
    if isinstance(mesh, partitioning.Partitioner):
        return mesh
    return partitioning.Partitioner(mesh, rules)


def load(path: str | os.PathLike, mesh: Any = None, step: Optional[int] = None,
         rules: Optional[Sequence] = None) -> LanguageModel:
    """Loads an exported model directory or a training run's newest (or given) checkpoint, local or remote.

    ``mesh``: None (one device), a mesh spec such as ``'data=2,fsdp=-1'`` (the syntax of ``--gin.MESH`` and
    ``--mesh``), a ``jax.sharding.Mesh`` or a ``Partitioner``. Parameters are restored straight into the layout
    that the run's own logical-axis rules give (``partitioning.json``, saved by training; else ``rules`` or
    the defaults), whatever mesh the checkpoint was saved from."""
    from alexatm_jax import storage
    from alexatm_jax.partitioning import load_rules

    root = storage.resolve(path)
    if not root.exists():
        raise FileNotFoundError(f"No model directory at {os.fspath(path)!r}")
    config = model_dir.read_config(root)
    if rules is None:
        rules = load_rules(root)
    partitioner = _as_partitioner(mesh, rules)
    from alexatm_jax import inference
    from alexatm_jax.data import vocab
    runner = inference.InferenceRunner(EncoderDecoderModel(config), partitioner)
    _, params = model_dir.restore_params(root, runner.abstract_params(), step=step)
    tokenizer = None
    spm_path = model_dir.tokenizer_path(root)
    if spm_path is not None:
        tokenizer = vocab.load_sentencepiece(spm_path)
    return LanguageModel(config, params, tokenizer=tokenizer, partitioner=partitioner, path=os.fspath(path))
