"""`ctdiffusion demo`: phantoms -> train (tiny, CPU) -> generate -> evaluate, in a few minutes on 2 cores.

This module only plans: `demo_stages` builds each stage's request and returns its command line (the same a user would
type); the CLI runs them in-process (so demo does not import the CLI), then prints `demo_summary`.
"""

from __future__ import annotations

from pathlib import Path

from CTDiffusionLib.errors import CTDiffusionError, InputError
from CTDiffusionLib.requests import EvaluateRequest, GenerateRequest, PhantomsRequest, TrainRequest
from CTDiffusionLib.runfolder import read_config

# per profile: phantom size (whole field of view, coarse pixels), preset, grid, training length (a step count, or
# minutes of training: both demos train to a time budget, so that set-up + the CT demo stay inside 15 minutes on a
# slow 2-core host and a faster one gets more steps), batch, and a sampler (name, steps) where the generate stage
# should not use the model's own default. The CT demo trains a rectified flow (`--objective flow`) and samples it
# with Euler in 25 steps: at equal training steps it gave fewer report fails than the DDPM v-prediction model
# sampled with DDPM-250 (3-4 vs 5 of 12; HU W1 17-19 vs 25) for a tenth of the network evaluations
# (docs/performance.md "Few-step sampling"). bf16 (`--amp on`) on its fixed, exercised shapes; `auto` is fp32 on CPUs
# (runtime.autocast_dtype says why).
DEMO = {
    "prostate-ct": {"size": "48x48x12", "preset": "demo", "grid": None, "minutes": 11, "batch": 2, "train": 16,
                    "heldout": 8, "objective": "flow", "amp": "on"},
    "cardiac-masks": {"size": "128x128x8", "preset": "demo", "grid": None, "minutes": 4, "batch": 16, "train": 15,
                      "heldout": 5},
}

# The paired demo (`demo --with-labels`, issue 26): phantom CT + organ-label pairs at the CT demo's grid; a time budget
# split in half between the CT model (conditioned on the label map) and the label model; then the CT for each
# held-out label map and a few new pairs. Bone is learned as one structure (femur + hip bone + sacrum).
PAIRED_DEMO = {"profile": "prostate-ct", "size": "48x48x12", "preset": "demo", "minutes": 8, "batch": 2, "train": 16,
               "heldout": 8, "new_pairs": 4, "sampler": ("ddpm", 250),
               "structures": "prostate,bladder,rectum,seminal_vesicles,bone=femur+hip_bone+sacrum,fat,muscle"}


def _length(spec: dict, steps: int | None, minutes: float | None) -> dict:
    """TrainRequest fields for the length: steps N (with checkpoints and previews spread over it) or minutes M (the
    preset's own cadence); the caller's choice first, then the profile's."""
    if minutes is not None:
        return {"minutes": float(minutes)}
    steps = steps or spec.get("steps")
    if steps:
        return {"steps": steps, "checkpoint_every": max(1, steps // 4), "sample_every": max(1, steps // 2)}
    return {"minutes": float(spec["minutes"])}


def _new_demo_folder(out) -> Path:
    out = Path(out).resolve()
    if out.exists() and any(out.iterdir()):
        raise InputError(f"The demo folder {out} is not empty.", "Remove it or pass --out NEW_FOLDER.")
    return out


def _phantom_sets(spec: dict, profile: str, out: Path, with_labels: bool = False) -> list[PhantomsRequest]:
    """The training set (seed 0) and the held-out real set (seed 1000) of the demo's phantoms."""
    return [PhantomsRequest(profile=profile, num=spec[part], out=str(out / "data" / part), size=spec["size"],
                            seed=seed, with_labels=with_labels) for part, seed in (("train", 0), ("heldout", 1000))]


def demo_stages(profile: str, out, device: str = "cpu", steps: int | None = None,
                minutes: float | None = None) -> list[tuple[str, list[str]]]:
    """(stage name, CLI arguments) for each stage of the demo in `out` (which must be new or empty)."""
    spec, out = DEMO[profile], _new_demo_folder(out)
    train_set, heldout_set = _phantom_sets(spec, profile, out)
    sampler, sampling_steps = spec.get("sampler") or (None, None)
    stages = {
        "phantoms (training set)": train_set,
        "phantoms (held-out real set)": heldout_set,
        "train": TrainRequest(profile=profile, data=train_set.out, out=str(out / "run"), preset=spec["preset"],
                              batch_size=spec["batch"], device=device, grid=spec["grid"], amp=spec.get("amp"),
                              objective=spec.get("objective"), **_length(spec, steps, minutes)),
        "generate": GenerateRequest(model=str(out / "run"), num=8, out=str(out / "generated"), device=device,
                                    sampler=sampler, steps=sampling_steps),
        "evaluate": EvaluateRequest(real=heldout_set.out, train=train_set.out, generated=str(out / "generated"),
                                    out=str(out / "report"), run=str(out / "run"), device=device),
    }
    return [(name, request.argv()) for name, request in stages.items()]


def paired_demo_stages(out, device: str = "cpu", steps: int | None = None,
                       minutes: float | None = None) -> list[tuple[str, list[str]]]:
    """The paired demo's stages (the same sub-commands a user would type) in `out` (new or empty)."""
    spec, out = PAIRED_DEMO, _new_demo_folder(out)
    train_set, heldout_set = _phantom_sets(spec, spec["profile"], out, with_labels=True)
    sampler, sampling_steps = spec["sampler"]
    stages = {
        "phantom pairs (training set)": train_set,
        "phantom pairs (held-out set)": heldout_set,
        "train (CT model, then label model)": TrainRequest(
            profile=spec["profile"], with_labels=True, structures=spec["structures"], data=train_set.out,
            out=str(out / "run"), preset=spec["preset"], batch_size=spec["batch"], device=device,
            **_length(spec, steps, minutes)),
        "generate (CT for the held-out label maps)": GenerateRequest(
            model=str(out / "run"), from_labels=heldout_set.out, out=str(out / "generated"), device=device,
            sampler=sampler, steps=sampling_steps),
        "generate (new pairs)": GenerateRequest(model=str(out / "run"), num=spec["new_pairs"],
                                                out=str(out / "new_pairs"), device=device, sampler=sampler,
                                                steps=sampling_steps),
        "evaluate (CT for the held-out label maps)": EvaluateRequest(
            real=heldout_set.out, train=train_set.out, generated=str(out / "generated"), out=str(out / "report"),
            run=str(out / "run"), device=device),
    }
    return [(name, request.argv()) for name, request in stages.items()]


def paired_demo_summary(out, device: str, seconds: float) -> str:
    """Where the paired demo's results are, and its report's per-structure table: the HU under each structure and
    the adherence Dice, generated vs held-out real (evaluation/structure_table.py)."""
    from CTDiffusionLib.evaluation.structure_table import structure_rows
    from CTDiffusionLib.runfolder import ReportFolder, read_json

    out = Path(out).resolve()
    report = ReportFolder(out / "report")
    rows = structure_rows(read_json(report.metrics, "the paired demo's report"))
    table = "\n".join(f"  {r['structure']:<18} {r['hu_generated']:>20} {r['hu_real']:>20} {r['dice_generated']:>22} "
                      f"{r['dice_real']:>22}" for r in rows)
    steps = [read_config(folder)["training"]["steps"] for folder in (out / "run", out / "run" / "labels")]
    return f"""
CTDiffusion paired demo finished in {seconds:.0f} s ({steps[0]} CT-model and {steps[1]} label-model steps on {device}).
  training pairs            {out / 'data' / 'train'}
  run folder                {out / 'run'}   (CT model in model/, label model in labels/model/)
  CT for held-out labels    {out / 'generated'}   (nnU-Net raw layout)
  new pairs                 {out / 'new_pairs'}   (nnU-Net raw layout)
  report                    {report.report}

  {'structure':<18} {'HU generated':>20} {'HU real':>20} {'Dice generated':>22} {'Dice real-vs-real':>22}
{table}
"""


def demo_summary(profile: str, out, device: str, seconds: float) -> str:
    """Where every result of a finished demo is."""
    out = Path(out).resolve()
    try:
        steps = read_config(out / "run")["training"]["steps"]
    except (CTDiffusionError, KeyError):
        steps = "?"
    return f"""
CTDiffusion demo finished in {seconds:.0f} s ({profile}, {steps} training steps on {device}).
  training data     {out / 'data' / 'train'}
  run folder        {out / 'run'}   (config.json, events.jsonl, checkpoints/, model/, samples/)
  model bundle      {out / 'run' / 'model'}
  generated volumes {out / 'generated'}
  quality report    {out / 'report' / 'report.html'}
  metrics           {out / 'report' / 'metrics.json'}
"""
