"""`alexatm-jax distill-targets --teacher DIR --output DIR (--inputs FILE | --task NAME)`: sequence-level
distillation data, the teacher's decoded targets for inputs, written resumably to a dataset a student trains
on (``alexatm_jax/data/teacher_targets.py``; train with ``gin_configs/runs/train_on_teacher_targets.gin``)."""

from __future__ import annotations

from alexatm_jax.commands import arg_types


def register(subparsers):
    parser = subparsers.add_parser(
        "distill-targets", help="decode a teacher's targets for inputs into a dataset (sequence-level KD)",
        description=__doc__.split("\n\n")[0].replace("`", ""))
    parser.add_argument("--teacher", required=True, help="the teacher's run or model directory")
    parser.add_argument("--output", required=True, help="dataset directory (re-run the same command to resume)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--inputs", help="JSON lines with an 'inputs' text per record (optional 'id')")
    source.add_argument("--task", help="a registered seqio task or mixture whose inputs to use")
    parser.add_argument("--split", default="train", help="--task split (default train)")
    parser.add_argument("--num-examples", type=arg_types.positive_int, default=1000,
                        help="--task: the first N examples (default 1000)")
    parser.add_argument("--inputs-length", type=arg_types.positive_int, default=256,
                        help="--task: inputs feature length (default 256)")
    parser.add_argument("--max-new-tokens", type=arg_types.positive_int, default=32)
    parser.add_argument("--num-beams", type=arg_types.positive_int, default=1)
    parser.add_argument("--batch-size", type=arg_types.positive_int, default=32)
    parser.add_argument("--shard-size", type=arg_types.positive_int, default=256,
                        help="inputs per part file (the unit of resumption)")
    parser.add_argument("--mesh", help="device mesh, e.g. data=8")
    parser.set_defaults(func=run)


def run(args) -> int:
    import alexatm_jax
    from alexatm_jax import storage
    from alexatm_jax.data import teacher_targets

    if not storage.resolve(args.teacher).exists():
        raise FileNotFoundError(f"--teacher {args.teacher} does not exist: give the teacher's run or model directory")
    if args.inputs is not None and not storage.resolve(args.inputs).exists():
        raise FileNotFoundError(f"--inputs {args.inputs} does not exist")
    lm = alexatm_jax.load(args.teacher, mesh=args.mesh)
    if args.inputs is not None:
        ids, rows = teacher_targets.inputs_from_file(args.inputs, lm.tokenize)
        source = f"file {args.inputs}"
    else:
        ids, rows = teacher_targets.inputs_from_task(args.task, args.split, args.num_examples,
                                                     {"inputs": args.inputs_length, "targets": args.max_new_tokens})
        source = f"task {args.task} split {args.split} first {args.num_examples} at {args.inputs_length} tokens"
    teacher_targets.generate_targets(args.teacher, args.output, ids, rows, source=source, lm=lm,
                                     batch_size=args.batch_size, shard_size=args.shard_size,
                                     max_new_tokens=args.max_new_tokens, num_beams=args.num_beams, log=print)
    print(f"wrote the teacher's targets for {len(rows)} inputs to {args.output}")
    return 0
