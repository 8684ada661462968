"""Teacher-forced scoring: the log-likelihood of given targets, for rank classification.

The decoder input is the decoder-start token followed by the targets shifted right by one (seqio's
autoregressive convention, ``models.shift_right``); the score of a row is the sum of
log p(target_t | targets_<t, input) over the positions where ``target_mask`` is 1. The computation is
``EncoderDecoderModel.token_scores``; these are its numpy conveniences, compiled by ``alexatm_jax.inference``.
"""

from __future__ import annotations

import numpy as np

from alexatm_jax.models import shift_right, token_log_probs_from_logits  # noqa: F401  (re-exported)


def token_scores(model, params, encoder_input_tokens, encoder_segment_ids, target_tokens, target_mask=None, *,
                 partitioner=None) -> np.ndarray:
    """Per-token log-probabilities of ``target_tokens`` [B, T] -> float32 [B, T] (0 where mask is 0).

    ``model``: an ``EncoderDecoderModel`` (or its config); encoder_input_tokens [B, S] int; encoder_segment_ids
    [B, S] (1 token, 0 padding) or None (derived from the model's pad id); target_mask [B, T] (1 counts)."""
    from alexatm_jax import inference

    return inference.runner_for(model, partitioner).token_scores(params, encoder_input_tokens, encoder_segment_ids,
                                                                 target_tokens, target_mask)


def score(model, params, encoder_input_tokens, encoder_segment_ids, target_tokens, target_mask=None, *,
          partitioner=None) -> np.ndarray:
    """Summed log-probability of each row's targets (teacher forcing) -> float32 [B]."""
    return token_scores(model, params, encoder_input_tokens, encoder_segment_ids, target_tokens, target_mask,
                        partitioner=partitioner).sum(axis=-1)
