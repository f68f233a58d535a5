"""diffusers schedulers configured from the run's `diffusion` config (one source of truth, round-trips as JSON).

Two training objectives (samplers.py): `ddpm` (the DDPM forward process, epsilon or v targets) and `flow` (rectified
flow, diffusion/flow.py). A bundle records its objective; `sampler()` builds any sampler of that objective from the
bundle's stored settings, so a sampler added later still samples an old model the way it was trained.
"""

from __future__ import annotations

import functools

import torch
from diffusers import (DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler, EulerAncestralDiscreteScheduler,
                       FlowMatchEulerDiscreteScheduler, FlowMatchHeunDiscreteScheduler, HeunDiscreteScheduler,
                       UniPCMultistepScheduler)

from CTDiffusionLib.diffusion.flow import RectifiedFlow
from CTDiffusionLib.errors import InputError
from CTDiffusionLib.samplers import (DEFAULT_OBJECTIVE, DEFAULT_SAMPLER, PREVIEW_SAMPLER, SAMPLERS, default_steps,
                                     sampler_names)

BETA_SCHEDULES = {"linear": "linear", "cosine": "squaredcos_cap_v2"}
PREDICTIONS = {"epsilon": "epsilon", "v": "v_prediction"}
DEFAULT_SAMPLER_STEPS = {name: spec.steps for name, spec in SAMPLERS.items()}
# How bundles whose model.json has no "scheduler" entry (written before it was stored) were sampled; everything
# else follows from their "diffusion" schedule. Frozen: changing today's defaults must not change old bundles.
LEGACY_SAMPLING = {"clip_sample": True, "timestep_spacing": "trailing", "thresholding": False}


def default_diffusion_config(schedule: str = "linear", prediction: str = "v",
                             min_snr_gamma: float | None = None, objective: str = DEFAULT_OBJECTIVE) -> dict:
    """v-prediction by default: measured on tiny mask models, epsilon-prediction made the deterministic few-step
    samplers (DDIM, DPM-Solver++) drift far from DDPM, v-prediction made all three agree (docs/engine.md).
    `min_snr_gamma` weights the training loss by Min-SNR (diffusion/loss.py); None keeps the plain MSE.
    objective "flow": rectified flow (velocity target, logit-normal training timesteps); schedule and prediction do
    not apply to it."""
    if objective == "flow":
        if min_snr_gamma:
            raise InputError("--min-snr-gamma applies to the ddpm objective only, not to --objective flow.",
                             "Drop --min-snr-gamma, or train with --objective ddpm.")
        return {"objective": "flow", "num_train_timesteps": 1000, "timestep_sampling": "logit-normal"}
    config = {"num_train_timesteps": 1000, "beta_schedule": schedule, "prediction": prediction,
              "beta_start": 1e-4, "beta_end": 0.02}
    if min_snr_gamma:  # only when used, so configs of runs without it stay what they were
        config["min_snr_gamma"] = float(min_snr_gamma)
    return config


def is_flow(cfg: dict) -> bool:
    """A rectified-flow model (configs without "objective" were all DDPM)."""
    return cfg.get("objective", "ddpm") == "flow"


def training_scheduler(cfg: dict):
    """The forward process: q(x_t | x_0) and the DDPM reverse process it defines, or the rectified flow's."""
    if is_flow(cfg):
        return RectifiedFlow(cfg["num_train_timesteps"], cfg.get("timestep_sampling", "logit-normal"))
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
    if is_flow(cfg):
        return dict(vars(training_scheduler(cfg).config))
    return {k: v for k, v in training_scheduler(cfg).config.items() if not k.startswith("_")}


def bundle_scheduler(meta: dict):
    """The scheduler a bundle was trained with: its stored settings, or the legacy ones for old bundles."""
    if is_flow(meta["diffusion"]):
        return training_scheduler(meta["diffusion"])
    stored = meta.get("scheduler")
    if stored:
        return DDPMScheduler.from_config(stored)
    return DDPMScheduler.from_config(training_scheduler(meta["diffusion"]).config, **LEGACY_SAMPLING)


def sampler(name: str, cfg: dict, steps: int | None = None, base=None):
    """A sampling scheduler that shares the training schedule (`base`, default: today's scheduler for `cfg`);
    `steps` inference steps (default per sampler, samplers.py)."""
    objective = "flow" if is_flow(cfg) else "ddpm"
    if name not in SAMPLERS:
        raise InputError(f"Unknown sampler {name!r}.", f"Use one of: {', '.join(sampler_names(objective))}.")
    if SAMPLERS[name].objective != objective:
        raise InputError(f"The sampler {name!r} samples {SAMPLERS[name].objective} models, but this model was "
                         f"trained with the {objective} objective.",
                         f"Use one of: {', '.join(sampler_names(objective))}.")
    steps = steps or default_steps(name)
    if steps > cfg["num_train_timesteps"]:
        raise InputError(f"--steps {steps} exceeds the {cfg['num_train_timesteps']} training timesteps.",
                         "Use at most that many steps.")
    sched = _flow_sampler(name, cfg) if objective == "flow" else _ddpm_sampler(name, cfg, base)
    sched.set_timesteps(steps)
    return sched


def _flow_sampler(name: str, cfg: dict):
    # shift 1: the straight schedule the model was trained on (logit-normal training already favours mid-path)
    if name == "heun":
        return FlowMatchHeunDiscreteScheduler(num_train_timesteps=cfg["num_train_timesteps"], shift=1.0)
    return FlowMatchEulerDiscreteScheduler(num_train_timesteps=cfg["num_train_timesteps"], shift=1.0,
                                           stochastic_sampling=(name == "euler-sde"))


def _ddpm_sampler(name: str, cfg: dict, base: DDPMScheduler | None):
    base = base if base is not None else training_scheduler(cfg)
    config = base.config
    if name == "ddpm":
        return base
    if name == "ddim":
        return DDIMScheduler.from_config(config)
    if name == "ddim-eta":
        sched = DDIMScheduler.from_config(config)
        sched.step = functools.partial(sched.step, eta=1.0)  # eta is an argument of step(), not a setting
        return sched
    if name == "dpm++":
        # inherits thresholding (x0 clipped to [-1, 1]) from the training scheduler; legacy bundles keep theirs
        return DPMSolverMultistepScheduler.from_config(config, algorithm_type="dpmsolver++", solver_order=2)
    if name == "dpm++sde":
        return DPMSolverMultistepScheduler.from_config(config, algorithm_type="sde-dpmsolver++", solver_order=2)
    if name == "unipc":
        return UniPCMultistepScheduler.from_config(config)
    if name == "euler-a":
        return EulerAncestralDiscreteScheduler.from_config(config)
    return HeunDiscreteScheduler.from_config(config, use_karras_sigmas=True)  # heun-karras


def draw_training_timesteps(schedule, n: int, generator: torch.Generator) -> torch.Tensor:
    """Training timesteps of one batch from `generator` alone: whole numbers in [0, T) for DDPM (as always, so runs
    resume and replay exactly), continuous ones for a rectified flow."""
    if isinstance(schedule, RectifiedFlow):
        return schedule.draw_timesteps(n, generator)
    return torch.randint(0, schedule.config.num_train_timesteps, (n,), generator=generator)


def training_target(sched: DDPMScheduler, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """What the network learns to predict: the noise (epsilon), the velocity v = a_t * eps - s_t * x0, or a flow's
    velocity noise - x0."""
    if isinstance(sched, RectifiedFlow):
        return sched.velocity(x0, noise)
    if sched.config.prediction_type == "v_prediction":
        return sched.get_velocity(x0, noise, t)
    return noise


def default_sampler(cfg: dict) -> str:
    """The sampler `generate` uses for a model when none is asked for: its objective's default (samplers.py)."""
    return DEFAULT_SAMPLER["flow" if is_flow(cfg) else "ddpm"]


def preview_sampler(cfg: dict) -> tuple[str, int]:
    """(sampler, steps) of training previews for a model of this objective (samplers.py)."""
    return PREVIEW_SAMPLER["flow" if is_flow(cfg) else "ddpm"]
