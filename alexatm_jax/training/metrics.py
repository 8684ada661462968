"""Metrics output through clu's metric writers: ``MODEL_DIR/metrics.jsonl`` (one JSON line per logged step),
TensorBoard events (clu's ``SummaryWriter``) and console progress. Only process 0 writes.

clu has no JSON-lines writer, and ``metrics.jsonl`` is the record the demo, the notebooks and the tests read,
so ``JsonlWriter`` is a small ``MetricWriter`` of our own. Object stores cannot append: there it keeps the
file's lines and rewrites the (small) object on each flush; locally it appends one whole line per write.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from typing import Any, Mapping, Optional

from clu import metric_writers

from alexatm_jax import storage

METRICS_FILE = "metrics.jsonl"
_CONSOLE_KEYS = ("loss", "accuracy", "learning_rate", "grad_norm", "tokens_per_second", "mfu", "eval_loss")


def _clean(value):
    """JSON has no NaN/Inf: they are written as strings, so a diverging run still logs valid lines."""
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


class _ScalarsOnly(metric_writers.MetricWriter):
    """Ignores everything but scalars (the other kinds have no place in these outputs)."""

    def write_summaries(self, step, values, metadata=None):
        pass

    def write_images(self, step, images):
        pass

    def write_videos(self, step, videos):
        pass

    def write_audios(self, step, audios, *, sample_rate):
        pass

    def write_texts(self, step, texts):
        pass

    def write_histograms(self, step, arrays, num_buckets=None):
        pass

    def write_hparams(self, hparams):
        pass

    def flush(self):
        pass

    def close(self):
        pass


class JsonlWriter(_ScalarsOnly):
    """``{"step": N, **scalars, "time": ...}`` per ``write_scalars`` call, in ``path`` (local or remote)."""

    def __init__(self, path):
        self.path = storage.resolve(path)
        self._remote = storage.is_remote(self.path)
        self._lines: list[str] = []
        if self._remote and self.path.exists():
            self._lines = self.path.read_text().splitlines(keepends=True)

    def write_scalars(self, step: int, scalars: Mapping[str, Any]):
        record = {"step": int(step), **{k: _clean(v) for k, v in scalars.items()}, "time": time.time()}
        line = json.dumps(record, sort_keys=True) + "\n"
        if self._remote:
            self._lines.append(line)
            self.path.write_text("".join(self._lines))
            return
        # One os.write of one whole line with O_APPEND: a kill leaves whole lines only.
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line.encode())
        finally:
            os.close(fd)


class ConsoleWriter(_ScalarsOnly):
    """A tqdm bar with ETA on a terminal, plain ``step N: key=value`` lines otherwise."""

    def __init__(self, total_steps: Optional[int] = None, initial_step: int = 0):
        self._bar = None
        if sys.stderr.isatty():
            from tqdm import tqdm
            self._bar = tqdm(total=total_steps, initial=initial_step, unit="step", dynamic_ncols=True)

    def write_scalars(self, step: int, scalars: Mapping[str, Any]):
        shown = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                         for k, v in scalars.items() if k in _CONSOLE_KEYS and v is not None)
        if self._bar is None:
            print(f"step {step}: {shown}", file=sys.stderr, flush=True)
        else:
            self._bar.update(step - self._bar.n)
            if "loss" in scalars:
                self._bar.set_postfix(loss=f"{scalars['loss']:.4f}")

    def message(self, text: str):
        if self._bar is not None:
            self._bar.write(text)
        else:
            print(text, file=sys.stderr, flush=True)

    def close(self):
        if self._bar is not None:
            self._bar.close()


class TensorBoardWriter(_ScalarsOnly):
    """clu's SummaryWriter, fed finite numeric scalars only (None and strings have no TensorBoard form).

    The event files are written locally and uploaded on every flush when ``logdir`` is remote
    (``storage.StagedDirectory``): TensorFlow's own file systems cannot reach fsspec schemes or an emulator."""

    def __init__(self, logdir):
        self._staged = storage.StagedDirectory(logdir)
        self._writer = metric_writers.SummaryWriter(self._staged.local)

    def write_scalars(self, step, scalars):
        finite = {k: float(v) for k, v in scalars.items()
                  if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}
        if finite:
            self._writer.write_scalars(step, finite)

    def write_texts(self, step, texts):
        self._writer.write_texts(step, texts)

    def write_hparams(self, hparams):
        self._writer.write_hparams(hparams)

    def flush(self):
        self._writer.flush()
        self._staged.sync()

    def close(self):
        try:
            self._writer.close()
        finally:
            self._staged.close()


class RunWriter:
    """The run's writers behind one object: ``write(step, scalars)``, ``message(text)``, ``close()``."""

    def __init__(self, model_dir, *, enabled: bool = True, tensorboard: bool = True,
                 total_steps: Optional[int] = None, initial_step: int = 0):
        self.enabled = enabled
        self.console = ConsoleWriter(total_steps, initial_step) if enabled else None
        writers = []
        if enabled:
            writers.append(JsonlWriter(storage.resolve(model_dir) / METRICS_FILE))
            if tensorboard:
                writers.append(TensorBoardWriter(storage.resolve(model_dir) / "tensorboard"))
            writers.append(self.console)
        self._writer = metric_writers.MultiWriter(writers)

    def write(self, step: int, scalars: Mapping[str, Any]):
        if self.enabled:
            self._writer.write_scalars(int(step), dict(scalars))
            self._writer.flush()

    def message(self, text: str):
        if self.enabled:
            self.console.message(text)

    def close(self):
        if self.enabled:
            self._writer.close()


def read_metrics(model_dir) -> list[dict]:
    """The records of ``metrics.jsonl``; for a step logged more than once (a resumed run repeats the steps
    after its last checkpoint) the last record wins. Returned in step order, train records before eval ones."""
    by_step: dict[tuple, dict] = {}
    text = (storage.resolve(model_dir) / METRICS_FILE).read_text()
    for line in text.splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by a crash
        kind = "eval" if "eval_loss" in record and "loss" not in record else "train"
        by_step[(record["step"], kind)] = record
    return [by_step[k] for k in sorted(by_step)]
