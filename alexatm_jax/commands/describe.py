"""`alexatm-jax describe --model NAME`: architecture and parameter counts, computed without allocating."""

from __future__ import annotations

import json


def register(subparsers):
    parser = subparsers.add_parser(
        "describe", help="print a model preset's architecture and parameter counts per component",
        description="Parameter counts per component from abstract shapes (jax.eval_shape): nothing is "
                    "allocated, so even the 20b preset is instant. The last line is JSON.")
    parser.add_argument("--model", default="tiny", help="preset name (tiny, small, base, large, xl, 20b) or a "
                                                        "model directory with config.json")
    parser.set_defaults(func=run)


def run(args) -> int:
    import os
    from alexatm_jax.model.config import get_preset
    from alexatm_jax.model.summary import parameter_counts
    from alexatm_jax.checkpoints.model_dir import read_config

    if os.path.exists(args.model) and not os.path.isdir(args.model):
        raise ValueError(f"--model {args.model} is a file; give a preset name or a model directory "
                         f"(the folder holding config.json)")
    config = read_config(args.model) if os.path.isdir(args.model) else get_preset(args.model)
    counts = parameter_counts(config)
    print(f"model {args.model}: d_model={config.d_model} heads={config.num_heads} "
          f"layers={config.encoder_layers} encoder + {config.decoder_layers} decoder, "
          f"ffn={config.encoder_ffn_dim}/{config.decoder_ffn_dim} ({config.ffn_type}), vocab={config.vocab_size}, "
          f"positions={config.max_position_embeddings}, norm={config.norm_type}, "
          f"share_embeddings={config.share_embeddings}, tie_word_embeddings={config.tie_word_embeddings}")
    width = max(len(name) for name in counts)
    for name, count in counts.items():
        print(f"  {name:<{width}}  {count:>16,}  ({count / 1e9:.3f}B)")
    print(json.dumps({"model": args.model, "parameters": counts}))
    return 0
