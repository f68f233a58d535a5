"""Table and plot nodes: the live loss curve, the quality metrics (with memorised samples flagged) and the
intensity / label histograms of real vs generated volumes."""

from __future__ import annotations

import json
import math
from pathlib import Path

import slicer

from CTDiffusionLib.evaluation.quality_table import COLUMNS as QUALITY_COLUMNS
from CTDiffusionLib.evaluation.quality_table import format_value, quality_rows
from CTDiffusionLib.scene.core import get_scene
from CTDiffusionLib.profiles import PROFILES, get_profile
from CTDiffusionLib.runfolder import METRICS, json_document
from CTDiffusionLib.scene.nodes import is_segmentation

LOSS_TABLE_NAME = "CTDiffusion loss"
LOSS_CHART_NAME = "CTDiffusion training loss"
METRICS_TABLE_NAME = "CTDiffusion metrics"
SAMPLES_TABLE_NAME = "CTDiffusion samples"
HISTOGRAM_TABLE_NAME = "CTDiffusion histograms"
HISTOGRAM_CHART_NAME = "CTDiffusion histograms"
MEMORISED_FLAG = "MEMORISED"


def _number(value) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return math.nan
    return value


def _new_or_existing(scene, cls: str, name: str, reuse: bool = True):
    if reuse:
        node = scene.GetFirstNode(name, cls, False, True)
        if node is not None:
            return node
    return scene.AddNewNodeByClass(cls, name)


def _set_columns(table_node, columns: list[tuple[str, str]]) -> None:
    """Replace the table's columns: [(name, 'double'|'string'), ...]."""
    import vtk

    table = table_node.GetTable()
    while table.GetNumberOfColumns():
        table.RemoveColumn(0)
    for name, kind in columns:
        array = vtk.vtkDoubleArray() if kind == "double" else vtk.vtkStringArray()
        array.SetName(name)
        table.AddColumn(array)


def _series(scene, name: str, table_node, x: str, y: str, color, style: str = "line"):
    series = _new_or_existing(scene, "vtkMRMLPlotSeriesNode", name)
    series.SetAndObserveTableNodeID(table_node.GetID())
    series.SetXColumnName(x)
    series.SetYColumnName(y)
    series.SetPlotType(series.PlotTypeScatterBar if style == "bar" else series.PlotTypeScatter)
    series.SetMarkerStyle(series.MarkerStyleNone if style != "points" else series.MarkerStyleCircle)
    series.SetLineStyle(series.LineStyleSolid if style != "points" else series.LineStyleNone)
    series.SetColor(*color)
    return series


LOSS_COLUMNS = ("step", "loss", "val_loss")


class LossCurve:
    """Loss (and validation loss) against step, in a table node drawn by a plot chart node; `add(event)` per
    progress event. Points without a value (validation every n steps) are NaN and are not drawn."""

    def __init__(self, scene=None, name_suffix: str = ""):
        self.scene = get_scene(scene)
        self.table = _new_or_existing(self.scene, "vtkMRMLTableNode", LOSS_TABLE_NAME + name_suffix)
        if self._column_names() != list(LOSS_COLUMNS):  # a new table; an existing curve keeps its history (resume)
            self.clear()
        self.chart = _new_or_existing(self.scene, "vtkMRMLPlotChartNode", LOSS_CHART_NAME + name_suffix)
        self.chart.RemoveAllPlotSeriesNodeIDs()
        self.chart.SetTitle("Training loss")
        self.chart.SetXAxisTitle("step")
        self.chart.SetYAxisTitle("loss")
        self.chart.SetYAxisLogScale(False)
        self.loss_series = _series(self.scene, "loss" + name_suffix, self.table, "step", "loss", (0.2, 0.4, 0.9))
        self.val_series = _series(self.scene, "val_loss" + name_suffix, self.table, "step", "val_loss",
                                  (0.9, 0.4, 0.1), style="points")
        self.chart.AddAndObservePlotSeriesNodeID(self.loss_series.GetID())
        self.chart.AddAndObservePlotSeriesNodeID(self.val_series.GetID())

    def add(self, event: dict) -> bool:
        """Append one progress event (phase train/validate). Returns True when a row was added."""
        if event.get("event") not in (None, "progress") or event.get("phase") not in ("train", "validate", None):
            return False
        step = event.get("step")
        loss, val = _number(event.get("loss")), _number(event.get("val_loss"))
        if step is None or (math.isnan(loss) and math.isnan(val)):
            return False
        table = self.table.GetTable()
        row = table.InsertNextBlankRow()
        table.SetValue(row, 0, float(step))
        table.SetValue(row, 1, loss)
        table.SetValue(row, 2, val)
        table.Modified()
        self.table.Modified()
        return True

    def add_events(self, events) -> int:
        return sum(1 for e in events if self.add(e))

    def rows(self) -> int:
        return self.table.GetTable().GetNumberOfRows()

    def column(self, name: str) -> list[float]:
        arr = self.table.GetTable().GetColumnByName(name)
        return [arr.GetValue(i) for i in range(arr.GetNumberOfTuples())]

    def _column_names(self) -> list[str]:
        table = self.table.GetTable()
        return [table.GetColumnName(i) for i in range(table.GetNumberOfColumns())]

    def clear(self) -> None:
        _set_columns(self.table, [(name, "double") for name in LOSS_COLUMNS])
        self.table.Modified()


def load_metrics(report: str | Path | dict) -> dict:
    """metrics.json (a report folder, the file, or the parsed dict)."""
    return json_document(report, METRICS)


def metrics_tables(report, scene=None):
    """Two table nodes from a quality report: summary metrics and per-sample novelty (memorised flagged).

    Returns (metrics_table, samples_table). Per-condition metrics, when present, become extra summary rows.
    """
    scene = get_scene(scene)
    metrics = load_metrics(report)
    summary_node = _new_or_existing(scene, "vtkMRMLTableNode", METRICS_TABLE_NAME)
    # the rows report.html and the web viewer show (evaluation/quality_table.py): verdict first, then the interval
    _set_columns(summary_node, [(title[:1].upper() + title[1:], "string") for _key, title in QUALITY_COLUMNS])
    table = summary_node.GetTable()
    for values in quality_rows(metrics):
        row = table.InsertNextBlankRow()
        for col, (key, _title) in enumerate(QUALITY_COLUMNS):
            table.SetValue(row, col, values["verdict_label"] if key == "verdict" else values[key])
    summary_node.Modified()

    samples_node = _new_or_existing(scene, "vtkMRMLTableNode", SAMPLES_TABLE_NAME)
    _set_columns(samples_node, [("Sample", "string"), ("Nearest training case", "string"),
                                ("Similarity", "string"), ("Memorised", "string")])
    flagged = set((metrics.get("memorisation") or {}).get("flagged") or [])
    st = samples_node.GetTable()
    for sample in metrics.get("per_sample") or []:
        row = st.InsertNextBlankRow()
        name = str(sample.get("name", ""))
        memorised = bool(sample.get("memorised")) or name in flagged
        for col, value in enumerate([name, sample.get("nearest_train") or "", format_value(sample.get("nearest_similarity")),
                                     MEMORISED_FLAG if memorised else ""]):
            st.SetValue(row, col, str(value))
    samples_node.Modified()
    summary_node.SetAttribute("CTDiffusion.report", json.dumps({"profile": metrics.get("profile"),
                                                               "feature_network": metrics.get("feature_network")}))
    return summary_node, samples_node


def table_rows(table_node) -> list[list[str]]:
    table = table_node.GetTable()
    return [[table.GetValue(r, c).ToString() for c in range(table.GetNumberOfColumns())]
            for r in range(table.GetNumberOfRows())]


def memorised_samples(samples_table) -> list[str]:
    return [row[0] for row in table_rows(samples_table) if row[-1] == MEMORISED_FLAG]


def _voxels(node, profile=None):
    import numpy as np

    if is_segmentation(node):
        from CTDiffusionLib.scene.nodes import _segmentation_as_labelmap

        labelmap = _segmentation_as_labelmap(node, profile)
        try:
            return np.array(slicer.util.arrayFromVolume(labelmap))
        finally:
            node.GetScene().RemoveNode(labelmap)
    return np.asarray(slicer.util.arrayFromVolume(node))


def histogram_chart(real_nodes, generated_nodes, scene=None, profile=None, bins: int = 64):
    """Real vs generated histograms in one chart: HU densities over the profile's HU range for intensity images,
    class voxel fractions for label maps (segmentation nodes without a profile: the label-map profile).

    Returns (chart_node, table_node)."""
    import numpy as np

    scene = get_scene(scene)
    real_nodes = [n for n in real_nodes if n is not None]
    generated_nodes = [n for n in generated_nodes if n is not None]
    if profile is None:
        masks = any(is_segmentation(n) for n in real_nodes + generated_nodes)
        profile = next(p for p in PROFILES.values() if p.is_label_map == masks)
    profile = get_profile(profile)
    masks = profile.is_label_map
    classes = profile.foreground_classes
    table_node = _new_or_existing(scene, "vtkMRMLTableNode", HISTOGRAM_TABLE_NAME)
    chart = _new_or_existing(scene, "vtkMRMLPlotChartNode", HISTOGRAM_CHART_NAME)
    chart.RemoveAllPlotSeriesNodeIDs()
    if masks:
        def fractions(nodes):
            counts = np.zeros(len(classes) + 1)
            for n in nodes:
                v = _voxels(n, profile)
                counts += np.bincount(v.ravel().astype(np.int64).clip(0, len(classes)), minlength=len(classes) + 1)
            fg = counts[1:].sum()
            return counts[1:] / fg if fg else counts[1:]

        x = np.arange(1, len(classes) + 1, dtype=float)
        real, gen = fractions(real_nodes), fractions(generated_nodes)
        x_name, title, x_title, y_title, style = "label", "Class share of foreground", "label (" + ", ".join(f"{c.value} {c.name}" for c in classes) + ")", \
            "fraction", "bar"
    else:
        edges = np.linspace(profile.hu_range[0], profile.hu_range[1], bins + 1)

        def density(nodes):
            h = np.zeros(bins)
            for n in nodes:
                h += np.histogram(_voxels(n).ravel(), bins=edges)[0]
            total = h.sum()
            return h / total if total else h

        x = 0.5 * (edges[1:] + edges[:-1])
        real, gen = density(real_nodes), density(generated_nodes)
        x_name, title, x_title, y_title, style = "HU", "Intensity histogram", "HU", "fraction of voxels", "line"
    _set_columns(table_node, [(x_name, "double"), ("real", "double"), ("generated", "double")])
    table = table_node.GetTable()
    for i in range(len(x)):
        row = table.InsertNextBlankRow()
        table.SetValue(row, 0, float(x[i]))
        table.SetValue(row, 1, float(real[i]))
        table.SetValue(row, 2, float(gen[i]))
    table_node.Modified()
    chart.SetTitle(title)
    chart.SetXAxisTitle(x_title)
    chart.SetYAxisTitle(y_title)
    for name, color in (("real", (0.2, 0.4, 0.9)), ("generated", (0.9, 0.4, 0.1))):
        series = _series(scene, f"{name} histogram", table_node, x_name, name, color, style=style)
        chart.AddAndObservePlotSeriesNodeID(series.GetID())
    return chart, table_node
