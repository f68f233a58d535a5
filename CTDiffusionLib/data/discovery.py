"""Finding the cases of a data set: folders of volumes, DICOM trees, ACDC-layout folders and list files.

Discovery only looks at names and headers (Info.cfg, DICOM series ids); voxels are read later, by the
caller, with `read_case`. Results are sorted by case id so every run sees the same order.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import SimpleITK as sitk

from CTDiffusionLib.data.volume_io import (
    SUPPORTED_SUFFIXES,
    dicom_series_ids,
    image_suffix,
    read_dicom_series,
    read_image,
    read_label_image,
    strip_image_suffix,
)
from CTDiffusionLib.errors import InputError
from CTDiffusionLib.profiles import Profile, get_profile

log = logging.getLogger("ctdiffusion")
ACDC_GROUPS = ("NOR", "MINF", "DCM", "HCM", "RV")
ACDC_REQUIRED_KEYS = ("ED", "ES", "Group")
LIST_FILE_SUFFIX = ".txt"
# ACDC masks: patient001_frame01_gt.nii.gz (applied to the name without its image suffix).
_ACDC_GT = re.compile(r"^(?P<patient>.+)_frame(?P<frame>\d+)_gt$")
_ACCEPTED = ("Accepted: a folder of " + "/".join(SUPPORTED_SUFFIXES) + " files, a folder tree of DICOM series, "
             "an ACDC-layout folder (cardiac masks), a single image file, or a .txt file listing paths.")


@dataclass(frozen=True)
class Case:
    """One training/evaluation case. Hash ignores `conditions` (a dict), equality does not."""

    case_id: str  # unique and filesystem-safe, e.g. "prostate_003" or "patient012_ED"
    path: Path  # an image file, or a folder holding the DICOM series `series_uid`
    series_uid: str | None = None
    conditions: dict = field(default_factory=dict, hash=False)

    def __post_init__(self):
        object.__setattr__(self, "path", Path(self.path))
        object.__setattr__(self, "conditions", dict(self.conditions))  # a private copy

    def to_dict(self) -> dict:
        """JSON-ready form (for dataset.json)."""
        return {"case_id": self.case_id, "path": str(self.path), "series_uid": self.series_uid,
                "conditions": dict(self.conditions)}

    @classmethod
    def from_dict(cls, d: dict) -> Case:
        return cls(d["case_id"], Path(d["path"]), d.get("series_uid"), d.get("conditions") or {})


def read_case(case: Case, profile) -> sitk.Image:
    """Read a discovered case: a label map (UInt8, checked against the profile's classes) or an intensity volume."""
    profile = get_profile(profile)
    if profile.is_label_map:
        return read_label_image(case.path, num_labels=len(profile.classes))
    if case.series_uid is not None:
        return read_dicom_series(case.path, case.series_uid)
    return read_image(case.path)


def subject_of(case: Case, profile) -> str:
    """The patient a case belongs to: cases of one subject (ACDC ED + ES frames) share train/validation side."""
    parent = Path(case.path).parent.name
    if "acdc" in get_profile(profile).folder_layouts and parent.startswith("patient"):
        return parent
    return case.case_id


def discover_cases(sources: Sequence[str | Path], profile) -> list[Case]:
    """All cases in `sources` for `profile`, sorted by case id; InputError naming the path on any problem."""
    profile = get_profile(profile)
    if isinstance(sources, (str, Path)):  # a lone path, not a sequence of characters
        sources = [sources]
    if not sources:
        raise InputError("No data was given.", _ACCEPTED)
    cases = [case for source in sources for case in _cases_from(Path(source).expanduser(), profile, True)]
    _check_unique_ids(cases)
    return sorted(cases, key=lambda c: c.case_id)


def _cases_from(path: Path, profile: Profile, allow_list_file: bool) -> list[Case]:
    if not path.exists():
        raise InputError(f"The data path {path} does not exist.", "Check the path (relative paths start from the "
                         "current folder).")
    if path.is_dir():
        return _cases_from_folder(path, profile)
    if allow_list_file and path.suffix.lower() == LIST_FILE_SUFFIX:
        return _cases_from_list_file(path, profile)
    if image_suffix(path) is None:
        raise InputError(f"The data file {path} has an unsupported file type.", _ACCEPTED)
    return [_file_case(path, profile)]


# what each folder layout a profile may accept is called in error messages
_LAYOUT_WORDS = {"acdc": "ACDC patient folders", "dicom": "DICOM series"}


def _cases_from_folder(folder: Path, profile: Profile) -> list[Case]:
    if "acdc" in profile.folder_layouts:
        patient_dirs = _acdc_patient_dirs(folder)
        if patient_dirs:
            _warn_patients_without_masks(folder, patient_dirs)
            return [case for d in patient_dirs for case in _acdc_patient_cases(d)]
    # Only the top level: subfolders of a volume folder are often derived data (masks, previews).
    files = sorted(p for p in folder.iterdir() if _visible(p) and p.is_file() and image_suffix(p))
    if files:
        return [_file_case(p, profile) for p in files]
    if "dicom" in profile.folder_layouts:
        cases = _dicom_cases(folder)
        if cases:
            return cases
    what = " or ".join(["supported image files"] + [_LAYOUT_WORDS[k] for k in profile.folder_layouts])
    raise InputError(f"The folder {folder} holds no {what}.", _ACCEPTED)


def _cases_from_list_file(list_file: Path, profile: Profile) -> list[Case]:
    return [case for entry in read_list_file(list_file, "image path") for case in _cases_from(entry, profile, False)]


def read_list_file(list_file: Path, what: str) -> list[Path]:
    """The paths of a .txt with one `what` per line; relative paths start at the list file's folder; '#' starts a
    comment line. InputError when it names nothing or a missing path."""
    lines = [line.strip() for line in read_text_file(list_file, "list file").splitlines()]
    entries = [list_file.parent / Path(line).expanduser() for line in lines if line and not line.startswith("#")]
    if not entries:
        raise InputError(f"The list file {list_file} names no paths.", f"Write one {what} per line.")
    missing = [str(p) for p in entries if not p.exists()]
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise InputError(f"The list file {list_file} names {len(missing)} missing path(s): {shown}.",
                         "Fix the paths; relative paths are read from the list file's folder.")
    return entries


def _file_case(path: Path, profile: Profile) -> Case:
    """A single image file; an ACDC *_gt file next to an Info.cfg keeps its group and phase."""
    if "acdc" in profile.folder_layouts and _ACDC_GT.match(strip_image_suffix(path)) and (path.parent / "Info.cfg").is_file():
        return _acdc_case(path, _checked_acdc_info(path.parent / "Info.cfg"))
    return Case(_safe_id(strip_image_suffix(path)), path)


def _dicom_cases(root: Path) -> list[Case]:
    """One case per DICOM series anywhere under `root`; ids from the folder path ('patient01_CT', + '_s2' ...)."""
    cases = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        if not any(not f.startswith(".") for f in filenames):
            continue
        series = dicom_series_ids(dirpath)
        relative = Path(dirpath).relative_to(root)
        base = "_".join(relative.parts) or root.name
        if len(series) > 1:
            log.warning("%s holds %d DICOM series; each becomes its own case (%s)", dirpath, len(series),
                        ", ".join(f"{base}_s{k + 1}" for k in range(len(series))))
        for k, uid in enumerate(series):
            case_id = base if len(series) == 1 else f"{base}_s{k + 1}"
            cases.append(Case(_safe_id(case_id), Path(dirpath), uid))
    return cases


# ---------------------------------------------------------------------------------------------- ACDC

def read_acdc_info(path) -> dict:
    """Parse an ACDC Info.cfg ('ED: 1', 'Group: DCM', ...) into a dict; numbers become int/float."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"The ACDC info file {path} does not exist.", "Each patient folder needs an Info.cfg.")
    info = {}
    for number, line in enumerate(read_text_file(path, "ACDC info file").splitlines(), start=1):
        if not line.strip():
            continue
        key, sep, value = line.partition(":")
        if not sep or not key.strip():
            raise InputError(f"The ACDC info file {path} has an unreadable line {number}: {line.strip()!r}.",
                             "Each line must look like 'Key: value', e.g. 'ED: 1' or 'Group: DCM'.")
        info[key.strip()] = _parse_value(value)
    return info


def _checked_acdc_info(path: Path) -> dict:
    info = read_acdc_info(path)
    missing = [k for k in ACDC_REQUIRED_KEYS if k not in info]
    if missing:
        raise InputError(f"The ACDC info file {path} lacks {', '.join(missing)}.",
                         "Info.cfg needs the lines 'ED: <frame>', 'ES: <frame>' and 'Group: <NOR|MINF|DCM|HCM|RV>'.")
    if str(info["Group"]) not in ACDC_GROUPS:  # a data set of one's own may mean it, so it is said, not refused
        log.warning("The ACDC info file %s names the group %r, which is not one of ACDC's %s; it becomes a condition "
                    "value of its own.", path, info["Group"], ", ".join(ACDC_GROUPS))
    for key in ("ED", "ES"):
        if not isinstance(info[key], int):
            raise InputError(f"The ACDC info file {path} has a non-integer {key} frame: {info[key]!r}.",
                             f"Write the {key} frame number, e.g. '{key}: 1'.")
    return info


def _acdc_patient_dirs(root: Path) -> list[Path]:
    """Folders under `root` (itself included) that hold *_frameNN_gt masks, sorted."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        if any(_is_acdc_gt(f) for f in filenames):
            found.append(Path(dirpath))
    return sorted(found)


def _warn_patients_without_masks(root: Path, patient_dirs: list[Path]) -> None:
    """An ACDC patient folder (Info.cfg) without *_gt masks is left out; say which."""
    with_masks = set(patient_dirs)
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        if "Info.cfg" in filenames and Path(dirpath) not in with_masks:
            log.warning("The ACDC patient folder %s has an Info.cfg but no *_frameNN_gt masks; it is left out.",
                        dirpath)


def read_text_file(path: Path, what: str) -> str:
    """A small text file (Info.cfg, condition CSV, list file) as UTF-8, UTF-8 with BOM or UTF-16 with BOM;
    InputError naming the file and the first byte that is not UTF-8 (e.g. a Latin-1 export)."""
    data = Path(path).read_bytes()
    if data[:2] in (b"\xff\xfe", b"\xfe\xff"):
        try:
            return data.decode("utf-16")
        except UnicodeDecodeError:
            pass
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InputError(f"The {what} {path} is not UTF-8 text (byte 0x{data[exc.start]:02x} at position "
                         f"{exc.start}).", "Save it as UTF-8 (Excel: 'CSV UTF-8'; a text editor: encoding "
                         "UTF-8).") from None


def _acdc_patient_cases(patient_dir: Path) -> list[Case]:
    info_path = patient_dir / "Info.cfg"
    if not info_path.is_file():
        raise InputError(f"The ACDC patient folder {patient_dir} has no Info.cfg.",
                         "Each patientXXX folder needs Info.cfg with 'ED:', 'ES:' and 'Group:' lines, as in the "
                         "ACDC release.")
    info = _checked_acdc_info(info_path)
    masks = sorted(p for p in patient_dir.iterdir() if p.is_file() and _is_acdc_gt(p.name))
    cases = [_acdc_case(p, info) for p in masks]
    missing = [phase for phase in ("ED", "ES") if phase not in {c.conditions["phase"] for c in cases}]
    if missing and cases:
        log.warning("The ACDC patient folder %s has no %s mask (frame %s in its Info.cfg): it trains on %s only.",
                    patient_dir, " or ".join(missing), " / ".join(str(info[m]) for m in missing),
                    " and ".join(c.conditions["phase"] for c in cases))
    return cases


def _acdc_case(mask: Path, info: dict) -> Case:
    match = _ACDC_GT.match(strip_image_suffix(mask))
    frame = int(match["frame"])
    phases = [phase for phase in ("ED", "ES") if info[phase] == frame]
    if not phases:
        raise InputError(f"The ACDC mask {mask} is frame {frame}, which is neither ED ({info['ED']}) nor "
                         f"ES ({info['ES']}) in its Info.cfg.", "Fix Info.cfg or remove the extra mask.")
    return Case(_safe_id(f"{match['patient']}_{phases[0]}"), mask,
                conditions={"group": str(info["Group"]), "phase": phases[0]})


def _is_acdc_gt(name: str) -> bool:
    if name.startswith(".") or image_suffix(name) is None:
        return False
    return bool(_ACDC_GT.match(strip_image_suffix(name)))


# ---------------------------------------------------------------------------------------------- conditions

def apply_condition_csv(cases: list[Case], csv_path) -> list[Case]:
    """Merge per-case conditions from a CSV ('file' column = path, file name or case id; other columns = conditions)."""
    csv_path = Path(csv_path).expanduser()
    if not csv_path.is_file():
        raise InputError(f"The condition table {csv_path} does not exist.", "Check the path.")
    with io.StringIO(read_text_file(csv_path, "condition table"), newline="") as handle:
        reader = csv.DictReader(handle)
        columns = [c.strip() for c in (reader.fieldnames or [])]
        if "file" not in columns:
            raise InputError(f"The condition table {csv_path} has no 'file' column (columns: "
                             f"{', '.join(columns) or 'none'}).",
                             "The first row must name the columns: file, then one column per condition, "
                             "e.g. 'file,group,phase'.")
        rows = [{(k or "").strip(): (v or "").strip() for k, v in row.items()} for row in reader]

    by_key: dict[str, dict] = {}
    for row in rows:
        name = row.get("file", "")
        if not name:
            continue
        conditions = {k: _parse_value(v) for k, v in row.items() if k and k != "file" and v != ""}
        keys = {name, Path(name).name, strip_image_suffix(name), str((csv_path.parent / name).resolve())}
        if name in by_key:
            raise InputError(f"The condition table {csv_path} lists {name!r} twice.", "Keep one row per case.")
        for key in keys:
            by_key.setdefault(key, conditions)

    merged = []
    for case in cases:
        keys = (str(case.path.resolve()), case.case_id, case.path.name, strip_image_suffix(case.path))
        conditions = next((by_key[k] for k in keys if k in by_key), None)
        if conditions is None:
            raise InputError(f"The condition table {csv_path} has no row for case {case.case_id} ({case.path}).",
                             "Add a row whose 'file' is the case's file name, path or case id.")
        merged.append(replace(case, conditions={**case.conditions, **conditions}))
    return merged


# ---------------------------------------------------------------------------------------------- helpers

def _check_unique_ids(cases: list[Case]) -> None:
    seen: dict[str, Case] = {}
    for case in cases:
        if case.case_id in seen:
            raise InputError(f"Two cases get the same id {case.case_id!r}: {seen[case.case_id].path} and {case.path}.",
                             "Case ids come from file and folder names; rename one, or list each file only once.")
        seen[case.case_id] = case


def _safe_id(text: str) -> str:
    """Filesystem-safe id: letters, digits, '.', '_' and '-' only."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._") or "case"


def _visible(path: Path) -> bool:
    return not path.name.startswith(".")  # hidden files include write_image's half-written temp files


def _parse_value(text: str):
    text = text.strip()
    try:
        return int(text)
    except ValueError:
        pass
    try:
        value = float(text)
    except ValueError:
        return text
    return value if math.isfinite(value) else text  # 'nan'/'inf' in a table are names, not numbers
