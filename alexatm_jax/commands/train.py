"""``alexatm-jax train --gin_file=FILE ... --gin.MACRO=VALUE ...``: T5X-style gin-configured training.

Give one model file (``gin_configs/models/<preset>.gin``) and one run file (``gin_configs/runs/pretrain.gin``,
``finetune.gin``); bind macros (``MODEL_DIR``, ``TRAIN_STEPS``, ``BATCH_SIZE``, ``MIXTURE_OR_TASK_NAME``,
``TASK_FEATURE_LENGTHS``, ``MESH``, ``LOG_EVERY_STEPS``) or any parameter (``--gin.train.z_loss=1e-4``) on the
command line. Values are gin literals; a bare word that is not one (a path) is taken as a string.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import logging
import os
import re
import sys

from alexatm_jax.cli import UserError
from alexatm_jax.data import text_files

# T5X's macro names, the model files' MODEL_NAME and the fine-tuning run's INIT_FROM.
KNOWN_MACROS = ("MODEL_DIR", "TRAIN_STEPS", "BATCH_SIZE", "MIXTURE_OR_TASK_NAME", "TASK_FEATURE_LENGTHS", "MESH",
                "LOG_EVERY_STEPS", "MODEL_NAME", "INIT_FROM")
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
                    if i + 1 >= len(args) or args[i + 1].startswith("--"):
                        self.error(f"{arg} has no value: write --gin.{name}=VALUE")
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
    if os.path.isdir(path):
        raise UserError(f"gin file {path!r} is a directory; give a .gin file, e.g. {path.rstrip('/')}/tiny.gin")
    if os.path.exists(path):
        return os.path.abspath(path)
    for directory in search:
        for candidate in (os.path.join(directory, path),
                          os.path.join(directory, path.split("gin_configs/", 1)[-1])):
            if os.path.isfile(candidate):
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


@contextlib.contextmanager
def _quiet_gin_package_lookup():
    """gin looks for every ``include`` as a Python-package resource before its search path and logs an ERROR
    ("Path not found") for each miss, although the search path then finds the file: drop those lines only."""
    def keep(record: logging.LogRecord) -> bool:
        return not (record.filename == "resource_reader.py" and record.getMessage().startswith("Path not found"))

    root = logging.getLogger()
    root.addFilter(keep)
    try:
        yield
    finally:
        root.removeFilter(keep)


def parse_gin(gin_files: list[str], bindings: list[tuple[str, str]], search_paths: list[str]) -> None:
    """Parses files and bindings into gin's global config, checking macro names first."""
    import importlib.util  # noqa: F401  (gin 0.5's include lookup uses it without importing it)

    import gin

    import alexatm_jax.data.tasks  # noqa: F401  (registers alexatm_mixture, read by data/alexatm_mixture.gin)
    import alexatm_jax.data.teacher_targets  # noqa: F401  (registers teacher_targets_task for run files)
    import alexatm_jax.training.trainer  # noqa: F401  (registers `train`, ModelConfig and the run's configs)

    search = [os.getcwd()] + list(search_paths) + [REPO_GIN_DIR]
    files = [_resolve(f, search) for f in gin_files]
    if not files:
        raise UserError("no --gin_file given: pass a model file and a run file, e.g. "
                        "--gin_file=gin_configs/models/tiny.gin --gin_file=gin_configs/runs/pretrain.gin")
    defined = set(KNOWN_MACROS)
    for path in files:
        with text_files.named_read_errors(path), open(path, encoding="utf-8") as f:
            defined.update(_MACRO_DEF.findall(f.read()))
    lines = []
    for name, value in bindings:
        if not re.fullmatch(r"[A-Za-z_][\w.]*(/[\w.]+)*", name):
            raise UserError(f"--gin.{name}: not a gin name (MACRO or configurable.parameter)")
        if "." not in name and "/" not in name and name not in defined:
            raise UserError(f"unknown macro --gin.{name}; known macros: {sorted(defined)}. "
                            "Bind parameters as --gin.CONFIGURABLE.NAME=VALUE (e.g. --gin.OptimizerConfig."
                            "learning_rate=3e-4, --gin.ModelConfig.dropout_rate=0.0).")
        lines.append(f"{name} = {_literal(value)}")
    for directory in search:
        gin.add_config_file_search_path(directory)
    try:
        with _quiet_gin_package_lookup():
            gin.parse_config_files_and_bindings(files, lines, finalize_config=False)
    except (ValueError, KeyError, NameError, ImportError, SyntaxError, OSError) as error:
        raise UserError(f"bad gin configuration: {error}") from None
    try:
        gin.query_parameter("train.model_config")
    except ValueError:
        raise UserError("no model file among the gin files: add --gin_file=gin_configs/models/<preset>.gin "
                        "(tiny, small, base, large, xl, 20b)") from None


def run(args) -> int:
    import gin

    gin.clear_config()
    try:
        return _parse_and_train(args)
    finally:
        # The bindings belong to this command: a later train() or gin user in the same process (a notebook,
        # a test) must not inherit them.
        gin.clear_config()


def _parse_and_train(args) -> int:
    parse_gin(args.gin_file, args.gin_bindings, args.gin_search_path)
    from alexatm_jax.training import distributed
    distributed.initialize(args.coordinator_address, args.num_processes, args.process_id)
    from alexatm_jax.training import trainer
    try:
        # Configuration problems (ValueErrors the package raises) reach the CLI's error boundary, which words
        # them without gin's "In call to configurable ..." suffix; other exceptions are bugs and keep tracebacks.
        result = trainer.train()
    except trainer.TrainingError as error:
        print(f"alexatm-jax train: {error}", file=sys.stderr)
        return 3
    print(f"alexatm-jax train: {result['status']} at step {result['step']} in {result['model_dir']}",
          file=sys.stderr)
    return 0
