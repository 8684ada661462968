"""The ``alexatm-jax`` console script: one subcommand per job (describe, convert-pytorch, train, eval...).

Each subcommand lives in ``alexatm_jax/commands/<name>.py`` and exposes ``register(subparsers)``, which adds
its parser and sets ``func`` to a handler taking the parsed arguments and returning an exit code. Heavy
imports (JAX, TensorFlow) happen inside handlers so that ``--help`` is instant.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from alexatm_jax import errors

# Order is the order shown in --help: the data's path from text to metrics.
COMMAND_MODULES = (
    "train_tokenizer",
    "show_data",
    "describe",
    "train",
    "plan",
    "convert_pytorch",
    "export_pytorch",
    "generate",
    "distill_targets",
    "eval",
    "demo",
)


# A problem with the user's input: printed as one clear line, exit code 2, no traceback (see errors.py).
UserError = errors.UserInputError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="alexatm-jax",
        description="AlexaTM-family multilingual encoder-decoder models in JAX: describe, convert, "
                    "train, evaluate few-shot, generate.")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(f"alexatm_jax.commands.{name}").register(subparsers)
    return parser


def main(argv=None) -> int:
    """Runs one subcommand. The user's mistakes (``errors.is_user_error``) are one line on stderr and exit 2;
    anything else is a bug and propagates with its traceback. ``ALEXATM_DEBUG=1``: tracebacks for all."""
    # TensorFlow (the input pipeline's engine) logs its CUDA probing at import, errors included, even on
    # machines that need no GPU for it; keep the terminal for our own progress unless the user asks.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except Exception as error:  # noqa: BLE001  (re-raised unless it is the user's input)
        if not errors.is_user_error(error) or errors.debug_enabled():
            raise
        print(f"alexatm-jax {args.command}: error: {errors.message(error)}", file=sys.stderr)
        print(f"(set {errors.DEBUG_ENV}=1 for a traceback)", file=sys.stderr)
        return 2


if __name__ == "__main__":
    # Run the imported module's main, not this __main__ copy (command modules import alexatm_jax.cli).
    from alexatm_jax.cli import main as package_main
    sys.exit(package_main())
