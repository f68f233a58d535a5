"""The side-by-side comparison: real data in the left slice view, synthetic in the right one, both axial, linked
slice navigation, the same window/level; a plot view and a table view under them for the loss curve, metrics
and histograms. All of it is MRML state (layout node, slice/composite nodes, display nodes, plot/table views).
"""

from __future__ import annotations

from dataclasses import dataclass

import slicer

from CTDiffusionLib.scene.core import after_layout_change, get_scene
from CTDiffusionLib.scene.nodes import is_segmentation

#: Custom layout id (registered with the layout node; Slicer's own layouts are < 100).
LAYOUT_ID = 7501
REAL_VIEW, SYNTHETIC_VIEW = "Red", "Yellow"
PLOT_VIEW, TABLE_VIEW = "PlotView1", "TableView1"


def layout_description() -> str:
    def slice_view(tag, label, color):
        return (f'<item><view class="vtkMRMLSliceNode" singletontag="{tag}">'
                f'<property name="orientation" action="default">Axial</property>'
                f'<property name="viewlabel" action="default">{label}</property>'
                f'<property name="viewcolor" action="default">{color}</property></view></item>')

    return ('<layout type="vertical" split="true">'
            '<item splitSize="700"><layout type="horizontal" split="true">'
            + slice_view(REAL_VIEW, "Real", "#F34A33") + slice_view(SYNTHETIC_VIEW, "Synthetic", "#EDD54C")
            + '</layout></item>'
            '<item splitSize="300"><layout type="horizontal" split="true">'
            f'<item><view class="vtkMRMLPlotViewNode" singletontag="{PLOT_VIEW}">'
            '<property name="viewlabel" action="default">P</property></view></item>'
            f'<item><view class="vtkMRMLTableViewNode" singletontag="{TABLE_VIEW}">'
            '<property name="viewlabel" action="default">T</property></view></item>'
            '</layout></item></layout>')


def layout_node(scene=None):
    scene = get_scene(scene)
    node = scene.GetSingletonNode("vtkMRMLLayoutNode", "vtkMRMLLayoutNode")
    if node is None:
        node = scene.GetFirstNodeByClass("vtkMRMLLayoutNode")
    if node is None:
        node = slicer.vtkMRMLLayoutNode()
        node.SetSingletonTag("vtkMRMLLayoutNode")
        node = scene.AddNode(node)
    return node


def show_comparison_layout(scene=None):
    """Register (once) and switch to the CTDiffusion layout; returns the layout node."""
    scene = get_scene(scene)
    node = layout_node(scene)
    if not node.IsLayoutDescription(LAYOUT_ID):
        node.AddLayoutDescription(LAYOUT_ID, layout_description())
    else:
        node.SetLayoutDescription(LAYOUT_ID, layout_description())
    node.RemoveAllMaximizedViewNodes()  # a maximized view would hide the comparison views behind it
    node.SetViewArrangement(LAYOUT_ID)
    after_layout_change(scene)
    return node


def slice_node(scene, layout_name: str):
    scene = get_scene(scene)
    node = scene.GetSingletonNode(layout_name, "vtkMRMLSliceNode")
    if node is None:
        node = slicer.vtkMRMLSliceNode()
        node.SetName(layout_name)
        node.SetLayoutName(layout_name)
        node.SetSingletonTag(layout_name)
        node = scene.AddNode(node)
    return node


def slice_composite_node(scene, layout_name: str):
    """The composite node of a slice view (created by the view; created here if no view made one)."""
    scene = get_scene(scene)
    nodes = scene.GetNodesByClass("vtkMRMLSliceCompositeNode")
    for i in range(nodes.GetNumberOfItems()):
        node = nodes.GetItemAsObject(i)
        if node.GetLayoutName() == layout_name:
            return node
    node = slicer.vtkMRMLSliceCompositeNode()
    node.SetLayoutName(layout_name)
    return scene.AddNode(node)


def _view_node(scene, cls: str, tag: str):
    node = scene.GetSingletonNode(tag, cls)
    if node is None:
        node = scene.AddNewNodeByClass(cls)
        node.SetSingletonTag(tag)
        node.SetLayoutName(tag)
    return node


def plot_view_node(scene=None):
    return _view_node(get_scene(scene), "vtkMRMLPlotViewNode", PLOT_VIEW)


def table_view_node(scene=None):
    return _view_node(get_scene(scene), "vtkMRMLTableViewNode", TABLE_VIEW)


def show_chart(chart_node, scene=None) -> None:
    plot_view_node(scene).SetPlotChartNodeID(chart_node.GetID() if chart_node else None)


def show_table(table_node, scene=None) -> None:
    table_view_node(scene).SetTableNodeID(table_node.GetID() if table_node else None)


def _restrict_to_view(node, view_node) -> None:
    """Show a displayable node (segmentation) only in one view."""
    node.CreateDefaultDisplayNodes()
    for i in range(node.GetNumberOfDisplayNodes()):
        display = node.GetNthDisplayNode(i)
        if display is None:
            continue
        display.SetVisibility(1)
        display.SetDisplayableOnlyInView(view_node.GetID())


def _put_in_view(scene, layout_name: str, node) -> None:
    composite = slice_composite_node(scene, layout_name)
    if node is None:
        composite.SetBackgroundVolumeID(None)
    elif is_segmentation(node):
        _restrict_to_view(node, slice_node(scene, layout_name))
        ref = node.GetNodeReference(node.GetReferenceImageGeometryReferenceRole()) if hasattr(
            node, "GetReferenceImageGeometryReferenceRole") else None
        composite.SetBackgroundVolumeID(ref.GetID() if ref is not None and ref.IsA("vtkMRMLVolumeNode") else None)
    else:
        composite.SetBackgroundVolumeID(node.GetID())
    composite.SetForegroundVolumeID(None)
    composite.SetLabelVolumeID(None)


def match_window_level(reference, target) -> None:
    """Give `target` the display window/level of `reference` (scalar volumes)."""
    if reference is None or target is None or is_segmentation(reference) or is_segmentation(target):
        return
    ref_display, display = reference.GetDisplayNode(), target.GetDisplayNode()
    if ref_display is None or display is None:
        return
    display.SetAutoWindowLevel(0)
    display.SetWindowLevel(ref_display.GetWindow(), ref_display.GetLevel())
    if ref_display.GetColorNodeID():
        display.SetAndObserveColorNodeID(ref_display.GetColorNodeID())


@dataclass
class ViewState:
    """What the comparison changes and gives back when the module is left: the layout and the views' links."""

    arrangement: int
    links: dict  # slice view layout name -> (linked control, hot-linked control)
    labels: dict  # slice view layout name -> its view label ("R", "Y") before it said "Real"/"Synthetic"


def remember_view_state(scene=None) -> ViewState:
    scene = get_scene(scene)
    composites = scene.GetNodesByClass("vtkMRMLSliceCompositeNode")
    links = {}
    for i in range(composites.GetNumberOfItems()):
        c = composites.GetItemAsObject(i)
        links[c.GetLayoutName()] = (c.GetLinkedControl(), c.GetHotLinkedControl())
    labels = {}
    for name in (REAL_VIEW, SYNTHETIC_VIEW):
        node = scene.GetSingletonNode(name, "vtkMRMLSliceNode")
        if node is not None:
            labels[name] = node.GetLayoutLabel()
    return ViewState(layout_node(scene).GetViewArrangement(), links, labels)


def restore_view_state(state: ViewState | None, scene=None) -> None:
    """The user's layout and view links as they were before the comparison took over."""
    if state is None:
        return
    scene = get_scene(scene)
    composites = scene.GetNodesByClass("vtkMRMLSliceCompositeNode")
    for i in range(composites.GetNumberOfItems()):
        c = composites.GetItemAsObject(i)
        if c.GetLayoutName() in state.links:
            linked, hot = state.links[c.GetLayoutName()]
            c.SetLinkedControl(linked)
            c.SetHotLinkedControl(hot)
    for name, label in state.labels.items():
        node = scene.GetSingletonNode(name, "vtkMRMLSliceNode")
        if node is not None and label:
            node.SetLayoutLabel(label)
    layout_node(scene).SetViewArrangement(state.arrangement)
    after_layout_change(scene)


def _ras_bounds(node) -> list[float] | None:
    if node is None:
        return None
    b = [0.0] * 6
    node.GetRASBounds(b)
    return b if b[0] <= b[1] and b[2] <= b[3] and b[4] <= b[5] else None


def fit_views(nodes, views=(REAL_VIEW, SYNTHETIC_VIEW), scene=None) -> list[float] | None:
    """Fit the axial views to what they show: field of view around the union of the nodes' bounds (volumes or
    segmentations) and the same slice position in every view: the middle of the slab all nodes cover (a single
    generated 2D slice included), or of the union when they do not overlap."""
    scene = get_scene(scene)
    bounds = [b for b in (_ras_bounds(n) for n in nodes) if b is not None]
    if not bounds:
        return None
    union = [min(b[0] for b in bounds), max(b[1] for b in bounds), min(b[2] for b in bounds),
             max(b[3] for b in bounds), min(b[4] for b in bounds), max(b[5] for b in bounds)]
    center = [(union[0] + union[1]) / 2, (union[2] + union[3]) / 2, (union[4] + union[5]) / 2]
    low, high = max(b[4] for b in bounds), min(b[5] for b in bounds)
    if low <= high:
        center[2] = (low + high) / 2
    for name in views:
        node = slice_node(scene, name)
        dims = node.GetDimensions()
        aspect = dims[1] / dims[0] if dims[0] else 1.0
        width, height = max(union[1] - union[0], 1e-3), max(union[3] - union[2], 1e-3)
        if height / width > aspect:
            width = height / aspect
        else:
            height = width * aspect
        node.SetFieldOfView(width * 1.05, height * 1.05, node.GetFieldOfView()[2])
        node.JumpSliceByCentering(*center)
    return center


@dataclass
class Comparison:
    layout: object
    real_view: str
    synthetic_view: str
    real: object
    synthetic: object
    previous: ViewState | None = None  # the user's layout/links before; None when the comparison was already up


def setup_comparison(real, synthetic, scene=None, link: bool = True) -> Comparison:
    """Side-by-side layout, real left / synthetic right, axial, fitted to the data, linked navigation, the same
    window/level. `previous` lets the module give the user's layout back when it is left."""
    scene = get_scene(scene)
    previous = None if layout_node(scene).GetViewArrangement() == LAYOUT_ID else remember_view_state(scene)
    layout = show_comparison_layout(scene)
    for name in (REAL_VIEW, SYNTHETIC_VIEW):
        node = slice_node(scene, name)
        node.SetOrientation("Axial")
        node.SetViewGroup(0)
    if real is not None and synthetic is not None:
        match_window_level(real, synthetic)
    _put_in_view(scene, REAL_VIEW, real)
    _put_in_view(scene, SYNTHETIC_VIEW, synthetic)
    for name in (REAL_VIEW, SYNTHETIC_VIEW):
        composite = slice_composite_node(scene, name)
        composite.SetLinkedControl(1 if link else 0)
        composite.SetHotLinkedControl(0)
        slice_node(scene, name).SetLayoutLabel("Real" if name == REAL_VIEW else "Synthetic")
    fit_views([real, synthetic], scene=scene)
    return Comparison(layout, REAL_VIEW, SYNTHETIC_VIEW, real, synthetic, previous)


def show_sample(node, scene=None, reference=None) -> None:
    """Browse: put another synthetic node in the synthetic view (window/level of the real one kept)."""
    scene = get_scene(scene)
    if reference is None:
        real_bg = slice_composite_node(scene, REAL_VIEW).GetBackgroundVolumeID()
        reference = scene.GetNodeByID(real_bg) if real_bg else None
    if reference is not None:
        match_window_level(reference, node)
    # hide the previous synthetic segmentation in that view
    view = slice_node(scene, SYNTHETIC_VIEW)
    segs = scene.GetNodesByClass("vtkMRMLSegmentationNode")
    for i in range(segs.GetNumberOfItems()):
        seg = segs.GetItemAsObject(i)
        if seg is node:
            continue
        d = seg.GetDisplayNode()
        if d is not None and d.GetNumberOfViewNodeIDs() == 1 and d.GetNthViewNodeID(0) == view.GetID():
            d.SetVisibility(0)
    _put_in_view(scene, SYNTHETIC_VIEW, node)


def displayed_in(scene, layout_name: str):
    """What a slice view shows: the background volume, else the segmentation restricted to it."""
    scene = get_scene(scene)
    bg = slice_composite_node(scene, layout_name).GetBackgroundVolumeID()
    if bg:
        return scene.GetNodeByID(bg)
    view_id = slice_node(scene, layout_name).GetID()
    segs = scene.GetNodesByClass("vtkMRMLSegmentationNode")
    for i in range(segs.GetNumberOfItems()):
        seg = segs.GetItemAsObject(i)
        d = seg.GetDisplayNode()
        if d is not None and d.GetVisibility() and d.IsDisplayableInView(view_id) and d.GetNumberOfViewNodeIDs():
            return seg
    return None
