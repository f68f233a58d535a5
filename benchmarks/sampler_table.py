#!/usr/bin/env python3
"""Samplers side by side on trained models: the quality report and the time per volume, several sample seeds each.

    python benchmarks/sampler_table.py --run NAME=RUN_DIR [--run NAME=RUN_DIR ...] --real HELDOUT --train TRAIN \
        --out OUT_DIR --sampler NAME:STEPS [--sampler NAME:STEPS ...] [--seeds 0,100,200] [--num 8]

For every (run, sampler, steps) and every sample seed it runs `ctdiffusion generate` (batch 2 on CPU, as the demo)
and `ctdiffusion evaluate` against the held-out set with the training set for the memorisation check, then writes
OUT_DIR/sampler_table.json (every report's numbers) and prints a markdown table: the report's fails, HU-histogram
W1, tissue-contrast gap, Fréchet distance, MMD and nearest-training similarity as median (min-max) over the seeds,
the network evaluations per volume and the generation seconds per volume (median). A sampler that does not belong
to a run's objective is skipped. Uses only the project's CLI, so what it measures is what users run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from CTDiffusionLib.cli import main as cli  # noqa: E402
from CTDiffusionLib.diffusion.schedulers import is_flow  # noqa: E402
from CTDiffusionLib.runfolder import read_config  # noqa: E402
from CTDiffusionLib.samplers import SAMPLERS, network_evaluations  # noqa: E402

METRICS = ("hu_histogram_w1", "tissue_contrast_hu_gap", "frechet_distance", "mmd", "nearest_train_similarity")


def one_report(run: Path, real: Path, train: Path, out: Path, sampler: str, steps: int, seed: int, num: int,
               device: str = "cpu") -> dict:
    """Generate `num` volumes with one sampler and seed, evaluate them; the report's numbers and s/volume (the
    whole `generate` call, model loading included, divided by `num`). Also used by gpu_suite.py."""
    gen, report = out / "generated", out / "report"
    t0 = time.perf_counter()
    if cli(["generate", "--model", str(run), "--num", str(num), "--out", str(gen), "--sampler", sampler,
            "--steps", str(steps), "--seed", str(seed), "--device", device]) != 0:
        raise RuntimeError(f"generate failed for {run} {sampler}-{steps} seed {seed}")
    seconds = (time.perf_counter() - t0) / num
    t1 = time.perf_counter()
    if cli(["evaluate", "--real", str(real), "--train", str(train), "--generated", str(gen), "--out", str(report),
            "--device", device]) != 0:
        raise RuntimeError(f"evaluate failed for {gen}")
    metrics = json.loads((report / "metrics.json").read_text(encoding="utf-8"))
    values = {k: (metrics["summary"].get(k) or {}).get("generated") for k in METRICS}
    fails = sorted(k for k, v in metrics["verdicts"].items() if v == "fail")
    return {"seed": seed, "seconds_per_volume": seconds, "evaluate_seconds": time.perf_counter() - t1, "fails": fails,
            **values}


def summarise(rows: list[dict]) -> dict:
    def spread(key):
        vals = [r[key] if not isinstance(r[key], list) else len(r[key]) for r in rows if r.get(key) is not None]
        return (statistics.median(vals), min(vals), max(vals)) if vals else None

    return {k: spread(k) for k in ("fails", *METRICS, "seconds_per_volume")}


def markdown(table: list[dict]) -> str:
    head = ("| run | sampler | steps | evaluations | fails | HU W1 | tissue gap | Fréchet | MMD | nearest-train | "
            "s/volume |\n|---|---|---|---|---|---|---|---|---|---|---|")
    fmt = lambda s, d=3: "–" if s is None else f"{s[0]:.{d}g} ({s[1]:.{d}g}-{s[2]:.{d}g})"  # noqa: E731
    lines = [head]
    for e in table:
        s = e["summary"]
        lines.append(f"| {e['run']} | {e['sampler']} | {e['steps']} | {e['network_evaluations']} | "
                     f"{fmt(s['fails'], 2)} | {fmt(s['hu_histogram_w1'])} | {fmt(s['tissue_contrast_hu_gap'])} | "
                     f"{fmt(s['frechet_distance'])} | {fmt(s['mmd'], 2)} | {fmt(s['nearest_train_similarity'])} | "
                     f"{s['seconds_per_volume'][0]:.2f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", action="append", required=True, help="NAME=RUN_DIR")
    p.add_argument("--real", required=True)
    p.add_argument("--train", required=True)
    p.add_argument("--out", required=True, help="a new folder")
    p.add_argument("--sampler", action="append", required=True, help="NAME:STEPS, e.g. dpm++:25")
    p.add_argument("--seeds", default="0,100,200")
    p.add_argument("--num", type=int, default=8)
    a = p.parse_args(argv)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=False)
    seeds = [int(s) for s in a.seeds.split(",")]
    table = []
    for run_spec in a.run:
        run_name, run = run_spec.split("=", 1)
        flow = is_flow(read_config(Path(run))["diffusion"])
        for spec in a.sampler:
            name, steps = spec.split(":")
            if (SAMPLERS[name].objective == "flow") != flow:
                continue
            rows = []
            for seed in seeds:
                folder = out / f"{run_name}_{name}_{steps}_seed{seed}"
                rows.append(one_report(Path(run), Path(a.real), Path(a.train), folder, name, int(steps), seed, a.num))
                print(f"[sampler_table] {run_name} {name}-{steps} seed {seed}: {rows[-1]}", file=sys.stderr,
                      flush=True)
            table.append({"run": run_name, "sampler": name, "steps": int(steps),
                          "network_evaluations": network_evaluations(name, int(steps)), "rows": rows,
                          "summary": summarise(rows)})
            (out / "sampler_table.json").write_text(json.dumps(table, indent=1), encoding="utf-8")
    print(markdown(table))
    return 0


if __name__ == "__main__":
    sys.exit(main())
