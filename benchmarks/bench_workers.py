"""A long-lived benchmark process (our side or the reference's) driven one JSON line at a time: the driver
writes a command line to its stdin, the worker answers with one JSON object on stdout. Set up and warmed up
once, workers can then be asked in turn, so interleaved measurements of several implementations see the same
machine load (benchmarks/train_step.py, benchmarks/decoding.py). Also: writing a run's results."""

import json
import os
import subprocess
from pathlib import Path


class Worker:
    def __init__(self, name, argv, env):
        self.name = name
        self.process = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        self.info = self._read()  # the worker's "ready" line

    def _read(self):
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"worker {self.name} exited (code {self.process.wait()})")
        return json.loads(line)

    def request(self, *words):
        """Sends ``words`` as one command line; returns the worker's JSON answer."""
        self.process.stdin.write(" ".join(str(w) for w in words) + "\n")
        self.process.stdin.flush()
        return self._read()

    def close(self):
        self.process.stdin.write("quit\n")
        self.process.stdin.flush()
        self.process.wait()


def write_results(output, record: dict, markdown: str, indent: int = 2) -> None:
    """``output``.json (the record) and ``output``.md, each written whole (a temporary file, then a rename)."""
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    for suffix, text in ((".json", json.dumps(record, indent=indent)), (".md", markdown)):
        temporary = output.with_name(output.name + suffix + ".tmp")
        temporary.write_text(text + "\n")
        os.replace(temporary, output.with_name(output.name + suffix))
