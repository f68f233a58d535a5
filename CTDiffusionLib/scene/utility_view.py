"""The downstream benchmark's result (utility.json) in the scene: a table node with one row per arm (the rows of
CTDiffusionLib/utility/table.py, which the web viewer shows too) and a bar chart of each arm's mean with its 95%
interval as two marker series (low, high). Works on Slicer and on slicer-core; no torch."""

from __future__ import annotations

from CTDiffusionLib.scene.core import get_scene
from CTDiffusionLib.scene.plots import _new_or_existing, _series, _set_columns
from CTDiffusionLib.utility.table import COLUMNS, load_utility, metric_of, metric_title, utility_rows

UTILITY_TABLE_NAME = "CTDiffusion utility"
UTILITY_CHART_TABLE_NAME = "CTDiffusion utility bars"
UTILITY_CHART_NAME = "CTDiffusion utility chart"


def utility_table(result, scene=None):
    """A table node: Arm, Dice (or Accuracy) mean, 95% interval, HD95, one row per arm."""
    scene = get_scene(scene)
    result = load_utility(result)
    node = _new_or_existing(scene, "vtkMRMLTableNode", UTILITY_TABLE_NAME)
    titles = [f"{metric_title(result)} mean" if key == "mean" else title for key, title in COLUMNS]
    _set_columns(node, [(title, "string") for title in titles])
    table = node.GetTable()
    for values in utility_rows(result):
        row = table.InsertNextBlankRow()
        for col, (key, _title) in enumerate(COLUMNS):
            table.SetValue(row, col, values[key])
    node.Modified()
    return node


def utility_chart(result, scene=None):
    """A bar chart of each arm's mean, its interval's ends as markers (the plot node has no error bars)."""
    import math

    scene = get_scene(scene)
    result = load_utility(result)
    metric = metric_of(result)
    columns = ("arm", "mean", "low", "high")
    data = _new_or_existing(scene, "vtkMRMLTableNode", UTILITY_CHART_TABLE_NAME)
    _set_columns(data, [(name, "double") for name in columns])
    table = data.GetTable()
    labels = []
    for k, (arm, entry) in enumerate((result.get("arms") or {}).items()):
        ci = (entry or {}).get(f"{metric}_ci95") or [math.nan, math.nan]
        mean = (entry or {}).get(metric)
        row = table.InsertNextBlankRow()
        for col, value in enumerate((k, mean, *ci)):
            table.SetValue(row, col, float(value) if isinstance(value, (int, float)) else math.nan)
        labels.append(arm)
    data.Modified()
    chart = _new_or_existing(scene, "vtkMRMLPlotChartNode", UTILITY_CHART_NAME)
    chart.RemoveAllPlotSeriesNodeIDs()
    for name, style, color in (("mean", "bar", (0.46, 0.44, 0.70)), ("low", "points", (0, 0, 0)),
                               ("high", "points", (0, 0, 0))):
        series = _series(scene, f"{UTILITY_CHART_NAME} {name}", data, "arm", name, color, style)
        chart.AddAndObservePlotSeriesNodeID(series.GetID())
    chart.SetTitle(f"{metric_title(result)} per arm (markers: 95% interval); x: " +
                   ", ".join(f"{k} {arm}" for k, arm in enumerate(labels)))
    chart.SetYAxisTitle(metric_title(result))
    return chart
