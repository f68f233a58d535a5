"""Learning rate: linear warm-up, then flat until `decay_from`, then a half cosine to zero at the run's last step.

With decay_from at the end of warm-up this is diffusers' get_cosine_schedule_with_warmup to the last bit (runs
from before --minutes existed resume exactly). A --minutes run holds the peak rate until its length is known, then
decays from there (training/budget.py). The factor reads the length through `length()` at every step, so fixing
it mid-run needs no new scheduler, and the LambdaLR state in checkpoints stays what it was.
"""

from __future__ import annotations

import math
from typing import Callable

import torch


def lr_factor(step: int, warmup: int, decay_from: int | None, total: int) -> float:
    if step < warmup:
        return float(step) / float(max(1, warmup))
    start = warmup if decay_from is None else max(warmup, decay_from)
    if step < start:
        return 1.0
    progress = float(step - start) / float(max(1, total - start))
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))


def warmup_flat_cosine(optimizer: torch.optim.Optimizer,
                       plan: Callable[[], tuple[int, int | None, int]]) -> torch.optim.lr_scheduler.LambdaLR:
    """`plan()` -> (warmup, decay_from, total), read at each step."""

    def factor(step: int) -> float:
        return lr_factor(step, *plan())

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
