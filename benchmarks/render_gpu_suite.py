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
             f"; {res['wall_seconds']} s{'' if res.get('complete') else ' — INCOMPLETE (stopped before the end)'}.", "", "| check | result | detail |", "|---|---|---|"]
    for name, c in res["checks"].items():
        state = {True: "ok", False: "FAILED", None: "n/a"}[c.get("ok")]
        detail = c.get("error") or ", ".join(f"{k} {fmt(v)}" for k, v in c.items()
                                             if k not in ("ok", "traceback", "data", "seconds"))
        lines.append(f"| {name} | {state} | {detail} |")
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
    s = res.get("summary")
    if s:
        frac = s.get("default_fraction_of_bf16_peak")
        lines += ["", f"default / thesis: {s['default_over_thesis_samples_per_s']:.2f}x samples/s, "
                      f"{s['default_over_thesis_steps_per_s']:.2f}x steps/s; default reaches "
                      f"{'-' if frac is None else f'{100 * frac:.1f}%'} of the bf16 peak "
                      f"({res['bf16_peak']['source']})."]
    return "\n".join(lines)


if __name__ == "__main__":
    print(render(json.loads(Path(sys.argv[1]).read_text(encoding="utf-8"))))
