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
from CTDiffusionLib.models.grid import check_grid
from CTDiffusionLib.presets import resolve_preset
from CTDiffusionLib.profiles import get_profile
from CTDiffusionLib.runfolder import RUN_FORMAT
from CTDiffusionLib.samplers import DEFAULT_OBJECTIVE
from CTDiffusionLib.textformat import parse_size

CONFIG_FORMAT = RUN_FORMAT


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


def build_config(args, sources: list[str]) -> dict:
    profile = get_profile(args.profile)
    preset_name, preset = resolve_preset(profile, args.preset)
    mode = preset.get("mode", "3d")
    grid = parse_grid(args.grid, mode) if args.grid else list(preset["grid"])
    check_grid(grid, preset["model"], mode)
    training = dict(preset["training"])
    for key in ("batch_size", "lr", "warmup_steps", "checkpoint_every", "sample_every", "seed"):
        value = getattr(args, key, None)
        if value is not None:
            training[key] = value
    training.setdefault("seed", 0)
    training.setdefault("grad_checkpoint", False)
    minutes = getattr(args, "minutes", None)
    if minutes is not None and not (math.isfinite(minutes) and minutes > 0):
        raise InputError(f"--minutes {minutes} must be more than 0.", "For example --minutes 30.")
    training.update({
        "epochs": args.epochs, "steps": args.steps or training["steps"], "minutes": minutes, "lr_decay_from": None,
        "amp": args.amp or training.get("amp", "auto"), "compile": bool(args.compile),
        "grad_checkpoint": bool(args.grad_checkpoint) or training["grad_checkpoint"],
        "weight_decay": 0.0, "grad_clip": 1.0, "keep_checkpoints": 2,
        "cond_drop": 0.15 if args.cond_drop is None else args.cond_drop,
    })
    if not 0.0 <= training["cond_drop"] < 1.0:
        raise InputError(f"--cond-drop {training['cond_drop']} must be in [0, 1).", "0.1-0.2 is typical.")
    val_fraction = 0.2 if args.val_fraction is None else args.val_fraction
    if not 0.0 <= val_fraction < 1.0:
        raise InputError(f"--val-fraction {val_fraction} must be in [0, 1).", "0.2 holds out one case in five.")
    conditions = None
    if args.conditions:
        conditions = (str(Path(args.conditions).resolve()) if args.conditions.lower().endswith(".csv")
                      else [k.strip() for k in args.conditions.split(",") if k.strip()])
    return {
        "format": CONFIG_FORMAT,
        "profile": profile.name,
        "preset": preset_name,
        "data": {"sources": sources, "grid": grid, "mode": mode, "val_fraction": val_fraction,
                 "augment": parse_augment(args.augment, preset["augment"]), "conditions": conditions},
        "intensity": profile.intensity_config(),
        "model": preset["model"],
        "diffusion": _diffusion_config(args, preset),
        "training": training,
    }


def _diffusion_config(args, preset: dict) -> dict:
    objective = getattr(args, "objective", None) or preset.get("objective", DEFAULT_OBJECTIVE)
    if objective == "flow" and (args.schedule or args.prediction):
        raise InputError("--schedule and --prediction set up the ddpm objective; a rectified flow (--objective flow) "
                         "has neither.", "Drop them, or train with --objective ddpm.")
    return default_diffusion_config(
        args.schedule or preset.get("schedule", "linear"), args.prediction or preset.get("prediction", "v"),
        preset.get("min_snr_gamma") if args.min_snr_gamma is None else args.min_snr_gamma, objective)


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
