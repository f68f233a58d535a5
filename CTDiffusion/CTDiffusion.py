"""CTDiffusion: train 3D diffusion models on prostate CT or cardiac masks, generate synthetic volumes and compare
them with the real ones, from inside 3D Slicer.

This file is the thin GUI layer. Every decision (command lines, event reading, node import, layout, tables)
lives in CTDiffusionLib (jobs/ and scene/), which is tested outside Slicer. Heavy packages (torch, MONAI,
diffusers) are never imported here: training, generation and evaluation run in a child process.
"""

import logging
import sys
from pathlib import Path
from typing import Annotated


def _libraryFolder(moduleDir: Path):
    """The folder holding CTDiffusionLib: beside this file when installed (Slicer puts that folder on sys.path),
    or one level up in a source checkout whose CTDiffusion/ folder was added as an additional module path."""
    for folder in (moduleDir, moduleDir.parent):
        if (folder / "CTDiffusionLib" / "__init__.py").is_file():
            return folder
    return None


_LIBRARY = _libraryFolder(Path(__file__).resolve().parent)
if _LIBRARY is not None and str(_LIBRARY) not in sys.path:
    sys.path.insert(0, str(_LIBRARY))
from CTDiffusionLib.samplers import DEFAULT_GUIDANCE, DEFAULT_SAMPLER, SAMPLERS  # noqa: E402 (stdlib only)

import qt
import slicer
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

LENGTH_MODES = [("Steps", "steps"), ("Epochs", "epochs"), ("Minutes", "minutes")]  # minutes: a time budget
MODEL_SOURCES = [("This session's run", "run"), ("Model bundle on disk", "bundle")]
ANY_CONDITION = "(any)"
POLL_INTERVAL_MS = 250
SETTINGS = "CTDiffusion/"


#
# Module
#
class CTDiffusion(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("CTDiffusion")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Image Synthesis")]  # as Slicer's template
        self.parent.dependencies = []
        self.parent.contributors = ["CTDiffusion contributors"]
        self.parent.helpText = _(
            "Train a 3D diffusion model on a small set of prostate CT scans or cardiac segmentation masks (ACDC "
            "layout), generate synthetic volumes with real geometry and units, and compare them side by side with "
            "the real data. Training, generation and the quality report run in a background process; Slicer stays "
            "responsive and Stop leaves a resumable run.<br>"
            "The first use installs PyTorch (PyTorch extension) and a few Python packages after asking once.<br>"
            "See the <a href=\"https://github.com/ctdiffusion/SlicerCTDiffusion/blob/main/docs/slicer.md\">user "
            "guide</a>.")
        self.parent.acknowledgementText = _(
            "CTDiffusion builds on two student works: a master's thesis that trained a mixed 2D/3D UNet denoising "
            "diffusion probabilistic model (DDPM) on 28 prostate CT volumes, and a student report that trained a 2D "
            "DDPM with a cosine noise schedule on ACDC cardiac segmentation masks. It uses MONAI, diffusers and "
            "PyTorch.")
        slicer.app.connect("aboutToQuit()", _stopAllJobsOnQuit)


def _stopAllJobsOnQuit():
    """Closing Slicer stops every job: each writes its checkpoint (the run stays resumable) while a progress dialog
    keeps the window alive; after the runner's grace period whatever is left is killed."""
    jobs = sys.modules.get("CTDiffusionLib.jobs.runner")
    if jobs is None or not jobs.running_jobs():
        return
    dialog = slicer.util.createProgressDialog(
        labelText=_("CTDiffusion is saving a checkpoint of the running training before Slicer closes ..."),
        windowTitle=_("CTDiffusion"), maximum=0)
    try:
        jobs.stop_all_jobs(pump=slicer.app.processEvents)
    finally:
        dialog.close()


#
# Parameter node
#
@parameterNodeWrapper
class CTDiffusionParameterNode:
    profile: str = "prostate-ct"
    sourceMode: str = "nodes"  # nodes | folder
    sourceFolder: str = ""
    preset: str = ""
    lengthMode: str = "steps"
    length: Annotated[int, WithinRange(1, 10_000_000)] = 2000
    batchSize: Annotated[int, WithinRange(1, 256)] = 2
    learningRate: Annotated[float, WithinRange(1e-06, 0.1)] = 0.0001
    schedule: str = "linear"
    augment: str = "zoom,flip"
    conditioned: bool = False
    withLabels: bool = False  # train on CT + segmentation pairs (train --with-labels)
    device: str = "auto"
    runFolder: str = ""
    modelSource: str = "run"
    modelPath: str = ""
    numberOfSamples: Annotated[int, WithinRange(1, 1000)] = 4
    sampler: str = ""  # "": the model's own default sampler (jobs/panel.py)
    samplingSteps: Annotated[int, WithinRange(1, 1000)] = SAMPLERS[DEFAULT_SAMPLER["ddpm"]].steps
    seed: Annotated[int, WithinRange(0, 2**31 - 1)] = 0
    referenceVolume: slicer.vtkMRMLScalarVolumeNode
    guidanceScale: Annotated[float, WithinRange(0.0, 10.0)] = DEFAULT_GUIDANCE
    lastRunFolder: str = ""
    lastGeneratedFolder: str = ""
    lastReportFolder: str = ""


#
# Widget
#
class CTDiffusionWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._updatingGui = False
        self._job = None  # the running JobRunner
        self._jobKind = None  # "train" | "generate" | "evaluate"
        self._jobOutput = None
        self._lossCurve = None
        self._timer = None
        self._conditionCombos = {}
        self._syntheticNodes = []
        self._nearCopies = []  # the last report's near-copies (CTDiffusionLib.scene.near_copies.NearCopy)
        self._nearCopyShown = -1
        self._coarseNotice = None  # the coarse-data notice for the chosen data and preset (None: nothing to say)
        self._labelsRealNode = None  # the real CT shown beside a CT generated for a segmentation

    # ------------------------------------------------------------------------------------------- setup
    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        unsupported = _unsupportedSlicer()
        if unsupported:  # Slicer 5.6/5.8 embed Python 3.9: say so instead of failing somewhere later
            label = qt.QLabel(unsupported)
            label.wordWrap = True
            self.layout.addWidget(label)
            self.layout.addStretch(1)
            return
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/CTDiffusion.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = CTDiffusionLogic()

        from CTDiffusionLib.jobs import panel

        # the engine's own tables: what a combo shows is what the command sends
        self._fillCombo(self.ui.profileComboBox, panel.profile_choices())
        self._fillCombo(self.ui.scheduleComboBox, panel.SCHEDULES)
        self._fillCombo(self.ui.samplerComboBox, panel.sampler_choices())
        self._fillCombo(self.ui.lengthModeComboBox, LENGTH_MODES)
        self._fillCombo(self.ui.modelSourceComboBox, MODEL_SOURCES)
        self._fillDevices()

        self.ui.sourceFolderPathLineEdit.filters = ctkPathLineEditDirs()
        self.ui.runFolderPathLineEdit.filters = ctkPathLineEditDirs()
        self.ui.modelPathLineEdit.filters = ctkPathLineEditDirs()
        for lineEdit in (self.ui.utilityTrainPathLineEdit, self.ui.utilitySyntheticPathLineEdit,
                         self.ui.utilityTestPathLineEdit):
            lineEdit.filters = ctkPathLineEditDirs()

        self._timer = qt.QTimer()
        self._timer.setInterval(POLL_INTERVAL_MS)
        self._timer.connect("timeout()", self.onPollJob)

        # combos and lists that the parameter node wrapper does not map
        self.ui.profileComboBox.connect("currentIndexChanged(int)", self.onProfileChanged)
        self.ui.presetComboBox.connect("currentIndexChanged(int)", self.onPresetChanged)
        self.ui.scheduleComboBox.connect("currentIndexChanged(int)", self.updateParameterNodeFromGUI)
        self.ui.samplerComboBox.connect("currentIndexChanged(int)", self.onSamplerChanged)
        self.ui.lengthModeComboBox.connect("currentIndexChanged(int)", self.updateParameterNodeFromGUI)
        self.ui.deviceComboBox.connect("currentIndexChanged(int)", self.updateParameterNodeFromGUI)
        self.ui.modelSourceComboBox.connect("currentIndexChanged(int)", self.onModelSourceChanged)
        for checkBox in (self.ui.augmentZoomCheckBox, self.ui.augmentFlipCheckBox, self.ui.augmentRotateCheckBox,
                         self.ui.conditionsCheckBox):
            checkBox.connect("toggled(bool)", self.updateParameterNodeFromGUI)
        self.ui.sourceNodesRadioButton.connect("toggled(bool)", self.onSourceModeChanged)
        self.ui.sourceFolderRadioButton.connect("toggled(bool)", self.onSourceModeChanged)
        self.ui.sourceNodesComboBox.connect("checkedNodesChanged()", self.updateDataSummary)
        self.ui.sourceSegmentationsComboBox.connect("checkedNodesChanged()", self.updateStructureList)
        self.ui.withLabelsCheckBox.connect("toggled(bool)", self.onWithLabelsChanged)
        self.ui.sourceFolderPathLineEdit.connect("currentPathChanged(QString)", self.onSourceFolderChanged)
        self.ui.runFolderPathLineEdit.connect("currentPathChanged(QString)", self.onRunFolderChanged)
        self.ui.modelPathLineEdit.connect("currentPathChanged(QString)", self.onModelPathChanged)

        # buttons
        self.ui.installDependenciesButton.connect("clicked(bool)", self.onInstallDependencies)
        self.ui.trainButton.connect("clicked(bool)", self.onTrainButton)
        self.ui.resumeButton.connect("clicked(bool)", self.onResumeButton)
        self.ui.generateButton.connect("clicked(bool)", self.onGenerateButton)
        self.ui.evaluateButton.connect("clicked(bool)", self.onEvaluateButton)
        self.ui.sampleSlider.connect("valueChanged(int)", self.onSampleChanged)
        self.ui.openReportButton.connect("clicked(bool)", self.onOpenReport)
        self.ui.showNearCopyButton.connect("clicked(bool)", self.onShowNearCopy)
        self.ui.generateFromLabelsButton.connect("clicked(bool)", self.onGenerateFromLabelsButton)
        self.ui.utilityButton.connect("clicked(bool)", self.onUtilityButton)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndImportEvent, self.onSceneEndImport)
        self.initializeParameterNode()
        self.updateDependencyStatus()
        self._setJobButtons()

    @staticmethod
    def _fillCombo(combo, items) -> None:
        combo.clear()
        for label, value in items:
            combo.addItem(label, value)

    @staticmethod
    def _selectData(combo, value) -> None:
        index = combo.findData(value)
        if index >= 0:
            combo.setCurrentIndex(index)

    def _fillDevices(self) -> None:
        from CTDiffusionLib.jobs.commands import device_choices

        self._fillCombo(self.ui.deviceComboBox, device_choices(self.logic.cudaDeviceCount()))

    @staticmethod
    def _setting(key, default=""):
        value = qt.QSettings().value(SETTINGS + key)
        return default if value in (None, "") else value

    @staticmethod
    def _setSetting(key, value) -> None:
        qt.QSettings().setValue(SETTINGS + key, value)

    def cleanup(self) -> None:
        self.removeObservers()
        if self._timer:
            self._timer.stop()
        self._stopJobInBackground()

    def enter(self) -> None:
        if self.logic is not None:  # None: this Slicer is not supported (setup() said why)
            self.initializeParameterNode()

    def exit(self) -> None:
        if self.logic is not None:
            self.logic.restoreLayout()  # give the user's layout and view links back
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None

    def onSceneStartClose(self, caller, event) -> None:
        self._stopJobInBackground()  # the run stays resumable; its checkpoint is written while Slicer goes on
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        self._syntheticNodes = []
        self.logic.viewState = None  # that layout belonged to the closed scene
        if self.parent.isEntered:
            self.initializeParameterNode()
        self._setJobButtons()

    def onSceneEndImport(self, caller, event) -> None:
        """A loaded scene brings its synthetic nodes (tagged): the browse list is rebuilt from them."""
        self._syntheticNodes = self.logic.syntheticNodes()
        self._setJobButtons()
        self._updateSampleLabel(0)

    def initializeParameterNode(self) -> None:
        parameterNode = self.logic.getParameterNode()
        if not parameterNode.runFolder:  # a new scene starts from the user's last choices (QSettings)
            parameterNode.runFolder = str(self._setting("runsFolder", str(self.logic.defaultRunsFolder())))
            parameterNode.device = str(self._setting("device", "auto"))
        if not parameterNode.preset:  # a new parameter node shows (and sends) the profile's default preset
            self.logic.applyPreset(parameterNode, None)
        self.setParameterNode(parameterNode)

    def setParameterNode(self, inputParameterNode) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.updateGUIFromParameterNode()

    # ------------------------------------------------------------------------------ parameter node <-> GUI
    def updateGUIFromParameterNode(self) -> None:
        p = self._parameterNode
        if p is None:
            return
        self._updatingGui = True
        try:
            from CTDiffusionLib.jobs import panel

            self._selectData(self.ui.profileComboBox, p.profile)
            self._fillCombo(self.ui.presetComboBox, panel.preset_choices(p.profile))
            self._selectData(self.ui.presetComboBox, panel.preset_name(p.profile, p.preset))
            self._selectData(self.ui.scheduleComboBox, p.schedule)
            self._selectData(self.ui.samplerComboBox, p.sampler)
            self._selectData(self.ui.lengthModeComboBox, p.lengthMode)
            self._selectData(self.ui.deviceComboBox, p.device)
            self._selectData(self.ui.modelSourceComboBox, p.modelSource)
            augment = set(p.augment.split(",")) if p.augment else set()
            self.ui.augmentZoomCheckBox.checked = "zoom" in augment
            self.ui.augmentFlipCheckBox.checked = "flip" in augment
            self.ui.augmentRotateCheckBox.checked = "rotate" in augment
            from CTDiffusionLib.profiles import get_profile

            conditional = bool(get_profile(p.profile).condition_keys)
            self.ui.conditionsCheckBox.visible = conditional
            self.ui.conditionsCheckBox.checked = p.conditioned and conditional
            self.ui.sourceNodesRadioButton.checked = p.sourceMode == "nodes"
            self.ui.sourceFolderRadioButton.checked = p.sourceMode == "folder"
            self.ui.sourceNodesComboBox.visible = p.sourceMode == "nodes"
            self.ui.sourceFolderPathLineEdit.visible = p.sourceMode == "folder"
            pairs = self.logic.pairsAllowed(p.profile)  # CT + label pairs: CT profiles only
            self.ui.withLabelsCheckBox.visible = pairs
            self.ui.withLabelsCheckBox.checked = p.withLabels and pairs
            self.ui.sourceSegmentationsComboBox.visible = p.withLabels and pairs and p.sourceMode == "nodes"
            self.ui.structuresListWidget.visible = p.withLabels and pairs
            from CTDiffusionLib.scene.sources import source_node_types

            nodeTypes, hiddenTypes = source_node_types(p.profile)
            self.ui.sourceNodesComboBox.nodeTypes = nodeTypes
            self.ui.sourceNodesComboBox.hideChildNodeTypes = hiddenTypes
            self.ui.modelPathLineEdit.visible = p.modelSource == "bundle"
            for lineEdit, value in ((self.ui.runFolderPathLineEdit, p.runFolder),
                                    (self.ui.sourceFolderPathLineEdit, p.sourceFolder),
                                    (self.ui.modelPathLineEdit, p.modelPath)):
                if lineEdit.currentPath != value:
                    lineEdit.currentPath = value
            self._showLengthUnit(p.lengthMode)
        finally:
            self._updatingGui = False
        self.updateConditionWidgets()
        self.updateDataSummary()
        self._setJobButtons()

    def updateParameterNodeFromGUI(self, *_args) -> None:
        p = self._parameterNode
        if p is None or self._updatingGui:
            return
        from CTDiffusionLib.jobs import panel

        wasModified = p.StartModify()
        try:
            p.schedule = self.ui.scheduleComboBox.currentData or "linear"
            lengthMode = self.ui.lengthModeComboBox.currentData or "steps"
            p.length = panel.length_for_mode(p.profile, p.preset, lengthMode, p.lengthMode, p.length)
            p.lengthMode = lengthMode
            p.device = self.ui.deviceComboBox.currentData or "auto"
            augment = [name for name, box in (("zoom", self.ui.augmentZoomCheckBox), ("flip", self.ui.augmentFlipCheckBox),
                                              ("rotate", self.ui.augmentRotateCheckBox)) if box.checked]
            p.augment = ",".join(augment)
            p.conditioned = bool(self.ui.conditionsCheckBox.checked)
            p.withLabels = bool(self.ui.withLabelsCheckBox.checked)
        finally:
            p.EndModify(wasModified)
        self._setSetting("device", p.device)
        self._showLengthUnit(p.lengthMode)

    def _showLengthUnit(self, lengthMode: str) -> None:
        self.ui.lengthSpinBox.suffix = {"epochs": _(" epochs"), "minutes": _(" min")}.get(lengthMode, _(" steps"))

    def onProfileChanged(self, _index) -> None:
        if self._parameterNode is None or self._updatingGui:
            return
        self._parameterNode.profile = self.ui.profileComboBox.currentData
        self.logic.applyPreset(self._parameterNode, None)  # the new profile's default preset, with its values
        self.updateGUIFromParameterNode()

    def onPresetChanged(self, _index) -> None:
        if self._parameterNode is None or self._updatingGui:
            return
        self.logic.applyPreset(self._parameterNode, self.ui.presetComboBox.currentData)
        self.updateGUIFromParameterNode()

    def onSamplerChanged(self, _index) -> None:
        if self._parameterNode is None or self._updatingGui:
            return
        self.logic.applySampler(self._parameterNode, self.ui.samplerComboBox.currentData)

    def onSourceModeChanged(self, _checked) -> None:
        if self._parameterNode is None or self._updatingGui:
            return
        self._parameterNode.sourceMode = "folder" if self.ui.sourceFolderRadioButton.checked else "nodes"
        self.updateGUIFromParameterNode()

    def onSourceFolderChanged(self, path) -> None:
        if self._parameterNode is not None and not self._updatingGui:
            self._parameterNode.sourceFolder = path
            self._setSetting("lastDataFolder", path)
        self.updateDataSummary()

    def onRunFolderChanged(self, path) -> None:
        if self._parameterNode is not None and not self._updatingGui:
            self._parameterNode.runFolder = path
            self._setSetting("runsFolder", path)
            self._setJobButtons()  # Resume depends on the runs folder

    def onModelSourceChanged(self, _index) -> None:
        if self._parameterNode is None or self._updatingGui:
            return
        self._parameterNode.modelSource = self.ui.modelSourceComboBox.currentData
        self.updateGUIFromParameterNode()

    def onModelPathChanged(self, path) -> None:
        if self._parameterNode is not None and not self._updatingGui:
            self._parameterNode.modelPath = path
        self.updateConditionWidgets()

    # --------------------------------------------------------------------------------------------- data
    def selectedSourceNodes(self) -> list:
        return list(self.ui.sourceNodesComboBox.checkedNodes())

    def updateDataSummary(self, *_args) -> None:
        p = self._parameterNode
        if p is None:
            return
        from CTDiffusionLib.scene import sources

        try:
            if p.sourceMode == "folder":
                summary = sources.summarize_folder(p.sourceFolder, p.profile) if p.sourceFolder else None
            else:
                summary = sources.summarize_nodes(self.selectedSourceNodes(), p.profile)
            self.ui.dataSummaryLabel.text = summary.text() if summary else _("Choose a data folder.")
        except Exception as exc:  # a summary must never break the panel
            logging.exception("data summary failed")
            self.ui.dataSummaryLabel.text = _("Could not read the data: {error}").format(error=exc)
            summary = None
        from CTDiffusionLib.jobs.notices import coarse_data_text

        # before the child starts: what the chosen cases' sizes against the preset's grid will cost (issue 29 item 4)
        self._coarseNotice = coarse_data_text(summary.sizes if summary else [], p.profile, p.preset)
        self.ui.trainingNoticeLabel.text = self._coarseNotice or ""
        self.updateStructureList()

    def onWithLabelsChanged(self, _checked) -> None:
        if self._parameterNode is None or self._updatingGui:
            return
        self.updateParameterNodeFromGUI()
        self.updateGUIFromParameterNode()

    def selectedSegmentationNodes(self) -> list:
        return list(self.ui.sourceSegmentationsComboBox.checkedNodes())

    def updateStructureList(self, *_args) -> None:
        """The structure list: the segment names of the chosen segmentations (or of the pairs folder), each
        checkable, all checked at first; a name the user unticked stays unticked while it is listed."""
        p = self._parameterNode
        if p is None or not p.withLabels:
            return
        listWidget = self.ui.structuresListWidget
        unticked = {listWidget.item(i).text() for i in range(listWidget.count)
                    if listWidget.item(i).checkState() == qt.Qt.Unchecked}
        try:
            names = self.logic.structureNames(p, self.selectedSegmentationNodes())
        except Exception as exc:  # a folder without pairs: say so in the summary, keep the panel usable
            names = []
            self.ui.dataSummaryLabel.text = str(exc)
        listWidget.clear()
        for name in names:
            item = qt.QListWidgetItem(name)
            item.setFlags(item.flags() | qt.Qt.ItemIsUserCheckable)
            item.setCheckState(qt.Qt.Unchecked if name in unticked else qt.Qt.Checked)
            listWidget.addItem(item)

    def structureChoice(self) -> tuple[list, list]:
        """(checked names, all listed names) of the structure list."""
        listWidget = self.ui.structuresListWidget
        items = [listWidget.item(i) for i in range(listWidget.count)]
        return [i.text() for i in items if i.checkState() == qt.Qt.Checked], [i.text() for i in items]

    # ------------------------------------------------------------------------------------- dependencies
    def updateDependencyStatus(self) -> None:
        status = self.logic.dependencyStatus()
        self.ui.dependenciesStatusLabel.text = status.text()
        self.ui.installDependenciesButton.enabled = not status.ok
        self.ui.dependenciesCollapsibleButton.collapsed = status.ok

    def onInstallDependencies(self) -> None:
        self.ensureDependencies(ask=True)

    def ensureDependencies(self, ask=True) -> bool:
        try:
            ok = self.logic.ensureDependencies(ask=ask)
        except Exception as exc:
            slicer.util.errorDisplay(_("Installing Python packages failed: {error}").format(error=exc))
            ok = False
        self.updateDependencyStatus()
        if ok:  # a GPU may have become usable: refill the device list, keeping the chosen device
            self._updatingGui = True  # clear() and the first addItem() emit currentIndexChanged (-1, then 0)
            try:
                self._fillDevices()
                self._selectData(self.ui.deviceComboBox, self._parameterNode.device if self._parameterNode else "auto")
            finally:
                self._updatingGui = False
        return ok

    # ------------------------------------------------------------------------------------------------ jobs
    def _setJobButtons(self) -> None:
        running = self._job is not None and self._job.is_running
        kind = self._jobKind if running else None
        self.ui.trainButton.text = _("Stop") if kind == "train" else _("Start training")
        self.ui.trainButton.enabled = kind in (None, "train")
        self.ui.resumeButton.enabled = kind is None and bool(self._parameterNode) and bool(
            self.logic.resumableRuns(self._parameterNode))
        self.ui.generateButton.text = _("Cancel") if kind == "generate" else _("Generate")
        self.ui.generateButton.enabled = kind in (None, "generate") and bool(self._modelPath())
        self.ui.evaluateButton.text = _("Cancel") if kind == "evaluate" else _("Evaluate")
        self.ui.evaluateButton.enabled = kind in (None, "evaluate")
        self.ui.generateFromLabelsButton.text = _("Cancel") if kind == "labels" else _("Generate CT for this segmentation")
        self.ui.generateFromLabelsButton.enabled = kind in (None, "labels") and bool(self._modelPath())
        self.ui.utilityButton.text = _("Cancel") if kind == "utility" else _("Run utility benchmark")
        self.ui.utilityButton.enabled = kind in (None, "utility")
        count = len(self._syntheticNodes)
        self.ui.sampleSlider.enabled = count > 1
        self.ui.sampleSlider.maximum = max(0, count - 1)
        self.ui.openReportButton.enabled = bool(self._parameterNode and self._parameterNode.lastReportFolder)

    def _modelPath(self) -> str:
        p = self._parameterNode
        if p is None:
            return ""
        return p.modelPath if p.modelSource == "bundle" else p.lastRunFolder

    def _startJob(self, kind, command, output) -> None:
        from CTDiffusionLib.jobs.runner import JobRunner

        self._job = JobRunner.from_command(command).start()
        self._jobKind, self._jobOutput = kind, output
        progressBar = self._progressBar(kind)
        progressBar.setValue(0)
        progressBar.setFormat(_("starting ..."))
        self._appendLog(f"$ {' '.join(command.argv)}")
        logging.info("CTDiffusion: %s", " ".join(command.argv))
        slicer.util.showStatusMessage(_("CTDiffusion: {kind} started").format(kind=kind), 5000)
        self._timer.start()
        self._setJobButtons()

    def _progressBar(self, kind):
        """The progress bar of a job kind ("labels": Generate CT for this segmentation, in the Generation section)."""
        return {"train": self.ui.trainProgressBar, "generate": self.ui.generateProgressBar,
                "labels": self.ui.generateProgressBar, "evaluate": self.ui.evaluateProgressBar,
                "utility": self.ui.utilityProgressBar}[kind]

    def _stopJob(self) -> None:
        if self._job is not None and self._job.is_running:
            self._appendLog(_("Stopping (a checkpoint is written first) ..."))
            slicer.util.showStatusMessage(_("CTDiffusion: stopping, a checkpoint is written first ..."), 5000)
            self._job.cancel()

    def _stopJobInBackground(self) -> None:
        """Scene close / module cleanup: the job stops (and saves) on a thread; the panel lets go of it."""
        job, self._job, self._jobKind = self._job, None, None
        if self._timer:
            self._timer.stop()
        if job is not None and job.is_running:
            logging.info("CTDiffusion: stopping the running job in the background (it writes a checkpoint first)")
            job.stop_in_background()

    def _appendLog(self, text) -> None:
        self.ui.logTextEdit.appendPlainText(text)

    def onPollJob(self) -> None:
        job = self._job
        if job is None:
            self._timer.stop()
            return
        events = job.poll()
        for line in job.take_log():
            self._appendLog(line)
            logging.info("CTDiffusion %s: %s", self._jobKind, line)  # the child's log in Slicer's log
        for event in events:
            self.onJobEvent(event)
        if not job.is_running:
            self._timer.stop()
            self.onJobFinished()

    def onJobEvent(self, event) -> None:
        from CTDiffusionLib.jobs.runner import describe_progress

        kind = event.get("event")
        progressBar = self._progressBar(self._jobKind)
        if kind == "progress":
            fraction = self._job.progress_fraction()
            if fraction is not None:
                progressBar.setValue(int(round(100 * fraction)))
            progressBar.setFormat(describe_progress(event) or "%p%")
            if self._jobKind == "train" and self._lossCurve is not None:
                self._lossCurve.add(event)
        elif kind == "checkpoint":
            self._appendLog(_("Checkpoint at step {step}: {path}").format(step=event.get("step"), path=event.get("path")))
        elif kind == "error":
            self._appendLog(_("Error: {message}").format(message=event.get("message")))
        from CTDiffusionLib.jobs.notices import warning_texts

        for text in warning_texts(event):  # e.g. a CPU run that will take hours: the user sees it at once
            self._appendLog(_("Warning: {text}").format(text=text))
            slicer.util.showStatusMessage(_("CTDiffusion: {text}").format(text=text), 15000)
            if self._jobKind == "train":
                self.ui.trainingNoticeLabel.text = text

    def onJobFinished(self) -> None:
        job, kind, output = self._job, self._jobKind, self._jobOutput
        progressBar = self._progressBar(kind)
        self._job = None
        self._jobKind = None
        slicer.util.showStatusMessage(_("CTDiffusion: {kind} {result}").format(
            kind=kind, result=_("stopped") if job.stopped else _("finished") if job.succeeded else _("failed")), 5000)
        if job.stopped:
            progressBar.setFormat(_("stopped"))
            if kind == "train":
                self._appendLog(_("Training stopped; Resume continues from the last checkpoint."))
        elif not job.succeeded:
            progressBar.setFormat(_("failed"))
            slicer.util.errorDisplay(job.error_message() or _("The job failed."), windowTitle=_("CTDiffusion"))
        else:
            progressBar.setValue(100)
            progressBar.setFormat(_("done"))
            try:
                if kind == "train":
                    self.onTrainingCompleted(output)
                elif kind == "generate":
                    self.onGenerationCompleted(output)
                elif kind == "evaluate":
                    self.onEvaluationCompleted(output)
                elif kind == "labels":
                    self.onLabelsGenerationCompleted(output)
                elif kind == "utility":
                    self.onUtilityCompleted(output)
            except Exception as exc:
                logging.exception("loading results failed")
                slicer.util.errorDisplay(_("Loading the results failed: {error}").format(error=exc))
        self._setJobButtons()

    # -------------------------------------------------------------------------------------------- training
    def onTrainButton(self) -> None:
        if self._jobKind == "train":
            self._stopJob()
            return
        self.startTraining(resume=False)

    def onResumeButton(self) -> None:
        """Resume this session's run, or pick an older resumable run from the runs folder."""
        runs = self.logic.resumableRuns(self._parameterNode)
        if not runs:
            slicer.util.errorDisplay(_("There is no run with a checkpoint in {folder}.").format(
                folder=self.logic.runsFolder(self._parameterNode)), windowTitle=_("CTDiffusion"))
            return
        runDir = runs[0]
        if len(runs) > 1:
            names = [run.name for run in runs]
            # a dialog object, not the static getItem: PythonQt's getItem cannot report `ok` and returns the
            # current item when the user cancels (qinputdialog.cpp)
            dialog = qt.QInputDialog(slicer.util.mainWindow())
            dialog.setWindowTitle(_("Resume training"))
            dialog.setLabelText(_("Run to resume:"))
            dialog.setComboBoxItems(names)
            dialog.setComboBoxEditable(False)
            dialog.setTextValue(names[0])
            if not dialog.exec_():
                return
            runDir = runs[names.index(dialog.textValue())]
        self.startTraining(resume=True, runDir=str(runDir))

    def startTraining(self, resume, runDir=None) -> None:
        p = self._parameterNode
        if not self.ensureDependencies(ask=True):
            return
        try:
            with slicer.util.WaitCursor():
                command, runDir = self.logic.trainingCommand(
                    p, self.selectedSourceNodes(), resume=resume, runDir=runDir,
                    segmentations=self.selectedSegmentationNodes(), structures=self.structureChoice())
        except ValueError as exc:
            slicer.util.errorDisplay(str(exc), windowTitle=_("CTDiffusion"))
            return
        notice = None if resume else self._coarseNotice
        if notice:  # said before the child starts; the run goes on (the user may mean it)
            self._appendLog(_("Note: {text}").format(text=notice))
            slicer.util.showStatusMessage(_("CTDiffusion: {text}").format(text=notice), 15000)
        p.lastRunFolder = str(runDir)
        self._lossCurve = self.logic.lossCurve(reset=not resume)
        self.logic.showLossCurve(self._lossCurve)
        self._startJob("train", command, runDir)

    def onTrainingCompleted(self, runDir) -> None:
        self._appendLog(_("Model bundle: {path}").format(path=Path(runDir) / "model"))
        if self._parameterNode.modelSource == "run":
            self.updateConditionWidgets()

    # ------------------------------------------------------------------------------------------ generation
    def updateConditionWidgets(self) -> None:
        """One combo per condition in the bundle's model.json (issue 5); hidden for unconditional models."""
        conditions = self.logic.modelConditions(self._modelPath())
        layout = self.ui.conditionsFormLayout
        for combo in self._conditionCombos.values():
            layout.removeRow(combo)
        self._conditionCombos = {}
        for key, values in conditions.items():
            combo = qt.QComboBox()
            combo.objectName = f"condition_{key}ComboBox"
            combo.addItem(ANY_CONDITION, "")
            for value in values:
                combo.addItem(str(value), str(value))
            layout.addRow(f"{key}:", combo)
            self._conditionCombos[key] = combo
        self.ui.conditionsGroupBox.visible = bool(conditions)
        self.ui.guidanceScaleSliderWidget.enabled = bool(conditions)
        self._setJobButtons()

    def selectedCondition(self) -> dict:
        return {key: combo.currentData for key, combo in self._conditionCombos.items() if combo.currentData}

    def onGenerateButton(self) -> None:
        if self._jobKind == "generate":
            self._stopJob()
            return
        if not self.ensureDependencies(ask=True):
            return
        p = self._parameterNode
        try:
            command, outDir = self.logic.generationCommand(p, self._modelPath(), self.selectedCondition())
        except ValueError as exc:
            slicer.util.errorDisplay(str(exc), windowTitle=_("CTDiffusion"))
            return
        self._startJob("generate", command, outDir)

    def onGenerationCompleted(self, outDir) -> None:
        p = self._parameterNode
        p.lastGeneratedFolder = str(outDir)
        real = p.referenceVolume or (self.selectedSourceNodes() or [None])[0]
        with slicer.util.WaitCursor():
            if self.logic.isPairsFolder(outDir):  # a paired model's new pairs: CT + segmentation named as trained
                self._syntheticNodes = [volume for volume, _seg in self.logic.importPairsAndCompare(outDir, real)]
            else:
                self._syntheticNodes = self.logic.importAndCompare(outDir, real, profile=p.profile)
        self.ui.sampleSlider.value = 0
        self._updateSampleLabel(0)

    def onGenerateFromLabelsButton(self) -> None:
        """Generate CT for this segmentation: a paired model makes the CT for the chosen segmentation node."""
        if self._jobKind == "labels":
            self._stopJob()
            return
        if not self.ensureDependencies(ask=True):
            return
        segmentation = self.ui.labelsSegmentationComboBox.currentNode()
        try:
            with slicer.util.WaitCursor():
                command, outDir = self.logic.labelsGenerationCommand(self._parameterNode, self._modelPath(),
                                                                     segmentation)
        except ValueError as exc:
            slicer.util.errorDisplay(str(exc), windowTitle=_("CTDiffusion"))
            return
        self._labelsRealNode = self.logic.realBesideLabels(self._parameterNode.referenceVolume, segmentation)
        self._startJob("labels", command, outDir)

    def onLabelsGenerationCompleted(self, outDir) -> None:
        """The CT on the segmentation's geometry, the segmentation over it, beside the real CT."""
        p = self._parameterNode
        p.lastGeneratedFolder = str(outDir)
        with slicer.util.WaitCursor():
            pairs = self.logic.importPairsAndCompare(outDir, self._labelsRealNode)
        self._syntheticNodes = [volume for volume, _segmentation in pairs]
        self.ui.sampleSlider.value = 0
        self._updateSampleLabel(0)

    def onSampleChanged(self, index) -> None:
        if 0 <= index < len(self._syntheticNodes):
            from CTDiffusionLib.scene.comparison import show_sample

            show_sample(self._syntheticNodes[index])
            self._updateSampleLabel(index)

    def _updateSampleLabel(self, index) -> None:
        count = len(self._syntheticNodes)
        self.ui.sampleLabel.text = (f"{index + 1} / {count}: {self._syntheticNodes[index].GetName()}"
                                    if 0 <= index < count else _("no samples"))

    # --------------------------------------------------------------------------------------------- quality
    def onEvaluateButton(self) -> None:
        if self._jobKind == "evaluate":
            self._stopJob()
            return
        if not self.ensureDependencies(ask=True):
            return
        p = self._parameterNode
        realNodes = list(self.ui.realNodesComboBox.checkedNodes())
        generatedNodes = ([] if self.ui.useLastGenerationCheckBox.checked
                          else list(self.ui.generatedNodesComboBox.checkedNodes()))
        try:
            with slicer.util.WaitCursor():
                command, reportDir = self.logic.evaluationCommand(p, realNodes, generatedNodes,
                                                                  useLastGeneration=self.ui.useLastGenerationCheckBox.checked)
        except ValueError as exc:
            slicer.util.errorDisplay(str(exc), windowTitle=_("CTDiffusion"))
            return
        self._qualityNodes = (realNodes, generatedNodes or self._syntheticNodes)
        self._startJob("evaluate", command, reportDir)

    def onEvaluationCompleted(self, reportDir) -> None:
        self._parameterNode.lastReportFolder = str(reportDir)
        realNodes, generatedNodes = getattr(self, "_qualityNodes", ([], []))
        summary, samples = self.logic.showQuality(reportDir, realNodes, generatedNodes, self._parameterNode.profile)
        self.ui.metricsTableView.setMRMLTableNode(summary)
        self.ui.samplesTableView.setMRMLTableNode(samples)
        from CTDiffusionLib.scene.plots import memorised_samples

        flagged = memorised_samples(samples)
        self.ui.qualityStatusLabel.text = (
            _("Possibly memorised (too close to a training case): {names}").format(names=", ".join(flagged))
            if flagged else _("No generated sample is a near-copy of a training case."))
        try:
            self._nearCopies = self.logic.nearCopies(reportDir, self._parameterNode.profile) if flagged else []
        except Exception as exc:  # the files to show are gone: say so, the report itself stands
            self._nearCopies = []
            self.ui.qualityStatusLabel.text += " " + str(exc)
        self._nearCopyShown = -1
        self.ui.showNearCopyButton.enabled = bool(self._nearCopies)

    def onShowNearCopy(self) -> None:
        """Each click: the next flagged near-copy beside the training case it copies."""
        if not self._nearCopies:
            return
        self._nearCopyShown = (self._nearCopyShown + 1) % len(self._nearCopies)
        copy = self._nearCopies[self._nearCopyShown]
        with slicer.util.WaitCursor():
            self.logic.showNearCopy(copy, self._parameterNode.profile)
        self.ui.qualityStatusLabel.text = copy.text()

    def onUtilityButton(self) -> None:
        """The downstream benchmark (real / synthetic / real + synthetic segmenters) in the child process."""
        if self._jobKind == "utility":
            self._stopJob()
            return
        if not self.ensureDependencies(ask=True):
            return
        try:
            command, outDir = self.logic.utilityCommand(
                self._parameterNode, self.ui.utilityTrainPathLineEdit.currentPath,
                self.ui.utilitySyntheticPathLineEdit.currentPath, self.ui.utilityTestPathLineEdit.currentPath,
                self.ui.utilitySeedsSpinBox.value)
        except ValueError as exc:
            slicer.util.errorDisplay(str(exc), windowTitle=_("CTDiffusion"))
            return
        self._startJob("utility", command, outDir)

    def onUtilityCompleted(self, outDir) -> None:
        table, verdict = self.logic.showUtility(outDir)
        self.ui.utilityTableView.setMRMLTableNode(table)
        self.ui.utilityVerdictLabel.text = verdict

    def onOpenReport(self) -> None:
        report = Path(self._parameterNode.lastReportFolder) / "report.html"
        if report.is_file():
            qt.QDesktopServices.openUrl(qt.QUrl.fromLocalFile(str(report)))


def _unsupportedSlicer():
    """One sentence when this Slicer is too old (decided in CTDiffusionLib.jobs.dependencies), else None."""
    version = (int(slicer.app.majorVersion), int(slicer.app.minorVersion))
    if sys.version_info < (3, 11):  # the library itself needs 3.11: say it without importing it
        return _("CTDiffusion needs Slicer 5.10 or newer (this is Slicer {major}.{minor} with Python {py}): please "
                 "install a current Slicer.").format(major=version[0], minor=version[1],
                                                    py=f"{sys.version_info[0]}.{sys.version_info[1]}")
    from CTDiffusionLib.jobs.dependencies import unsupported_slicer

    return unsupported_slicer(version)


def ctkPathLineEditDirs():
    import ctk

    return ctk.ctkPathLineEdit.Dirs


#
# Logic (thin: delegates to CTDiffusionLib)
#
class CTDiffusionLogic(ScriptedLoadableModuleLogic):
    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self.viewState = None  # the user's layout and view links while the comparison layout is shown
        self.evaluated = None  # {"generated": folder, "train": folder or None} of the last evaluation started

    def getParameterNode(self):
        return CTDiffusionParameterNode(super().getParameterNode())

    @staticmethod
    def moduleDir() -> Path:
        return Path(__file__).resolve().parent

    def requirementsPath(self) -> Path:
        return self.moduleDir() / "Resources" / "requirements.txt"

    @staticmethod
    def defaultRunsFolder() -> Path:
        return Path(slicer.app.defaultScenePath) / "CTDiffusion"

    # dependencies
    def dependencyStatus(self):
        from CTDiffusionLib.jobs import dependencies

        return dependencies.check(self.requirementsPath())

    def ensureDependencies(self, ask=True) -> bool:
        """PyTorch through PyTorchUtils (CUDA-aware), then requirements.txt; one confirmation; restart offer."""
        status = self.dependencyStatus()
        if status.ok:
            return True
        settings = qt.QSettings()
        if ask and not slicer.app.testingEnabled():
            if not slicer.util.confirmOkCancelDisplay(
                    _("CTDiffusion needs Python packages that are not installed yet:\n\n{what}\n\nInstall them now? "
                      "This can take several minutes and needs an internet connection.").format(what=status.text()),
                    windowTitle=_("CTDiffusion: install Python packages")):
                return False
        settings.setValue(SETTINGS + "dependenciesConfirmed", True)
        with slicer.util.WaitCursor():
            if not status.torch_installed or status.torch_too_old:
                self._installTorch(status)
            if status.missing:
                self._pipInstall(status)
        after = self.dependencyStatus()
        if (status.restart_recommended or status.torch_too_old) and not slicer.app.testingEnabled():
            if slicer.util.confirmYesNoDisplay(_("Packages that were already loaded were updated. Restart Slicer "
                                                 "now to use the new versions?")):
                slicer.util.restart()
        return after.ok

    @staticmethod
    def _installTorch(status) -> None:
        """PyTorch through the PyTorch extension (the CUDA build that fits the GPU), as SlicerMONAIAuto3DSeg and
        SlicerTotalSegmentator do; an installed version older than the engine needs is upgraded the same way."""
        from CTDiffusionLib.jobs.dependencies import TORCH_MINIMUM

        try:
            import PyTorchUtils
        except ModuleNotFoundError:
            raise RuntimeError(_("CTDiffusion needs the PyTorch extension. Install it from the Extensions Manager "
                                 "and restart Slicer."))
        torch = PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=False,
                                                              torchVersionRequirement=f">={TORCH_MINIMUM}")
        if torch is None:
            raise RuntimeError(_("PyTorch {version} or newer could not be installed; see the PyTorch Utils "
                                 "module.").format(version=TORCH_MINIMUM))

    @staticmethod
    def _pipInstall(status) -> None:
        """requirements.txt by this Slicer's one install path, with Slicer's torch/numpy pinned (decided in
        CTDiffusionLib.jobs.dependencies.install_plan): Slicer 5.10 slicer.util.pip_install, 5.12
        slicer.packaging.pip_ensure without its own confirmation and restart prompt (the module asked already)."""
        import tempfile

        from CTDiffusionLib.jobs import dependencies

        plan = dependencies.install_plan((int(slicer.app.majorVersion), int(slicer.app.minorVersion)), status)
        constraints = dependencies.write_constraints(plan, tempfile.mkdtemp(prefix="CTDiffusion-"))
        if plan.method == "pip_ensure":
            from slicer import packaging  # Slicer does not import it at startup

            packaging.pip_ensure(list(plan.requirements), **plan.pip_ensure_options(constraints))
        else:
            slicer.util.pip_install(plan.pip_install_arguments(constraints))

    @staticmethod
    def cudaDeviceCount() -> int:
        """GPUs for the device selector, without importing torch (nvidia-smi when present)."""
        import shutil
        import subprocess

        exe = shutil.which("nvidia-smi")
        if not exe:
            return 0
        try:
            out = subprocess.run([exe, "-L"], capture_output=True, text=True, timeout=5).stdout
        except (OSError, subprocess.SubprocessError):
            return 0
        return sum(1 for line in out.splitlines() if line.startswith("GPU "))

    # panel values (decided in CTDiffusionLib.jobs.panel)
    @staticmethod
    def applyPreset(p, preset) -> None:
        """Choose `preset` (None: the profile's default) and show its own length, batch, lr, schedule, augmentation."""
        from CTDiffusionLib.jobs import panel

        name = panel.preset_name(p.profile, preset)
        values = panel.preset_panel(p.profile, name)
        wasModified = p.StartModify()
        try:
            p.preset = name
            p.lengthMode, p.length, p.batchSize = values.length_mode, values.length, values.batch_size
            p.learningRate, p.schedule, p.augment = values.lr, values.schedule, ",".join(values.augment)
        finally:
            p.EndModify(wasModified)

    @staticmethod
    def applySampler(p, sampler) -> None:
        from CTDiffusionLib.jobs import panel

        p.sampler = sampler or panel.DEFAULT_SAMPLER
        p.samplingSteps = panel.sampler_default_steps(p.sampler)

    @staticmethod
    def trainingPanel(p):
        from CTDiffusionLib.jobs.panel import TrainingPanel

        return TrainingPanel(p.lengthMode, p.length, p.batchSize, p.learningRate, p.schedule, ()).with_augment(
            p.augment.split(","))

    # commands (what runs where: CTDiffusionLib.jobs.plans; which flags: CTDiffusionLib.jobs.panel)
    def runsFolder(self, p) -> str:
        return p.runFolder or str(self.defaultRunsFolder())

    def trainingCommand(self, p, sourceNodes, resume=False, runDir=None, segmentations=(), structures=None):
        """`structures`: (checked, listed) names of the structure list, for a training with labels."""
        from CTDiffusionLib.jobs import panel, plans
        from CTDiffusionLib.jobs.commands import build_command
        from CTDiffusionLib.requests import TrainRequest

        withLabels = bool(p.withLabels) and self.pairsAllowed(p.profile) and not resume
        if withLabels:
            return self._pairsTrainingCommand(p, sourceNodes, segmentations, structures)
        source = plans.training_source(p.sourceMode, p.sourceFolder, len(sourceNodes), self.runsFolder(p), p.profile,
                                       resume_run=(runDir or "") if resume else None)
        if resume:  # the run continues as it was configured (its config.json), on the chosen device
            settings = TrainRequest(profile=p.profile, data=source.data, out=str(source.run_dir), device=p.device,
                                     resume=True)
        else:
            if source.export_to is not None:
                from CTDiffusionLib.scene.nodes import export_nodes

                export_nodes(sourceNodes, source.export_to, p.profile)
            settings = TrainRequest(profile=p.profile, data=source.data, out=str(source.run_dir), device=p.device,
                                     conditions=plans.training_conditions(p.profile, p.conditioned),
                                     **panel.training_overrides(p.profile, p.preset, self.trainingPanel(p)))
        return build_command(settings), source.run_dir

    def _pairsTrainingCommand(self, p, volumes, segmentations, structures):
        """train --with-labels: volume + segmentation nodes exported as a pairs folder (every segment; the choice is
        sent as --structures, so the run stores it), or a pairs folder as it is."""
        from CTDiffusionLib.jobs import panel, paired, plans
        from CTDiffusionLib.jobs.commands import build_command
        from CTDiffusionLib.requests import TrainRequest
        from CTDiffusionLib.scene.pair_sources import drawn_on

        checked, listed = structures or ([], [])
        spec = paired.structures_spec(checked, listed)
        if p.sourceMode == "nodes":
            pairs = paired.pair_nodes(volumes, segmentations, drawn_on)
        source = plans.training_source(p.sourceMode, p.sourceFolder, len(volumes), self.runsFolder(p), p.profile)
        if source.export_to is not None:
            from CTDiffusionLib.errors import InputError
            from CTDiffusionLib.scene.pairs import export_pairs

            try:
                export_pairs(pairs, source.export_to)
            except InputError as exc:
                raise ValueError(str(exc)) from exc
        settings = TrainRequest(profile=p.profile, data=source.data, out=str(source.run_dir), device=p.device,
                                 with_labels=True, structures=spec,
                                 **panel.training_overrides(p.profile, p.preset, self.trainingPanel(p)))
        return build_command(settings), source.run_dir

    @staticmethod
    def pairsAllowed(profile) -> bool:
        from CTDiffusionLib.profiles import get_profile

        return not get_profile(profile).is_label_map

    @staticmethod
    def structureNames(p, segmentations) -> list:
        """The structure list's names: the chosen segmentations' segment names, or the pairs folder's structures."""
        from CTDiffusionLib.scene import pair_sources

        if p.sourceMode == "folder":
            return pair_sources.folder_structure_names(p.sourceFolder) if p.sourceFolder else []
        return pair_sources.segment_names(segmentations)

    @staticmethod
    def realBesideLabels(reference, segmentation):
        """The real CT shown beside a CT generated for a segmentation: the reference volume, else the volume the
        segmentation was drawn on."""
        from CTDiffusionLib.scene.pair_sources import drawn_on

        return reference if reference is not None else drawn_on(segmentation) if segmentation is not None else None

    @staticmethod
    def isPairsFolder(folder) -> bool:
        from CTDiffusionLib.jobs.paired import is_pairs_folder

        return is_pairs_folder(folder)

    def labelsGenerationCommand(self, p, modelPath, segmentation):
        """generate --from-labels: the segmentation as a label map (values in the model's structure order, on the
        reference volume's grid when one is chosen) next to the output folder."""
        from CTDiffusionLib.errors import InputError
        from CTDiffusionLib.jobs import panel, paired
        from CTDiffusionLib.jobs.commands import build_command, model_structures
        from CTDiffusionLib.requests import GenerateRequest
        from CTDiffusionLib.scene.nodes import safe_file_stem
        from CTDiffusionLib.scene.pairs import export_segmentation_labels

        if not modelPath:
            raise ValueError(_("Train a model with labels in this session or choose a paired model bundle."))
        structures = model_structures(modelPath)
        if not structures:
            raise ValueError(_("The model {path} was not trained with labels: train with 'Train on CT + "
                               "segmentation pairs' first.").format(path=modelPath))
        if segmentation is None:
            raise ValueError(_("Choose the segmentation to generate a CT for."))
        target = paired.labels_generation(p.modelSource, p.lastRunFolder, self.runsFolder(p),
                                          safe_file_stem(segmentation.GetName()))
        try:
            export_segmentation_labels(segmentation, target.labels_file, structures,
                                       reference_volume=p.referenceVolume)
        except InputError as exc:
            raise ValueError(str(exc)) from exc
        settings = GenerateRequest(model=str(modelPath), num=None, out=str(target.out), sampler=p.sampler,
                                    steps=panel.sampling_steps_override(p.sampler, p.samplingSteps), seed=p.seed,
                                    from_labels=str(target.labels_file), device=p.device)
        return build_command(settings), target.out

    def utilityCommand(self, p, train, synthetic, test, seeds):
        from CTDiffusionLib.jobs import paired
        from CTDiffusionLib.jobs.commands import build_command
        from CTDiffusionLib.requests import UtilityRequest

        inputs = paired.utility_inputs(train, synthetic, test, p.lastRunFolder, p.lastGeneratedFolder)
        out = paired.utility_folder(p.lastRunFolder, self.runsFolder(p))
        settings = UtilityRequest(train=inputs.train, synthetic=inputs.synthetic, test=inputs.test, out=str(out),
                                   seeds=int(seeds), device=p.device)
        return build_command(settings), out

    @staticmethod
    def canResume(runDir) -> bool:
        from CTDiffusionLib.jobs.commands import can_resume

        return can_resume(runDir)

    def resumableRuns(self, p) -> list:
        from CTDiffusionLib.jobs.plans import resumable_runs

        runs = resumable_runs(self.runsFolder(p))
        if p.lastRunFolder and self.canResume(p.lastRunFolder):
            runs = [Path(p.lastRunFolder)] + [r for r in runs if r != Path(p.lastRunFolder)]
        return runs

    def generationCommand(self, p, modelPath, condition):
        from CTDiffusionLib.jobs import panel, plans
        from CTDiffusionLib.jobs.commands import build_command
        from CTDiffusionLib.requests import GenerateRequest
        from CTDiffusionLib.scene.nodes import write_volume_node

        if not modelPath:
            raise ValueError(_("Train a model in this session or choose a model bundle folder."))
        outDir = plans.generation_folder(p.modelSource, p.lastRunFolder, self.runsFolder(p))
        reference = None
        if p.referenceVolume is not None:
            storage = p.referenceVolume.GetStorageNode()
            path = storage.GetFileName() if storage is not None else None
            if not path or not Path(path).is_file() or p.referenceVolume.GetModifiedSinceRead():
                path = str(write_volume_node(p.referenceVolume, outDir.parent / (outDir.name + "-reference.nii.gz")))
            reference = path
        settings = GenerateRequest(model=str(modelPath), num=p.numberOfSamples, out=str(outDir), sampler=p.sampler,
                                    steps=panel.sampling_steps_override(p.sampler, p.samplingSteps), seed=p.seed,
                                    reference=reference, condition=condition,
                                    guidance_scale=panel.guidance_scale(condition, p.guidanceScale), device=p.device)
        return build_command(settings), outDir

    def evaluationCommand(self, p, realNodes, generatedNodes, useLastGeneration=True):
        from CTDiffusionLib.jobs import plans
        from CTDiffusionLib.jobs.commands import build_command
        from CTDiffusionLib.requests import EvaluateRequest
        from CTDiffusionLib.scene.nodes import export_nodes

        folders = plans.quality_folders(p.lastRunFolder, self.runsFolder(p))
        if realNodes:
            real = str(folders.real_export)
            export_nodes(realNodes, real, p.profile)
        elif p.sourceMode == "folder" and p.sourceFolder:
            real = p.sourceFolder
        else:
            raise ValueError(_("Pick the real volumes to compare with."))
        if useLastGeneration:
            if not p.lastGeneratedFolder:
                raise ValueError(_("Generate samples first, or pick generated nodes."))
            generated = p.lastGeneratedFolder
        else:
            if not generatedNodes:
                raise ValueError(_("Pick the generated nodes to evaluate."))
            generated = str(folders.generated_export)
            export_nodes(generatedNodes, generated, p.profile)
        settings = EvaluateRequest(real=real, generated=generated, out=str(folders.report),
                                    train=plans.training_data_for_evaluation(p.lastRunFolder),
                                    run=p.lastRunFolder or None, profile=p.profile, device=p.device)
        self.evaluated = {"generated": generated, "train": settings.train}  # what a near-copy is looked up in
        return build_command(settings), folders.report

    def nearCopies(self, reportDir, profile) -> list:
        from CTDiffusionLib.scene.near_copies import near_copies

        evaluated = self.evaluated or {}
        if not evaluated.get("train"):
            return []
        return near_copies(reportDir, evaluated["generated"], [evaluated["train"]], profile)

    def showNearCopy(self, copy, profile):
        from CTDiffusionLib.scene.near_copies import show_near_copy

        self._takeOverLayout()
        return show_near_copy(copy, profile)

    @staticmethod
    def modelConditions(modelPath) -> dict:
        from CTDiffusionLib.jobs.commands import model_conditions

        return model_conditions(modelPath)

    # scene
    @staticmethod
    def lossCurve(reset=True):
        from CTDiffusionLib.scene.plots import LossCurve

        curve = LossCurve(slicer.mrmlScene)
        if reset:
            curve.clear()
        return curve

    def _takeOverLayout(self) -> None:
        """Remember the user's layout and view links once, before the comparison layout replaces them."""
        from CTDiffusionLib.scene import comparison

        if self.viewState is None and comparison.layout_node().GetViewArrangement() != comparison.LAYOUT_ID:
            self.viewState = comparison.remember_view_state()

    def restoreLayout(self) -> None:
        from CTDiffusionLib.scene import comparison

        comparison.restore_view_state(self.viewState)
        self.viewState = None

    @staticmethod
    def syntheticNodes() -> list:
        from CTDiffusionLib.scene.nodes import synthetic_nodes

        return synthetic_nodes()

    def showLossCurve(self, curve) -> None:
        from CTDiffusionLib.scene import comparison

        self._takeOverLayout()
        comparison.show_comparison_layout()
        comparison.show_chart(curve.chart)

    def importAndCompare(self, outDir, realNode, profile=None) -> list:
        from CTDiffusionLib.scene import comparison, nodes

        self._takeOverLayout()
        synthetic = nodes.import_generated(outDir, beside=realNode, profile=profile)
        if synthetic:
            comparison.setup_comparison(realNode, synthetic[0])
        return synthetic

    def importPairsAndCompare(self, outDir, realNode) -> list:
        """A pairs folder (generate on a paired run) as CT + named segmentation nodes in the synthetic folder, the
        first CT beside the real one; each segmentation is shown over its CT."""
        from CTDiffusionLib.scene import comparison, pairs

        self._takeOverLayout()
        loaded = pairs.import_pairs(outDir, beside=realNode)
        if loaded:
            comparison.setup_comparison(realNode, loaded[0][0])
        return loaded

    def showUtility(self, outDir):
        """The benchmark's table (and bar chart) in the scene; returns (table node, verdict sentence)."""
        from CTDiffusionLib.scene import comparison, utility_view
        from CTDiffusionLib.utility.table import gain_text, load_utility, verdict_text

        result = load_utility(outDir)
        table = utility_view.utility_table(result)
        self._takeOverLayout()
        comparison.show_comparison_layout()
        comparison.show_table(table)
        comparison.show_chart(utility_view.utility_chart(result))
        return table, f"{gain_text(result)}\n{verdict_text(result)}"

    def showQuality(self, reportDir, realNodes, generatedNodes, profile=None):
        from CTDiffusionLib.scene import comparison, plots

        self._takeOverLayout()
        summary, samples = plots.metrics_tables(reportDir)
        comparison.show_comparison_layout()
        comparison.show_table(summary)
        if realNodes and generatedNodes:
            chart, _table = plots.histogram_chart(realNodes, generatedNodes, profile=profile)
            comparison.show_chart(chart)
        return summary, samples


#
# Test
#
class CTDiffusionTest(ScriptedLoadableModuleTest):
    """Runs the same scenarios as pytest on slicer-core (CTDiffusionLib.scene.scenario), in Slicer: the widget is
    built (a parameter that cannot be bound fails here), a training is stopped through the real PythonSlicer
    launcher, and the end-to-end train -> generate -> compare scenario runs. Missing packages skip with the reason."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        """Reload and Test and the SelfTests module call this directly, outside any unittest runner, where a
        SkipTest would surface as an error: without the engine's packages the engine parts are logged and left out."""
        self.setUp()
        self.test_CTDiffusion_widget()
        missing = self._missingEngine()
        if missing:
            logging.warning("CTDiffusion self-test: %s", missing)
            self.delayDisplay(missing)
            return
        self.test_CTDiffusion_stop()
        self.test_CTDiffusion_scenario()

    @staticmethod
    def _missingEngine():
        """Why the engine parts cannot run here (one sentence), or None."""
        status = CTDiffusionLogic().dependencyStatus()
        if status.ok:
            return None
        return _("CTDiffusion's Python packages are not installed ({what}); install them from the module's "
                 "Dependencies section.").format(what=status.text())

    def _requireEngine(self):
        """Under a unittest runner (ctest) each engine test skips with the reason."""
        missing = self._missingEngine()
        if missing:
            self.skipTest(missing)

    def test_CTDiffusion_widget(self):
        """Building the panel binds every parameter (connectGui raises if one widget cannot be bound)."""
        self.delayDisplay("Building the CTDiffusion panel")
        widget = slicer.modules.ctdiffusion.createNewWidgetRepresentation()
        try:
            module = widget.self()
            self.assertIsNotNone(module._parameterNodeGuiTag, "the parameter node is not bound to the panel")
            p = module._parameterNode
            self.assertEqual(module.ui.presetComboBox.currentData, p.preset)
            self.assertEqual(module.ui.lengthSpinBox.value, p.length)
            self.assertEqual(module.ui.guidanceScaleSliderWidget.maximum, 10.0)
        finally:
            widget.self().cleanup()
            widget.deleteLater()

    def test_CTDiffusion_stop(self):
        import tempfile

        self._requireEngine()
        from CTDiffusionLib.scene.scenario import run_stop_scenario

        with tempfile.TemporaryDirectory(prefix="CTDiffusionTest-") as work:
            result = run_stop_scenario(work, log=lambda m: self.delayDisplay(m, 100), pump=slicer.app.processEvents)
        self.assertGreaterEqual(result["checkpoint"]["step"], result["stopped_at"])

    def test_CTDiffusion_scenario(self):
        import tempfile

        self._requireEngine()
        self.delayDisplay("Starting the CTDiffusion scenario")
        from CTDiffusionLib.scene.scenario import run_selftest_scenario

        with tempfile.TemporaryDirectory(prefix="CTDiffusionTest-") as work:
            result = run_selftest_scenario(work, scene=slicer.mrmlScene, steps=4, num_generate=2,
                                           log=lambda m: self.delayDisplay(m, 100), pump=slicer.app.processEvents)
        self.assertEqual(len(result["synthetic_nodes"]), 2)
        layoutManager = slicer.app.layoutManager()
        if layoutManager is not None:
            from CTDiffusionLib.scene.comparison import LAYOUT_ID

            self.assertEqual(layoutManager.layout, LAYOUT_ID)
        self.delayDisplay("Test passed")
