"""Cases -> a prepared, cached, split training set; random batches with augmentation.

Every case is read and resampled once; the result is cached on disk in the run folder (keyed by file identity and
preprocessing settings, so --resume and a second run on the same data skip the work) and kept in CPU memory in
compact form (CT as float16 model units, masks as uint8 labels). Only the current batch goes to the GPU.
"""

from __future__ import annotations

import hashlib
import json
import logging
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from CTDiffusionLib.data.augment import augment_sample
from CTDiffusionLib.data.discovery import Case, read_case, subject_of
from CTDiffusionLib.data.preprocess import case_to_grid, ct_grid_geometry, orientation_of, reorient, to_unit
from CTDiffusionLib.data.volume_checks import air_warning, check_hounsfield, check_training_volume
from CTDiffusionLib.errors import InputError
from CTDiffusionLib.profiles import Profile, get_profile
from CTDiffusionLib.runfolder import atomic_write

log = logging.getLogger("ctdiffusion")
CACHE_VERSION = 2  # 2: cases reoriented to preprocess.ORIENTATION first


@dataclass
class PreparedData:
    samples: list[np.ndarray]  # compact per-sample arrays (spatial dims only)
    sample_case: list[int]  # index into cases for each sample
    cases: list[Case]
    split: dict[str, list[int]]  # "train"/"val" -> case indices
    geometry: dict  # output geometry for generated volumes: spacing, origin, direction, size
    stats: dict = field(default_factory=dict)
    # a paired run's CT model: each sample's label map (uint8, 0..K, same grid), the network's condition
    label_maps: list[np.ndarray] | None = None
    num_structures: int = 0

    def sample_indices(self, part: str) -> list[int]:
        wanted = set(self.split[part])
        return [i for i, c in enumerate(self.sample_case) if c in wanted]


def file_identity(path: Path) -> list:
    """(path, size, mtime) of a file, or of every file in a folder (a DICOM series): what a cache entry is of."""
    path = Path(path)
    stat_paths = sorted(path.iterdir()) if path.is_dir() else [path]
    return [(str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns) for p in stat_paths if p.is_file()]


def _cache_key(case: Case, data_cfg: dict, profile: Profile, intensity: dict, extra: dict | None = None) -> str:
    """`extra` (a paired run's label files and structures) is part of the key only when given, so paired and
    unpaired entries of the same CT never mix and existing unpaired caches keep their keys."""
    settings = {"v": CACHE_VERSION, "profile": profile.name, "grid": data_cfg["grid"], "mode": data_cfg["mode"],
                "series": case.series_uid, "intensity": intensity, **({"pairs": extra} if extra else {})}
    return hashlib.sha1(json.dumps([file_identity(case.path), settings]).encode()).hexdigest()[:16]


def _prepare_case(case: Case, profile: Profile, data_cfg: dict, intensity: dict) -> tuple[list[np.ndarray], dict]:
    """Read + resample one case; returns compact arrays (intensity: float16 model units, labels: uint8) and its
    geometry/statistics."""
    return prepare_image(read_case(case, profile), profile, data_cfg, intensity, case.path)


def prepare_image(stored, profile: Profile, data_cfg: dict, intensity: dict, path) -> tuple[list[np.ndarray], dict]:
    """One read image (as stored) -> its compact arrays on the grid and its geometry/statistics."""
    check_training_volume(stored, path)  # a 3x3x3 file is not silently resampled up to the grid
    if not profile.is_label_map and str(intensity.get("kind", "")).startswith("hu"):
        voxels = sitk.GetArrayViewFromImage(stored)
        check_hounsfield(voxels, path)  # uint16 near 60000, a scale slope of 1e30, 1e300, a constant volume
        warning = air_warning(voxels, path)
        if warning:
            log.warning(warning)
    image = reorient(stored)  # one voxel order for all cases: a scan stored upside down must not train flipped
    samples, grid_spacing = case_to_grid(image, profile, data_cfg["grid"], data_cfg["mode"])
    info = {"size": list(image.GetSize()), "spacing": list(image.GetSpacing()), "grid_spacing": list(grid_spacing),
            "stored_orientation": orientation_of(stored)}
    if not profile.is_label_map:
        hu = samples[0]
        _, origin, direction = ct_grid_geometry(image, data_cfg["grid"])
        info.update({"origin": list(origin), "direction": list(direction),
                     "hu": {"mean": float(hu.mean()), "std": float(hu.std()),
                            "p1": float(np.percentile(hu, 1)), "p99": float(np.percentile(hu, 99))}})
        return [to_unit(hu, profile, intensity)[0].astype(np.float16)], info
    if not samples:
        names = ", ".join(c.name for c in profile.foreground_classes)
        raise InputError(f"{path} contains only background (no {names} labels).",
                         "Remove empty masks from the data set.")
    counts = np.bincount(np.concatenate([c.ravel() for c in samples]), minlength=profile.channels)
    info.update({"origin": [0.0, 0.0, 0.0], "direction": [1, 0, 0, 0, 1, 0, 0, 0, 1], "samples": len(samples),
                 "label_voxels": {c.name: int(counts[c.value]) for c in profile.foreground_classes}})
    return samples, info


def _load_or_prepare(case: Case, profile: Profile, data_cfg: dict, intensity: dict, cache_dir: Path | None):
    cache_file = (cache_dir / f"{case.case_id}-{_cache_key(case, data_cfg, profile, intensity)}.npz"
                  if cache_dir else None)
    return load_or_prepare(cache_file, lambda: _prepare_case(case, profile, data_cfg, intensity))


def load_or_prepare(cache_file: Path | None, prepare) -> tuple[list[np.ndarray], dict]:
    """(arrays, info) from `cache_file` when it exists, else from `prepare()`, then cached (atomically)."""
    if cache_file and cache_file.exists():
        try:
            with np.load(cache_file, allow_pickle=False) as z:
                arrays = [z[f"a{i}"] for i in range(int(z["n"]))]
                info = json.loads(str(z["info"]))
            if not isinstance(info, dict):
                raise ValueError("its info is not a JSON object")
            return arrays, info
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:  # damaged, cut short, garbage
            log.warning("The cached case %s is damaged (%s); it is prepared again from its data.", cache_file,
                        str(exc) or type(exc).__name__)
            cache_file.unlink(missing_ok=True)
    arrays, info = prepare()
    if cache_file:
        atomic_write(cache_file, lambda tmp: np.savez(tmp, n=len(arrays), info=json.dumps(info),
                                                       **{f"a{i}": a for i, a in enumerate(arrays)}))
    return arrays, info


def split_cases(cases: list[Case], profile, val_fraction: float, seed: int) -> dict[str, list[int]]:
    """Train/validation split by subject: the cases of one patient (ACDC ED + ES) land on the same side."""
    profile = get_profile(profile)
    subjects = sorted({subject_of(c, profile) for c in cases})
    rng = np.random.default_rng(seed)
    order = [subjects[i] for i in rng.permutation(len(subjects))]
    n_val = int(round(val_fraction * len(subjects))) if len(subjects) > 1 else 0
    n_val = min(max(n_val, 1 if val_fraction > 0 and len(subjects) > 1 else 0), len(subjects) - 1)
    val_subjects = set(order[:n_val])
    split = {"train": [], "val": []}
    for i, c in enumerate(cases):
        split["val" if subject_of(c, profile) in val_subjects else "train"].append(i)
    return split


# Below this many held-out volumes the validation loss and the quality report's set distances (realism, novelty)
# depend mostly on which few cases happened to be held out: they are shown, but flagged as indicative only.
FEW_HELD_OUT = 5


def split_summary(data: PreparedData) -> tuple[str, list[str]]:
    """One line saying what the split is, plus warnings a researcher must see; InputError when nothing can train."""
    n_train, n_val = len(data.split["train"]), len(data.split["val"])
    train_samples, val_samples = len(data.sample_indices("train")), len(data.sample_indices("val"))
    if not train_samples:
        raise InputError(f"The split leaves no training volumes ({n_train} training, {n_val} validation cases, "
                         f"{train_samples} training samples).",
                         "Add cases, or lower --val-fraction so at least one case is trained on.")
    summary = (f"split: {_count(n_train, 'training volume')} ({_count(train_samples, 'sample')}), "
               f"{_count(n_val, 'validation volume')} ({_count(val_samples, 'sample')})")
    warnings = []
    if n_val == 0:
        warnings.append(f"No validation volumes: with {_count(len(data.cases), 'case')} and "
                        "this --val-fraction nothing is held out, so there is no validation loss and the quality "
                        "report has no unseen real volumes to compare with; add cases or raise --val-fraction.")
    elif n_val < FEW_HELD_OUT:
        warnings.append(f"Only {_count(n_val, 'validation volume')}: the validation loss and the quality "
                        f"report on held-out data are indicative only below {FEW_HELD_OUT} held-out volumes.")
    if n_train < FEW_HELD_OUT:
        warnings.append(f"Only {_count(n_train, 'training volume')}: the model will mostly learn these "
                        "cases by heart; check the novelty section of the quality report.")
    return summary, warnings


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def prepare_dataset(cases: list[Case], profile, data_cfg: dict, cache_dir: Path | None, seed: int,
                    on_case=None, intensity: dict | None = None) -> PreparedData:
    """Every case on the training grid in model units, by the run's `intensity` config (default: the profile's)."""
    profile = get_profile(profile)
    intensity = intensity or profile.intensity_config()
    samples, sample_case, infos = [], [], []
    for i, case in enumerate(cases):
        arrays, info = _load_or_prepare(case, profile, data_cfg, intensity, cache_dir)
        samples += arrays
        sample_case += [i] * len(arrays)
        infos.append(info)
        if on_case:
            on_case(i + 1, len(cases))
    return assemble(cases, profile, data_cfg, seed, samples, sample_case, infos)


def assemble(cases: list[Case], profile: Profile, data_cfg: dict, seed: int, samples: list[np.ndarray],
             sample_case: list[int], infos: list[dict]) -> PreparedData:
    """Prepared cases -> their split, the output geometry (median grid spacing/origin) and dataset.json's stats."""
    split = split_cases(cases, profile, data_cfg.get("val_fraction", 0.2), seed)
    grid_spacing = np.median(np.array([inf["grid_spacing"] for inf in infos]), axis=0)
    grid = list(data_cfg["grid"]) + ([1] if len(data_cfg["grid"]) == 2 else [])
    geometry = {"spacing": [float(s) for s in grid_spacing],
                "origin": [float(o) for o in np.median(np.array([inf["origin"] for inf in infos]), axis=0)],
                "direction": [float(d) for d in infos[0]["direction"]], "size": grid}
    stats = {"cases": [{"id": c.case_id, "path": str(c.path), "split": "val" if i in split["val"] else "train",
                        "conditions": dict(c.conditions), **inf} for i, (c, inf) in enumerate(zip(cases, infos))],
             "num_samples": len(samples), "num_train_samples": sum(1 for c in sample_case if c in set(split["train"])),
             "grid": grid}
    if not profile.is_label_map:
        stats["hu_mean"] = float(np.mean([inf["hu"]["mean"] for inf in infos]))
    return PreparedData(samples, sample_case, list(cases), split, geometry, stats)


def to_model_space(sample: np.ndarray, profile) -> torch.Tensor:
    """Compact stored sample -> channels-first float tensor in [-1, 1]."""
    profile = get_profile(profile)
    if profile.is_label_map:
        return torch.from_numpy(to_unit(sample, profile))
    return torch.from_numpy(sample.astype(np.float32))[None]  # stored already in model units


def make_batch(data: PreparedData, indices, profile, aug_cfg: dict | None, rng: np.random.Generator
               ) -> torch.Tensor:
    """Stack samples (augmented with `rng` when aug_cfg is given) into a (B, C, spatial...) float tensor."""
    profile = get_profile(profile)
    out = []
    for i in indices:
        sample = data.samples[i]
        if aug_cfg:
            sample = augment_sample(sample, aug_cfg, rng, is_label=profile.is_label_map)
        out.append(to_model_space(sample, profile))
    return torch.stack(out)
