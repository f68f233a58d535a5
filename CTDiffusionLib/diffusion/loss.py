"""The denoising loss, one definition for training steps and validation."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from CTDiffusionLib.diffusion.schedulers import training_target


def diffusion_loss(model, scheduler, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor,
                   labels: torch.Tensor | None = None, autocast_dtype: torch.dtype | None = None,
                   reduction: str = "mean") -> torch.Tensor:
    """MSE between the network's output for x_t = q(x0, noise, t) and what it learns to predict (noise or v).

    The forward pass runs under bf16 autocast when `autocast_dtype` is given; the loss itself is computed in float32.
    """
    xt = scheduler.add_noise(x0, noise, t)
    target = training_target(scheduler, x0, noise, t)
    with torch.autocast(x0.device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
        pred = model(xt, t, class_labels=labels) if labels is not None else model(xt, t)
    return F.mse_loss(pred.float(), target.float(), reduction=reduction)
