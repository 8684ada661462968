#!/usr/bin/env python
"""Where a decoding step's time goes, op by op: traces one ``generate`` call of a randomly initialised model at
the decoding benchmark's sizes with the JAX profiler and sums the XLA CPU runtime's events by name.

    PYTHONPATH=. python benchmarks/profile_decoding.py [--size small|tiny] [--num-beams 1] [--top 40]

Same shapes as ``benchmarks/decoding.py`` (batch 8, 128 input tokens, 64 new tokens). Prints the call's time,
one decoder step's time (the 64-token call minus the 1-token call, over 63), then the thunk table of
``profile_train_step.py``: thunks inside the decoding loop show calls = steps (63 per call for 64 tokens,
unless every row ends early); those called once are the encoder, the cross-attention keys/values and the
first step.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))


def main(argv=None):
    from decoding import SIZES, add_shape_arguments

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_shape_arguments(parser)
    parser.add_argument("--num-beams", type=int, default=1)
    parser.add_argument("--top", type=int, default=40)
    args = parser.parse_args(argv)
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_cpu_enable_xprof_traceme=true").strip()
    import jax
    import numpy as np

    from alexatm_jax.api import LanguageModel
    from alexatm_jax.model.config import ModelConfig
    from alexatm_jax.models import EncoderDecoderModel
    from profile_train_step import print_thunk_table, traced_thunk_times

    size = SIZES[args.size]
    config = ModelConfig(vocab_size=size["vocab"], d_model=size["d_model"], encoder_layers=size["layers"],
                         decoder_layers=size["layers"], num_heads=size["heads"], encoder_ffn_dim=size["ffn"],
                         decoder_ffn_dim=size["ffn"], dropout_rate=0.0)
    lm = LanguageModel(config, EncoderDecoderModel(config).init_params(jax.random.PRNGKey(0)))
    tokens = np.random.RandomState(0).randint(3, config.vocab_size, (args.batch, args.input_length))

    def generate(new_tokens):
        return lm.generate(tokens.astype(np.int32), max_new_tokens=new_tokens, num_beams=args.num_beams)

    seconds = {}
    for new_tokens in (args.new_tokens, 1):
        generate(new_tokens), generate(new_tokens)  # compile, then warm
        start = time.perf_counter()
        generate(new_tokens)
        seconds[new_tokens] = time.perf_counter() - start
    step = (seconds[args.new_tokens] - seconds[1]) / (args.new_tokens - 1)
    totals, calls = traced_thunk_times(lambda: generate(args.new_tokens))
    print(f"{args.size}, {args.num_beams} beam(s): {seconds[args.new_tokens] * 1e3:.1f} ms a {args.new_tokens}-token "
          f"call, {seconds[1] * 1e3:.1f} ms a 1-token call, so {step * 1e3:.2f} ms a decoder step; "
          f"{sum(totals.values()):.1f} ms of thunk time summed over threads (traced call)")
    print_thunk_table(totals, calls, args.top)


if __name__ == "__main__":
    main()
