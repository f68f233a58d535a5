"""Sampler names, their default step counts and the guidance default: the one table that the CLI, the Slicer panel
and the engine read.

A model is trained with one objective (config.json / model.json "diffusion" -> "objective"): `ddpm` (noise
prediction or v-prediction on the DDPM schedule) or `flow` (rectified flow: straight paths from data to noise, the
network predicts the velocity). Each sampler belongs to one objective; `generate` picks the objective's default
sampler when none is asked for. Standard library only: the Slicer module imports it at start-up without torch.
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_GUIDANCE = 3.0  # classifier-free guidance weight when a conditional request gives none
# ... and for the CT of a given label map: guidance 3 overshot the contrasts and lowered adherence on the paired
# demo (prostate Dice 0.28 vs 0.59 at w = 1, bladder HU 42 vs 13 against real 8; docs/engine.md "Paired runs")
PAIRED_CT_GUIDANCE = 1.0
OBJECTIVES = ("ddpm", "flow")
DEFAULT_OBJECTIVE = "ddpm"


@dataclass(frozen=True)
class SamplerSpec:
    name: str  # the --sampler value
    label: str  # for people (Slicer's combo box, docs)
    objective: str  # the training objective it samples
    steps: int  # default number of steps
    evaluations_per_step: int = 1  # network evaluations per step (Heun: 2, its last step 1), before guidance doubles


SAMPLERS: dict[str, SamplerSpec] = {spec.name: spec for spec in (
    SamplerSpec("ddpm", "DDPM (full stochastic chain, slow)", "ddpm", 1000),
    SamplerSpec("ddim", "DDIM", "ddpm", 50),
    SamplerSpec("dpm++", "DPM-Solver++ 2M", "ddpm", 25),
    SamplerSpec("dpm++sde", "DPM-Solver++ 2M SDE (stochastic)", "ddpm", 25),
    SamplerSpec("unipc", "UniPC", "ddpm", 25),
    SamplerSpec("euler-a", "Euler ancestral (stochastic)", "ddpm", 25),
    SamplerSpec("heun-karras", "Heun, Karras sigmas", "ddpm", 13, 2),
    SamplerSpec("ddim-eta", "DDIM with eta = 1 (stochastic)", "ddpm", 25),
    SamplerSpec("euler", "Euler (rectified flow)", "flow", 25),
    SamplerSpec("euler-sde", "Euler, stochastic (rectified flow)", "flow", 25),
    SamplerSpec("heun", "Heun (rectified flow)", "flow", 13, 2),
)}

#: What `generate` uses when no --sampler is given, per objective.
DEFAULT_SAMPLER = {"ddpm": "dpm++", "flow": "euler"}
#: What training previews sample with, per objective: cheap and deterministic.
PREVIEW_SAMPLER = {"ddpm": ("ddim", 20), "flow": ("euler", 20)}


def sampler_names(objective: str | None = None) -> list[str]:
    """Every sampler name, or those of one objective, in table order."""
    return [name for name, spec in SAMPLERS.items() if objective in (None, spec.objective)]


def default_steps(name: str) -> int:
    return SAMPLERS[name].steps


def network_evaluations(name: str, steps: int, guided: bool = False) -> int:
    """Forward passes per generated volume: Heun's second evaluation per step (none after its last), and the
    unconditional pass that classifier-free guidance adds to each."""
    per_step = SAMPLERS[name].evaluations_per_step
    evaluations = steps if per_step == 1 else per_step * steps - 1
    return evaluations * (2 if guided else 1)
