"""The benchmark's inputs: CT + label pairs read through data/pairs.py and brought onto one working grid.

Every case (training, synthetic and test) is turned to LPS voxel order and its whole field of view resampled onto the
same grid: the median size of the real training CTs, in-plane at most MAX_INPLANE voxels (aspect kept). CTs are
resampled linearly with anti-aliasing (preprocess.ct_to_grid, the diffusion model's own preprocessing), labels by
nearest neighbour on exactly the same geometry. Scores are measured on that grid, with its spacing for HD95.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from CTDiffusionLib.errors import InputError

MAX_INPLANE = 128  # voxels per in-plane axis at most: bounds the cost of 3 arms x K seeds on a CPU


@dataclass
class SegCase:
    """One pair on the working grid: HU (Z, Y, X) float32, labels (Z, Y, X) uint8 0..K, spacing (z, y, x) mm."""

    name: str
    image: np.ndarray
    labels: np.ndarray
    spacing_zyx: tuple
    files: tuple  # the source files (CT, label map(s)): for the overlap check and the report


def case_files(case) -> tuple:
    """The files a PairCase is read from: its CT, its label map or per-structure masks."""
    files = [Path(case.image)]
    if case.labels is not None:
        files.append(Path(case.labels))
    files += [Path(p) for p in (case.label_files or {}).values()]
    return tuple(files)


def discover(folder, flag: str) -> list:
    """PairCases of one --train/--synthetic/--test folder; InputError naming the flag when it holds none."""
    from CTDiffusionLib.data.pairs import discover_pairs

    path = Path(folder).expanduser()
    if not path.exists():
        raise InputError(f"{flag} {path} does not exist.", "Give a folder of CT + label pairs (nnU-Net raw layout).")
    cases = discover_pairs([path])
    if not cases:
        raise InputError(f"{flag} {path} holds no CT + label pairs.",
                         "Give a folder of CT + label pairs (nnU-Net raw layout, or CT beside NAME.seg.nrrd).")
    return cases


def structures_for(cases: list, wanted: list, flag: str) -> list:
    """The training set's structures as this set names them: by their sources where the set has those, else by the
    output name itself (a set written by CTDiffusion calls a merged structure by its output name)."""
    from CTDiffusionLib.data.pairs import Structure, structure_names

    available = set(structure_names(cases))
    resolved = []
    for s in wanted:
        if all(src in available for src in s.sources):
            resolved.append(s)
        elif s.name in available:
            resolved.append(Structure(s.name, (s.name,)))
        else:
            raise InputError(f"{flag}: the structure {s.name!r} ({'+'.join(s.sources)}) is not in these pairs "
                             f"(they have {', '.join(sorted(available)) or 'none'}).",
                             "Give pairs with the same structures as --train, or choose others with --structures.")
    return resolved


def working_grid_xyz(images: list) -> tuple:
    """Median size of the given CTs, in-plane scaled down to at most MAX_INPLANE voxels (same factor for x and y)."""
    sizes = np.array([img.GetSize() for img in images], float)
    x, y, z = np.median(sizes, axis=0)
    factor = min(1.0, MAX_INPLANE / max(x, y))
    return int(max(8, round(x * factor))), int(max(8, round(y * factor))), int(max(1, round(z)))


def to_grid(name: str, ct: sitk.Image, labels: sitk.Image, grid_xyz: tuple, files: tuple) -> SegCase:
    """One pair (as read_pair returns it) on the working grid."""
    from CTDiffusionLib.data.preprocess import ct_grid_geometry, ct_to_grid, reorient

    ct, labels = reorient(ct), reorient(labels)
    spacing, origin, direction = ct_grid_geometry(ct, grid_xyz)
    hu = ct_to_grid(ct, grid_xyz)
    lab = sitk.Resample(labels, [int(g) for g in grid_xyz], sitk.Transform(), sitk.sitkNearestNeighbor, origin,
                        spacing, direction, 0, sitk.sitkUInt8)
    return SegCase(name, hu.astype(np.float32), sitk.GetArrayFromImage(lab).astype(np.uint8),
                   tuple(float(s) for s in spacing[::-1]), files)


def read_set(cases: list, structures: list, grid_xyz: tuple | None = None) -> tuple[list, tuple]:
    """Read pairs and bring them to `grid_xyz` (None: the grid these cases define). Returns (SegCases, grid)."""
    from CTDiffusionLib.data.pairs import read_pair

    pairs = [(c, *read_pair(c, structures)) for c in cases]
    grid = grid_xyz or working_grid_xyz([ct for _, ct, _ in pairs])
    return [to_grid(c.case_id, ct, lab, grid, case_files(c)) for c, ct, lab in pairs], grid
