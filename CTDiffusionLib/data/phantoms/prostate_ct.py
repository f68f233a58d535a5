"""Synthetic pelvic CT volumes in Hounsfield units, shaped like the source data (512 x 512 x 26, 2.5 mm slices).

The anatomy (`pelvis_anatomy.py`) is painted slice by slice as a tissue label map in millimetres; each tissue
gets its own HU value for this case; every voxel averages several sub-samples of the anatomy (partial volume
at edges), then correlated scanner noise is added. Every grid size covers the same field of view (about
44-50 cm in-plane, 65 mm along z): smaller grids are coarser pixels of the same pelvis.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from CTDiffusionLib.data.pairs import Structure, write_nnunet_pairs
from CTDiffusionLib.data.phantoms.pelvis_anatomy import (
    BONE_PARTS,
    SCAN_LENGTH_MM,
    TISSUES,
    Slice,
    draw_case,
    paint_slice,
)
from CTDiffusionLib.data.volume_io import Geometry, array_to_image, write_image

DEFAULT_SIZE_XYZ = (512, 512, 26)
HU_MIN, HU_MAX = -1024, 3071
FINEST_SUBSAMPLE_MM = (0.5, 2.5)  # anatomy is sampled at least this finely (in-plane, along z), then averaged

# HU range each tissue's value is drawn from, per case (typical non-contrast CT values).
TISSUE_HU = {
    "air": (-1000, -1000), "fat": (-110, -90), "muscle": (40, 55), "skin": (30, 60),
    "cortical_bone": (800, 1400), "marrow": (200, 380), "bladder": (0, 12), "prostate": (35, 45),
    "seminal_vesicle": (25, 40), "rectal_wall": (35, 50), "rectal_content": (15, 45), "rectal_gas": (-950, -850),
    "vessel": (35, 50), "table": (150, 350), "table_core": (-950, -850),
}
NOISE_HU = (10.0, 20.0)  # standard deviation of the scanner noise, per case
NOISE_CORRELATION_PX = 0.8  # Gaussian smoothing of the noise (CT noise is not white)

# Organ structures of phantom pairs (label value = position + 1) and the tissues each is made of; bone is split
# by the bone drawn there (BONE_PARTS). Skin, vessels, air and the table are background; the bladder wall is
# painted as muscle, so it is part of "muscle".
ORGAN_TISSUES = {
    "prostate": ("prostate",), "bladder": ("bladder",), "rectum": ("rectal_wall", "rectal_content", "rectal_gas"),
    "seminal_vesicles": ("seminal_vesicle",), "femur": (), "hip_bone": (), "sacrum": (), "fat": ("fat",),
    "muscle": ("muscle",),
}
PHANTOM_STRUCTURES = tuple(Structure(name, (name,)) for name in ORGAN_TISSUES)


def make_prostate_ct(rng: np.random.Generator, size_xyz=DEFAULT_SIZE_XYZ) -> tuple[sitk.Image, np.ndarray]:
    """One phantom: an int16 HU image with real geometry, and its (z, y, x) uint8 tissue label map."""
    image, labels, _ = _phantom(rng, size_xyz, track_bone_parts=False)
    return image, labels


def make_prostate_ct_pair(rng: np.random.Generator, size_xyz=DEFAULT_SIZE_XYZ) -> tuple[sitk.Image, sitk.Image]:
    """One phantom and its organ label map (UInt8, values = PHANTOM_STRUCTURES positions + 1) on the CT's grid.
    The CT is the one make_prostate_ct draws from the same random state; a voxel's label is the anatomy at its
    centre (the middle sub-sample), so edges are not averaged."""
    image, tissues, parts = _phantom(rng, size_xyz, track_bone_parts=True)
    value_of = {name: k for k, name in enumerate(ORGAN_TISSUES, start=1)}
    lookup = np.zeros(len(TISSUES), np.uint8)
    for name, tissues_of_organ in ORGAN_TISSUES.items():
        for tissue in tissues_of_organ:
            lookup[TISSUES[tissue]] = value_of[name]
    organs = lookup[tissues]
    bone = (tissues == TISSUES["cortical_bone"]) | (tissues == TISSUES["marrow"])
    for part, number in BONE_PARTS.items():
        organs[bone & (parts == number)] = value_of[part]
    labels = sitk.GetImageFromArray(organs)
    labels.CopyInformation(image)
    return image, labels


def _phantom(rng: np.random.Generator, size_xyz, track_bone_parts: bool):
    """(image, tissue labels, bone parts or None): the bone parts cost extra painting, so only pairs track them."""
    nx, ny, nz = (int(s) for s in size_xyz)
    spacing_xy = float(np.round(rng.uniform(440.0, 500.0) / nx, 6))
    spacing_z = SCAN_LENGTH_MM / nz
    anatomy = draw_case(rng)
    hu_of_label = np.zeros(len(TISSUES), np.float32)
    for name, (low, high) in TISSUE_HU.items():
        hu_of_label[TISSUES[name]] = rng.uniform(low, high)

    # Sub-samples per voxel: enough that each is <= ~1 mm in-plane and <= 2.5 mm along z.
    fxy = int(np.clip(np.ceil(spacing_xy / FINEST_SUBSAMPLE_MM[0] - 0.25), 1, 4))
    fz = int(np.clip(np.ceil(spacing_z / FINEST_SUBSAMPLE_MM[1] - 0.25), 1, 3))
    x = (np.arange(nx * fxy) + 0.5 - nx * fxy / 2) * spacing_xy / fxy
    y = (np.arange(ny * fxy) + 0.5 - ny * fxy / 2) * spacing_xy / fxy
    hu = np.zeros((nz, ny, nx), np.float32)
    labels = np.zeros((nz, ny, nx), np.uint8)
    parts = np.zeros((nz, ny, nx), np.uint8) if track_bone_parts else None
    for k in range(nz):
        for j in range(fz):
            sl = Slice(x, y, track_bone_parts)
            paint_slice(sl, (k + (j + 0.5) / fz) * spacing_z, anatomy)
            fine = hu_of_label[sl.labels]
            hu[k] += fine.reshape(ny, fxy, nx, fxy).mean(axis=(1, 3)) / fz
            if j == fz // 2:
                labels[k] = sl.labels[fxy // 2::fxy, fxy // 2::fxy]
                if parts is not None:
                    parts[k] = sl.parts[fxy // 2::fxy, fxy // 2::fxy]
    hu = ndimage.gaussian_filter(hu, sigma=(0.0, 0.6, 0.6))  # the scanner's own blur (point spread)
    noise = ndimage.gaussian_filter(rng.standard_normal(hu.shape, dtype=np.float32),
                                    sigma=(0.0, NOISE_CORRELATION_PX, NOISE_CORRELATION_PX))
    hu += noise * np.float32(rng.uniform(*NOISE_HU) / max(float(noise.std()), 1e-6))
    hu = np.clip(np.rint(hu), HU_MIN, HU_MAX).astype(np.int16)

    # Scanner-like placement: centred in-plane, a table position along z.
    origin = (-(nx - 1) * spacing_xy / 2.0, -(ny - 1) * spacing_xy / 2.0,
              float(np.round(rng.uniform(-250.0, -100.0) * 2) / 2))
    geometry = Geometry((spacing_xy, spacing_xy, spacing_z), origin, (1, 0, 0, 0, 1, 0, 0, 0, 1))
    return array_to_image(hu, geometry), labels, parts


def write_prostate_ct_dataset(out: Path, num: int, seed: int, size_xyz=DEFAULT_SIZE_XYZ) -> None:
    """out/prostate_000.nii.gz ... (int16 HU). Case i uses its own random stream, so cases are independent."""
    for index in range(num):
        image, _ = make_prostate_ct(np.random.default_rng([seed, index]), size_xyz)
        write_image(image, Path(out) / f"prostate_{index:03d}.nii.gz")


def write_pairs(out: Path, num: int, seed: int, size_xyz=DEFAULT_SIZE_XYZ) -> Path:
    """`num` phantoms with their organ labels in the nnU-Net raw layout (imagesTr/prostate_000_0000.nii.gz,
    labelsTr/prostate_000.nii.gz, dataset.json); the CTs are the same files write_prostate_ct_dataset writes."""
    def pairs():
        for index in range(num):
            image, labels = make_prostate_ct_pair(np.random.default_rng([seed, index]), size_xyz)
            yield f"prostate_{index:03d}", image, labels

    return write_nnunet_pairs(out, pairs(), PHANTOM_STRUCTURES, extra={
        "name": "CTDiffusion prostate-ct phantoms",
        "description": "Synthetic pelvic CT (HU) with the organ labels of its anatomy drawing (ctdiffusion phantoms "
                       "--with-labels).",
    })
