"""The GPU suite's pieces that run without a GPU: shrunk dry-run networks and the report rendering."""

import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

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
