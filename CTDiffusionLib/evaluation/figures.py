"""PNG figures of the report (matplotlib, Agg backend: no display needed). Each function returns the path of the
figure relative to the report folder, or None when there is nothing to draw."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from CTDiffusionLib.runfolder import RunFolder

SET_COLORS = {"generated": "#d95f02", "real": "#1b9e77", "train": "#7570b3"}
DPI = 80



def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, out: Path, name: str) -> str:
    plt = _plt()
    fig.tight_layout()
    fig.savefig(out / "figures" / name, dpi=DPI)
    plt.close(fig)
    return f"figures/{name}"


def montage(out, real, generated, profile, n: int = 6) -> str:
    """Mid slices, real on top, generated below, the profile's display window or its label colours."""
    plt = _plt()
    from matplotlib.colors import ListedColormap

    rows = [("real", real[:n]), ("generated", generated[:n])]
    cols = max(len(r[1]) for r in rows)
    fig, axes = plt.subplots(2, cols, figsize=(1.9 * cols, 4.2), squeeze=False)
    if profile.is_label_map:
        kw = {"cmap": ListedColormap(profile.label_colors()), "vmin": 0, "vmax": len(profile.classes) - 1,
              "interpolation": "nearest"}
        suffix = ", ".join(f"{c.name} {c.hex_color}" for c in profile.foreground_classes)
    else:
        lo, hi = profile.display_window.range
        kw = {"cmap": "gray", "vmin": lo, "vmax": hi}
        suffix = f"window {lo:.0f}..{hi:.0f} HU"
    for r, (label, samples) in enumerate(rows):
        for c in range(cols):
            ax = axes[r][c]
            ax.axis("off")
            if c < len(samples):
                arr = samples[c].array
                ax.imshow(arr[arr.shape[0] // 2], **kw)
                ax.set_title(f"{label}\n{samples[c].name}", fontsize=7)
    fig.suptitle(f"Mid slices ({suffix})", fontsize=9)
    return _save(fig, out, "montage.png")


def hu_histograms(out, hists: dict) -> str:
    from CTDiffusionLib.evaluation.ct_realism import HIST_EDGES

    plt = _plt()
    centers = (HIST_EDGES[:-1] + HIST_EDGES[1:]) / 2
    fig, ax = plt.subplots(figsize=(6, 3.2))
    for name, h in hists.items():
        if h is not None and h.sum() > 0:
            ax.plot(centers, h / h.sum() / (HIST_EDGES[1] - HIST_EDGES[0]), label=name, color=SET_COLORS[name], lw=1.2)
    ax.set_xlim(-1024, 2000)
    ax.set_yscale("log")
    ax.set_xlabel("HU (inside the body)")
    ax.set_ylabel("density")
    ax.legend(fontsize=8)
    ax.set_title("HU histograms", fontsize=9)
    return _save(fig, out, "hu_histogram.png")


def spectra(out, freqs, spectra_by_set: dict, cutoff: float) -> str:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.2))
    for name, p in spectra_by_set.items():
        if p is not None:
            ax.semilogy(freqs[1:], p[1:], label=name, color=SET_COLORS[name])
    ax.axvline(cutoff, color="gray", ls="--", lw=0.8)
    ax.set_xlabel("radial frequency (cycles/pixel)")
    ax.set_ylabel("mean power")
    ax.set_title(f"In-plane radial power spectra (noise share: power right of {cutoff})", fontsize=9)
    ax.legend(fontsize=8)
    return _save(fig, out, "spectrum.png")


def distributions(out, name: str, title: str, values: dict, xlabel: str = "") -> str:
    """Box plots of one or more quantities, one box per set (generated / real / train)."""
    plt = _plt()
    keys = list(values)
    fig, axes = plt.subplots(1, len(keys), figsize=(2.3 * len(keys) + 0.6, 3.0), squeeze=False)
    for ax, key in zip(axes[0], keys):
        sets = [(s, v) for s, v in values[key].items() if v is not None and len(v)]
        ax.boxplot([np.asarray(v, float) for _, v in sets], tick_labels=[s for s, _ in sets], widths=0.6)
        for k, (s, v) in enumerate(sets):
            ax.scatter(np.full(len(v), k + 1.0), v, s=8, color=SET_COLORS[s], zorder=3)
        ax.set_title(key, fontsize=8)
        ax.tick_params(labelsize=7)
        if xlabel:
            ax.set_ylabel(xlabel, fontsize=7)
    fig.suptitle(title, fontsize=9)
    return _save(fig, out, name)


def pass_rates(out, rates: dict) -> str:
    plt = _plt()
    checks = [c for c in next(iter(rates.values()))]
    x = np.arange(len(checks))
    fig, ax = plt.subplots(figsize=(7, 3.2))
    width = 0.8 / len(rates)
    for k, (s, r) in enumerate(rates.items()):
        ax.bar(x + k * width, [np.nan_to_num(r[c], nan=0.0) for c in checks], width, label=s, color=SET_COLORS[s])
    ax.set_xticks(x + width * (len(rates) - 1) / 2, [c.replace("_", "\n") for c in checks], fontsize=6)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("pass rate")
    ax.legend(fontsize=8)
    ax.set_title("Anatomical plausibility", fontsize=9)
    return _save(fig, out, "plausibility.png")


def similarity_hist(out, name: str, title: str, values: dict, xlabel: str, threshold=None) -> str | None:
    plt = _plt()
    if not any(len(v) for v in values.values()):
        return None
    fig, ax = plt.subplots(figsize=(6, 3.0))
    allv = np.concatenate([np.asarray(v, float) for v in values.values() if len(v)])
    bins = np.linspace(min(allv.min(), threshold or 1.0) - 1e-3, max(allv.max(), threshold or 0.0) + 1e-3, 30)
    for s, v in values.items():
        if len(v):
            ax.hist(v, bins=bins, alpha=0.55, label=f"{s} (n={len(v)})", color=SET_COLORS[s])
    if threshold is not None:
        ax.axvline(threshold, color="black", ls="--", lw=1, label="memorisation threshold")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("count")
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=9)
    return _save(fig, out, name)


def metric_bars(out, summary: dict) -> str | None:
    """One bar per summary metric: generated value / real floor (1 = as far off as two real sets are)."""
    plt = _plt()
    items = [(k, v["generated"] / v["real_floor"]) for k, v in summary.items()
             if v.get("generated") is not None and v.get("real_floor")]
    if not items:
        return None
    names, ratios = zip(*items)
    fig, ax = plt.subplots(figsize=(7, 0.28 * len(items) + 1.0))
    y = np.arange(len(items))
    ax.barh(y, np.clip(ratios, 1e-3, None), color=SET_COLORS["generated"])
    ax.axvline(1.0, color=SET_COLORS["real"], lw=1.5)
    ax.set_yticks(y, names, fontsize=7)
    ax.set_xscale("log")
    ax.invert_yaxis()
    ax.set_xlabel("generated / real floor (log; green line = 1)", fontsize=8)
    ax.set_title("Metrics relative to their real-vs-real floor", fontsize=9)
    return _save(fig, out, "metric_bars.png")


def loss_curves(out, run_dir) -> str | None:
    from CTDiffusionLib.events import read_events

    path = RunFolder(run_dir).events
    if not path.exists():
        return None
    train, val = [], []
    for e in read_events(path):
        if e.get("event") != "progress" or e.get("step") is None:
            continue
        if e.get("phase") == "train" and e.get("loss") is not None:
            train.append((e["step"], e["loss"]))
        if e.get("val_loss") is not None:
            val.append((e["step"], e["val_loss"]))
    if not train and not val:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.2))
    if train:
        ax.plot(*zip(*train), label="train loss", lw=1)
    if val:
        ax.plot(*zip(*val), "o-", label="validation loss", ms=3)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.legend(fontsize=8)
    ax.set_title(f"Loss curves ({Path(run_dir).name})", fontsize=9)
    return _save(fig, out, "loss_curves.png")


def make_all(out, gen, real_s, train_s, S, metrics, div, run_dir=None) -> list:
    """Every figure for this profile; returns relative paths in report order."""
    out = Path(out)
    names = {"gen": "generated", "real": "real", "train": "train"}
    present = {k: v for k, v in S.items() if v}
    figs = [montage(out, real_s, gen.samples, gen.profile)]
    if not gen.profile.is_label_map:
        from CTDiffusionLib.evaluation.ct_realism import HF_CUTOFF, SET_PROPERTIES

        figs.append(hu_histograms(out, {names[k]: sum(st["hist"] for st in v) for k, v in present.items()}))
        freqs = next(iter(present.values()))[0]["freqs"]
        figs.append(spectra(out, freqs, {names[k]: np.mean([st["spectrum"] for st in v], axis=0)
                                         for k, v in present.items()}, HF_CUTOFF))
        props = tuple(SET_PROPERTIES)  # one box plot per property the report judges
        figs.append(distributions(out, "ct_properties.png", "Per-volume CT statistics",
                                  {p: {names[k]: [st["props"][p] for st in v] for k, v in present.items()}
                                   for p in props}))
    else:
        figs.append(pass_rates(out, {names[k]: r for k, r in metrics["mask_pass_rates"].items()}))
        figs.append(distributions(out, "volumes.png", "Structure volumes (voxels on the common grid)",
                                  {st: {names[k]: [s["volumes"][st] for s in v] for k, v in present.items()}
                                   for st in ("LV", "RV", "MYO")}))
    figs.append(similarity_hist(out, "diversity.png", "Diversity: pairwise similarity within each set",
                                {names[k]: v for k, v in div.items()}, metrics["similarity"].split(" (")[0]))
    memo = metrics["memorisation"]
    if memo["status"] != "not_checked":
        figs.append(similarity_hist(
            out, "novelty.png", "Novelty: similarity to the nearest training case",
            {"generated": [r["nearest_similarity"] for r in metrics["per_sample"]],
             "real": [r["similarity"] for r in memo["heldout_nearest"]]},
            "nearest-training-case similarity", threshold=memo["threshold"]))
    figs.append(metric_bars(out, metrics["summary"]))
    if run_dir:
        figs.append(loss_curves(out, run_dir))
    return [f for f in figs if f]
