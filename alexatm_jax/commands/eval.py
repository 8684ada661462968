"""`alexatm-jax eval --checkpoint DIR --task NAME --shots 0,1,5 --output DIR`: few-shot evaluation of a task card."""

from __future__ import annotations

from alexatm_jax.commands import arg_types


def register(subparsers):
    parser = subparsers.add_parser(
        "eval", help="few-shot evaluation of a checkpoint on a task card (tasks/*.yaml)",
        description="Renders the task card's prompts with 0 or more shots, decodes them (or scores every "
                    "choice, for rank classification), post-processes and scores the outputs. Writes "
                    "OUTPUT/results.json (checkpoint, card, shots, seed, metric signatures, scores, and every "
                    "example's prompt, prediction and reference) and prints a markdown table.")
    parser.add_argument("--checkpoint", required=True, help="model directory (exported or a training MODEL_DIR)")
    parser.add_argument("--task", required=True, help="task card name in tasks/ (e.g. udhr_translation) or a "
                                                      "path to a .yaml card; an unknown name lists them all")
    parser.add_argument("--shots", default="0", help="comma-separated shot counts, e.g. 0,1,5 (default 0)")
    parser.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                        help="set a card param, e.g. --param src=de,tgt=ja (repeatable)")
    parser.add_argument("--data", help="read this data instead of the card's default source: a JSONL file "
                                       "with the card's fields, or a folder in the card's format (Flores-101, "
                                       "XSum, MLSum)")
    parser.add_argument("--shots-data", help="JSONL file to draw shots from (when --data has no splits)")
    parser.add_argument("--limit", type=arg_types.positive_int, help="evaluate only the first N examples")
    parser.add_argument("--seed", type=arg_types.non_negative_int,
                        help="seed for random shot selection and sampling (default: card's)")
    parser.add_argument("--batch-size", type=arg_types.positive_int, default=8)
    parser.add_argument("--max-new-tokens", type=arg_types.positive_int,
                        help="override the card's decoding.max_new_tokens")
    parser.add_argument("--num-beams", type=arg_types.positive_int, help="override the card's decoding.num_beams")
    parser.add_argument("--mesh", help="device mesh, e.g. data=8 (default: no sharding)")
    parser.add_argument("--spm", help="SentencePiece model for spBLEU when the official Flores-101 one is "
                                      "absent (default: the checkpoint's tokenizer)")
    parser.add_argument("--langs", metavar="all|LANG,...",
                        help="run the task in every language ('all') or these (en,de,ja): sets the card's "
                             "lang/locale param in turn and prints one table with standard errors and the "
                             "majority-class baseline (alexatm_jax/evaluation/languages.py)")
    parser.add_argument("--output", required=True, help="directory for results.json")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def _check_output(output: str) -> None:
    """A local --output must be (or become) a directory: refused before the model is loaded, not after."""
    import os

    from alexatm_jax import storage
    from alexatm_jax.cli import UserError

    if storage.is_remote(output):
        return
    folder = os.path.abspath(output)
    while not os.path.exists(folder) and os.path.dirname(folder) != folder:
        folder = os.path.dirname(folder)
    if not os.path.isdir(folder):
        raise UserError(f"--output {output}: {folder} is a file, not a directory; choose another --output")
    if not os.access(folder, os.W_OK):
        raise UserError(f"--output {output}: {folder} is not writable; choose another --output")


def run(args) -> int:
    import functools

    from alexatm_jax.cli import UserError
    from alexatm_jax.evaluation import cards, runner

    try:
        shots = [int(s) for s in args.shots.split(",") if s.strip()]
    except ValueError:
        raise UserError(f"--shots {args.shots!r} is not a comma-separated list of integers (e.g. 0,1,5)") from None
    if not shots or min(shots) < 0:
        raise UserError(f"--shots {args.shots!r} must list shot counts >= 0 (e.g. 0,1,5)")
    try:
        card = cards.load_card(args.task, cards.parse_params(args.param))
        if args.max_new_tokens is not None:
            card.decoding["max_new_tokens"] = args.max_new_tokens
        if args.num_beams is not None:
            card.decoding["num_beams"] = args.num_beams
    except cards.CardError as error:
        raise UserError(str(error)) from None

    langs = None
    if args.langs is not None:  # per-language evaluation: languages checked before the model is loaded
        from alexatm_jax.evaluation import languages
        try:
            langs = languages.resolve_languages(card, args.langs, args.data)
        except cards.CardError as error:
            raise UserError(str(error)) from None
    _check_output(args.output)  # before the (slow) evaluation
    if args.spm:
        from alexatm_jax.data import vocab
        vocab.load_sentencepiece(args.spm)  # a file that is not a SentencePiece model is named now, not at scoring
    import alexatm_jax
    lm = alexatm_jax.load(args.checkpoint, mesh=args.mesh)
    try:
        evaluate = runner.evaluate if langs is None else functools.partial(languages.evaluate_languages, langs=langs)
        results = evaluate(lm, card, shots, data=args.data, shots_data=args.shots_data, limit=args.limit,
                           seed=args.seed, batch_size=args.batch_size, progress=not args.no_progress,
                           spm_path=args.spm, checkpoint=args.checkpoint)
    except cards.CardError as error:
        raise UserError(str(error)) from None
    path = runner.write_results(results, args.output)
    print(runner.markdown_table(results) if langs is None else languages.markdown_table(results))
    print(f"\nwrote {path}")
    return 0
