"""``alexatm-jax train --gin_file=FILE ... --gin.MACRO=VALUE ...``: T5X-style gin-configured training.

Give one model file (``gin_configs/models/<preset>.gin``) and one run file (``gin_configs/runs/pretrain.gin``,
``finetune.gin``); bind macros (``MODEL_DIR``, ``TRAIN_STEPS``, ``BATCH_SIZE``, ``MIXTURE_OR_TASK_NAME``,
``TASK_FEATURE_LENGTHS``, ``MESH``, ``LOG_EVERY_STEPS``) or any parameter (``--gin.train.z_loss=1e-4``) on the
command line. Values are gin literals; a bare word that is not one (a path) is taken as a string.
"""

from __future__ import annotations

import argparse
import ast
import os
import re
import sys

from alexatm_jax.cli import UserError

# The macros of the issue (T5X names) and the model files' MODEL_PRESET.
KNOWN_MACROS = ("MODEL_DIR", "TRAIN_STEPS", "BATCH_SIZE", "MIXTURE_OR_TASK_NAME", "TASK_FEATURE_LENGTHS", "MESH",
                "LOG_EVERY_STEPS", "MODEL_PRESET")
_MACRO_DEF = re.compile(r"^([A-Z][A-Z0-9_]*)\s*=", re.MULTILINE)
_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _gin_dir() -> str:
    """Installed packages carry the gin files inside (alexatm_jax/gin_configs, see setup.py); a source
    checkout has them at the top of the repository."""
    installed = os.path.join(_PACKAGE_DIR, "gin_configs")
    return installed if os.path.isdir(installed) else os.path.join(os.path.dirname(_PACKAGE_DIR), "gin_configs")


REPO_GIN_DIR = _gin_dir()


class _GinFlagsParser(argparse.ArgumentParser):
    """Collects T5X-style ``--gin.NAME=VALUE`` (or ``--gin.NAME VALUE``) flags into ``args.gin_bindings``;
    argparse itself cannot declare an open family of option names."""

    def parse_known_args(self, args=None, namespace=None):
        args = list(sys.argv[1:] if args is None else args)
        rest, bindings, i = [], [], 0
        while i < len(args):
            arg = args[i]
            if arg.startswith("--gin."):
                name, eq, value = arg[len("--gin."):].partition("=")
                if not eq:
                    if i + 1 >= len(args):
                        raise UserError(f"{arg} has no value: write --gin.{name}=VALUE")
                    i, value = i + 1, args[i + 1]
                bindings.append((name, value))
            else:
                rest.append(arg)
            i += 1
        namespace, extras = super().parse_known_args(rest, namespace)
        namespace.gin_bindings = getattr(namespace, "gin_bindings", []) + bindings
        return namespace, extras


def add_gin_arguments(parser: argparse.ArgumentParser):
    parser.__class__ = _GinFlagsParser  # see _GinFlagsParser: the subparser must accept --gin.X flags
    parser.add_argument("--gin_file", action="append", default=[], metavar="FILE",
                        help="gin file (repeatable); relative paths are also looked up under the repository's "
                             "gin_configs/ and --gin_search_path")
    parser.add_argument("--gin_search_path", action="append", default=[], metavar="DIR",
                        help="extra directory for gin files and their includes")


def register(subparsers):
    parser = subparsers.add_parser(
        "train", help="train or resume a model (gin-configured, sharded over a device mesh)",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Example: alexatm-jax train --gin_file=gin_configs/models/tiny.gin "
               "--gin_file=gin_configs/runs/pretrain.gin --gin.MODEL_DIR=\"'/tmp/run'\" --gin.TRAIN_STEPS=300 "
               "--gin.MESH=\"'data=-1'\"\n(--gin.NAME=VALUE binds a macro or a parameter; repeatable.)")
    add_gin_arguments(parser)
    parser.add_argument("--coordinator_address", default=None,
                        help="multi-process: HOST:PORT of process 0 (else JAX_COORDINATOR_ADDRESS or the cluster)")
    parser.add_argument("--num_processes", type=int, default=None)
    parser.add_argument("--process_id", type=int, default=None)
    parser.set_defaults(func=run)


def _resolve(path: str, search: list[str]) -> str:
    if os.path.exists(path):
        return os.path.abspath(path)
    for directory in search:
        for candidate in (os.path.join(directory, path),
                          os.path.join(directory, path.split("gin_configs/", 1)[-1])):
            if os.path.exists(candidate):
                return os.path.abspath(candidate)
    raise UserError(f"gin file {path!r} not found (looked in the current directory and {search}); "
                    f"the repository's files are under {REPO_GIN_DIR}")


def _literal(value: str) -> str:
    """A gin value: kept if it parses as a Python/gin literal or a reference, else quoted as a string."""
    stripped = value.strip()
    if stripped.startswith(("@", "%")) or stripped in ("True", "False", "None"):
        return stripped
    try:
        ast.literal_eval(stripped)
        return stripped
    except (ValueError, SyntaxError):
        return repr(stripped)


def parse_gin(gin_files: list[str], bindings: list[tuple[str, str]], search_paths: list[str]) -> None:
    """Parses files and bindings into gin's global config, checking macro names first."""
    import importlib.util  # noqa: F401  (gin 0.5's include lookup uses it without importing it)

    import gin

    import alexatm_jax.training.trainer  # noqa: F401  (registers the `train` configurable)

    search = [os.getcwd()] + list(search_paths) + [REPO_GIN_DIR]
    files = [_resolve(f, search) for f in gin_files]
    if not files:
        raise UserError("no --gin_file given: pass a model file and a run file, e.g. "
                        "--gin_file=gin_configs/models/tiny.gin --gin_file=gin_configs/runs/pretrain.gin")
    defined = set(KNOWN_MACROS)
    for path in files:
        defined.update(_MACRO_DEF.findall(open(path, encoding="utf-8").read()))
    lines = []
    for name, value in bindings:
        if not re.fullmatch(r"[A-Za-z_][\w.]*(/[\w.]+)*", name):
            raise UserError(f"--gin.{name}: not a gin name (MACRO or configurable.parameter)")
        if "." not in name and "/" not in name and name not in defined:
            raise UserError(f"unknown macro --gin.{name}; known macros: {sorted(defined)}. "
                            "Bind parameters as --gin.train.NAME=VALUE.")
        lines.append(f"{name} = {_literal(value)}")
    for directory in search:
        gin.add_config_file_search_path(directory)
    try:
        gin.parse_config_files_and_bindings(files, lines, finalize_config=False)
    except (ValueError, KeyError, NameError, ImportError, SyntaxError) as error:
        raise UserError(f"bad gin configuration: {error}") from None
    if "MODEL_PRESET" not in _bound_macros(gin):
        raise UserError("no model file among the gin files: add --gin_file=gin_configs/models/<preset>.gin "
                        "(tiny, small, base, large, xl, 20b)")


def _bound_macros(gin) -> set:
    text = gin.config_str()
    return set(_MACRO_DEF.findall(text)) | {m.group(1) for m in re.finditer(r"^([A-Z][A-Z0-9_]*)/macro\.value",
                                                                             text, re.MULTILINE)}


def run(args) -> int:
    import gin

    gin.clear_config()
    parse_gin(args.gin_file, args.gin_bindings, args.gin_search_path)
    from alexatm_jax.training import distributed
    distributed.initialize(args.coordinator_address, args.num_processes, args.process_id)
    from alexatm_jax.training import trainer
    try:
        result = trainer.train()
    except ValueError as error:  # configuration problems found before compiling
        # gin appends "In call to configurable ..." to the message: not useful to a user.
        raise UserError(str(error).split("\n  In call to configurable")[0]) from None
    except trainer.TrainingError as error:
        print(f"alexatm-jax train: {error}", file=sys.stderr)
        return 3
    print(f"alexatm-jax train: {result['status']} at step {result['step']} in {result['model_dir']}",
          file=sys.stderr)
    return 0
