"""The denoising loss, one definition for training steps and validation."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from CTDiffusionLib.diffusion.schedulers import training_target
from CTDiffusionLib.errors import InputError

#: config.json "training" "loss" -> elementwise distance; runs and bundles without the key trained with "mse".
#: "smooth_l1" (Huber with beta 1, PyTorch's default) is the mask report's loss.
LOSSES = {"mse": F.mse_loss, "smooth_l1": F.smooth_l1_loss}


def check_loss(name: str) -> str:
    if name not in LOSSES:
        raise InputError(f"config.json: training loss {name!r} is not one of {', '.join(LOSSES)}.",
                         "Restore config.json from the preset (the loss comes from it), e.g. start a new run.")
    return name


def diffusion_loss(model, scheduler, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor,
                   labels: torch.Tensor | None = None, autocast_dtype: torch.dtype | None = None,
                   reduction: str = "mean", min_snr_gamma: float | None = None,
                   spatial_condition: torch.Tensor | None = None, loss: str = "mse") -> torch.Tensor:
    """MSE (or `loss`, see LOSSES) between the network's output for x_t = q(x0, noise, t) and what it learns to
    predict (noise or v).

    The forward pass runs under bf16 autocast when `autocast_dtype` is given; the loss itself is computed in float32.
    With `min_snr_gamma` (training only) each sample's MSE is weighted by Min-SNR-gamma (Hang et al. 2023): the
    nearly noise-free timesteps, which plain v/epsilon losses over-weight, count no more than SNR = gamma.
    A `spatial_condition` (a paired run's label map, one channel per structure) is concatenated to the noisy input:
    it is what the network sees, not what it denoises.
    """
    xt = scheduler.add_noise(x0, noise, t)
    if spatial_condition is not None:
        xt = torch.cat([xt, spatial_condition.to(xt.dtype)], dim=1)
    distance = LOSSES[check_loss(loss)]
    target = training_target(scheduler, x0, noise, t)
    with torch.autocast(x0.device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
        pred = model(xt, t, class_labels=labels) if labels is not None else model(xt, t)
    if not min_snr_gamma:
        return distance(pred.float(), target.float(), reduction=reduction)
    per_sample = distance(pred.float(), target.float(), reduction="none").flatten(1).mean(1)
    return (min_snr_weight(scheduler, t, min_snr_gamma) * per_sample).mean()


def min_snr_weight(scheduler, t: torch.Tensor, gamma: float) -> torch.Tensor:
    """min(SNR_t, gamma) / SNR_t for epsilon targets, min(SNR_t, gamma) / (SNR_t + 1) for v targets."""
    alpha_bar = scheduler.alphas_cumprod.to(t.device)[t].float()
    snr = alpha_bar / (1.0 - alpha_bar)
    denominator = snr + 1.0 if scheduler.config.prediction_type == "v_prediction" else snr
    return snr.clamp(max=gamma) / denominator
