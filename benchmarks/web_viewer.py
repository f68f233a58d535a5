#!/usr/bin/env python
"""`ctdiffusion view` numbers: server start-up time for one real/synthetic pair, and process memory (RSS) while
browsing N generated volumes with the bounded cache vs an unbounded one. Needs the [web] extra; the first-image
time also needs Debian's chromium.

    python benchmarks/web_viewer.py [--size 256x256x26] [--num 100] [--work /tmp/web-bench]

Start-up = launching `python -m CTDiffusionLib view --real A --generated B` until it prints its URL (volumes read,
put in the MRML scene and fitted to the views; wall time and the server's CPU time until then), and until headless
Chromium shows both rendered slice images.
Memory = psutil RSS of one in-process ViewerApp after showing each of the N volumes in turn.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "Testing")]


def make_data(work: Path, size: tuple[int, int, int], num: int) -> tuple[Path, Path]:
    from CTDiffusionLib.data.phantoms import write_phantom_dataset

    real = work / "real"
    if not real.is_dir():
        write_phantom_dataset("prostate-ct", 2, real, size_xyz=size)
    generated = work / "generated"
    generated.mkdir(parents=True, exist_ok=True)
    sources = sorted(real.glob("*.nii.gz"))
    for i in range(num):
        target = generated / f"synthetic_{i:04d}.nii.gz"
        if not target.exists():
            shutil.copy(sources[i % len(sources)], target)
            target.with_suffix("").with_suffix(".json").write_text(json.dumps({"profile": "prostate-ct"}))
    return real, generated


def measure_startup(real: Path, generated: Path) -> dict:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    pair = real.parent / "pair"
    pair.mkdir(exist_ok=True)
    first = sorted(generated.glob("*.nii.gz"))[0]
    if not (pair / first.name).exists():
        shutil.copy(first, pair / first.name)
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "CTDiffusionLib", "view", "--real", str(real), "--generated",
                             str(pair), "--profile", "prostate-ct", "--port", str(port)],
                            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, cwd=ROOT)
    result = {"import_web_app_s": round(float(subprocess.run(
        [sys.executable, "-c", "import time; t = time.perf_counter(); import CTDiffusionLib.web.app; "
         "print(time.perf_counter() - t)"], capture_output=True, text=True, cwd=ROOT, check=True).stdout), 2)}
    try:
        for line in proc.stderr:
            if "open http://" in line:
                result["server_ready_s"] = round(time.perf_counter() - t0, 2)
                import psutil  # CPU the server used until then: what start-up costs without other load

                cpu = psutil.Process(proc.pid).cpu_times()
                result["server_cpu_until_ready_s"] = round(cpu.user + cpu.system, 2)
                break
        from headless_chromium import HeadlessChromium, chromium_path

        if chromium_path():
            async def first_image():
                async with HeadlessChromium(1400, 900) as page:
                    t1 = time.perf_counter()
                    await page.navigate(f"http://127.0.0.1:{port}/")
                    await page.wait_for("(() => { const i = [...document.querySelectorAll('.image-display-area')];"
                                        " return i.length === 2 && i.every(x => x.complete && x.naturalWidth > 0);"
                                        " })()", timeout=60, interval=0.05)
                    return time.perf_counter() - t1

            result["page_first_images_s"] = round(asyncio.run(first_image()), 2)
    finally:
        proc.terminate()
        proc.wait(timeout=15)
    return result


def measure_memory(real: Path, generated: Path, num: int, cache: int) -> dict:
    import psutil

    os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")
    from CTDiffusionLib.web.app import SYNTHETIC, ViewerApp
    from CTDiffusionLib.web.sources import resolve_inputs

    process = psutil.Process()
    app = ViewerApp(resolve_inputs(real=real, generated=generated), cache_size=cache)
    app._on_index(SYNTHETIC)
    start = process.memory_info().rss
    samples = []
    t0 = time.perf_counter()
    for _ in range(num):
        app.step_sample(SYNTHETIC, 1)
        app._on_index(SYNTHETIC)
        samples.append(process.memory_info().rss)
    mib = 1024 ** 2
    return {"cache": cache, "volumes_browsed": num, "rss_after_first_mib": round(start / mib),
            "rss_peak_mib": round(max(samples) / mib), "rss_end_mib": round(samples[-1] / mib),
            "seconds_per_volume": round((time.perf_counter() - t0) / num, 3),
            "volume_nodes_in_scene": app.scene.GetNodesByClass("vtkMRMLScalarVolumeNode").GetNumberOfItems()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="256x256x26")
    parser.add_argument("--num", type=int, default=100)
    parser.add_argument("--work", default="/tmp/ctdiffusion-web-bench")
    parser.add_argument("--cache", type=int, default=3)
    parser.add_argument("--part", choices=("all", "startup", "memory", "memory-unbounded"), default="all")
    args = parser.parse_args()
    size = tuple(int(v) for v in args.size.split("x"))
    real, generated = make_data(Path(args.work), size, args.num)
    out = {"size": args.size}
    if args.part in ("all", "startup"):
        out["startup"] = measure_startup(real, generated)
    if args.part in ("all", "memory"):
        out["memory_bounded"] = measure_memory(real, generated, args.num, args.cache)
    if args.part == "memory-unbounded":  # separate process: RSS does not shrink back reliably
        out["memory_unbounded"] = measure_memory(real, generated, args.num, args.num + 1)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
