"""The GPU suite's quality rows: the training objective at 256x256x26 (issue 29 item 7) and the utility benchmark at a
GPU-sized grid (issue 27 item 7). Called by gpu_suite.py (`--only objectives,utility`); every step goes through the
project's CLI, as users run it.

objectives  16 training and 8 held-out CT phantoms at the `default` preset's grid; `train --preset default` once with
            `--objective ddpm` (the preset's v-prediction DDPM) and once with `--objective flow`, each for the same
            time budget (`--minutes`); then 4 volumes per row, sampled and evaluated by the quality report:
            DDPM model with DPM-Solver++ 25 and with DDPM 250 (the reference), flow model with Euler 25.
utility     phantom pairs at the same grid: 16 real training pairs, 16 synthetic (fresh phantom pairs from another
            seed: a stand-in for a trained paired model's output, which the suite has no time to train), 8 held-out
            test pairs; `ctdiffusion utility --seeds 2`: wall time, the three arms' Dice with intervals, the verdict.
--dry-run: the `tiny` preset on 48x48x12 phantoms, 4 training steps, 2 volumes per row, 5 segmenter iterations: the
same code path on any machine in a few minutes, measuring nothing.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from CTDiffusionLib.events import read_events
from CTDiffusionLib.samplers import network_evaluations
from sampler_table import one_report

# (objective, sampler, steps): what one GPU run compares
OBJECTIVE_ROWS = (("ddpm", "dpm++", 25), ("ddpm", "ddpm", 250), ("flow", "euler", 25))
WARMUP_S = 20.0  # training progress in the first seconds (start-up, cuDNN autotuning) is left out of steps/s


def sizes(dry: bool) -> dict:
    if dry:
        return {"preset": "tiny", "size": "48x48x12", "train": 6, "heldout": 4, "num": 2, "length": ["--steps", "4"],
                "pairs": (4, 4, 2), "iterations": ["--iterations", "5"]}
    return {"preset": "default", "size": "256x256x26", "train": 16, "heldout": 8, "num": 4, "length": None,
            "pairs": (16, 16, 8), "iterations": []}


def steps_per_s(run: Path) -> dict:
    """Training speed from the run's events: steps over seconds after WARMUP_S (all of them for a short run)."""
    progress = [e for e in read_events(run / "events.jsonl") if e.get("event") == "progress"
                and e.get("phase") == "train"]
    if not progress:
        return {"steps": 0, "steps_per_s": None}
    steady = [e for e in progress if e["time"] >= progress[0]["time"] + WARMUP_S]
    steady = steady if len(steady) >= 2 else progress
    span = steady[-1]["time"] - steady[0]["time"]
    rate = (steady[-1]["step"] - steady[0]["step"]) / span if span > 0 else None
    return {"steps": progress[-1]["step"], "steps_per_s": rate}


def ct_sets(cli, work: Path, dry: bool) -> tuple[Path, Path]:
    s = sizes(dry)
    train, heldout = work / "ct_train", work / "ct_heldout"
    for folder, num, seed in ((train, s["train"], 0), (heldout, s["heldout"], 1000)):
        if not folder.is_dir():
            cli(["phantoms", "--profile", "prostate-ct", "--num", str(num), "--out", str(folder), "--size", s["size"],
                 "--seed", str(seed)])
    return train, heldout


def train_objective(cli, work: Path, objective: str, device_flag: str, dry: bool, minutes: float) -> dict:
    s = sizes(dry)
    train, _ = ct_sets(cli, work, dry)
    run = work / f"run_{objective}"
    t0 = time.perf_counter()
    cli(["train", "--profile", "prostate-ct", "--data", str(train), "--out", str(run), "--preset", s["preset"],
         "--objective", objective, *(s["length"] or ["--minutes", f"{minutes:g}"]), "--val-fraction", "0",
         "--sample-every", "0", "--seed", "0", "--device", device_flag])
    config = json.loads((run / "config.json").read_text(encoding="utf-8"))
    return {"run": str(run), "preset": s["preset"], "grid": config["data"]["grid"],
            "diffusion": config.get("diffusion"), "budget": s["length"] or ["--minutes", minutes],
            "wall_seconds": time.perf_counter() - t0, **steps_per_s(run)}


def objective_row(cli, work: Path, objective: str, sampler: str, steps: int, device_flag: str, dry: bool) -> dict:
    train, heldout = ct_sets(cli, work, dry)
    run = work / f"run_{objective}"
    if not (run / "model").is_dir():
        raise RuntimeError(f"no trained {objective} model (its training row failed)")
    report = one_report(run, heldout, train, work / f"{objective}_{sampler}_{steps}", sampler, steps, seed=0,
                        num=sizes(dry)["num"], device=device_flag)
    return {"objective": objective, "sampler": sampler, "steps": steps,
            "network_evaluations": network_evaluations(sampler, steps), "volumes": sizes(dry)["num"], **report}


def utility_row(cli, work: Path, device_flag: str, dry: bool) -> dict:
    s = sizes(dry)
    sets = {}
    for name, num, seed in zip(("train", "synthetic", "test"), s["pairs"], (10, 20, 30)):
        sets[name] = work / f"pairs_{name}"
        cli(["phantoms", "--profile", "prostate-ct", "--with-labels", "--num", str(num), "--out", str(sets[name]),
             "--size", s["size"], "--seed", str(seed)])
    out = work / "utility"
    t0 = time.perf_counter()
    cli(["utility", "--train", str(sets["train"]), "--synthetic", str(sets["synthetic"]), "--test", str(sets["test"]),
         "--out", str(out), "--seeds", "2", "--device", device_flag, *s["iterations"]])
    seconds = time.perf_counter() - t0
    result = json.loads((out / "utility.json").read_text(encoding="utf-8"))
    arms = {arm: {"dice": v["dice"], "dice_ci95": v["dice_ci95"]} for arm, v in result["arms"].items()}
    return {"pairs": dict(zip(("train", "synthetic", "test"), s["pairs"])), "phantom_size": s["size"],
            "working_grid_xyz": result.get("working_grid_xyz"), "seeds": 2,
            "iterations": result["segmenter"].get("iterations"), "seconds": seconds, "arms": arms,
            "gain": result["gain"], "verdict": result["verdict"]}
