"""The benchmark's figure: the mean score per arm with its 95% interval (Dice for CT pairs, accuracy for masks), for
everything together and for each structure (or pathology group)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from CTDiffusionLib.evaluation.figures import _plt, _save

ARM_COLORS = {"real": "#1b9e77", "synthetic": "#d95f02", "real+synthetic": "#7570b3"}


def arm_bars(out, arms: dict, structures: list, title: str, metric: str = "dice", per: str = "per_structure",
             ylabel: str = "Dice on held-out real cases", everything: str = "all structures",
             name: str = "utility_dice.png") -> str:
    """Grouped bars: groups = everything together, then each structure; one bar per arm, whiskers = 95% interval.
    Returns the path relative to `out` (figures/NAME)."""
    plt = _plt()
    (Path(out) / "figures").mkdir(parents=True, exist_ok=True)
    groups = [everything, *structures]
    x = np.arange(len(groups))
    width = 0.8 / max(1, len(arms))
    fig, ax = plt.subplots(figsize=(max(5.0, 1.1 * len(groups) + 2.0), 3.4))
    for k, (arm, entry) in enumerate(arms.items()):
        rows = [entry] + [entry[per].get(s, {}) for s in structures]
        means = np.array([r.get(metric) if r.get(metric) is not None else np.nan for r in rows], float)
        ci = [r.get(f"{metric}_ci95") or [np.nan, np.nan] for r in rows]
        err = np.array([[m - lo for m, (lo, _) in zip(means, ci)], [hi - m for m, (_, hi) in zip(means, ci)]])
        ax.bar(x + (k - (len(arms) - 1) / 2) * width, np.nan_to_num(means), width, label=arm,
               color=ARM_COLORS.get(arm), yerr=np.nan_to_num(np.clip(err, 0, None)), capsize=2,
               error_kw={"lw": 0.8})
    ax.set_xticks(x, [g.replace("_", "\n") for g in groups], fontsize=7)
    ax.set_ylim(0, 1.15)  # room for the legend above the bars
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=8, loc="upper center", ncol=len(arms))
    ax.set_title(title, fontsize=9)
    return _save(fig, Path(out), name)
