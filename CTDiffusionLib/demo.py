"""`ctdiffusion demo`: phantoms -> train (tiny, CPU) -> generate -> evaluate, in a few minutes on 2 cores.

This module only plans: `demo_stages` returns the same sub-command lines a user would type, and the CLI runs them
in-process (so demo does not import the CLI), then prints `demo_summary`.
"""

from __future__ import annotations

from pathlib import Path

from CTDiffusionLib.errors import CTDiffusionError, InputError
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


def _length(spec: dict, steps: int | None, minutes: float | None) -> list:
    """--steps N (with checkpoints and previews spread over it) or --minutes M (the preset's own cadence); the
    caller's choice first, then the profile's."""
    if minutes is not None:
        return ["--minutes", f"{minutes:g}"]
    steps = steps or spec.get("steps")
    if steps:
        return ["--steps", steps, "--checkpoint-every", max(1, steps // 4), "--sample-every", max(1, steps // 2)]
    return ["--minutes", spec["minutes"]]


def demo_stages(profile: str, out, device: str = "cpu", steps: int | None = None,
                minutes: float | None = None) -> list[tuple[str, list[str]]]:
    """(stage name, CLI arguments) for each stage of the demo in `out` (which must be new or empty)."""
    spec = DEMO[profile]
    out = Path(out).resolve()
    if out.exists() and any(out.iterdir()):
        raise InputError(f"The demo folder {out} is not empty.", "Remove it or pass --out NEW_FOLDER.")
    stages = {
        "phantoms (training set)": ["phantoms", "--profile", profile, "--num", spec["train"], "--out",
                                    out / "data" / "train", "--size", spec["size"], "--seed", 0],
        "phantoms (held-out real set)": ["phantoms", "--profile", profile, "--num", spec["heldout"], "--out",
                                         out / "data" / "heldout", "--size", spec["size"], "--seed", 1000],
        "train": ["train", "--profile", profile, "--data", out / "data" / "train", "--out", out / "run",
                  "--preset", spec["preset"], *_length(spec, steps, minutes), "--batch-size", spec["batch"], "--device",
                  device, *(["--grid", spec["grid"]] if spec["grid"] else []),
                  *(["--amp", spec["amp"]] if spec.get("amp") else []),
                  *(["--objective", spec["objective"]] if spec.get("objective") else [])],
        "generate": ["generate", "--model", out / "run", "--num", 8, "--out", out / "generated", "--seed", 0,
                     "--device", device, *(["--sampler", spec["sampler"][0], "--steps", spec["sampler"][1]]
                                           if spec.get("sampler") else [])],
        "evaluate": ["evaluate", "--real", out / "data" / "heldout", "--train", out / "data" / "train",
                     "--generated", out / "generated", "--out", out / "report", "--run", out / "run",
                     "--device", device],
    }
    return [(name, [str(a) for a in argv]) for name, argv in stages.items()]


def paired_demo_stages(out, device: str = "cpu", steps: int | None = None,
                       minutes: float | None = None) -> list[tuple[str, list[str]]]:
    """The paired demo's stages (the same sub-commands a user would type) in `out` (new or empty)."""
    spec = PAIRED_DEMO
    out = Path(out).resolve()
    if out.exists() and any(out.iterdir()):
        raise InputError(f"The demo folder {out} is not empty.", "Remove it or pass --out NEW_FOLDER.")
    profile, sampling = spec["profile"], ["--sampler", spec["sampler"][0], "--steps", spec["sampler"][1]]
    stages = {
        "phantom pairs (training set)": ["phantoms", "--profile", profile, "--with-labels", "--num", spec["train"],
                                         "--out", out / "data" / "train", "--size", spec["size"], "--seed", 0],
        "phantom pairs (held-out set)": ["phantoms", "--profile", profile, "--with-labels", "--num", spec["heldout"],
                                         "--out", out / "data" / "heldout", "--size", spec["size"], "--seed", 1000],
        "train (CT model, then label model)": [
            "train", "--profile", profile, "--with-labels", "--structures", spec["structures"], "--data",
            out / "data" / "train", "--out", out / "run", "--preset", spec["preset"], *_length(spec, steps, minutes),
            "--batch-size", spec["batch"], "--device", device],
        "generate (CT for the held-out label maps)": [
            "generate", "--model", out / "run", "--from-labels", out / "data" / "heldout", "--out",
            out / "generated", "--seed", 0, "--device", device, *sampling],
        "generate (new pairs)": ["generate", "--model", out / "run", "--num", spec["new_pairs"], "--out",
                                 out / "new_pairs", "--seed", 0, "--device", device, *sampling],
    }
    return [(name, [str(a) for a in argv]) for name, argv in stages.items()]


def paired_demo_summary(out, device: str, seconds: float) -> str:
    """Where the paired demo's results are, and the HU per structure of generated vs held-out real CT (also
    written to OUT/structure_hu.json)."""
    import json

    from CTDiffusionLib.data.paired_dataset import as_structures
    from CTDiffusionLib.evaluation.structures import compare_structure_hu, format_table

    out = Path(out).resolve()
    config = read_config(out / "run")
    comparison = compare_structure_hu(out / "data" / "heldout", out / "generated",
                                      as_structures(config["labels"]["structures"]))
    (out / "structure_hu.json").write_text(json.dumps(comparison, indent=2), encoding="utf-8")
    steps = [read_config(folder)["training"]["steps"] for folder in (out / "run", out / "run" / "labels")]
    return f"""
CTDiffusion paired demo finished in {seconds:.0f} s ({steps[0]} CT-model and {steps[1]} label-model steps on {device}).
  training pairs            {out / 'data' / 'train'}
  run folder                {out / 'run'}   (CT model in model/, label model in labels/model/)
  CT for held-out labels    {out / 'generated'}   (nnU-Net raw layout)
  new pairs                 {out / 'new_pairs'}   (nnU-Net raw layout)
  HU per structure          {out / 'structure_hu.json'}

{format_table(comparison)}
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
