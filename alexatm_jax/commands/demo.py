"""`alexatm-jax demo`: the main job end to end on the bundled data (what `make demo` runs)."""

from __future__ import annotations


def register(subparsers):
    parser = subparsers.add_parser(
        "demo", help="the teacher -> student pipeline on the bundled data, end to end",
        description="Trains a SentencePiece vocabulary on the bundled 12-language corpus, pretrains a 4+4-layer "
                    "teacher on the 80/20 denoising + CLM mixture, continues it on in-domain text (stage 2), "
                    "distills it into a 2+2-layer student started from its layers, fine-tunes the student (and a "
                    "teacher-less baseline) on English Debian section labels, evaluates both zero-shot in 8 "
                    "languages and the teacher 0/1-shot on held-out translation and summarization, and writes "
                    "demo_results.json (with a `models` map of role -> directory), results files and PNGs. "
                    "Re-running reuses what is done.")
    parser.add_argument("--output", default="demo_output", help="output directory (default: demo_output)")
    parser.add_argument("--fresh", action="store_true", help="delete the output directory and start over")
    parser.add_argument("--train-steps", type=int, default=None,
                        help="override TRAIN_STEPS of every stage (a quick smoke run)")
    parser.add_argument("--eval-limit", type=int, default=None,
                        help="evaluate at most this many held-out examples per task and language "
                             "(default: all 200 per language for the sections, 24 and 40 for few-shot)")
    parser.set_defaults(func=run)


def run(args) -> int:
    from alexatm_jax import demo

    demo.run(args.output, fresh=args.fresh, train_steps=args.train_steps, eval_limit=args.eval_limit)
    return 0
