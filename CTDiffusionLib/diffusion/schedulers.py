"""diffusers schedulers configured from the run's `diffusion` config (one source of truth, round-trips as JSON)."""

from __future__ import annotations

import torch
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler

from CTDiffusionLib.errors import InputError

BETA_SCHEDULES = {"linear": "linear", "cosine": "squaredcos_cap_v2"}
PREDICTIONS = {"epsilon": "epsilon", "v": "v_prediction"}
DEFAULT_SAMPLER_STEPS = {"ddpm": 1000, "ddim": 50, "dpm++": 25}


def default_diffusion_config(schedule: str = "linear", prediction: str = "v") -> dict:
    """v-prediction by default: measured on tiny mask models, epsilon-prediction made the deterministic few-step
    samplers (DDIM, DPM-Solver++) drift far from DDPM, v-prediction made all three agree (docs/engine.md)."""
    return {"num_train_timesteps": 1000, "beta_schedule": schedule, "prediction": prediction,
            "beta_start": 1e-4, "beta_end": 0.02}


def training_scheduler(cfg: dict) -> DDPMScheduler:
    """The forward process: q(x_t | x_0) and the DDPM reverse process it defines."""
    return DDPMScheduler(
        num_train_timesteps=cfg["num_train_timesteps"],
        beta_start=cfg.get("beta_start", 1e-4),
        beta_end=cfg.get("beta_end", 0.02),
        beta_schedule=BETA_SCHEDULES[cfg["beta_schedule"]],
        prediction_type=PREDICTIONS[cfg["prediction"]],
        clip_sample=True,  # data live in [-1, 1]: clipping x0 estimates keeps DDPM sampling in range
        timestep_spacing="trailing",  # few-step samplers then start at t = T-1 (pure noise), as trained
    )


def sampler(name: str, cfg: dict, steps: int | None = None):
    """A sampling scheduler that shares the training schedule; `steps` inference steps (default per sampler)."""
    base = training_scheduler(cfg)
    if name == "ddpm":
        sched = base
    elif name == "ddim":
        sched = DDIMScheduler.from_config(base.config)
    elif name == "dpm++":
        # DDPM and DDIM clip x0 (clip_sample); DPM-Solver++ has no clip_sample but its thresholding with
        # sample_max_value 1 clamps the quantile to 1, i.e. clips x0 to [-1, 1] at every step the same way.
        sched = DPMSolverMultistepScheduler.from_config(base.config, algorithm_type="dpmsolver++", solver_order=2,
                                                        thresholding=True, sample_max_value=1.0)
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
