"""`alexatm-jax demo`: the main job end to end on the bundled data (what `make demo` runs)."""

from __future__ import annotations


def register(subparsers):
    parser = subparsers.add_parser(
        "demo", help="vocabulary -> tiny pretraining -> 0/1-shot evaluation on the bundled data",
        description="Trains a SentencePiece vocabulary on the bundled 12-language corpus, pretrains a tiny "
                    "AlexaTM-style model on the 80/20 denoising + CLM mixture, evaluates it 0- and 1-shot on "
                    "held-out translation and summarization, and writes demo_results.json, the per-task "
                    "results.json files and loss_curve.png. Re-running reuses what is done.")
    parser.add_argument("--output", default="demo_output", help="output directory (default: demo_output)")
    parser.add_argument("--fresh", action="store_true", help="delete the output directory and start over")
    parser.add_argument("--train-steps", type=int, default=None,
                        help="override TRAIN_STEPS of gin_configs/runs/demo.gin")
    parser.add_argument("--eval-limit", type=int, default=None,
                        help="evaluate at most this many held-out examples per task (default: 24 and 40)")
    parser.set_defaults(func=run)


def run(args) -> int:
    from alexatm_jax import demo

    demo.run(args.output, fresh=args.fresh, train_steps=args.train_steps, eval_limit=args.eval_limit)
    return 0
