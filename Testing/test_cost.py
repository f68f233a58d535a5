"""A CPU run that will take hours says so before the user waits, from a measured step; so does a grid far finer than
the data."""

from __future__ import annotations

import json
import re

from CTDiffusionLib.runfolder import RunFolder
from CTDiffusionLib.training.cost import coarse_data_notice, long_run_notice
from conftest import run_cli, stop_after


def test_long_cpu_runs_get_a_notice_with_the_alternatives():
    message, hint = long_run_notice(102.0, 20000, "cpu", 16 * 2**30, "default")
    assert "102.0 s" in message and "20000 steps" in message and "16.0 GB" in message and " h " in message
    assert "--preset demo" in hint and "--minutes" in hint
    assert long_run_notice(102.0, 20000, "cuda", None, "default") is None  # GPUs are what it is sized for
    assert long_run_notice(0.1, 20000, "cpu", None, "demo") is None  # 33 minutes: nothing to say
    message, hint = long_run_notice(30.0, 4000, "cpu", None, "demo")  # the CPU preset on a busy machine
    assert "33 h" in message and "--preset demo" not in hint and "--minutes" in hint and "busy" in hint


def test_a_grid_far_finer_than_the_data_is_named():
    message, hint = coarse_data_notice([(32, 32)] * 5, [256, 256, 26])
    assert "32x32" in message and "256x256" in message and "--grid 32x32x26" in hint
    assert coarse_data_notice([(512, 512)] * 3, [256, 256, 26]) is None
    assert coarse_data_notice([(48, 48), (64, 64), (48, 48)], [64, 64, 12]) is None


def test_a_training_planned_for_days_warns_from_its_measured_steps(ct_phantoms, tmp_path, monkeypatch):
    """The tiny preset for a million steps: what the notice says comes from the steps it timed, not from a table."""
    stop_after(monkeypatch, 12)
    run = tmp_path / "long"
    code = run_cli("train", "--profile", "prostate-ct", "--data", ct_phantoms, "--out", run, "--preset", "tiny",
                   "--steps", 1_000_000, "--batch-size", 2, "--checkpoint-every", 1000, "--sample-every", 0,
                   "--grid", "96x96x8")
    assert code == 130  # stopped as asked, resumable
    events = [json.loads(line) for line in RunFolder(run).events.read_text(encoding="utf-8").splitlines()]
    warnings = [e for e in events if e["event"] == "warning"]
    assert len(warnings) == 1 and re.search(r"takes [0-9.]+ s: 9999[0-9]{2} steps would take", warnings[0]["message"])
    assert "--minutes" in warnings[0]["hint"]  # tiny is a CPU preset: the hint names a budget, not another preset
    start = next(e for e in events if e["event"] == "start")
    # 48x48 phantoms on a 128x128 grid: named before training starts
    assert any("much coarser than the training grid" in w for w in start["warnings"])
