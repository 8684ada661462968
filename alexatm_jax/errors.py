"""The error boundary: which failures are the user's input, and how the CLI words them.

``UserInputError`` marks a problem with what the user gave (a file, a flag, a gin binding, a mesh, a checkpoint,
data, token ids). It is a ``ValueError``, so ``except ValueError`` callers of the Python API keep working.

The CLI (``alexatm_jax.cli.main``) prints a user error as one line, ``alexatm-jax CMD: error: MESSAGE``, and
exits with 2; everything else is a bug and keeps its traceback. A user error is (see ``is_user_error``):

* a ``UserInputError`` (``alexatm_jax.cli.UserError`` is the same class);
* a ``ValueError`` raised by a ``raise`` statement in this package's own code: the package words its checks of
  the user's input (configs, checkpoints, meshes, data files, token ids) as ValueErrors, and one that it raises
  on purpose carries a message written for the user. A ``ValueError`` raised anywhere else (inside numpy, JAX,
  a library, an implicit ``int('x')``) was not anticipated, so it is treated as a bug;
* an ``OSError`` about a path the user named (missing, not a directory, a directory, no permission, read-only,
  disk full, name too long...), worded from its errno and file name;
* an ``ImportError`` from fsspec's registry: a ``s3://`` or ``az://`` path whose client (s3fs, adlfs) is an
  optional package the user has not installed. Worded with the path and the ``pip install`` that fixes it.

``ALEXATM_DEBUG=1`` re-raises user errors too, with their tracebacks.
"""

from __future__ import annotations

import dis
import errno
import linecache
import os
import re
from typing import Optional

DEBUG_ENV = "ALEXATM_DEBUG"
_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep


class UserInputError(ValueError):
    """A problem with the user's input: the message names the value or the path, and the fix."""


# errno -> what to do about it. OSErrors with other errnos (EIO, EBADF, ENOMEM...) keep their traceback.
_OS_HINTS = {
    errno.ENOENT: "check the path",
    errno.EEXIST: "remove it or choose another path",
    errno.EACCES: "check its permissions or choose another path",
    errno.EPERM: "check its permissions or choose another path",
    errno.EROFS: "choose another path",
    errno.EISDIR: "give a file, not a directory",
    errno.ENOTDIR: "a part of the path is a file: choose another path",
    errno.ENOTEMPTY: "empty it or choose another path",
    errno.ENOSPC: "free some space or choose another path",
    errno.ENAMETOOLONG: "choose a shorter path",
    errno.ELOOP: "fix the symbolic links or choose another path",
}
if hasattr(errno, "EDQUOT"):
    _OS_HINTS[errno.EDQUOT] = "free some space or choose another path"
# Raised by this package (or a library) without an errno, e.g. FileNotFoundError("No model directory at ...").
_PATH_ERRORS = (FileNotFoundError, FileExistsError, PermissionError, IsADirectoryError, NotADirectoryError)


def original(error: BaseException) -> BaseException:
    """The exception gin re-raised as a proxy (gin appends "In call to configurable ..." to errors raised under
    a configurable by raising an instance of a stand-in subclass whose OSError fields are empty), else
    ``error`` itself."""
    text = getattr(type(error).__str__, "__qualname__", "")
    if text.startswith("augment_exception_message_and_reraise."):
        import inspect
        inner = inspect.getclosurevars(type(error).__str__).nonlocals.get("exception")
        if isinstance(inner, BaseException):
            return original(inner)
    return error


def _innermost_frame(error: BaseException):
    tb = error.__traceback__
    if tb is None:
        return None
    while tb.tb_next is not None:
        tb = tb.tb_next
    return tb


def raised_on_purpose(error: BaseException) -> bool:
    """True when ``error`` was raised by a ``raise`` statement in this package (not inside a library, and not
    by an implicit conversion such as ``int('x')`` in our code). Read from the bytecode of the innermost
    frame, so it holds even when the source file has changed since it was imported."""
    tb = _innermost_frame(error)
    if tb is None:
        return False
    code = tb.tb_frame.f_code
    if not os.path.abspath(code.co_filename).startswith(_PACKAGE_DIR):
        return False
    for instruction in dis.get_instructions(code):
        if instruction.offset == tb.tb_lasti:
            return instruction.opname == "RAISE_VARARGS"
    return linecache.getline(code.co_filename, tb.tb_lineno).lstrip().startswith("raise")


def _missing_storage_client(error: BaseException) -> Optional[tuple[str, str]]:
    """(protocol, path) when ``error`` is fsspec's ImportError for an uninstalled filesystem client (s3fs for
    s3://, adlfs for az://), else None. fsspec raises it on first use of the path, deep inside etils.epath, with
    the protocol but not the path: the path is read from the frames on the way there."""
    if not isinstance(error, ImportError):
        return None
    tb, frames = error.__traceback__, []
    while tb is not None:
        frames.append(tb.tb_frame)
        tb = tb.tb_next
    if not frames or not frames[-1].f_code.co_filename.replace(os.sep, "/").endswith("fsspec/registry.py"):
        return None
    protocol = frames[-1].f_locals.get("protocol")
    if not isinstance(protocol, str):
        return None
    for frame in reversed(frames):
        for value in frame.f_locals.values():
            if isinstance(value, (str, os.PathLike)):
                text = os.fspath(value)
                if isinstance(text, str) and text.startswith(f"{protocol}://"):
                    return protocol, text
    return protocol, f"{protocol}://..."


def is_user_error(error: BaseException) -> bool:
    """Whether the CLI reports ``error`` as the user's input (one line, exit 2) rather than as a bug."""
    error = original(error)
    if isinstance(error, UserInputError):
        return True
    if isinstance(error, OSError):
        return error.errno in _OS_HINTS or (error.errno is None and isinstance(error, _PATH_ERRORS))
    if isinstance(error, ValueError):
        return raised_on_purpose(error)
    return _missing_storage_client(error) is not None


def _without_gin_context(text: str) -> str:
    # gin appends "\n  In call to configurable 'NAME' (...)" to errors raised under a configurable: noise here.
    return text.split("\n  In call to configurable")[0]


def message(error: BaseException) -> str:
    """The one-line (or few-line) wording of a user error."""
    error = original(error)
    missing = _missing_storage_client(error)
    if missing is not None:
        protocol, path = missing
        # fsspec's known clients word it "Install s3fs to access S3"; others carry the module's name.
        named = re.match(r"Install (\S+)", str(error))
        package = named.group(1) if named else error.name
        fix = f"pip install {package}" if package else "install fsspec's client for that protocol"
        return f"{path}: {protocol}:// paths need a client that is not installed ({error}); {fix}"
    if isinstance(error, OSError) and error.errno in _OS_HINTS and error.filename is not None:
        what = str(error.filename)
        if getattr(error, "filename2", None) is not None:
            what += f" -> {error.filename2}"
        return f"{what}: {(error.strerror or '').lower() or type(error).__name__}; {_OS_HINTS[error.errno]}"
    text = _without_gin_context(str(error)).strip()
    if isinstance(error, OSError) and text.startswith("[Errno"):
        text = text.split("] ", 1)[-1]
    return text or type(error).__name__


def debug_enabled(environ: Optional[dict] = None) -> bool:
    value = (os.environ if environ is None else environ).get(DEBUG_ENV, "")
    return value.strip().lower() not in ("", "0", "false", "no")
