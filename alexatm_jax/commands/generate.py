"""`alexatm-jax generate --checkpoint DIR --prompt TEXT`: text in, text out, with the checkpoint's tokenizer."""

from __future__ import annotations

from alexatm_jax.commands import arg_types


def register(subparsers):
    parser = subparsers.add_parser(
        "generate", help="generate text from prompts with a checkpoint (greedy, beam search or sampling)",
        description="Tokenises each --prompt with the checkpoint's SentencePiece model (EOS appended, as in "
                    "training), decodes with the KV cache, and prints one output per line.")
    parser.add_argument("--checkpoint", required=True, help="model directory (exported or a training MODEL_DIR)")
    parser.add_argument("--prompt", action="append", required=True,
                        help="input text (repeat for a batch); start it with '[CLM] ' for CLM mode")
    parser.add_argument("--max-new-tokens", type=arg_types.positive_int, default=64)
    parser.add_argument("--num-beams", type=arg_types.positive_int, default=1)
    parser.add_argument("--length-penalty", type=arg_types.finite_float, default=0.6,
                        help="T5X brevity alpha (beam search)")
    parser.add_argument("--sample", action="store_true", help="sample instead of greedy")
    parser.add_argument("--temperature", type=arg_types.positive_float, default=1.0)
    parser.add_argument("--top-k", type=arg_types.non_negative_int, default=0, help="0: no top-k cut")
    parser.add_argument("--top-p", type=arg_types.open_unit_interval, default=1.0)
    parser.add_argument("--seed", type=arg_types.non_negative_int, default=0)
    parser.add_argument("--stop", action="append", default=[], type=arg_types.non_empty_string,
                        help="stop string: output is cut at it (repeatable)")
    parser.add_argument("--mesh", help="device mesh, e.g. data=8")
    parser.set_defaults(func=run)


def run(args) -> int:
    from alexatm_jax.cli import UserError

    if any(not p.strip() for p in args.prompt):
        raise UserError("--prompt is empty; give some text")
    import jax
    import numpy as np
    import alexatm_jax

    lm = alexatm_jax.load(args.checkpoint, mesh=args.mesh)
    if lm.tokenizer is None:
        raise UserError(f"{args.checkpoint} has no tokenizer.model, so text cannot be tokenised")
    sp = lm.tokenizer
    rows = lm.tokenize(args.prompt)  # the same tokenisation as the evaluation runner and the README
    stops = [sp.encode(s) for s in args.stop if sp.encode(s)]
    options = dict(num_beams=args.num_beams, length_penalty=args.length_penalty, stop_sequences=stops or None)
    if args.sample:
        options.update(do_sample=True, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                       rng=jax.random.PRNGKey(args.seed))
    out = lm.generate(rows, max_new_tokens=args.max_new_tokens, **options)  # its checks name the bad value
    for text in lm.detokenize(np.asarray(out)):
        for stop in args.stop:
            if stop in text:
                text = text[:text.index(stop)]
        print(text.strip())
    return 0
