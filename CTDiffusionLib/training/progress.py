"""What a training job says while it trains: the losses read back from the device, the speed, the time left, the
train phase's `progress` events (at most one a second, and at each epoch's end and the last step), the validate
phase's, and a log line every 15 seconds.

The loss of a step stays on the device until a read-back is due (every SYNC_EVERY steps, at checkpoints, and for
each report), so a step costs no host sync; a loss that is not finite then stops the run with an error instead of
a saved model. The events and their fields are the event-stream contract (docs/engine.md, "Event stream").
"""

from __future__ import annotations

import logging
import math
from typing import Callable

import torch

from CTDiffusionLib.errors import TrainingFailed
from CTDiffusionLib.textformat import format_eta

log = logging.getLogger("ctdiffusion")
SYNC_EVERY = 10  # steps between host syncs (loss read-back, the DDP stop vote) when nothing else forces one
REPORT_EVERY_S = 1.0
LOG_EVERY_S = 15.0


def read_losses(losses: list[torch.Tensor], first_step: int) -> list[float]:
    """Losses of steps first_step+1.. as floats (one host sync); a non-finite one stops the run."""
    if not losses:
        return []
    values = torch.stack(losses).float().cpu().tolist()
    for i, value in enumerate(values):
        if not math.isfinite(value):
            raise TrainingFailed(
                f"The training loss became {value} at step {first_step + i + 1}; stopping instead of saving a "
                "broken model.", "Lower --lr (e.g. by 10x) and --resume from the last checkpoint, or check the "
                "data for extreme values.")
    return values


class TrainingProgress:
    """One job's reporting. `step_done` after each step, `validated` after each validation, `plan_changed` when
    a --minutes budget changes the length (the next report carries it as `budget`), `flush` before stopping,
    `summary` at the end.

    outlook(rate) -> (total, eta_s) the run expects; on_sync(rate) runs at each read-back (rate: the speed newly
    measured, else None); lr() -> the learning rate now. Only the job that `speaks` (rank 0) emits and logs."""

    def __init__(self, events, *, step: int, per_epoch: int, speaks: bool, clock: Callable[[], float],
                 lr: Callable[[], float], outlook: Callable, on_sync: Callable[[float | None], None]):
        self.events, self.per_epoch, self.speaks, self.clock = events, per_epoch, speaks, clock
        self.lr, self.outlook, self.on_sync = lr, outlook, on_sync
        self.started, self.start_step = clock(), step
        self.last_report, self.last_log = -math.inf, self.started
        self.rate: float | None = None
        self.loss: float | None = None
        self.loss_avg: float | None = None
        self._pending: list[torch.Tensor] = []  # device-side losses not yet read back
        self._pending_from = step
        self._window = (self.started, step)  # where the current speed measurement began
        self._plan_note: dict | None = None

    def step_done(self, step: int, total: int, loss: torch.Tensor, sync: bool) -> None:
        """After each step: keep its loss; read back, measure, report and log when due. `sync`: the caller needs
        the losses checked at this step (a checkpoint follows). Every rank reads back at the same steps."""
        self._pending.append(loss)
        epoch, end_of_epoch = step // self.per_epoch, step % self.per_epoch == 0
        now = self.clock()
        report = self.speaks and (now - self.last_report > REPORT_EVERY_S or step == total or end_of_epoch
                                  or self._plan_note is not None)
        if report or sync or step % SYNC_EVERY == 0:
            self._read_back(step, now)
        write_log = self.speaks and (now - self.last_log > LOG_EVERY_S or step == total)
        if report or write_log:
            expected, eta = self.outlook(self.rate)
        if report:
            self.last_report = now
            budget = {"budget": self._plan_note} if self._plan_note is not None else {}
            self._plan_note = None
            self.events.emit("progress", phase="train", step=step, total=expected, epoch=epoch, loss=self.loss,
                             loss_avg=self.loss_avg, lr=self.lr(), it_per_s=self.rate, eta_s=eta, **budget)
        if write_log:
            self.last_log = now
            log.info("step %d/%s (epoch %d)  loss %.4f  %.2f it/s  ETA %s", step, expected or "?", epoch,
                     self.loss_avg, self.rate or 0.0, format_eta(eta))

    def flush(self) -> None:
        """Check the losses not read back yet (a run that stops must not checkpoint a diverged model)."""
        read_losses(self._pending, self._pending_from)

    def _read_back(self, step: int, now: float) -> None:
        values = read_losses(self._pending, self._pending_from)
        for value in values:
            self.loss_avg = value if self.loss_avg is None else 0.9 * self.loss_avg + 0.1 * value
        self.loss = values[-1] if values else self.loss
        self._pending, self._pending_from = [], step
        measured = None
        since, first = self._window
        if step > first:
            measured = self.rate = (step - first) / max(now - since, 1e-9)
            self._window = (now, step)
        self.on_sync(measured)

    def validated(self, step: int, total: int | None, val_loss: float | None) -> None:
        if val_loss is not None and self.speaks:
            self.events.emit("progress", phase="validate", step=step, total=total, epoch=step // self.per_epoch,
                             val_loss=val_loss)

    def plan_changed(self, note: dict | None) -> None:
        """The budget changed the run's length: the next report says so (`budget`: what changed and why)."""
        if note is not None:
            self._plan_note = note

    def summary(self, step: int) -> dict:
        elapsed = self.clock() - self.started
        return {"steps": step - self.start_step, "seconds": elapsed,
                "it_per_s": (step - self.start_step) / max(elapsed, 1e-9)}
