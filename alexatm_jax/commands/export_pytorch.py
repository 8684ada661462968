"""`alexatm-jax export-pytorch SRC DST`: an alexatm_jax model directory or training run -> the AlexaTM PyTorch
(Hugging Face) format that ``AlexaTMSeq2SeqForConditionalGeneration.from_pretrained(DST)`` loads."""

from __future__ import annotations


def register(subparsers):
    from alexatm_jax.checkpoints.export_pytorch import DEFAULT_MAX_SHARD_SIZE, DTYPES, FORMATS

    parser = subparsers.add_parser(
        "export-pytorch", help="export a model or training run to the AlexaTM PyTorch/Hugging Face format",
        description="Export an alexatm_jax model directory or a training MODEL_DIR (its newest checkpoint) in the "
                    "reference's own format: config.json with AlexaTMSeq2SeqConfig's fields, the weights as "
                    "safetensors (or .bin), sharded with an index when larger than --max-shard-size, and the "
                    "SentencePiece model as 20b_tokenizer.model. Scanned and unscanned layouts both export. "
                    "Reading the safetensors with transformers 4.26 needs the safetensors package installed "
                    "beside it; --format bin needs nothing more.")
    parser.add_argument("source", help="a model directory (e.g. from convert-pytorch) or a training MODEL_DIR")
    parser.add_argument("destination", help="the directory to write (must not exist unless --overwrite)")
    parser.add_argument("--dtype", choices=DTYPES, default=None,
                        help="dtype of the exported weights (default: the model's parameter dtype)")
    parser.add_argument("--format", dest="weight_format", choices=FORMATS, default="safetensors",
                        help="weight file format (default safetensors; bin = PyTorch pickles, as the released "
                             "20B checkpoint; needs torch)")
    parser.add_argument("--max-shard-size", default=DEFAULT_MAX_SHARD_SIZE,
                        help=f"largest weight file before sharding, e.g. 2GB, 500MiB (default "
                             f"{DEFAULT_MAX_SHARD_SIZE}); host memory holds the model plus one shard")
    parser.add_argument("--step", type=int, default=None, help="training run checkpoint step (default: newest)")
    parser.add_argument("--mesh", default=None,
                        help="load the parameters sharded over this mesh, e.g. 'fsdp=-1' (default: one device)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing destination")
    parser.set_defaults(func=run)


def run(args) -> int:
    from alexatm_jax.checkpoints.export_pytorch import export

    result = export(args.source, args.destination, dtype=args.dtype, weight_format=args.weight_format,
                    max_shard_size=args.max_shard_size, overwrite=args.overwrite, step=args.step, mesh=args.mesh)
    weights = [f for f in result.files if f != "config.json" and not f.endswith(".model")]
    print(f"wrote {result.path}: {result.num_tensors} tensors, {result.total_bytes / 1e9:.3g} GB in {result.dtype} "
          f"({', '.join(weights) if len(weights) <= 3 else f'{len(weights) - 1} shards + index'})"
          + ("" if result.tokenizer else "; no tokenizer.model in the source, none copied"))
    return 0
