"""CT + label pairs between the scene and files: volume + segmentation nodes out to a pairs folder a training
run reads, generated pairs (CT + label map + structure names) in as a volume and a named segmentation, and one
segmentation out as a label map on a chosen volume's grid (to generate a CT for it).

The file formats and every check live in the engine (CTDiffusionLib/data/pairs.py); this module only moves
nodes to and from files with Slicer's own readers and writers. Works on Slicer and on slicer-core; no torch.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import slicer

from CTDiffusionLib.data.pairs import (
    SEG_NRRD_SUFFIX,
    discover_pairs,
    read_dataset_structures,
    read_pair,
    select_structures,
    write_nnunet_pairs,
)
from CTDiffusionLib.errors import InputError
from CTDiffusionLib.runfolder import atomic_write, staged_folder
from CTDiffusionLib.scene.core import get_scene
from CTDiffusionLib.scene.nodes import (
    SYNTHETIC_FOLDER_NAME,
    _segmentation_as_labelmap,
    _tag,
    is_scalar_volume,
    is_segmentation,
    load_ct_volume,
    place_in,
    safe_file_stem,
    segmentation_from_label_file,
    strip_volume_suffix,
    synthetic_folder,
    unique_node_name,
    write_volume_node,
)

log = logging.getLogger("ctdiffusion")


# ------------------------------------------------------------------------------------------------ nodes -> files
def export_pair_files(pairs, folder: str | Path) -> list[Path]:
    """Write each (volume node, segmentation node) as NAME.nii.gz + NAME.seg.nrrd into the new (or empty) `folder`:
    a pairs source for `discover_pairs` that keeps the segment names and label values. Built in a staged folder, so
    a failure leaves nothing. Returns the .seg.nrrd paths."""
    folder = Path(folder)
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise InputError(f"The output folder {folder} already exists and is not empty.", "Choose a new folder.")
    stems, used = [], set()
    for volume, segmentation in pairs:
        if not is_scalar_volume(volume) or not is_segmentation(segmentation):
            raise InputError(f"The pair ({_name(volume)}, {_name(segmentation)}) is not a volume with a segmentation.",
                             "Pick a CT volume node and the segmentation node drawn on it for each pair.")
        stem, n = safe_file_stem(volume.GetName()), 2
        while stem in used:
            stem, n = f"{safe_file_stem(volume.GetName())}_{n}", n + 1
        used.add(stem)
        stems.append((stem, volume, segmentation))
    with staged_folder(folder) as staging:
        for stem, volume, segmentation in stems:
            write_volume_node(volume, staging / f"{stem}.nii.gz")
            write_segmentation_node(segmentation, staging / f"{stem}{SEG_NRRD_SUFFIX}")
    return [folder / f"{stem}{SEG_NRRD_SUFFIX}" for stem, _, _ in stems]


def write_segmentation_node(seg_node, path: str | Path) -> Path:
    """Save a segmentation as a Slicer .seg.nrrd (binary labelmap; segment names, values and layers in the header)."""
    segmentation = seg_node.GetSegmentation()
    labelmap_name = slicer.vtkSegmentationConverter.GetSegmentationBinaryLabelmapRepresentationName()
    if segmentation.GetSourceRepresentationName() != labelmap_name:  # e.g. segments imported from models
        seg_node.CreateBinaryLabelmapRepresentation()
        segmentation.SetSourceRepresentationName(labelmap_name)
    return write_volume_node(seg_node, path)  # its default storage node is the .seg.nrrd writer


def export_pairs(pairs, out: str | Path, structures: str | None = None) -> Path:
    """(volume node, segmentation node) pairs as an nnU-Net raw folder `out` (new or empty), with the chosen
    structures (`structures` as in --structures; default every segment name). Checked like any pairs input."""
    with tempfile.TemporaryDirectory(prefix="ctdiffusion-pairs-") as tmp:
        export_pair_files(pairs, Path(tmp) / "pairs")
        cases = discover_pairs(Path(tmp) / "pairs")
        chosen = select_structures(cases, structures)
        return write_nnunet_pairs(out, ((case.case_id, *read_pair(case, chosen)) for case in cases), chosen)


def export_segmentation_labels(seg_node, path: str | Path, structure_names=None, reference_volume=None) -> list[str]:
    """Write one segmentation as a label map file on `reference_volume`'s grid (default: its own), with value k for
    `structure_names[k-1]` (segments matched by name, exactly or ignoring case; other segments left out). Without
    `structure_names` every segment counts, in order. Returns the structure names the values stand for."""
    segmentation = seg_node.GetSegmentation()
    segment_names = [segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments())]
    if not segment_names:
        raise InputError(f"The segmentation {seg_node.GetName()!r} has no segments.", "Draw or load segments first.")
    names = list(dict.fromkeys(segment_names)) if structure_names is None else list(structure_names)
    value_of = {name: k for k, name in enumerate(names, start=1)}
    lowered = {name.lower(): k for name, k in value_of.items()}
    values = [value_of.get(name, lowered.get(name.lower(), 0)) for name in segment_names]
    if not any(values):
        raise InputError(f"The segmentation {seg_node.GetName()!r} has no segment named like the model's structures "
                         f"({', '.join(names)}).", "Rename the segments (Segment Editor) to those names.")
    left_out = [name for name, value in zip(segment_names, values) if not value]
    if left_out:
        log.warning("Segments %s of %s are not among the structures (%s) and are left out", ", ".join(left_out),
                    seg_node.GetName(), ", ".join(names))
    labelmap = _segmentation_as_labelmap(seg_node, None, reference_volume)  # segment i -> value i + 1
    try:
        array = slicer.util.arrayFromVolume(labelmap)
        exported = array.copy()
        array[:] = 0
        for index, value in enumerate(values, start=1):
            array[exported == index] = value
        slicer.util.arrayFromVolumeModified(labelmap)
        atomic_write(path, lambda tmp: write_volume_node(labelmap, tmp))
    finally:
        seg_node.GetScene().RemoveNode(labelmap)
    return names


# ------------------------------------------------------------------------------------------------ files -> nodes
def load_pair(image_path: str | Path, labels_path: str | Path, structure_names, name: str | None = None,
              scene=None):
    """A CT volume node and a segmentation node with one named segment per structure (label value k =
    `structure_names[k-1]`; structures absent from this label map become empty segments, so every pair shows
    the same list), on the label map's geometry."""
    scene = get_scene(scene)
    base = unique_node_name(name or strip_volume_suffix(Path(labels_path).name), scene)
    volume = load_ct_volume(image_path, name=base, scene=scene)
    seg_node = segmentation_from_label_file(labels_path, name=f"{base} labels", scene=scene)
    segmentation = seg_node.GetSegmentation()
    present = set()
    for i in range(segmentation.GetNumberOfSegments()):
        segment = segmentation.GetNthSegment(i)
        value = segment.GetLabelValue()
        if not 1 <= value <= len(structure_names):
            raise InputError(f"The label map {labels_path} holds the value {value}, which names no structure "
                             f"(1..{len(structure_names)}).", "Load label maps written for this model's structures.")
        segment.SetName(structure_names[value - 1])
        present.add(value)
    for value, structure in enumerate(structure_names, start=1):
        if value not in present:
            segmentation.AddEmptySegment(safe_file_stem(structure), structure)
    seg_node.SetReferenceImageGeometryParameterFromVolumeNode(volume)  # edited on, and shown over, its CT
    return volume, seg_node


def import_pairs(folder: str | Path, scene=None, beside=None, folder_name: str = SYNTHETIC_FOLDER_NAME) -> list:
    """Load every pair of an nnU-Net raw folder (e.g. written by `generate` on a paired run) into the synthetic
    subject-hierarchy folder (beside the real `beside`); returns [(volume node, segmentation node), ...]."""
    scene = get_scene(scene)
    names = [s.name for s in read_dataset_structures(folder)]
    folder_item = synthetic_folder(scene, beside=beside, name=folder_name)
    loaded = []
    for case in discover_pairs(folder):
        volume, seg_node = load_pair(case.image, case.labels, names, name=case.case_id, scene=scene)
        for node in (volume, seg_node):
            _tag(node, None, source=str(case.image if node is volume else case.labels))
            place_in(node, folder_item, scene)
        loaded.append((volume, seg_node))
    return loaded


def _name(node) -> str:
    return repr(node.GetName()) if node is not None else "nothing"
