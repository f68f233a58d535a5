#!/usr/bin/env python
"""The GPU suite: CUDA correctness checks, then the GPU measurements (thesis vs default, native512, generation).

    python benchmarks/gpu_suite.py --out benchmarks/results/gpu-suite.json            # on the GPU (via gpu_suite.sh)
    python benchmarks/gpu_suite.py --dry-run --out /tmp/gpu-suite-dry.json            # anywhere: CPU, tiny sizes

Checks (each records ok / failed with the error, and never stops the suite):
  train_step[preset, dtype]  one training step of thesis / default / native512 in fp32 and bf16 autocast: finite
                             loss, finite gradients
  channels_last              default's output in NDHWC equals NCDHW (fp32)
  attention[backend]         forced flash / efficient / math SDPA kernels give the plain-softmax result
  compile                    torch.compile'd default: same loss as eager, then its step time
  grad_checkpoint            same gradients with and without gradient checkpointing
  resume                     engine CLI: 4 steps straight vs 2 + --resume 2: max weight difference (0 = bit-for-bit)
  ddp                        engine CLI under torchrun, 2 processes (gloo on CPU: NCCL cannot put two ranks on one GPU)
Measurements (at the presets' grids; --dry-run shrinks every network 8x in width and uses small grids):
  thesis baseline (fp32, batch 1, plain attention) vs default fast path (bf16, channels-last, SDPA, compile):
  steps/s, samples/s, counted FLOPs per step (FlopCounterMode), achieved TFLOP/s and % of the bf16 dense peak;
  native512 training step and peak memory; seconds per generated volume (dpm++-25, batch 1) at 256 and 512.
Quality rows (benchmarks/gpu_quality.py; `--only objectives,utility` runs just these, with their own time limit):
  objectives  `default` preset at 256x256x26, the DDPM (v-prediction) and the rectified-flow objective trained for
              the same --objective-minutes each, then DDPM + DPM-Solver++ 25, DDPM + DDPM 250, flow + Euler 25:
              steps/s, s/volume, the quality report's fails / HU W1 / tissue gap / Frechet / MMD / nearest-train
  utility     `ctdiffusion utility` on phantom pairs at 256x256x26, K = 2 seeds: wall time, arms, gain, verdict
Parts: checks, speed, objectives, utility (and compile, resume, ddp inside them); --only and --skip take these.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from CTDiffusionLib.diffusion.sampling import sample  # noqa: E402
from CTDiffusionLib.diffusion.schedulers import default_diffusion_config, sampler  # noqa: E402
from CTDiffusionLib.models.factory import build_model, count_parameters  # noqa: E402
from CTDiffusionLib.models.speed import apply_speed_settings  # noqa: E402
from CTDiffusionLib.presets import PRESETS  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import gpu_quality  # noqa: E402

# Dense bf16 tensor-core peak (no sparsity) from NVIDIA's data sheets, by device-name fragment.
BF16_PEAK_TFLOPS = {"H200": 989.0, "H100 SXM": 989.0, "H100 NVL": 835.0, "H100 PCIe": 756.0, "H100": 756.0,
                    "A100": 312.0, "L40S": 362.0}
CT_PRESETS = ("thesis", "default", "native512")


def log(msg: str) -> None:
    print(f"[gpu-suite {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def shrink(spec: dict, factor: int = 8) -> dict:
    """The same network, `factor` times narrower (for --dry-run: every layer kind and level, little compute)."""
    spec = json.loads(json.dumps(spec))
    kw = spec["kwargs"]
    key = "block_out_channels" if spec["type"] == "thesis_unet" else "channels"
    kw[key] = [max(4, c // factor) for c in kw[key]]
    kw["norm_groups"] = 4
    kw["head_dim"] = min(kw.get("head_dim", 8), 8)
    return spec


def preset_model(name: str, dry: bool) -> tuple[dict, list[int]]:
    """(model spec, grid x, y, z) of a CT preset; --dry-run: 8x narrower on a grid its levels still divide."""
    p = PRESETS["prostate-ct"][name]
    if not dry:
        return p["model"], list(p["grid"])
    levels = len(p["model"]["kwargs"].get("channels") or p["model"]["kwargs"]["block_out_channels"])
    side = 2 ** (levels - 1)
    return shrink(p["model"]), [side, side, 26]


def make_model(spec: dict, device: torch.device, *, channels_last=False, attention="auto", checkpointing=False,
               seed=0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = build_model(spec).to(device)
    apply_speed_settings(model, device, "3d", grad_checkpoint=checkpointing, attention=attention,
                         channels_last=channels_last)
    return model


def batch_for(grid, batch: int, device: torch.device, channels_last=False, seed=1):
    g = torch.Generator("cpu").manual_seed(seed)
    x = torch.randn((batch, 1, grid[2], grid[1], grid[0]), generator=g).to(device)
    t = torch.randint(0, 1000, (batch,), generator=g).to(device)
    return (x.to(memory_format=torch.channels_last_3d) if channels_last else x), t


def loss_of(model, x, t, amp):
    with torch.autocast(x.device.type, dtype=amp, enabled=amp is not None):
        return F.mse_loss(model(x, t).float(), x.float())


SAVE = [lambda: None]  # main() points this at "write the JSON so far": a run stopped by the time limit keeps its data


def check(results: dict, name: str, fn) -> None:
    log(f"check {name} ...")
    t0 = time.perf_counter()
    try:
        results[name] = {"ok": True, **(fn() or {})}
    except Exception as exc:  # noqa: BLE001 - recorded, the suite goes on
        results[name] = {"ok": False, "error": f"{type(exc).__name__}: {exc}".splitlines()[0][:500],
                         "traceback": traceback.format_exc()[-2000:]}
    results[name]["seconds"] = round(time.perf_counter() - t0, 2)
    log(f"check {name}: {'ok' if results[name]['ok'] else 'FAILED ' + results[name]['error']}")
    SAVE[0]()


# ---------------------------------------------------------------- checks
def check_train_step(spec, grid, device, amp):
    model = make_model(spec, device, channels_last=device.type == "cuda")
    x, t = batch_for(grid, 1, device, channels_last=device.type == "cuda")
    loss = loss_of(model, x, t, amp)
    loss.backward()
    bad = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    if not torch.isfinite(loss) or bad:
        raise AssertionError(f"loss {loss.item()}, non-finite or missing gradients in {bad[:3]}")
    return {"loss": loss.item()}


def check_channels_last(spec, grid, device):
    a = make_model(spec, device)
    b = make_model(spec, device)
    b.enable_channels_last()  # directly, so a CPU dry run goes through it too
    x, t = batch_for(grid, 1, device)
    with torch.no_grad():
        ya, yb = a(x, t), b(x.to(memory_format=torch.channels_last_3d), t)
    diff = (ya - yb).abs().max().item()
    scale = ya.abs().max().item()
    if diff > 1e-3 * max(scale, 1e-6) + 1e-5:
        raise AssertionError(f"channels-last output differs by {diff} (output scale {scale})")
    return {"max_abs_diff": diff}


def check_attention(backend, device):
    from CTDiffusionLib.models.attention import TokenAttention

    torch.manual_seed(0)
    layer = TokenAttention(512, 8, 32).to(device)
    x = torch.randn(2, 512, 4, 8, 8, device=device)
    out = {}
    for name in ("plain", backend):
        layer.backend = name
        with torch.no_grad():
            out[name] = layer(x)
    diff = (out[backend] - out["plain"]).abs().max().item()
    if diff > 1e-3:
        raise AssertionError(f"{backend} differs from plain softmax by {diff}")
    return {"max_abs_diff": diff}


def check_compile(spec, grid, device):
    eager = make_model(spec, device, channels_last=device.type == "cuda")
    compiled = make_model(spec, device, channels_last=device.type == "cuda")
    compiled.compile()
    x, t = batch_for(grid, 1, device, channels_last=device.type == "cuda")
    le, lc = loss_of(eager, x, t, None), loss_of(compiled, x, t, None)
    lc.backward()
    if abs(le.item() - lc.item()) > 1e-3 * abs(le.item()) + 1e-5:
        raise AssertionError(f"compiled loss {lc.item()} vs eager {le.item()}")
    sync(device)
    t0 = time.perf_counter()
    loss_of(compiled, x, t, None).backward()
    sync(device)
    return {"eager_loss": le.item(), "compiled_loss": lc.item(), "compiled_step_s": time.perf_counter() - t0}


def check_grad_checkpoint(spec, grid, device):
    a = make_model(spec, device)
    b = make_model(spec, device, checkpointing=True)
    x, t = batch_for(grid, 1, device)
    loss_of(a, x, t, None).backward()
    loss_of(b, x, t, None).backward()
    worst = max((pa.grad - pb.grad).abs().max().item() for pa, pb in zip(a.parameters(), b.parameters()))
    if worst > 1e-4:
        raise AssertionError(f"gradients differ by {worst} with checkpointing")
    return {"max_grad_diff": worst}


def _cli(args: list[str], env_extra: dict | None = None, torchrun: bool = False,
         timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
           **(env_extra or {})}
    prefix = ([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"] if torchrun
              else [sys.executable])
    done = subprocess.run([*prefix, "-m", "CTDiffusionLib", *args], env=env, capture_output=True, text=True,
                          timeout=timeout)
    if done.returncode != 0:
        last = next((line for line in reversed(done.stderr.splitlines()) if line.strip()), "")
        raise RuntimeError(f"{' '.join(args[:1])} exited {done.returncode}: {last.strip()} (stderr: "
                           f"{done.stderr[-1500:]})")
    return done


def _weights(run: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(run / "model" / "model.safetensors"))


def check_resume(work: Path, device_flag: str):
    """4 steps straight (checkpoints at 2 and 4); a copy of that run folder without its step-4 checkpoint then
    resumes from step 2 to 4 under the same configuration; the two final bundles are compared weight by weight."""
    import shutil

    from CTDiffusionLib.data.phantoms import write_phantom_dataset
    from CTDiffusionLib.runfolder import RunFolder

    data = write_phantom_dataset("prostate-ct", 3, work / "ct", seed=2, size_xyz=(48, 48, 12))
    # a fixed CPU thread count: the thread governor would follow the load, and a different count rounds differently
    fixed = {"CTDIFFUSION_THREADS": "1"}
    _cli(["train", "--profile", "prostate-ct", "--preset", "tiny", "--data", str(data), "--out", str(work / "full"),
          "--steps", "4", "--checkpoint-every", "2", "--sample-every", "0", "--val-fraction", "0", "--seed", "3",
          "--device", device_flag, "--batch-size", "2"], fixed)
    shutil.copytree(work / "full", work / "split")
    RunFolder(work / "split").checkpoint(4).unlink()
    _cli(["train", "--profile", "prostate-ct", "--out", str(work / "split"), "--resume", "--device", device_flag],
         fixed)
    a, b = _weights(work / "full"), _weights(work / "split")
    diff = max((a[k].double() - b[k].double()).abs().max().item() for k in a)
    if device_flag == "cpu" and diff != 0.0:
        raise AssertionError(f"resumed weights differ by {diff} on the CPU, where resume is exact")
    return {"max_weight_diff": diff, "bit_for_bit": diff == 0.0, "data": str(data)}


def check_ddp(work: Path):
    data = work / "ct"
    _cli(["train", "--profile", "prostate-ct", "--preset", "tiny", "--data", str(data), "--out", str(work / "ddp"),
          "--steps", "3", "--batch-size", "2", "--sample-every", "0", "--val-fraction", "0", "--device", "cpu"],
         {"OMP_NUM_THREADS": "1"}, torchrun=True)
    return {"backend": "gloo (CPU)", "note": "NCCL cannot run two ranks on one GPU; the CUDA path needs 2 GPUs"}


# ---------------------------------------------------------------- measurements
def step_flops(spec, grid, batch) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        model = build_model(spec)
        x, t = torch.empty(batch, 1, grid[2], grid[1], grid[0]), torch.zeros(batch, dtype=torch.long)
        with FlopCounterMode(display=False) as counter:
            model(x, t).square().mean().backward()
    return counter.get_total_flops()


def measure_training(spec, grid, device, *, batch, amp, attention, channels_last, compile_, steps) -> dict:
    model = make_model(spec, device, channels_last=channels_last, attention=attention)
    if compile_:
        model.compile()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x, t = batch_for(grid, batch, device, channels_last=channels_last)

    def step():
        loss_of(model, x, t, amp).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(3 if compile_ else 1):
        step()
    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    dt = (time.perf_counter() - t0) / steps
    flops = step_flops(spec, grid, batch)
    out = {"batch": batch, "grid": grid, "amp": "bf16" if amp else "fp32", "attention": attention,
           "channels_last": channels_last, "compile": compile_, "steps_timed": steps, "seconds_per_step": dt,
           "steps_per_s": 1 / dt, "samples_per_s": batch / dt, "step_flops": flops,
           "achieved_tflops": flops / dt / 1e12, "parameters": count_parameters(model)}
    if device.type == "cuda":
        out["peak_memory_gb"] = torch.cuda.max_memory_allocated(device) / 1e9
    del model, opt
    return out


def measure_generation(spec, grid, device, amp, measure_steps=None) -> dict:
    model = make_model(spec, device, channels_last=device.type == "cuda").eval()
    diffusion = default_diffusion_config("linear", "v")
    sched = sampler("dpm++", diffusion, 25)
    total = len(sched.timesteps)
    if measure_steps:
        sched.timesteps = sched.timesteps[:measure_steps]
    warm = sampler("dpm++", diffusion, 25)
    warm.timesteps = warm.timesteps[:1]
    shape = (1, grid[2], grid[1], grid[0])
    sample(model, warm, shape, [0], device, autocast_dtype=amp)
    sync(device)
    t0 = time.perf_counter()
    sample(model, sched, shape, [0], device, autocast_dtype=amp)
    sync(device)
    dt = time.perf_counter() - t0
    return {"sampler": "dpm++", "steps": total, "steps_measured": len(sched.timesteps), "grid": grid,
            "seconds_per_volume": dt * total / len(sched.timesteps)}


def bf16_peak(device: torch.device) -> dict:
    if device.type != "cuda":
        return {"tflops": None, "source": "no GPU"}
    name = torch.cuda.get_device_name(device)
    for key, value in BF16_PEAK_TFLOPS.items():
        if key in name:
            return {"tflops": value, "source": f"NVIDIA data sheet, dense bf16, matched '{key}' in '{name}'"}
    return {"tflops": None, "source": f"unknown device {name!r}"}


PARTS = ("checks", "speed", "objectives", "utility")
SUB_CHECKS = ("compile", "resume", "ddp")  # inside checks (compile also in speed); --skip takes them too


def chosen_parts(only: str, skip: str) -> set[str]:
    """The parts (and sub-checks) to run: --only's parts (default: all), less what --skip names."""
    names = lambda text: {s.strip() for s in text.split(",") if s.strip()}  # noqa: E731
    bad = (names(only) - set(PARTS)) | (names(skip) - {*PARTS, *SUB_CHECKS})
    if bad:
        raise SystemExit(f"gpu_suite: unknown part(s) {sorted(bad)}: --only takes {', '.join(PARTS)}; --skip "
                         f"also {', '.join(SUB_CHECKS)}")
    wanted = names(only) or set(PARTS)
    if wanted & {"checks", "speed"}:
        wanted |= set(SUB_CHECKS)
    return wanted - names(skip)


def _long_cli(args: list[str]) -> subprocess.CompletedProcess:
    return _cli(args, timeout=900)


def run_objectives(quality: dict, work: Path, device_flag: str, dry: bool, minutes: float) -> None:
    """Both objectives trained for the same budget, then every sampler row of gpu_quality.OBJECTIVE_ROWS."""
    folder = work / "quality"
    for objective in ("ddpm", "flow"):
        check(quality, f"train[{objective}]", lambda o=objective: gpu_quality.train_objective(
            _long_cli, folder, o, device_flag, dry, minutes))
    for objective, name, steps in gpu_quality.OBJECTIVE_ROWS:
        check(quality, f"{objective} {name}-{steps}", lambda o=objective, n=name, k=steps: gpu_quality.objective_row(
            _long_cli, folder, o, n, k, device_flag, dry))


def run_checks(checks: dict, parts: set, device, dry: bool, bf16_ok: bool, work: Path, device_flag: str) -> None:
    default_spec, default_grid = preset_model("default", dry)
    for name in CT_PRESETS:
        spec, grid = preset_model(name, dry)
        for dtype in ("fp32", "bf16"):
            if dtype == "bf16" and not bf16_ok:
                checks[f"train_step[{name},bf16]"] = {"ok": None, "note": "GPU without bf16: fp32 only"}
                continue
            check(checks, f"train_step[{name},{dtype}]",
                  lambda s=spec, g=grid, d=dtype: check_train_step(s, g, device,
                                                                   torch.bfloat16 if d == "bf16" else None))
    for name in CT_PRESETS:
        spec, grid = preset_model(name, dry)
        check(checks, f"channels_last[{name}]", lambda s=spec, g=grid: check_channels_last(s, g, device))
    for backend in (("flash", "efficient", "math") if device.type == "cuda" else ("flash", "math")):
        check(checks, f"attention[{backend}]", lambda b=backend: check_attention(b, device))
    if "compile" in parts:
        check(checks, "compile", lambda: check_compile(default_spec, default_grid, device))
    check(checks, "grad_checkpoint", lambda: check_grad_checkpoint(default_spec, default_grid, device))
    if "resume" in parts:
        check(checks, "resume", lambda: check_resume(work / "resume", device_flag))
    if "ddp" in parts and "resume" in parts:  # it trains on the resume check's phantoms
        check(checks, "ddp", lambda: check_ddp(work / "resume"))


def run_speed(res: dict, parts: set, device, dry: bool, bf16_ok: bool) -> None:
    meas = res["measurements"]
    default_spec, default_grid = preset_model("default", dry)
    amp = torch.bfloat16 if bf16_ok and device.type == "cuda" else None
    thesis_spec, thesis_grid = preset_model("thesis", dry)
    n512_spec, n512_grid = preset_model("native512", dry)
    steps = 3 if dry else 10
    fast = dict(batch=2, amp=amp, attention="auto", channels_last=device.type == "cuda",
                compile_="compile" in parts and device.type == "cuda", steps=steps)
    check(meas, "thesis_baseline", lambda: measure_training(thesis_spec, thesis_grid, device, batch=1, amp=None,
                                                            attention="plain", channels_last=False, compile_=False,
                                                            steps=steps))
    check(meas, "default_fast", lambda: measure_training(default_spec, default_grid, device, **fast))
    # no compile here: one more compilation would cost minutes of the suite's budget
    check(meas, "native512_fast", lambda: measure_training(n512_spec, n512_grid, device,
                                                           **{**fast, "batch": 1, "compile_": False}))
    check(meas, "generate_256", lambda: measure_generation(default_spec, default_grid, device, amp,
                                                           3 if dry else None))
    check(meas, "generate_512", lambda: measure_generation(n512_spec, n512_grid, device, amp, 3 if dry else None))
    base, fastm = meas.get("thesis_baseline", {}), meas.get("default_fast", {})
    if base.get("ok") and fastm.get("ok"):
        peak = res["bf16_peak"]["tflops"]
        res["summary"] = {
            "default_over_thesis_samples_per_s": fastm["samples_per_s"] / base["samples_per_s"],
            "default_over_thesis_steps_per_s": fastm["steps_per_s"] / base["steps_per_s"],
            "default_fraction_of_bf16_peak": fastm["achieved_tflops"] / peak if peak else None}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="JSON file to write")
    ap.add_argument("--dry-run", action="store_true", help="tiny sizes, any device: proves the suite runs end to end")
    ap.add_argument("--device", default=None, help="cuda (default when present) or cpu")
    ap.add_argument("--skip", default="", help="comma list of parts to skip: " + ", ".join(PARTS) +
                    ", compile, resume, ddp")
    ap.add_argument("--only", default="", help="comma list of parts to run (default: all)")
    ap.add_argument("--objective-minutes", type=float, default=1.5,
                    help="training budget of each objective in the objectives part (GPU)")
    args = ap.parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dry, parts = args.dry_run, chosen_parts(args.only, args.skip)
    bf16_ok = device.type == "cpu" or torch.cuda.is_bf16_supported()
    started = time.perf_counter()
    res = {"format": "ctdiffusion-gpu-suite/1", "dry_run": dry, "date": datetime.datetime.now(
        datetime.timezone.utc).isoformat(timespec="seconds"), "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__, "cuda": torch.version.cuda, "bf16_peak": bf16_peak(device),
        "complete": False, "parts": sorted(parts), "checks": {}, "measurements": {}, "quality": {}}
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    checks, meas, quality = res["checks"], res["measurements"], res["quality"]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)

    def save() -> None:
        res["wall_seconds"] = round(time.perf_counter() - started, 1)
        tmp = out.with_suffix(".tmp")
        tmp.write_text(json.dumps(res, indent=2))
        tmp.replace(out)

    SAVE[0] = save
    work = Path(tempfile.mkdtemp(prefix="ctdiffusion-gpu-suite-"))

    device_flag = "cuda" if device.type == "cuda" else "cpu"
    if "checks" in parts:
        run_checks(checks, parts, device, dry, bf16_ok, work, device_flag)
    if "speed" in parts:
        run_speed(res, parts, device, dry, bf16_ok)
    if "objectives" in parts:
        run_objectives(quality, work, device_flag, dry, args.objective_minutes)
    if "utility" in parts:
        check(quality, "utility", lambda: gpu_quality.utility_row(_long_cli, work / "quality", device_flag, dry))
    res["complete"] = True
    save()
    failed = [k for group in (checks, meas, quality) for k, v in group.items() if v.get("ok") is False]
    log(f"wrote {args.out} in {res['wall_seconds']} s; failed: {', '.join(failed) or 'none'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
