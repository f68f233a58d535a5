"""The benchmark's figure: mean Dice per arm with its 95% interval, for all structures together and each one."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from CTDiffusionLib.evaluation.figures import _plt, _save

ARM_COLORS = {"real": "#1b9e77", "synthetic": "#d95f02", "real+synthetic": "#7570b3"}


def dice_bars(out, arms: dict, structures: list, title: str) -> str:
    """Grouped bars: groups = 'all structures' then each structure; one bar per arm, whiskers = 95% interval.
    Returns the path relative to `out` (figures/utility_dice.png)."""
    plt = _plt()
    (Path(out) / "figures").mkdir(parents=True, exist_ok=True)
    groups = ["all structures", *structures]
    x = np.arange(len(groups))
    width = 0.8 / max(1, len(arms))
    fig, ax = plt.subplots(figsize=(max(5.0, 1.1 * len(groups) + 2.0), 3.4))
    for k, (arm, entry) in enumerate(arms.items()):
        rows = [entry] + [entry["per_structure"].get(s, {}) for s in structures]
        means = np.array([r.get("dice") if r.get("dice") is not None else np.nan for r in rows], float)
        ci = [r.get("dice_ci95") or [np.nan, np.nan] for r in rows]
        err = np.array([[m - lo for m, (lo, _) in zip(means, ci)], [hi - m for m, (_, hi) in zip(means, ci)]])
        ax.bar(x + (k - (len(arms) - 1) / 2) * width, np.nan_to_num(means), width, label=arm,
               color=ARM_COLORS.get(arm), yerr=np.nan_to_num(np.clip(err, 0, None)), capsize=2,
               error_kw={"lw": 0.8})
    ax.set_xticks(x, [g.replace("_", "\n") for g in groups], fontsize=7)
    ax.set_ylim(0, 1.15)  # room for the legend above the bars
    ax.set_ylabel("Dice on held-out real cases")
    ax.legend(fontsize=8, loc="upper center", ncol=len(arms))
    ax.set_title(title, fontsize=9)
    return _save(fig, Path(out), "utility_dice.png")
