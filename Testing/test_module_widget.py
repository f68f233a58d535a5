"""The module's real widget class (CTDiffusion/CTDiffusion.py) built and driven through its buttons, under the
PySide6 + slicer-core adapter (Testing/slicer_qt_adapter.py): Qt's own combo box, dialog and signal semantics."""

from __future__ import annotations

import unittest
from pathlib import Path

import pytest

pytest.importorskip("PySide6.QtUiTools")
from slicer_fixtures import core_app, write_ct  # noqa: E402,F401

import slicer_qt_adapter as adapter  # noqa: E402


class StartedJobs(list):
    """Stands in for JobRunner.from_command: records each command instead of starting a child process."""

    def __call__(self, command, **kwargs):
        self.append(command)
        return _NotStarted()


class _NotStarted:
    is_running = False

    def start(self):
        return self


@pytest.fixture(params=[(5, 10)], ids=lambda v: f"{v[0]}.{v[1]}")
def slicer_version(request):
    return request.param


@pytest.fixture
def widget(core_app, monkeypatch, tmp_path, slicer_version):  # noqa: F811
    app, dialogs = adapter.install(monkeypatch, tmp_path, version=slicer_version)
    module = adapter.import_module(monkeypatch)
    from CTDiffusionLib.jobs import runner

    jobs = StartedJobs()
    monkeypatch.setattr(runner.JobRunner, "from_command", jobs)
    w = module.CTDiffusionWidget()
    w.setup()
    w.test_jobs, w.test_dialogs, w.test_app, w.test_module = jobs, dialogs, app, module
    yield w
    w.cleanup()


def _data_folder(tmp_path):
    for i in range(2):
        write_ct(tmp_path / "data" / f"case{i}.nii.gz", seed=i)
    return str(tmp_path / "data")


def _argument(argv, flag):
    return argv[argv.index(flag) + 1]


def test_widget_builds_and_binds_its_parameter_node(widget):
    p = widget._parameterNode
    assert widget._parameterNodeGuiTag is not None
    assert widget.ui.presetComboBox.currentData == p.preset
    assert widget.ui.lengthSpinBox.value == p.length
    widget.ui.lengthSpinBox.value = 123  # the bound spin box writes the parameter node
    assert p.length == 123


def test_chosen_device_is_what_the_training_command_sends(widget, tmp_path):
    """Item 1: refilling the device combo (clear + addItem emit currentIndexChanged) must not write 'auto'."""
    ui = widget.ui
    ui.sourceFolderRadioButton.checked = True
    ui.sourceFolderPathLineEdit.currentPath = _data_folder(tmp_path)
    ui.deviceComboBox.setCurrentIndex(ui.deviceComboBox.findData("cpu"))
    assert widget._parameterNode.device == "cpu"
    ui.trainButton.click()
    assert len(widget.test_jobs) == 1, widget.test_dialogs.shown
    assert _argument(widget.test_jobs[0].argv, "--device") == "cpu"
    assert ui.deviceComboBox.currentData == "cpu" and widget._parameterNode.device == "cpu"


def _resumable_run(folder, name, data):
    import json

    run = folder / name
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"profile": "prostate-ct", "data": {"sources": [data]}}))
    from CTDiffusionLib.runfolder import checkpoint_name

    (run / "checkpoints" / checkpoint_name(4)).write_bytes(b"weights")
    return run


def _answer_next_dialog(answer):
    """Qt runs the dialog's own event loop (exec); this acts on it from inside that loop, as a user would."""
    from PySide6 import QtCore, QtWidgets

    def act():
        dialog = QtWidgets.QApplication.activeModalWidget()
        assert isinstance(dialog, QtWidgets.QInputDialog), dialog
        answer(dialog)

    QtCore.QTimer.singleShot(0, act)


def test_cancelling_the_resume_dialog_starts_nothing(widget, tmp_path):
    """Item 2: QInputDialog returns the current item when rejected; Cancel must not resume the first run."""
    data = _data_folder(tmp_path)
    runs = tmp_path / "runs"
    _resumable_run(runs, "run-a", data)
    _resumable_run(runs, "run-b", data)
    widget.ui.runFolderPathLineEdit.currentPath = str(runs)
    assert widget.ui.resumeButton.enabled
    _answer_next_dialog(lambda dialog: dialog.reject())
    widget.ui.resumeButton.click()
    assert widget.test_jobs == []
    # accepting a run resumes that one
    _answer_next_dialog(lambda dialog: (dialog.setTextValue("run-b"), dialog.accept()))
    widget.ui.resumeButton.click()
    assert len(widget.test_jobs) == 1, widget.test_dialogs.shown
    argv = widget.test_jobs[0].argv
    assert "--resume" in argv and _argument(argv, "--out") == str(runs / "run-b")


def test_reload_and_test_never_raises_skip_without_the_engine(widget, monkeypatch, caplog):
    """Item 3: Reload and Test / SelfTests call runTest() directly (no unittest runner): a missing engine is
    logged and the test returns; the parts that need no engine (building the panel) still run."""
    from CTDiffusionLib.jobs import dependencies

    missing = dependencies.DependencyStatus(torch_installed=False)
    monkeypatch.setattr(dependencies, "check", lambda *a, **k: missing)
    built = []
    representation = widget.test_module.slicer.modules.ctdiffusion
    original = representation.createNewWidgetRepresentation
    monkeypatch.setattr(representation, "createNewWidgetRepresentation", lambda: built.append(1) or original())
    test = widget.test_module.CTDiffusionTest()
    with caplog.at_level("INFO"):
        try:
            test.runTest()
        except unittest.SkipTest as skip:  # pytest would count it as a skip; Slicer shows an error dialog
            pytest.fail(f"runTest() raised SkipTest: {skip}")
    assert built == [1]
    assert "PyTorch" in caplog.text and "not installed" in caplog.text


@pytest.mark.parametrize("slicer_version", [(5, 10), (5, 12)], ids=["5.10", "5.12"], indirect=True)
def test_install_packages_one_confirmation_one_path_slicer_packages_pinned(widget, monkeypatch, slicer_version):
    """Item 4: Install asks once, then installs by this version's path (5.10 slicer.util.pip_install, 5.12
    slicer.packaging.pip_ensure without its own prompts), with a constraints file pinning Slicer's torch/numpy."""
    from CTDiffusionLib.jobs import dependencies

    missing = dependencies.DependencyStatus(torch_installed=True, torch_version="2.13.0",
                                            missing=dependencies.parse_requirements("monai>=1.4\ndiffusers>=0.30"))
    dialogs = widget.test_dialogs
    installed = dependencies.DependencyStatus(torch_installed=True, torch_version="2.13.0")
    monkeypatch.setattr(dependencies, "check", lambda *a, **k: installed if dialogs.pip else missing)
    widget.updateDependencyStatus()  # as when the panel opens
    assert widget.ui.installDependenciesButton.enabled
    widget.ui.installDependenciesButton.click()
    assert len(dialogs.texts("confirmOkCancelDisplay")) == 1 and not dialogs.texts("confirmYesNoDisplay")
    assert not dialogs.texts("errorDisplay"), dialogs.shown
    [(function, requirements, options)] = dialogs.pip
    if slicer_version >= (5, 12):
        assert function == "pip_ensure" and list(requirements) == ["monai>=1.4", "diffusers>=0.30"]
        assert (options["prompt_install"], options["prompt_restart"]) == (False, False)
        constraints = options["constraints"]
    else:
        assert function == "pip_install" and requirements[0] == "-c"
        assert requirements[2:] == ["monai>=1.4", "diffusers>=0.30"]
        constraints = requirements[1]
    pins = open(constraints, encoding="utf-8").read().splitlines()
    for name in ("torch", "numpy"):  # what this environment has installed stays as it is
        assert f"{name}=={dependencies.installed_version(name)}" in pins


def test_module_category_uses_the_core_module_translation_context(widget):
    """Item 7: categories are translated in qSlicerAbstractCoreModule's context, as Slicer's module template does
    (Utilities/Templates/Modules/Scripted/TemplateKey.py at v5.8.1, v5.10.0, v5.12.3)."""
    import types

    parent = types.SimpleNamespace()
    widget.test_module.CTDiffusion(parent)
    assert parent.categories == ["Image Synthesis"]
    assert ("qSlicerAbstractCoreModule", "Image Synthesis") in widget.test_dialogs.translations


def test_quality_table_in_the_panel_shows_verdicts(widget, tmp_path):
    """Item 8: after an evaluation the panel's metrics table holds each metric's verdict and interval."""
    import json

    from test_scene_views import REPORT

    report = tmp_path / "report"
    report.mkdir()
    (report / "metrics.json").write_text(json.dumps(REPORT))
    widget.onEvaluationCompleted(report)
    from CTDiffusionLib.scene.plots import table_rows

    rows = table_rows(widget.ui.metricsTableView.mrmlTableNode())
    assert [row[0] for row in rows] == ["FAIL", "ok"] and rows[0][3] == "12.35 .. 67.89 (fail above)"


def test_one_click_shows_the_flagged_near_copy_beside_its_training_case(widget, tmp_path):
    """Item 9: after an evaluation that flags a near-copy, the button shows it beside the training case."""
    import json

    from test_scene_views import _privacy_case

    from CTDiffusionLib.scene import comparison

    train, generated, report = _privacy_case(tmp_path)
    run = tmp_path / "runs" / "run-a"
    run.mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"profile": "prostate-ct", "data": {"sources": [str(train)]}}))
    p = widget._parameterNode
    p.sourceMode, p.sourceFolder = "folder", str(train)
    p.lastRunFolder, p.lastGeneratedFolder = str(run), str(generated)
    assert not widget.ui.showNearCopyButton.enabled
    widget.ui.evaluateButton.click()
    [command] = widget.test_jobs
    out = command.argv[command.argv.index("--out") + 1]
    Path(out).mkdir(parents=True, exist_ok=True)
    (Path(out) / "metrics.json").write_text(json.dumps(report))
    widget.onEvaluationCompleted(out)
    assert widget.ui.showNearCopyButton.enabled
    widget.ui.showNearCopyButton.click()
    import slicer

    assert comparison.displayed_in(slicer.mrmlScene, comparison.REAL_VIEW).GetName().startswith("case1")
    assert comparison.displayed_in(slicer.mrmlScene, comparison.SYNTHETIC_VIEW).GetName().startswith("synthetic_0002")
    assert "0.9731" in widget.ui.qualityStatusLabel.text and "0.9697" in widget.ui.qualityStatusLabel.text
