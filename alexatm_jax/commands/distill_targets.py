"""`alexatm-jax distill-targets --teacher DIR --output DIR (--inputs FILE.jsonl | --task NAME)`: sequence-level
distillation data. The teacher decodes a target for every input into a dataset that a student trains on as a
seqio task (``alexatm_jax/data/teacher_targets.py``; train with ``gin_configs/runs/train_on_teacher_targets.gin``).
Re-run the same command to resume an interrupted run."""

from __future__ import annotations

import argparse

from alexatm_jax.commands import arg_types

LENGTH_KEYS = ("inputs", "targets")


def feature_lengths(text: str) -> dict:
    """``inputs=256,targets=64`` (either may be left out) -> ``{"inputs": 256, "targets": 64}``."""
    lengths = {}
    for item in text.split(","):
        key, eq, value = item.strip().partition("=")
        if not eq or key not in LENGTH_KEYS:
            raise argparse.ArgumentTypeError(f"{text!r}: write inputs=N,targets=M (e.g. inputs=256,targets=64)")
        try:
            lengths[key] = int(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r}: {key}={value!r} is not an integer") from None
        if lengths[key] < 4:
            raise argparse.ArgumentTypeError(f"{text!r}: {key} must be at least 4 tokens")
    return lengths


def register(subparsers):
    parser = subparsers.add_parser(
        "distill-targets", help="decode a teacher's targets for inputs into a dataset a student trains on",
        description=__doc__.replace("``", "").replace("`", ""))
    parser.add_argument("--teacher", required=True, help="the teacher: a training run (MODEL_DIR) or model directory")
    parser.add_argument("--output", required=True,
                        help="dataset directory, new or empty (or the same request's, to resume); gs:// works")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--inputs", metavar="FILE.jsonl",
                        help="JSON lines, one {\"inputs\": TEXT, \"id\": optional unique id} per line")
    source.add_argument("--task", metavar="NAME", help="a registered seqio task or mixture whose inputs to use")
    parser.add_argument("--split", default=None, help="--task: the split (default train)")
    parser.add_argument("--num-examples", type=arg_types.positive_int, default=None,
                        help="--task: the first N examples, unshuffled (default 1000)")
    parser.add_argument("--lengths", type=feature_lengths, default=None, metavar="inputs=N,targets=M",
                        help="--task: the feature lengths its examples are made at (default inputs=256,targets=64)")
    parser.add_argument("--max-new-tokens", type=arg_types.positive_int, default=32)
    parser.add_argument("--num-beams", type=arg_types.positive_int, default=1, help="1: greedy")
    parser.add_argument("--batch-size", type=arg_types.positive_int, default=32, help="inputs per generate call")
    parser.add_argument("--shard-size", type=arg_types.positive_int, default=256,
                        help="inputs per part file, the unit of resumption (default 256)")
    parser.add_argument("--mesh", help="device mesh, e.g. data=8 (default: one device)")
    parser.set_defaults(func=run)


def run(args) -> int:
    from alexatm_jax.cli import UserError
    from alexatm_jax.data import teacher_targets

    if args.inputs is not None:
        given = [flag for flag, value in (("--split", args.split), ("--num-examples", args.num_examples),
                                          ("--lengths", args.lengths)) if value is not None]
        if given:
            raise UserError(f"{', '.join(given)} {'is' if len(given) == 1 else 'are'} for --task only, not for "
                            f"--inputs {args.inputs}")
        inputs = teacher_targets.JsonlInputs(args.inputs)
    else:
        inputs = teacher_targets.TaskInputs(args.task, split=args.split or "train",
                                            num_examples=args.num_examples or 1000,
                                            lengths={**teacher_targets.DEFAULT_LENGTHS, **(args.lengths or {})})
    from alexatm_jax import storage
    if not storage.exists(args.teacher):
        raise FileNotFoundError(f"--teacher {args.teacher} does not exist: give the teacher's training run "
                                "(MODEL_DIR) or model directory")
    summary = teacher_targets.generate_targets(
        args.teacher, args.output, inputs=inputs, batch_size=args.batch_size, shard_size=args.shard_size,
        max_new_tokens=args.max_new_tokens, num_beams=args.num_beams, mesh=args.mesh,
        progress=lambda line: print(line, flush=True))
    print(f"{summary['output_dir']}: the teacher's targets for {summary['num_inputs']} inputs in "
          f"{summary['num_parts']} part(s) ({summary['generated_parts']} decoded now, {summary['kept_parts']} kept from "
          f"an earlier run) in {summary['seconds']:.1f}s")
    if summary["truncated"]:
        print(f"note: {summary['truncated']} target(s) reached --max-new-tokens {args.max_new_tokens} without EOS "
              "(cut short; a larger --max-new-tokens, in a new --output directory, keeps them whole)")
    print(f"train a student on it: alexatm-jax train --gin_file=gin_configs/models/MODEL.gin "
          f"--gin_file=gin_configs/runs/train_on_teacher_targets.gin --gin.MODEL_DIR=\"'RUN_DIR'\" "
          f"--gin.TEACHER_TARGETS=\"'{summary['output_dir']}'\"")
    return 0
