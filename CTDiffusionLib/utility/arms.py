"""The three training arms and their runs: every arm trains the same recipe over the same seeds, every model is
scored on the same held-out real cases.

  real            the real training pairs
  synthetic       the synthetic pairs used (R x the real count, or all there are when fewer)
  real+synthetic  both together

Scores come back as (seeds x test cases x structures) tables per arm, the unit the statistics resample.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from CTDiffusionLib.utility import scoring
from CTDiffusionLib.utility.segmenter import Recipe, predict, train_segmenter

REAL, SYNTHETIC, BOTH = "real", "synthetic", "real+synthetic"
ARMS = (REAL, SYNTHETIC, BOTH)
PROGRESS_EVERY_S = 1.0  # at most one progress event a second


def synthetic_share(n_real: int, n_synthetic: int, ratio: float) -> int:
    """How many synthetic cases the arms use: R x the real count, at least 1, at most what there is."""
    return int(max(1, min(n_synthetic, round(ratio * n_real))))


def arm_cases(real: list, synthetic: list, ratio: float) -> dict:
    """{arm: training cases}; the synthetic arm uses the same synthetic cases the mixed arm adds (first by name)."""
    used = synthetic[:synthetic_share(len(real), len(synthetic), ratio)]
    return {REAL: list(real), SYNTHETIC: used, BOTH: list(real) + used}


@dataclass
class ArmScores:
    dice: np.ndarray  # (seeds, test cases, structures), NaN where a structure is absent from a test case
    hd95: np.ndarray  # the same, NaN where undefined


class Progress:
    """progress events over all arms x seeds x iterations, with an ETA from the measured rate; checks the stop flag
    after every iteration (raises Interrupted) and lets the thread governor re-choose the CPU threads."""

    def __init__(self, events, total_steps: int, stop=None, governor=None):
        self.events, self.total, self.stop, self.governor = events, total_steps, stop, governor
        self.done, self.t0, self.last = 0, time.time(), 0.0

    def step(self, arm: str, seed: int, in_arm: int, arm_total: int) -> None:
        self.done += 1
        if self.stop is not None:
            self.stop.check("The utility benchmark was stopped; no utility.json was written.",
                            "Run it again to measure.")
        if self.governor is not None:
            self.governor.tick()
        now = time.time()
        if self.events is None or (now - self.last < PROGRESS_EVERY_S and in_arm < arm_total):
            return
        self.last = now
        rate = self.done / max(now - self.t0, 1e-9)
        self.events.emit("progress", phase="utility", step=self.done, total=self.total, arm=arm, seed=seed,
                         arm_step=in_arm, arm_total=arm_total, it_per_s=rate, eta_s=(self.total - self.done) / rate)


def empty_scores(arms, n_seeds: int, n_test: int, n_structures: int) -> dict:
    """{arm: ArmScores} all NaN, to be filled seed by seed."""
    shape = (n_seeds, n_test, n_structures)
    return {arm: ArmScores(np.full(shape, np.nan), np.full(shape, np.nan)) for arm in arms}


def score_model(scores: ArmScores, i: int, test: list, predictions, n_classes: int) -> None:
    """Row i (one seed's model) of an arm's tables: each predicted label map scored against its test case."""
    for j, (case, predicted) in enumerate(zip(test, predictions)):
        s = scoring.score_case(predicted, case.labels, n_classes, case.spacing_zyx)
        scores.dice[i, j], scores.hd95[i, j] = s["dice"], s["hd95"]


def log_model(log, segmenter: str, arm: str, seed: int, scores: ArmScores, i: int, t0: float) -> None:
    if log is not None:
        per_case = [scoring.case_mean(d) for d in scores.dice[i]]  # as utility.json's dice_per_seed
        log.info("utility: %s, arm %s, seed %d: mean Dice %.3f on %d test cases (%.0f s)", segmenter, arm, seed,
                 np.nanmean(per_case), len(per_case), time.time() - t0)


def run_arms(cases_by_arm: dict, test: list, n_classes: int, recipe: Recipe, seeds: list, device: str = "cpu",
             progress: Progress | None = None, log=None) -> dict:
    """Train every arm for every seed and score each model on `test`. Returns {arm: ArmScores}."""
    out = empty_scores(cases_by_arm, len(seeds), len(test), n_classes - 1)
    for i, seed in enumerate(seeds):
        for arm, cases in cases_by_arm.items():
            t0 = time.time()

            def on_step(k, arm=arm, seed=seed):
                if progress is not None:
                    progress.step(arm, seed, k, recipe.iterations)

            model = train_segmenter(cases, n_classes, recipe, seed, device, on_step=on_step)
            score_model(out[arm], i, test, (predict(model, c.image, recipe, device) for c in test), n_classes)
            log_model(log, "MONAI", arm, seed, out[arm], i, t0)
    return out
