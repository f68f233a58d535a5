"""Paired data: a CT with its label map, from the layouts people have, and the nnU-Net raw layout we write.

Layouts read by `discover_pairs` (names always come from the data, never from a fixed class list):
  - nnU-Net v2 raw: imagesTr/CASE_0000.nii.gz + labelsTr/CASE.nii.gz, dataset.json "labels" {name: value};
  - Medical Segmentation Decathlon: the same file name in imagesTr/ and labelsTr/, dataset.json "labels"
    {"value": name} (also nnU-Net v1, whose images end in _0000 with Decathlon-style names);
  - TotalSegmentator: CASE/ct.nii.gz + CASE/segmentations/<structure>.nii.gz, one binary mask per structure;
  - a volume beside its Slicer segmentation NAME.seg.nrrd (segment names and label values from the NRRD header);
  - a .txt file listing any of the above, one per line.
Label values may be sparse (1, 5, 18, 117). `select_structures` picks and merges them; `read_pair` turns a case
into (CT, UInt8 label map 0..K on the CT's grid); `write_nnunet_pairs` writes pairs in the nnU-Net raw layout.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from CTDiffusionLib.data.discovery import _safe_id, _visible, read_list_file  # same ids, hidden files, lists
from CTDiffusionLib.data.volume_io import (
    image_suffix,
    read_image,
    read_label_image,
    strip_image_suffix,
    write_image,
)
from CTDiffusionLib.errors import InputError
from CTDiffusionLib.runfolder import read_json, staged_folder, write_json

log = logging.getLogger("ctdiffusion")

DATASET_JSON = "dataset.json"
IMAGES_DIR, LABELS_DIR = "imagesTr", "labelsTr"
FILE_ENDING = ".nii.gz"
SEG_NRRD_SUFFIX = ".seg.nrrd"
TOTALSEG_MASKS_DIR = "segmentations"
TOTALSEG_CT_STEM = "ct"
LIST_FILE_SUFFIX = ".txt"
MAX_STRUCTURES = 255  # label maps are written as UInt8
_LABEL_VALUE_LIMIT = 2 ** 16  # source label values above this are not label maps
_NNUNET_CHANNEL = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")
_ACCEPTED = ("Accepted pairs: an nnU-Net v2 or Decathlon folder (imagesTr/, labelsTr/, dataset.json), "
             "TotalSegmentator output (CASE/ct.nii.gz + CASE/segmentations/*.nii.gz, or a folder of such CASE "
             "folders), a volume beside its NAME.seg.nrrd (or a folder of them), or a .txt file listing those.")
_SPEC_HINT = ("Write the structures as a comma-separated list of names from the data; merge several into one with "
              "'=' and '+', e.g. 'prostate,bladder,femur=femur_left+femur_right'.")


@dataclass(frozen=True)
class Structure:
    """One output structure: its name and the source structures merged into it. Its label value is its 1-based
    position in the selected list (0 is background)."""

    name: str
    sources: tuple[str, ...]

    def __post_init__(self):
        object.__setattr__(self, "sources", tuple(str(s) for s in self.sources))

    def to_dict(self) -> dict:
        return {"name": self.name, "sources": list(self.sources)}

    @classmethod
    def from_dict(cls, d: dict) -> Structure:
        return cls(str(d["name"]), tuple(d.get("sources") or (d["name"],)))


@dataclass(frozen=True)
class PairCase:
    """One CT with its labels: one label-map file (`labels`) or one binary mask per structure (`label_files`).
    Hash ignores the dicts; equality does not."""

    case_id: str  # unique and filesystem-safe
    image: Path  # the CT (any readable volume file)
    labels: Path | None = None  # nnU-Net/Decathlon labelsTr file or NAME.seg.nrrd
    label_files: dict = field(default_factory=dict, hash=False)  # TotalSegmentator: {structure name: mask file}
    label_names: dict = field(default_factory=dict, hash=False)  # {source label value: source structure name}

    def __post_init__(self):
        object.__setattr__(self, "image", Path(self.image))
        object.__setattr__(self, "labels", Path(self.labels) if self.labels is not None else None)
        object.__setattr__(self, "label_files", {str(k): Path(v) for k, v in self.label_files.items()})
        object.__setattr__(self, "label_names", {int(k): str(v) for k, v in self.label_names.items()})

    @property
    def label_source(self) -> Path:
        """The file (or mask folder) to name in messages about this case's labels."""
        if self.labels is not None:
            return self.labels
        return next(iter(self.label_files.values())).parent if self.label_files else self.image

    def to_dict(self) -> dict:
        """JSON-ready form (for a run's dataset.json)."""
        return {"case_id": self.case_id, "image": str(self.image),
                "labels": str(self.labels) if self.labels is not None else None,
                "label_files": {k: str(v) for k, v in self.label_files.items()},
                "label_names": {str(k): v for k, v in self.label_names.items()}}

    @classmethod
    def from_dict(cls, d: dict) -> PairCase:
        return cls(d["case_id"], Path(d["image"]), Path(d["labels"]) if d.get("labels") else None,
                   d.get("label_files") or {}, d.get("label_names") or {})


# ---------------------------------------------------------------------------------------------- discovery

def discover_pairs(sources: Sequence[str | Path] | str | Path) -> list[PairCase]:
    """Every CT + label pair in `sources`, sorted by case id; InputError naming the path on any problem."""
    if isinstance(sources, (str, Path)):  # a lone path, not a sequence of characters
        sources = [sources]
    if not sources:
        raise InputError("No paired data was given.", _ACCEPTED)
    cases = [case for source in sources for case in _pairs_from(Path(source).expanduser(), True)]
    seen: dict[str, PairCase] = {}
    for case in cases:
        if case.case_id in seen:
            raise InputError(f"Two pairs get the same case id {case.case_id!r}: {seen[case.case_id].image} and "
                             f"{case.image}.", "Case ids come from file and folder names; rename one, or list "
                             "each data set only once.")
        seen[case.case_id] = case
    return sorted(cases, key=lambda c: c.case_id)


def _pairs_from(path: Path, allow_list_file: bool) -> list[PairCase]:
    if not path.exists():
        raise InputError(f"The data path {path} does not exist.", "Check the path (relative paths start from the "
                         "current folder).")
    if path.is_dir():
        return _pairs_from_folder(path)
    name = path.name.lower()
    if allow_list_file and name.endswith(LIST_FILE_SUFFIX):
        return _pairs_from_list_file(path)
    if name.endswith(SEG_NRRD_SUFFIX):
        return [_slicer_pair(path)]
    if image_suffix(path) is not None:
        segmentation = path.with_name(strip_image_suffix(path) + SEG_NRRD_SUFFIX)
        if segmentation.is_file():
            return [_slicer_pair(segmentation)]
        raise InputError(f"The volume {path} has no label map: {segmentation.name} is missing beside it.", _ACCEPTED)
    raise InputError(f"The data file {path} has an unsupported file type.", _ACCEPTED)


def _pairs_from_folder(folder: Path) -> list[PairCase]:
    if folder.name in (IMAGES_DIR, LABELS_DIR) and (folder.parent / DATASET_JSON).is_file():
        folder = folder.parent  # imagesTr/ or labelsTr/ given: the data set is their parent
    if (folder / IMAGES_DIR).is_dir() or (folder / LABELS_DIR).is_dir() or (folder / DATASET_JSON).is_file():
        return _nnunet_pairs(folder)
    if _is_totalsegmentator_case(folder):
        return [_totalsegmentator_case(folder)]
    children = sorted(p for p in folder.iterdir() if _visible(p))
    case_dirs = [p for p in children if p.is_dir() and _is_totalsegmentator_case(p)]
    if case_dirs:
        return [_totalsegmentator_case(d) for d in case_dirs]
    segmentations = [p for p in children if p.is_file() and p.name.lower().endswith(SEG_NRRD_SUFFIX)]
    if segmentations:
        cases = [_slicer_pair(s) for s in segmentations]
        paired = {case.image for case in cases}
        for volume in children:
            if volume.is_file() and image_suffix(volume) and not volume.name.lower().endswith(SEG_NRRD_SUFFIX) \
                    and volume not in paired:
                raise InputError(f"The volume {volume} has no label map: "
                                 f"{strip_image_suffix(volume)}{SEG_NRRD_SUFFIX} is missing beside it.",
                                 "Save the segmentation of every volume as NAME.seg.nrrd next to NAME, or move "
                                 "unlabelled volumes out of the folder.")
        return cases
    raise InputError(f"The folder {folder} holds no CT + label pairs.", _ACCEPTED)


def _pairs_from_list_file(list_file: Path) -> list[PairCase]:
    entries = read_list_file(list_file, "pairs folder or file")
    return [case for entry in entries for case in _pairs_from(entry, False)]


# --- nnU-Net v2 raw / Medical Segmentation Decathlon

def _nnunet_pairs(folder: Path) -> list[PairCase]:
    images_dir, labels_dir, meta_path = folder / IMAGES_DIR, folder / LABELS_DIR, folder / DATASET_JSON
    for needed in (images_dir, labels_dir):
        if not needed.is_dir():
            raise InputError(f"The pairs folder {folder} has no {needed.name}/ folder.",
                             "An nnU-Net or Decathlon folder holds imagesTr/ (CTs), labelsTr/ (label maps) and "
                             "dataset.json (label names).")
    if not meta_path.is_file():
        raise InputError(f"The pairs folder {folder} has no {DATASET_JSON}, so its labels have no names.",
                         'Add a dataset.json with "labels", e.g. {"labels": {"background": 0, "prostate": 1}}.')
    meta = read_json(meta_path, "label names of the data set")
    names = label_names_from_dataset_json(meta, meta_path)
    ending = meta.get("file_ending")
    ending = ending.lower() if isinstance(ending, str) and ending else None

    def volumes(d: Path) -> list[Path]:
        return sorted(p for p in d.iterdir() if _visible(p) and p.is_file() and image_suffix(p)
                      and (ending is None or p.name.lower().endswith(ending)))

    labels = {strip_image_suffix(p): p for p in volumes(labels_dir)}
    images: dict[str, Path] = {}
    extra_channels = 0
    for image in volumes(images_dir):
        stem = strip_image_suffix(image)
        match = _NNUNET_CHANNEL.match(stem)
        if stem in labels or match is None:  # Decathlon: the same name in both folders
            case_id = stem
        elif int(match["channel"]) == 0:  # nnU-Net: CASE_0000 is the first channel of CASE
            case_id = match["case"]
        else:
            extra_channels += 1
            continue
        if case_id not in labels:
            expected = labels_dir / (case_id + (ending or image_suffix(image)))
            raise InputError(f"The image {image} has no label map: {expected} is missing.",
                             "Every image in imagesTr needs its label map in labelsTr (nnU-Net: CASE_0000.nii.gz "
                             "-> CASE.nii.gz; Decathlon: the same file name).")
        images[case_id] = image
    if extra_channels:
        log.warning("%s: %d image file(s) of channels other than _0000 are ignored; pairs use the first channel "
                    "(the CT) only", images_dir, extra_channels)
    orphans = sorted(set(labels) - set(images))
    if orphans:
        raise InputError(f"The label map {labels[orphans[0]]} has no image in {images_dir}"
                         + (f" ({len(orphans) - 1} more label maps lack theirs)." if len(orphans) > 1 else "."),
                         "Add the CT (nnU-Net: CASE_0000.nii.gz, Decathlon: the same file name) or remove the label "
                         "map.")
    if not images:
        raise InputError(f"The pairs folder {folder} holds no images in {IMAGES_DIR}/.", _ACCEPTED)
    return [PairCase(_safe_id(case_id), images[case_id], labels[case_id], {}, names) for case_id in images]


def label_names_from_dataset_json(meta: dict, path) -> dict[int, str]:
    """{value: name} without background, from nnU-Net v2 ({name: value or [values]}) or Decathlon / nnU-Net v1
    ({"value": name}) "labels". An nnU-Net region (a list of values) names each of its values unless a later
    entry names it again: nnU-Net lists regions from the largest to the innermost."""
    labels = meta.get("labels")
    hint = ('dataset.json needs "labels", as in nnU-Net v2 {"background": 0, "prostate": 1} or in the Decathlon '
            '{"0": "background", "1": "prostate"}.')
    if not isinstance(labels, dict) or not labels:
        raise InputError(f"{path} has no \"labels\" naming the label values.", hint)
    names: dict[int, str] = {}
    if all(_whole_number(key) is not None for key in labels):  # Decathlon: {"1": "left atrium"}
        for key, name in labels.items():
            names[_whole_number(key)] = str(name)
    else:
        for name, value in labels.items():
            values = [_whole_number(v) for v in (value if isinstance(value, list) else [value])]
            if not values or any(v is None for v in values):
                raise InputError(f"{path} gives the label {name!r} the value {value!r}, which is not a whole "
                                 "number (or a list of them).", hint)
            for v in values:
                names[v] = str(name)
    bad = [v for v in names if not 0 <= v < _LABEL_VALUE_LIMIT]
    if bad:
        raise InputError(f"{path} names the label value {bad[0]}, outside 0..{_LABEL_VALUE_LIMIT - 1}.", hint)
    names.pop(0, None)  # 0 is background whatever it is called
    return dict(sorted(names.items()))


# --- TotalSegmentator

def _totalsegmentator_ct(folder: Path) -> Path | None:
    return next((p for p in sorted(folder.iterdir()) if p.is_file() and image_suffix(p)
                 and strip_image_suffix(p) == TOTALSEG_CT_STEM), None)


def _is_totalsegmentator_case(folder: Path) -> bool:
    return (folder / TOTALSEG_MASKS_DIR).is_dir() and _totalsegmentator_ct(folder) is not None


def _totalsegmentator_case(folder: Path) -> PairCase:
    masks_dir = folder / TOTALSEG_MASKS_DIR
    masks = sorted(p for p in masks_dir.iterdir() if _visible(p) and p.is_file() and image_suffix(p))
    if not masks:
        raise InputError(f"The TotalSegmentator folder {masks_dir} holds no masks.",
                         "It needs one binary mask file per structure, e.g. prostate.nii.gz, urinary_bladder.nii.gz.")
    label_files = {strip_image_suffix(p): p for p in masks}
    # No values in the data: number the structures in name order so every case agrees.
    label_names = {value: name for value, name in enumerate(label_files, start=1)}
    return PairCase(_safe_id(folder.resolve().name), _totalsegmentator_ct(folder), None, label_files, label_names)


# --- Slicer NAME + NAME.seg.nrrd

def _slicer_pair(segmentation: Path) -> PairCase:
    stem = segmentation.name[: -len(SEG_NRRD_SUFFIX)]
    volumes = sorted(p for p in segmentation.parent.iterdir()
                     if _visible(p) and p.is_file() and image_suffix(p) and strip_image_suffix(p) == stem)
    if not volumes:
        raise InputError(f"The segmentation {segmentation} has no volume beside it: {stem}.nii.gz (or .nrrd, "
                         ".mha, ...) is missing.", "Save the CT as NAME.nii.gz or NAME.nrrd next to NAME.seg.nrrd.")
    if len(volumes) > 1:
        raise InputError(f"The segmentation {segmentation} has {len(volumes)} volumes beside it "
                         f"({', '.join(p.name for p in volumes)}); one is expected.",
                         "Keep one CT file per name in the folder.")
    return PairCase(_safe_id(stem), volumes[0], segmentation, {}, seg_nrrd_label_names(segmentation))


def seg_nrrd_label_names(path) -> dict[int, str]:
    """{label value: segment name} from a Slicer .seg.nrrd header (SegmentN_ID/_Name/_LabelValue/_Layer, as
    vtkMRMLSegmentationStorageNode writes them). Segments in several layers can overlap: refused."""
    path = Path(path)
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        raise InputError(f"The segmentation {path} cannot be read: it is damaged or not a NRRD file.",
                         "Save the segmentation again from Slicer.") from None
    keys = set(reader.GetMetaDataKeys())
    meta = {key: reader.GetMetaData(key).strip() for key in keys}
    overlap_hint = ("In Slicer remove the overlaps (Segment Editor, Logical operators: subtract) and save again, or "
                    "export the segments to one labelmap volume and save that as NAME.seg.nrrd.")
    if "Segmentation_Extent" in keys:  # Slicer < 4.11: one 4D frame per segment
        raise InputError(f"The segmentation {path} uses the old one-layer-per-segment format, where segments can "
                         "overlap.", "Load it in Slicer 4.11 or later and save it again. " + overlap_hint)
    segments = []
    while f"Segment{len(segments)}_ID" in keys:
        i = len(segments)
        name = meta.get(f"Segment{i}_Name") or meta[f"Segment{i}_ID"]
        value = _whole_number(meta.get(f"Segment{i}_LabelValue", "1"))
        layer = _whole_number(meta.get(f"Segment{i}_Layer", str(i)))
        if value is None or layer is None:
            raise InputError(f"The segmentation {path} has an unreadable label value or layer for segment {name!r}.",
                             "Save the segmentation again from Slicer.")
        segments.append((name, value, layer))
    layers = max(reader.GetNumberOfComponents(), len({layer for _, _, layer in segments}))
    if layers > 1:
        raise InputError(f"The segmentation {path} stores overlapping segments in {layers} layers; one label per "
                         "voxel is needed.", overlap_hint)
    if not segments:  # a plain labelmap NRRD: name the values the way Slicer does when it loads one
        values = np.unique(sitk.GetArrayFromImage(_whole_number_image(path)))
        return {int(v): f"Segment_{int(v)}" for v in values if v != 0}
    names: dict[int, str] = {}
    for name, value, _ in segments:
        if value in names:
            raise InputError(f"The segmentation {path} gives segments {names[value]!r} and {name!r} the same label "
                             f"value {value}.", "Save the segmentation again from Slicer.")
        if value != 0:
            names[value] = name
    return dict(sorted(names.items()))


# ---------------------------------------------------------------------------------------------- structures

def structure_names(cases: Iterable[PairCase]) -> list[str]:
    """Every source structure name in the data, ordered by its smallest source value (then by name)."""
    lowest: dict[str, int] = {}
    for case in cases:
        for value, name in case.label_names.items():
            lowest[name] = min(lowest.get(name, value), value)
    return sorted(lowest, key=lambda name: (lowest[name], name))


def select_structures(cases: Iterable[PairCase], spec: str | None = None) -> list[Structure]:
    """The structures to learn: every one in the data (spec None or empty), or those `spec` names, e.g.
    "prostate,bladder,femur=femur_left+femur_right". A structure's output value is its 1-based position."""
    cases = list(cases)
    names = structure_names(cases)
    if not names:
        raise InputError("The paired data names no structures.", "Check dataset.json's \"labels\" or the segment "
                         "names of the label files.")
    if spec is None or not spec.strip():
        structures = [Structure(name, (name,)) for name in names]
    else:
        structures = []
        for item in spec.split(","):
            if not item.strip():
                continue
            out, merge, rest = item.partition("=")
            out = out.strip()
            sources = tuple(s.strip() for s in rest.split("+")) if merge else (out,)
            if not out or not all(sources):
                raise InputError(f"The structure choice {spec!r} has an empty name in {item.strip()!r}.", _SPEC_HINT)
            for source in sources:
                if source not in names:
                    raise InputError(f"The structure {source!r} (--structures) appears in no case.",
                                     f"Structures in the data: {', '.join(names)}. " + _SPEC_HINT)
            structures.append(Structure(out, sources))
        if not structures:
            raise InputError(f"The structure choice {spec!r} names no structure.", _SPEC_HINT)
    _check_structures(structures)
    return structures


def _check_structures(structures: Sequence[Structure]) -> None:
    outputs: set[str] = set()
    used: dict[str, str] = {}
    for s in structures:
        if s.name.lower() == "background":
            raise InputError("The structure name 'background' is reserved for label 0.", "Choose another name.")
        if s.name in outputs:
            raise InputError(f"The structure {s.name!r} is chosen twice.", _SPEC_HINT)
        outputs.add(s.name)
        for source in s.sources:
            if source in used:
                raise InputError(f"The structure {source!r} is put into both {used[source]!r} and {s.name!r}.",
                                 "Each source structure can go into one output structure only.")
            used[source] = s.name
    if len(structures) > MAX_STRUCTURES:
        raise InputError(f"{len(structures)} structures are chosen; at most {MAX_STRUCTURES} fit a label map.",
                         "Pick fewer structures with --structures, or merge some.")


# ---------------------------------------------------------------------------------------------- reading

def read_pair(case: PairCase, structures: Sequence[Structure]) -> tuple[sitk.Image, sitk.Image]:
    """(CT as read, UInt8 label map 0..K on the CT's grid) where value k is `structures[k-1]`. A label map on
    another grid is resampled nearest-neighbour (with a warning); no overlap or fractional values: InputError."""
    ct = read_image(case.image, what="CT")
    output_of = {source: k for k, s in enumerate(structures, start=1) for source in s.sources}
    if case.labels is not None:
        labels = _source_label_map(case)
        lookup = np.zeros(int(np.max(sitk.GetArrayViewFromImage(labels), initial=0)) + 1, np.uint8)
        for value, name in case.label_names.items():
            if value < lookup.size and name in output_of:
                lookup[value] = output_of[name]
        mapped = sitk.GetImageFromArray(lookup[sitk.GetArrayViewFromImage(labels)])
        mapped.CopyInformation(labels)
        return ct, _onto_grid(mapped, ct, case.labels)
    out = np.zeros(sitk.GetArrayViewFromImage(ct).shape, np.uint8)
    overlapping = 0
    for name, path in case.label_files.items():
        if name not in output_of:
            continue
        mask = _whole_number_image(path)
        inside = sitk.GetArrayFromImage(_onto_grid(sitk.Cast(mask != 0, sitk.sitkUInt8), ct, path)) > 0
        overlapping += int(np.count_nonzero(inside & (out != 0) & (out != output_of[name])))
        out[inside] = output_of[name]
    if overlapping:
        log.warning("%s: %d voxels belong to more than one chosen mask; the structure listed later keeps them",
                    case.label_source, overlapping)
    labels = sitk.GetImageFromArray(out)
    labels.CopyInformation(ct)
    return ct, labels


def _source_label_map(case: PairCase) -> sitk.Image:
    """The case's label file with whole-number values, every non-zero value named by the data."""
    labels = _whole_number_image(case.labels)
    present = np.unique(sitk.GetArrayViewFromImage(labels))
    unnamed = [int(v) for v in present if v != 0 and int(v) not in case.label_names]
    if unnamed:
        shown = ", ".join(map(str, unnamed[:10])) + (", ..." if len(unnamed) > 10 else "")
        where = "its segment names" if case.labels.name.lower().endswith(SEG_NRRD_SUFFIX) else DATASET_JSON
        raise InputError(f"The label map {case.labels} holds values {shown} that {where} does not name.",
                         "Name every label value (dataset.json \"labels\" or the Slicer segments) or set those "
                         "voxels to 0.")
    return labels


def _whole_number_image(path: Path) -> sitk.Image:
    """A label file as UInt16; fractional values (float files) or values outside 0..65535: InputError."""
    return sitk.Cast(read_label_image(path, _LABEL_VALUE_LIMIT), sitk.sitkUInt16)


def _onto_grid(labels: sitk.Image, ct: sitk.Image, path: Path) -> sitk.Image:
    """`labels` on the CT's grid: copied when the grids match, else resampled nearest-neighbour (warning when the
    voxel lattices differ; a cropped label map on the CT's own lattice is pasted without one)."""
    if labels.GetSize() == ct.GetSize() and _same_lattice(labels, ct, exact_origin=True):
        result = sitk.Image(labels)
        result.CopyInformation(ct)  # float rounding in headers must not make the grids differ
        return sitk.Cast(result, sitk.sitkUInt8)
    if not _overlaps(labels, ct):
        raise InputError(f"The label map {path} does not overlap its CT: their physical extents are disjoint.",
                         "Check that the label map belongs to this CT and that both files keep their origin and "
                         "orientation (re-export them from the same tool).")
    if not _same_lattice(labels, ct, exact_origin=False):
        log.warning("The label map %s is on another grid than its CT (size %s, spacing %s vs %s, %s); it is "
                    "resampled nearest-neighbour onto the CT's grid", path, "x".join(map(str, labels.GetSize())),
                    _mm(labels.GetSpacing()), "x".join(map(str, ct.GetSize())), _mm(ct.GetSpacing()))
    return sitk.Resample(labels, ct, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)


def _same_lattice(a: sitk.Image, b: sitk.Image, exact_origin: bool) -> bool:
    """Same spacing and direction, and a's voxel centres on b's (whole-voxel offset; zero if exact_origin)."""
    spacing = np.array(b.GetSpacing())
    if not np.allclose(a.GetSpacing(), spacing, rtol=1e-4, atol=1e-6) \
            or not np.allclose(a.GetDirection(), b.GetDirection(), atol=1e-4):
        return False
    offset = np.array(b.TransformPhysicalPointToContinuousIndex(a.GetOrigin()))
    target = np.zeros(3) if exact_origin else np.round(offset)
    return bool(np.all(np.abs(offset - target) < 1e-3))


def _overlaps(a: sitk.Image, b: sitk.Image) -> bool:
    """Whether a's voxel box (corners at +-0.5 voxel) meets b's, in b's continuous index space."""
    size = np.array(a.GetSize())
    corners = [a.TransformContinuousIndexToPhysicalPoint([float(c) for c in np.where(bits, size - 0.5, -0.5)])
               for bits in np.ndindex(2, 2, 2)]
    in_b = np.array([b.TransformPhysicalPointToContinuousIndex(p) for p in corners])
    low, high = in_b.min(axis=0), in_b.max(axis=0)
    return bool(np.all(high > -0.5) and np.all(low < np.array(b.GetSize()) - 0.5))


# ---------------------------------------------------------------------------------------------- writing

def write_nnunet_pairs(out, pairs: Iterable[tuple[str, sitk.Image, sitk.Image]], structures: Sequence[Structure], *,
                       channel_name: str = "CT", extra: dict | None = None) -> Path:
    """Write (case_id, CT, label map) pairs as an nnU-Net v2 raw folder: imagesTr/CASE_0000.nii.gz (the CT as
    given), labelsTr/CASE.nii.gz (UInt8, values 0..K) and dataset.json (channel_names, labels, numTraining,
    file_ending, plus "structures" with each one's value and sources, plus `extra`). Built in a staged folder:
    `out` appears complete or not at all. `out` must be new or empty."""
    out = Path(out).expanduser()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise InputError(f"The output folder {out} already exists and is not empty.",
                         "Choose a new folder, or delete the old one first.")
    structures = list(structures)
    _check_structures(structures)
    dataset = {
        "channel_names": {"0": channel_name},
        "labels": {"background": 0, **{s.name: k for k, s in enumerate(structures, start=1)}},
        "numTraining": 0,
        "file_ending": FILE_ENDING,
        "structures": [{"name": s.name, "value": k, "sources": list(s.sources)}
                       for k, s in enumerate(structures, start=1)],
    }
    clash = sorted(set(extra or {}) & set(dataset))
    if clash:
        raise ValueError(f"write_nnunet_pairs: extra must not replace {', '.join(clash)}")
    seen: set[str] = set()
    with staged_folder(out) as staging:
        for case_id, ct, labels in pairs:
            if case_id != _safe_id(case_id) or case_id in seen:
                raise ValueError(f"write_nnunet_pairs: case id {case_id!r} is not unique or not filesystem-safe")
            seen.add(case_id)
            write_image(ct, staging / IMAGES_DIR / f"{case_id}_0000{FILE_ENDING}")
            write_image(_output_label_map(case_id, ct, labels, len(structures)),
                        staging / LABELS_DIR / f"{case_id}{FILE_ENDING}")
        dataset["numTraining"] = len(seen)
        write_json(staging / DATASET_JSON, {**dataset, **(extra or {})})
    return out


def _output_label_map(case_id: str, ct: sitk.Image, labels: sitk.Image, num_structures: int) -> sitk.Image:
    """The label map as written: UInt8 on exactly the CT's geometry; a programming error if it cannot be."""
    values = sitk.GetArrayViewFromImage(labels)
    if values.size and (values.min() < 0 or values.max() > num_structures
                        or not np.array_equal(values, np.round(values))):
        raise ValueError(f"write_nnunet_pairs: labels of {case_id} hold values outside 0..{num_structures}")
    if labels.GetSize() != ct.GetSize() or not _same_lattice(labels, ct, exact_origin=True):
        raise ValueError(f"write_nnunet_pairs: labels of {case_id} are not on the CT's grid")
    result = sitk.Cast(labels, sitk.sitkUInt8)
    result.CopyInformation(ct)
    return result


def read_dataset_structures(folder) -> list[Structure]:
    """The structures recorded in a folder written by `write_nnunet_pairs` (or any nnU-Net v2 dataset.json: each
    label becomes a structure of its own), in label-value order."""
    path = Path(folder).expanduser() / DATASET_JSON
    meta = read_json(path, "label names of the data set")
    if isinstance(meta.get("structures"), list):
        recorded = sorted(meta["structures"], key=lambda s: int(s["value"]))
        return [Structure.from_dict(s) for s in recorded]
    return [Structure(name, (name,)) for name in label_names_from_dataset_json(meta, path).values()]


# ---------------------------------------------------------------------------------------------- helpers

def _whole_number(value) -> int | None:
    """An int from an int, a whole float, or text holding one; None otherwise (bools are not numbers here)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return int(value) if value.is_integer() else None
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            return None
    return None


def _mm(spacing) -> str:
    return "x".join(f"{s:g}" for s in spacing) + " mm"
