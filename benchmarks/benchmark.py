#!/usr/bin/env python
"""CTDiffusion performance benchmark: one process, whatever device is present, JSON + a printed table.

    .venv/bin/python benchmarks/benchmark.py [--device auto|cpu|cuda] [--quick] [--out results.json]

Sections (all measure the engine's own code: `build_config` + `Trainer.train_step` for training, `sampler()` +
`sample()` + `decode()` for generation):
  a. train   - training steps/s and peak memory per preset at its native grid (preset batch sizes). On CPU a
               preset runs only when one step fits the time/memory budget; otherwise it is reported as skipped,
               with the time one step would take estimated from its counted FLOPs and the FLOP rate measured on
               the tiny preset (labelled "estimated").
  b. sample  - seconds per volume for ddpm-1000 / ddim-50 / dpm++-25 (tiny on CPU; 256x256x26 and 512x512x26 presets
               on CUDA). ddpm-1000 is extrapolated from a measured prefix of its steps where labelled so.
  c. fast_path - baseline (thesis, fp32, batch 1, plain attention, DDPM-1000) vs fast path (bf16 autocast, SDPA,
               channels-last, optional torch.compile, dpm++-25) at 256x256x26, and the fast path at 512x512x26
               (native512); achieved TFLOP/s of a training step (FlopCounterMode) vs the measured bf16 matmul peak.
               On CPU this runs on the tiny preset's grid instead and says so.
  d. quality - dpm++-25 vs DDPM-1000 from one small trained tiny model: HU-histogram Wasserstein distance to the
               real phantoms and mean/std HU, compared with the spread between two seed sets of the same sampler.
Memory: CUDA = torch.cuda.max_memory_allocated (reset per measurement); CPU = peak process RSS sampled every 5 ms
(psutil) minus the RSS before the measurement ("cpu_rss_peak_delta"): model + optimizer + activations + allocator
slack, not a tracemalloc count.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import math
import os
import platform
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import psutil  # noqa: E402
import torch  # noqa: E402

from CTDiffusionLib.data.dataset import make_batch, prepare_dataset  # noqa: E402
from CTDiffusionLib.data.phantoms import write_phantom_dataset  # noqa: E402
from CTDiffusionLib.data.preprocess import unit_to_hu  # noqa: E402
from CTDiffusionLib.diffusion.sampling import sample  # noqa: E402
from CTDiffusionLib.diffusion.schedulers import default_diffusion_config, sampler  # noqa: E402
from CTDiffusionLib.events import EventWriter  # noqa: E402
from CTDiffusionLib.generation import decode, model_input_shape  # noqa: E402
from CTDiffusionLib.models.factory import build_model, count_parameters  # noqa: E402
from CTDiffusionLib.presets import PRESETS  # noqa: E402
from CTDiffusionLib.runtime import autocast_dtype, resolve_device  # noqa: E402
from CTDiffusionLib.textformat import format_number  # noqa: E402
from CTDiffusionLib.requests import TrainRequest  # noqa: E402
from CTDiffusionLib.training.config import build_config  # noqa: E402
from CTDiffusionLib.training.trainer import Trainer, load_cases  # noqa: E402

GB = 1024 ** 3
# phantom sizes (x, y, z) written for each training grid: the native grid itself, so resampling is cheap
MASK_PHANTOM_SIZE = (216, 256, 10)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- device, timing, memory
def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def device_info(device: torch.device) -> dict:
    info = {"device": str(device), "cpu_model": cpu_model(), "cpu_logical_cores": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "torch": torch.__version__, "python": platform.python_version(),
            "date": datetime.date.today().isoformat(), "load_average_1m": os.getloadavg()[0],
            "memory_total_gb": round(psutil.virtual_memory().total / GB, 1),
            "memory_available_gb": round(psutil.virtual_memory().available / GB, 1)}
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        info.update(gpu=p.name, gpu_memory_gb=round(p.total_memory / GB, 1), cuda=torch.version.cuda,
                    cudnn=torch.backends.cudnn.version())
    return info


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class PeakMemory:
    """CUDA: max_memory_allocated since entry. CPU: peak RSS (sampled every 5 ms) minus RSS at entry."""

    def __init__(self, device: torch.device):
        self.device = device
        self.peak_bytes = 0
        self.kind = "cuda_max_memory_allocated" if device.type == "cuda" else "cpu_rss_peak_delta"

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base = 0
            return self
        self.proc = psutil.Process()
        self.base = self.proc.memory_info().rss
        self.peak = self.base
        self.stop = threading.Event()

        def poll():
            while not self.stop.is_set():
                self.peak = max(self.peak, self.proc.memory_info().rss)
                time.sleep(0.005)

        self.thread = threading.Thread(target=poll, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak_bytes = torch.cuda.max_memory_allocated(self.device)
        else:
            self.stop.set()
            self.thread.join()
            self.peak = max(self.peak, self.proc.memory_info().rss)
            self.peak_bytes = self.peak - self.base
        return False

    def result(self) -> dict:
        return {"peak_memory_gb": round(self.peak_bytes / GB, 3), "memory_kind": self.kind}


def matmul_peak(device: torch.device, quick: bool) -> dict:
    """Achieved TFLOP/s of a large square matmul: the practical peak a training step is compared with."""
    out = {}
    for dtype in (torch.bfloat16, torch.float32):
        # CPUs without native bf16 matmul run it ~100x slower than fp32: a smaller n keeps this to seconds
        n = 8192 if device.type == "cuda" else (512 if dtype == torch.bfloat16 else (1024 if quick else 2048))
        a = torch.randn(n, n, device=device, dtype=dtype)
        b = torch.randn(n, n, device=device, dtype=dtype)
        a @ b
        sync(device)
        reps, t0 = 0, time.perf_counter()
        while reps < 2 or time.perf_counter() - t0 < (1.0 if device.type == "cuda" else 2.0):
            a @ b
            reps += 1
        sync(device)
        dt = (time.perf_counter() - t0) / reps
        out[str(dtype).replace("torch.", "")] = {"n": n, "tflops": round(2 * n ** 3 / dt / 1e12, 4)}
    return out


# ---------------------------------------------------------------- FLOPs and activation memory (analytic, meta device)
def analytic_step(spec: dict, in_shape: tuple, batch: int) -> dict:
    """FLOPs of one training step (forward + backward) and of one forward, counted on the meta device (nothing is
    computed), plus the bytes autograd saves for backward (fp32; a bf16-autocast run saves a mix, roughly 0.6x)."""
    from torch.utils.flop_counter import FlopCounterMode

    spec = json.loads(json.dumps(spec))
    with torch.device("meta"):
        model = build_model(spec)
        x = torch.randn(batch, *in_shape)
        t = torch.zeros(batch, dtype=torch.long)
        fwd = FlopCounterMode(display=False)
        with fwd, torch.no_grad():
            model(x, t)
        saved = [0]

        def pack(tensor):
            saved[0] += tensor.numel() * tensor.element_size()
            return tensor

        model.train()
        step = FlopCounterMode(display=False)  # one context: entering a FlopCounterMode again resets its counts
        with step:
            with torch.autograd.graph.saved_tensors_hooks(pack, lambda t_: t_):
                out = model(x, t)
            out.float().square().mean().backward()
    params = count_parameters(model)
    return {"train_step_flops": step.get_total_flops(), "forward_flops": fwd.get_total_flops(),
            "saved_activation_gb_fp32": saved[0] / GB, "parameters": params,
            # weights + grads + AdamW (2) + EMA copy, all fp32
            "weights_optimizer_ema_gb": 5 * 4 * params / GB}


def checkpointed_activation_gb(spec: dict, in_shape: tuple, batch: int) -> float:
    """Saved bytes with the engine's gradient checkpointing: what is saved outside checkpointed blocks, the blocks'
    inputs, and the largest single block's activations (recomputed one block at a time during backward)."""
    spec = json.loads(json.dumps(spec))
    with torch.device("meta"):
        model = build_model(spec).train()
        x = torch.randn(batch, *in_shape)
        t = torch.zeros(batch, dtype=torch.long)
        totals = {"outside": 0, "inputs": 0, "max_block": 0}
        state = {"in_block": False, "block": 0}

        def pack(tensor):
            nbytes = tensor.numel() * tensor.element_size()
            if state["in_block"]:
                state["block"] += nbytes
            else:
                totals["outside"] += nbytes
            return tensor

        def run(block, *inputs):
            state["in_block"], state["block"] = True, 0
            out = block(*inputs)
            state["in_block"] = False
            totals["inputs"] += sum(x.numel() * x.element_size() for x in inputs)
            totals["max_block"] = max(totals["max_block"], state["block"])
            return out

        model.run_block = run  # what gradient checkpointing wraps (models/speed.py)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t_: t_):
            model(x, t)
    return (totals["outside"] + totals["inputs"] + totals["max_block"]) / GB


# ---------------------------------------------------------------- engine objects
def preset_in_shape(profile: str, preset: str, grid=None) -> tuple:
    p = PRESETS[profile][preset]
    meta = {"data": {"grid": list(grid or p["grid"]), "mode": p.get("mode", "3d")}, "model": p["model"]}
    return model_input_shape(meta)


def phantoms(root: Path, profile: str, grid, num: int) -> Path:
    size = tuple(grid) if profile == "prostate-ct" else MASK_PHANTOM_SIZE
    folder = root / f"{profile}-{'x'.join(map(str, size))}-{num}"
    if not folder.exists():
        write_phantom_dataset(profile, num, folder, seed=1, size_xyz=size)
    return folder


def make_trainer(profile: str, preset: str, data: Path, run_dir: Path, device: torch.device, *, batch=None,
                 grid=None, amp=None, compile_=False, fused=True, channels_last=True, steps=100000,
                 val_fraction=0.0, seed=0) -> Trainer:
    request = TrainRequest(profile=profile, data=[str(data)], out=str(run_dir), preset=preset, steps=steps,
                           sample_every=0, val_fraction=val_fraction, seed=seed, batch_size=batch, grid=grid, amp=amp,
                           compile=compile_ or None)
    config = build_config(request, [str(data)])
    config["training"]["attention"] = "auto" if fused else "plain"
    config["training"]["channels_last"] = channels_last
    config["training"]["checkpoint_every"] = 10 ** 9
    cases, vocab = load_cases(config)
    prepared = prepare_dataset(cases, profile, config["data"], run_dir / "cache", config["training"]["seed"],
                               intensity=config["intensity"])
    trainer = Trainer(config, run_dir, prepared, vocab, device, EventWriter())
    if channels_last and device.type != "cuda" and config["data"]["mode"] == "3d":
        # the engine uses channels_last_3d on CUDA only; the CPU "fast path" row applies it here to measure it
        trainer.model.to(memory_format=torch.channels_last_3d)
    return trainer


def time_train_steps(trainer: Trainer, device: torch.device, warmup: int, steps: int) -> dict:
    for _ in range(warmup):
        trainer.train_step()
    sync(device)
    with PeakMemory(device) as mem:
        t0 = time.perf_counter()
        for _ in range(steps):
            trainer.train_step()
        sync(device)
        dt = time.perf_counter() - t0
    bs = trainer.config["training"]["batch_size"]
    return {"batch_size": bs, "grid": trainer.config["data"]["grid"], "steps_timed": steps, "warmup_steps": warmup,
            "seconds_per_step": dt / steps, "steps_per_s": steps / dt, "samples_per_s": steps * bs / dt,
            **mem.result()}


def measured_step_flops(trainer: Trainer) -> int:
    """FLOPs of one real training step of this trainer's network (forward + backward on a real batch)."""
    from torch.utils.flop_counter import FlopCounterMode

    tr = trainer.config["training"]
    x0 = make_batch(trainer.data, trainer.train_idx[:1] * tr["batch_size"], trainer.profile, None, None)
    x0 = x0.to(trainer.device)
    t = torch.full((x0.shape[0],), 500, device=trainer.device, dtype=torch.long)
    counter = FlopCounterMode(display=False)
    with counter, torch.autocast(trainer.device.type, dtype=trainer.amp_dtype, enabled=trainer.amp_dtype is not None):
        trainer.model(x0, t).float().square().mean().backward()
    trainer.optimizer.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def time_sampling(model, diffusion_cfg: dict, shape, device, name: str, steps: int, batch: int, autocast_dtype,
                  measure_steps: int | None = None) -> dict:
    """Seconds per volume of `name` with `steps` inference steps; if measure_steps < steps, only that many steps of the
    same schedule run and the time is scaled by steps / measure_steps (labelled 'extrapolated')."""
    sched = sampler(name, diffusion_cfg, steps)
    run_steps = steps
    if measure_steps and measure_steps < steps:
        sched.timesteps = sched.timesteps[:measure_steps]
        run_steps = measure_steps
    seeds = list(range(batch))
    warm = sampler(name, diffusion_cfg, steps)
    warm.timesteps = warm.timesteps[:2]
    sample(model, warm, shape, seeds, device, autocast_dtype=autocast_dtype)  # one-off costs (kernels, allocator)
    sync(device)
    with PeakMemory(device) as mem:
        t0 = time.perf_counter()
        sample(model, sched, shape, seeds, device, autocast_dtype=autocast_dtype)
        sync(device)
        dt = time.perf_counter() - t0
    total = dt * steps / run_steps
    return {"sampler": name, "steps": steps, "steps_measured": run_steps, "batch_size": batch,
            "how": "measured" if run_steps == steps else f"extrapolated from {run_steps} measured steps",
            "seconds_per_volume": total / batch, "seconds_per_batch": total, **mem.result()}


def free_memory(device: torch.device) -> None:
    import gc

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


# ---------------------------------------------------------------- sections
def section_train(ctx: dict) -> list[dict]:
    device, quick, work = ctx["device"], ctx["quick"], ctx["work"]
    rows, cpu_rate = [], None
    order = [("prostate-ct", "tiny"), ("cardiac-masks", "tiny2d"), ("cardiac-masks", "tiny3d"),
             ("cardiac-masks", "slice2d"), ("cardiac-masks", "stack3d"), ("prostate-ct", "default"),
             ("prostate-ct", "thesis"), ("prostate-ct", "native512")]
    for profile, preset in order:
        p = PRESETS[profile][preset]
        bs = p["training"]["batch_size"]
        row = {"profile": profile, "preset": preset, "grid": p["grid"], "batch_size": bs}
        spec = p["model"]
        try:
            ana = analytic_step(spec, preset_in_shape(profile, preset), bs)
        except Exception as exc:  # analytic count is best-effort (e.g. an op without a meta kernel)
            ana, row["analytic_error"] = None, repr(exc)
        if ana:
            row.update(train_step_tflop=round(ana["train_step_flops"] / 1e12, 4), parameters=ana["parameters"])
        if device.type == "cpu" and ana and cpu_rate:
            est_s = ana["train_step_flops"] / cpu_rate
            need_gb = ana["saved_activation_gb_fp32"] + ana["weights_optimizer_ema_gb"]
            avail_gb = psutil.virtual_memory().available / GB
            if est_s > ctx["step_budget_s"] or need_gb > 0.6 * avail_gb:
                row.update(status="skipped", reason=(
                    f"skipped on CPU: one step would take ~{est_s / 60:.1f} min and need ~{need_gb:.1f} GB "
                    f"({avail_gb:.1f} GB free); estimated from counted FLOPs / the FLOP rate measured on the tiny "
                    f"step, and analytic activation + weight/optimizer memory, not measured"),
                    estimated_seconds_per_step=round(est_s, 1), estimated_memory_gb=round(need_gb, 2))
                rows.append(row)
                log(f"train {profile}/{preset}: {row['reason']}")
                continue
        log(f"train {profile}/{preset} at {'x'.join(map(str, p['grid']))}, batch {bs} ...")
        run_dir = Path(tempfile.mkdtemp(dir=work, prefix=f"train-{preset}-"))
        try:
            data = phantoms(work, profile, p["grid"], 4)
            trainer = make_trainer(profile, preset, data, run_dir, device, compile_=ctx["compile"])
            warm = 3 if (ctx["compile"] and device.type == "cuda") else 1
            small = (ana or {}).get("train_step_flops", 0) < 2e11
            steps = (3 if quick else 10) if small or device.type == "cuda" else (1 if quick else 2)
            if device.type == "cuda":
                steps = 5 if quick else 20
            row.update(time_train_steps(trainer, device, warm, steps), status="measured",
                       amp=str(trainer.amp_dtype), compile=bool(ctx["compile"]))
            if ana:
                row["achieved_tflops"] = round(ana["train_step_flops"] / row["seconds_per_step"] / 1e12, 4)
                if device.type == "cpu" and cpu_rate is None:
                    cpu_rate = ana["train_step_flops"] / row["seconds_per_step"]
            del trainer
        except torch.cuda.OutOfMemoryError as exc:
            row.update(status="out of memory", reason=str(exc).splitlines()[0])
        except Exception as exc:
            row.update(status="error", reason=f"{type(exc).__name__}: {exc}")
        free_memory(device)
        rows.append(row)
        log(f"  -> {row.get('status')}: {row.get('steps_per_s', 0):.3f} steps/s" if row.get("steps_per_s")
            else f"  -> {row.get('status')}: {row.get('reason', '')}")
    ctx["cpu_flop_rate"] = cpu_rate
    return rows


def section_sample(ctx: dict) -> list[dict]:
    device, quick = ctx["device"], ctx["quick"]
    presets = ["tiny"] if device.type == "cpu" else ["default", "thesis", "native512"]
    rows = []
    for preset in presets:
        p = PRESETS["prostate-ct"][preset]
        spec = p["model"]
        torch.manual_seed(0)
        model = build_model(spec).to(device).eval()
        shape = preset_in_shape("prostate-ct", preset)
        amp = autocast_dtype(device, None)  # what `generate` uses
        batch = 8 if device.type == "cuda" else 2  # generate()'s default batch
        if preset == "native512" and device.type == "cuda":
            batch = 4
        cfg = default_diffusion_config(p.get("schedule", "linear"))  # the schedule does not change the speed
        for name, steps, measure in (("ddpm", 1000, 20 if quick else (200 if device.type == "cpu" else None)),
                                     ("ddim", 50, None), ("dpm++", 25, None)):
            log(f"sample {preset} {name}-{steps} batch {batch} ...")
            try:
                r = time_sampling(model, cfg, shape, device, name, steps, batch, amp, measure)
            except torch.cuda.OutOfMemoryError as exc:
                r = {"sampler": name, "steps": steps, "status": "out of memory", "reason": str(exc).splitlines()[0]}
            rows.append({"preset": preset, "grid": p["grid"], "amp": str(amp), **r})
            log(f"  -> {r.get('seconds_per_volume', float('nan')):.2f} s/volume ({r.get('how', r.get('status'))})")
        del model
        free_memory(device)
    return rows


def section_fast_path(ctx: dict) -> dict:
    """Baseline vs fast path (training step and generation of one volume), and the fast path at 512x512x26."""
    device, quick, work = ctx["device"], ctx["quick"], ctx["work"]
    cuda = device.type == "cuda"
    preset = "thesis" if cuda else "tiny"
    grid = PRESETS["prostate-ct"][preset]["grid"]
    data = phantoms(work, "prostate-ct", grid if cuda else (48, 48, 12), 4)
    out = {"note": ("thesis preset at 256x256x26 on CUDA" if cuda else
                    "CPU run: the tiny preset at 32x32x8 stands in for thesis at 256x256x26 (no GPU here); the "
                    "ratios say nothing about the H100 targets"), "preset": preset, "grid": grid}
    peak = ctx["matmul_peak"]["bfloat16"]["tflops"]
    configs = {
        "baseline": dict(amp="off", fused=False, channels_last=False, compile_=False, batch=1,
                         sampler=("ddpm", 1000), sample_batch=1),
    }
    if cuda:
        configs["fast"] = dict(amp="on", fused=True, channels_last=True, compile_=ctx["compile"], batch=1,
                               sampler=("dpm++", 25), sample_batch=8, preset="default")
    else:
        # the engine's CPU path: SDPA + dpm++-25 + batched sampling, bf16 only where the CPU computes it natively
        # (runtime.autocast_dtype: elsewhere bf16 convolutions/matmuls are ~100x slower than fp32)
        configs["fast"] = dict(amp="auto", fused=True, channels_last=False, compile_=False, batch=1,
                               sampler=("dpm++", 25), sample_batch=2)
        # the CUDA switches forced on CPU, training only: documents why they are off here
        configs["cuda_switches_on_cpu"] = dict(amp="on", fused=True, channels_last=True, compile_=False, batch=1,
                                               sampler=None, sample_batch=None)
    for label, c in configs.items():
        log(f"fast_path {label}: training ...")
        run_dir = Path(tempfile.mkdtemp(dir=work, prefix=f"fast_path-{label}-"))
        row = {k: v for k, v in c.items() if k not in ("sampler",)}
        row["compile"] = row.pop("compile_")
        row["preset"] = c.get("preset", preset)
        try:
            trainer = make_trainer("prostate-ct", row["preset"], data, run_dir, device, batch=c["batch"], amp=c["amp"],
                                   compile_=c["compile_"], fused=c["fused"], channels_last=c["channels_last"])
            flops = measured_step_flops(trainer)
            warm = 3 if c["compile_"] else 1
            n_steps = (5 if quick else 20) if cuda else (2 if c["sampler"] is None else (4 if quick else 10))
            tr = time_train_steps(trainer, device, warm, n_steps)
            rate = flops / tr["seconds_per_step"]
            row["train"] = {**tr, "step_flops": flops, "achieved_tflops": rate / 1e12,
                            "fraction_of_bf16_matmul_peak": rate / 1e12 / peak,
                            "fraction_of_fp32_matmul_peak": rate / 1e12 / ctx["matmul_peak"]["float32"]["tflops"]}
            if label == "baseline" and not cuda:
                ctx["cpu_flop_rate"] = ctx.get("cpu_flop_rate") or rate
            if c["sampler"] is None:
                del trainer
                free_memory(device)
                out[label] = row
                continue
            model = trainer.ema.module.eval()
            name, steps = c["sampler"]
            measure = (100 if quick else None) if cuda else (20 if quick else 200)
            log(f"fast_path {label}: sampling {name}-{steps} ...")
            row["sample"] = time_sampling(model, trainer.config["diffusion"], preset_in_shape("prostate-ct", row["preset"]),
                                          device, name, steps, c["sample_batch"], trainer.amp_dtype,
                                          measure if name == "ddpm" else None)
            del trainer, model
        except torch.cuda.OutOfMemoryError as exc:
            row["error"] = "out of memory: " + str(exc).splitlines()[0]
        free_memory(device)
        out[label] = row
    b, f = out.get("baseline", {}), out.get("fast", {})
    if "train" in b and "train" in f:
        out["ratios_fast_over_baseline"] = {
            "train_steps_per_s": f["train"]["steps_per_s"] / b["train"]["steps_per_s"],
            "generation_speedup_per_volume": b["sample"]["seconds_per_volume"] / f["sample"]["seconds_per_volume"]}
    # the fast path at 512x512x26
    n512 = PRESETS["prostate-ct"]["native512"]
    spec = n512["model"]
    ana = analytic_step(spec, preset_in_shape("prostate-ct", "native512"), 1)
    if cuda:
        log("fast_path native512 fast path ...")
        data512 = phantoms(work, "prostate-ct", n512["grid"], 2)
        run_dir = Path(tempfile.mkdtemp(dir=work, prefix="fast_path-n512-"))
        row = {}
        try:
            trainer = make_trainer("prostate-ct", "native512", data512, run_dir, device, amp="on",
                                   compile_=ctx["compile"])
            flops = measured_step_flops(trainer)
            tr = time_train_steps(trainer, device, 3 if ctx["compile"] else 1, 5 if quick else 20)
            row["train"] = {**tr, "step_flops": flops, "achieved_tflops": flops / tr["seconds_per_step"] / 1e12,
                            "fraction_of_bf16_matmul_peak": flops / tr["seconds_per_step"] / 1e12 / peak}
            row["sample"] = time_sampling(trainer.ema.module.eval(), trainer.config["diffusion"],
                                          preset_in_shape("prostate-ct", "native512"), device, "dpm++", 25, 1,
                                          trainer.amp_dtype)
            del trainer
        except torch.cuda.OutOfMemoryError as exc:
            row["error"] = "out of memory: " + str(exc).splitlines()[0]
        free_memory(device)
        out["native512_fast"] = row
    else:
        rate = ctx.get("cpu_flop_rate")
        est = 25 * ana["forward_flops"] / rate if rate else None
        out["native512_fast"] = {
            "status": "skipped on CPU",
            "estimated_seconds_per_volume_dpm25": round(est, 0) if est else None,
            "forward_tflop_per_volume_step": round(ana["forward_flops"] / 1e12, 3),
            "how": "estimated: 25 x counted forward FLOPs at batch 1 / FLOP rate measured on the tiny training step; "
                   "not measured"}
    return out


def section_quality(ctx: dict) -> dict:
    """dpm++-25 vs DDPM-1000 from one trained tiny model, judged against the seed-to-seed spread of dpm++-25."""
    from scipy.stats import wasserstein_distance

    device, quick, work = ctx["device"], ctx["quick"], ctx["work"]
    grid = ctx["quality_grid"]
    n = ctx["quality_samples"]
    data = phantoms(work, "prostate-ct", (48, 48, 12), 8)
    run_dir = Path(tempfile.mkdtemp(dir=work, prefix="quality-"))
    trainer = make_trainer("prostate-ct", "tiny", data, run_dir, device, grid=grid, steps=ctx["quality_train_steps"])
    log(f"quality: training tiny at {'x'.join(map(str, grid))} for {trainer.total} steps ...")
    t0 = time.perf_counter()
    losses = [trainer.train_step() for _ in range(trainer.total)]
    train_s = time.perf_counter() - t0
    model = trainer.ema.module.eval()
    meta = {"profile": "prostate-ct", "intensity": trainer.config["intensity"], "data": trainer.config["data"],
            "model": trainer.config["model"]}
    shape = model_input_shape(meta)
    real = np.concatenate([unit_to_hu(s.astype(np.float32), meta["intensity"]).ravel()
                           for s in trainer.data.samples])

    def generate_set(name, steps, seeds, clip_x0=False):
        t1 = time.perf_counter()
        sched = sampler(name, trainer.config["diffusion"], steps)
        if clip_x0:  # diagnostic variant (not the engine's default): clip DPM-Solver++'s x0 estimates to [-1, 1]
            sched = type(sched).from_config(sched.config, thresholding=True, sample_max_value=1.0)
            sched.set_timesteps(steps)
        x = sample(model, sched, shape, seeds, device, autocast_dtype=trainer.amp_dtype)
        hu = np.concatenate([a.ravel() for a in decode(x, meta)]).astype(np.float64)
        return hu, time.perf_counter() - t1

    seeds_a, seeds_b, seeds_c = (list(range(o, o + n)) for o in (0, 1000, 2000))
    log(f"quality: dpm++-25 x2 seed sets, ddpm-1000, {n} volumes each ...")
    dpm_a, s_a = generate_set("dpm++", 25, seeds_a)
    dpm_c, _ = generate_set("dpm++", 25, seeds_c)
    ddpm_b, s_b = generate_set("ddpm", 1000, seeds_b)
    dpm_clip_a, _ = generate_set("dpm++", 25, seeds_a, clip_x0=True)

    def stats(hu):
        return {"mean_hu": float(hu.mean()), "std_hu": float(hu.std()),
                "wasserstein_to_real_hu": float(wasserstein_distance(hu, real))}

    between_samplers = float(wasserstein_distance(ddpm_b, dpm_a))
    between_seeds = float(wasserstein_distance(dpm_c, dpm_a))
    w = {k: stats(v) for k, v in (("dpm++25_seedsA", dpm_a), ("dpm++25_seedsC", dpm_c), ("ddpm1000_seedsB", ddpm_b),
                                  ("dpm++25clip_seedsA", dpm_clip_a))}
    noise_w2r = abs(w["dpm++25_seedsA"]["wasserstein_to_real_hu"] - w["dpm++25_seedsC"]["wasserstein_to_real_hu"])
    diff_w2r = abs(w["ddpm1000_seedsB"]["wasserstein_to_real_hu"] - w["dpm++25_seedsA"]["wasserstein_to_real_hu"])
    return {
        "grid": grid, "train_steps": trainer.total, "train_seconds": train_s, "final_loss_avg_last10":
            float(np.mean(losses[-10:])), "volumes_per_set": n, "real_volumes": len(trainer.data.samples),
        "real": {"mean_hu": float(real.mean()), "std_hu": float(real.std())}, "sets": w,
        "wasserstein_hu_between_samplers(ddpm_B,dpm_A)": between_samplers,
        "wasserstein_hu_between_seed_sets(dpm_C,dpm_A)": between_seeds,
        "abs_diff_wasserstein_to_real(ddpm vs dpm)": diff_w2r,
        "abs_diff_wasserstein_to_real(seed sets)": noise_w2r,
        "seconds_per_volume": {"dpm++25": s_a / n, "ddpm1000": s_b / n},
        "wasserstein_hu_between_samplers(ddpm_B,dpm_clip_A)": float(wasserstein_distance(ddpm_b, dpm_clip_a)),
        "dpm++25clip_note": "diagnostic only: DPMSolverMultistepScheduler(thresholding=True, sample_max_value=1) "
                            "clips x0 estimates to [-1, 1] like the engine's DDPM/DDIM (clip_sample=True) do",
        "verdict": ("dpm++-25 within sampling noise of DDPM-1000" if between_samplers <= 2 * between_seeds else
                    "dpm++-25 differs from DDPM-1000 by more than 2x the seed-to-seed spread"),
        "criterion": "W1(ddpm_B, dpm_A) <= 2 * W1(dpm_C, dpm_A) on pooled voxel HU (independent seed sets A, B, C)",
    }


# ---------------------------------------------------------------- report
fmt = format_number


def print_tables(res: dict) -> None:
    p = print
    d = res["device"]
    p(f"\nCTDiffusion benchmark on {d['device']} ({d.get('gpu') or d['cpu_model']}, {d['cpu_logical_cores']} logical "
      f"cores, {d['torch_threads']} torch threads), torch {d['torch']}, {d['date']}, quick={res['quick']}")
    mp = res.get("matmul_peak", {})
    p("matmul peak: " + ", ".join(f"{k} {v['tflops']:.3g} TFLOP/s (n={v['n']})" for k, v in mp.items()))
    if "train" in res:
        p("\n[a] training (engine Trainer.train_step, preset batch sizes; memory: " +
          ("cuda max_memory_allocated" if d["device"].startswith("cuda") else "peak RSS delta") + ")")
        p(f"{'preset':<22}{'grid':<14}{'batch':>6}{'steps/s':>10}{'s/step':>10}{'mem GB':>9}{'TFLOP/s':>9}  status")
        for r in res["train"]:
            p(f"{r['profile'][:8] + '/' + r['preset']:<22}{'x'.join(map(str, r['grid'])):<14}{r['batch_size']:>6}"
              f"{fmt(r.get('steps_per_s')):>10}{fmt(r.get('seconds_per_step') or r.get('estimated_seconds_per_step')):>10}"
              f"{fmt(r.get('peak_memory_gb') or r.get('estimated_memory_gb')):>9}{fmt(r.get('achieved_tflops')):>9}  "
              f"{r.get('status')}" + (f" - {r['reason']}" if r.get("reason") else ""))
    if "sample" in res:
        p("\n[b] sampling (engine sample(); seconds per volume)")
        p(f"{'preset':<12}{'sampler':<12}{'batch':>6}{'s/volume':>12}  how")
        for r in res["sample"]:
            p(f"{r['preset']:<12}{r['sampler'] + '-' + str(r['steps']):<12}{r.get('batch_size', '-'):>6}"
              f"{fmt(r.get('seconds_per_volume'), 4):>12}  {r.get('how', r.get('status'))}")
    if "fast_path" in res:
        i6 = res["fast_path"]
        p(f"\n[c] thesis baseline vs default fast path ({i6['note']})")
        p(f"{'config':<21}{'steps/s':>9}{'TFLOP/s':>10}{'/bf16pk':>9}{'/fp32pk':>9}{'mem GB':>9}{'sampler':>12}"
          f"{'s/volume':>11}")
        for k in ("baseline", "fast", "cuda_switches_on_cpu"):
            r = i6.get(k)
            if not r or "train" not in r:
                continue
            t, s = r["train"], r.get("sample")
            p(f"{k:<21}{fmt(t['steps_per_s']):>9}{fmt(t['achieved_tflops']):>10}"
              f"{fmt(t['fraction_of_bf16_matmul_peak']):>9}{fmt(t['fraction_of_fp32_matmul_peak']):>9}"
              f"{fmt(t['peak_memory_gb']):>9}" + (f"{s['sampler'] + '-' + str(s['steps']):>12}"
              f"{fmt(s['seconds_per_volume'], 4):>11}  ({s['how']}, batch {s['batch_size']})" if s else
              "           -          -  (training only)"))
        if "ratios_fast_over_baseline" in i6:
            r = i6["ratios_fast_over_baseline"]
            p(f"fast/baseline: training steps/s x{r['train_steps_per_s']:.2f}, generation per volume "
              f"x{r['generation_speedup_per_volume']:.1f} faster")
        p(f"native512 fast path: {json.dumps(i6.get('native512_fast'), default=str)[:400]}")
    if "quality" in res:
        q = res["quality"]
        p(f"\n[d] quality: tiny at {'x'.join(map(str, q['grid']))}, {q['train_steps']} steps, {q['volumes_per_set']} "
          f"volumes per set; real mean/std HU {q['real']['mean_hu']:.0f}/{q['real']['std_hu']:.0f}")
        for k, v in q["sets"].items():
            p(f"  {k:<19} mean {v['mean_hu']:8.1f}  std {v['std_hu']:7.1f}  W1 to real {v['wasserstein_to_real_hu']:7.1f} HU")
        p(f"  W1 between samplers {q['wasserstein_hu_between_samplers(ddpm_B,dpm_A)']:.1f} HU vs between seed sets "
          f"{q['wasserstein_hu_between_seed_sets(dpm_C,dpm_A)']:.1f} HU -> {q['verdict']}")
        p(f"  (diagnostic) W1 between DDPM-1000 and dpm++-25 with x0 clipping: "
          f"{q['wasserstein_hu_between_samplers(ddpm_B,dpm_clip_A)']:.1f} HU; final train loss "
          f"{q['final_loss_avg_last10']:.3f}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    ap.add_argument("--quick", action="store_true", help="fewer steps/samples (CPU: ~5 min)")
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch CPU threads (default: torch's choice; 1 is faster on a shared, loaded machine)")
    ap.add_argument("--compile", action="store_true", help="torch.compile in the fast path (CUDA; slow to warm up)")
    ap.add_argument("--sections", default="train,sample,fast_path,quality",
                    help="comma list of train,sample,fast_path,quality")
    ap.add_argument("--step-budget-s", type=float, default=None,
                    help="CPU: skip a preset when one training step is estimated to take longer (quick 30, else 300)")
    ap.add_argument("--quality-samples", type=int, default=None, help="volumes per sampler/seed set (quick 4, else 8)")
    ap.add_argument("--quality-train-steps", type=int, default=None, help="(quick 500, else 1500)")
    ap.add_argument("--quality-grid", default=None, help="XxYxZ for the quality model (quick 16x16x8, else 32x32x8)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    quick = args.quick
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    qgrid = [int(v) for v in (args.quality_grid or ("16x16x8" if quick else "32x32x8")).split("x")]
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="ctd-bench-") as tmp:
        ctx = {"device": device, "quick": quick, "work": Path(tmp), "compile": args.compile,
               "step_budget_s": args.step_budget_s or (30.0 if quick else 300.0),
               "quality_samples": args.quality_samples or (4 if quick else 8),
               "quality_train_steps": args.quality_train_steps or (500 if quick else 1500), "quality_grid": qgrid}
        res = {"command": " ".join([Path(sys.executable).name, *sys.argv]), "quick": quick,
               "device": device_info(device), "sections": sections}
        log("matmul peak ...")
        res["matmul_peak"] = ctx["matmul_peak"] = matmul_peak(device, quick)
        runners = {"train": section_train, "sample": section_sample, "fast_path": section_fast_path,
                   "quality": section_quality}
        for name in sections:
            t0 = time.time()
            res[name] = runners[name](ctx)
            res.setdefault("section_seconds", {})[name] = round(time.time() - t0, 1)
            if args.out:  # keep partial results if a later section is interrupted
                Path(args.out).write_text(json.dumps(res, indent=2, default=str))
        res["total_seconds"] = round(time.time() - started, 1)
        res["targets"] = {"train_speedup_256x256x26": ">= 3x baseline steps/s (H100)",
                          "generation_speedup_per_volume": ">= 50x (H100)",
                          "native512_dpm25_seconds_per_volume": "<= 20 s (H100)",
                          "measured_here": device.type == "cuda"}
    print_tables(res)
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=2, default=str))
        log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
