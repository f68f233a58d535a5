"""`ctdiffusion view` shows the downstream benchmark (`ctdiffusion utility`, issue 27 item 6): the arms table of
utility/table.py (the rows report.html and the Slicer module show), found in the report (`evaluate --utility`) or as
a utility.json in the report folder or the run (RUN/utility-STAMP/, where the Slicer module writes it). Pure data
tests first; the app's state and the page in headless Chromium need the `web` extra and skip otherwise.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sys
from pathlib import Path

import pytest

from CTDiffusionLib.data.phantoms import write_phantom_dataset
from CTDiffusionLib.runfolder import RUN_FORMAT
from CTDiffusionLib.utility.table import utility_rows
from CTDiffusionLib.web.report import NO_UTILITY, utility_panel
from CTDiffusionLib.web.sources import resolve_inputs

sys.path.insert(0, str(Path(__file__).parent))
from headless_chromium import HeadlessChromium  # noqa: E402
from test_web import IMAGES_LOADED, SIZE, Server, _need_browser, _need_offscreen_rendering, _tree  # noqa: E402


def _arm(mean, lo, hi, hd95=None, metric="dice"):
    return {metric: mean, f"{metric}_ci95": [lo, hi], "hd95": hd95, "hd95_unit": "mm", "per_structure": {}}


def _ct_result(real=0.643) -> dict:
    return {"format": "ctdiffusion-utility/1", "metric": "dice",
            "arms": {"real": _arm(real, 0.626, 0.659, 15.3), "synthetic": _arm(0.631, 0.599, 0.659, 14.5),
                     "real+synthetic": _arm(0.622, 0.580, 0.659, 16.8)},
            "gain": {"dice": -0.021, "ci95": [-0.059, 0.016]}, "verdict": "no measurable gain",
            "verdict_line": "no measurable gain: adding 16 synthetic to 16 real training cases changes the mean Dice "
                            "on 8 held-out real cases by -0.021 (95% interval -0.059 .. +0.016; 2 seeds).",
            "near_copies": [], "counts": {"train": 16, "synthetic": 16, "test": 8, "seeds": 2}}


def _mask_result() -> dict:
    arms = {"real": _arm(0.725, 0.541, 0.876, metric="accuracy"),
            "synthetic": _arm(0.422, 0.132, 0.703, metric="accuracy"),
            "real+synthetic": _arm(0.694, 0.496, 0.859, metric="accuracy")}
    return {"format": "ctdiffusion-utility/1", "metric": "accuracy", "arms": arms,
            "gain": {"accuracy": -0.032, "ci95": [-0.118, 0.033]}, "verdict": "no measurable gain"}


def _write(path: Path, data: dict, mtime_ns: int | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    if mtime_ns is not None:
        os.utime(path, ns=(mtime_ns, mtime_ns))
    return path


@pytest.fixture()
def run_with_utility(tmp_path) -> Path:
    """A CT run folder (config, one preview sample) whose Slicer module ran the benchmark twice: the newer counts."""
    data = write_phantom_dataset("prostate-ct", 1, tmp_path / "data", size_xyz=SIZE)
    run = tmp_path / "run"
    (run / "samples").mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"format": RUN_FORMAT, "profile": "prostate-ct",
                                                 "data": {"sources": [str(data)]}}))
    shutil.copy(data / "prostate_000.nii.gz", run / "samples" / "step_00000010_0000.nii.gz")
    _write(run / "utility-20261201-100000" / "utility.json", _ct_result(real=0.5), mtime_ns=10**18)
    _write(run / "utility-20261202-100000" / "utility.json", _ct_result(), mtime_ns=2 * 10**18)
    return run


# ------------------------------------------------------------------------------------------ the data alone
def test_the_panel_shows_the_rows_report_and_slicer_show_with_the_metric_named():
    panel = utility_panel({}, None)
    assert panel == NO_UTILITY  # nothing to show: the page hides the section

    ct = _ct_result()
    panel = utility_panel({"utility": ct})  # `evaluate --utility`: linked into metrics.json
    assert panel["rows"] == utility_rows(ct)  # the one row builder, not a copy of it
    assert [r["arm"] for r in panel["rows"]] == ["real only", "synthetic only", "real + synthetic"]
    assert panel["rows"][0] == {"arm": "real only", "mean": "0.643", "interval": "0.626 .. 0.659",
                                "hd95": "15.3 mm"}
    assert [h["title"] for h in panel["headers"]] == ["Arm", "Dice mean", "95% interval", "HD95"]
    assert [h["key"] for h in panel["headers"]] == list(panel["rows"][0])
    assert panel["verdict"] == ct["verdict_line"]
    assert "-0.021 Dice" in panel["gain"] and "-0.059 .. +0.016" in panel["gain"]

    masks = utility_panel({"utility": _mask_result()})
    assert [h["title"] for h in masks["headers"]][1] == "Accuracy mean"
    assert masks["rows"][0]["mean"] == "0.725" and masks["rows"][0]["hd95"] == "–"
    assert "no measurable gain" in masks["verdict"]  # no verdict_line: the gain line says it


def test_the_report_link_comes_first_then_the_file_and_damaged_files_show_nothing(tmp_path):
    on_disk = _write(tmp_path / "utility.json", _ct_result(real=0.5))
    assert utility_panel({}, on_disk)["rows"][0]["mean"] == "0.500"
    assert utility_panel({"utility": _ct_result()}, on_disk)["rows"][0]["mean"] == "0.643"
    for damaged in ("{not json", json.dumps([1, 2]), json.dumps({"arms": {}}), json.dumps({"arms": [1]}),
                    json.dumps({"arms": {"real": [0.5]}})):
        on_disk.write_text(damaged)
        assert utility_panel({}, on_disk) == NO_UTILITY
    assert utility_panel({}, tmp_path / "missing.json") == NO_UTILITY


def test_the_viewer_finds_the_newest_benchmark_of_the_run_or_the_report_folder(run_with_utility, tmp_path):
    inputs = resolve_inputs(run_with_utility)
    assert inputs.utility_path == run_with_utility / "utility-20261202-100000" / "utility.json"
    report = tmp_path / "report"
    _write(report / "metrics.json", {"profile": "prostate-ct"})
    assert resolve_inputs(report).utility_path is None
    newest = _write(report / "utility.json", _ct_result(), mtime_ns=3 * 10**18)
    assert resolve_inputs(run_with_utility, report=report).utility_path == newest.resolve()


# ------------------------------------------------------------------------------------- the app and the page
def test_app_state_shows_the_benchmark_and_follows_a_newer_one(run_with_utility):
    _need_offscreen_rendering()
    from CTDiffusionLib.web.app import ViewerApp

    app = ViewerApp(resolve_inputs(run_with_utility))
    assert app.state.utility_rows == []  # nothing read before the first refresh
    app.refresh()
    assert app.state.utility_rows == utility_rows(_ct_result())
    assert app.state.utility_verdict == _ct_result()["verdict_line"]
    assert app.state.utility_headers[1]["title"] == "Dice mean"
    # the module runs the benchmark again while the page is open: the newer result replaces the table
    _write(run_with_utility / "utility-20261203-100000" / "utility.json", _ct_result(real=0.7), mtime_ns=4 * 10**18)
    app.refresh()
    assert app.state.utility_rows[0]["mean"] == "0.700"


def test_page_shows_the_utility_table(run_with_utility):
    _need_browser()
    before = _tree(run_with_utility)
    server = Server(str(run_with_utility))

    async def scenario():
        async with HeadlessChromium(1400, 900) as page:
            await page.navigate(server.url)
            await page.wait_for(IMAGES_LOADED, timeout=60)
            await page.wait_for("document.querySelector('#utility-table') !== null", timeout=20)
            table = await page.evaluate("document.querySelector('#utility-table').textContent")
            verdict = await page.evaluate("document.querySelector('#utility-verdict').textContent")
            gain = await page.evaluate("document.querySelector('#utility-gain').textContent")
            return table, verdict, gain

    try:
        table, verdict, gain = asyncio.run(scenario())
    finally:
        server.stop()
    for row in utility_rows(_ct_result()):
        assert all(cell in table for cell in row.values()), (row, table)
    assert "Dice mean" in table and verdict.strip() == _ct_result()["verdict_line"]
    assert "no measurable gain" in gain
    assert _tree(run_with_utility) == before  # the viewer wrote nothing
