#!/usr/bin/env python
"""Print the Markdown tables of a gpu_suite JSON file (what docs/benchmarks.md shows).

    python benchmarks/render_gpu_suite.py benchmarks/results/gpu-suite-DATE.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from CTDiffusionLib.textformat import format_number  # noqa: E402 (standard library only)

fmt = format_number


def render(res: dict) -> str:
    lines = [f"GPU suite on **{res['device_name']}** ({res['device']}), torch {res['torch']}, CUDA {res['cuda']}, "
             f"{res['date']}{' — DRY RUN: networks 8x narrower, small grids; not a measurement' if res['dry_run'] else ''}"
             f"; {res['wall_seconds']} s{'' if res.get('complete') else ' — INCOMPLETE (stopped before the end)'}."]
    if res["checks"]:  # empty when the run had --only objectives,utility
        lines += ["", "| check | result | detail |", "|---|---|---|"]
    for name, c in res["checks"].items():
        state = {True: "ok", False: "FAILED", None: "n/a"}[c.get("ok")]
        detail = c.get("error") or ", ".join(f"{k} {fmt(v)}" for k, v in c.items()
                                             if k not in ("ok", "traceback", "data", "seconds"))
        lines.append(f"| {name} | {state} | {detail} |")
    if res["measurements"]:
        lines += ["", "| measurement | preset grid | batch | dtype | s/step | samples/s | TFLOP/step | TFLOP/s | "
                  "peak GB | s/volume |", "|---|---|---|---|---|---|---|---|---|---|"]
    for name, m in res["measurements"].items():
        if not m.get("ok"):
            lines.append(f"| {name} | FAILED: {m.get('error')} |||||||||")
            continue
        grid = "x".join(map(str, m.get("grid", [])))
        lines.append(f"| {name} | {grid} | {fmt(m.get('batch'))} | {m.get('amp', '')} | "
                     f"{fmt(m.get('seconds_per_step'))} | {fmt(m.get('samples_per_s'))} | "
                     f"{fmt(m['step_flops'] / 1e12 if 'step_flops' in m else None)} | {fmt(m.get('achieved_tflops'))} | "
                     f"{fmt(m.get('peak_memory_gb'))} | {fmt(m.get('seconds_per_volume'))} |")
    lines += quality_tables(res.get("quality") or {})
    s = res.get("summary")
    if s:
        frac = s.get("default_fraction_of_bf16_peak")
        lines += ["", f"default / thesis: {s['default_over_thesis_samples_per_s']:.2f}x samples/s, "
                      f"{s['default_over_thesis_steps_per_s']:.2f}x steps/s; default reaches "
                      f"{'-' if frac is None else f'{100 * frac:.1f}%'} of the bf16 peak "
                      f"({res['bf16_peak']['source']})."]
    return "\n".join(lines)


def quality_tables(quality: dict) -> list[str]:
    """The objectives rows (training, then sampler + report) and the utility row, where the run had them."""
    if not quality:
        return []
    lines = ["", "| quality row | result | train / sampler steps | train steps/s | evaluations | s/volume | fails | HU W1 | tissue gap | "
                 "Fréchet | MMD | nearest-train |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, q in quality.items():
        if name == "utility":
            continue
        if not q.get("ok"):
            lines.append(f"| {name} | FAILED: {q.get('error')} ||||||||||")
            continue
        fails = q.get("fails")
        lines.append(f"| {name} | ok | {fmt(q.get('steps'))} | {fmt(q.get('steps_per_s'))} | "
                     f"{fmt(q.get('network_evaluations'))} | {fmt(q.get('seconds_per_volume'))} | "
                     f"{'-' if fails is None else len(fails)} | {fmt(q.get('hu_histogram_w1'))} | "
                     f"{fmt(q.get('tissue_contrast_hu_gap'))} | {fmt(q.get('frechet_distance'))} | "
                     f"{fmt(q.get('mmd'))} | {fmt(q.get('nearest_train_similarity'))} |")
    u = quality.get("utility")
    if u is not None:
        lines += ["", "| utility | result | pairs train/synthetic/test | grid | seeds | iterations | s | "
                      "Dice real | Dice synthetic | Dice real+synthetic | gain [95%] | verdict |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        if not u.get("ok"):
            lines.append(f"| utility | FAILED: {u.get('error')} ||||||||||")
        else:
            interval = lambda v, ci: f"{fmt(v)} [{', '.join(fmt(x) for x in ci or [])}]"  # noqa: E731
            arms, gain, pairs = u["arms"], u["gain"], u["pairs"]
            lines.append(f"| utility | ok | {pairs['train']}/{pairs['synthetic']}/{pairs['test']} | "
                         f"{'x'.join(map(str, u.get('working_grid_xyz') or []))} | {u['seeds']} | "
                         f"{fmt(u.get('iterations'))} | {fmt(u['seconds'])} | "
                         + " | ".join(interval(arms[a]["dice"], arms[a]["dice_ci95"])
                                      for a in ("real", "synthetic", "real+synthetic"))
                         + f" | {interval(gain['dice'], gain['ci95'])} | {u['verdict']} |")
    return lines


if __name__ == "__main__":
    print(render(json.loads(Path(sys.argv[1]).read_text(encoding="utf-8"))))
