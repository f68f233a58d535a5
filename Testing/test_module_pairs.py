"""The module's real widget (CTDiffusion/CTDiffusion.py) under the PySide6 + slicer-core adapter, driven through its
buttons for the paired and benchmark paths: Train with CT + segmentation pairs (issue 26 item 5a), Generate CT for
this segmentation (5b), the utility benchmark's table and verdict (issue 27 item 6), and the training notices
(issue 29 item 4: the coarse-data notice before the child starts, warning events while it runs).

Jobs never start a real engine here: a recording fake stands in for JobRunner, or (for the warning events) a real
child process that prints the engine's events."""

from __future__ import annotations

import json
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("PySide6.QtUiTools")
import SimpleITK as sitk  # noqa: E402
from slicer_fixtures import core_app, phantom_pair_nodes  # noqa: E402,F401
from test_module_widget import slicer_version, widget  # noqa: E402,F401

from CTDiffusionLib.cli import build_parser  # noqa: E402
from CTDiffusionLib.data.pairs import Structure, write_nnunet_pairs  # noqa: E402
from CTDiffusionLib.data.phantoms import write_phantom_dataset  # noqa: E402

PHANTOM_SIZE = (28, 24, 6)  # far below the default preset's 256x256: the coarse-data notice applies
SEGMENTS = {1: "prostate", 2: "bladder", 3: "rectum"}  # phantom label value -> segment name


class ScriptedJob:
    """Stands in for a started JobRunner: running until the test finishes it, then succeeded; events queued."""

    def __init__(self, command):
        self.command, self.is_running, self.events = command, True, []
        self.stopped, self.succeeded, self.cancelled = False, True, False

    def start(self):
        return self

    def poll(self):
        events, self.events = self.events, []
        return events

    def take_log(self):
        return []

    def progress_fraction(self):
        return None

    def error_message(self):
        return None

    def cancel(self):
        self.cancelled = True

    def stop_in_background(self):  # the widget's cleanup at the end of a test
        self.is_running = False

    def finish(self, widget):
        self.is_running = False
        widget.onPollJob()


@pytest.fixture
def jobs(widget, monkeypatch):  # noqa: F811
    from CTDiffusionLib.jobs import runner

    started = []

    def start(command, **_kwargs):
        started.append(ScriptedJob(command))
        return started[-1]

    monkeypatch.setattr(runner.JobRunner, "from_command", start)
    return started


@pytest.fixture(scope="module")
def phantom_pairs(tmp_path_factory) -> Path:
    return write_phantom_dataset("prostate-ct", 2, tmp_path_factory.mktemp("module_pairs") / "pairs", seed=3,
                                 size_xyz=PHANTOM_SIZE, with_labels=True)


def _pair_nodes(folder: Path, index: int):
    """A CT volume node and the segmentation drawn on it (segments named SEGMENTS, the rest removed)."""
    ct, seg = phantom_pair_nodes(folder, index, SEGMENTS)
    seg.SetReferenceImageGeometryParameterFromVolumeNode(ct)  # drawn on this CT
    return ct, seg


def _argument(argv, flag):
    return argv[argv.index(flag) + 1]


def _engine_args(argv):
    """The argv after `-m CTDiffusionLib`, parsed by the engine's own parser (a wrong flag fails here)."""
    return build_parser().parse_args(argv[argv.index("CTDiffusionLib") + 1:])


def _geometry(path_or_image):
    image = sitk.ReadImage(str(path_or_image)) if not isinstance(path_or_image, sitk.Image) else path_or_image
    return (image.GetSize(), np.round(image.GetSpacing(), 4).tolist(), np.round(image.GetOrigin(), 4).tolist(),
            np.round(image.GetDirection(), 4).tolist())


def _check(combo, nodes):
    from PySide6 import QtCore

    for node in nodes:
        combo.setCheckState(node, QtCore.Qt.Checked)


def _list_items(list_widget):
    from PySide6 import QtCore

    return [(list_widget.item(i).text(), list_widget.item(i).checkState() == QtCore.Qt.Checked)
            for i in range(list_widget.count)]


def test_train_with_pairs_sends_with_labels_and_the_chosen_structures(widget, jobs, phantom_pairs):  # noqa: F811
    (ct0, seg0), (ct1, seg1) = _pair_nodes(phantom_pairs, 0), _pair_nodes(phantom_pairs, 1)
    ui = widget.ui
    _check(ui.sourceNodesComboBox, [ct0, ct1])
    ui.withLabelsCheckBox.checked = True
    assert widget._parameterNode.withLabels and ui.sourceSegmentationsComboBox.isVisibleTo(ui.dataCollapsibleButton)
    _check(ui.sourceSegmentationsComboBox, [seg1, seg0])  # ticked in the other order: paired by the CT drawn on
    assert _list_items(ui.structuresListWidget) == [("prostate", True), ("bladder", True), ("rectum", True)]
    ui.structuresListWidget.item(1).setCheckState(__import__("PySide6.QtCore").QtCore.Qt.Unchecked)  # no bladder

    ui.trainButton.click()
    assert len(jobs) == 1, widget.test_dialogs.shown
    argv = jobs[0].command.argv
    args = _engine_args(argv)
    assert args.command == "train" and args.with_labels and args.structures == "prostate,rectum"
    # the exported pairs: every segment (the choice is the run's --structures), each CT with its own segmentation
    [data] = args.data
    meta = json.loads((Path(data) / "dataset.json").read_text())
    assert meta["labels"] == {"background": 0, "prostate": 1, "bladder": 2, "rectum": 3}
    for index in (0, 1):
        phantom = sitk.GetArrayFromImage(sitk.ReadImage(str(phantom_pairs / "labelsTr" / f"prostate_{index:03d}.nii.gz")))
        exported = sitk.GetArrayFromImage(sitk.ReadImage(str(Path(data) / "labelsTr" / f"patient_{index}.nii.gz")))
        assert np.array_equal(exported, np.where(np.isin(phantom, list(SEGMENTS)), phantom, 0))


def test_train_with_pairs_without_a_ticked_structure_starts_nothing(widget, jobs, phantom_pairs):  # noqa: F811
    from PySide6 import QtCore

    ct, seg = _pair_nodes(phantom_pairs, 0)
    ui = widget.ui
    _check(ui.sourceNodesComboBox, [ct])
    ui.withLabelsCheckBox.checked = True
    _check(ui.sourceSegmentationsComboBox, [seg])
    for i in range(ui.structuresListWidget.count):
        ui.structuresListWidget.item(i).setCheckState(QtCore.Qt.Unchecked)
    ui.trainButton.click()
    assert jobs == [] and widget.test_dialogs.texts("errorDisplay") == ["Tick at least one structure to learn."]


def _paired_model(folder: Path, structures) -> Path:
    """A bundle folder whose model.json says what a paired CT model's says about its structures."""
    (folder / "model").mkdir(parents=True)
    (folder / "model" / "model.json").write_text(json.dumps({"profile": "prostate-ct", "labels": {
        "structures": [{"name": name, "value": k, "sources": [name]} for k, name in enumerate(structures, 1)],
        "conditioning": "concat"}}))
    return folder / "model"


@pytest.mark.parametrize("with_reference", [True, False], ids=["reference volume", "segmentation's own CT"])
def test_generate_ct_for_this_segmentation(widget, jobs, phantom_pairs, tmp_path, with_reference):  # noqa: F811
    import slicer

    from CTDiffusionLib.scene import comparison

    ct, seg = _pair_nodes(phantom_pairs, 1)
    model = _paired_model(tmp_path / "bundle", ["bladder", "prostate"])
    ui, p = widget.ui, widget._parameterNode
    ui.modelSourceComboBox.setCurrentIndex(ui.modelSourceComboBox.findData("bundle"))
    ui.modelPathLineEdit.currentPath = str(model)
    if with_reference:  # else: the label map on the segmentation's own geometry, shown beside the CT it was drawn on
        ui.referenceVolumeComboBox.setCurrentNode(ct)
    ui.labelsSegmentationComboBox.setCurrentNode(seg)
    assert p.referenceVolume is (ct if with_reference else None) and ui.generateFromLabelsButton.enabled
    ui.generateFromLabelsButton.click()
    assert len(jobs) == 1, widget.test_dialogs.shown
    argv = jobs[0].command.argv
    args = _engine_args(argv)
    assert args.command == "generate" and args.num is None and args.model == str(model)
    assert ui.generateFromLabelsButton.text == "Cancel"
    # the exported label map: the model's structure order, on the reference CT's grid
    labels_file = Path(args.from_labels)
    phantom = sitk.GetArrayFromImage(sitk.ReadImage(str(phantom_pairs / "labelsTr" / "prostate_001.nii.gz")))
    labels = sitk.ReadImage(str(labels_file))
    assert np.array_equal(sitk.GetArrayFromImage(labels), np.select([phantom == 2, phantom == 1], [1, 2], 0))
    assert _geometry(labels) == _geometry(phantom_pairs / "imagesTr" / "prostate_001_0000.nii.gz")

    # the engine's answer, as `generate --from-labels` writes it: the CT on the label map's grid, nnU-Net layout
    fake_ct = sitk.Cast(labels, sitk.sitkInt16) * 40 - 100
    fake_ct.CopyInformation(labels)
    write_nnunet_pairs(args.out, [(labels_file.name.split(".")[0], fake_ct, labels)],
                       [Structure("bladder", ("bladder",)), Structure("prostate", ("prostate",))])
    jobs[0].finish(widget)
    assert not widget.test_dialogs.texts("errorDisplay"), widget.test_dialogs.shown

    [volume] = widget._syntheticNodes
    assert volume.GetClassName() == "vtkMRMLScalarVolumeNode"
    assert np.array_equal(slicer.util.arrayFromVolume(volume), sitk.GetArrayFromImage(fake_ct))
    for a, b in zip(_node_geometry(volume), _node_geometry(ct)):
        assert np.allclose(a, b, atol=1e-4)
    segmentations = [n for n in slicer.util.getNodesByClass("vtkMRMLSegmentationNode") if n is not seg]
    [generated_seg] = segmentations
    names = [generated_seg.GetSegmentation().GetNthSegment(i).GetName()
             for i in range(generated_seg.GetSegmentation().GetNumberOfSegments())]
    assert names == ["bladder", "prostate"]
    assert generated_seg.GetNodeReference(generated_seg.GetReferenceImageGeometryReferenceRole()) is volume
    assert generated_seg.GetDisplayNode().GetVisibility()  # shown over its CT
    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(slicer.mrmlScene)
    assert sh.GetItemName(sh.GetItemParent(sh.GetItemByDataNode(volume))) == "CTDiffusion synthetic"
    assert comparison.displayed_in(slicer.mrmlScene, comparison.REAL_VIEW) is ct
    assert comparison.displayed_in(slicer.mrmlScene, comparison.SYNTHETIC_VIEW) is volume


def _node_geometry(node):
    import vtk

    matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    return (np.array(node.GetImageData().GetDimensions()),
            np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(3)]))


def test_generate_ct_refuses_a_model_trained_without_labels(widget, jobs, phantom_pairs, tmp_path):  # noqa: F811
    ct, seg = _pair_nodes(phantom_pairs, 0)
    (tmp_path / "plain" / "model").mkdir(parents=True)
    (tmp_path / "plain" / "model" / "model.json").write_text(json.dumps({"profile": "prostate-ct"}))
    ui = widget.ui
    ui.modelSourceComboBox.setCurrentIndex(ui.modelSourceComboBox.findData("bundle"))
    ui.modelPathLineEdit.currentPath = str(tmp_path / "plain")
    ui.labelsSegmentationComboBox.setCurrentNode(seg)
    ui.generateFromLabelsButton.click()
    assert jobs == []
    [error] = widget.test_dialogs.texts("errorDisplay")
    assert "was not trained with labels" in error


UTILITY = {
    "format": "ctdiffusion-utility/1",
    "arms": {"real": {"dice": 0.61234, "dice_ci95": [0.58, 0.64], "hd95": 7.25, "hd95_unit": "mm"},
             "synthetic": {"dice": 0.40111, "dice_ci95": [0.35, 0.45], "hd95": 12.5, "hd95_unit": "mm"},
             "real+synthetic": {"dice": 0.62, "dice_ci95": [0.59, 0.65], "hd95": 7.0, "hd95_unit": "mm"}},
    "gain": {"dice": 0.0077, "ci95": [-0.004, 0.019]},
    "verdict": "no measurable gain",
    "verdict_line": "no measurable gain: adding 4 synthetic to 4 real training cases changes the mean Dice on 2 "
                    "held-out real cases by +0.008 (95% interval -0.004 .. +0.019; 2 seeds).",
}


def test_utility_results_show_as_a_table_with_the_verdict(widget, jobs, tmp_path):  # noqa: F811
    from CTDiffusionLib.scene.plots import table_rows

    ui = widget.ui
    for lineEdit, name in ((ui.utilityTrainPathLineEdit, "train"), (ui.utilitySyntheticPathLineEdit, "synthetic"),
                           (ui.utilityTestPathLineEdit, "test")):
        lineEdit.currentPath = str(tmp_path / name)
    ui.utilitySeedsSpinBox.value = 2
    ui.utilityButton.click()
    assert len(jobs) == 1, widget.test_dialogs.shown
    args = _engine_args(jobs[0].command.argv)
    assert (args.command, args.train, args.synthetic, args.test, args.seeds) == (
        "utility", str(tmp_path / "train"), str(tmp_path / "synthetic"), str(tmp_path / "test"), 2)
    assert jobs[0].command.events_file == str(Path(args.out) / "events.jsonl")
    assert ui.utilityButton.text == "Cancel"
    ui.utilityButton.click()  # Cancel stops the job like the other jobs
    assert jobs[0].cancelled

    Path(args.out).mkdir(parents=True)
    (Path(args.out) / "utility.json").write_text(json.dumps(UTILITY))
    jobs[0].finish(widget)
    rows = table_rows(ui.utilityTableView.mrmlTableNode())
    assert rows == [["real only", "0.612", "0.580 .. 0.640", "7.2 mm"],
                    ["synthetic only", "0.401", "0.350 .. 0.450", "12.5 mm"],
                    ["real + synthetic", "0.620", "0.590 .. 0.650", "7.0 mm"]]
    table = ui.utilityTableView.mrmlTableNode().GetTable()
    assert [table.GetColumnName(i) for i in range(4)] == ["Arm", "Dice mean", "95% interval", "HD95"]
    verdict = ui.utilityVerdictLabel.text
    assert "+0.008 Dice, 95% interval -0.004 .. +0.019" in verdict and "no measurable gain" in verdict
    assert ui.utilityProgressBar.format == "done" and ui.utilityButton.text == "Run utility benchmark"
    # the bar chart: each arm's mean, its interval's ends as markers
    import slicer

    from CTDiffusionLib.scene.utility_view import UTILITY_CHART_NAME

    chart = slicer.mrmlScene.GetFirstNode(UTILITY_CHART_NAME, "vtkMRMLPlotChartNode", False, True)
    series = [chart.GetNthPlotSeriesNode(i) for i in range(chart.GetNumberOfPlotSeriesNodes())]
    assert [s.GetYColumnName() for s in series] == ["mean", "low", "high"]
    bars = series[0].GetTableNode().GetTable()
    assert [[round(bars.GetValue(r, c).ToDouble(), 3) for c in range(4)] for r in range(3)] == [
        [0, 0.612, 0.58, 0.64], [1, 0.401, 0.35, 0.45], [2, 0.62, 0.59, 0.65]]


WARNING_CHILD = textwrap.dedent(r'''
    import json, os
    def emit(kind, **kw):
        print(json.dumps({"event": kind, **kw}), flush=True)
    emit("start", pid=os.getpid(), warnings=["3 of 4 cases are in training, 1 in validation."])
    emit("warning", message="This CPU run will take about 9 hours (0.6 steps/s over the first steps).",
         hint="Use --preset demo or --minutes 30.")
    emit("progress", phase="train", step=1, total=2, loss=0.5)
    emit("done", status="completed")
''')


def test_coarse_data_notice_before_the_start_and_warning_events_reach_the_status(widget, monkeypatch,  # noqa: F811
                                                                                  phantom_pairs):
    from CTDiffusionLib.jobs import runner

    started = []

    def start(command, **kwargs):  # the real runner, with a child that prints the engine's warning events
        started.append(command)
        return runner.JobRunner([sys.executable, "-c", WARNING_CHILD], **kwargs)

    monkeypatch.setattr(runner.JobRunner, "from_command", start)
    ui, p = widget.ui, widget._parameterNode
    ui.presetComboBox.setCurrentIndex(ui.presetComboBox.findData("default"))  # 256x256x26 grid
    ui.sourceFolderRadioButton.checked = True
    ui.sourceFolderPathLineEdit.currentPath = str(phantom_pairs / "imagesTr")  # 28x24 in-plane
    assert p.preset == "default"
    notice = ui.trainingNoticeLabel.text
    assert "much coarser than the training grid" in notice and "28x24" in notice  # shown before any start
    ui.presetComboBox.setCurrentIndex(ui.presetComboBox.findData("tiny"))  # 32x32: no notice
    assert ui.trainingNoticeLabel.text == ""
    ui.presetComboBox.setCurrentIndex(ui.presetComboBox.findData("default"))

    ui.trainButton.click()
    assert len(started) == 1, widget.test_dialogs.shown
    status = widget.test_dialogs.texts("status")
    assert any("much coarser than the training grid" in text for text in status)  # before the child's events
    deadline = time.time() + 60
    while widget._job is not None and time.time() < deadline:
        widget.onPollJob()
        time.sleep(0.05)
    assert widget._job is None
    warning = ("This CPU run will take about 9 hours (0.6 steps/s over the first steps). "
               "Use --preset demo or --minutes 30.")
    status = widget.test_dialogs.texts("status")
    assert any(warning in text for text in status), status
    assert any("3 of 4 cases are in training" in text for text in status)
    log = ui.logTextEdit.toPlainText()
    assert f"Warning: {warning}" in log
    assert ui.trainingNoticeLabel.text == warning


def test_generate_pairs_on_a_paired_model_imports_ct_and_named_segmentations(widget, jobs, phantom_pairs,  # noqa: F811
                                                                            tmp_path):
    import slicer

    from CTDiffusionLib.data.pairs import discover_pairs, read_pair, select_structures

    model = _paired_model(tmp_path / "bundle", ["prostate", "bladder", "rectum"])
    ui = widget.ui
    ui.modelSourceComboBox.setCurrentIndex(ui.modelSourceComboBox.findData("bundle"))
    ui.modelPathLineEdit.currentPath = str(model)
    ui.numberSpinBox.value = 2
    ui.generateButton.click()
    assert len(jobs) == 1, widget.test_dialogs.shown
    args = _engine_args(jobs[0].command.argv)
    assert args.command == "generate" and args.num == 2 and args.from_labels is None
    cases = discover_pairs(phantom_pairs)  # stand-ins for the new pairs `generate --num 2` writes
    chosen = select_structures(cases, "prostate,bladder,rectum")
    write_nnunet_pairs(args.out, [(f"pair_{k}", *read_pair(case, chosen)) for k, case in enumerate(cases)], chosen)
    jobs[0].finish(widget)
    assert not widget.test_dialogs.texts("errorDisplay"), widget.test_dialogs.shown
    assert [node.GetClassName() for node in widget._syntheticNodes] == ["vtkMRMLScalarVolumeNode"] * 2
    for volume in widget._syntheticNodes:
        [seg] = [n for n in slicer.util.getNodesByClass("vtkMRMLSegmentationNode")
                 if n.GetNodeReference(n.GetReferenceImageGeometryReferenceRole()) is volume]
        segmentation = seg.GetSegmentation()
        assert [segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments())] == \
               ["prostate", "bladder", "rectum"]
    assert widget.ui.sampleLabel.text.startswith("1 / 2")
