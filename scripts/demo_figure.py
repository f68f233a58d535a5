"""The README's demo picture: held-out real vs generated CT at the same slice positions, with the report's verdict.

    python scripts/demo_figure.py DEMO_OUT docs/images/demo_montage.png [--noise-report NOISE_REPORT_DIR]

DEMO_OUT is the folder `ctdiffusion demo --out DEMO_OUT` wrote. With --noise-report DIR it also writes as many
pure-noise volumes as were generated (model-space N(0, 1) clipped to [-1, 1], mapped to HU, on the generated
volumes' grid), evaluates them against the same held-out and training sets into DIR (unless DIR exists), and
prints each summary metric for generated, noise and the real floor.
"""

from __future__ import annotations

import argparse
import json
import sys
import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from CTDiffusionLib.data.volume_io import image_to_array, read_image  # noqa: E402
from CTDiffusionLib.textformat import format_number  # noqa: E402

SOFT = (-160, 240)
LEVELS = (0.15, 0.4, 0.65, 0.9)


def verdict_line(metrics: dict) -> str:
    """One line from metrics.json, read defensively (its keys evolve with the quality report)."""
    verdicts = metrics.get("verdicts")
    parts = []
    if isinstance(verdicts, dict) and verdicts:
        failed = sorted(k for k, v in verdicts.items() if str(v).lower() not in ("ok", "pass"))
        parts.append(f"report: {len(verdicts) - len(failed)} of {len(verdicts)} metrics within real-vs-real"
                     + (f"; outside: {', '.join(failed)}" if failed else ""))
    gate = (metrics.get("memorisation") or {}).get("gate")
    if gate:
        parts.append(str(gate))
    return " | ".join(parts) or "metrics.json has no verdicts"


def volumes(folder: Path, count: int) -> list[np.ndarray]:
    files = sorted(p for p in folder.iterdir() if p.name.endswith((".nii.gz", ".nii", ".nrrd", ".mha")))[:count]
    return [image_to_array(read_image(p))[0] for p in files]


def figure(demo: Path, out: Path, rows: int = 2) -> None:
    metrics = json.loads((demo / "report" / "metrics.json").read_text(encoding="utf-8"))
    real, generated = volumes(demo / "data" / "heldout", rows), volumes(demo / "generated", rows)
    fig, axes = plt.subplots(2 * rows, len(LEVELS), figsize=(2.0 * len(LEVELS), 2.0 * 2 * rows + 0.6))
    for r, (kind, vol) in enumerate([("real", v) for v in real] + [("generated", v) for v in generated]):
        for c, level in enumerate(LEVELS):
            k = min(int(level * vol.shape[0]), vol.shape[0] - 1)
            ax = axes[r, c]
            ax.imshow(vol[k], cmap="gray", vmin=SOFT[0], vmax=SOFT[1], interpolation="nearest")
            ax.set_xticks([]), ax.set_yticks([])
            if r == 0:
                ax.set_title(f"slice {k}", fontsize=8)
            if c == 0:
                ax.set_ylabel(f"{kind} {r % rows + 1}", fontsize=8, color="black" if kind == "real" else "darkred")
    line = verdict_line(metrics)
    fig.suptitle("held-out real (top) vs generated (bottom), W400/L40\n" + textwrap.fill(line, 75), fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=80)
    plt.close(fig)
    print(line)


def evaluate_noise(demo: Path, noise_report: Path) -> None:
    from CTDiffusionLib.cli import main
    from CTDiffusionLib.data.preprocess import unit_to_hu
    from CTDiffusionLib.data.volume_io import array_to_image, write_image
    from CTDiffusionLib.runfolder import read_model_json

    folder = noise_report.parent / (noise_report.name + "_volumes")
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    intensity = read_model_json(demo / "run")["intensity"]  # noise in the model's own space, mapped as it maps
    for path in sorted((demo / "generated").glob("*.nii.gz")):
        array, geometry = image_to_array(read_image(path))
        x = np.clip(rng.standard_normal(array.shape), -1, 1)
        write_image(array_to_image(unit_to_hu(x, intensity), geometry), folder / path.name)
    code = main(["evaluate", "--real", str(demo / "data" / "heldout"), "--train", str(demo / "data" / "train"),
                 "--generated", str(folder), "--out", str(noise_report), "--device", "cpu"])
    if code != 0:
        raise SystemExit(code)


def compare(demo: Path, noise_report: Path) -> None:
    if not (noise_report / "metrics.json").exists():
        evaluate_noise(demo, noise_report)
    gen = json.loads((demo / "report" / "metrics.json").read_text(encoding="utf-8")).get("summary", {})
    noise = json.loads((noise_report / "metrics.json").read_text(encoding="utf-8")).get("summary", {})
    print("| metric | generated | pure noise | real-vs-real floor |\n|---|---|---|---|")
    fmt = format_number
    for name, entry in gen.items():
        if isinstance(entry, dict):
            other = noise.get(name, {}) if isinstance(noise.get(name), dict) else {}
            print(f"| {name} | {fmt(entry.get('generated'))} | {fmt(other.get('generated'))} | "
                  f"{fmt(entry.get('real_floor'))} |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("demo")
    parser.add_argument("out")
    parser.add_argument("--noise-report", default=None)
    args = parser.parse_args()
    figure(Path(args.demo), Path(args.out))
    if args.noise_report:
        compare(Path(args.demo), Path(args.noise_report))
