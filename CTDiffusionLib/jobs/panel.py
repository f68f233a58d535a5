"""What the Slicer module's Training and Generation panels offer and send, decided from the engine's own tables.

- The profile, preset and sampler combos are filled from CTDiffusionLib.profiles (labels, default
  preset), CTDiffusionLib.presets (PRESETS) and the sampler table here, never from a hand copy in the GUI.
- Choosing a preset puts that preset's own length, batch size, learning rate, noise schedule and augmentation
  into the panel (`preset_panel`), so what the panel shows is what the engine will use.
- The command sends the preset by name and, on top of it, only the values the user changed
  (`training_overrides`); likewise a sampler's step count is sent only when it differs from that sampler's
  default (`sampling_steps_override`).

Stdlib + presets (which imports nothing heavy): the panel loads before torch is installed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Mapping

from CTDiffusionLib.presets import PRESETS
from CTDiffusionLib.profiles import PROFILES, get_profile
from CTDiffusionLib.requests import condition_text
from CTDiffusionLib.samplers import DEFAULT_SAMPLER as DEFAULT_SAMPLER_OF, SAMPLERS

AUGMENTATIONS = ("zoom", "flip", "rotate")
SCHEDULES = (("Linear", "linear"), ("Cosine", "cosine"))
#: Default sampling steps and labels per sampler, from the one sampler table (CTDiffusionLib/samplers.py). The
#: first choice, "" (no --sampler sent), lets `generate` use the model's own: its objective's default sampler, whose
#: default step count is the same for both objectives.
MODEL_DEFAULT = ""
SAMPLER_STEPS = {MODEL_DEFAULT: SAMPLERS[DEFAULT_SAMPLER_OF["ddpm"]].steps,
                 **{name: spec.steps for name, spec in SAMPLERS.items()}}
SAMPLER_LABELS = {MODEL_DEFAULT: "The model's own (" + ", ".join(
    f"{SAMPLERS[name].label} {SAMPLERS[name].steps} for {objective} models" for objective, name in
    DEFAULT_SAMPLER_OF.items()) + ")", **{name: spec.label for name, spec in SAMPLERS.items()}}
DEFAULT_SAMPLER = MODEL_DEFAULT


def profile_choices() -> list[tuple[str, str]]:
    """(label, profile) for every profile the engine has presets for, in the profiles' order."""
    return [(profile.label, name) for name, profile in PROFILES.items() if name in PRESETS]


def default_preset(profile: str) -> str:
    return get_profile(profile).default_preset


def preset_name(profile: str, name: str | None) -> str:
    """The preset the panel shows and sends: `name` if the profile has it, else the profile's default."""
    return name if name in PRESETS.get(profile, {}) else default_preset(profile)


def _describe(preset: dict) -> str:
    training = preset["training"]
    grid = "x".join(str(g) for g in preset["grid"])
    return f"{grid}, {training['steps']} steps, batch {training['batch_size']}"


def preset_choices(profile: str) -> list[tuple[str, str]]:
    """(label, preset) for the profile's presets, the default first, each label saying what it trains."""
    names = sorted(PRESETS[profile], key=lambda n: n != default_preset(profile))
    return [(f"{name} ({_describe(PRESETS[profile][name])})" + (" - default" if name == default_preset(profile)
                                                                  else ""), name) for name in names]


@dataclass(frozen=True)
class TrainingPanel:
    """The values the Training panel shows (and the parameter node stores)."""

    length_mode: str  # "steps" | "epochs" | "minutes" (a time budget)
    length: int
    batch_size: int
    lr: float
    schedule: str
    augment: tuple[str, ...]  # subset of AUGMENTATIONS, in that order

    def with_augment(self, names) -> "TrainingPanel":
        return replace(self, augment=tuple(a for a in AUGMENTATIONS if a in set(names)))


def _preset_augment(preset: dict) -> tuple[str, ...]:
    aug = preset.get("augment") or {}
    on = {"zoom": bool(aug.get("zoom")), "flip": bool(aug.get("flip")), "rotate": bool(aug.get("rotate_deg"))}
    return tuple(a for a in AUGMENTATIONS if on[a])


def preset_panel(profile: str, preset: str | None) -> TrainingPanel:
    """What the panel shows right after choosing `preset`: the preset's own values."""
    p = PRESETS[profile][preset_name(profile, preset)]
    training = p["training"]
    return TrainingPanel(length_mode="steps", length=int(training["steps"]), batch_size=int(training["batch_size"]),
                         lr=float(training["lr"]), schedule=p.get("schedule", "linear"), augment=_preset_augment(p))


DEFAULT_MINUTES = 60  # what Length shows on switching to minutes: a step count read as minutes would be days


def length_for_mode(profile: str, preset: str | None, mode: str, old_mode: str, length: int) -> int:
    """The Length value after the user switches its unit from `old_mode` to `mode`: the preset's own step count for
    steps, DEFAULT_MINUTES for minutes, the value as it was when the unit did not change or for epochs."""
    if mode == old_mode or mode == "epochs":
        return int(length)
    return preset_panel(profile, preset).length if mode == "steps" else DEFAULT_MINUTES


def training_overrides(profile: str, preset: str | None, panel: TrainingPanel) -> dict:
    """TrainRequest keyword arguments: the preset by name, plus each panel value that differs from it."""
    name = preset_name(profile, preset)
    base = preset_panel(profile, name)
    out: dict = {"preset": name}
    if panel.length_mode in ("epochs", "minutes"):
        out[panel.length_mode] = int(panel.length)
    elif int(panel.length) != base.length:
        out["steps"] = int(panel.length)
    if int(panel.batch_size) != base.batch_size:
        out["batch_size"] = int(panel.batch_size)
    if not math.isclose(float(panel.lr), base.lr, rel_tol=1e-9):
        out["lr"] = float(panel.lr)
    if panel.schedule != base.schedule:
        out["schedule"] = panel.schedule
    if tuple(panel.augment) != base.augment:
        out["augment"] = list(panel.augment)  # [] -> "none"
    return out


def sampler_choices() -> list[tuple[str, str]]:
    return [(SAMPLER_LABELS[name], name) for name in SAMPLER_STEPS]


def sampler_default_steps(sampler: str) -> int:
    return SAMPLER_STEPS.get(sampler, SAMPLER_STEPS[DEFAULT_SAMPLER])


def sampling_steps_override(sampler: str, steps: int | None) -> int | None:
    """--steps for `generate`: None (the engine's default for this sampler) unless the user chose another count."""
    if not steps or int(steps) == sampler_default_steps(sampler):
        return None
    return int(steps)


def guidance_scale(condition: Mapping[str, str] | str | None, scale: float | None) -> float | None:
    """The Generation section's guidance slider is sent only with a condition chosen (combo values, or the request's
    text): an unconditional model has nothing to guide, and a paired model's CT keeps its own default
    (samplers.PAIRED_CT_GUIDANCE)."""
    return None if not condition_text(condition) or scale is None else float(scale)
