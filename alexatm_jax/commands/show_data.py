"""``alexatm-jax show-data``: decoded examples of a seqio mixture/task, and measured objective statistics."""

from __future__ import annotations

from alexatm_jax.commands import arg_types


def register(subparsers):
    p = subparsers.add_parser(
        "show-data", help="print decoded examples of a mixture (and --stats: measured objective statistics)",
        description="Print N examples of a registered seqio mixture or task (inputs, targets, objective, "
                    "language). With --stats, the last line is one JSON object of statistics measured over the "
                    "N examples: fraction of tokens dropped and mean dropped-span length (denoising), CLM prefix "
                    "fractions (min/mean/max), objective rates and language rates.")
    p.add_argument("--mixture", default="alexatm_demo", help="seqio mixture or task name (default alexatm_demo)")
    p.add_argument("--num", type=arg_types.positive_int, default=5, help="number of examples")
    p.add_argument("--stats", action="store_true", help="print statistics as one JSON line at the end")
    p.add_argument("--split", default="train")
    p.add_argument("--seed", type=arg_types.non_negative_int, default=0)
    p.add_argument("--inputs-length", type=arg_types.positive_int, default=512)
    p.add_argument("--targets-length", type=arg_types.positive_int, default=512)
    p.add_argument("--show", type=arg_types.non_negative_int, default=None,
                   help="how many of the N examples to print (default: all, or 3 with --stats)")
    p.add_argument("--gin-file", action="append", default=[], help="gin files (e.g. to change mixture rates)")
    p.add_argument("--gin", action="append", default=[], help="gin bindings, e.g. alexatm_mixture.alpha=0.3")
    p.set_defaults(func=run)


def run(args) -> int:
    import json
    import os

    from alexatm_jax.cli import UserError

    import gin

    from alexatm_jax.data import stats as stats_lib

    from alexatm_jax.data import tasks  # noqa: F401  (registers the bundled mixtures)

    if args.gin_file or args.gin:
        for path in args.gin_file:
            if not os.path.isfile(path):
                raise UserError(f"--gin-file {path!r}: no such file")
        # Not finalized: the rates are read lazily when the dataset is built, in this same process.
        try:
            gin.parse_config_files_and_bindings(args.gin_file, args.gin, finalize_config=False)
        except (ValueError, KeyError, NameError, ImportError, SyntaxError, OSError) as error:
            given = [f"--gin-file {f}" for f in args.gin_file] + [f"--gin {b!r}" for b in args.gin]
            raise UserError(f"bad gin configuration ({', '.join(given)}): {error}") from None
    examples = stats_lib.take_examples(args.mixture, {"inputs": args.inputs_length, "targets": args.targets_length},
                                       args.num, split=args.split, seed=args.seed)
    show = args.show if args.show is not None else (3 if args.stats else args.num)
    vocabulary = tasks.output_features()["targets"].vocabulary
    for i, ex in enumerate(examples[:show]):
        print(f"--- example {i}: objective={stats_lib.objective_name(ex)} lang={stats_lib.lang_name(ex)} "
              f"inputs={len(ex['inputs'])} targets={len(ex['targets'])} tokens")
        print("inputs: ", vocabulary.decode(ex["inputs"].tolist()))
        print("targets:", vocabulary.decode(ex["targets"].tolist()))
    if args.stats:
        print(json.dumps(stats_lib.measure(examples), sort_keys=True))
    return 0
