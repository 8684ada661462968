"""What happens around each train step, as hooks of the ``Trainer`` loop: preemption, non-finite checks,
logging, evaluation, checkpointing. Each hook has one job; they run in the order given, after every step.

A hook implements any of ``on_start(trainer, step)``, ``after_step(trainer, info)`` and ``on_end(trainer,
info)``. ``info`` (a ``StepInfo``) carries the step, the new state and the step's device metrics; a hook may set
``info.stop`` (preemption) or ``info.eval_loss`` (evaluation, so that the checkpoint saved at the same step is
ranked by a loss of its own parameters). Metrics stay on the device except at the steps where a hook reads
them, so the loop never waits on the accelerator in between.
"""

from __future__ import annotations

import dataclasses
import signal
import threading
import time
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. the loss diverged); the message says at which step and what to do."""


@dataclasses.dataclass
class StepInfo:
    step: int                          # updates applied so far
    state: Any                         # the TrainState after the update
    metrics: dict                      # replicated device scalars of the step
    tokens: Any                        # device scalar: non-padding input + target tokens of the batch
    stop: Optional[str] = None         # set to a reason to end the loop after this step
    eval_loss: Optional[float] = None  # set when the evaluation hook ran at this step


def host_scalar(x) -> float:
    """A replicated device scalar as a float (reads the local copy: multi-process arrays are not fully
    addressable)."""
    return float(np.asarray(x.addressable_data(0)) if isinstance(x, jax.Array) else x)


class Hook:
    def on_start(self, trainer, step: int) -> None:
        pass

    def after_step(self, trainer, info: StepInfo) -> None:
        pass

    def on_end(self, trainer, info: Optional[StepInfo]) -> None:
        pass


def every(step: int, interval: int, last: int) -> bool:
    return bool(interval) and step % interval == 0 or step == last


class PreemptionHook(Hook):
    """Ends the loop (after a checkpoint, by the hooks that follow) when the job is being stopped.

    One process: SIGTERM / SIGINT set a flag. Several processes: JAX's preemption service (which takes SIGTERM
    from the cluster) makes every host reach the same sync step through orbax's ``reached_preemption``, so no
    host enters a collective save while the others step on."""

    def __init__(self, manager):
        self._manager = manager
        self._signal: Optional[int] = None
        self._previous: dict = {}

    def on_start(self, trainer, step):
        if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        self._signal = signum

    def after_step(self, trainer, info):
        if jax.process_count() > 1:
            if self._manager.reached_preemption(info.step):
                info.stop = "preempted"
        elif self._signal is not None:
            info.stop = "preempted"
        if info.stop:
            trainer.writer.message(f"Preemption (signal {self._signal or 'from the cluster'}) at step {info.step}: "
                                   f"saving and stopping.")

    def on_end(self, trainer, info):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}


class NonFiniteHook(Hook):
    """Tracks (on the device) the first step whose loss or gradients were not finite, and raises
    TrainingError at the next step where the host looks anyway, before anything is saved."""

    def __init__(self, policy: str, check_intervals: tuple[int, ...], last_step: int):
        self.policy, self.check_intervals, self.last_step = policy, check_intervals, last_step
        self.first_bad = jnp.array(-1, jnp.int32)
        self.skipped = jnp.zeros((), jnp.float32)
        self._track = jax.jit(lambda first, finite, s: jnp.where((first < 0) & (finite < 1), s, first))
        self.last_saved: Optional[int] = None

    def after_step(self, trainer, info):
        finite = info.metrics["finite"]
        self.first_bad = self._track(self.first_bad, finite, info.step - 1)
        self.skipped = self.skipped + (1.0 - finite)
        if info.stop or any(every(info.step, i, self.last_step) for i in self.check_intervals):
            self.check(trainer)

    def check(self, trainer):
        bad = int(host_scalar(self.first_bad))
        if bad >= 0 and self.policy == "stop":
            last = trainer.last_saved_step
            where = (f"the last good checkpoint is step {last} in {trainer.checkpoint_dir}" if last is not None
                     else "no checkpoint was saved")
            raise TrainingError(
                f"Non-finite loss or gradients at step {bad + 1} (update {bad} -> {bad + 1}); training stopped "
                f"and {where}. Lower the learning rate, enable clipping, or bind StepConfig.nonfinite='skip'.")


class LoggingHook(Hook):
    """Every ``interval`` steps (and the first and last): loss, accuracy, lr, grad norm, tokens/s, MFU."""

    def __init__(self, interval: int, last_step: int, flops_per_step: float, peak_flops: Optional[float],
                 report_skipped: Optional[NonFiniteHook] = None):
        self.interval, self.last_step = interval, last_step
        self.flops_per_step, self.peak_flops, self.report_skipped = flops_per_step, peak_flops, report_skipped
        self.last_values: dict = {}

    def on_start(self, trainer, step):
        self._start_step = step
        self._reset()

    def _reset(self):
        self._since, self._steps, self._tokens = time.time(), 0, None

    def after_step(self, trainer, info):
        self._steps += 1
        self._tokens = info.tokens if self._tokens is None else self._tokens + info.tokens
        if not (every(info.step, self.interval, self.last_step) or info.step == self._start_step + 1 or info.stop):
            return
        values = {k: host_scalar(v) for k, v in info.metrics.items() if k not in ("finite", "weight")}
        elapsed = time.time() - self._since
        step_time = elapsed / self._steps
        values.update(tokens_per_second=host_scalar(self._tokens) / elapsed, step_time=step_time,
                      flops_per_step=self.flops_per_step, target_tokens=host_scalar(info.metrics["weight"]),
                      mfu=(self.flops_per_step / step_time / (self.peak_flops * jax.device_count())
                           if self.peak_flops else None))
        if self.report_skipped is not None and self.report_skipped.policy == "skip":
            values["skipped_updates"] = host_scalar(self.report_skipped.skipped)
        trainer.writer.write(info.step, values)
        self.last_values = values
        self._reset()


class EvalHook(Hook):
    """Every ``interval`` steps (and at the last): the held-out loss, logged and put on ``info.eval_loss``."""

    def __init__(self, interval: int, last_step: int, evaluate: Callable[[Any], float]):
        self.interval, self.last_step, self.evaluate = interval, last_step, evaluate
        self.last_eval_loss: Optional[float] = None

    def after_step(self, trainer, info):
        if self.interval and every(info.step, self.interval, self.last_step):
            info.eval_loss = self.last_eval_loss = self.evaluate(info.state.params)
            trainer.writer.write(info.step, {"eval_loss": info.eval_loss})


class CheckpointHook(Hook):
    """Saves every ``interval`` steps, at the last step and when the loop is stopped (preemption); the data
    iterator's state of every process goes into the same checkpoint."""

    def __init__(self, manager, interval: int, last_step: int, data_state: Callable[[], dict], train_meta: dict):
        self.manager, self.interval, self.last_step = manager, interval, last_step
        self.data_state, self.train_meta = data_state, train_meta

    def after_step(self, trainer, info):
        if info.stop or every(info.step, self.interval, self.last_step):
            from alexatm_jax.training import checkpointing
            checkpointing.save(self.manager, info.step, info.state, self.data_state(), self.train_meta,
                               eval_loss=info.eval_loss)
            trainer.last_saved_step = info.step

    def on_end(self, trainer, info):
        self.manager.wait_until_finished()
