"""Learning rate: linear warm-up, then flat until `decay_from`, then a half cosine to zero at the run's last step.

With decay_from at the end of warm-up this is diffusers' get_cosine_schedule_with_warmup to the last bit (runs
from before --minutes existed resume exactly). A --minutes run holds the peak rate until its length is known, then
decays from there, and may change its length again later (training/budget.py). The factor reads the plan in force
at every step, so changing it mid-run needs no new scheduler, and the LambdaLR state in checkpoints stays what it
was.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Callable

import torch


@dataclass(frozen=True)
class LearningRatePlan:
    """The schedule in force. Factor f(s) of the peak learning rate at step s:

        s < warmup:                 f = s / warmup
        warmup <= s < start:        f = 1                          start = max(warmup, decay_from or warmup)
        s >= start:                 f = (1 + cos(pi * u(s))) / 2   u: how far along the cosine s is, 0 .. 1

    Until the first re-plan, u(s) = (s - start) / (total - start): one cosine from `start` to `total`.

    Re-planning at step p to a new total T' (`replanned`) re-scales what is left of the cosine instead of drawing a
    new one: with u_p = u(p) under the plan in force,

        u'(s) = u_p + (1 - u_p) * (s - p) / (T' - p)      for s >= p      (anchor_step = p, anchor_phase = u_p)

    so u'(p) = u_p exactly (the factor at p, the learning rate the optimiser holds, does not move), u'(T') = 1 (the
    rate still reaches 0 at the last step), and in between u' runs linearly, the rest of the cosine stretched
    (T' > T: a longer run) or squeezed (T' < T) onto the steps left. The rate stays continuous and falling; only
    its slope changes at p, by the factor (T - p) / (T' - p). Repeated re-plans compose (each anchors at the phase
    the previous one reached). A re-plan before the cosine has started (warm-up or flat part) only moves its end.
    """

    warmup: int
    total: int
    decay_from: int | None = None  # first step of the cosine (None: the end of warm-up)
    anchor_step: int | None = None  # the last re-plan's step (None: never re-planned)
    anchor_phase: float = 0.0  # u at anchor_step

    @property
    def decay_start(self) -> int:
        return self.warmup if self.decay_from is None else max(self.warmup, self.decay_from)

    def phase(self, step: int) -> float | None:
        """u(step): how far along its cosine `step` is; None before the cosine starts."""
        if step < self.warmup or step < self.decay_start:
            return None
        if self.anchor_step is None:
            return float(step - self.decay_start) / float(max(1, self.total - self.decay_start))
        a = self.anchor_step
        return self.anchor_phase + (1.0 - self.anchor_phase) * float(step - a) / float(max(1, self.total - a))

    def factor(self, step: int) -> float:
        if step < self.warmup:
            return float(step) / float(max(1, self.warmup))
        u = self.phase(step)
        return 1.0 if u is None else max(0.0, 0.5 * (1.0 + math.cos(math.pi * u)))

    def replanned(self, step: int, total: int) -> LearningRatePlan:
        """The same schedule up to `step`, then the rest of its cosine re-scaled to end at `total` (see above)."""
        u = self.phase(step)
        if u is None:  # the cosine has not started: only its end moves, the factor up to here is unchanged
            return dataclasses.replace(self, total=int(total))
        return dataclasses.replace(self, total=int(total), anchor_step=int(step), anchor_phase=min(1.0, u))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, plan: dict) -> LearningRatePlan:
        return cls(**{f.name: plan[f.name] for f in dataclasses.fields(cls) if f.name in plan})


def lr_factor(step: int, warmup: int, decay_from: int | None, total: int) -> float:
    """The factor of a plan that was never re-planned."""
    return LearningRatePlan(warmup, total, decay_from).factor(step)


def warmup_flat_cosine(optimizer: torch.optim.Optimizer,
                       plan: Callable[[], LearningRatePlan]) -> torch.optim.lr_scheduler.LambdaLR:
    """`plan()` -> the LearningRatePlan in force, read at each step."""

    def factor(step: int) -> float:
        return plan().factor(step)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
