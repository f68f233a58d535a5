"""The Data section's summary line: how many cases, their sizes and spacings, and the problems found, for
nodes in the scene or a folder on disk (headers only; nothing is loaded into memory)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from CTDiffusionLib.profiles import get_profile
from CTDiffusionLib.scene.nodes import VOLUME_SUFFIXES, is_scalar_volume, is_segmentation


def source_node_types(profile) -> tuple[list[str], list[str]]:
    """(nodeTypes, hideChildNodeTypes) of the Data section's node combo: the profile's source node classes; a
    labelmap is a vtkMRMLScalarVolumeNode subclass, so intensity profiles hide labelmaps explicitly."""
    types = list(get_profile(profile).slicer_source_node_classes)
    label_map = "vtkMRMLLabelMapVolumeNode"
    hidden = [label_map] if label_map not in types and "vtkMRMLScalarVolumeNode" in types else []
    return types, hidden


@dataclass
class DataSummary:
    cases: int = 0
    sizes: list = field(default_factory=list)
    spacings: list = field(default_factory=list)
    problems: list = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.cases > 0 and not self.problems

    def text(self) -> str:
        if not self.cases and not self.problems:
            return "No data selected."
        parts = [f"{self.cases} case{'s' if self.cases != 1 else ''}"]
        if self.sizes:
            parts.append("sizes " + _most_common(self.sizes, lambda s: "x".join(str(v) for v in s)))
        if self.spacings:
            parts.append("spacing " + _most_common(self.spacings, lambda s: "x".join(f"{v:.3g}" for v in s) + " mm"))
        text = ", ".join(parts) + "."
        if self.problems:
            shown = self.problems[:3]
            more = f" (+{len(self.problems) - 3} more)" if len(self.problems) > 3 else ""
            text += " Problems: " + " ".join(shown) + more
        return text


def _most_common(values, fmt) -> str:
    counts = Counter(fmt(v) for v in values)
    (top, n), others = counts.most_common(1)[0], len(counts) - 1
    return top + (f" (+{others} other{'s' if others != 1 else ''})" if others else "") if n else top


def summarize_nodes(nodes, profile) -> DataSummary:
    profile = get_profile(profile)
    summary = DataSummary()
    for node in nodes:
        if node is None:
            continue
        name = node.GetName()
        if profile.is_label_map and not (is_segmentation(node) or node.IsA("vtkMRMLLabelMapVolumeNode")):
            summary.problems.append(f"{name} is not a segmentation or label map ({profile.label} need "
                                    f"{'/'.join(c.name for c in profile.foreground_classes)} labels).")
            continue
        if not profile.is_label_map and not is_scalar_volume(node):
            summary.problems.append(f"{name} is not a scalar volume ({profile.label} needs volumes in HU).")
            continue
        if is_segmentation(node):
            seg = node.GetSegmentation()
            names = [seg.GetSegment(seg.GetNthSegmentID(i)).GetName() for i in range(seg.GetNumberOfSegments())]
            if not any(profile.label_for_name(n) for n in names):
                summary.problems.append(f"{name} has no segment named "
                                        + " or ".join(c.name for c in profile.foreground_classes) + ".")
            from CTDiffusionLib.scene.nodes import volume_geometry

            geometry = volume_geometry(node)
        else:
            image = node.GetImageData()
            if image is None or 0 in image.GetDimensions():
                summary.problems.append(f"{name} has no image data.")
                continue
            geometry = {"size": tuple(image.GetDimensions()), "spacing": tuple(node.GetSpacing())}
            if not profile.is_label_map:
                lo, hi = image.GetScalarRange()
                if lo > -200 or hi - lo < 50:  # CT in HU has air near -1000
                    summary.problems.append(f"{name} does not look like CT in HU (range {lo:.0f}..{hi:.0f}).")
        summary.cases += 1
        summary.sizes.append(tuple(int(v) for v in geometry["size"]))
        summary.spacings.append(tuple(float(v) for v in geometry["spacing"]))
    return summary


def _volume_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.name.lower().endswith(VOLUME_SUFFIXES)
                  and not p.name.lower().endswith(".raw"))


def summarize_folder(folder: str | Path, profile) -> DataSummary:
    """Count cases in a folder (files, ACDC patients, DICOM series folders) and read headers of volume files."""
    summary = DataSummary()
    folder = Path(folder) if folder else None
    if folder is None or not folder.is_dir():
        summary.problems.append(f"Folder {folder} does not exist." if folder else "No folder selected.")
        return summary
    profile = get_profile(profile)
    files = _volume_files(folder)
    if "acdc" in profile.folder_layouts:
        acdc = [p for p in files if p.name.lower().endswith(("_gt.nii.gz", "_gt.nii"))]
        if acdc:
            files = acdc
            patients = {p.parent for p in acdc}
            missing_cfg = [p.name for p in patients if not (p / "Info.cfg").is_file()]
            if missing_cfg:
                summary.problems.append(f"{len(missing_cfg)} patient folder(s) without Info.cfg "
                                        "(conditioning on group/phase will not be possible).")
    dicom_dirs = {p.parent for p in folder.rglob("*.dcm")} if not files else set()
    if not files and not dicom_dirs:
        summary.problems.append(f"No NIfTI/NRRD/MHA volumes or DICOM series found in {folder}.")
        return summary
    if dicom_dirs:
        summary.cases = len(dicom_dirs)
        return summary
    try:
        import SimpleITK as sitk
    except ImportError:  # pragma: no cover - SimpleITK ships with Slicer
        sitk = None
    for path in files:
        summary.cases += 1
        if sitk is None:
            continue
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(path))
        try:
            reader.ReadImageInformation()
        except RuntimeError:
            summary.problems.append(f"{path.name} cannot be read.")
            summary.cases -= 1
            continue
        size = tuple(int(v) for v in reader.GetSize())
        summary.sizes.append(size)
        summary.spacings.append(tuple(float(v) for v in reader.GetSpacing()))
        if profile.is_label_map and reader.GetPixelID() not in (sitk.sitkUInt8, sitk.sitkInt8, sitk.sitkUInt16,
                                                                    sitk.sitkInt16, sitk.sitkInt32, sitk.sitkUInt32):
            summary.problems.append(f"{path.name} is not an integer label volume.")
        if len(size) >= 3 and size[2] == 1 and not profile.is_label_map:
            summary.problems.append(f"{path.name} is a single slice; {profile.label} needs 3D volumes.")
    return summary
