"""Paths of everything a run reads and writes, local or on object stores (gs://, s3://, az://, hf://) alike.

``resolve`` is the one place a user's path becomes a path: local paths are made absolute, URLs are kept as they
are (``os.path.abspath('gs://b/run')`` would make a local folder named ``gs:``). Paths are ``etils.epath``
paths, which orbax uses too.

Small files are written whole in one step (``atomic_path``, ``write_bytes``, ``write_text``): locally through a
temporary file in the destination's directory and an ``os.replace`` (atomic on POSIX within one file system);
on object stores as one object upload, which is atomic there (readers see the old object or the new one).
Object stores cannot append or rename cheaply (a "rename" is a copy and a delete of every object), so nothing
here relies on either: a file that grows (``metrics.jsonl``) is rewritten whole, and writers that insist on a
local file (TensorBoard's event writer) write into a ``StagedDirectory`` that is uploaded on ``sync()``.

Clients. Four clients touch a remote run directory, and ``configure`` sets each one up once per process:
- etils.epath (every small file, and orbax's metadata): made to use fsspec (gcsfs, s3fs, ...) for URLs instead
  of ``tf.io.gfile``. TensorFlow's GCS client has its endpoint compiled in (it cannot reach an emulator, so it
  could never be tested here) and TensorFlow dropped s3:// in 2.6; fsspec serves every scheme, and real GCS
  uses the same Google default credentials either way. ``EPATH_USE_TF=true`` in the environment overrides it.
- TensorStore (orbax's array data): follows ``TENSORSTORE_GCS_HTTP_URL``.
- gcsfs: follows ``STORAGE_EMULATOR_HOST`` by itself; its directory-listing cache is turned off, as it hides
  files written by other processes (other hosts of a multi-host run).
- google-cloud-storage (orbax asks it whether a bucket has a hierarchical namespace before listing steps):
  follows ``STORAGE_EMULATOR_HOST``, which must then carry its scheme.
With ``STORAGE_EMULATOR_HOST`` set (the convention of Google's clients, e.g. ``http://127.0.0.1:9023``), every
client is pointed at that emulator with a dummy token; without it, real GCS and default credentials are used
unchanged. Variables the user already set are never overwritten (a scheme-less emulator host gets ``http://``).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import sys
import tempfile
from typing import Iterator, Mapping

from etils import epath

EMULATOR_VARIABLE = "STORAGE_EMULATOR_HOST"
# The URL schemes etils.epath understands; any other ``scheme://`` would silently become a local folder.
SCHEMES = ("gs", "s3", "az", "hf")
_URL = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*)://")


# ---- Client set-up. ----
def client_settings(environ: Mapping[str, str]) -> dict[str, str]:
    """The environment variables ``configure`` sets, given ``environ``: only those not already set, except that
    a scheme-less ``STORAGE_EMULATOR_HOST`` (``127.0.0.1:9023``, which gcsfs accepts) gets its ``http://``
    (google-cloud-storage, which orbax asks about the bucket, needs the scheme)."""
    settings = {"EPATH_USE_TF": "false"}
    host = environ.get(EMULATOR_VARIABLE, "")
    if host:
        url = host if "://" in host else f"http://{host}"
        settings.update({
            "TENSORSTORE_GCS_HTTP_URL": url,
            # TensorStore (and TF) send this bearer token instead of looking for credentials; the emulator
            # accepts any. Without it TensorStore logs a credentials error before falling back to anonymous.
            "GOOGLE_AUTH_TOKEN_FOR_TESTING": "emulator",
            # gcsfs's default GCS class asks Google's storage-control API (not emulated) for the bucket type on
            # every call; the plain class is what an emulator speaks.
            "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
        })
    changes = {name: value for name, value in settings.items() if name not in environ}
    if host and host != url:
        changes[EMULATOR_VARIABLE] = url
    return changes


def configure() -> None:
    """Points the storage clients at the emulator when ``STORAGE_EMULATOR_HOST`` is set (see the module
    docstring). Runs at import; call it again after setting the variable in a running process."""
    os.environ.update(client_settings(os.environ))
    # gcsfs caches directory listings per process: another host's (or process's) new files would stay
    # invisible (a checkpoint step, a data-state file). Always list afresh; listings here are small.
    import fsspec.config
    for protocol in ("gs", "gcs"):
        fsspec.config.conf.setdefault(protocol, {}).setdefault("use_listings_cache", False)
    if os.environ.get(EMULATOR_VARIABLE) and "gcsfs" in sys.modules:
        # gcsfs read GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT when it was imported: register its plain class.
        import fsspec
        import gcsfs.core
        fsspec.register_implementation("gs", gcsfs.core.GCSFileSystem, clobber=True)
        fsspec.register_implementation("gcs", gcsfs.core.GCSFileSystem, clobber=True)


configure()


# ---- Paths. ----
def is_remote(path) -> bool:
    """True for ``scheme://...`` paths (object stores), False for local paths."""
    return bool(_URL.match(os.fspath(path)))


def resolve(path) -> epath.Path:
    """A user's path -> an absolute ``epath.Path``: ``~`` expanded, relative paths made absolute, URLs kept as
    they are (``file://`` URLs become local paths). ValueError for a scheme epath cannot write."""
    text = os.fspath(path)
    match = _URL.match(text)
    if match is None:
        return epath.Path(os.path.abspath(os.path.expanduser(text)))
    scheme = match.group(1).lower()
    if scheme == "file":
        return epath.Path(os.path.abspath(text[len("file://"):]))
    if scheme not in SCHEMES:
        raise ValueError(f"{text!r}: {scheme}:// paths are not supported; use a local path or one of "
                         + ", ".join(f"{s}://" for s in SCHEMES))
    return epath.Path(text)


def exists(path) -> bool:
    return resolve(path).exists()


# ---- Whole-file writes. ----
@contextlib.contextmanager
def atomic_path(path) -> Iterator[str]:
    """Yields a local temporary path; whatever is written there becomes ``path`` on success, in one step (see
    the module docstring), and nothing is left behind on error. The temporary name keeps the destination's
    extension (some writers, e.g. matplotlib, go by it)."""
    target = resolve(path)
    remote = is_remote(target)
    base, extension = os.path.splitext(target.name)
    if remote:
        directory = None  # the system's temporary directory
    else:
        directory = os.fspath(target.parent)
        os.makedirs(directory, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{base}.", suffix=f".tmp{extension}", dir=directory)
    os.close(handle)
    try:
        yield temporary
        if remote:
            with open(temporary, "rb") as source:
                target.write_bytes(source.read())
        else:
            os.replace(temporary, target)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)


def write_bytes(path, data: bytes) -> None:
    """Writes ``data`` so that no reader (and no crash) ever sees a partial file."""
    target = resolve(path)
    if is_remote(target):
        target.write_bytes(data)  # one object upload: atomic on object stores
        return
    with atomic_path(target) as temporary, open(temporary, "wb") as handle:
        handle.write(data)


def write_text(path, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def copy_tree(source, destination) -> list[str]:
    """Copies every file under the local directory ``source`` to ``destination`` (local or remote), file by
    file (each one whole, as ``write_bytes``); returns the relative paths copied. For publishing a directory
    built locally (an exported model) to an object store, where a directory cannot be renamed into place."""
    source = os.fspath(source)
    if not os.path.isdir(source):
        raise FileNotFoundError(f"{source} is not a local directory")
    target = resolve(destination)
    copied = []
    for folder, _, names in os.walk(source):
        for name in sorted(names):
            relative = os.path.relpath(os.path.join(folder, name), source)
            with open(os.path.join(folder, name), "rb") as handle:
                write_bytes(target / relative.replace(os.sep, "/"), handle.read())
            copied.append(relative)
    return copied


# ---- Writers that need a local directory. ----
class StagedDirectory:
    """A local directory for writers that can only write local files (TensorBoard's event writer writes through
    TensorFlow's own file system, which cannot be pointed at fsspec or an emulator). ``local`` is where they
    write; ``sync()`` uploads every file that changed since the last sync to ``destination``, whole (as
    TensorFlow's own GCS writer does on flush); ``close()`` syncs and removes the local copy.

    For a local ``destination``, ``local`` is the destination itself and ``sync`` does nothing. Hand-written
    because fsspec's write-back caches upload only when a file is closed, and an event file stays open."""

    def __init__(self, destination):
        self.destination = resolve(destination)
        self.remote = is_remote(self.destination)
        self.local = tempfile.mkdtemp(prefix="alexatm-staged-") if self.remote else os.fspath(self.destination)
        if not self.remote:
            os.makedirs(self.local, exist_ok=True)
        self._uploaded: dict[str, tuple[int, int]] = {}  # relative path -> (size, mtime_ns) last uploaded

    def sync(self) -> list[str]:
        """Uploads new and changed files; returns their paths relative to ``local``."""
        if not self.remote or not os.path.isdir(self.local):
            return []
        changed = []
        for folder, _, names in os.walk(self.local):
            for name in sorted(names):
                local = os.path.join(folder, name)
                relative = os.path.relpath(local, self.local)
                stat = os.stat(local)
                signature = (stat.st_size, stat.st_mtime_ns)
                if self._uploaded.get(relative) == signature:
                    continue
                with open(local, "rb") as handle:
                    (self.destination / relative.replace(os.sep, "/")).write_bytes(handle.read())
                self._uploaded[relative] = signature
                changed.append(relative)
        return changed

    def close(self) -> None:
        try:
            self.sync()
        finally:
            if self.remote:
                shutil.rmtree(self.local, ignore_errors=True)

    def __enter__(self) -> "StagedDirectory":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
