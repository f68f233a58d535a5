"""MRML nodes in and out: export selected nodes to a run folder (geometry kept) and import generated results as
nodes of the right class, with names, display settings, segment colors and a subject-hierarchy folder.

Works on Slicer and on slicer-core (see scene.core). No qt, no torch; numpy only inside functions.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import slicer

from CTDiffusionLib.profiles import CARDIAC_MASKS, PROSTATE_CT, DisplayWindow, Profile, get_profile
from CTDiffusionLib.runfolder import read_json_or_empty
from CTDiffusionLib.scene.core import get_scene, module_logic, subject_hierarchy

SYNTHETIC_FOLDER_NAME = "CTDiffusion synthetic"
ATTRIBUTE_PREFIX = "CTDiffusion."

# vtkSlicerVolumesLogic.AddArchetypeVolume loading options (bit flags)
LOAD_LABELMAP, LOAD_SINGLE_FILE = 1, 4
VOLUME_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")


# --------------------------------------------------------------------------------------------- helpers
def safe_file_stem(name: str) -> str:
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._")
    return stem or "node"


def strip_volume_suffix(name: str) -> str:
    for suffix in VOLUME_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def is_segmentation(node) -> bool:
    return node is not None and node.IsA("vtkMRMLSegmentationNode")


def is_scalar_volume(node) -> bool:
    return node is not None and node.IsA("vtkMRMLScalarVolumeNode") and not node.IsA("vtkMRMLLabelMapVolumeNode")


def volume_geometry(node) -> dict:
    """Size (IJK), spacing and origin of a volume node, or of a segmentation's reference geometry."""
    if is_segmentation(node):
        labelmap = _segmentation_as_labelmap(node)
        try:
            return volume_geometry(labelmap)
        finally:
            node.GetScene().RemoveNode(labelmap)
    image = node.GetImageData()
    dims = tuple(image.GetDimensions()) if image is not None else (0, 0, 0)
    return {"size": dims, "spacing": tuple(round(s, 6) for s in node.GetSpacing()),
            "origin": tuple(round(o, 6) for o in node.GetOrigin())}


# ------------------------------------------------------------------------------------------------ export
def _segmentation_as_labelmap(seg_node, profile: Profile | None = None, reference_volume=None):
    """A temporary labelmap with the profile's label values (by segment name, e.g. 1 RV, 2 MYO, 3 LV) in the
    segmentation's geometry; without a profile the segments keep their order (1..n). The caller removes it from
    the scene; it is hidden from editors before it is added, so it never shows (flickers) in node combos."""
    import vtk

    scene = seg_node.GetScene()
    segmentation = seg_node.GetSegmentation()
    by_label: dict[int, str] = {}
    others: list[str] = []
    for i in range(segmentation.GetNumberOfSegments()):
        seg_id = segmentation.GetNthSegmentID(i)
        label = profile.label_for_name(segmentation.GetSegment(seg_id).GetName()) if profile else None
        if label is not None and label not in by_label:
            by_label[label] = seg_id
        else:
            others.append(seg_id)
    ids = vtk.vtkStringArray()
    order = sorted(by_label) if by_label else []
    for label in order:
        ids.InsertNextValue(by_label[label])
    if not order:  # no segment named after a class: keep the segment order
        for seg_id in others:
            ids.InsertNextValue(seg_id)
    labelmap = slicer.vtkMRMLLabelMapVolumeNode()  # the export needs it in the scene
    labelmap.SetName(seg_node.GetName() + "_labels")
    labelmap.SetHideFromEditors(1)
    labelmap = scene.AddNode(labelmap)
    logic = slicer.vtkSlicerSegmentationsModuleLogic
    ok = logic.ExportSegmentsToLabelmapNode(seg_node, ids, labelmap, reference_volume,
                                            slicer.vtkSegmentation.EXTENT_REFERENCE_GEOMETRY)
    if not ok:
        scene.RemoveNode(labelmap)
        raise RuntimeError(f"Could not export segmentation {seg_node.GetName()!r} to a labelmap.")
    if order and order != list(range(1, len(order) + 1)):  # exported as 1..n: restore the fixed label values
        arr = slicer.util.arrayFromVolume(labelmap)
        remapped = arr.copy()
        for exported, label in enumerate(order, start=1):
            remapped[arr == exported] = label
        arr[:] = remapped
        slicer.util.arrayFromVolumeModified(labelmap)
    return labelmap


def write_volume_node(node, path: str | Path) -> Path:
    """Write a volume node with its geometry (IJK-to-RAS becomes the file's LPS origin/spacing/direction)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    storage = node.CreateDefaultStorageNode()
    storage.SetFileName(str(path))
    storage.SetUseCompression(1)
    if not storage.WriteData(node):
        raise RuntimeError(f"Could not write {node.GetName()!r} to {path}.")
    return path


def export_nodes(nodes, folder: str | Path, profile: str) -> dict:
    """Write the selected nodes as training data into `folder` and return the manifest (also manifest.json).

    CT: scalar volumes as NIfTI in their own units (HU). Masks: segmentation nodes (or labelmaps) as uint8
    label volumes with 1 RV, 2 MYO, 3 LV. File names come from node names, made unique.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    used: set[str] = set()
    cases = []
    for node in nodes:
        if node is None:
            continue
        stem = safe_file_stem(node.GetName())
        unique, n = stem, 2
        while unique in used:
            unique, n = f"{stem}_{n}", n + 1
        used.add(unique)
        path = folder / f"{unique}.nii.gz"
        if is_segmentation(node):
            labelmap = _segmentation_as_labelmap(node, get_profile(profile))
            try:
                write_volume_node(labelmap, path)
                geometry = volume_geometry(labelmap)
            finally:
                node.GetScene().RemoveNode(labelmap)
        else:
            write_volume_node(node, path)
            geometry = volume_geometry(node)
        cases.append({"file": path.name, "node": node.GetName(), "node_id": node.GetID(),
                      "class": node.GetClassName(), **{k: list(v) for k, v in geometry.items()}})
    manifest = {"profile": profile, "cases": cases}
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    return manifest


# ------------------------------------------------------------------------------------------------ import
@dataclass
class GeneratedSample:
    path: Path
    sidecar: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        return strip_volume_suffix(self.path.name)

    @property
    def profile(self) -> str | None:
        return self.sidecar.get("profile")


def list_generated(folder: str | Path) -> list[GeneratedSample]:
    """The volumes `generate` wrote (synthetic_0001.nii.gz ...) with their JSON sidecars, in index order."""
    folder = Path(folder)
    samples = []
    for path in sorted(folder.iterdir()) if folder.is_dir() else []:
        if not path.is_file() or not path.name.lower().endswith(VOLUME_SUFFIXES):
            continue
        sidecar_path = folder / (strip_volume_suffix(path.name) + ".json")
        samples.append(GeneratedSample(path, read_json_or_empty(sidecar_path)))
    samples.sort(key=lambda s: (s.sidecar.get("index", 10**9), s.path.name))
    return samples


def sh_item(node, scene=None) -> int:
    """The node's subject-hierarchy item. Slicer's SH plugin logic adds one for every new node; on slicer-core
    nothing does, so it is created here (at the scene root) when missing."""
    sh = subject_hierarchy(scene or node.GetScene())
    item = sh.GetItemByDataNode(node)
    if not item:
        item = sh.CreateItem(sh.GetSceneItemID(), node)
    return item


def place_in(node, parent_item: int, scene=None) -> int:
    item = sh_item(node, scene)
    subject_hierarchy(scene or node.GetScene()).SetItemParent(item, parent_item)
    return item


def synthetic_folder(scene=None, beside=None, name: str = SYNTHETIC_FOLDER_NAME) -> int:
    """The subject-hierarchy folder for synthetic results: in the real study (the parent of `beside`), else at
    the scene root. Reused when it already exists there."""
    sh = subject_hierarchy(scene)
    parent = sh.GetSceneItemID()
    if beside is not None:
        item = sh_item(beside, scene)
        if item:
            parent = sh.GetItemParent(item) or parent
    existing = sh.GetItemChildWithName(parent, name)
    if existing:
        return existing
    folder = sh.CreateFolderItem(parent, name)
    sh.SetItemAttribute(folder, ATTRIBUTE_PREFIX + "folder", "synthetic")
    return folder


def _tag(node, sample: GeneratedSample | None, source: str | None = None) -> None:
    node.SetAttribute(ATTRIBUTE_PREFIX + "synthetic", "1")
    if sample is not None:
        node.SetAttribute(ATTRIBUTE_PREFIX + "file", str(sample.path))
        for key in ("seed", "sampler", "steps", "model_sha256", "profile", "mode", "guidance_scale", "index"):
            if sample.sidecar.get(key) is not None:
                node.SetAttribute(ATTRIBUTE_PREFIX + key, str(sample.sidecar[key]))
        if sample.sidecar.get("condition"):
            node.SetAttribute(ATTRIBUTE_PREFIX + "condition", json.dumps(sample.sidecar["condition"]))
    if source:
        node.SetAttribute(ATTRIBUTE_PREFIX + "source", source)


def set_display_window(volume_node, window: DisplayWindow) -> None:
    """The profile's grey window (CT: soft tissue, -160..240 HU), fixed rather than automatic."""
    display = volume_node.GetDisplayNode()
    if display is None:
        volume_node.CreateDefaultDisplayNodes()
        display = volume_node.GetDisplayNode()
    display.SetAutoWindowLevel(0)
    display.SetWindowLevel(window.width, window.level)
    if display.GetColorNodeID() is None or "Grey" not in (display.GetColorNodeID() or ""):
        display.SetAndObserveColorNodeID("vtkMRMLColorTableNodeGrey")


def load_ct_volume(path: str | Path, name: str | None = None, scene=None, profile: Profile = PROSTATE_CT):
    """A scalar volume node in HU with the profile's display window."""
    get_scene(scene)
    path = Path(path)
    logic = module_logic("Volumes")
    # single file: synthetic_0001, synthetic_0002 ... must not be read as one numbered series
    node = logic.AddArchetypeVolume(str(path), name or strip_volume_suffix(path.name), LOAD_SINGLE_FILE)
    if node is None:
        raise RuntimeError(f"Could not load {path} as a volume.")
    set_display_window(node, profile.display_window)
    return node


def style_segments(seg_node, profile: Profile = CARDIAC_MASKS, add_missing: bool = True) -> None:
    """Name/colour segments after the profile's classes (RV, MYO, LV) by label value or existing name; add empty
    missing ones."""
    classes = {c.value: c for c in profile.foreground_classes}
    segmentation = seg_node.GetSegmentation()
    present = set()
    for i in range(segmentation.GetNumberOfSegments()):
        seg_id = segmentation.GetNthSegmentID(i)
        segment = segmentation.GetSegment(seg_id)
        label = profile.label_for_name(segment.GetName())
        if label is None:
            try:
                label = int(segment.GetName())
            except ValueError:
                label = segment.GetLabelValue() if segment.GetLabelValue() in classes else None
        if label in classes:
            segment.SetName(classes[label].name)
            segment.SetColor(*classes[label].color)
            present.add(label)
    if add_missing:
        for label, cls in classes.items():
            if label not in present:
                seg_id = segmentation.AddEmptySegment(cls.name, cls.name)
                segmentation.GetSegment(seg_id).SetColor(*cls.color)


def load_mask_segmentation(path: str | Path, name: str | None = None, scene=None, profile: Profile = CARDIAC_MASKS):
    """A segmentation node with the profile's segments (RV, MYO, LV in fixed colours) from a label volume.

    The label volume is read into a labelmap node that never enters the scene, so no temporary node shows up
    (and flickers) in the node combos while the segmentation is built."""
    seg_node = segmentation_from_label_file(path, name, scene)
    style_segments(seg_node, profile)
    return seg_node


def segmentation_from_label_file(path: str | Path, name: str | None = None, scene=None):
    """A segmentation node with one segment per label value of a label volume file (segment label value = file
    value), on the file's geometry; no temporary node enters the scene."""
    scene = get_scene(scene)
    path = Path(path)
    labelmap = slicer.vtkMRMLLabelMapVolumeNode()
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    storage.SetFileName(str(path))
    storage.SetSingleFile(1)
    if not storage.ReadData(labelmap) or labelmap.GetImageData() is None:
        raise RuntimeError(f"Could not load {path} as a label volume.")
    seg_node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", name or strip_volume_suffix(path.name))
    seg_node.CreateDefaultDisplayNodes()
    seg_node.SetReferenceImageGeometryParameterFromVolumeNode(labelmap)
    if not slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(labelmap, seg_node):
        scene.RemoveNode(seg_node)
        raise RuntimeError(f"Could not turn {path} into a segmentation.")
    return seg_node


def unique_node_name(base: str, scene=None) -> str:
    """`base`, or base_1, base_2 ... when a node of that name is already in the scene."""
    scene = get_scene(scene)
    name, n = base, 0
    while scene.GetFirstNodeByName(name) is not None:
        n += 1
        name = f"{base}_{n}"
    return name


def load_result(sample: GeneratedSample, profile: str | None = None, scene=None):
    profile = get_profile(sample.profile or profile or PROSTATE_CT)
    # synthetic_0001 of the second generation becomes synthetic_0001_1: names stay unique across runs
    name = unique_node_name(strip_volume_suffix(sample.path.name), scene)
    if profile.is_label_map:
        node = load_mask_segmentation(sample.path, name=name, scene=scene, profile=profile)
    else:
        node = load_ct_volume(sample.path, name=name, scene=scene, profile=profile)
    _tag(node, sample)
    return node


def import_generated(folder: str | Path, scene=None, beside=None, profile: str | None = None,
                     folder_name: str = SYNTHETIC_FOLDER_NAME) -> list:
    """Load every generated sample of `folder` as nodes in the synthetic SH folder (beside the real `beside`)."""
    scene = get_scene(scene)
    samples = list_generated(folder)
    folder_item = synthetic_folder(scene, beside=beside, name=folder_name)
    nodes = []
    for sample in samples:
        node = load_result(sample, profile=profile, scene=scene)
        place_in(node, folder_item, scene)
        nodes.append(node)
    return nodes


def synthetic_nodes(scene=None, folder_item: int | None = None) -> list:
    """The synthetic nodes to browse: those in `folder_item` (default: every node tagged as synthetic)."""
    scene = get_scene(scene)
    sh = subject_hierarchy(scene)
    if folder_item:
        import vtk

        ids = vtk.vtkIdList()
        sh.GetItemChildren(folder_item, ids, False)
        nodes = [sh.GetItemDataNode(ids.GetId(i)) for i in range(ids.GetNumberOfIds())]
        return [n for n in nodes if n is not None]
    out = []
    for i in range(scene.GetNumberOfNodes()):
        node = scene.GetNthNode(i)
        if node.GetAttribute(ATTRIBUTE_PREFIX + "synthetic") == "1":
            out.append(node)
    return out
