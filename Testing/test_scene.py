"""Scene code against the real MRML core (slicer-core) with an application logic booted as trame-slicer does:
import of generated results, export of selected nodes, subject hierarchy, comparison layout, plots, tables."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from slicer_fixtures import ORIGIN, SPACING, core_app, write_ct, write_generated, write_mask  # noqa: F401

slicer = pytest.importorskip("slicer")

from CTDiffusionLib.profiles import CARDIAC_MASKS  # noqa: E402
from CTDiffusionLib.scene import comparison, nodes, plots, sources  # noqa: E402

RAS_ORIGIN = (-ORIGIN[0], -ORIGIN[1], ORIGIN[2])  # LPS file origin -> RAS node origin


def _close(a, b, tol=1e-4):
    return all(abs(x - y) < tol for x, y in zip(a, b))


def test_boot_registers_module_logics(core_app):
    from CTDiffusionLib.scene import core

    for name in ("Colors", "Volumes", "Segmentations", "SubjectHierarchy", "Sequences", "Tables", "Plots"):
        assert core.module_logic(name) is not None
    assert slicer.mrmlScene is core_app.scene
    assert core_app.scene.GetFirstNodeByClass("vtkMRMLLayoutNode") is not None
    assert core.get_scene() is core_app.scene


def test_import_generated_ct_as_scalar_volumes(core_app, tmp_path):
    scene = core_app.scene
    real = nodes.load_ct_volume(write_ct(tmp_path / "real" / "case01.nii.gz"))
    sh = nodes.subject_hierarchy(scene)
    study = sh.CreateStudyItem(sh.CreateSubjectItem(sh.GetSceneItemID(), "patient"), "study")
    nodes.place_in(real, study)

    gen = write_generated(tmp_path / "gen", "prostate-ct", n=3)
    result = nodes.import_generated(gen, beside=real)
    assert [n.GetName() for n in result] == ["synthetic_0001", "synthetic_0002", "synthetic_0003"]
    for node in result:
        assert node.GetClassName() == "vtkMRMLScalarVolumeNode"
        assert _close(node.GetSpacing(), SPACING) and _close(node.GetOrigin(), RAS_ORIGIN)
        arr = slicer.util.arrayFromVolume(node)
        assert arr.shape == (6, 20, 24) and arr.min() == -1000  # HU kept
        d = node.GetDisplayNode()
        assert not d.GetAutoWindowLevel() and (d.GetWindow(), d.GetLevel()) == (400.0, 40.0)
        assert node.GetAttribute("CTDiffusion.synthetic") == "1" and node.GetAttribute("CTDiffusion.sampler") == "ddim"
    folder = sh.GetItemParent(sh.GetItemByDataNode(result[0]))
    assert sh.GetItemName(folder) == "CTDiffusion synthetic" and sh.GetItemParent(folder) == study
    assert nodes.synthetic_nodes(scene, folder) == result == nodes.synthetic_nodes(scene)
    # a second import reuses the folder
    again = nodes.import_generated(gen, beside=real)
    assert sh.GetItemParent(sh.GetItemByDataNode(again[0])) == folder


def test_import_generated_masks_as_segmentations(core_app, tmp_path):
    gen = write_generated(tmp_path / "gen", "cardiac-masks", n=2)
    # a 2D-slice sample with MYO missing
    write_mask(gen / "synthetic_0002.nii.gz", size=(24, 20, 1), labels=(1, 0, 3))
    result = nodes.import_generated(gen)
    assert len(result) == 2
    for node in result:
        assert node.GetClassName() == "vtkMRMLSegmentationNode"
        seg = node.GetSegmentation()
        names = {seg.GetSegment(seg.GetNthSegmentID(i)).GetName(): seg.GetSegment(seg.GetNthSegmentID(i)).GetColor()
                 for i in range(seg.GetNumberOfSegments())}
        assert set(names) == {"RV", "MYO", "LV"}
        for name, color in ((c.name, c.color) for c in CARDIAC_MASKS.foreground_classes):
            assert _close(names[name], color)
    # no leftover label map nodes
    assert core_app.scene.GetNodesByClass("vtkMRMLLabelMapVolumeNode").GetNumberOfItems() == 0
    # geometry and labels round-trip through export (RV=1, MYO=2, LV=3 kept even when a label is missing)
    manifest = nodes.export_nodes(result, tmp_path / "export", "cardiac-masks")
    import SimpleITK as sitk

    img = sitk.ReadImage(str(tmp_path / "export" / manifest["cases"][1]["file"]))
    assert set(np.unique(sitk.GetArrayFromImage(img))) == {0, 1, 3}
    assert _close(img.GetSpacing(), SPACING) and _close(img.GetOrigin(), ORIGIN)
    img = sitk.ReadImage(str(tmp_path / "export" / manifest["cases"][0]["file"]))
    assert set(np.unique(sitk.GetArrayFromImage(img))) == {0, 1, 2, 3}


def test_export_ct_nodes_keeps_geometry(core_app, tmp_path):
    import SimpleITK as sitk

    a = nodes.load_ct_volume(write_ct(tmp_path / "in" / "a.nii.gz"), name="Patient 1: CT")
    b = nodes.load_ct_volume(write_ct(tmp_path / "in" / "b.nii.gz", seed=3))
    b.SetName("Patient 1: CT")
    manifest = nodes.export_nodes([a, b], tmp_path / "run" / "data", "prostate-ct")
    files = [c["file"] for c in manifest["cases"]]
    assert files == ["Patient_1_CT.nii.gz", "Patient_1_CT_2.nii.gz"]
    assert json.loads((tmp_path / "run" / "data" / "manifest.json").read_text(encoding="utf-8"))["profile"] == "prostate-ct"
    original = sitk.ReadImage(str(tmp_path / "in" / "a.nii.gz"))
    exported = sitk.ReadImage(str(tmp_path / "run" / "data" / files[0]))
    assert _close(exported.GetOrigin(), original.GetOrigin()) and _close(exported.GetSpacing(), original.GetSpacing())
    assert _close(exported.GetDirection(), original.GetDirection())
    assert (sitk.GetArrayFromImage(exported) == sitk.GetArrayFromImage(original)).all()


def test_comparison_layout_ct(core_app, tmp_path):
    scene = core_app.scene
    real = nodes.load_ct_volume(write_ct(tmp_path / "r.nii.gz"))
    real.GetDisplayNode().SetWindowLevel(350, 50)
    synth = nodes.import_generated(write_generated(tmp_path / "gen", "prostate-ct", n=2), beside=real)
    comp = comparison.setup_comparison(real, synth[0])
    layout = scene.GetSingletonNode("vtkMRMLLayoutNode", "vtkMRMLLayoutNode")
    assert layout is comp.layout and layout.GetViewArrangement() == comparison.LAYOUT_ID
    desc = layout.GetCurrentLayoutDescription()
    assert 'singletontag="Red"' in desc and 'singletontag="Yellow"' in desc and "vtkMRMLPlotViewNode" in desc
    red, yellow = (comparison.slice_composite_node(scene, n) for n in ("Red", "Yellow"))
    assert red.GetBackgroundVolumeID() == real.GetID() and yellow.GetBackgroundVolumeID() == synth[0].GetID()
    assert red.GetLinkedControl() and yellow.GetLinkedControl()
    assert comparison.slice_node(scene, "Yellow").GetOrientation() == "Axial"
    assert comparison.slice_node(scene, "Red").GetViewGroup() == comparison.slice_node(scene, "Yellow").GetViewGroup()
    d = synth[0].GetDisplayNode()
    assert (d.GetWindow(), d.GetLevel()) == (350, 50)
    # composite nodes were made by slice logics (as views do), not duplicated
    assert scene.GetNodesByClass("vtkMRMLSliceCompositeNode").GetNumberOfItems() == 3
    # browse: the next sample goes into the synthetic view, same window/level
    comparison.show_sample(synth[1])
    assert yellow.GetBackgroundVolumeID() == synth[1].GetID()
    assert (synth[1].GetDisplayNode().GetWindow(), synth[1].GetDisplayNode().GetLevel()) == (350, 50)
    assert comparison.displayed_in(scene, "Red") is real


def test_comparison_layout_masks(core_app, tmp_path):
    scene = core_app.scene
    real = nodes.load_mask_segmentation(write_mask(tmp_path / "real_gt.nii.gz"))
    synth = nodes.import_generated(write_generated(tmp_path / "gen", "cardiac-masks", n=2))
    comparison.setup_comparison(real, synth[0])
    red_view, yellow_view = comparison.slice_node(scene, "Red"), comparison.slice_node(scene, "Yellow")
    assert real.GetDisplayNode().IsDisplayableInView(red_view.GetID())
    assert not real.GetDisplayNode().IsDisplayableInView(yellow_view.GetID())
    assert synth[0].GetDisplayNode().IsDisplayableInView(yellow_view.GetID())
    assert not synth[0].GetDisplayNode().IsDisplayableInView(red_view.GetID())
    assert comparison.displayed_in(scene, "Yellow") is synth[0]
    comparison.show_sample(synth[1])
    assert comparison.displayed_in(scene, "Yellow") is synth[1]
    assert not synth[0].GetDisplayNode().GetVisibility()


def test_loss_curve_table_and_chart(core_app):
    scene = core_app.scene
    curve = plots.LossCurve(scene)
    events = [{"event": "start"},
              {"event": "progress", "phase": "train", "step": 1, "total": 4, "loss": 0.9},
              {"event": "progress", "phase": "train", "step": 2, "total": 4, "loss": 0.7},
              {"event": "progress", "phase": "validate", "step": 2, "total": 4, "val_loss": 0.8},
              {"event": "progress", "phase": "sampling", "step": 1, "total": 10},
              {"event": "checkpoint", "path": "x", "step": 2}]
    assert curve.add_events(events) == 3
    assert curve.column("step") == [1.0, 2.0, 2.0] and curve.column("loss")[:2] == [0.9, 0.7]
    assert np.isnan(curve.column("loss")[2]) and curve.column("val_loss")[2] == 0.8
    assert curve.chart.GetNumberOfPlotSeriesNodes() == 2
    series = curve.chart.GetNthPlotSeriesNode(0)
    assert series.GetTableNode() is curve.table and series.GetYColumnName() == "loss"
    comparison.show_comparison_layout(scene)
    comparison.show_chart(curve.chart, scene)
    assert comparison.plot_view_node(scene).GetPlotChartNodeID() == curve.chart.GetID()
    # a new run's curve reuses the nodes and is cleared (the module's lossCurve(reset=True)); a resumed run's
    # curve keeps the rows (test_scene_views.py)
    again = plots.LossCurve(scene)
    again.clear()
    assert again.rows() == 0


METRICS = {
    "profile": "prostate-ct", "feature_network": "self-trained",
    "summary": {"fid": {"generated": 12.5, "real_floor": 3.25, "better": "lower", "description": "Frechet distance"},
                "ms_ssim": {"generated": 0.41, "real_floor": None, "better": "lower", "description": "diversity"}},
    "per_sample": [{"name": "synthetic_0001", "nearest_train": "case01", "nearest_similarity": 0.99, "memorised": True},
                   {"name": "synthetic_0002", "nearest_train": "case02", "nearest_similarity": 0.5, "memorised": False}],
    "memorisation": {"threshold": 0.95, "similarity": "ncc", "flagged": ["synthetic_0001"]},
    "figures": ["histograms.png"],
    "per_condition": {"group=DCM": {"fid": {"generated": 20.0, "real_floor": None, "better": "lower"}}},
}


def test_metrics_tables_flag_memorised(core_app, tmp_path):
    (tmp_path / "report").mkdir()
    (tmp_path / "report" / "metrics.json").write_text(json.dumps(METRICS))
    summary, samples = plots.metrics_tables(tmp_path / "report")
    rows = plots.table_rows(summary)  # an older report: no verdicts, a floor instead of an interval
    assert rows[0] == ["", "fid", "12.5", "3.25 \u2193", "Frechet distance"]
    assert rows[1][:4] == ["", "ms_ssim", "0.41", ""] and rows[2][1] == "fid [group=DCM]"
    assert plots.memorised_samples(samples) == ["synthetic_0001"]
    assert plots.table_rows(samples)[1] == ["synthetic_0002", "case02", "0.5", ""]
    comparison.show_table(summary)
    assert comparison.table_view_node().GetTableNodeID() == summary.GetID()


def test_histogram_chart_ct_and_masks(core_app, tmp_path):
    real = [nodes.load_ct_volume(write_ct(tmp_path / "r.nii.gz"))]
    gen = nodes.import_generated(write_generated(tmp_path / "g", "prostate-ct", n=2))
    chart, table = plots.histogram_chart(real, gen)
    assert chart.GetNumberOfPlotSeriesNodes() == 2 and table.GetTable().GetNumberOfRows() == 64
    r = [table.GetTable().GetValue(i, 1).ToDouble() for i in range(64)]
    assert abs(sum(r) - 1.0) < 1e-6
    masks_real = [nodes.load_mask_segmentation(write_mask(tmp_path / "m.nii.gz"))]
    masks_gen = nodes.import_generated(write_generated(tmp_path / "gm", "cardiac-masks", n=1))
    chart, table = plots.histogram_chart(masks_real, masks_gen)
    assert table.GetTable().GetNumberOfRows() == 3 and table.GetTable().GetColumnName(0) == "label"


def test_data_summary_nodes_and_folder(core_app, tmp_path):
    a = nodes.load_ct_volume(write_ct(tmp_path / "d" / "a.nii.gz"))
    b = nodes.load_ct_volume(write_ct(tmp_path / "d" / "b.nii.gz", size=(24, 20, 8)))
    s = sources.summarize_nodes([a, b], "prostate-ct")
    assert s.cases == 2 and s.ok
    assert s.text().startswith("2 cases, sizes 24x20x6 (+1 other), spacing 0.8x0.7x2.5 mm.")
    bad = sources.summarize_nodes([a], "cardiac-masks")
    assert bad.cases == 0 and "not a segmentation" in bad.text()
    f = sources.summarize_folder(tmp_path / "d", "prostate-ct")
    assert f.cases == 2 and f.ok and "2 cases" in f.text()
    assert "does not exist" in sources.summarize_folder(tmp_path / "nope", "prostate-ct").text()
    # ACDC layout: patient folders with *_gt files and Info.cfg
    write_mask(tmp_path / "acdc" / "patient001" / "patient001_frame01_gt.nii.gz")
    write_mask(tmp_path / "acdc" / "patient001" / "patient001_frame01.nii.gz")
    (tmp_path / "acdc" / "patient001" / "Info.cfg").write_text("ED: 1\nES: 12\nGroup: DCM\n")
    m = sources.summarize_folder(tmp_path / "acdc", "cardiac-masks")
    assert m.cases == 1 and m.ok
    seg = nodes.load_mask_segmentation(write_mask(tmp_path / "x_gt.nii.gz"))
    assert sources.summarize_nodes([seg], "cardiac-masks").ok


def test_scene_code_has_no_qt_or_torch_imports():
    """The scene package imports slicer (MRML/util) only: no qt, ctk, slicer.app use at import, no torch."""
    import ast

    root = Path(__file__).resolve().parents[1] / "CTDiffusionLib" / "scene"
    for path in root.glob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            for name in names:
                top = name.split(".")[0]
                assert top not in ("qt", "ctk", "PythonQt", "PySide6", "torch", "monai", "diffusers"), (path, name)


def test_generated_names_stay_unique_and_no_temporary_labelmap(core_app, tmp_path):
    """Two generations import as synthetic_0001 and synthetic_0001_1; loading masks never adds a labelmap node
    to the scene (a temporary node would flicker in the module's node combos)."""
    from slicer_fixtures import write_generated

    added = []
    scene = core_app.scene
    scene.AddObserver(scene.NodeAddedEvent, lambda caller, event: added.append(caller.GetNthNode(
        caller.GetNumberOfNodes() - 1).GetClassName()))
    first = nodes.import_generated(write_generated(tmp_path / "g1", "cardiac-masks", n=1), profile="cardiac-masks")
    second = nodes.import_generated(write_generated(tmp_path / "g2", "cardiac-masks", n=1), profile="cardiac-masks")
    assert [n.GetName() for n in first + second] == ["synthetic_0001", "synthetic_0001_1"]
    assert "vtkMRMLLabelMapVolumeNode" not in added and scene.GetNumberOfNodesByClass("vtkMRMLLabelMapVolumeNode") == 0
    ct = nodes.import_generated(write_generated(tmp_path / "g3", "prostate-ct", n=1), profile="prostate-ct")
    assert ct[0].GetName() == "synthetic_0001_2"


def test_source_combo_lists_no_labelmap_as_ct():
    from CTDiffusionLib.scene.sources import source_node_types

    assert source_node_types("prostate-ct") == (["vtkMRMLScalarVolumeNode"], ["vtkMRMLLabelMapVolumeNode"])
    types, hidden = source_node_types("cardiac-masks")
    assert "vtkMRMLLabelMapVolumeNode" in types and hidden == []


def test_temporary_labelmaps_are_hidden_from_node_combos(core_app, tmp_path):
    """Exporting a segmentation needs a labelmap in the scene for a moment: it is hidden from editors (node combos)
    before it is added, and removed afterwards."""
    seg = nodes.load_mask_segmentation(write_mask(tmp_path / "m.nii.gz"))
    shown = []

    def on_added(caller, event, calldata):
        shown.append((calldata.GetClassName(), calldata.GetHideFromEditors()))

    import vtk

    on_added.CallDataType = vtk.VTK_OBJECT
    core_app.scene.AddObserver(core_app.scene.NodeAddedEvent, on_added)
    manifest = nodes.export_nodes([seg], tmp_path / "out", "cardiac-masks")
    plots.histogram_chart([seg], [seg], profile="cardiac-masks")
    labelmaps = [hidden for cls, hidden in shown if cls == "vtkMRMLLabelMapVolumeNode"]
    assert labelmaps and all(labelmaps)
    assert core_app.scene.GetNumberOfNodesByClass("vtkMRMLLabelMapVolumeNode") == 0
    import SimpleITK as sitk

    labels = np.unique(sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "out" / manifest["cases"][0]["file"]))))
    assert list(labels) == [0, 1, 2, 3]
