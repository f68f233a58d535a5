"""`ctdiffusion demo`: phantoms -> train (tiny, CPU) -> generate -> evaluate, in a few minutes on 2 cores.

It runs the same sub-commands a user would, in-process, and prints where every result is.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from CTDiffusionLib.errors import InputError

# per profile: phantom size (whole field of view, coarse pixels), preset, grid, training steps, batch
DEMO = {
    "prostate-ct": {"size": "48x48x12", "preset": "demo", "grid": None, "steps": 650, "batch": 2, "train": 16,
                    "heldout": 8},
    "cardiac-masks": {"size": "128x128x8", "preset": "tiny2d", "grid": "48x48", "steps": 300, "batch": 16,
                      "train": 15, "heldout": 5},
}


def run_demo(args) -> int:
    from CTDiffusionLib.cli import main

    spec = DEMO[args.profile]
    out = Path(args.out).resolve()
    if out.exists() and any(out.iterdir()):
        raise InputError(f"The demo folder {out} is not empty.", "Remove it or pass --out NEW_FOLDER.")
    steps = args.steps or spec["steps"]
    stages = {
        "phantoms (training set)": ["phantoms", "--profile", args.profile, "--num", spec["train"], "--out",
                                    out / "data" / "train", "--size", spec["size"], "--seed", 0],
        "phantoms (held-out real set)": ["phantoms", "--profile", args.profile, "--num", spec["heldout"], "--out",
                                         out / "data" / "heldout", "--size", spec["size"], "--seed", 1000],
        "train": ["train", "--profile", args.profile, "--data", out / "data" / "train", "--out", out / "run",
                  "--preset", spec["preset"], "--steps", steps, "--batch-size", spec["batch"], "--device",
                  args.device, "--checkpoint-every", max(1, steps // 4), "--sample-every", max(1, steps // 2),
                  *(["--grid", spec["grid"]] if spec["grid"] else [])],
        "generate": ["generate", "--model", out / "run", "--num", 8, "--out", out / "generated", "--sampler",
                     "dpm++", "--steps", 25, "--seed", 0, "--device", args.device],
        "evaluate": ["evaluate", "--real", out / "data" / "heldout", "--train", out / "data" / "train",
                     "--generated", out / "generated", "--out", out / "report", "--run", out / "run",
                     "--device", args.device],
    }
    t0 = time.time()
    for name, argv in stages.items():
        t = time.time()
        print(f"[demo] {name} ...", file=sys.stderr, flush=True)
        code = main([str(a) for a in argv])
        if code != 0:
            print(f"[demo] {name} failed with exit code {code}", file=sys.stderr)
            return code
        print(f"[demo] {name} done in {time.time() - t:.0f} s", file=sys.stderr, flush=True)
    print(f"""
CTDiffusion demo finished in {time.time() - t0:.0f} s ({args.profile}, {steps} training steps on {args.device}).
  training data     {out / 'data' / 'train'}
  run folder        {out / 'run'}   (config.json, events.jsonl, checkpoints/, model/, samples/)
  model bundle      {out / 'run' / 'model'}
  generated volumes {out / 'generated'}
  quality report    {out / 'report' / 'report.html'}
  metrics           {out / 'report' / 'metrics.json'}
""")
    return 0
