"""Run the module's real widget class (CTDiffusion/CTDiffusion.py) outside Slicer: the names the module imports
(`qt`, `ctk`, `slicer.app`, `slicer.util`, `slicer.i18n`, `slicer.parameterNodeWrapper`,
`slicer.ScriptedLoadableModule`) on top of PySide6 (offscreen) and slicer-core's real MRML.

What it models
- Qt itself is real: every widget, layout, signal, QComboBox/QInputDialog/QTimer/QSettings behaviour is PySide6's.
  Only PythonQt's spellings are added (`PythonQtStyle`): a Qt property read or written as an attribute
  (`label.text = ...`, `combo.currentData`), `obj.connect("signal(int)", slot)` with a C++ signature, `obj.name`
  for the objectName, and `exec_()`; `qt.QInputDialog.getItem(...)` returns only the item, as PythonQt does
  (it cannot pass the `bool *ok` out-parameter, so a rejected dialog returns the current item, qinputdialog.cpp).
- The CTK / qMRML widgets the .ui uses are small PySide6 classes with the properties and signals the module uses
  (real Qt signals, so connections, emission order and blocking behave like Qt); the node combo boxes list the
  scene's nodes of their `nodeTypes`.
- `parameterNodeWrapper`: typed fields stored as parameters of a vtkMRMLScriptedModuleNode (real MRML), defaults
  written on first wrap, WithinRange checked on write, StartModify/EndModify, and `connectGui` binding the .ui's
  widgets that carry `SlicerParameterName` (spin boxes, ctkSliderWidget, qMRMLNodeComboBox) both ways.
- `slicer.app`: versions, default scene path, testing flag, processEvents, aboutToQuit, the application logic of
  CTDiffusionLib.scene.core's booted core application. `slicer.util`: the real slicer-core module, with the
  dialog functions replaced by `Dialogs` (records each message and answers from a queue), loadUI through the
  adapter's loader, and no pip.

What it does not model
- The layout manager and views (`slicer.app.layoutManager()` is None; the MRML layout/view nodes are real), the
  Reload-and-Test developer section, module panel/enter/exit management, translations (tr returns the text).
- Which widget/type pairs Slicer's own connectors accept and what ranges they impose: that is
  slicer_connector_rules.py, read from Slicer's guiConnectors.py.
- PythonQt's conversion corner cases beyond the spellings above (a method call that PythonQt would reject
  because it is a property works here too).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import types
import typing
import unittest
from collections import deque
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from PySide6 import QtCore, QtGui, QtUiTools, QtWidgets  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------ PythonQt spellings
class PythonQtStyle:
    """Mixed into a PySide6 class: the attribute spellings PythonQt gives every QObject."""

    def __getattribute__(self, name):
        if name[:1] != "_" and name not in _PLAIN:
            meta = QtCore.QObject.metaObject(self)
            key = (id(self), name)
            # a property whose getter is virtual (QProgressBar::text) makes Shiboken look the name up again, for a
            # Python override, while the property is read: that inner lookup gets the C++ method
            if meta.indexOfProperty(name) >= 0 and key not in _READING:
                _READING.add(key)
                try:
                    return QtCore.QObject.property(self, name)
                finally:
                    _READING.discard(key)
        own = _OWN.get(name)
        if own is not None:  # PythonQt's spellings below (Shiboken's lookup would find QObject's own connect)
            return own.__get__(self, type(self))
        return super().__getattribute__(name)

    def __setattr__(self, name, value):
        if name[:1] != "_" and QtCore.QObject.metaObject(self).indexOfProperty(name) >= 0:
            QtCore.QObject.setProperty(self, name, value)
        else:
            super().__setattr__(name, value)

    def connect(self, signature, slot):
        """PythonQt: widget.connect("valueChanged(int)", slot); the signature must name a signal of the class."""
        return self._signal(signature).connect(slot)

    def disconnect(self, signature, slot):
        return self._signal(signature).disconnect(slot)

    def _signal(self, signature):
        meta = QtCore.QObject.metaObject(self)
        normalized = QtCore.QMetaObject.normalizedSignature(signature).data().decode()
        found = [meta.method(i) for i in range(meta.methodCount())
                 if meta.method(i).methodType() == QtCore.QMetaMethod.Signal
                 and meta.method(i).methodSignature().data().decode() == normalized]
        if not found:
            raise AttributeError(f"{type(self).__name__} has no signal {signature}")
        return super().__getattribute__(signature.split("(")[0])

    @property
    def name(self):
        return QtCore.QObject.objectName(self)

    def exec_(self, *args):
        return self.exec(*args)


_PLAIN = {"name", "connect", "disconnect", "exec_", "metaObject", "property", "setProperty"}
_READING: set = set()  # (object id, property name) being read right now
_OWN = {name: value for name, value in vars(PythonQtStyle).items() if not name.startswith("__")}
_FLAVOURED: dict = {}


def flavoured(cls):
    """The PythonQt-flavoured subclass of a PySide6 QObject class."""
    if issubclass(cls, PythonQtStyle):
        return cls
    if cls not in _FLAVOURED:
        _FLAVOURED[cls] = type(cls.__name__, (PythonQtStyle, cls), {"__module__": "qt"})
    return _FLAVOURED[cls]


# --------------------------------------------------------------------------------- CTK and qMRML widget models
class ctkCollapsibleButton(PythonQtStyle, QtWidgets.QWidget):
    contentsCollapsed = QtCore.Signal(bool)

    def __init__(self, parent=None):
        QtWidgets.QWidget.__init__(self, parent)
        self._text, self._collapsed = "", False

    def _set_collapsed(self, value):
        if bool(value) != self._collapsed:
            self._collapsed = bool(value)
            self.contentsCollapsed.emit(self._collapsed)

    text = QtCore.Property(str, lambda self: self._text, lambda self, v: setattr(self, "_text", v))
    collapsed = QtCore.Property(bool, lambda self: self._collapsed, _set_collapsed)


class ctkPathLineEdit(PythonQtStyle, QtWidgets.QWidget):
    Dirs, Files = 0x001, 0x002  # ctkPathLineEdit::Filter values the module uses
    currentPathChanged = QtCore.Signal(str)

    def __init__(self, parent=None):
        QtWidgets.QWidget.__init__(self, parent)
        self._path, self._filters = "", 0

    def _set_path(self, value):
        if value != self._path:
            self._path = value
            self.currentPathChanged.emit(value)

    currentPath = QtCore.Property(str, lambda self: self._path, _set_path)
    filters = QtCore.Property(int, lambda self: self._filters, lambda self, v: setattr(self, "_filters", int(v)))

    def addCurrentPathToHistory(self):
        pass


class ctkSliderWidget(PythonQtStyle, QtWidgets.QWidget):
    valueChanged = QtCore.Signal(float)

    def __init__(self, parent=None):
        QtWidgets.QWidget.__init__(self, parent)
        self._value, self._minimum, self._maximum, self._step, self._decimals = 0.0, 0.0, 99.0, 1.0, 2

    def _set_value(self, value):
        value = min(max(float(value), self._minimum), self._maximum)
        if value != self._value:
            self._value = value
            self.valueChanged.emit(value)

    value = QtCore.Property(float, lambda self: self._value, _set_value)
    minimum = QtCore.Property(float, lambda self: self._minimum, lambda self, v: setattr(self, "_minimum", float(v)))
    maximum = QtCore.Property(float, lambda self: self._maximum, lambda self, v: setattr(self, "_maximum", float(v)))
    singleStep = QtCore.Property(float, lambda self: self._step, lambda self, v: setattr(self, "_step", float(v)))
    decimals = QtCore.Property(int, lambda self: self._decimals, lambda self, v: setattr(self, "_decimals", int(v)))


class qMRMLWidget(PythonQtStyle, QtWidgets.QWidget):
    def __init__(self, parent=None):
        QtWidgets.QWidget.__init__(self, parent)
        self._scene = None

    def setMRMLScene(self, scene):
        """Like qMRMLWidget: the scene reaches every qMRML child (Qt's mrmlSceneChanged connections in the .ui)."""
        self._scene = scene
        for child in self.findChildren(QtWidgets.QWidget):
            if child is not self and hasattr(child, "setMRMLScene"):
                child._scene = scene

    def mrmlScene(self):
        return self._scene


class qMRMLNodeComboBox(PythonQtStyle, QtWidgets.QWidget):
    currentNodeChanged = QtCore.Signal(object)

    def __init__(self, parent=None):
        QtWidgets.QWidget.__init__(self, parent)
        self._scene, self._types, self._hidden, self._current = None, [], [], None
        self._noneEnabled = False

    setMRMLScene = qMRMLWidget.setMRMLScene
    mrmlScene = qMRMLWidget.mrmlScene
    nodeTypes = QtCore.Property("QStringList", lambda self: self._types, lambda self, v: setattr(self, "_types", list(v)))
    hideChildNodeTypes = QtCore.Property("QStringList", lambda self: self._hidden,
                                         lambda self, v: setattr(self, "_hidden", list(v)))
    noneEnabled = QtCore.Property(bool, lambda self: self._noneEnabled,
                                  lambda self, v: setattr(self, "_noneEnabled", bool(v)))

    def nodes(self) -> list:
        """The scene's nodes this combo lists: of a `nodeTypes` class, not of a hidden child class."""
        if self._scene is None:
            return []
        found = []
        for i in range(self._scene.GetNumberOfNodes()):
            node = self._scene.GetNthNode(i)
            if any(node.IsA(t) for t in self._types) and not any(
                    node.IsA(h) and h not in self._types for h in self._hidden):
                found.append(node)
        return found

    def currentNode(self):
        return self._current

    def currentNodeID(self):
        return self._current.GetID() if self._current is not None else ""

    def setCurrentNode(self, node):
        if node is not self._current:
            self._current = node
            self.currentNodeChanged.emit(node)


class qMRMLCheckableNodeComboBox(qMRMLNodeComboBox):
    checkedNodesChanged = QtCore.Signal()

    def __init__(self, parent=None):
        qMRMLNodeComboBox.__init__(self, parent)
        self._checked = []

    def setCheckState(self, node, state):
        checked = state == QtCore.Qt.Checked
        if checked and node not in self._checked:
            self._checked.append(node)
        elif not checked and node in self._checked:
            self._checked.remove(node)
        else:
            return
        self.checkedNodesChanged.emit()

    def checkState(self, node):
        return QtCore.Qt.Checked if node in self._checked else QtCore.Qt.Unchecked

    def checkedNodes(self):
        return [n for n in self.nodes() if n in self._checked]


class qMRMLTableView(PythonQtStyle, QtWidgets.QTableView):
    def __init__(self, parent=None):
        QtWidgets.QTableView.__init__(self, parent)
        self._table, self._scene = None, None

    setMRMLScene = qMRMLWidget.setMRMLScene

    def setMRMLTableNode(self, node):
        self._table = node

    def mrmlTableNode(self):
        return self._table


CUSTOM_WIDGETS = (ctkCollapsibleButton, ctkPathLineEdit, ctkSliderWidget, qMRMLWidget, qMRMLNodeComboBox,
                  qMRMLCheckableNodeComboBox, qMRMLTableView)


class QUiLoader(QtUiTools.QUiLoader):
    """Loads a .ui creating every widget and layout as its PythonQt-flavoured class (CTK/qMRML: the models).
    Objects made in Python are owned by their wrapper, so the loaded widget keeps every wrapper it was built from."""

    CUSTOM = {cls.__name__: cls for cls in CUSTOM_WIDGETS}

    def __init__(self, parent=None):
        super().__init__(parent)
        self._created = []

    def createWidget(self, className, parent=None, name=""):
        cls = self.CUSTOM.get(className) or getattr(QtWidgets, className, None)
        if cls is None:
            return super().createWidget(className, parent, name)
        widget = flavoured(cls)(parent)
        widget.setObjectName(name)
        self._created.append(widget)
        return widget

    def createLayout(self, className, parent=None, name=""):
        # as QFormBuilder::createLayout: a layout made for a widget is that widget's layout
        cls = flavoured(getattr(QtWidgets, className))
        layout = cls(parent) if isinstance(parent, QtWidgets.QWidget) else cls()
        layout.setObjectName(name)
        self._created.append(layout)
        return layout

    def load(self, device, parent=None):
        widget = super().load(device, parent)
        if widget is not None:
            widget._adapterCreated = self._created
        return widget


class QInputDialog(PythonQtStyle, QtWidgets.QInputDialog):
    @staticmethod
    def getItem(parent, title, label, items, current=0, editable=True, *args):
        """PythonQt's form: the item only (PySide6 also returns `ok`). Rejected -> the current item."""
        item, _ok = QtWidgets.QInputDialog.getItem(parent, title, label, list(items), current, editable, *args)
        return item


# ----------------------------------------------------------------------------------------- qt and ctk modules
def _qt_module() -> types.ModuleType:
    qt = types.ModuleType("qt")
    qt.__doc__ = "PythonQt's qt module, modelled on PySide6 (Testing/slicer_qt_adapter.py)."
    special = {"QUiLoader": QUiLoader, "QInputDialog": QInputDialog}
    sources = (QtCore, QtGui, QtWidgets, QtUiTools)

    def lookup(name):
        if name in special:
            return special[name]
        for source in sources:
            value = getattr(source, name, None)
            if value is not None:
                if isinstance(value, type) and issubclass(value, QtCore.QObject):
                    value = flavoured(value)
                setattr(qt, name, value)
                return value
        raise AttributeError(f"module 'qt' has no attribute {name!r}")

    qt.__getattr__ = lookup
    return qt


def _ctk_module() -> types.ModuleType:
    ctk = types.ModuleType("ctk")
    for cls in CUSTOM_WIDGETS:
        if cls.__name__.startswith("ctk"):
            setattr(ctk, cls.__name__, cls)
    return ctk


# --------------------------------------------------------------------------------- parameterNodeWrapper model
class WithinRange:
    def __init__(self, minimum, maximum):
        self.minimum, self.maximum = minimum, maximum

    def validate(self, name, value):
        if not self.minimum <= value <= self.maximum:
            raise ValueError(f"{name}={value} is outside [{self.minimum}, {self.maximum}]")


def _field_specs(cls) -> dict:
    """{name: (type, validators, default)} from the class annotations (Annotated[...] unwrapped)."""
    hints = typing.get_type_hints(cls, include_extras=True)
    specs = {}
    for name, hint in hints.items():
        validators = []
        if typing.get_origin(hint) is typing.Annotated:
            hint, *validators = typing.get_args(hint)
        specs[name] = (hint, validators, cls.__dict__.get(name))
    return specs


def _is_node_type(kind) -> bool:
    return isinstance(kind, type) and kind.__name__.startswith("vtkMRML")


_VALUE_WIDGETS = (QtWidgets.QSpinBox, QtWidgets.QDoubleSpinBox, ctkSliderWidget)  # bound through "value"


def parameterNodeWrapper(cls):
    """A class whose instances wrap a vtkMRMLScriptedModuleNode and expose typed fields (see the module doc)."""
    specs = _field_specs(cls)

    def __init__(self, node):
        object.__setattr__(self, "parameterNode", node)
        object.__setattr__(self, "_guis", {})
        wasModified = node.StartModify()
        for name, (kind, _validators, default) in specs.items():
            if not _is_node_type(kind) and not node.GetParameter(name):
                node.SetParameter(name, json.dumps(default))
        node.EndModify(wasModified)

    def getter(name, kind):
        def get(self):
            if _is_node_type(kind):
                return self.parameterNode.GetNodeReference(name)
            return kind(json.loads(self.parameterNode.GetParameter(name)))
        return get

    def setter(name, kind, validators):
        def set_(self, value):
            if _is_node_type(kind):
                self.parameterNode.SetNodeReferenceID(name, value.GetID() if value is not None else None)
                return
            value = kind(value)
            for validator in validators:
                validator.validate(name, value)
            self.parameterNode.SetParameter(name, json.dumps(value))
        return set_

    def connectGui(self, ui):
        """Binds every widget of `ui` whose SlicerParameterName names a field; returns a tag for disconnectGui."""
        bindings = []
        widgets = [w for w in vars(ui).values() if isinstance(w, QtCore.QObject)]
        for widget in widgets:
            name = QtCore.QObject.property(widget, "SlicerParameterName")
            if not name:
                continue
            if name not in specs:
                raise ValueError(f"{widget.objectName()}: no parameter {name!r}")
            kind = specs[name][0]
            if isinstance(widget, qMRMLNodeComboBox):
                signal = widget.currentNodeChanged
                write = (lambda n, name=name: setattr(self, name, n))
                read = (lambda w=widget, name=name: w.setCurrentNode(getattr(self, name)))
            else:
                if not isinstance(widget, _VALUE_WIDGETS):
                    raise TypeError(f"{widget.objectName()}: the adapter binds no {type(widget).__name__}")
                signal = widget.valueChanged
                write = (lambda v, name=name: setattr(self, name, v))
                read = (lambda w=widget, name=name: QtCore.QObject.setProperty(w, "value", getattr(self, name)))
            read()
            signal.connect(write)
            bindings.append((widget, signal, write, read))

        def refresh(caller, event):
            for widget, _signal, _write, read in bindings:
                blocked = widget.blockSignals(True)
                try:
                    read()
                finally:
                    widget.blockSignals(blocked)

        tag = self.parameterNode.AddObserver("ModifiedEvent", refresh)
        self._guis[tag] = bindings
        return tag

    def disconnectGui(self, tag):
        for _widget, signal, write, _read in self._guis.pop(tag, []):
            signal.disconnect(write)
        self.parameterNode.RemoveObserver(tag)

    namespace = {"__init__": __init__, "connectGui": connectGui, "disconnectGui": disconnectGui,
                 "StartModify": lambda self: self.parameterNode.StartModify(),
                 "EndModify": lambda self, wasModified: self.parameterNode.EndModify(wasModified),
                 "__doc__": cls.__doc__}
    for name, (kind, validators, _default) in specs.items():
        namespace[name] = property(getter(name, kind), setter(name, kind, validators))
    return type(cls.__name__, (), namespace)


# -------------------------------------------------------------------------------- ScriptedLoadableModule model
class ScriptedLoadableModule:
    def __init__(self, parent):
        self.parent = parent
        self.moduleName = type(self).__name__


class ScriptedLoadableModuleWidget:
    def __init__(self, parent=None):
        self.moduleName = type(self).__name__[: -len("Widget")]
        if parent is None:  # as Slicer's code does for a widget made outside a module panel
            parent = qMRMLWidget()
            parent.setLayout(flavoured(QtWidgets.QVBoxLayout)())
        self.parent = parent
        self.parent.isEntered = True
        self.layout = parent.layout()

    def resourcePath(self, filename):
        module = sys.modules[type(self).__module__]
        return str(Path(module.__file__).resolve().parent / "Resources" / filename)

    def setup(self):
        pass  # the developer section (Reload / Reload and Test) is not modelled


class ScriptedLoadableModuleLogic:
    def __init__(self, parent=None):
        self.moduleName = type(self).__name__[: -len("Logic")]

    def getParameterNode(self):
        """The scene's singleton vtkMRMLScriptedModuleNode of this module (created once), as in Slicer."""
        import slicer

        node = slicer.mrmlScene.GetSingletonNode(self.moduleName, "vtkMRMLScriptedModuleNode")
        if node is None:
            node = slicer.vtkMRMLScriptedModuleNode()
            node.SetSingletonTag(self.moduleName)
            node.SetName(self.moduleName)
            node = slicer.mrmlScene.AddNode(node)
        return node


class ScriptedLoadableModuleTest(unittest.TestCase):
    """A unittest.TestCase, as Slicer's; delayDisplay logs instead of showing a message box."""

    def delayDisplay(self, message, msec=0):
        logging.info(message)


# -------------------------------------------------------------------------------------- slicer.app and dialogs
class Application:
    """What the module asks of slicer.app (qSlicerApplication)."""

    def __init__(self, qapp, version, scene_path):
        self.qapp = qapp
        self.majorVersion, self.minorVersion = version
        self.defaultScenePath = str(scene_path)
        self.testing = False

    def testingEnabled(self):
        return self.testing

    def processEvents(self):
        self.qapp.processEvents()

    def connect(self, signature, slot):
        return QtCore.QObject.connect(self.qapp, QtCore.SIGNAL(signature), slot)

    def applicationLogic(self):
        from CTDiffusionLib.scene import core

        return core._CORE_APP.app_logic  # noqa: SLF001 - the booted core application stands in for Slicer's

    def layoutManager(self):
        return None


class Dialogs:
    """slicer.util's message boxes, recorded; a question takes its answer from `answers` (default: yes/OK)."""

    def __init__(self):
        self.shown: list[tuple[str, str]] = []
        self.answers: deque = deque()
        self.pip: list[tuple[str, object, dict]] = []  # (function, requirements, keyword arguments) of each install
        self.translations: list[tuple[str, str]] = []  # (context, text) of each slicer.i18n.translate call

    def _ask(self, kind, text):
        self.shown.append((kind, str(text)))
        return self.answers.popleft() if self.answers else True

    def install(self, monkeypatch, util):
        for kind in ("confirmOkCancelDisplay", "confirmYesNoDisplay"):
            monkeypatch.setattr(util, kind, lambda text, *a, kind=kind, **k: self._ask(kind, text))
        for kind in ("errorDisplay", "warningDisplay", "infoDisplay"):
            monkeypatch.setattr(util, kind, lambda text, *a, kind=kind, **k: self.shown.append((kind, str(text))))
        monkeypatch.setattr(util, "showStatusMessage", lambda text, *a, **k: self.shown.append(("status", text)))

    def texts(self, kind) -> list[str]:
        return [text for k, text in self.shown if k == kind]


class ModuleRepresentation:
    """slicer.modules.<name>: createNewWidgetRepresentation() builds the module's widget class as Slicer's
    qSlicerScriptedLoadableModuleWidget does (setup() once) and returns its panel, whose self() is the widget."""

    def __init__(self, module_name):
        self.module_name = module_name

    def createNewWidgetRepresentation(self):
        module = sys.modules[self.module_name]
        widget = getattr(module, self.module_name + "Widget")()
        widget.setup()
        panel = widget.parent
        panel.self = lambda: widget
        return panel


class _WaitCursor:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def packaging_module(dialogs: Dialogs) -> types.ModuleType:
    """Slicer 5.12's slicer.packaging, as far as pip_ensure's prompts go (Base/Python/slicer/packaging.py at v5.12.3):
    with prompt_install it asks through slicer.util.confirmOkCancelDisplay and raises RuntimeError on "No"; the
    install itself is recorded. Registered in sys.modules only: like Slicer, nothing imports it at startup."""
    packaging = types.ModuleType("slicer.packaging")

    def pip_ensure(requirements, constraints=None, skip_packages=None, prompt_install=True, prompt_restart=True,
                   requester=None, skip_in_testing=True, show_progress=True):
        import slicer.util

        if prompt_install and not slicer.util.confirmOkCancelDisplay("Python packages need to be installed."):
            raise RuntimeError("User declined package installation")
        dialogs.pip.append(("pip_ensure", requirements, {
            "constraints": constraints, "prompt_install": prompt_install, "prompt_restart": prompt_restart,
            "requester": requester, "skip_in_testing": skip_in_testing}))

    packaging.pip_ensure = pip_ensure
    return packaging


def install(monkeypatch, tmp_path, version=(5, 10)):
    """Make `import qt, ctk, slicer...` inside CTDiffusion.py resolve to the adapter; returns (app, dialogs).
    The scene is the caller's (slicer.mrmlScene, e.g. the core_app fixture's)."""
    import slicer
    import slicer.util as util

    qapp = QtWidgets.QApplication.instance() or QtWidgets.QApplication([])
    QtCore.QSettings.setDefaultFormat(QtCore.QSettings.IniFormat)  # the user's real settings stay untouched
    QtCore.QSettings.setPath(QtCore.QSettings.IniFormat, QtCore.QSettings.UserScope, str(tmp_path / "settings"))
    qapp.setOrganizationName("CTDiffusionAdapterTest")
    app = Application(qapp, version, tmp_path / "scenes")
    dialogs = Dialogs()
    monkeypatch.setitem(sys.modules, "qt", _qt_module())
    monkeypatch.setitem(sys.modules, "ctk", _ctk_module())
    monkeypatch.setitem(sys.modules, "slicer.i18n", types.SimpleNamespace(
        tr=lambda text: text, translate=lambda context, text: dialogs.translations.append((context, text)) or text))
    monkeypatch.setitem(sys.modules, "slicer.parameterNodeWrapper", types.SimpleNamespace(
        parameterNodeWrapper=parameterNodeWrapper, WithinRange=WithinRange))
    monkeypatch.setitem(sys.modules, "slicer.ScriptedLoadableModule", types.SimpleNamespace(
        ScriptedLoadableModule=ScriptedLoadableModule, ScriptedLoadableModuleWidget=ScriptedLoadableModuleWidget,
        ScriptedLoadableModuleLogic=ScriptedLoadableModuleLogic, ScriptedLoadableModuleTest=ScriptedLoadableModuleTest))
    monkeypatch.setattr(slicer, "app", app, raising=False)
    monkeypatch.setattr(slicer, "modules", types.SimpleNamespace(ctdiffusion=ModuleRepresentation("CTDiffusion")),
                        raising=False)
    monkeypatch.setattr(util, "mainWindow", lambda: None)
    monkeypatch.setattr(util, "WaitCursor", _WaitCursor)
    monkeypatch.setattr(util, "pip_install", lambda requirements, **k: dialogs.pip.append(("pip_install", requirements, k)))
    dialogs.install(monkeypatch, util)
    if version >= (5, 12):
        monkeypatch.setitem(sys.modules, "slicer.packaging", packaging_module(dialogs))
    return app, dialogs


def import_module(monkeypatch, name="CTDiffusion"):
    """CTDiffusion/CTDiffusion.py imported fresh under the adapter (after install())."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, REPO / "CTDiffusion" / "CTDiffusion.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, name, module)
    spec.loader.exec_module(module)
    return module
