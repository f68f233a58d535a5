"""Training to a wall-clock budget (`train --minutes M`): how many steps fit, decided from the measured speed and
decided again as the speed changes.

A researcher knows how long they can wait, not how many optimiser steps a machine makes per second. The budget
counts from the first step of the job (data preparation is not in it). The trainer runs with a flat learning rate
after warm-up until the budget has seen enough steps to measure the speed, then fixes the run's length:
total = steps so far + what fits in the rest of the budget at the measured rate, less a small reserve for
checkpoints and validation. The cosine decay then runs from that step to the total.

A host's speed is not constant (other jobs start or end, a laptop leaves its power-saving mode), so the length is
planned again at REPLAN_AT shares of the budget, each time from the speed measured since the previous plan, in
both directions; the learning rate follows without a jump (the rest of the cosine is re-scaled,
training/lr_schedule.py). If the host slows down after the last re-plan and the deadline passes first, the run ends
at the next step it can agree on (a shortened cosine, a complete run).

Time is counted in budget seconds: those this job spent plus those earlier jobs of the same run spent (`used`), so
a stopped run resumed later continues with what is left of its budget, its re-plans and its speed measurement
(`state` goes into each checkpoint).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

SKIP_STEPS = 3  # the first steps of a job carry one-off costs (allocator, cuDNN autotune, torch.compile)
# Share of the remaining budget kept for checkpoints, validation and previews the measurement did not see (the demo's
# two previews take ~2 % of its budget); running out anyway only cuts the last, near-zero part of the cosine.
RESERVE = 0.03
REPLAN_AT = (0.25, 0.5, 0.75)  # shares of the budget at which the length is planned again from the recent speed


def measure_for(budget_s: float) -> float:
    """Seconds of steady training to measure before fixing the length: long enough to average over a few
    validations and checkpoints, short enough that most of the budget runs on the final schedule."""
    return min(60.0, 0.1 * budget_s)


@dataclass
class TimeBudget:
    """One run's budget. `propose(step, total, now)` is asked at agreed steps; it returns a new total when the
    length should change (once the speed is known, at each re-plan that moves it, and if the deadline passes
    first), else None; `last` then says what changed and why."""

    seconds: float
    started: float  # the clock at the first step of this job
    start_step: int
    used: float = 0.0  # budget seconds spent by earlier jobs of this run (a resumed run)
    resolved: bool = False  # the length has been fixed from a measured speed
    next_replan: int = 0  # index into REPLAN_AT of the next re-plan
    _window: tuple[float, int] | None = None  # (budget seconds, step) where the current speed measurement began
    last: dict | None = None  # the last change proposed (for the log, the progress event and config.json)

    def elapsed(self, now: float) -> float:
        return self.used + (now - self.started)

    def left(self, now: float) -> float:
        return max(0.0, self.seconds - self.elapsed(now))

    def rate(self, step: int, now: float) -> float | None:
        """Steps per second since the measurement window opened (None until it has any)."""
        if self._window is None:
            return None
        since, first = self._window
        spent = self.elapsed(now) - since
        return None if step <= first or spent <= 0 else (step - first) / spent

    def estimated_total(self, step: int, now: float) -> int | None:
        """Where the run would end at the speed measured so far (what progress shows before the length is fixed)."""
        rate = self.rate(step, now)
        if rate is None:
            return None
        return step + max(1, math.floor(rate * self.left(now) * (1.0 - RESERVE)))

    def propose(self, step: int, total: int, now: float) -> int | None:
        spent = self.elapsed(now)
        if not self.resolved and self._window is None and step - self.start_step >= SKIP_STEPS:
            self._window = (spent, step)
        if spent >= self.seconds:
            self.resolved = True
            if step + 1 >= total:
                return None
            return self._change(step, total, step + 1, "deadline", self.rate(step, now), 0.0)
        if not self.resolved:
            if self._window is None or spent - self._window[0] < measure_for(self.seconds):
                return None
            return self._plan(step, total, now, "measured")
        if self.next_replan < len(REPLAN_AT) and spent >= REPLAN_AT[self.next_replan] * self.seconds:
            return self._plan(step, total, now, "replanned")
        return None

    def _plan(self, step: int, total: int, now: float, reason: str) -> int | None:
        """The length at the speed measured since the last plan; the next measurement starts here."""
        rate, new = self.rate(step, now), self.estimated_total(step, now)
        if new is None:  # no step since the window opened: ask again at the next agreed step
            return None
        spent = self.elapsed(now)
        self._window, self.resolved = (spent, step), True
        self.next_replan = sum(share * self.seconds <= spent for share in REPLAN_AT)  # points passed, this one too
        return None if new == total else self._change(step, total, new, reason, rate, self.left(now))

    def _change(self, step: int, total: int, new: int, reason: str, rate: float | None, left: float) -> int:
        self.last = {"reason": reason, "step": step, "previous_total": None if reason == "measured" else total,
                     "total": new, "it_per_s": None if rate is None else round(rate, 4),
                     "seconds_left": round(left, 1)}
        return new

    # -- resume
    def state(self, now: float) -> dict | None:
        """What a checkpoint keeps so that a resumed run continues this budget (None before the length is fixed:
        a run stopped then measures again, with the full budget)."""
        if not self.resolved:
            return None
        return {"seconds_used": self.elapsed(now), "next_replan": self.next_replan,
                "window": list(self._window) if self._window is not None else None}

    @classmethod
    def resumed(cls, seconds: float, state: dict, started: float, step: int) -> TimeBudget:
        window = state.get("window")
        return cls(seconds, started, step, used=float(state["seconds_used"]), resolved=True,
                   next_replan=int(state["next_replan"]),
                   _window=(float(window[0]), int(window[1])) if window else None)
