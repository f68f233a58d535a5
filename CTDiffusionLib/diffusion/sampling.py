"""The reverse process: noise -> sample, with per-sample seeds and optional classifier-free guidance."""

from __future__ import annotations

import inspect
from typing import Callable, Sequence

import torch


def initial_noise(shape: Sequence[int], seeds: Sequence[int]) -> tuple[torch.Tensor, list[torch.Generator]]:
    """One CPU generator per sample: a volume's result depends on its own seed only (not on batch or device)."""
    generators = [torch.Generator("cpu").manual_seed(int(s)) for s in seeds]
    noise = torch.stack([torch.randn(tuple(shape), generator=g) for g in generators])
    return noise, generators


def timestep_batch(t, n: int, device: torch.device) -> torch.Tensor:
    """The network's timestep input: whole numbers stay integers (DDPM chains, exactly as before); the fractional
    timesteps of sigma-based and flow samplers are passed as they are, not truncated."""
    value = float(t)
    if value.is_integer():
        return torch.full((n,), int(value), device=device, dtype=torch.long)
    return torch.full((n,), value, device=device, dtype=torch.float32)


@torch.no_grad()
def sample(
    model: torch.nn.Module,
    scheduler,
    shape: Sequence[int],
    seeds: Sequence[int],
    device: torch.device,
    class_labels: torch.Tensor | None = None,
    null_labels: torch.Tensor | None = None,
    guidance_scale: float = 1.0,
    autocast_dtype: torch.dtype | None = None,
    on_step: Callable[[int, int], None] | None = None,
    spatial_condition: torch.Tensor | None = None,
) -> torch.Tensor:
    """Returns x0 in model space ([-1, 1]) for len(seeds) samples of `shape` (channels first, no batch dim).

    `spatial_condition` (batch, K, spatial...): a label map per sample, concatenated to the network input; with
    `guidance_scale` != 1 the null condition (all zeros) runs beside it in the same batch and the two are mixed."""
    x, generators = initial_noise(shape, seeds)
    x = x.to(device) * getattr(scheduler, "init_noise_sigma", 1.0)  # flow-matching schedulers start at 1
    guided = class_labels is not None and null_labels is not None and guidance_scale != 1.0
    spatial = spatial_condition.to(device) if spatial_condition is not None else None
    timesteps = scheduler.timesteps
    # stochastic steps draw from each sample's own generator; UniPC and the flow samplers take none
    takes_generator = "generator" in inspect.signature(scheduler.step).parameters
    noise_source = {"generator": generators if len(generators) > 1 else generators[0]} if takes_generator else {}
    for i, t in enumerate(timesteps):
        inp = scheduler.scale_model_input(x, t) if hasattr(scheduler, "scale_model_input") else x
        tt = timestep_batch(t, x.shape[0], device)
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            if spatial is not None and guidance_scale != 1.0:
                both = model(torch.cat([torch.cat([inp, spatial.to(inp.dtype)], 1),
                                        torch.cat([inp, torch.zeros_like(spatial, dtype=inp.dtype)], 1)]),
                             torch.cat([tt, tt]))
                cond_out, uncond = both.float().chunk(2)
                out = uncond + guidance_scale * (cond_out - uncond)
            elif spatial is not None:
                out = model(torch.cat([inp, spatial.to(inp.dtype)], 1), tt).float()
            elif guided:
                both = model(torch.cat([inp, inp]), torch.cat([tt, tt]),
                             class_labels=torch.cat([class_labels, null_labels]))
                cond, uncond = both.float().chunk(2)
                out = uncond + guidance_scale * (cond - uncond)
            elif class_labels is not None:
                out = model(inp, tt, class_labels=class_labels).float()
            else:
                out = model(inp, tt).float()
        x = scheduler.step(out, t, x, **noise_source).prev_sample
        if on_step:
            on_step(i + 1, len(timesteps))
    return x
