"""The run's fully resolved configuration (config.json): preset + command-line overrides, enough to reproduce.

config.json stays a plain JSON document (old run folders must keep resuming); `TrainingConfig` is the typed view
of its "training" section that the trainer reads.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path

from CTDiffusionLib.data.augment import parse_augment
from CTDiffusionLib.diffusion.schedulers import default_diffusion_config
from CTDiffusionLib.errors import InputError
from CTDiffusionLib.models.grid import CONTROLNET_TYPE, check_grid
from CTDiffusionLib.presets import resolve_preset
from CTDiffusionLib.profiles import get_profile
from CTDiffusionLib.requests import TrainRequest
from CTDiffusionLib.runfolder import RUN_FORMAT
from CTDiffusionLib.samplers import DEFAULT_OBJECTIVE
from CTDiffusionLib.textformat import parse_size

CONFIG_FORMAT = RUN_FORMAT
VAL_FRACTION = 0.2  # share of cases held out for validation when the request gives none


@dataclass(frozen=True)
class TrainingConfig:
    """config.json "training", typed. Keys missing from older run folders take the defaults below; keys this
    version does not know are left in the JSON untouched."""

    batch_size: int
    lr: float
    warmup_steps: int
    steps: int
    ema_decay: float
    checkpoint_every: int
    sample_every: int = 0
    seed: int = 0
    epochs: int | None = None
    amp: str = "auto"
    compile: bool = False
    grad_checkpoint: bool = False
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    keep_checkpoints: int = 2
    cond_drop: float = 0.15
    channels_last: bool = True
    attention: str = "auto"  # models/attention.py: auto (fused SDPA) | flash | efficient | math | plain
    minutes: float | None = None  # --minutes: a wall-clock budget (training/budget.py) instead of a step count
    lr_decay_from: int | None = None  # step where the cosine decay starts (None: at the end of warm-up)
    loss: str = "mse"  # diffusion/loss.py LOSSES: mse, or smooth_l1 (the mask report's recipe, preset report2d)

    @property
    def budget_open(self) -> bool:
        """A --minutes run whose length is not fixed yet (fixed once its speed is measured)."""
        return self.minutes is not None and self.lr_decay_from is None

    @classmethod
    def from_dict(cls, training: dict) -> TrainingConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in training.items() if k in names})


def parse_grid(text: str, mode: str) -> list[int]:
    dims = 2 if mode == "2d" else 3
    return list(parse_size(text, "--grid", (dims,), f"this preset's {mode} mode"))


def training_defaults() -> dict:
    """TrainingConfig's own defaults (a new run writes them into config.json, so the run records what it used)."""
    return {f.name: f.default for f in dataclasses.fields(TrainingConfig) if f.default is not dataclasses.MISSING}


def build_config(request: TrainRequest, sources: list[str]) -> dict:
    """A new run's config.json: the preset, then the request's values on top (the request checked them)."""
    profile = get_profile(request.profile)
    preset_name, preset = resolve_preset(profile, request.preset)
    mode = preset.get("mode", "3d")
    grid = parse_grid(request.grid, mode) if request.grid else list(preset["grid"])
    check_grid(grid, preset["model"], mode)
    training = {**training_defaults(), **preset["training"]}
    for key in ("batch_size", "lr", "warmup_steps", "checkpoint_every", "sample_every", "seed", "amp", "cond_drop",
                "minutes", "epochs", "steps"):
        value = getattr(request, key)
        if value is not None:
            training[key] = value
    training["compile"] = bool(request.compile)
    training["grad_checkpoint"] = bool(request.grad_checkpoint) or bool(training["grad_checkpoint"])
    conditions = None
    if request.conditions:
        conditions = (str(Path(request.conditions).resolve()) if request.conditions.lower().endswith(".csv")
                      else [k.strip() for k in request.conditions.split(",") if k.strip()])
    return {
        "format": CONFIG_FORMAT,
        "profile": profile.name,
        "preset": preset_name,
        "model": _network(preset_name, preset, request),
        "data": {"sources": sources, "grid": grid, "mode": mode,
                 "val_fraction": VAL_FRACTION if request.val_fraction is None else request.val_fraction,
                 "augment": parse_augment(request.augment, preset["augment"]), "conditions": conditions},
        "intensity": profile.intensity_config(),
        "diffusion": _diffusion_config(request, preset),
        "training": training,
    }


def _network(preset_name: str, preset: dict, request: TrainRequest) -> dict:
    """The preset's network; with --label-conditioning controlnet wrapped in a ControlNet branch (models/controlnet.py)
    whose label channels training/paired.py adds with the structures."""
    if request.label_conditioning != "controlnet":
        return preset["model"]
    if preset["model"]["type"] != "aniso_unet":
        raise InputError(f"--label-conditioning controlnet needs a preset of CTDiffusion's own network; "
                         f"{preset_name} uses {preset['model']['type']}.", "Use --preset demo, default or native512.")
    return {"type": CONTROLNET_TYPE, "kwargs": {**preset["model"]["kwargs"], "control_channels": 0}}


def _diffusion_config(request: TrainRequest, preset: dict) -> dict:
    objective = request.objective or preset.get("objective", DEFAULT_OBJECTIVE)
    if objective == "flow" and (request.schedule or request.prediction):
        raise InputError("--schedule and --prediction set up the ddpm objective; a rectified flow (--objective flow) "
                         "has neither.", "Drop them, or train with --objective ddpm.")
    return default_diffusion_config(
        request.schedule or preset.get("schedule", "linear"), request.prediction or preset.get("prediction", "v"),
        preset.get("min_snr_gamma") if request.min_snr_gamma is None else request.min_snr_gamma, objective)


#: The length of a --minutes run before its speed is measured: the loop runs until the budget fixes the real one.
OPEN_LENGTH = 2**62


def total_steps(training: TrainingConfig, num_train_samples: int) -> tuple[int, int]:
    """(total optimisation steps, steps per epoch); --epochs converts via the training-set size; an open --minutes
    budget has no length yet (OPEN_LENGTH)."""
    per_epoch = max(1, math.ceil(num_train_samples / training.batch_size))
    if training.budget_open:
        return OPEN_LENGTH, per_epoch
    steps = training.epochs * per_epoch if training.epochs else training.steps
    return steps, per_epoch
