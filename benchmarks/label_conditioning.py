#!/usr/bin/env python3
"""Concatenated label channels vs a ControlNet-style branch (issue 26 item 3), measured on phantom pairs.

    python benchmarks/label_conditioning.py --out DIR [--steps 1000] [--arms concat,controlnet]

For each arm, one paired run (`train --with-labels --label-conditioning ARM`, the paired demo's preset, grid,
structures and batch) trains its CT model for --steps steps; both arms train at the same time, so they share the
machine's load. The label model that a paired run trains next is not needed here: the script asks the run to stop
once the CT model's bundle is written. Then `generate --from-labels` makes the CT for each held-out label map, and a
segmenter trained on the real training pairs (utility/adherence.py) scores how closely each CT follows its label
map (Dice per structure, against the real-vs-real reference), beside the HU median [Q1, Q3] per structure.
Writes DIR/label_conditioning.json and prints markdown tables.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from CTDiffusionLib.cli import main as ctdiffusion  # noqa: E402
from CTDiffusionLib.demo import PAIRED_DEMO  # noqa: E402
from CTDiffusionLib.evaluation.structure_table import hu_cell  # noqa: E402
from CTDiffusionLib.evaluation.structures import structure_hu  # noqa: E402
from CTDiffusionLib.requests import GenerateRequest, PhantomsRequest, TrainRequest  # noqa: E402
from CTDiffusionLib.runfolder import RunFolder  # noqa: E402
from CTDiffusionLib.utility.adherence import fit_segmenter, reference_dice, set_dice  # noqa: E402


def _train(arm: str, data: Path, run: Path, steps: int) -> subprocess.Popen:
    request = TrainRequest(profile=PAIRED_DEMO["profile"], data=[str(data)], out=str(run), with_labels=True,
                           structures=PAIRED_DEMO["structures"], label_conditioning=arm, preset=PAIRED_DEMO["preset"],
                           steps=steps, batch_size=PAIRED_DEMO["batch"], checkpoint_every=steps, sample_every=0,
                           device="cpu")
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    return subprocess.Popen([sys.executable, "-m", "CTDiffusionLib", *request.argv()], env=env,
                            stdout=subprocess.DEVNULL, stderr=open(run.parent / f"{arm}.log", "w"))


def _ct_model_seconds_per_step(run: Path) -> float | None:
    """From the CT model's own progress events: wall seconds per optimisation step."""
    steps = []
    for line in RunFolder(run).events.read_text(encoding="utf-8").splitlines():
        event = json.loads(line)
        if event.get("event") == "progress" and "step" in event:
            steps.append((event["step"], event.get("time") or event.get("elapsed_s")))
    timed = [(s, t) for s, t in steps if isinstance(t, (int, float))]
    if len(timed) < 2:
        return None
    (s0, t0), (s1, t1) = timed[0], timed[-1]
    return (t1 - t0) / (s1 - s0) if s1 > s0 else None


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--arms", default="concat,controlnet")
    p.add_argument("--sampler", default="ddpm:250", help="NAME:STEPS for generate --from-labels")
    a = p.parse_args(argv)
    out, arms = a.out.resolve(), a.arms.split(",")
    sampler, sampling_steps = a.sampler.split(":")
    train, heldout = out / "data" / "train", out / "data" / "heldout"
    for folder, num, seed in ((train, PAIRED_DEMO["train"], 0), (heldout, PAIRED_DEMO["heldout"], 1000)):
        if not folder.exists():
            assert ctdiffusion(PhantomsRequest(profile=PAIRED_DEMO["profile"], num=num, out=str(folder), seed=seed,
                                               size=PAIRED_DEMO["size"], with_labels=True).argv()) == 0
    runs = {arm: out / arm / "run" for arm in arms}
    started = {}
    for arm, run in runs.items():
        run.parent.mkdir(parents=True, exist_ok=True)
        started[arm] = (_train(arm, train, run, a.steps), time.time())
    done_at = {}
    while len(done_at) < len(runs):  # stop each run once its CT bundle exists (the label model is not needed)
        for arm, (proc, _) in started.items():
            if arm not in done_at and RunFolder(runs[arm]).bundle.meta.is_file():
                done_at[arm] = time.time()
                RunFolder(runs[arm]).stop_request.write_text("stop", encoding="utf-8")
            elif arm not in done_at and proc.poll() is not None:
                raise SystemExit(f"{arm}: training ended with exit code {proc.returncode}; see {out / arm}.log")
        time.sleep(5)
    for proc, _ in started.values():
        proc.wait()
    segmenter = fit_segmenter(str(train), structures=PAIRED_DEMO["structures"])
    result = {"steps": a.steps, "sampler": a.sampler, "load_average": os.getloadavg(),
              "reference": reference_dice(segmenter, str(heldout)), "arms": {},
              "hu": {"real": structure_hu(str(heldout), segmenter.structures)}}
    for arm, run in runs.items():
        generated = out / arm / "generated"
        t = time.time()
        assert ctdiffusion(GenerateRequest(model=str(run), from_labels=str(heldout / "labelsTr"), out=str(generated),
                                           sampler=sampler, steps=int(sampling_steps), device="cpu").argv()) == 0
        result["arms"][arm] = {"dice": set_dice(segmenter, str(generated))["per_structure"],
                               "ct_model_wall_s": done_at[arm] - started[arm][1],
                               "seconds_per_step": _ct_model_seconds_per_step(run),
                               "generate_s": time.time() - t}
        result["hu"][arm] = structure_hu(str(generated), segmenter.structures)
    (out / "label_conditioning.json").write_text(json.dumps(result, indent=2, default=float), encoding="utf-8")
    print("| structure | real-vs-real reference [95% interval] | " + " | ".join(arms) + " |")
    print("|---|---|" + "---|" * len(arms))
    for name, ref in result["reference"].items():
        cells = [result["arms"][arm]["dice"].get(name, {}).get("dice") for arm in arms]
        lo, hi = ref["dice_ci95"] or (None, None)
        print(f"| {name} | {ref['dice']:.2f} [{lo:.2f}, {hi:.2f}] | "
              + " | ".join("-" if c is None else f"{c:.2f}" for c in cells) + " |")
    print("\n| structure | " + " | ".join(result["hu"]) + " |\n|---|" + "---|" * len(result["hu"]))
    for name in result["reference"]:
        print(f"| {name} | " + " | ".join(hu_cell(result["hu"][k][name]) for k in result["hu"]) + " |")
    for arm in arms:
        r = result["arms"][arm]
        print(f"{arm}: CT model {r['ct_model_wall_s']:.0f} s for {a.steps} steps, generate {r['generate_s']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
