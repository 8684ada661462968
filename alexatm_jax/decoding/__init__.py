"""Decoding: greedy, beam search and sampling over the KV cache (``generate``), and teacher-forced
scoring of given targets (``score``, ``token_scores``) for rank classification."""

from alexatm_jax.decoding.generation import generate
from alexatm_jax.decoding.scoring import score, token_scores

__all__ = ["generate", "score", "token_scores"]
