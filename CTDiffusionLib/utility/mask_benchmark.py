"""`ctdiffusion utility` for cardiac masks: does adding generated masks help a pathology classifier, and does the
model draw the group it was asked for?

--train and --test are real ACDC-layout folders (the group comes from each patient's Info.cfg); --synthetic is a
folder written by `generate` from a model conditioned on the group (the sidecars' "condition" names the group each
mask was asked for). Every mask is brought to the generated masks' grid with the profile's own preprocessing
(evaluation/inputs.py), so real and generated masks look alike to the classifier.

Two questions, one run:
  utility       the three arms (real / synthetic / real+synthetic) x K seeds, accuracy on held-out real patients,
                intervals, gain and verdict as for CT (statistics.py); the unit resampled is the patient (all its
                slices and frames score together: they are not independent).
  conditioning  the real arm's classifiers read the generated masks: accuracy per requested group. A model that
                follows its condition scores like the classifier does on real masks of that group.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

from CTDiffusionLib.errors import InputError
from CTDiffusionLib.utility import statistics as stats
from CTDiffusionLib.utility.arms import ARMS, BOTH, REAL, SYNTHETIC, Progress, arm_cases

log = logging.getLogger("ctdiffusion")


def is_generated_masks(folder) -> bool:
    """A folder of generated cardiac masks: a sidecar JSON naming the cardiac-masks profile."""
    import json

    for side in sorted(Path(folder).glob("*.json"))[:5]:
        try:
            if json.loads(side.read_text(encoding="utf-8")).get("profile") == "cardiac-masks":
                return True
        except (OSError, ValueError, AttributeError):
            continue
    return False


def _group(sample, flag: str) -> str:
    from CTDiffusionLib.data.discovery import ACDC_GROUPS

    group = (sample.condition or {}).get("group")
    if group not in ACDC_GROUPS:
        raise InputError(f"{flag}: {sample.name} has no ACDC group ({'/'.join(ACDC_GROUPS)}) in its "
                         f"{'sidecar condition' if flag == '--synthetic' else 'Info.cfg'}.",
                         "Generate with a group-conditioned model (generate --condition group=DCM), and give "
                         "ACDC-layout folders with Info.cfg for --train and --test.")
    return group


def _load(train, synthetic, test) -> tuple:
    from CTDiffusionLib.data.discovery import discover_cases
    from CTDiffusionLib.evaluation.inputs import _volume_files, load_cases, load_generated, require_folder
    from CTDiffusionLib.profiles import CARDIAC_MASKS
    from CTDiffusionLib.utility.honesty import refuse_overlap

    test_cases = discover_cases([str(require_folder(test, "--test"))], CARDIAC_MASKS)
    train_cases = discover_cases([str(require_folder(train, "--train"))], CARDIAC_MASKS)
    refuse_overlap({c.case_id: (c.path,) for c in test_cases},
                   {**{f"--train {c.case_id}": (c.path,) for c in train_cases},
                    **{f"--synthetic {f.name}": (f,) for f in _volume_files(require_folder(synthetic, "--synthetic"))}})
    gen = load_generated(synthetic, CARDIAC_MASKS.name)
    return gen, load_cases(train, gen, "--train"), load_cases(test, gen, "--test")


def _per_subject(correct: np.ndarray, subjects: list) -> tuple[np.ndarray, list]:
    """(seeds, samples) correctness -> (seeds, subjects) accuracy, and the subject order."""
    order = sorted(set(subjects))
    cols = [[i for i, s in enumerate(subjects) if s == name] for name in order]
    return np.stack([correct[:, c].mean(axis=1) for c in cols], axis=1), order


def _arm_entry(correct: np.ndarray, test_groups: list, subjects: list, n_train: int, seed: int) -> dict:
    from CTDiffusionLib.data.discovery import ACDC_GROUPS

    table, _ = _per_subject(correct, subjects)
    mean, ci = stats.mean_and_interval(table, seed=seed)
    per_group = {}
    for g in ACDC_GROUPS:
        idx = [i for i, t in enumerate(test_groups) if t == g]
        if not idx:
            continue
        sub, names = _per_subject(correct[:, idx], [subjects[i] for i in idx])
        m, c = stats.mean_and_interval(sub, seed=seed)
        per_group[g] = {"accuracy": m, "accuracy_ci95": c, "n_patients": len(names)}
    return {"accuracy": mean, "accuracy_ci95": ci, "n_train_samples": n_train, "per_group": per_group,
            "accuracy_per_seed": [float(v) for v in table.mean(axis=1)]}


def run_mask_utility(train, synthetic, test, out, *, seeds: int = 3, ratio: float = 1.0,
                     iterations: int | None = None, device: str = "cpu", seed: int = 0, events=None,
                     stop=None) -> dict:
    import torch

    from CTDiffusionLib.data.discovery import ACDC_GROUPS
    from CTDiffusionLib.events import _clean
    from CTDiffusionLib.runfolder import write_json
    from CTDiffusionLib.runtime import resolve_device
    from CTDiffusionLib.threads import ThreadGovernor
    from CTDiffusionLib.utility import honesty, pathology
    from CTDiffusionLib.utility.benchmark import RESULT, verdict_line
    from CTDiffusionLib.utility.figure import arm_bars

    t_start = time.time()
    device = str(resolve_device(device))
    threads = torch.get_num_threads()
    governor = ThreadGovernor(torch.device(device), first_check_s=0.0)  # first choice before the near-copy check
    gen, train_s, test_s = _load(train, synthetic, test)
    synth_s = gen.samples
    groups = {id(s): _group(s, flag) for flag, items in (("--train", train_s), ("--synthetic", synth_s),
                                                          ("--test", test_s)) for s in items}
    if events is not None:
        events.emit("progress", phase="utility", stage="near-copy check", step=0, total=None, eta_s=None)
    governor.tick()
    copies = honesty.near_copies(synth_s, train_s, test_s, "cardiac-masks", device, seed)
    by_arm = arm_cases(train_s, synth_s, ratio)
    recipe = pathology.ClassifierRecipe(iterations=int(iterations or pathology.default_iterations(len(train_s))))
    seed_list = [seed + k for k in range(int(seeds))]
    progress = Progress(events, len(seed_list) * len(by_arm) * recipe.iterations, stop, governor)
    test_arrays, test_groups = [s.array for s in test_s], [groups[id(s)] for s in test_s]
    subjects = [s.meta.get("subject", s.name) for s in test_s]
    correct = {arm: np.zeros((len(seed_list), len(test_s))) for arm in ARMS}
    asked = [groups[id(s)] for s in synth_s]
    read_as = []  # per seed: what the real arm's classifier reads in each generated mask
    try:
        for i, s in enumerate(seed_list):
            for arm, items in by_arm.items():
                model = pathology.train_classifier(
                    [x.array for x in items], [groups[id(x)] for x in items], recipe, s, device,
                    on_step=lambda k, arm=arm, s=s: progress.step(arm, s, k, recipe.iterations))
                predicted = pathology.predict_groups(model, test_arrays, recipe, device)
                correct[arm][i] = [p == t for p, t in zip(predicted, test_groups)]
                if arm == REAL:
                    read_as.append(pathology.predict_groups(model, [x.array for x in synth_s], recipe, device))
                log.info("utility: arm %s, seed %d: accuracy %.3f on %d held-out samples", arm, s,
                         correct[arm][i].mean(), len(test_s))
    finally:
        torch.set_num_threads(threads)

    arms = {arm: _arm_entry(correct[arm], test_groups, subjects, len(by_arm[arm]), seed) for arm in ARMS}
    tables = {arm: _per_subject(correct[arm], subjects)[0] for arm in ARMS}
    gain = stats.gain(tables[BOTH], tables[REAL], metric="accuracy", seed=seed)
    hits = np.array([[r == a for r, a in zip(row, asked)] for row in read_as], float)  # (seeds, generated)
    conditioning = {"accuracy": float(hits.mean()), "chance": 1.0 / len(ACDC_GROUPS), "per_group": {
        g: {"accuracy": float(hits[:, [i for i, a in enumerate(asked) if a == g]].mean()),
            "n_generated": asked.count(g),
            "real_accuracy": arms[REAL]["per_group"].get(g, {}).get("accuracy")}
        for g in ACDC_GROUPS if g in asked},
        "how": "the real arm's classifiers (one per seed) read every generated mask; accuracy = share read as the "
               "group it was generated for; real_accuracy: the same classifiers on held-out real masks of that group"}
    counts = {"train": len(train_s), "synthetic": len(by_arm[SYNTHETIC]), "synthetic_available": len(synth_s),
              "test": len(test_s), "test_patients": len(set(subjects)), "seeds": len(seed_list)}
    result = {
        "format": "ctdiffusion-utility/1", "task": "pathology (ACDC group from a mask)", "metric": "accuracy",
        "classifier": {**recipe.describe(), "seeds": seed_list, "device": device},
        "grid_xyz": list(gen.grid_xyz), "mode": gen.mode,
        "arms": arms, "gain": {"accuracy": gain["accuracy"], "ci95": gain["ci95"]}, "verdict": gain["verdict"],
        "verdict_line": verdict_line(gain, counts, copies["near_copies"], "accuracy", "accuracy", "training samples",
                                     f"{counts['test']} held-out real samples of {counts['test_patients']} patients"),
        "conditioning": conditioning,
        "near_copies": copies["near_copies"],
        "near_copy_check": {k: v for k, v in copies.items() if k != "near_copies"},
        "counts": counts, "ratio": float(ratio), "ratio_used": counts["synthetic"] / counts["train"],
        "statistics": (f"accuracy per held-out patient (all its {gen.mode} samples together); arm mean over "
                       f"{len(seed_list)} seeds x {counts['test_patients']} patients; 95% intervals from "
                       f"{stats.DRAWS} two-way bootstrap draws (patients and seeds resampled); the gain is paired by "
                       "seed and patient. Verdict: helps only when the whole interval of the gain is above 0."),
        "accuracy_table": {arm: tables[arm].tolist() for arm in ARMS},
    }
    out = Path(out)
    result["figure"] = arm_bars(out, arms, [g for g in ACDC_GROUPS if g in arms[REAL]["per_group"]],
                                f"Pathology accuracy per arm on {counts['test_patients']} held-out real patients "
                                f"({len(seed_list)} seeds; whiskers: 95% interval)", metric="accuracy",
                                per="per_group", ylabel="accuracy on held-out real masks",
                                everything="all groups", name="utility_accuracy.png")
    result["time_s"] = round(time.time() - t_start, 1)
    write_json(out / RESULT, _clean(result), exclusive=True)
    return result
