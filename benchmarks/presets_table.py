#!/usr/bin/env python
"""Side-by-side table of CT presets at any grid: parameters, FLOPs per training step, forward and training-step
time, peak memory, and seconds per generated volume for DDPM-1000 vs DDIM / DPM-Solver++ at the recommended steps.

    python benchmarks/presets_table.py --grid 64x64x26 --repeats 5 --optimizer sgd --device cpu
    python benchmarks/presets_table.py --grid 256x256x26 --device cuda --amp bf16 --json out.json

How each number is made:
- FLOPs: torch.utils.flop_counter.FlopCounterMode over forward + backward of one step, on the meta device (nothing
  is computed, so any grid is free), at --batch.
- Times: every measurement runs in its own child process (clean peak memory; the parent holds no model), and the
  presets take turns within each repeat (thesis, default, ..., thesis, default, ...), so load from other processes
  on a shared machine hits them alike. Reported: median over --repeats, with min..max, and the ratio of each
  preset's median to the first preset's, with the range of the per-repeat ratios as its noise.
- Training step: forward + MSE loss + backward + optimizer step (--optimizer adamw as in training, sgd for an
  update without optimizer state when memory is short, none for forward + backward only), after one untimed step.
- Peak memory: CUDA max_memory_allocated; CPU peak RSS of the child (weights, grads, optimizer state,
  activations, allocator slack).
- Generation: the engine's sampler loop (`sample`) for a measured prefix of --sample-measure steps per sampler,
  scaled to the sampler's full step count (labelled); one volume (batch 1).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

SAMPLERS = (("ddpm", 1000), ("ddim", 50), ("dpm++", 25))  # DEFAULT_SAMPLER_STEPS: what the docs recommend


def parse_grid(text: str) -> tuple[int, int, int]:
    x, y, z = (int(v) for v in text.lower().split("x"))
    return x, y, z


def preset_spec(name: str) -> dict:
    from CTDiffusionLib.presets import PRESETS

    return PRESETS["prostate-ct"][name]


def step_flops(spec: dict, shape: tuple) -> tuple[int, int]:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from CTDiffusionLib.models.factory import build_model, count_parameters

    with torch.device("meta"):
        model = build_model(spec)
        x, t = torch.empty(shape), torch.zeros(shape[0], dtype=torch.long)
        with FlopCounterMode(display=False) as counter:
            model(x, t).square().mean().backward()
    return counter.get_total_flops(), count_parameters(model)


# ---------------------------------------------------------------- child: one preset, one measurement
def measure(args) -> dict:
    import torch
    import torch.nn.functional as F

    from CTDiffusionLib.diffusion.sampling import sample
    from CTDiffusionLib.diffusion.schedulers import default_diffusion_config, sampler
    from CTDiffusionLib.models.factory import build_model
    from CTDiffusionLib.models.speed import apply_speed_settings

    device = torch.device(args.device)
    preset = preset_spec(args.worker)
    gx, gy, gz = parse_grid(args.grid)
    shape = (args.batch, 1, gz, gy, gx)
    torch.manual_seed(0)
    model = build_model(preset["model"]).to(device)
    apply_speed_settings(model, device, "3d", grad_checkpoint=args.grad_checkpoint, attention=args.attention)
    if args.compile:
        model.compile()
    amp = {"bf16": torch.bfloat16, "fp32": None}[args.amp]
    opt = {"adamw": lambda p: torch.optim.AdamW(p, lr=1e-4), "sgd": lambda p: torch.optim.SGD(p, lr=1e-4),
           "none": lambda p: None}[args.optimizer](model.parameters())
    x = torch.randn(shape, device=device)
    t = torch.randint(0, 1000, (args.batch,), device=device)
    if device.type == "cuda":
        x = x.to(memory_format=torch.channels_last_3d)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def train_step():
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            loss = F.mse_loss(model(x, t).float(), x.float())
        loss.backward()
        if opt is not None:
            opt.step()
        model.zero_grad(set_to_none=True)

    result = {}
    if not args.forward_only:
        model.train()
        train_step()  # untimed: allocator, oneDNN / cuDNN kernel choice, compile
        sync()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        t0 = time.perf_counter()
        train_step()
        sync()
        result["train_step_s"] = time.perf_counter() - t0
    result["peak_memory_gb"] = (torch.cuda.max_memory_allocated(device) / 1e9 if device.type == "cuda"
                                else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6)
    if opt is not None:
        del opt  # generation below needs no optimizer state
    model.eval()
    with torch.no_grad(), torch.autocast(device.type, dtype=amp, enabled=amp is not None):
        model(x[:1], t[:1])
        sync()
        t0 = time.perf_counter()
        model(x[:1], t[:1])
        sync()
    result["forward_s"] = time.perf_counter() - t0
    if args.forward_only:
        result["peak_memory_gb"] = (torch.cuda.max_memory_allocated(device) / 1e9 if device.type == "cuda"
                                    else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6)
    if args.sample_measure:
        diffusion = default_diffusion_config("linear", preset.get("prediction", "v"))
        for name, steps in SAMPLERS:
            sched = sampler(name, diffusion, steps)
            sched.timesteps = sched.timesteps[:args.sample_measure]
            t0 = time.perf_counter()
            sample(model, sched, (1, gz, gy, gx), [0], device, autocast_dtype=amp)
            sync()
            result[f"{name}_s_per_volume"] = (time.perf_counter() - t0) * steps / min(args.sample_measure, steps)
    return result


# ---------------------------------------------------------------- parent: interleave children, print the table
def run_child(args, preset: str) -> dict:
    cmd = [sys.executable, __file__, "--worker", preset, "--grid", args.grid, "--batch", str(args.batch),
           "--device", args.device, "--amp", args.amp, "--optimizer", args.optimizer, "--attention", args.attention,
           "--sample-measure", str(args.sample_measure)]
    cmd += ["--compile"] if args.compile else []
    cmd += ["--grad-checkpoint"] if args.grad_checkpoint else []
    cmd += ["--forward-only"] if args.forward_only else []
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    out = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"measuring {preset} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def summarise(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "runs": values}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--grid", default="64x64x26", help="XxYxZ (default 64x64x26: the thesis fits 4 GB of CPU RAM)")
    p.add_argument("--presets", default="thesis,default,native512")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--amp", choices=("fp32", "bf16"), default="fp32")
    p.add_argument("--optimizer", choices=("adamw", "sgd", "none"), default="adamw")
    p.add_argument("--attention", default="auto", help="auto | flash | efficient | math | plain")
    p.add_argument("--compile", action="store_true")
    p.add_argument("--grad-checkpoint", action="store_true")
    p.add_argument("--sample-measure", type=int, default=2,
                   help="sampler steps actually run per sampler (scaled to the full count); 0 skips generation")
    p.add_argument("--forward-only", action="store_true",
                   help="time forward passes only (no gradients: fits grids whose training step does not)")
    p.add_argument("--flops-only", action="store_true", help="parameters and FLOPs only (meta device, instant)")
    p.add_argument("--json", default=None, help="also write the results here")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        print(json.dumps(measure(args)))
        return 0

    import torch

    presets = [s.strip() for s in args.presets.split(",") if s.strip()]
    gx, gy, gz = parse_grid(args.grid)
    rows = {}
    for name in presets:
        flops, params = step_flops(preset_spec(name)["model"], (args.batch, 1, gz, gy, gx))
        rows[name] = {"parameters": params, "train_step_flops": flops}
    if not args.flops_only:
        runs = {name: [] for name in presets}
        for r in range(args.repeats):
            for name in presets:  # interleaved: each repeat measures every preset once
                runs[name].append(run_child(args, name))
                print(f"repeat {r + 1}/{args.repeats} {name}: {runs[name][-1]}", file=sys.stderr, flush=True)
        base = presets[0]
        timed = "forward_s" if args.forward_only else "train_step_s"
        for name in presets:
            row = rows[name]
            for key in runs[name][0]:
                row[key] = summarise([run[key] for run in runs[name]])
            ratios = [a[timed] / b[timed] for a, b in zip(runs[base], runs[name])]
            row["speedup_vs_" + base] = {"of": timed,
                "of_medians": rows[base][timed]["median"] / row[timed]["median"],
                "per_repeat_min": min(ratios), "per_repeat_max": max(ratios)}
    result = {"grid": args.grid, "batch": args.batch, "device": args.device, "amp": args.amp,
              "optimizer": args.optimizer, "repeats": args.repeats, "torch": torch.__version__,
              "threads": os.environ.get("OMP_NUM_THREADS"), "date": time.strftime("%Y-%m-%d"),
              "command": " ".join([Path(sys.executable).name, *sys.argv]), "presets": rows}
    print_table(result)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


def print_table(result: dict) -> None:
    rows = result["presets"]
    base = next(iter(rows))
    print(f"\nCT presets at {result['grid']} (x*y*z), batch {result['batch']}, {result['device']} {result['amp']}, "
          f"optimizer {result['optimizer']}, {result['repeats']} interleaved repeats (median [min..max])")
    head = "| preset | params | TFLOP/step | " + base + " FLOPs / preset FLOPs |"
    timed = "forward_s" in rows[base]
    training = "train_step_s" in rows[base]
    if timed:
        head += " forward s |" + (" train step s |" if training else "")
        head += f" {'train step' if training else 'forward'} speed-up vs {base} [per-repeat range] | peak GB |"
        head += "".join(f" {n}-{k} s/vol |" for n, k in SAMPLERS if f"{n}_s_per_volume" in rows[base])
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    for name, row in rows.items():
        line = (f"| {name} | {row['parameters'] / 1e6:.1f}M | {row['train_step_flops'] / 1e12:.3f} | "
                f"{rows[base]['train_step_flops'] / row['train_step_flops']:.2f} |")
        if timed:
            med = lambda key: f"{row[key]['median']:.2f} [{row[key]['min']:.2f}..{row[key]['max']:.2f}]"  # noqa: E731
            sp = row["speedup_vs_" + base]
            line += (f" {med('forward_s')} |" + (f" {med('train_step_s')} |" if training else "") +
                     f" {sp['of_medians']:.2f}x "
                     f"[{sp['per_repeat_min']:.2f}..{sp['per_repeat_max']:.2f}] | {row['peak_memory_gb']['median']:.2f} |")
            line += "".join(f" {row[f'{n}_s_per_volume']['median']:.1f} |" for n, _ in SAMPLERS
                            if f"{n}_s_per_volume" in row)
        print(line)


if __name__ == "__main__":
    sys.exit(main())
