"""CTDiffusion.ui in real Qt (PySide6, offscreen) against what CTDiffusion.py uses, and the module file's
import hygiene (compiles, no heavy packages at module level)."""

from __future__ import annotations

import ast
import os
import re
import sys
import textwrap
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from slicer_connector_rules import VERSIONS, check_binding, ui_widgets

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

REPO = Path(__file__).resolve().parents[1]
MODULE = REPO / "CTDiffusion" / "CTDiffusion.py"
UI = REPO / "CTDiffusion" / "Resources" / "UI" / "CTDiffusion.ui"
HEAVY = ("torch", "monai", "diffusers", "safetensors", "scipy", "matplotlib", "SimpleITK", "numpy", "psutil")

# API of the CTK / qMRML classes the module calls (they are not in PySide6): methods, properties and signals.
CUSTOM_API = {
    "ctkCollapibleButton": set(),
    "ctkCollapsibleButton": {"collapsed", "text", "checked", "contentsCollapsed(bool)"},
    "ctkPathLineEdit": {"currentPath", "filters", "currentPathChanged(QString)", "addCurrentPathToHistory"},
    "ctkSliderWidget": {"value", "minimum", "maximum", "singleStep", "decimals", "enabled", "valueChanged(double)"},
    "qMRMLWidget": {"setMRMLScene", "mrmlScene", "mrmlSceneChanged(vtkMRMLScene*)"},
    "qMRMLNodeComboBox": {"setMRMLScene", "currentNode", "setCurrentNode", "nodeTypes", "noneEnabled", "hideChildNodeTypes",
                          "currentNodeChanged(vtkMRMLNode*)", "currentNodeID"},
    "qMRMLCheckableNodeComboBox": {"setMRMLScene", "checkedNodes", "nodeTypes", "checkedNodesChanged()",
                                   "setCheckState", "checkState", "currentNode"},
    "qMRMLTableView": {"setMRMLTableNode", "mrmlTableNode", "setMRMLScene"},
}
# Widgets the module reaches through PythonQt-only attributes that every QWidget has.
QWIDGET_COMMON = {"visible", "enabled", "toolTip", "connect", "objectName", "setEnabled", "setVisible"}


def _module_usage():
    """{widget name: {attributes used}} and {widget name: {signals connected}} from `self.ui.<name>...`."""
    text = MODULE.read_text(encoding="utf-8")
    attrs: dict[str, set] = {}
    for name, attr in re.findall(r"self\.ui\.(\w+)(?:\.(\w+))?", text):
        attrs.setdefault(name, set())
        if attr:
            attrs[name].add(attr)
    signals: dict[str, set] = {}
    for name, signal in re.findall(r"self\.ui\.(\w+)\.connect\(\"([^\"]+)\"", text):
        signals.setdefault(name, set()).add(signal)
    # connections made in a loop over a tuple of widgets
    for block, signal in re.findall(r"for \w+ in \(([^)]*)\):\s*\n\s*\w+\.connect\(\"([^\"]+)\"", text):
        for name in re.findall(r"self\.ui\.(\w+)", block):
            signals.setdefault(name, set()).add(signal)
    return attrs, signals


def _ui_classes():
    tree = ET.parse(UI)
    classes = {w.get("name"): w.get("class") for w in tree.iter("widget")}
    layouts = {l.get("name"): l.get("class") for l in tree.iter("layout")}
    custom = {c.findtext("class"): c.findtext("extends") for c in tree.iter("customwidget")}
    return tree, classes, layouts, custom


@pytest.fixture(autouse=True)
def _forget_modules_imported_under_stand_ins():
    """A CTDiffusionLib module first imported while the Slicer stand-ins below are in sys.modules keeps the stand-in
    `slicer`; forget it afterwards so later tests (the real widget on slicer-core) import it afresh."""
    before = set(sys.modules)
    yield
    for name in set(sys.modules) - before:
        if name.split(".")[0] in ("CTDiffusionLib", "CTDiffusion_under_test"):
            del sys.modules[name]


@pytest.fixture(scope="module")
def loaded_ui():
    QtWidgets = pytest.importorskip("PySide6.QtWidgets")
    QtUiTools = pytest.importorskip("PySide6.QtUiTools")
    from PySide6.QtCore import QFile, QIODevice

    app = QtWidgets.QApplication.instance() or QtWidgets.QApplication([])
    loader = QtUiTools.QUiLoader()
    f = QFile(str(UI))
    assert f.open(QIODevice.ReadOnly)
    widget = loader.load(f)
    f.close()
    assert widget is not None, loader.errorString()
    yield widget
    widget.deleteLater()
    app.processEvents()


def test_ui_declares_its_custom_widgets():
    _, classes, _, custom = _ui_classes()
    qt_classes = {c for c in classes.values() if c.startswith("Q")}
    for cls in set(classes.values()) - qt_classes:
        assert cls in custom, f"{cls} is used in the .ui but not declared in <customwidgets>"
        base = custom[cls]
        while base in custom:  # qMRMLCheckableNodeComboBox -> qMRMLNodeComboBox -> QWidget
            base = custom[base]
        assert base.startswith("Q"), f"{cls} does not extend a Qt class"
    assert classes["CTDiffusion"] == "qMRMLWidget"


def test_every_widget_the_module_uses_exists_with_compatible_class(loaded_ui):
    from PySide6 import QtWidgets

    attrs, signals = _module_usage()
    _, classes, layouts, custom = _ui_classes()
    assert len(attrs) > 40
    for name, used in sorted(attrs.items()):
        if name in layouts:  # a layout: the module adds rows to it
            assert used <= {"addRow", "removeRow", "rowCount"}, (name, used)
            obj = loaded_ui.findChild(QtWidgets.QLayout, name)
            assert obj is not None and isinstance(obj, QtWidgets.QFormLayout), name
            continue
        assert name in classes, f"CTDiffusion.py uses self.ui.{name}, which CTDiffusion.ui does not define"
        cls = classes[name]
        obj = loaded_ui.findChild(QtWidgets.QWidget, name)
        assert obj is not None, f"{name} ({cls}) was not created by QUiLoader"
        if cls in custom:
            # falls back to the declared base class; the module's calls must be part of the real class's API
            api = set().union(*(CUSTOM_API.get(c, set()) for c in _chain(cls, custom)))
            for attr in used - QWIDGET_COMMON:
                assert attr in api, f"self.ui.{name}.{attr}: not an API of {cls} (as far as this test knows)"
            for sig in signals.get(name, ()):
                assert sig in api, f"{name} ({cls}) has no signal {sig}"
        else:
            meta = obj.metaObject()
            for attr in used - QWIDGET_COMMON:
                # PythonQt exposes Qt properties as attributes (checkBox.checked), methods as in PySide
                assert hasattr(obj, attr) or meta.indexOfProperty(attr) >= 0, f"self.ui.{name}.{attr}: {cls} has no {attr}"
            for sig in signals.get(name, ()):
                assert meta.indexOfSignal(sig) >= 0, f"{name} ({cls}) has no signal {sig}"


def _chain(cls, custom):
    out = [cls]
    while custom.get(out[-1]) in custom:
        out.append(custom[out[-1]])
    return out


@pytest.mark.parametrize("version", VERSIONS)
def test_parameter_node_binds_under_slicer_rules(version, loaded_ui):
    """connectGui(self.ui) in Slicer 5.8/5.10 binds every widget with the range the .ui shows (rules read from
    Slicer's guiConnectors.py, see Testing/slicer_connector_rules.py)."""
    from PySide6 import QtWidgets

    bound, _ = ui_widgets(UI)
    assert len(bound) >= 8
    for widget in bound:  # what connectGui reads: the dynamic property on the widget Qt actually built
        obj = loaded_ui.findChild(QtWidgets.QWidget, widget.object_name)
        assert obj is not None and obj.property("SlicerParameterName") == widget.parameter, widget.object_name
        if widget.widget_class.startswith("Q"):  # the exact class Slicer's connectors compare with type(widget)
            assert obj.metaObject().className() == widget.widget_class
    assert check_binding(MODULE.read_text(encoding="utf-8"), "CTDiffusionParameterNode", UI, version) == []


def test_connector_rules_catch_the_breaks_slicer_would_raise(tmp_path):
    """The checker is not vacuous: the unbounded slider, an unannotated spin box, a Choice-less combo and a
    duplicated objectName (the module's state before issue 10) are each reported."""
    source = textwrap.dedent("""
        @parameterNodeWrapper
        class P:
            guidanceScale: float = 3.0
            length: int = 2000
            seed: Annotated[int, Minimum(0)] = 0
            preset: str = "tiny"
            batchSize: Annotated[int, WithinRange(1, 8)] = 16
    """)
    ui = tmp_path / "p.ui"
    ui.write_text(textwrap.dedent("""
        <ui version="4.0"><widget class="qMRMLWidget" name="P"><layout class="QFormLayout" name="l">
         <item row="0" column="0"><widget class="ctkSliderWidget" name="g">
          <property name="SlicerParameterName" stdset="0"><string>guidanceScale</string></property></widget></item>
         <item row="1" column="0"><widget class="QSpinBox" name="n">
          <property name="minimum"><number>1</number></property>
          <property name="SlicerParameterName" stdset="0"><string>length</string></property></widget></item>
         <item row="2" column="0"><widget class="QSpinBox" name="s">
          <property name="SlicerParameterName" stdset="0"><string>seed</string></property></widget></item>
         <item row="3" column="0"><widget class="QComboBox" name="c">
          <property name="SlicerParameterName" stdset="0"><string>preset</string></property></widget></item>
         <item row="4" column="0"><widget class="QSpinBox" name="b">
          <property name="SlicerParameterName" stdset="0"><string>batchSize</string></property></widget></item>
         <item row="5" column="0"><widget class="QLabel" name="c"/></item>
        </layout></widget></ui>"""))
    errors = "\n".join(check_binding(source, "P", ui, "5.10"))
    assert "Cannot have a connection to ctkSliderWidget where the float types is unbounded." in errors
    assert "n (QSpinBox) -> length: the connector sets the minimum to -2147483648" in errors
    assert "s (QSpinBox) -> seed: the connector sets the maximum to 2147483647" in errors
    assert "requires the Choice annotation" in errors
    assert "default 16 is outside [1, 8]" in errors
    assert "objectName 'c' is used by more than one widget" in errors
    # int on a ctkSliderWidget: Slicer 5.10 binds it, 5.8 has no connector for it
    source_int = "class Q:\n    guidanceScale: Annotated[int, WithinRange(0, 10)] = 3\n"
    ui_int = tmp_path / "q.ui"
    ui_int.write_text(ui.read_text().replace('name="c"/>', 'name="x"/>'))
    by_version = {v: [e for e in check_binding(source_int, "Q", ui_int, v) if e.startswith("g ")] for v in VERSIONS}
    assert by_version["5.10"] == [] and "Unable to create GUI connector" in by_version["5.8"][0]


def test_condition_widgets_and_guidance_slider(loaded_ui):
    from PySide6 import QtWidgets

    group = loaded_ui.findChild(QtWidgets.QGroupBox, "conditionsGroupBox")
    assert group is not None and not group.isVisibleTo(loaded_ui)  # hidden until a conditional model is chosen
    assert isinstance(group.layout(), QtWidgets.QFormLayout)
    _, classes, _, _ = _ui_classes()
    assert classes["guidanceScaleSliderWidget"] == "ctkSliderWidget"


def test_module_compiles_and_imports_nothing_heavy_at_module_level():
    source = MODULE.read_text(encoding="utf-8")
    compile(source, str(MODULE), "exec")
    tree = ast.parse(source)
    for node in tree.body:  # module level only: imports inside functions are the lazy ones
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = [node.module or ""]
        for name in names:
            assert name.split(".")[0] not in HEAVY, f"CTDiffusion.py imports {name} at module level"
            assert not name.startswith("CTDiffusionLib.") or name.split(".")[1] not in ("training", "models",
                                                                                       "diffusion", "evaluation")
    # and nothing heavy hides behind the library modules it imports lazily for the panel
    import subprocess

    libs = ("CTDiffusionLib.jobs", "CTDiffusionLib.jobs.dependencies", "CTDiffusionLib.scene.nodes",
            "CTDiffusionLib.scene.comparison", "CTDiffusionLib.scene.plots", "CTDiffusionLib.scene.sources")
    code = (f"import sys; sys.path.insert(0, {str(REPO)!r}); " + "; ".join(f"import {lib}" for lib in libs)
            + "; print([m for m in ('torch','monai','diffusers','qt','PySide6') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[]", out.stdout


def test_module_metadata_and_credits():
    tree = ast.parse(MODULE.read_text(encoding="utf-8"))
    text = MODULE.read_text(encoding="utf-8")
    # the category in the translation context Slicer's module template uses (Utilities/Templates, 5.8-5.12)
    assert 'self.parent.categories = [translate("qSlicerAbstractCoreModule", "Image Synthesis")]' in text
    for needle in ("master's thesis", "28 prostate CT", "mixed 2D/3D UNet", "student report", "ACDC",
                   "cosine noise schedule"):
        assert needle in text, needle
    classes = {n.name for n in tree.body if isinstance(n, ast.ClassDef)}
    assert {"CTDiffusion", "CTDiffusionWidget", "CTDiffusionLogic", "CTDiffusionTest",
            "CTDiffusionParameterNode"} <= classes
    # the self-test runs the shared scenario function
    assert "run_selftest_scenario" in text
    # the widget polls the child with a QTimer; it never waits on it
    assert "qt.QTimer()" in text and ".wait(" not in text and "communicate(" not in text


def _module_function(name):
    """A top-level function of CTDiffusion.py, compiled on its own (the module imports qt/slicer)."""
    tree = ast.parse(MODULE.read_text(encoding="utf-8"))
    fn = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == name)
    namespace = {"Path": Path}
    exec(compile(ast.Module([fn], []), str(MODULE), "exec"), namespace)
    return namespace[name]


def test_module_finds_the_library_installed_and_from_a_source_checkout(tmp_path):
    """Slicer puts only the module's own folder on sys.path; a source checkout's CTDiffusion/ folder added as an
    additional module path has CTDiffusionLib one level up."""
    library_folder = _module_function("_libraryFolder")
    assert library_folder(MODULE.parent) == REPO  # source checkout
    installed = tmp_path / "qt-scripted-modules"
    (installed / "CTDiffusionLib").mkdir(parents=True)
    (installed / "CTDiffusionLib" / "__init__.py").write_text("")
    assert library_folder(installed) == installed  # installed extension: side by side
    assert library_folder(tmp_path / "elsewhere" / "x") is None
    text = MODULE.read_text(encoding="utf-8")
    # the path is fixed before anything imports CTDiffusionLib
    assert text.index("sys.path.insert(0, str(_LIBRARY))") < text.index("from CTDiffusionLib")


def test_self_test_skips_with_reason_builds_widget_and_stops_through_launcher():
    tree = ast.parse(MODULE.read_text(encoding="utf-8"))
    test_class = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "CTDiffusionTest")
    source = ast.unparse(test_class)
    assert "self.skipTest(" in source and "return" not in source.split("def _requireEngine")[1].split("def ")[0]
    assert "createNewWidgetRepresentation()" in source and "_parameterNodeGuiTag" in source
    assert "run_stop_scenario(" in source and "run_selftest_scenario(" in source
    run_test = next(n for n in test_class.body if isinstance(n, ast.FunctionDef) and n.name == "runTest")
    called = {c.func.attr for c in ast.walk(run_test) if isinstance(c, ast.Call) and isinstance(c.func, ast.Attribute)}
    assert {"test_CTDiffusion_widget", "test_CTDiffusion_stop", "test_CTDiffusion_scenario"} <= called


def _import_module_with_stubs(monkeypatch, tmp_path):
    """CTDiffusion.py imported with stand-ins for Slicer's Python packages (qt, slicer, ...), so the Logic's code
    paths run here: the module-level code, every name the Logic uses, the calls into CTDiffusionLib."""
    import importlib.util
    import types
    from unittest import mock

    def _base(name):
        return type(name, (), {"__init__": lambda self, *args, **kwargs: None})

    slicer_stub = types.ModuleType("slicer")
    slicer_stub.app = mock.MagicMock(defaultScenePath=str(tmp_path), majorVersion=5, minorVersion=10)
    slicer_stub.vtkMRMLScalarVolumeNode = type("vtkMRMLScalarVolumeNode", (), {})
    slicer_stub.util = types.SimpleNamespace(VTKObservationMixin=_base("VTKObservationMixin"))
    modules = {
        "qt": mock.MagicMock(), "ctk": mock.MagicMock(), "slicer": slicer_stub,
        "slicer.i18n": types.SimpleNamespace(tr=lambda text: text, translate=lambda context, text: text),
        "slicer.parameterNodeWrapper": types.SimpleNamespace(WithinRange=lambda lo, hi: ("WithinRange", lo, hi),
                                                             parameterNodeWrapper=lambda cls: cls),
        "slicer.ScriptedLoadableModule": types.SimpleNamespace(
            **{name: _base(name) for name in ("ScriptedLoadableModule", "ScriptedLoadableModuleLogic",
                                              "ScriptedLoadableModuleWidget", "ScriptedLoadableModuleTest")}),
        "slicer.util": slicer_stub.util,
    }
    for name, module in modules.items():
        monkeypatch.setitem(sys.modules, name, module)
    spec = importlib.util.spec_from_file_location("CTDiffusion_under_test", MODULE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class _Params:
    """The parameter node's fields with their defaults (what the wrapper would hold)."""

    def __init__(self, module):
        for name, value in vars(module.CTDiffusionParameterNode).items():
            if not name.startswith("_"):
                setattr(self, name, value)
        self.referenceVolume = None

    def StartModify(self):
        return 0

    def EndModify(self, _):
        pass


def test_logic_builds_the_commands_the_panel_shows(monkeypatch, tmp_path):
    from CTDiffusionLib.cli import build_parser
    from CTDiffusionLib.jobs import panel

    module = _import_module_with_stubs(monkeypatch, tmp_path)
    logic = module.CTDiffusionLogic()
    p = _Params(module)
    p.runFolder, p.sourceMode, p.sourceFolder, p.profile = str(tmp_path / "runs"), "folder", "/data/acdc", "cardiac-masks"
    logic.applyPreset(p, None)
    assert p.preset == panel.default_preset("cardiac-masks")
    assert (p.length, p.batchSize) == (panel.preset_panel("cardiac-masks", p.preset).length,
                                       panel.preset_panel("cardiac-masks", p.preset).batch_size)
    logic.applyPreset(p, "tiny2d")
    p.batchSize, p.conditioned = 3, True
    command, run_dir = logic.trainingCommand(p, [])
    args = build_parser().parse_args(command.argv[command.argv.index("-m") + 2:])
    assert (args.preset, args.batch_size, args.steps, args.lr, args.conditions) == ("tiny2d", 3, None, None,
                                                                                   "group,phase")
    assert run_dir.parent == tmp_path / "runs" and args.out == str(run_dir)
    logic.applySampler(p, "ddpm")
    assert p.samplingSteps == 1000
    command, out = logic.generationCommand(p, str(tmp_path / "model"), {"group": "DCM"})
    args = build_parser().parse_args(command.argv[command.argv.index("-m") + 2:])
    assert (args.sampler, args.steps, args.condition, args.guidance_scale) == ("ddpm", None, "group=DCM", 3.0)
    p.lastGeneratedFolder = str(out)
    command, report = logic.evaluationCommand(p, [], [])
    args = build_parser().parse_args(command.argv[command.argv.index("-m") + 2:])
    assert (args.real, args.generated, args.out) == ("/data/acdc", str(out), str(report))
    assert logic.resumableRuns(p) == []
    assert module._unsupportedSlicer() is None
