"""The paired demo's picture: for held-out label maps, the real phantom CT and the CT generated for the same label
map, both with the label outlines drawn over them; below, new pairs (label map sampled by the label model, then its
CT). Prints the HU per structure, generated vs real.

    python scripts/pairs_demo_figure.py DEMO_OUT docs/images/pairs_demo_montage.png [--cases 3]

DEMO_OUT is the folder `ctdiffusion demo --with-labels --out DEMO_OUT` wrote.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import SimpleITK as sitk  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from CTDiffusionLib.data.paired_dataset import as_structures  # noqa: E402
from CTDiffusionLib.data.pairs import discover_pairs, read_pair  # noqa: E402
from CTDiffusionLib.evaluation.structures import compare_structure_hu, format_table  # noqa: E402
from CTDiffusionLib.label_sets import label_profile  # noqa: E402
from CTDiffusionLib.profiles import PROSTATE_CT  # noqa: E402
from CTDiffusionLib.runfolder import read_config  # noqa: E402

LEVELS = (0.35, 0.6)  # slice positions as a fraction of the volume's depth (bladder/prostate and hip levels)


def arrays(folder: Path, structures) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{case id: (HU (z, y, x), labels 0..K)} of a pairs folder, labels merged into the run's structures."""
    out = {}
    for case in discover_pairs([folder]):
        ct, labels = read_pair(case, structures)
        out[case.case_id] = (sitk.GetArrayFromImage(ct), sitk.GetArrayFromImage(labels))
    return out


def draw(ax, hu: np.ndarray, labels: np.ndarray, k: int, colors) -> None:
    lo, hi = PROSTATE_CT.display_window.range
    ax.imshow(hu[k][::-1], cmap="gray", vmin=lo, vmax=hi, interpolation="nearest")  # anterior up, as previews
    for value, color in enumerate(colors[1:], start=1):
        mask = labels[k][::-1] == value
        if mask.any():
            ax.contour(mask.astype(float), levels=[0.5], colors=[color], linewidths=0.8)
    ax.set_xticks([]), ax.set_yticks([])


def figure(demo: Path, out: Path, cases: int) -> None:
    structures = as_structures(read_config(demo / "run")["labels"]["structures"])
    colors = label_profile(PROSTATE_CT, read_config(demo / "run")["labels"]["structures"]).label_colors()
    real, generated = arrays(demo / "data" / "heldout", structures), arrays(demo / "generated", structures)
    new = arrays(demo / "new_pairs", structures)
    ids = sorted(real)[:cases]
    rows = [(f"real {i}", *real[i]) for i in ids] + [(f"generated for {i}'s labels", *generated[i]) for i in ids]
    rows = [r for pair in zip(rows[:len(ids)], rows[len(ids):]) for r in pair]  # real above its generated twin
    rows += [(f"new pair {i}", *new[i]) for i in sorted(new)[:2]]
    fig, axes = plt.subplots(len(rows), len(LEVELS), figsize=(2.3 * len(LEVELS), 2.3 * len(rows) + 0.9),
                             squeeze=False)
    for r, (name, hu, labels) in enumerate(rows):
        for c, level in enumerate(LEVELS):
            k = min(int(level * hu.shape[0]), hu.shape[0] - 1)
            draw(axes[r, c], hu, labels, k, colors)
            if r == 0:
                axes[r, c].set_title(f"slice {k}", fontsize=8)
            if c == 0:
                axes[r, c].set_ylabel(name, fontsize=7, color="darkred" if "real" not in name else "black")
    legend = ", ".join(f"{s.name}" for s in structures)
    fig.suptitle("Paired demo: label outlines over real (black) and generated (red) CT, W400/L40\n" + legend,
                 fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    plt.close(fig)
    print(format_table(compare_structure_hu(demo / "data" / "heldout", demo / "generated", structures)))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("demo", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--cases", type=int, default=3)
    args = parser.parse_args()
    figure(args.demo, args.out, args.cases)
