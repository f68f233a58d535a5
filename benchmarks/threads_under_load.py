#!/usr/bin/env python3
"""Training and sampling speed beside competing busy processes: torch threads fixed at 2, fixed at 1, or chosen by
the thread governor (CTDiffusionLib/threads.py), issue 29 item 5.

    python benchmarks/threads_under_load.py --out DIR [--competitors 0,1,3] [--modes fixed2,fixed1,governor] \
        [--train-seconds 45] [--sample-seconds 45] [--num 4] [--no-sampling]

For each number of competitors it starts that many busy processes (`while True: pass`, at this script's own nice
level, so they compete on equal terms), waits 3 s, and then for each mode records the 1-minute load average and
runs, through the CLI as users do:
  train     `ctdiffusion train --preset demo --objective flow --amp on --batch-size 2` on 16 phantoms at 48x48x12
            (the CPU demo's settings), stopped with SIGTERM --train-seconds after its first progress event (its
            start-up took over 50 s under load); steps/s from its events.jsonl, the first 5 s after that excluded;
  sample    `ctdiffusion generate --num 4` (the model's default sampler, Euler 25 for the flow bundle the first
            training cell leaves) on the model of the first training cell, stopped --sample-seconds after its
            first progress event if not done; volume-steps/s from its progress events, shown as s/volume.
Modes: fixed2 / fixed1 set OMP_NUM_THREADS (the governor then leaves the count alone); governor sets nothing. The
governor's changes ("CPU threads: a -> b" in the log) are recorded per cell. Writes DIR/threads_under_load.json
and DIR/threads_under_load.md. Do not run it under `nice`: the measured jobs must compete like a user's would.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from CTDiffusionLib.events import read_events  # noqa: E402 (standard library only)
MODES = {"fixed2": {"OMP_NUM_THREADS": "2"}, "fixed1": {"OMP_NUM_THREADS": "1"}, "governor": {}}
WARMUP_S = 5.0  # progress events in the first seconds after the first one (first steps) are left out of the rate
STARTUP_LIMIT_S = 300.0  # a command that shows no progress by then is stopped
GOVERNOR_LINE = re.compile(r"(\d\d:\d\d:\d\d) INFO CPU threads: (\d+) -> (\d+) \((.*)\)")


def child_env(mode: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "CTDIFFUSION_THREADS",
                                                            "MKL_NUM_THREADS")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    return {**env, **MODES[mode]}


def cli(args: list[str]) -> list[str]:
    return [sys.executable, "-m", "CTDiffusionLib", *map(str, args)]


def load_now() -> dict:
    one, five, fifteen = os.getloadavg()
    uptime = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    return {"load_1min": one, "load_5min": five, "load_15min": fifteen, "uptime": uptime}


def rate(events: list[dict], start: float) -> dict:
    """Steps per second between the first progress event WARMUP_S after `start` and the last one."""
    steady = [e for e in events if e["time"] >= start + WARMUP_S]
    steady = steady if len(steady) >= 2 else events  # a short cell: every event
    if len(steady) < 2:
        return {"per_s": None, "steps": 0, "seconds": 0.0}
    steps, seconds = steady[-1]["step"] - steady[0]["step"], steady[-1]["time"] - steady[0]["time"]
    return {"per_s": steps / seconds if seconds > 0 else None, "steps": steps, "seconds": round(seconds, 2)}


def governor_changes(stderr: str) -> list[dict]:
    return [{"clock": m[1], "from": int(m[2]), "to": int(m[3]), "why": m[4]} for m in GOVERNOR_LINE.finditer(stderr)]


def first_progress(events: Path, proc: subprocess.Popen, limit: float) -> float:
    """Wait (at most `limit` seconds) until `events` holds a progress event; the time it was seen."""
    deadline = time.time() + limit
    while time.time() < deadline and proc.poll() is None:
        if events.exists() and '"event":"progress"' in events.read_text(encoding="utf-8", errors="replace"):
            break
        time.sleep(0.5)
    return time.time()


def run_for(cmd: list[str], env: dict, seconds: float, log: Path, events: Path,
            stdout: Path | None = None) -> tuple[float, int]:
    """Run `cmd` until `seconds` after its first progress event (start-up under load took over 50 s), then SIGTERM
    it (the CLI's clean stop) and wait; (time of the first progress event, exit code)."""
    with log.open("w") as err, (stdout.open("w") if stdout else open(os.devnull, "w")) as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=err, cwd=ROOT)
        start = first_progress(events, proc, STARTUP_LIMIT_S)
        try:
            proc.wait(timeout=seconds)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=180)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    return start, proc.returncode


def train_cell(work: Path, data: Path, mode: str, seconds: float) -> dict:
    run = work / "run"
    start, code = run_for(cli(["train", "--profile", "prostate-ct", "--data", data, "--out", run, "--preset", "demo",
                               "--objective", "flow", "--amp", "on", "--batch-size", "2", "--steps", 100000,
                               "--sample-every", 0, "--checkpoint-every", 100000, "--device", "cpu", "--seed", 0]),
                          child_env(mode), seconds, work / "train.log", run / "events.jsonl")
    progress = [e for e in read_events(run / "events.jsonl") if e["event"] == "progress" and e.get("phase") == "train"]
    return {"exit_code": code, "run": str(run), **{f"steps_{k}": v for k, v in rate(progress, start).items()},
            "last_step": progress[-1]["step"] if progress else 0,
            "governor": governor_changes((work / "train.log").read_text(encoding="utf-8", errors="replace"))}


def sample_cell(work: Path, model: Path, mode: str, seconds: float, num: int) -> dict:
    start, code = run_for(cli(["generate", "--model", model, "--num", num, "--out", work / "generated",
                               "--device", "cpu", "--seed", 0, "--events"]),
                          child_env(mode), seconds, work / "generate.log", work / "generate.jsonl",
                          stdout=work / "generate.jsonl")
    progress = [e for e in read_events(work / "generate.jsonl") if e["event"] == "progress"
                and e.get("phase") == "sampling"]
    sidecars = sorted((work / "generated").glob("*.json"))
    sampler = json.loads(sidecars[0].read_text(encoding="utf-8")) if sidecars else {}
    steps = sampler.get("steps") or (progress[-1]["total"] // num if progress else None)
    r = rate(progress, start)
    return {"exit_code": code, "sampler": sampler.get("sampler"), "steps": steps, "volumes_done": len(sidecars),
            "volume_steps_done": progress[-1]["step"] if progress else 0,
            "volume_steps_per_s": r["per_s"], "window_s": r["seconds"],
            "seconds_per_volume": steps / r["per_s"] if r["per_s"] and steps else None,
            "governor": governor_changes((work / "generate.log").read_text(encoding="utf-8", errors="replace"))}


def threads_text(mode: str, cell: dict) -> str:
    if mode != "governor":
        return MODES[mode]["OMP_NUM_THREADS"]
    changes = cell.get("governor") or []
    return "torch's default" + "".join(f" -> {c['to']} ({c['clock']})" for c in changes)


def train_speed(cell: dict, seconds: float) -> str:
    """Steps/s; for a cell too slow for a rate, the steps it had made `seconds` after its first progress event."""
    t = cell["train"]
    if t["steps_per_s"] is not None:
        return f"{t['steps_per_s']:.2f}"
    steps = t["last_step"]
    return f"– ({steps} step{'s' * (steps != 1)} in {seconds:.0f} s)"


def sample_speed(cell: dict, seconds: float) -> str:
    """Seconds per volume; for a cell too slow for a rate, the volume-steps it had made `seconds` after its first
    progress event."""
    s = cell.get("sample")
    if not s:
        return "–"
    if s["seconds_per_volume"] is not None:
        return f"{s['seconds_per_volume']:.2f}"
    return f"– ({s.get('volume_steps_done', '?')} volume-steps in {seconds:.0f} s)"


def markdown(cells: list[dict], train_seconds: float, sample_seconds: float) -> str:
    lines = ["| competing busy processes | torch threads | load 1/5/15 min before | train steps/s | "
             "threads during training | sample s/volume | threads during sampling |",
             "|---|---|---|---|---|---|---|"]
    for c in cells:
        t, s, ld = c["train"], c.get("sample") or {}, c["load_before"]
        lines.append(f"| {c['competitors']} | {c['mode']} | {ld['load_1min']:.2f} / {ld['load_5min']:.2f} / "
                     f"{ld['load_15min']:.2f} | {train_speed(c, train_seconds)} | {threads_text(c['mode'], t)} | "
                     f"{sample_speed(c, sample_seconds)} | {threads_text(c['mode'], s) if s else '–'} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="a new folder")
    p.add_argument("--competitors", default="0,1,3")
    p.add_argument("--modes", default="fixed2,fixed1,governor")
    p.add_argument("--train-seconds", type=float, default=45)
    p.add_argument("--sample-seconds", type=float, default=45)
    p.add_argument("--num", type=int, default=4, help="volumes per sampling cell")
    p.add_argument("--no-sampling", action="store_true")
    a = p.parse_args(argv)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=False)
    modes = [m for m in a.modes.split(",") if m]
    unknown = set(modes) - set(MODES)
    if unknown:
        p.error(f"unknown mode(s) {sorted(unknown)}; choose from {sorted(MODES)}")
    data = out / "data"
    subprocess.run(cli(["phantoms", "--profile", "prostate-ct", "--num", 16, "--out", data, "--size", "48x48x12",
                        "--seed", 0]), env=child_env("governor"), check=True, capture_output=True)
    result = {"format": "ctdiffusion-threads-under-load/1", "cpus": os.cpu_count(),
              "affinity": sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
              "nice": os.nice(0), "train_seconds": a.train_seconds, "sample_seconds": a.sample_seconds,
              "num": a.num, "cells": []}
    model = None
    for n in [int(x) for x in a.competitors.split(",")]:
        busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]
        try:
            time.sleep(3.0 if n else 0.0)
            for mode in modes:
                work = out / f"busy{n}_{mode}"
                work.mkdir()
                cell = {"competitors": n, "mode": mode, "load_before": load_now()}
                cell["train"] = train_cell(work, data, mode, a.train_seconds)
                model = model or (Path(cell["train"]["run"]) if (Path(cell["train"]["run"]) / "model").is_dir()
                                  else None)
                if not a.no_sampling and model is not None:
                    cell["sample"] = sample_cell(work, model, mode, a.sample_seconds, a.num)
                result["cells"].append(cell)
                print(f"[threads_under_load] {n} busy, {mode}: {cell['train']['steps_per_s']} steps/s, "
                      f"{(cell.get('sample') or {}).get('seconds_per_volume')} s/volume", file=sys.stderr, flush=True)
                (out / "threads_under_load.json").write_text(json.dumps(result, indent=1), encoding="utf-8")
        finally:
            for proc in busy:
                proc.kill()
                proc.wait()
    table = markdown(result["cells"], a.train_seconds, a.sample_seconds)
    (out / "threads_under_load.md").write_text(table + "\n", encoding="utf-8")
    print(table)
    return 0 if all(c["train"]["last_step"] for c in result["cells"]) else 1  # every cell trained


if __name__ == "__main__":
    sys.exit(main())
