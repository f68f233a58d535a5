"""The training loop both benchmark recipes share (the segmenter and the pathology classifier): batches drawn in a
shuffled cycle (every sample equally often, order from the seed), Adam steps, and a clear error when the loss stops
being finite."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import numpy as np
import torch

from CTDiffusionLib.errors import TrainingFailed


def shuffled_cycle(n: int, rng: np.random.Generator) -> Iterator[int]:
    """Indices 0..n-1 in a fresh random order each pass, forever."""
    while True:
        yield from rng.permutation(n).tolist()


def fit(model: torch.nn.Module, optimiser, iterations: int, batch_loss: Callable[[], torch.Tensor], what: str,
        hint: str, on_step=None) -> torch.nn.Module:
    """`iterations` optimiser steps on `batch_loss()` (which draws its own batch); `on_step(k)` after step k (it may
    raise to stop). Returns the model in eval mode."""
    model.train()
    for step in range(iterations):
        optimiser.zero_grad(set_to_none=True)
        loss = batch_loss()
        value = float(loss.detach())
        if not math.isfinite(value):
            raise TrainingFailed(f"The benchmark's {what} diverged (loss {value} at iteration {step}).", hint)
        loss.backward()
        optimiser.step()
        if on_step is not None:
            on_step(step + 1)
    return model.eval()
