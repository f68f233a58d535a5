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


#: A current report's summary: verdicts per metric and real-vs-real intervals (what `evaluate` writes).
REPORT = {
    "profile": "prostate-ct", "verdict": "fail",
    "summary": {
        "frechet_distance": {"generated": 123.4567, "interval": [12.345, 67.891], "sided": "upper", "verdict": "fail",
                             "better": "lower", "description": "Fréchet distance between feature distributions",
                             "per_network": [120.0, 127.0]},
        "diversity_ms_ssim": {"generated": 0.41, "interval": [0.3, 0.5], "sided": "two-sided", "verdict": "pass",
                              "better": "two-sided", "description": "mean pairwise similarity"},
    },
    "per_sample": [], "memorisation": {"flagged": []},
}


def _html_rows(table_html: str) -> list[list[str]]:
    import html
    import re

    rows = re.findall(r"<tr>(.*?)</tr>", table_html)[1:]  # without the header
    return [[html.unescape(re.sub(r"<[^>]+>", "", cell)) for cell in re.findall(r"<td>(.*?)</td>", row)]
            for row in rows]


def test_slicer_quality_table_shows_verdicts_first_and_intervals(core_app):  # noqa: F811
    from CTDiffusionLib.scene import plots

    summary, _samples = plots.metrics_tables(REPORT, core_app.scene)
    table = summary.GetTable()
    assert [table.GetColumnName(i) for i in range(table.GetNumberOfColumns())][:4] == [
        "Verdict", "Metric", "Generated", "Real-vs-real 95% interval"]
    rows = plots.table_rows(summary)
    assert rows[0][:4] == ["FAIL", "frechet_distance", "123.5", "12.35 .. 67.89 (fail above)"]
    assert rows[1][:4] == ["ok", "diversity_ms_ssim", "0.41", "0.3 .. 0.5 (fail outside)"]


def test_report_web_viewer_and_slicer_show_the_same_quality_rows(core_app):  # noqa: F811
    """One row builder (evaluation/quality_table.py) for all three: the same cells in the same order (the web
    viewer's narrow side panel shows all but the description, which report.html and Slicer show)."""
    from CTDiffusionLib.evaluation.report import summary_table
    from CTDiffusionLib.scene import plots
    from CTDiffusionLib.web.report import metric_headers, metric_rows

    html_rows = _html_rows(summary_table(REPORT["summary"]))
    web = metric_rows(REPORT)
    web_rows = [[row["verdict_label"] if h["key"] == "verdict" else row[h["key"]] for h in metric_headers(web)]
                for row in web]
    slicer_rows = plots.table_rows(plots.metrics_tables(REPORT, core_app.scene)[0])
    assert html_rows == slicer_rows
    assert web_rows == [row[:-1] for row in html_rows]  # the same cells; the side panel leaves out the descriptions
    assert html_rows[0][0] == "FAIL" and "(per feature network: 120, 127)" in html_rows[0][-1]


def _privacy_case(tmp_path):
    """Training CTs, a generate output, and a report flagging synthetic_0002 as a copy of case1."""
    from slicer_fixtures import write_ct, write_generated

    train = tmp_path / "train"
    for i in range(3):
        write_ct(train / f"case{i}.nii.gz", seed=10 + i)
    generated = write_generated(tmp_path / "generated", "prostate-ct", n=2)
    report = {"profile": "prostate-ct", "summary": {},
              "memorisation": {"threshold": 0.9697, "flagged": ["synthetic_0002"]},
              "per_sample": [{"name": "synthetic_0001", "nearest_train": "case0", "nearest_similarity": 0.41,
                              "memorised": False},
                             {"name": "synthetic_0002", "nearest_train": "case1", "nearest_similarity": 0.9731,
                              "memorised": True}]}
    return train, generated, report


def test_near_copy_is_shown_beside_the_training_case_it_copies(core_app, tmp_path):  # noqa: F811
    from CTDiffusionLib.scene import comparison
    from CTDiffusionLib.scene.near_copies import near_copies, show_near_copy

    train, generated, report = _privacy_case(tmp_path)
    [copy] = near_copies(report, generated, [train], "prostate-ct")
    assert (copy.synthetic_file.name, copy.training_file.name) == ("synthetic_0002.nii.gz", "case1.nii.gz")
    assert "0.9731" in copy.text() and "0.9697" in copy.text() and "case1" in copy.text()
    training, synthetic = show_near_copy(copy, "prostate-ct", core_app.scene)
    scene = core_app.scene
    assert comparison.displayed_in(scene, comparison.REAL_VIEW) is training
    assert comparison.displayed_in(scene, comparison.SYNTHETIC_VIEW) is synthetic
    assert "similarity 0.973" in synthetic.GetName() and training.GetName().startswith("case1")
    for view in (comparison.REAL_VIEW, comparison.SYNTHETIC_VIEW):  # linked navigation
        assert comparison.slice_composite_node(scene, view).GetLinkedControl() == 1
    assert comparison.slice_node(scene, comparison.REAL_VIEW).GetLayoutLabel() == "Training"
    assert comparison.slice_node(scene, comparison.SYNTHETIC_VIEW).GetLayoutLabel() == "Near-copy"


def test_near_copy_lookups_name_what_is_missing(core_app, tmp_path):  # noqa: F811
    import pytest

    from CTDiffusionLib.errors import InputError
    from CTDiffusionLib.scene.near_copies import near_copies

    train, generated, report = _privacy_case(tmp_path)
    report["per_sample"][1]["nearest_train"] = "case1_s03"  # a 2D evaluation names the slice: its case is shown
    assert near_copies(report, generated, [train], "prostate-ct")[0].training_file.name == "case1.nii.gz"
    (train / "case1.nii.gz").unlink()
    with pytest.raises(InputError, match="case1_s03"):
        near_copies(report, generated, [train], "prostate-ct")
    report["per_sample"][1]["memorised"] = False
    assert near_copies(report, generated, [train], "prostate-ct") == []
