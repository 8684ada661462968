"""Metrics output: one JSON line per logged step in ``MODEL_DIR/metrics.jsonl``, TensorBoard scalars, and
console progress (a tqdm bar with ETA on a terminal, plain log lines otherwise). Only process 0 writes."""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
from typing import Optional

logger = logging.getLogger("alexatm_jax.train")


def _clean(value):
    """JSON has no NaN/Inf: they are written as strings, so a diverging run still logs valid lines."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


class MetricsWriter:
    def __init__(self, model_dir: str, *, enabled: bool = True, tensorboard: bool = True,
                 total_steps: Optional[int] = None, initial_step: int = 0):
        self.enabled = enabled
        self.path = os.path.join(model_dir, "metrics.jsonl")
        self._tb = None
        self._bar = None
        if not enabled:
            return
        if tensorboard:
            import tensorflow as tf  # the data pipeline already depends on TensorFlow
            self._tb = tf.summary.create_file_writer(os.path.join(model_dir, "tensorboard"))
        if sys.stderr.isatty():
            from tqdm import tqdm
            self._bar = tqdm(total=total_steps, initial=initial_step, unit="step", dynamic_ncols=True)

    def write(self, step: int, values: dict):
        """Appends ``{"step": step, **values}`` as one line (a single write, so a kill leaves whole lines)."""
        if not self.enabled:
            return
        record = {"step": int(step), **{k: _clean(v) for k, v in values.items()}, "time": time.time()}
        line = (json.dumps(record, sort_keys=True) + "\n").encode()
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)
        finally:
            os.close(fd)
        if self._tb is not None:
            import tensorflow as tf
            with self._tb.as_default(step=int(step)):
                for key, value in values.items():
                    if isinstance(value, (int, float)) and math.isfinite(value):
                        # tf.summary.scalar lives in the `tensorboard` package, which is not a dependency;
                        # the core op with the scalars plugin's metadata writes the same event.
                        tf.summary.write(key, tf.constant(float(value), tf.float32), metadata=_scalar_metadata())
            self._tb.flush()
        if self._bar is None:
            shown = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                             for k, v in values.items() if k in _CONSOLE_KEYS)
            print(f"step {step}: {shown}", file=sys.stderr, flush=True)

    def advance(self, step: int, loss: Optional[float] = None):
        if self._bar is not None:
            self._bar.update(step - self._bar.n)
            if loss is not None:
                self._bar.set_postfix(loss=f"{loss:.4f}")

    def message(self, text: str):
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.write(text)
        else:
            print(text, file=sys.stderr, flush=True)

    def close(self):
        if self._bar is not None:
            self._bar.close()
        if self._tb is not None:
            self._tb.close()


def _scalar_metadata():
    from tensorflow.core.framework import summary_pb2
    return summary_pb2.SummaryMetadata(
        plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars"))


_CONSOLE_KEYS = ("loss", "accuracy", "learning_rate", "grad_norm", "tokens_per_second", "mfu", "eval_loss")


def read_metrics(model_dir: str) -> list[dict]:
    """The records of ``metrics.jsonl``; for a step logged more than once (a resumed run repeats the steps
    after its last checkpoint) the last record wins. Returned in step order."""
    by_step: dict[tuple, dict] = {}
    with open(os.path.join(model_dir, "metrics.jsonl"), encoding="utf-8") as f:
        for line in f:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by a crash
            kind = "eval" if "eval_loss" in record and "loss" not in record else "train"
            by_step[(record["step"], kind)] = record
    return [by_step[k] for k in sorted(by_step)]
