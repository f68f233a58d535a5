"""The self-test scenario of the Slicer module (CTDiffusionTest runs the same function inside Slicer), on the
real MRML core: phantoms -> scene -> export -> CPU training in a child process -> generate 2 -> nodes,
geometry, subject hierarchy, side-by-side layout."""

from __future__ import annotations

import pytest

from slicer_fixtures import core_app  # noqa: F401

slicer = pytest.importorskip("slicer")


def test_selftest_scenario_on_slicer_core(core_app, tmp_path):
    from CTDiffusionLib.scene import comparison
    from CTDiffusionLib.scene.scenario import run_selftest_scenario

    messages = []
    result = run_selftest_scenario(tmp_path, scene=core_app.scene, steps=4, num_generate=2, in_slicer=False,
                                   log=messages.append)
    assert messages[-1] == "Scenario passed."
    synthetic = result["synthetic_nodes"]
    assert [n.GetName() for n in synthetic] == ["synthetic_0001", "synthetic_0002"]
    assert result["loss_curve"].rows() >= 1
    # browse to the second sample without re-running
    comparison.show_sample(synthetic[1], scene=core_app.scene)
    assert comparison.displayed_in(core_app.scene, comparison.SYNTHETIC_VIEW) is synthetic[1]
