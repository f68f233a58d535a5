"""`ctdiffusion utility`: does the synthetic data help a segmenter? Orchestration and the utility.json contract.

Order: find the three pair sets -> refuse test files that are training or synthetic files -> read everything onto
one working grid -> name synthetic near-copies of training CTs -> train the fixed recipe in three arms x K seeds ->
score every model on the held-out real pairs -> intervals, gain, verdict -> DIR/utility.json and the figure.
Nothing is trained before the inputs are checked; utility.json is written once, atomically, at the end.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

from CTDiffusionLib.errors import InputError
from CTDiffusionLib.utility import statistics as stats
from CTDiffusionLib.utility.arms import ARMS, BOTH, REAL, Progress, arm_cases, run_arms
from CTDiffusionLib.utility.scoring import case_mean
from CTDiffusionLib.utility.table import RESULT

log = logging.getLogger("ctdiffusion")
FORMAT = "ctdiffusion-utility/1"


def _arm_entry(dice: np.ndarray, hd95: np.ndarray, structures: list, n_train: int, seed: int) -> dict:
    """dice / hd95: (seeds, cases, structures). Mean Dice over each case's structures, then over the table."""
    per_case = np.apply_along_axis(case_mean, 2, dice)
    mean, ci = stats.mean_and_interval(per_case, seed=seed)
    hd_case = np.apply_along_axis(case_mean, 2, hd95)
    per_structure = {}
    for k, name in enumerate(structures):
        d = dice[:, :, k]
        if not np.isfinite(d).any():
            per_structure[name] = {"dice": None, "dice_ci95": None, "hd95": None, "n_cases": 0}
            continue
        m, c = stats.mean_and_interval(d, seed=seed)
        h = hd95[:, :, k]
        per_structure[name] = {"dice": m, "dice_ci95": c, "hd95": float(np.nanmean(h)) if np.isfinite(h).any()
                               else None, "n_cases": int(np.isfinite(d[0]).sum())}
    return {"dice": mean, "dice_ci95": ci, "hd95": float(np.nanmean(hd_case)) if np.isfinite(hd_case).any() else None,
            "hd95_unit": "mm", "n_train_cases": n_train, "per_structure": per_structure,
            "dice_per_seed": [float(np.nanmean(row)) for row in per_case]}


def verdict_line(gain: dict, counts: dict, copies: list, metric: str = "dice", what: str = "Dice",
                 unit: str = "training cases", tested: str | None = None) -> str:
    lo, hi = gain["ci95"] or (None, None)
    interval = f"95% interval {lo:+.3f} .. {hi:+.3f}" if lo is not None else "no interval"
    tested = tested or f"{counts['test']} held-out real cases"
    text = (f"{gain['verdict']}: adding {counts['synthetic']} synthetic to {counts['train']} real {unit} "
            f"changes the mean {what} on {tested} by {gain[metric]:+.3f} ({interval}; {counts['seeds']} seeds).")
    if copies:
        text += (f" But {len(copies)} of {counts['synthetic']} synthetic samples are near-copies of training "
                 f"samples ({', '.join(c['synthetic'] for c in copies[:10])}{' ...' if len(copies) > 10 else ''}): "
                 "any gain they bring rests on copies of the training data, not on new data.")
    return text


def _check_inputs(train, synthetic, test) -> dict:
    """The three sets as PairCases, after refusing test files that are training or synthetic files."""
    from CTDiffusionLib.utility.honesty import refuse_overlap
    from CTDiffusionLib.utility.volumes import case_files, discover

    found = {"--train": discover(train, "--train"), "--synthetic": discover(synthetic, "--synthetic"),
             "--test": discover(test, "--test")}
    others = {f"{flag} {c.case_id}": case_files(c) for flag in ("--train", "--synthetic") for c in found[flag]}
    refuse_overlap({c.case_id: case_files(c) for c in found["--test"]}, others)
    return found


def run_utility(train, synthetic, test, out, *, seeds: int = 3, ratio: float = 1.0, structures: str | None = None,
                iterations: int | None = None, device: str = "cpu", seed: int = 0, segmenter: str = "monai",
                events=None, stop=None) -> dict:
    """The whole benchmark; writes OUT/utility.json and OUT/figures/utility_dice.png and returns the result.
    segmenter: "monai" (the built-in recipe) or "nnunet" (nnU-Net v2 where installed, utility/nnunet.py; its
    folders go to OUT/nnunet)."""
    import torch

    from CTDiffusionLib.data.pairs import select_structures
    from CTDiffusionLib.runtime import resolve_device
    from CTDiffusionLib.threads import ThreadGovernor
    from CTDiffusionLib.utility import honesty
    from CTDiffusionLib.utility.segmenter import default_iterations, make_recipe
    from CTDiffusionLib.utility.figure import arm_bars
    from CTDiffusionLib.utility.volumes import read_set, structures_for

    t_start = time.time()
    if segmenter == "nnunet":  # before anything is read: an absent nnU-Net is a one-sentence refusal
        from CTDiffusionLib.utility.nnunet import require_installed

        require_installed()
    elif segmenter != "monai":
        raise InputError(f"--segmenter {segmenter} is not a segmenter of the benchmark.", "Use monai or nnunet.")
    if not (np.isfinite(ratio) and ratio > 0):
        raise InputError(f"--ratio {ratio} is not a number above 0.", "Give the synthetic count as a multiple of the "
                         "real count, e.g. --ratio 1.")
    device = str(resolve_device(device))
    threads = torch.get_num_threads()
    # CPU threads from the cores other work leaves free, chosen first right before the near-copy check (its window:
    # reading the inputs): under load, two threads on one free core spent most of the check spinning (measured)
    governor = ThreadGovernor(torch.device(device), first_check_s=0.0)
    try:
        found = _check_inputs(train, synthetic, test)
        chosen = select_structures(found["--train"], structures)
        real_s, grid = read_set(found["--train"], chosen)
        synth_s, _ = read_set(found["--synthetic"], structures_for(found["--synthetic"], chosen, "--synthetic"), grid)
        test_s, _ = read_set(found["--test"], structures_for(found["--test"], chosen, "--test"), grid)
        names = [s.name for s in chosen]
        if events is not None:
            events.emit("progress", phase="utility", stage="near-copy check", step=0, total=None, eta_s=None)
        governor.tick()
        copies = honesty.near_copies(*map(honesty.as_samples, (synth_s, real_s, test_s)), "prostate-ct", device, seed)
        if copies["near_copies"]:
            log.warning("utility: %d synthetic cases are near-copies of training cases", len(copies["near_copies"]))

        by_arm = arm_cases(real_s, synth_s, ratio)
        n_iter = int(iterations or default_iterations(len(real_s)))
        recipe = make_recipe(real_s[0].image.shape, names, n_iter)
        seed_list = [seed + k for k in range(int(seeds))]
        if segmenter == "nnunet":  # progress counts trained models: nnU-Net reports no iterations to us
            from CTDiffusionLib.utility.nnunet import describe, run_nnunet_arms

            described = describe(n_iter, device)
            progress = Progress(events, len(seed_list) * len(by_arm), stop)
            scores = run_nnunet_arms(by_arm, test_s, chosen, n_iter, seed_list, device, Path(out) / "nnunet",
                                     progress, log)
        else:
            described = recipe.describe()
            progress = Progress(events, len(seed_list) * len(by_arm) * n_iter, stop, governor)
            scores = run_arms(by_arm, test_s, len(chosen) + 1, recipe, seed_list, device, progress, log)
    finally:
        torch.set_num_threads(threads)

    arms = {arm: _arm_entry(scores[arm].dice, scores[arm].hd95, names, len(by_arm[arm]), seed) for arm in ARMS}
    per_case = {arm: np.apply_along_axis(case_mean, 2, scores[arm].dice) for arm in ARMS}
    gain = stats.gain(per_case[BOTH], per_case[REAL], seed=seed)
    counts = {"train": len(real_s), "synthetic": len(by_arm["synthetic"]), "synthetic_available": len(synth_s),
              "test": len(test_s), "seeds": len(seed_list)}
    result = {
        "format": FORMAT,
        "task": "segmentation (CT + label pairs)",
        "metric": "dice",
        "segmenter": {**described, "seeds": seed_list, "device": device},
        "structures": [{"name": s.name, "value": k, "sources": list(s.sources)} for k, s in enumerate(chosen, 1)],
        "working_grid_xyz": list(grid),
        "arms": arms,
        "gain": {"dice": gain["dice"], "ci95": gain["ci95"]},
        "verdict": gain["verdict"],
        "verdict_line": verdict_line(gain, counts, copies["near_copies"]),
        "near_copies": copies["near_copies"],
        "near_copy_check": {k: v for k, v in copies.items() if k != "near_copies"},
        "counts": counts,
        "ratio": float(ratio),
        "ratio_used": counts["synthetic"] / counts["train"],
        "cases": {"train": [c.name for c in real_s], "synthetic": [c.name for c in by_arm["synthetic"]],
                  "test": [c.name for c in test_s]},
        "statistics": (f"Dice per test case = mean over the structures it has; arm mean over {len(seed_list)} seeds "
                       f"x {len(test_s)} test cases; 95% intervals from {stats.DRAWS} two-way bootstrap draws "
                       "(test cases and seeds resampled with replacement); the gain is paired by seed and test "
                       "case. Verdict: helps only when the whole interval of the gain is above 0, hurts when below."),
        "dice_table": {arm: per_case[arm].tolist() for arm in ARMS},
        "time_s": None,
    }
    out = Path(out)
    result["figure"] = arm_bars(out, arms, names, f"Dice per arm on {len(test_s)} held-out real cases "
                                                  f"({len(seed_list)} seeds; whiskers: 95% interval)")
    result["time_s"] = round(time.time() - t_start, 1)
    from CTDiffusionLib.events import _clean
    from CTDiffusionLib.runfolder import write_json

    write_json(out / RESULT, _clean(result), exclusive=True)
    return result
