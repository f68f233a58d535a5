"""The training EMA warms up (decay_n = min(decay, (1 + n) / (10 + n))), so early weights do not linger."""

import torch
from torch.optim.swa_utils import AveragedModel

from CTDiffusionLib.training.trainer import warmup_ema_update


def run_ema(decay: float, steps: int, start: float = 0.0, then: float = 1.0):
    """A one-parameter model that is `start` at step 0 and `then` from step 1 on; returns the EMA after `steps`."""
    model = torch.nn.Linear(1, 1, bias=False)
    model.weight.data.fill_(start)
    ema = AveragedModel(model, multi_avg_fn=warmup_ema_update(decay), use_buffers=True)
    ema.update_parameters(model)  # the first update copies the weights
    model.weight.data.fill_(then)
    for _ in range(steps - 1):
        ema.update_parameters(model)
    return ema.module.weight.item()


def expected(decay: float, steps: int) -> float:
    left = 1.0  # share of the step-0 weights still in the EMA
    for n in range(1, steps):
        left *= min(decay, (1 + n) / (10 + n))
    return 1.0 - left


def test_follows_the_formula():
    for steps in (2, 5, 50, 500):
        assert abs(run_ema(0.999, steps) - expected(0.999, steps)) < 1e-5


def test_early_weights_fade_quickly():
    # A plain 0.999 EMA would still hold 0.999 ** 499 = 61% of the step-0 weights at step 500.
    assert run_ema(0.999, 500) > 0.97
    assert run_ema(0.999, 20) > 0.5  # after a few steps the EMA is already closer to the new weights


def test_decay_caps_the_warm_up():
    # Long after the warm-up the decay is the configured one: one more step moves the EMA by (1 - decay).
    model = torch.nn.Linear(1, 1, bias=False)
    ema = AveragedModel(model, multi_avg_fn=warmup_ema_update(0.9), use_buffers=True)
    for _ in range(1000):
        ema.update_parameters(model)
    before = ema.module.weight.item()
    model.weight.data.add_(1.0)
    ema.update_parameters(model)
    assert abs(ema.module.weight.item() - before - 0.1) < 1e-5
