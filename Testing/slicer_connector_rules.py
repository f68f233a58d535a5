"""Stand-in for Slicer's parameterNodeWrapper GUI binding, so tests can tell whether `connectGui` would bind the
module's widgets inside the real application (which cannot run here).

The rules were read from Slicer's own source, Base/Python/slicer/parameterNodeWrapper/guiConnectors.py and
wrapper.py at tags v5.8.1 and v5.10.0:
- `createGuiConnector` picks the first registered connector whose `canRepresent(widget, datatype)` holds; the
  checks use the exact widget class (`type(widget) in (...)`), so the class written in the .ui decides.
- int + QSlider/QSpinBox: QSlider needs WithinRange or Minimum+Maximum ("Cannot have a connection to QSlider
  where the int type is unbounded."); a side without annotation is overwritten with -2**31 / 2**31-1.
- float (5.10: also int) + QDoubleSpinBox/ctkSliderWidget/qMRMLSliderWidget/ctkDoubleSlider/ctkDoubleSpinBox/
  qMRMLSpinBox: ctkSliderWidget and qMRMLSliderWidget need bounds ("Cannot have a connection to ctkSliderWidget
  where the float types is unbounded."); a side without annotation becomes -inf / inf.
- QComboBox/ctkComboBox + int/float/str/bool needs a Choice annotation; + Enum works without.
- `_connectParametersToGui` creates EVERY connector (a dict comprehension) before connecting any, so one
  raising connector leaves the whole panel unbound.
- `connectGui(self.ui)` with the object from `slicer.util.childWidgetVariables` walks attributes named after
  objectNames: two widgets with the same objectName collapse into one.
On top of Slicer's own errors, this checker reports what Slicer does silently: a .ui range replaced by the
connector's, and a default value outside the annotated range (rejected by the validator on first write).
"""

from __future__ import annotations

import ast
import collections
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

INT_MIN, INT_MAX = -(2 ** 31), 2 ** 31 - 1
BOOL_WIDGETS = {"QCheckBox", "ctkCheckBox", "QPushButton"}
BOOL_WIDGETS_510 = {"ctkCheckablePushButton"}
INT_WIDGETS = {"QSlider", "QSpinBox"}
FLOAT_WIDGETS = {"QDoubleSpinBox", "ctkSliderWidget", "qMRMLSliderWidget", "ctkDoubleSlider", "ctkDoubleSpinBox",
                 "qMRMLSpinBox"}
SLIDERS_NEEDING_BOUNDS = {"ctkSliderWidget", "qMRMLSliderWidget"}
COMBO_WIDGETS = {"QComboBox", "ctkComboBox"}
STR_WIDGETS = {"QLineEdit", "QLabel", "QTextEdit"}
PATH_WIDGETS = {"ctkPathLineEdit", "ctkDirectoryButton"}
PATH_TYPES = {"Path", "pathlib.Path", "PurePath", "pathlib.PurePath", "PosixPath", "WindowsPath"}
VERSIONS = ("5.8", "5.10")


@dataclass
class Parameter:
    name: str
    type: str  # "int", "float", "str", "bool", "Path", "node:vtkMRMLScalarVolumeNode", an enum/other name
    validators: dict = field(default_factory=dict)  # "WithinRange" -> (lo, hi), "Minimum" -> (lo,), "Choice" -> (...)
    default: object = None


@dataclass
class BoundWidget:
    object_name: str
    widget_class: str
    parameter: str
    properties: dict


def _literal(node):
    try:
        return ast.literal_eval(node)
    except ValueError:
        if isinstance(node, ast.BinOp):  # 2**31 - 1 and the like
            return eval(compile(ast.Expression(node), "<annotation>", "eval"), {"__builtins__": {}})  # noqa: S307
        if isinstance(node, (ast.Name, ast.Subscript, ast.Attribute)):  # a default read from the engine's tables
            import CTDiffusionLib.samplers as tables

            return eval(compile(ast.Expression(node), "<default>", "eval"), {"__builtins__": {}, **vars(tables)})  # noqa: S307
        raise


def _base_type(node) -> str:
    text = ast.unparse(node)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):  # X | None
        parts = [p for p in (_base_type(node.left), _base_type(node.right)) if p != "None"]
        return parts[0] if len(parts) == 1 else text
    if text.startswith("slicer.vtkMRML") or text.startswith("vtkMRML"):
        return "node:" + text.split(".")[-1]
    if text in PATH_TYPES:
        return "Path"
    return text


def parameter_node_fields(source: str, class_name: str) -> dict[str, Parameter]:
    """The typed fields of a @parameterNodeWrapper class, read from source (the module itself imports slicer)."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ClassDef) and node.name == class_name:
            break
    else:
        raise LookupError(f"class {class_name} not found")
    fields = {}
    for stmt in node.body:
        if not isinstance(stmt, ast.AnnAssign):
            continue
        ann, validators = stmt.annotation, {}
        if isinstance(ann, ast.Subscript) and ast.unparse(ann.value).split(".")[-1] == "Annotated":
            elements = ann.slice.elts if isinstance(ann.slice, ast.Tuple) else [ann.slice]
            ann = elements[0]
            for extra in elements[1:]:
                if isinstance(extra, ast.Call):
                    validators[ast.unparse(extra.func).split(".")[-1]] = tuple(_literal(a) for a in extra.args)
        default = _literal(stmt.value) if stmt.value is not None else None
        fields[stmt.target.id] = Parameter(stmt.target.id, _base_type(ann), validators, default)
    return fields


def _property_value(prop):
    child = prop[0] if len(prop) else None
    if child is None:
        return None
    if child.tag in ("number", "double"):
        return float(child.text)
    if child.tag == "bool":
        return child.text == "true"
    if child.tag == "stringlist":
        return [s.text for s in child]
    return child.text


def ui_widgets(ui_path) -> tuple[list[BoundWidget], list[str]]:
    """Widgets that carry a SlicerParameterName, and every objectName used more than once in the .ui."""
    tree = ET.parse(ui_path)
    names = collections.Counter(w.get("name") for w in tree.iter("widget"))
    bound = []
    for w in tree.iter("widget"):
        props = {p.get("name"): _property_value(p) for p in w.findall("property")}
        if props.get("SlicerParameterName"):
            bound.append(BoundWidget(w.get("name"), w.get("class"), props["SlicerParameterName"], props))
    return bound, sorted(n for n, count in names.items() if count > 1)


def _bounds(p: Parameter):
    if "WithinRange" in p.validators:
        lo, hi = p.validators["WithinRange"]
        return lo, hi, True
    lo = p.validators.get("Minimum", (None,))[0]
    hi = p.validators.get("Maximum", (None,))[0]
    return lo, hi, lo is not None and hi is not None


def _numeric_connector(widget: BoundWidget, p: Parameter, version: str) -> list[str]:
    """What QSliderOrSpinBoxToIntConnector / QDoubleSpinBoxCtkSliderWidgetToFloat(Int)Connector do."""
    errors = []
    lo, hi, bounded = _bounds(p)
    is_int_widget = widget.widget_class in INT_WIDGETS
    if is_int_widget and widget.widget_class == "QSlider" and not bounded:
        return ["Cannot have a connection to QSlider where the int type is unbounded."]
    if not is_int_widget and widget.widget_class in SLIDERS_NEEDING_BOUNDS and not bounded:
        return ["Cannot have a connection to ctkSliderWidget where the float types is unbounded."]
    unbounded = (INT_MIN, INT_MAX) if is_int_widget else (float("-inf"), float("inf"))
    final = (unbounded[0] if lo is None else lo, unbounded[1] if hi is None else hi)
    ui_range = (widget.properties.get("minimum"), widget.properties.get("maximum"))
    for side, annotated, value, ui_value in (("minimum", lo, final[0], ui_range[0]),
                                             ("maximum", hi, final[1], ui_range[1])):
        if annotated is None:
            errors.append(f"the connector sets the {side} to {value} (the .ui says {ui_value}): annotate "
                          f"{p.name} with WithinRange/Minimum/Maximum")
        elif ui_value is not None and float(ui_value) != float(value):
            errors.append(f"the .ui {side} {ui_value} is replaced by the annotation's {value}")
    if p.default is not None and not (final[0] <= p.default <= final[1]):
        errors.append(f"default {p.default} is outside [{final[0]}, {final[1]}]")
    return errors


def connector_errors(widget: BoundWidget, p: Parameter, version: str) -> list[str]:
    """The errors creating this widget's connector raises in Slicer `version` (plus the silent surprises)."""
    cls, kind = widget.widget_class, p.type
    if kind == "bool" and (cls in BOOL_WIDGETS or (version != "5.8" and cls in BOOL_WIDGETS_510)):
        return []
    if kind == "int" and cls in INT_WIDGETS:
        return _numeric_connector(widget, p, version)
    if cls in FLOAT_WIDGETS and (kind == "float" or (kind == "int" and version != "5.8")):
        return _numeric_connector(widget, p, version)
    if cls in COMBO_WIDGETS and kind in ("int", "float", "str", "bool"):
        return [] if "Choice" in p.validators else [
            "ComboBoxToStringableConnector requires the Choice annotation to be used."]
    if kind == "str" and cls in STR_WIDGETS:
        return []
    if kind == "Path" and cls in PATH_WIDGETS:
        return []
    if kind.startswith("node:") and cls == "qMRMLNodeComboBox":
        return []
    return [f"Unable to create GUI connector from datatype '{kind}' to widget type '{cls}'."]


def check_binding(module_source: str, class_name: str, ui_path, version: str = "5.10") -> list[str]:
    """Every reason `parameterNode.connectGui(self.ui)` would fail (or silently misbehave) in Slicer `version`.
    Empty means every bound widget connects with the range the .ui shows."""
    fields = parameter_node_fields(module_source, class_name)
    bound, duplicates = ui_widgets(ui_path)
    errors = [f"objectName {name!r} is used by more than one widget (childWidgetVariables keeps one)"
              for name in duplicates]
    for widget in bound:
        p = fields.get(widget.parameter)
        if p is None:
            errors.append(f"{widget.object_name}: SlicerParameterName {widget.parameter!r} is not a parameter")
            continue
        errors += [f"{widget.object_name} ({widget.widget_class}) -> {p.name}: {e}"
                   for e in connector_errors(widget, p, version)]
    return errors
