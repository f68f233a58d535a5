"""Render the phantom montages shown in docs/data.md (soft-tissue and bone windows; cardiac groups).

    python scripts/phantom_montage.py docs/images
"""

from __future__ import annotations

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import ListedColormap  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from CTDiffusionLib.data.phantoms.cardiac_masks import GROUPS, make_cardiac_patient  # noqa: E402
from CTDiffusionLib.data.phantoms.prostate_ct import make_prostate_ct  # noqa: E402
from CTDiffusionLib.data.volume_io import image_to_array  # noqa: E402
from CTDiffusionLib.demo import DEMO  # noqa: E402

SOFT = (-160, 240)  # W400 / L40
BONE = (-500, 1300)  # W1800 / L400
LEVELS = (0.1, 0.35, 0.6, 0.85)  # fractions of the 65 mm scan, bottom to top


def ct_montage(out: Path) -> None:
    demo = DEMO["prostate-ct"]["size"]  # the grid `ctdiffusion demo` trains on
    demo_size = tuple(int(v) for v in demo.split("x"))
    rows = [("512x512x26", (512, 512, 26), seed) for seed in range(3)] + [(f"{demo} (demo)", demo_size, seed)
                                                                          for seed in range(2)]
    fig, axes = plt.subplots(len(rows), len(LEVELS) + 1, figsize=(2.3 * (len(LEVELS) + 1), 2.2 * len(rows)))
    for r, (name, size, seed) in enumerate(rows):
        image, _ = make_prostate_ct(np.random.default_rng([0, seed]), size)
        hu, geometry = image_to_array(image)
        n = hu.shape[0]
        for c, level in enumerate(LEVELS + (0.6,)):
            k = min(int(level * n), n - 1)
            window = BONE if c == len(LEVELS) else SOFT
            ax = axes[r, c]
            ax.imshow(hu[k], cmap="gray", vmin=window[0], vmax=window[1], interpolation="nearest")
            ax.set_xticks([]), ax.set_yticks([])
            z = (k + 0.5) * geometry.spacing[2]
            ax.set_title(f"z={z:.0f} mm" + (" bone" if c == len(LEVELS) else ""), fontsize=7)
            if c == 0:
                ax.set_ylabel(f"case {seed}\n{name}", fontsize=7)
    fig.suptitle("prostate-ct phantoms (soft-tissue window W400/L40; last column bone window W1800/L400)",
                 fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    plt.close(fig)


def cardiac_montage(out: Path) -> None:
    colours = ListedColormap(["black", "#3b7dd8", "#e0b030", "#d83b3b"])  # bg, RV, MYO, LV
    fig, axes = plt.subplots(3, len(GROUPS), figsize=(2.0 * len(GROUPS), 6.2))
    for c, group in enumerate(GROUPS):
        patient = make_cardiac_patient(np.random.default_rng([0, c]), group, (216, 256, 10))
        heart = np.flatnonzero((patient["ED"] == 3).any(axis=(1, 2)))
        views = [("ED base", patient["ED"][heart[0]]), ("ED mid", patient["ED"][heart[len(heart) // 2]]),
                 ("ES mid", patient["ES"][heart[len(heart) // 2]])]
        for r, (title, labels) in enumerate(views):
            ax = axes[r, c]
            ax.imshow(labels[60:200, 40:180], cmap=colours, vmin=0, vmax=3, interpolation="nearest")
            ax.set_xticks([]), ax.set_yticks([])
            ax.set_title(f"{group} {title}", fontsize=8)
    fig.suptitle("cardiac-masks phantoms: RV blue, myocardium yellow, LV red", fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=80)
    plt.close(fig)


if __name__ == "__main__":
    folder = Path(sys.argv[1] if len(sys.argv) > 1 else ROOT / "docs" / "images")
    ct_montage(folder / "phantoms_ct.png")
    cardiac_montage(folder / "phantoms_cardiac.png")
