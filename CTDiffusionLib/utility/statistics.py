"""Intervals and the verdict: statistics that can say "no".

The scores of one arm form a (seeds x test cases) table: every seed's model scored on every held-out case. Its
interval comes from a two-way bootstrap: each draw resamples the test cases (the same cases for every seed: a test
case is one unit whatever model scores it) and the seeds, both with replacement, and takes the mean of the drawn
table. So the interval covers both where the test cases came from and the training randomness; with few seeds it is
wide, as it should be.

The gain (real + synthetic minus real only) is paired: the same seed and the same test case on both sides, so the
per-cell differences cancel what the case and the seed share. Verdict: `helps` only when the whole 95% interval of
the gain lies above 0, `hurts` when it lies below 0, otherwise `no measurable gain`.
"""

from __future__ import annotations

import numpy as np

DRAWS = 4000
LEVEL = 0.95
HELPS, HURTS, NO_GAIN = "helps", "hurts", "no measurable gain"
VERDICTS = (HELPS, NO_GAIN, HURTS)


def _table(scores) -> np.ndarray:
    table = np.asarray(scores, dtype=float)
    if table.ndim != 2 or table.size == 0:
        raise ValueError(f"expected a (seeds, test cases) table, got shape {table.shape}")
    return table


def bootstrap_means(scores, draws: int = DRAWS, seed: int = 0) -> np.ndarray:
    """Means of `draws` two-way bootstrap resamples of a (seeds, cases) table (NaN cells are left out of a mean:
    a structure absent from a case)."""
    table = _table(scores)
    k, n = table.shape
    rng = np.random.default_rng(seed)
    seeds = rng.integers(0, k, size=(draws, k))
    cases = rng.integers(0, n, size=(draws, n))
    # drawn[d, i, j] = table[seeds[d, i], cases[d, j]]
    drawn = table[seeds[:, :, None], cases[:, None, :]]
    with np.errstate(invalid="ignore"):
        means = np.nanmean(drawn.reshape(draws, -1), axis=1) if np.isnan(table).any() else drawn.mean(axis=(1, 2))
    return means[np.isfinite(means)]


def mean_and_interval(scores, draws: int = DRAWS, seed: int = 0) -> tuple[float | None, list | None]:
    """(mean of the table, [lo, hi] 95% percentile interval of its bootstrap means)."""
    table = _table(scores)
    if not np.isfinite(table).any():
        return None, None
    means = bootstrap_means(table, draws, seed)
    tail = (1 - LEVEL) / 2 * 100
    return float(np.nanmean(table)), [float(np.percentile(means, tail)), float(np.percentile(means, 100 - tail))]


def gain(with_synthetic, real_only, metric: str = "dice", draws: int = DRAWS, seed: int = 0) -> dict:
    """Paired gain of two (seeds, cases) tables of the same seeds and test cases: its mean (under the key `metric`),
    interval and verdict."""
    a, b = _table(with_synthetic), _table(real_only)
    if a.shape != b.shape:
        raise ValueError(f"the arms' tables differ in shape: {a.shape} vs {b.shape}")
    mean, ci = mean_and_interval(a - b, draws, seed)
    return {metric: mean, "ci95": ci, "verdict": verdict(ci)}


def verdict(ci) -> str:
    if ci is None:
        return NO_GAIN
    lo, hi = ci
    if lo > 0:
        return HELPS
    if hi < 0:
        return HURTS
    return NO_GAIN
