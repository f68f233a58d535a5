"""Rectified flow (flow matching) as a training objective: straight paths from data to noise.

x_t = (1 - s) x0 + s * noise with s = t / T, and the network predicts the velocity v = noise - x0: the convention of
diffusers' FlowMatchEulerDiscreteScheduler / FlowMatchHeunDiscreteScheduler, which sample it (schedulers.py). Only the
forward process lives here (a line of algebra the schedulers do not offer for random training timesteps); every
sampling step is diffusers'. Timesteps are continuous in [0, T); the network sees them as the DDPM models see theirs.
"""

from __future__ import annotations

from types import SimpleNamespace

import torch

TIMESTEP_SAMPLING = ("uniform", "logit-normal")


class RectifiedFlow:
    """The training side of a flow model: noising, the target, and how training timesteps are drawn.

    logit-normal (Esser et al. 2024, SD3): s = sigmoid(n), n ~ N(0, 1), which puts more training on the middle of the
    path, where a few-step sampler's errors come from; uniform draws s evenly."""

    def __init__(self, num_train_timesteps: int = 1000, timestep_sampling: str = "logit-normal"):
        if timestep_sampling not in TIMESTEP_SAMPLING:
            raise ValueError(f"timestep_sampling must be one of {TIMESTEP_SAMPLING}, got {timestep_sampling!r}")
        self.config = SimpleNamespace(num_train_timesteps=int(num_train_timesteps), prediction_type="flow_prediction",
                                      timestep_sampling=timestep_sampling)

    def _fraction(self, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        s = t.to(device=like.device, dtype=torch.float32) / self.config.num_train_timesteps
        return s.view(-1, *([1] * (like.ndim - 1)))

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        s = self._fraction(t, x0)
        return ((1.0 - s) * x0.float() + s * noise.float()).to(x0.dtype)

    @staticmethod
    def velocity(x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        return noise - x0

    def draw_timesteps(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """n continuous training timesteps in [0, T), from `generator` only (exact resume)."""
        if self.config.timestep_sampling == "uniform":
            s = torch.rand(n, generator=generator)
        else:
            s = torch.sigmoid(torch.randn(n, generator=generator))
        return s * self.config.num_train_timesteps
