"""`alexatm-jax convert-pytorch SRC DST`: a Hugging Face-format AlexaTM checkpoint -> alexatm_jax model dir."""

from __future__ import annotations

import sys


def register(subparsers):
    parser = subparsers.add_parser(
        "convert-pytorch", help="convert a PyTorch/Hugging Face AlexaTM checkpoint (e.g. the released 20B)",
        description="Convert a Hugging Face-format AlexaTM directory (config.json + sharded pytorch_model-*.bin "
                    "with index, or safetensors) into an alexatm_jax model directory (orbax params, config.json, "
                    "tokenizer.model). Shards are converted one at a time.")
    parser.add_argument("source", help="the Hugging Face checkpoint directory")
    parser.add_argument("destination", help="the model directory to write (must not exist unless --overwrite)")
    parser.add_argument("--scan", dest="scan", action="store_true",
                        help="write the scanned layout (layers stacked on a leading axis; fast compiles)")
    parser.add_argument("--no-scan", dest="scan", action="store_false", help="write one entry per layer (default)")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"),
                        help="parameter dtype to store (default float32)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing destination")
    parser.set_defaults(func=run, scan=False)


def _warn(line: str) -> None:
    print(f"alexatm-jax convert-pytorch: warning: {line}", file=sys.stderr, flush=True)


def run(args) -> int:
    from alexatm_jax.checkpoints.convert_pytorch import convert

    path = convert(args.source, args.destination, scan_layers=args.scan, param_dtype=args.dtype,
                   overwrite=args.overwrite, report=_warn)
    print(f"wrote {path} (scan_layers={args.scan}, dtype={args.dtype}); load it with alexatm_jax.load({str(path)!r})")
    return 0
