"""Parameter counts per component, from abstract shapes (``jax.eval_shape``): nothing is allocated."""

from __future__ import annotations

import math

import jax

from alexatm_jax.model.config import ModelConfig


def parameter_counts(config: ModelConfig) -> dict[str, int]:
    """{'encoder_embeddings', 'encoder_layers', 'decoder_embeddings', 'decoder_layers', 'lm_head', 'total'}:
    embeddings include token, position and token-type tables; norms count with their stack's layers."""
    from alexatm_jax.checkpoints.model_dir import abstract_params

    params = abstract_params(config)
    counts = {"encoder_embeddings": 0, "encoder_layers": 0, "decoder_embeddings": 0, "decoder_layers": 0,
              "lm_head": 0}
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        names = [getattr(p, "key", str(p)) for p in path]
        size = math.prod(leaf.shape)
        if names[0] == "encoder_token_embedder":
            counts["encoder_embeddings"] += size
        elif names[0] == "decoder_token_embedder":
            counts["decoder_embeddings"] += size
        elif names[0] == "encoder":
            counts["encoder_embeddings" if names[1].endswith("embedder") else "encoder_layers"] += size
        elif names[0] == "decoder":
            if names[1].endswith("embedder"):
                counts["decoder_embeddings"] += size
            elif names[1] in ("logits_dense", "final_logits_bias"):
                counts["lm_head"] += size
            else:
                counts["decoder_layers"] += size
        else:
            raise AssertionError(f"unclassified parameter {'/'.join(names)}")
    counts["total"] = sum(counts.values())
    return counts
