"""Training to a wall-clock budget (`train --minutes M`): how many steps fit, decided from the measured speed.

A researcher knows how long they can wait, not how many optimiser steps a machine makes per second. The budget
counts from the first step of this job (data preparation is not in it). The trainer runs with a flat learning
rate after warm-up until the budget has seen enough steps to measure the speed, then fixes the run's length once:
total = steps so far + what fits in the rest of the budget at the measured rate, less a small reserve for
checkpoints and validation. The cosine decay then runs from that step to the total, and config.json records both,
so a resumed run continues the same schedule. If the host slows down and the deadline passes first, the run ends
at the next step it can agree on (a shortened cosine, a complete run).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

SKIP_STEPS = 3  # the first steps of a job carry one-off costs (allocator, cuDNN autotune, torch.compile)
# Share of the remaining budget kept for checkpoints, validation and previews the measurement did not see (the demo's
# two previews take ~2 % of its budget); running out anyway only cuts the last, near-zero part of the cosine.
RESERVE = 0.03


def measure_for(budget_s: float) -> float:
    """Seconds of steady training to measure before fixing the length: long enough to average over a few
    validations and checkpoints, short enough that most of the budget runs on the final schedule."""
    return min(60.0, 0.1 * budget_s)


@dataclass
class TimeBudget:
    """One job's budget. `propose(step, now)` is asked at agreed steps; it returns a new total when the length
    should change (once when the speed is known, once more if the deadline passes first), else None."""

    seconds: float
    started: float  # time.time() at the first step of this job
    start_step: int
    resolved: bool = False
    _window: tuple[float, int] | None = None  # (time, step) where the speed measurement began

    @property
    def deadline(self) -> float:
        return self.started + self.seconds

    def rate(self, step: int, now: float) -> float | None:
        """Steps per second since the measurement window opened (None until it has any)."""
        if self._window is None or step <= self._window[1] or now <= self._window[0]:
            return None
        return (step - self._window[1]) / (now - self._window[0])

    def estimated_total(self, step: int, now: float) -> int | None:
        """Where the run would end at the speed measured so far (what progress shows before the length is fixed)."""
        rate = self.rate(step, now)
        if rate is None:
            return None
        return step + max(1, math.floor(rate * max(0.0, self.deadline - now) * (1.0 - RESERVE)))

    def propose(self, step: int, total: int, now: float) -> int | None:
        if self._window is None:
            if step - self.start_step >= SKIP_STEPS:
                self._window = (now, step)
            if now >= self.deadline:  # a budget shorter than the first steps
                self.resolved = True
                return step + 1
            return None
        if now >= self.deadline:
            self.resolved = True
            return step + 1 if step + 1 < total else None
        if not self.resolved and now - self._window[0] >= measure_for(self.seconds):
            self.resolved = True
            return self.estimated_total(step, now)
        return None
