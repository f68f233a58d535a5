"""What the comparison shows, rendered by Slicer's own slice logic and 2D segmentation displayable manager on
slicer-core (headless, EGL): both sides at the same slice position, the real data left and the synthetic right,
the fixed RV/MYO/LV colours, "Real"/"Synthetic" view labels; the user's layout and links come back on exit."""

from __future__ import annotations

import os

os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")  # offscreen, no X server

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from slicer_fixtures import ORIGIN, core_app, write_ct, write_mask  # noqa: E402,F401

from CTDiffusionLib.profiles import CARDIAC_MASKS  # noqa: E402
from CTDiffusionLib.scene import comparison, nodes, render  # noqa: E402

SIZE = 192


@pytest.fixture(scope="module", autouse=True)
def offscreen_opengl():
    """Rendering needs an offscreen OpenGL window (Mesa's EGL here); probed in a child so a machine without one
    skips with the reason instead of crashing the test run."""
    import subprocess
    import sys

    probe = ("import vtk; w = vtk.vtkRenderWindow(); w.SetOffScreenRendering(1); w.SetSize(8, 8); "
             "w.AddRenderer(vtk.vtkRenderer()); w.Render(); print(w.GetClassName())")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    if out.returncode != 0:
        pytest.skip(f"no offscreen OpenGL window ({os.environ['VTK_DEFAULT_OPENGL_WINDOW']}): install Mesa's EGL "
                    f"(libegl1) to render slice views; {out.stderr.strip()[-200:]}")


def _view_pixels(picture, side):
    left, right = picture[:, :SIZE], picture[:, -SIZE:]
    body = slice(SIZE // 8, None)  # below the view label
    return (left if side == "real" else right)[body]


def _has_colour(pixels, rgb, tol=3):
    want = np.array([round(255 * c) for c in rgb])
    return bool((np.abs(pixels.astype(int) - want).max(axis=-1) <= tol).any())


def test_ct_comparison_shows_both_volumes_at_the_same_slice(core_app, tmp_path):
    real = nodes.load_ct_volume(write_ct(tmp_path / "real.nii.gz", size=(40, 36, 6), seed=1))
    synth = nodes.load_ct_volume(write_ct(tmp_path / "synth.nii.gz", size=(40, 36, 6), seed=2))
    result = comparison.setup_comparison(real, synth)
    red, yellow = comparison.slice_node(None, comparison.REAL_VIEW), comparison.slice_node(None, comparison.SYNTHETIC_VIEW)
    assert red.GetSliceOffset() == pytest.approx(yellow.GetSliceOffset())
    bounds = [0.0] * 6
    real.GetRASBounds(bounds)
    assert bounds[4] <= red.GetSliceOffset() <= bounds[5]
    assert (red.GetLayoutLabel(), yellow.GetLayoutLabel()) == ("Real", "Synthetic")
    picture = render.render_comparison(tmp_path / "ct.png", SIZE)
    assert (tmp_path / "ct.png").stat().st_size > 1000
    left, right = _view_pixels(picture, "real"), _view_pixels(picture, "synthetic")
    # the field of view is fitted: the body (soft tissue, grey) fills most of the view, air (black) around it
    grey = (left.mean(axis=-1) > 60).mean()
    assert 0.4 < grey < 0.98, grey
    assert not np.array_equal(left, right)  # two different volumes
    # the same volume on both sides renders identically: same geometry, same slice, same window/level
    comparison.show_sample(real)
    same = render.render_comparison(None, SIZE)
    assert np.array_equal(_view_pixels(same, "real"), _view_pixels(same, "synthetic"))
    # view labels in their view colours (Slicer's red and yellow)
    label_rows = picture[: SIZE // 8]
    assert _has_colour(label_rows[:, :SIZE], [c / 255 for c in render.VIEW_COLORS["Red"]], tol=12)
    assert _has_colour(label_rows[:, -SIZE:], [c / 255 for c in render.VIEW_COLORS["Yellow"]], tol=12)
    assert result.previous is not None


def test_mask_comparison_shows_segments_in_their_colours(core_app, tmp_path):
    real = nodes.load_mask_segmentation(write_mask(tmp_path / "real.nii.gz", size=(40, 36, 4)))
    # a 2D model's sample: one slice, inside the real stack (its first slice)
    synth = nodes.load_mask_segmentation(write_mask(tmp_path / "synth.nii.gz", size=(40, 36, 1), labels=(3, 2)))
    comparison.setup_comparison(real, synth)
    for view in (comparison.REAL_VIEW, comparison.SYNTHETIC_VIEW):  # both at the slice the sample has
        assert comparison.slice_node(None, view).GetSliceOffset() == pytest.approx(ORIGIN[2])
    picture = render.render_comparison(tmp_path / "masks.png", SIZE)
    left, right = _view_pixels(picture, "real"), _view_pixels(picture, "synthetic")
    for name, colour in ((c.name, c.color) for c in CARDIAC_MASKS.foreground_classes):
        assert _has_colour(left, colour), f"{name} is not drawn in its colour in the real view"
    assert _has_colour(right, CARDIAC_MASKS.classes[3].color) and _has_colour(right, CARDIAC_MASKS.classes[2].color)
    assert not _has_colour(right, CARDIAC_MASKS.classes[1].color), "the synthetic view shows the real RV"


def test_leaving_the_comparison_restores_layout_links_and_labels(core_app, tmp_path):
    layout = comparison.layout_node()
    layout.SetViewArrangement(3)  # the user's four-up
    core_app.ensure_slice_logics()
    green = comparison.slice_composite_node(None, "Green")
    green.SetLinkedControl(1)
    real = nodes.load_ct_volume(write_ct(tmp_path / "a.nii.gz"))
    result = comparison.setup_comparison(real, real)
    assert layout.GetViewArrangement() == comparison.LAYOUT_ID
    assert comparison.setup_comparison(real, real).previous is None  # already up: nothing new to remember
    comparison.restore_view_state(result.previous)
    assert layout.GetViewArrangement() == 3
    assert comparison.slice_composite_node(None, "Red").GetLinkedControl() == 0 and green.GetLinkedControl() == 1
    assert comparison.slice_node(None, "Red").GetLayoutLabel() == "R"
