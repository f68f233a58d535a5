"""`ctdiffusion view`: input resolution and errors, report reading, the volume cache bound, and the real page in
headless Chromium (screenshot pixels: both views show the same slice, the slider moves both; mask colours; the
report and a live training panel). Browser tests need the `web` extra and Debian's chromium; they skip otherwise.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from CTDiffusionLib.cli import main
from CTDiffusionLib.data.phantoms import write_phantom_dataset
from CTDiffusionLib.errors import InputError
from CTDiffusionLib.profiles import get_profile
from CTDiffusionLib.runfolder import RUN_FORMAT
from CTDiffusionLib.web.report import TrainingFollower, latest_preview_png, metric_headers, metric_rows, verdict_line
from CTDiffusionLib.web.sources import resolve_inputs
from CTDiffusionLib.web.volume_cache import VolumeCache

sys.path.insert(0, str(Path(__file__).parent))
from headless_chromium import HeadlessChromium, chromium_path  # noqa: E402

SIZE = (48, 48, 12)
CARDIAC_COLORS = {c.name: c.color for c in get_profile("cardiac-masks").foreground_classes}


# ------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def ct_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("ct")
    write_phantom_dataset("prostate-ct", 2, root / "real", size_xyz=SIZE)
    generated = root / "generated"
    generated.mkdir()
    # the same volume on both sides: at the same slice position the two views must look the same
    shutil.copy(root / "real" / "prostate_000.nii.gz", generated / "synthetic_0001.nii.gz")
    (generated / "synthetic_0001.json").write_text(json.dumps({"profile": "prostate-ct", "index": 1}))
    single = root / "single"
    single.mkdir()
    shutil.copy(root / "real" / "prostate_000.nii.gz", single / "prostate_000.nii.gz")
    return root


@pytest.fixture(scope="module")
def mask_run(tmp_path_factory):
    """A run folder as a training leaves it mid-way: config, events so far, one preview sample; plus a report."""
    root = tmp_path_factory.mktemp("masks")
    data = write_phantom_dataset("cardiac-masks", 2, root / "acdc", size_xyz=SIZE)
    run = root / "run"
    (run / "samples").mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"format": RUN_FORMAT, "profile": "cardiac-masks",
                                                 "data": {"sources": [str(data)]}}))
    events = [{"event": "start", "time": 0}] + [
        {"event": "progress", "phase": "train", "step": s, "total": 40, "loss": 1.0 / s, "eta_s": 60} for s in
        range(1, 11)]
    (run / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    shutil.copy(data / "patient001" / "patient001_frame01_gt.nii.gz", run / "samples" / "step_00000010_0000.nii.gz")
    report = root / "report"
    report.mkdir()
    (report / "metrics.json").write_text(json.dumps({
        "profile": "cardiac-masks",
        "verdicts": {"realism": "close to real", "novelty": {"verdict": "no memorised samples"}},
        "summary": {"dice_plausibility": {"generated": 0.91, "real_floor": 0.95, "better": "higher"},
                    "mmd": 0.0123,
                    "frechet_distance": {"generated": 123.4567, "interval": [12.345, 67.891], "sided": "upper",
                                         "verdict": "fail", "description": "Fréchet distance (FID formula) between "
                                         "feature distributions of generated and real volumes"}}}))
    return root


def _tree(*folders) -> dict:
    """Every file under the folders with size and modification time: to prove the viewer wrote nothing."""
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for f in folders for p in sorted(Path(f).rglob("*"))}


# ------------------------------------------------------------------------------------ inputs and errors
def test_resolve_generated_and_real_folders(ct_data):
    inputs = resolve_inputs(real=ct_data / "real", generated=ct_data / "generated")
    assert inputs.profile == "prostate-ct"  # from the generate sidecar
    assert [v.name for v in inputs.real_volumes()] == ["prostate_000", "prostate_001"]
    assert [v.name for v in inputs.generated_volumes()] == ["synthetic_0001"]
    assert inputs.run_dir is None and inputs.report_dir is None


def test_resolve_run_folder_uses_its_data_samples_and_a_report(mask_run):
    inputs = resolve_inputs(mask_run / "run", report=mask_run / "report")
    assert inputs.profile == "cardiac-masks"
    assert inputs.run_dir == (mask_run / "run").resolve()
    assert inputs.generated_dir == inputs.run_dir / "samples"
    assert len(inputs.real_volumes()) == 4  # 2 ACDC patients x ED/ES, from the run's own training data
    assert inputs.metrics_path == (mask_run / "report" / "metrics.json").resolve()


def test_resolve_demo_layout(tmp_path, mask_run):
    for part in ("run", "report"):
        shutil.copytree(mask_run / part, tmp_path / part)
    inputs = resolve_inputs(tmp_path)
    assert inputs.run_dir == (tmp_path / "run").resolve() and inputs.report_dir == (tmp_path / "report").resolve()


@pytest.mark.parametrize("argv, fragment", [
    (["view", "{tmp}/missing"], "does not exist"),
    (["view", "{tmp}"], "holds no run"),
    (["view", "--generated", "{tmp}"], "holds no volumes"),
    (["view", "--real", "{tmp}"], "data type of these volumes is unknown"),  # nothing to tell it from
    (["view", "--generated", "{ct}/generated", "--profile", "mri"], "invalid choice: 'mri'"),
    (["view", "--generated", "{ct}/generated", "--cache", "0"], "--cache 0"),
    (["view", "--generated", "{ct}/generated", "--port", "0"], "--port 0"),
])
def test_bad_inputs_exit_2_with_one_sentence(tmp_path, ct_data, capsys, argv, fragment):
    argv = [a.format(tmp=tmp_path, ct=ct_data) for a in argv]
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's own refusals (bad choice) exit 2 too
        code = exc.code
    assert code == 2
    err = capsys.readouterr().err
    assert fragment in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []  # nothing written


@pytest.mark.parametrize("host, warned", [("127.0.0.1", False), ("0.0.0.0", True)])
def test_listening_beyond_this_machine_only_when_asked_and_with_a_warning(ct_data, capsys, monkeypatch, host,
                                                                          warned):
    pytest.importorskip("trame_slicer", reason="needs the web extra: pip install 'ctdiffusion[web]'")
    import CTDiffusionLib.web.app as web_app

    served = {}
    monkeypatch.setattr(web_app, "serve", lambda inputs, **kw: served.update(kw, inputs=inputs))
    assert main(["view", "--generated", str(ct_data / "generated"), "--host", host, "--port", "8123"]) == 0
    assert served["host"] == host and served["port"] == 8123 and served["inputs"].profile == "prostate-ct"
    assert ("warning: listening on 0.0.0.0" in capsys.readouterr().err) == warned
    served["on_ready"]()
    assert "open http://" in capsys.readouterr().err


def test_default_host_is_loopback():
    from CTDiffusionLib.cli import build_parser

    args = build_parser().parse_args(["view", "somewhere"])
    assert args.host == "127.0.0.1" and args.port == 8080


def test_bare_folders_get_their_profile_from_the_data_as_evaluate_does(tmp_path, ct_data):
    """No run config, sidecar or report: label maps are masks, intensities CT (evaluation.inputs.infer_profile)."""
    ct = ct_data / "single"  # a CT volume without a sidecar
    masks = write_phantom_dataset("cardiac-masks", 1, tmp_path / "acdc", size_xyz=SIZE)
    mask_files = tmp_path / "mask-files"
    mask_files.mkdir()
    for f in sorted(Path(masks).rglob("*_gt.nii.gz")):
        shutil.copy(f, mask_files / f.name)
    assert resolve_inputs(generated=ct).profile == "prostate-ct"
    assert resolve_inputs(generated=mask_files).profile == "cardiac-masks"


def test_resolve_requires_something_to_show():
    with pytest.raises(InputError, match="Nothing to show"):
        resolve_inputs()


# --------------------------------------------------------------------------------- report and training
def test_verdict_and_metrics_are_read_defensively():
    older = {"summary": {"a": {"generated": 0.5, "real_floor": 0.25, "better": "lower"}, "b": 3, "c": None},
             "memorisation": {"gate": "PASS: no sample is a near copy."}}
    assert verdict_line(older) == "PASS: no sample is a near copy."
    rows = metric_rows(older)
    assert [r["metric"] for r in rows] == ["a", "b", "c"]
    assert rows[0]["generated"] == "0.5" and rows[0]["interval"] == "0.25 \u2193" and rows[1]["generated"] == "3"
    newer = {"verdict": "fail", "verdict_line": "FAIL: 1 of 2 metrics lie outside what real data gives: a.",
             "verdicts": {"a": "fail", "b": "pass"},
             "summary": {"a": {"generated": 9.0, "interval": [1.0, 2.5], "verdict": "fail"}, "b": {"generated": 1}}}
    assert [h["key"] for h in metric_headers(rows)] == ["metric", "generated", "interval"]  # no verdicts: no column
    assert verdict_line(newer) == newer["verdict_line"]
    rows = metric_rows(newer)
    assert [h["key"] for h in metric_headers(rows)] == ["verdict", "metric", "generated", "interval"]  # verdict first
    assert rows[0]["interval"] == "1 .. 2.5" and rows[0]["verdict"] == "fail" and rows[1]["verdict"] == "pass"
    # metrics.json writes "ok" for a metric inside its interval: shown as a pass, not as a blank
    assert metric_rows({"summary": {"w1": {"generated": 1.0, "interval": [0, 2]}}, "verdicts": {"w1": "ok"}}
                        )[0]["verdict"] == "pass"
    assert "description" not in [h["key"] for h in metric_headers(rows)]  # no room in the side panel
    assert verdict_line({"verdict": "usable", "verdicts": {"realism": {"verdict": "pass"}, "novelty": "fail"}}) == \
        "usable; realism: pass; novelty: fail"
    assert verdict_line({"verdicts": ["ok", {"text": "fine"}]}) == "ok; fine"
    assert verdict_line({}) == "" and metric_rows({"summary": [1, 2]}) == []


def test_training_follower_reads_only_new_lines(tmp_path):
    events = tmp_path / "events.jsonl"
    events.write_text(json.dumps({"event": "progress", "step": 1, "total": 4, "loss": 0.5}) + "\n")
    follower = TrainingFollower(events)
    assert follower.poll() and follower.losses == [0.5] and "step 1 / 4" in follower.status
    assert not follower.poll()
    with open(events, "a") as f:
        f.write(json.dumps({"event": "progress", "phase": "train", "step": 2, "loss": 0.25}) + "\n")
        f.write(json.dumps({"event": "progress", "phase": "validate", "step": 2, "val_loss": 0.3}) + "\n")
        f.write('{"event": "progress", "step": 3, "lo')  # a line still being written
    assert follower.poll() and follower.losses == [0.5, 0.25] and follower.val_losses == [0.3]
    assert follower.loss_curve_png().startswith("data:image/png;base64,")
    with open(events, "a") as f:
        f.write('ss": 0.2}\n' + json.dumps({"event": "done", "status": "ok"}) + "\n")
    assert follower.poll() and follower.losses[-1] == 0.2 and follower.status == "finished (ok)"


def test_latest_preview_skips_a_png_still_being_written(tmp_path):
    assert latest_preview_png(tmp_path) == ""
    import matplotlib.pyplot as plt

    plt.imsave(tmp_path / "step_00000001_0000.png", np.zeros((4, 4)))
    complete = latest_preview_png(tmp_path)
    (tmp_path / "step_00000002_0000.png").write_bytes(b"\x89PNG\r\n\x1a\n partial")
    assert latest_preview_png(tmp_path) == complete != ""


# ---------------------------------------------------------------------------------------- memory bound
def test_volume_cache_keeps_at_most_capacity_least_recently_used_goes():
    loaded, released = [], []
    cache = VolumeCache(lambda k: loaded.append(k) or f"node{k}", released.append, capacity=3)
    for k in range(100):
        assert cache.get(k) == f"node{k}"
        assert len(cache) <= 3
    assert loaded == list(range(100)) and released == [f"node{k}" for k in range(97)]
    cache.get(98)  # used again: now 97 is the least recently used
    cache.get(100)
    assert 98 in cache and 97 not in cache and released[-1] == "node97"
    assert loaded[-1] == 100  # 98 came from the cache, not the disk
    cache.clear()
    assert len(cache) == 0 and len(released) == 101 == len(loaded)


def test_browsing_100_generated_volumes_keeps_few_in_the_scene(tmp_path, ct_data):
    _need_offscreen_rendering()
    from CTDiffusionLib.web.app import SYNTHETIC, ViewerApp

    generated = tmp_path / "many"
    generated.mkdir()
    for i in range(100):
        shutil.copy(ct_data / "real" / "prostate_001.nii.gz", generated / f"synthetic_{i:04d}.nii.gz")
    app = ViewerApp(resolve_inputs(real=ct_data / "real", generated=generated, profile="prostate-ct"),
                    cache_size=3)
    (generated / "synthetic_0050.nii.gz").write_bytes(b"not a volume")
    before = _tree(generated, ct_data / "real")
    for i in range(100):
        app.step_sample(SYNTHETIC, 1)
        app._on_index(SYNTHETIC)
        assert app.scene.GetNodesByClass("vtkMRMLScalarVolumeNode").GetNumberOfItems() <= 3 + 1  # + real
        if i + 1 == 50:  # a damaged file is named on the page and browsing goes on
            assert app.state[f"{SYNTHETIC}_name"].startswith("synthetic_0050: ") and app.shown[SYNTHETIC] is None
    assert app.state[f"{SYNTHETIC}_index"] == 0  # wrapped around after 100 steps
    assert app.state[f"{SYNTHETIC}_name"] == "synthetic_0000 (1 of 100)"
    assert _tree(generated, ct_data / "real") == before


def test_window_presets_apply_to_both_sides_and_masks_have_none(ct_data, mask_run):
    _need_offscreen_rendering()
    from CTDiffusionLib.web.app import REAL, SYNTHETIC, ViewerApp

    app = ViewerApp(resolve_inputs(real=ct_data / "real", generated=ct_data / "generated"))
    assert list(app.presets)[:2] == ["soft tissue", "air to bone"] and "bone" in app.presets
    for tag in (REAL, SYNTHETIC):
        app._on_index(tag)
    app.state.preset = "bone"
    app._on_preset()
    for tag in (REAL, SYNTHETIC):
        display = app._shown_node(tag).GetDisplayNode()
        assert (display.GetWindow(), display.GetLevel()) == (1000.0, 400.0) and not display.GetAutoWindowLevel()

    masks = ViewerApp(resolve_inputs(mask_run / "run"))
    masks._on_index(REAL)
    assert masks.presets == {}
    label = masks.scene.GetNodeByID(masks._logic(REAL).GetSliceCompositeNode().GetLabelVolumeID())
    colors = label.GetDisplayNode().GetColorNode()
    rgba = [0.0] * 4
    colors.GetColor(3, rgba)
    lv = get_profile("cardiac-masks").classes[3]
    assert colors.GetColorName(3) == lv.name == "LV" and np.allclose(rgba[:3], lv.color, atol=1 / 255) and rgba[3] == 1.0


# --------------------------------------------------------------------------------------- the real page
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`ctdiffusion view ...` as a child process on a free loopback port."""

    def __init__(self, *args: str):
        self.port = _free_port()
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen([sys.executable, "-m", "CTDiffusionLib", "view", *args, "--port",
                                      str(self.port)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                     env=env)
        self.lines: list[str] = []
        self.ready = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()
        if not self.ready.wait(90):
            self.stop()
            raise AssertionError("viewer did not start:\n" + "".join(self.lines[-30:]))

    def _read(self):
        for line in self.proc.stderr:
            self.lines.append(line)
            if "open http://" in line:
                self.ready.set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def _need_offscreen_rendering():
    pytest.importorskip("trame_slicer", reason="needs the web extra: pip install 'ctdiffusion[web]'")
    import ctypes.util

    if not os.environ.get("DISPLAY") and ctypes.util.find_library("EGL") is None:
        pytest.skip("offscreen rendering needs Mesa EGL (Debian: apt-get install libegl1 libegl-mesa0)")
    os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")


def _need_browser():
    _need_offscreen_rendering()
    if chromium_path() is None:
        pytest.skip("headless Chromium is not installed (Debian: apt-get install chromium; "
                    "scripts/run_tests.sh installs it when run as root)")


VIEW_RECTS = ("[...document.querySelectorAll('.layout-grid-item')].map(e => { const r = e.getBoundingClientRect();"
              " return [r.x, r.y, r.width, r.height]; })")
IMAGES_LOADED = ("(() => { const i = [...document.querySelectorAll('.image-display-area')];"
                 " return i.length === 2 && i.every(x => x.complete && x.naturalWidth > 0); })()")


VERDICT_AND_INTERVAL = """(() => {
    const table = document.querySelector('#metrics');
    const wrapper = table.querySelector('.v-table__wrapper').getBoundingClientRect();
    const row = [...table.querySelectorAll('tbody tr')].find(r => r.textContent.includes('frechet_distance'));
    const cells = [...row.querySelectorAll('td')];
    const verdict = cells[0].getBoundingClientRect();
    const interval = document.createRange();
    interval.selectNodeContents(cells[3]);
    const lines = new Set([...interval.getClientRects()].map(r => Math.round(r.top))).size;
    return [table.querySelector('th').textContent.trim(),
            verdict.left >= wrapper.left && verdict.right <= wrapper.right && verdict.right <= innerWidth,
            getComputedStyle(cells[0].querySelector('b')).color, lines];
})()"""


async def _views(page) -> list[np.ndarray]:
    """The two slice views cut out of a screenshot of the whole page (RGB, float)."""
    from PIL import Image

    shot = np.asarray(Image.open(io.BytesIO(await page.screenshot())).convert("RGB")).astype(np.float32)
    crops = []
    for x, y, w, h in await page.evaluate(VIEW_RECTS):
        crops.append(shot[int(y) + 3:int(y + h) - 3, int(x) + 3:int(x + w) - 3])
    assert len(crops) == 2
    h, w = min(c.shape[0] for c in crops), min(c.shape[1] for c in crops)  # fractional CSS widths: +-1 px
    return [c[:h, :w] for c in crops]


def _has_content(view: np.ndarray) -> bool:
    lit = view.max(axis=-1) > 40
    return 0.05 < lit.mean() < 0.98 and view.std() > 20


async def _until(condition, timeout=30.0):
    deadline = time.time() + timeout
    while True:
        value = await condition()
        if value or time.time() > deadline:
            return value
        await asyncio.sleep(0.3)


def test_page_shows_the_same_slice_in_both_views_and_the_slider_moves_both(ct_data, tmp_path):
    _need_browser()
    shown = (ct_data / "real", ct_data / "generated")
    before_tree = _tree(*shown)
    server = Server("--real", str(shown[0]), "--generated", str(shown[1]))
    shots = tmp_path / "shots"
    shots.mkdir()

    async def scenario():
        async with HeadlessChromium(1400, 900) as page:
            await page.navigate(server.url)
            await page.wait_for(IMAGES_LOADED, timeout=60)

            async def both_lit_and_same():
                # same volume on both sides: identical pixels prove the same slice position and the same window
                views = await _views(page)
                same = np.abs(views[0] - views[1]).mean() < 2.0
                return views if same and all(_has_content(v) for v in views) else None

            first = await _until(both_lit_and_same)
            (shots / "first.png").write_bytes(await page.screenshot())
            assert first, "the two slice views do not both show the same image"
            text_before = await page.evaluate("document.querySelector('#slice-text').textContent")

            await page.evaluate("document.querySelector('[role=slider]').focus()")
            for _ in range(3):  # the user moves the slice slider with the keyboard
                await page.press("ArrowRight", "ArrowRight", 39)

            async def both_moved():
                views = await _views(page)
                changed = [np.abs(v - f).mean() > 2.0 for v, f in zip(views, first)]
                return views if all(changed) and np.abs(views[0] - views[1]).mean() < 2.0 else None

            moved = await _until(both_moved)
            (shots / "moved.png").write_bytes(await page.screenshot())
            assert moved, "moving the slider did not change both views to the same new slice"
            assert all(_has_content(v) for v in moved)
            expected = f"{int(text_before.split('/')[0]) + 3} /"  # the counter moved by the 3 key presses
            await page.wait_for(f"document.querySelector('#slice-text').textContent.startsWith('{expected}')", 10)

            # the axial/coronal/sagittal switch turns both views, which stay on the same slice
            await page.evaluate("[...document.querySelectorAll('#orientation button')]"
                                ".find(b => b.textContent.includes('Coronal')).click()")

            async def both_coronal():
                views = await _views(page)
                turned = [np.abs(v - m).mean() > 2.0 for v, m in zip(views, moved)]
                same = np.abs(views[0] - views[1]).mean() < 2.0
                return views if all(turned) and same and all(_has_content(v) for v in views) else None

            assert await _until(both_coronal), "the orientation switch did not turn both views to the same slice"
            await page.wait_for(  # coronal slices run along y
                f"document.querySelector('#slice-text').textContent.endsWith('/ {SIZE[1]}')", timeout=10)

    try:
        asyncio.run(scenario())
    finally:
        server.stop()
    assert _tree(*shown) == before_tree  # the viewer wrote nothing into the folders it showed
    if os.environ.get("CTDIFFUSION_WEB_SCREENSHOT"):  # docs/web.md's picture: CTDIFFUSION_WEB_SCREENSHOT=path
        shutil.copy(shots / "first.png", os.environ["CTDIFFUSION_WEB_SCREENSHOT"])


def _color_fraction(view: np.ndarray, rgb) -> float:
    return float((np.abs(view - np.array(rgb) * 255).max(axis=-1) < 40).mean())


def test_page_shows_masks_in_profile_colours_report_and_live_training(mask_run, tmp_path):
    _need_browser()
    run = mask_run / "run"
    server = Server(str(run), "--report", str(mask_run / "report"))

    async def scenario():
        async with HeadlessChromium(1400, 900) as page:
            await page.navigate(server.url)
            await page.wait_for(IMAGES_LOADED, timeout=60)

            async def coloured():
                views = await _views(page)
                ok = all(_color_fraction(v, CARDIAC_COLORS[name]) > 0.002 for v in views for name in CARDIAC_COLORS)
                return views if ok else None

            assert await _until(coloured), "the masks are not drawn in the profile's class colours"
            verdict = await page.evaluate("document.querySelector('#verdict').textContent")
            assert "realism: close to real" in verdict and "novelty: no memorised samples" in verdict
            table = await page.evaluate("document.querySelector('#metrics').textContent")
            assert "dice_plausibility" in table and "0.91" in table and "mmd" in table
            # at 1400x900 the verdict is the first column, in view and red; the interval is one line
            first, visible, colour, lines = await page.evaluate(VERDICT_AND_INTERVAL)
            assert (first, visible, colour, lines) == ("verdict", True, "rgb(198, 40, 40)", 1)
            await page.wait_for("document.querySelector('#loss-curve') !== null", timeout=20)
            status = await page.evaluate("document.querySelector('#training-status').textContent")
            assert "step 10 / 40" in status

            # training goes on: new events and a new preview sample appear while the page is open
            with open(run / "events.jsonl", "a") as f:
                for s in range(11, 21):
                    f.write(json.dumps({"event": "progress", "phase": "train", "step": s, "total": 40,
                                        "loss": 1.0 / s}) + "\n")
            shutil.copy(run / "samples" / "step_00000010_0000.nii.gz", run / "samples" / "step_00000020_0000.nii.gz")
            written_by_test = _tree(run, mask_run / "report")
            await page.wait_for("document.querySelector('#training-status').textContent.includes('step 20 / 40')",
                                timeout=20)
            await page.wait_for("document.querySelector('#synthetic-name').textContent.includes('step_00000020')",
                                timeout=20)
            return written_by_test

    try:
        written_by_test = asyncio.run(scenario())
    finally:
        server.stop()
    assert _tree(run, mask_run / "report") == written_by_test  # the viewer itself wrote nothing
