"""Inputs of the evaluation: generated samples (+ sidecars), real and training cases, all on one grid.

Generated volumes define the grid (they are what the model produces); real/train cases are brought to it with the
project's discovery and preprocessing (CTDiffusionLib.data). Every array here is (z, y, x): float32 HU for
intensity profiles, uint8 labels for label-map profiles (2D-slice masks are (1, y, x)), in the model's voxel order
(preprocess.ORIENTATION): training reorients every case to it before gridding, so a model reproduces cases in that
order, and a case stored in another order (e.g. a NIfTI in RAS order) would otherwise be compared mirrored in x and
y, which no near-copy search undoes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from CTDiffusionLib.data.volume_io import image_suffix, read_image, strip_image_suffix
from CTDiffusionLib.errors import InputError
from CTDiffusionLib.profiles import PROFILES, Profile, get_profile


@dataclass
class Sample:
    name: str
    array: np.ndarray
    condition: dict | None = None
    meta: dict = field(default_factory=dict)


@dataclass
class GeneratedSet:
    samples: list
    profile: Profile
    mode: str  # "3d" or "2d"
    spacing: tuple  # (x, y, z) mm of the generated volumes

    @property
    def grid_xyz(self) -> tuple:
        z, y, x = self.samples[0].array.shape
        return (x, y, z)


def require_folder(path, flag: str) -> Path:
    p = Path(path)
    if not p.is_dir():
        raise InputError(f"{flag} {p} is not a folder.", f"Give {flag} an existing folder.")
    return p


def _volume_files(folder: Path) -> list:
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".") and image_suffix(p))


def _looks_like_labels(arr: np.ndarray) -> bool:
    """A label map of some kind: whole non-negative values, few distinct ones. CT in HU has negative air values and
    hundreds of levels, so a label map with a stray label 4 is still recognised as masks (and refused by name)."""
    if arr.size == 0 or arr.min() < 0:
        return False
    if not np.issubdtype(arr.dtype, np.integer) and not np.array_equal(arr, np.round(arr)):
        return False
    return np.unique(arr).size <= 16


def _check_labels(raw: np.ndarray, path: Path, profile: Profile) -> None:
    """Mask labels are checked on the values as stored, before any cast (a cast to uint8 would turn 2.6 into 2)."""
    top = len(profile.classes) - 1
    legend = ", ".join(f"{c.value} {c.name}" for c in profile.classes)
    if not np.array_equal(raw, np.round(raw)):
        bad = raw[raw != np.round(raw)]
        raise InputError(f"Generated mask {path} holds fractional labels (e.g. {float(bad.flat[0]):g}); labels must be "
                         f"whole numbers 0..{top}.",
                         f"Write label maps ({legend}), not probabilities or interpolated masks.")
    lo, hi = float(raw.min()), float(raw.max())
    if lo < 0 or hi > top:
        intensity = [p.name for p in PROFILES.values() if not p.is_label_map]
        raise InputError(f"Generated mask {path} has labels {lo:g}..{hi:g}, outside 0..{top} ({legend}).",
                         "Fix that file" + (f", or pass --profile {intensity[0]} if these are intensity volumes."
                                            if intensity else "."))


def infer_profile(arrays: list, folder: Path) -> Profile:
    """No --profile and no sidecars: label maps belong to the label-map profile, anything else to the intensity
    profile; refused when that is ambiguous (several profiles of the kind). `evaluate` and `view` both use it."""
    labels = all(_looks_like_labels(a) for a in arrays)
    fits = [p for p in PROFILES.values() if p.is_label_map == labels]
    if len(fits) != 1:
        raise InputError(f"The profile of the volumes in {folder} cannot be told from the data.",
                         f"Pass --profile ({', '.join(PROFILES)}).")
    return fits[0]


def load_generated(folder, profile: str | None = None) -> GeneratedSet:
    """Read every volume in FOLDER with its sidecar; the profile comes from --profile, the sidecars, or the data."""
    folder = require_folder(folder, "--generated")
    files = _volume_files(folder)
    if not files:
        raise InputError(f"--generated {folder} contains no volumes (.nii.gz, .nii, .nrrd, .mha).",
                         "Point --generated at a folder written by `ctdiffusion generate` (synthetic_0001.nii.gz, ...).")
    from CTDiffusionLib.data.preprocess import reorient

    samples, paths, spacings, sidecar_profiles, modes = [], [], set(), set(), set()
    for f in files:
        img = reorient(read_image(f, what="generated volume"))  # a no-op unless resampled onto a --reference
        spacings.add(tuple(round(float(s), 4) for s in img.GetSpacing()))
        sidecar = {}
        side = f.with_name(Path(strip_image_suffix(f)).name + ".json")
        if side.exists():
            try:
                sidecar = json.loads(side.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError):
                raise InputError(f"Sidecar {side} is not valid JSON.", "Fix or delete that file.") from None
        if sidecar.get("profile"):
            sidecar_profiles.add(sidecar["profile"])
        if sidecar.get("mode"):
            modes.add(sidecar["mode"])
        cond = sidecar.get("condition") or None
        samples.append(Sample(Path(strip_image_suffix(f)).name, sitk.GetArrayFromImage(img), cond if isinstance(cond, dict) else None,
                              {k: sidecar.get(k) for k in ("seed", "sampler", "steps", "guidance_scale") if k in sidecar}))
        paths.append(f)
    shapes = {s.array.shape for s in samples}
    if len(shapes) > 1:
        raise InputError(f"Generated volumes in {folder} have different sizes {sorted(shapes)}.",
                         "Evaluate the output of one `ctdiffusion generate` run at a time.")
    if len(spacings) > 1:
        raise InputError(f"Generated volumes in {folder} have different voxel spacings {sorted(spacings)}.",
                         "Evaluate the output of one `ctdiffusion generate` run at a time.")
    if len(sidecar_profiles) > 1:
        raise InputError(f"Generated sidecars in {folder} mix profiles {sorted(sidecar_profiles)}.",
                         "Evaluate one profile at a time.")
    profile = profile or (sidecar_profiles.pop() if sidecar_profiles else None)
    if profile is None:
        profile = infer_profile([s.array for s in samples], folder)
    elif not isinstance(profile, Profile) and profile not in PROFILES:
        raise InputError(f"Unknown profile {profile!r} in the sidecars of {folder}.",
                         f"Pass --profile ({', '.join(PROFILES)}).")
    profile = get_profile(profile)
    for s, path in zip(samples, paths):
        if profile.is_label_map:
            _check_labels(s.array, path, profile)
            s.array = s.array.astype(np.uint8)
        else:
            s.array = s.array.astype(np.float32)
    mode = modes.pop() if len(modes) == 1 else ("2d" if samples[0].array.shape[0] == 1 else "3d")
    return GeneratedSet(samples, profile, mode, tuple(spacings.pop()))


# --------------------------------------------------------------------------------------------- real / train


def _run_folder_split(folder: Path) -> tuple | None:
    """A run folder given as --real: its dataset.json split -> (held-out paths, train paths), tolerant of layout."""
    ds = folder / "dataset.json"
    if not ds.exists():
        return None
    try:
        data = json.loads(ds.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    held, train = [], []  # accepted: {"cases": [{"path", "split"}]} or {"split": {"train": [...], "val": [...]}}
    for case in data.get("cases", []) if isinstance(data, dict) else []:
        if isinstance(case, dict) and case.get("path"):
            split = str(case.get("split", "")).lower()
            (train if split == "train" else held if split in ("val", "validation", "test", "held_out") else []).append(
                Path(case["path"]))
    split = data.get("split") if isinstance(data, dict) else None
    if isinstance(split, dict):
        train += [Path(p) for p in split.get("train", []) if isinstance(p, str)]
        held += [Path(p) for p in split.get("val", split.get("validation", [])) if isinstance(p, str)]
    return (held, train) if held else None


def load_cases(folder, gen: GeneratedSet, flag: str, paths: list | None = None) -> list:
    """Cases of FOLDER (or explicit PATHS) as Samples on the generated grid; 2D masks yield one Sample per slice.
    Discovery, reading and gridding are the project's own (the same the model was trained with)."""
    from CTDiffusionLib.data.discovery import discover_cases, read_case, subject_of
    from CTDiffusionLib.data.preprocess import ct_to_grid, masks_to_grid, reorient

    cases = discover_cases(paths if paths is not None else [str(folder)], gen.profile)
    samples = []
    for case in cases:
        cond = dict(case.conditions) or None
        img = reorient(read_case(case, gen.profile))  # the voxel order training used (data.dataset._prepare_case)
        subject = {"subject": subject_of(case, gen.profile)}  # ED and ES, and every slice, of one patient share it
        if not gen.profile.is_label_map:
            extent = [float(n * sp) for n, sp in zip(img.GetSize(), img.GetSpacing())]
            samples.append(Sample(case.case_id, np.asarray(ct_to_grid(img, gen.grid_xyz), np.float32), cond,
                                  {"extent_mm": extent, "spacing": [float(x) for x in img.GetSpacing()], **subject}))
        elif gen.mode == "2d":
            slices = masks_to_grid(img, gen.grid_xyz[:2], "2d")
            samples += [Sample(f"{case.case_id}_s{k:02d}", s[None].astype(np.uint8), cond, dict(subject))
                        for k, s in enumerate(slices)]
        else:
            samples += [Sample(case.case_id, a.astype(np.uint8), cond, dict(subject))
                        for a in masks_to_grid(img, gen.grid_xyz, "3d")]
    if not samples:
        raise InputError(f"{flag} {folder} gave no usable cases for the {gen.profile.name} profile (no labels?).",
                         "Check that the folder holds data of the same kind as the generated volumes.")
    return samples


def load_reference_sets(real, train, gen: GeneratedSet) -> tuple:
    """(real samples, train samples or None). A run folder as --real contributes its own held-out/train split."""
    real = require_folder(real, "--real")
    split = _run_folder_split(real)
    if split is not None:
        held, train_paths = split
        real_s = load_cases(real, gen, "--real", paths=held)
        if train is None and train_paths:
            return real_s, load_cases(real, gen, "--real (train split)", paths=train_paths)
    else:
        real_s = load_cases(real, gen, "--real")
    train_s = load_cases(require_folder(train, "--train"), gen, "--train") if train else None
    return real_s, train_s


FOV_TOLERANCE = 0.15  # relative difference in field of view (per axis) that is worth a warning


def geometry_warnings(gen: GeneratedSet, reference: list, flag: str) -> list:
    """Sentences for real/train cases whose field of view differs from the generated volumes' (intensity images
    only: label maps are cropped around the structures, so their field of view is the crop's). Everything is
    compared on the generated grid, so a different field of view means anatomy at a different scale."""
    if gen.profile.is_label_map:
        return []
    gen_extent = np.array(gen.grid_xyz, float) * np.array(gen.spacing, float)
    off = [s for s in reference if s.meta.get("extent_mm") is not None
           and np.any(np.abs(np.array(s.meta["extent_mm"]) / gen_extent - 1.0) > FOV_TOLERANCE)]
    if not off:
        return []
    ext = off[0].meta["extent_mm"]
    return [f"{len(off)} of {len(reference)} {flag} cases (e.g. {off[0].name}: "
            f"{ext[0]:.0f} x {ext[1]:.0f} x {ext[2]:.0f} mm) cover a field of view more than "
            f"{FOV_TOLERANCE:.0%} different from the generated volumes ({gen_extent[0]:.0f} x {gen_extent[1]:.0f} x "
            f"{gen_extent[2]:.0f} mm); on the common grid their anatomy has a different scale, which moves every "
            "metric. Compare sets with the same field of view (generate with --reference, or crop the real data)."]
