"""diffusers schedulers configured from the run's `diffusion` config (one source of truth, round-trips as JSON)."""

from __future__ import annotations

import torch
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler

from CTDiffusionLib.errors import InputError

BETA_SCHEDULES = {"linear": "linear", "cosine": "squaredcos_cap_v2"}
PREDICTIONS = {"epsilon": "epsilon", "v": "v_prediction"}
DEFAULT_SAMPLER_STEPS = {"ddpm": 1000, "ddim": 50, "dpm++": 25}
# How bundles whose model.json has no "scheduler" entry (written before it was stored) were sampled; everything
# else follows from their "diffusion" schedule. Frozen: changing today's defaults must not change old bundles.
LEGACY_SAMPLING = {"clip_sample": True, "timestep_spacing": "trailing", "thresholding": False}


def default_diffusion_config(schedule: str = "linear", prediction: str = "v",
                             min_snr_gamma: float | None = None) -> dict:
    """v-prediction by default: measured on tiny mask models, epsilon-prediction made the deterministic few-step
    samplers (DDIM, DPM-Solver++) drift far from DDPM, v-prediction made all three agree (docs/engine.md).
    `min_snr_gamma` weights the training loss by Min-SNR (diffusion/loss.py); None keeps the plain MSE."""
    config = {"num_train_timesteps": 1000, "beta_schedule": schedule, "prediction": prediction,
              "beta_start": 1e-4, "beta_end": 0.02}
    if min_snr_gamma:  # only when used, so configs of runs without it stay what they were
        config["min_snr_gamma"] = float(min_snr_gamma)
    return config


def training_scheduler(cfg: dict) -> DDPMScheduler:
    """The forward process: q(x_t | x_0) and the DDPM reverse process it defines."""
    return DDPMScheduler(
        num_train_timesteps=cfg["num_train_timesteps"],
        beta_start=cfg.get("beta_start", 1e-4),
        beta_end=cfg.get("beta_end", 0.02),
        beta_schedule=BETA_SCHEDULES[cfg["beta_schedule"]],
        prediction_type=PREDICTIONS[cfg["prediction"]],
        clip_sample=True,  # data live in [-1, 1]: clipping x0 estimates keeps DDPM sampling in range
        # DPM-Solver++ has no clip_sample; diffusers' thresholding with sample_max_value 1 clamps its quantile to 1,
        # i.e. clips x0 to [-1, 1] too. Set here, it is stored in the bundle and every sampler inherits it.
        thresholding=True,
        sample_max_value=1.0,
        timestep_spacing="trailing",  # few-step samplers then start at t = T-1 (pure noise), as trained
    )


def scheduler_config(cfg: dict) -> dict:
    """The training scheduler's own diffusers settings (betas, prediction_type, clip_sample, timestep_spacing, ...),
    JSON-ready: stored in model.json so a bundle samples the same way after this code's defaults change."""
    return {k: v for k, v in training_scheduler(cfg).config.items() if not k.startswith("_")}


def bundle_scheduler(meta: dict) -> DDPMScheduler:
    """The DDPM scheduler a bundle was trained with: its stored settings, or the legacy ones for old bundles."""
    stored = meta.get("scheduler")
    if stored:
        return DDPMScheduler.from_config(stored)
    return DDPMScheduler.from_config(training_scheduler(meta["diffusion"]).config, **LEGACY_SAMPLING)


def sampler(name: str, cfg: dict, steps: int | None = None, base: DDPMScheduler | None = None):
    """A sampling scheduler that shares the training schedule (`base`, default: today's scheduler for `cfg`);
    `steps` inference steps (default per sampler)."""
    base = base if base is not None else training_scheduler(cfg)
    if name == "ddpm":
        sched = base
    elif name == "ddim":
        sched = DDIMScheduler.from_config(base.config)
    elif name == "dpm++":
        # inherits thresholding (x0 clipped to [-1, 1]) from the training scheduler; legacy bundles keep theirs
        sched = DPMSolverMultistepScheduler.from_config(base.config, algorithm_type="dpmsolver++", solver_order=2)
    else:
        raise InputError(f"Unknown sampler {name!r}.", "Use ddpm, ddim or dpm++.")
    steps = steps or DEFAULT_SAMPLER_STEPS[name]
    if steps > cfg["num_train_timesteps"]:
        raise InputError(f"--steps {steps} exceeds the {cfg['num_train_timesteps']} training timesteps.",
                         "Use at most that many steps.")
    sched.set_timesteps(steps)
    return sched


def training_target(sched: DDPMScheduler, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """What the network learns to predict: the noise (epsilon) or the velocity v = a_t * eps - s_t * x0."""
    if sched.config.prediction_type == "v_prediction":
        return sched.get_velocity(x0, noise, t)
    return noise
