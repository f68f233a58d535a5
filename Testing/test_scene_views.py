"""What the comparison views show, on the real MRML core: the layout switch with a maximized view, the loss
curve of a resumed training, the near-copy pair of the privacy check."""

from __future__ import annotations

from slicer_fixtures import core_app, slicer  # noqa: F401


def test_comparison_layout_is_not_hidden_behind_a_maximized_view(core_app):  # noqa: F811
    from CTDiffusionLib.scene import comparison

    layout = comparison.layout_node(core_app.scene)
    layout.SetViewArrangement(layout.SlicerLayoutFourUpView)
    core_app.ensure_slice_logics()
    red = core_app.scene.GetSingletonNode("Red", "vtkMRMLSliceNode")
    layout.AddMaximizedViewNode(red)  # the user double-clicked a view: it fills the layout
    assert layout.GetNumberOfMaximizedViewNodes() == 1
    comparison.show_comparison_layout(core_app.scene)
    assert layout.GetNumberOfMaximizedViewNodes() == 0
    assert layout.GetViewArrangement() == comparison.LAYOUT_ID


def test_a_resumed_trainings_loss_curve_keeps_its_history(core_app):  # noqa: F811
    from CTDiffusionLib.scene.plots import LossCurve

    first = LossCurve(core_app.scene)
    first.add_events([{"event": "progress", "phase": "train", "step": s, "loss": 1.0 / s} for s in (1, 2, 3)])
    resumed = LossCurve(core_app.scene)  # what the module makes for Resume (reset=False)
    assert resumed.column("step") == [1.0, 2.0, 3.0]
    resumed.add({"event": "progress", "phase": "train", "step": 4, "loss": 0.2})
    assert resumed.rows() == 4
    resumed.clear()  # a new training starts an empty curve
    assert resumed.rows() == 0 and resumed.table is first.table
