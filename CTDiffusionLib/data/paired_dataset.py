"""CT + label-map pairs on the training grid, for a paired run (`train --with-labels`).

Each pair is read by data/pairs.py (label map on the CT's grid, values 0..K for the selected structures), turned
to the run's voxel order, and brought to the training grid together: the CT as for an unpaired run (anti-aliased
linear, model units), the label map nearest-neighbour onto the very same grid (labels are never interpolated).
Both are cached in one entry whose key includes the label files and the structures, so paired and unpaired caches
of the same CT never mix. Batches augment CT and label map with the same draws (one zoom factor, one flip; the
label map nearest-neighbour) and drop the label map with the run's `cond_drop` probability: a dropped condition is
all zeros, the null condition of classifier-free guidance.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from CTDiffusionLib.data.augment import augment_sample
from CTDiffusionLib.data.dataset import PreparedData, assemble, file_identity, load_or_prepare, prepare_image, \
    to_model_space, _cache_key
from CTDiffusionLib.data.discovery import Case
from CTDiffusionLib.data.preprocess import ct_grid_geometry, labels_to_unit, reorient
from CTDiffusionLib.errors import InputError
from CTDiffusionLib.label_sets import structure_entries
from CTDiffusionLib.profiles import Profile


def as_structures(entries):
    """config.json / model.json structure entries -> pairs.Structure objects (what read_pair takes)."""
    from CTDiffusionLib.data.pairs import Structure

    return [Structure(name=e["name"], sources=tuple(e["sources"])) for e in entries]


def label_map_to_grid(labels: sitk.Image, ct_reoriented: sitk.Image, grid) -> np.ndarray:
    """uint8 (z, y, x) label array on the grid that covers `ct_reoriented`'s field of view (nearest neighbour)."""
    spacing, origin, direction = ct_grid_geometry(ct_reoriented, grid)
    out = sitk.Resample(reorient(sitk.Cast(labels, sitk.sitkUInt8)), [int(g) for g in grid], sitk.Transform(),
                        sitk.sitkNearestNeighbor, origin, spacing, direction, 0, sitk.sitkUInt8)
    return sitk.GetArrayFromImage(out)


def _pair_files(case) -> list[Path]:
    files = [case.labels] if case.labels is not None else []
    return files + [Path(p) for _, p in sorted((case.label_files or {}).items())]


def _prepare_pair(case, structures, profile: Profile, data_cfg: dict, intensity: dict):
    from CTDiffusionLib.data.pairs import read_pair

    ct, labels = read_pair(case, structures)
    arrays, info = prepare_image(ct, profile, data_cfg, intensity, case.image)
    grid_labels = label_map_to_grid(labels, reorient(ct), data_cfg["grid"])
    counts = np.bincount(grid_labels.ravel(), minlength=len(structures) + 1)
    info["label_voxels"] = {s.name: int(counts[i]) for i, s in enumerate(structures, start=1)}
    return arrays + [grid_labels], info


def prepare_pairs(cases, structure_list: list[dict], profile: Profile, data_cfg: dict, cache_dir: Path | None,
                  seed: int, intensity: dict) -> PreparedData:
    """Every pair on the training grid: samples are the CTs (float16 model units), label_maps their label maps."""
    structures = as_structures(structure_list)
    entries = structure_entries(structures)
    ct_cases = [Case(case_id=c.case_id, path=c.image) for c in cases]  # what the split and dataset.json need
    samples, label_maps, infos = [], [], []
    for case, ct_case in zip(cases, ct_cases):
        key = _cache_key(ct_case, data_cfg, profile, intensity,
                         {"structures": entries, "labels": [file_identity(p) for p in _pair_files(case)]})
        cache_file = cache_dir / f"{case.case_id}-pair-{key}.npz" if cache_dir else None
        (ct, grid_labels), info = load_or_prepare(
            cache_file, lambda: _prepare_pair(case, structures, profile, data_cfg, intensity))
        samples.append(ct)
        label_maps.append(grid_labels)
        infos.append(info)
    data = assemble(ct_cases, profile, data_cfg, seed, samples, list(range(len(cases))), infos)
    data.label_maps, data.num_structures = label_maps, len(structures)
    if not any(m.any() for m in label_maps):
        raise InputError("No selected structure is left on the training grid in any case.",
                         "Choose larger structures with --structures, or a finer --grid.")
    return data


def label_model_data(data: PreparedData) -> PreparedData:
    """The same cases and split with the label maps as the samples: what the label model learns."""
    return PreparedData(list(data.label_maps), list(data.sample_case), data.cases, data.split, data.geometry,
                        data.stats)


def condition_to_unit(labels: np.ndarray, num_structures: int) -> np.ndarray:
    """uint8 labels 0..K (spatial...) -> (K, spatial...) float32: +1 inside a structure's channel, -1 outside
    (background has no channel: all -1). The null condition, all zeros, is distinct from every label map."""
    return labels_to_unit(labels, num_structures + 1)[1:]


def augment_pair(ct: np.ndarray, labels: np.ndarray, cfg: dict, rng: np.random.Generator):
    """The same augmentation for a CT and its label map: a twin of `rng` makes the same draws (one zoom factor,
    one flip), the label map is resampled nearest-neighbour."""
    twin = copy.deepcopy(rng)
    return augment_sample(ct, cfg, rng, is_label=False), augment_sample(labels, cfg, twin, is_label=True)


def conditioned_sample(data: PreparedData, index: int, profile: Profile, aug_cfg: dict | None,
                       rng: np.random.Generator | None, drop: float = 0.0,
                       drop_rng: np.random.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(x0, condition) of one sample, each (1, C, spatial...): the CT in model units and its label map as K
    channels, all zeros when dropped (probability `drop`, drawn from `drop_rng`)."""
    ct, labels = data.samples[index], data.label_maps[index]
    if aug_cfg:
        ct, labels = augment_pair(ct, labels, aug_cfg, rng)
    condition = torch.from_numpy(condition_to_unit(labels, data.num_structures))
    if drop and drop_rng is not None and drop_rng.random() < drop:
        condition = torch.zeros_like(condition)
    return to_model_space(ct, profile)[None], condition[None]
