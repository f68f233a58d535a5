"""The benchmarks' pieces that run without a GPU: shrunk dry-run networks, the suite's parts, the report rendering,
the training-speed and thread-change readers of the quality rows and of benchmarks/threads_under_load.py."""

import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import gpu_quality  # noqa: E402
import gpu_suite  # noqa: E402
import render_gpu_suite  # noqa: E402

from CTDiffusionLib.models.factory import build_model  # noqa: E402


def test_dry_run_networks_keep_every_level_and_the_grid():
    for name in gpu_suite.CT_PRESETS:
        spec, grid = gpu_suite.preset_model(name, dry=True)
        full = gpu_suite.PRESETS["prostate-ct"][name]["model"]
        key = "block_out_channels" if spec["type"] == "thesis_unet" else "channels"
        assert len(spec["kwargs"][key]) == len(full["kwargs"][key])
        with torch.device("meta"):
            out = build_model(spec)(torch.empty(1, 1, grid[2], grid[1], grid[0]), torch.zeros(1, dtype=torch.long))
        assert tuple(out.shape) == (1, 1, grid[2], grid[1], grid[0])


def test_the_committed_dry_run_renders_every_check():
    path = ROOT / "benchmarks" / "results" / "gpu-suite-dry-run-cpu-2026-11-30.json"
    result = json.loads(path.read_text(encoding="utf-8"))
    text = render_gpu_suite.render(result)
    assert "DRY RUN" in text
    for name in [*result["checks"], *result["measurements"]]:
        assert f"| {name} |" in text


# ---------------------------------------------------------------- the suite's parts and quality rows (issue 29/27)
def test_suite_parts_only_and_skip():
    everything = {*gpu_suite.PARTS, *gpu_suite.SUB_CHECKS}
    assert gpu_suite.chosen_parts("", "") == everything
    assert gpu_suite.chosen_parts("", "objectives,utility") == {"checks", "speed", *gpu_suite.SUB_CHECKS}
    assert gpu_suite.chosen_parts("objectives,utility", "") == {"objectives", "utility"}  # no checks, no compile
    assert gpu_suite.chosen_parts("checks", "ddp") == {"checks", "compile", "resume"}
    for bad in (("compile", ""), ("", "quality"), ("speeds", "")):
        try:
            gpu_suite.chosen_parts(*bad)
        except SystemExit as exc:
            assert "unknown part" in str(exc)
        else:
            raise AssertionError(f"{bad} was accepted")


def test_quality_rows_render_with_failures():
    quality = {
        "train[ddpm]": {"ok": True, "steps": 412, "steps_per_s": 4.5},
        "ddpm dpm++-25": {"ok": True, "network_evaluations": 25, "seconds_per_volume": 1.5, "fails": ["mmd"],
                          "hu_histogram_w1": 30.0, "tissue_contrast_hu_gap": 20.0, "frechet_distance": 90.0,
                          "mmd": 0.2, "nearest_train_similarity": 0.95},
        "flow euler-25": {"ok": False, "error": "RuntimeError: no trained flow model"},
        "utility": {"ok": True, "pairs": {"train": 16, "synthetic": 16, "test": 8},
                    "working_grid_xyz": [128, 128, 26], "seeds": 2, "iterations": 160, "seconds": 100.0,
                    "gain": {"dice": 0.01, "ci95": [-0.02, 0.04]}, "verdict": "no measurable gain",
                    "arms": {a: {"dice": 0.5, "dice_ci95": [0.4, 0.6]}
                             for a in ("real", "synthetic", "real+synthetic")}},
    }
    text = "\n".join(render_gpu_suite.quality_tables(quality))
    assert "| train[ddpm] | ok | 412 | 4.5 |" in text
    assert "| ddpm dpm++-25 | ok |" in text and "| 25 | 1.5 | 1 | 30 |" in text  # evaluations, s/volume, one fail
    assert "| flow euler-25 | FAILED: RuntimeError: no trained flow model |" in text
    assert "| utility | ok | 16/16/8 | 128x128x26 | 2 | 160 |" in text and "| no measurable gain |" in text
    assert render_gpu_suite.quality_tables({}) == []


def test_training_speed_from_events_leaves_out_the_start(tmp_path):
    times = [0.0, 10.0, 21.0, 31.0, 41.0]  # a slow start: 1 step in the first 10 s, then 10 steps/s
    steps = [1, 2, 100, 200, 300]
    (tmp_path / "events.jsonl").write_text("\n".join(json.dumps({"event": "progress", "phase": "train", "time": t,
                                                                 "step": s}) for t, s in zip(times, steps)) + "\n")
    got = gpu_quality.steps_per_s(tmp_path)
    assert got["steps"] == 300 and abs(got["steps_per_s"] - 10.0) < 1e-9


def test_threads_under_load_reads_the_governors_log_and_rates(caplog):
    import logging

    import threads_under_load as tul

    from CTDiffusionLib.threads import ThreadGovernor

    # the governor's own log line, formatted as the CLI formats its log
    gov = ThreadGovernor.__new__(ThreadGovernor)
    gov.enabled, gov.recheck_s, gov.cpus, gov.cores, gov.threads, gov._due = True, 15.0, [0, 1], 2, 2, 0.0
    gov.read = lambda: tul_reading(10.0, 10.0)
    gov._reading = tul_reading(0.0, 0.0)
    before = torch.get_num_threads()
    try:
        with caplog.at_level(logging.INFO, logger="ctdiffusion"):
            assert gov.tick(1.0) == 1
    finally:
        torch.set_num_threads(before)
    formatter = logging.Formatter("%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    log_text = "\n".join(formatter.format(r) for r in caplog.records)
    changes = tul.governor_changes(log_text)
    assert [(c["from"], c["to"]) for c in changes] == [(2, 1)]
    assert tul.threads_text("governor", {"governor": changes}).startswith("torch's default -> 1 (")
    assert tul.threads_text("fixed1", {}) == "1"
    events = [{"time": t, "step": s} for t, s in ((100.0, 1), (104.0, 3), (106.0, 10), (116.0, 30))]
    assert tul.rate(events, start=100.0)["per_s"] == 2.0  # 10 -> 30 steps in 10 s, after the first 5 s
    assert tul.rate(events[:2], start=100.0)["per_s"] == 0.5  # a short cell: every event
    assert tul.rate(events[:1], start=100.0)["per_s"] is None
    slow = {"train": {"steps_per_s": None, "last_step": 1}}
    assert tul.train_speed(slow, 50.0) == "– (1 step in 50 s)"  # too slow for a rate: what it did
    assert tul.sample_speed({"sample": {"seconds_per_volume": None, "volume_steps_done": 4}}, 45.0) == \
        "– (4 volume-steps in 45 s)"


def tul_reading(at: float, other_busy_s: float):
    """Counters of 2 CPUs after `at` seconds, `other_busy_s` seconds of them busy with another process."""
    from CTDiffusionLib.threads import CpuReading

    return CpuReading(at, ((other_busy_s / 2, at), (other_busy_s / 2, at)), 0.0)


def test_the_committed_quality_dry_run_renders_every_row():
    path = ROOT / "benchmarks" / "results" / "gpu-suite-dry-run-cpu-quality-2026-12-06.json"
    result = json.loads(path.read_text(encoding="utf-8"))
    assert result["parts"] == ["objectives", "utility"] and not result["checks"] and not result["measurements"]
    text = render_gpu_suite.render(result)
    assert "| check |" not in text and "| measurement |" not in text  # parts it did not run: no empty tables
    for name in result["quality"]:
        assert f"| {name} | ok |" in text
    expected = {f"train[{o}]" for o in ("ddpm", "flow")} | {f"{o} {s}-{k}" for o, s, k in gpu_quality.OBJECTIVE_ROWS}
    assert expected | {"utility"} == set(result["quality"])
