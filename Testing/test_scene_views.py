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
    """One row builder (evaluation/quality_table.py) for all three: the same cells in the same order."""
    from CTDiffusionLib.evaluation.report import summary_table
    from CTDiffusionLib.scene import plots
    from CTDiffusionLib.web.report import metric_headers, metric_rows

    html_rows = _html_rows(summary_table(REPORT["summary"]))
    web = metric_rows(REPORT)
    web_rows = [[row["verdict_label"] if h["key"] == "verdict" else row[h["key"]] for h in metric_headers(web)]
                for row in web]
    slicer_rows = plots.table_rows(plots.metrics_tables(REPORT, core_app.scene)[0])
    assert html_rows == web_rows == slicer_rows
    assert html_rows[0][0] == "FAIL" and "(per feature network: 120, 127)" in html_rows[0][-1]
