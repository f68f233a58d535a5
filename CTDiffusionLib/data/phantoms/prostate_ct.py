"""Synthetic pelvic CT volumes in Hounsfield units, shaped like the source data (512 x 512 x 26, 2.5 mm slices).

The anatomy is painted as a tissue label map (ellipsoids and elliptic cylinders in millimetres, drawn on a
reference field of view so that tiny test grids show the same picture at lower resolution), then each
tissue gets its own HU value for this case, the edges are softened (partial volume) and scanner noise added.
Sizes, positions and intensities are drawn per case so a model has real variation to learn.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from CTDiffusionLib.data.volume_io import Geometry, array_to_image, write_image

DEFAULT_SIZE_XYZ = (512, 512, 26)
SLICE_SPACING_MM = 2.5
REFERENCE_SIZE_XY = 512  # the anatomy is laid out on this grid, then scaled to the requested size
HU_MIN, HU_MAX = -1024, 3071

# Tissue labels of the phantom's ground truth (returned alongside each volume; tests and metrics use them).
TISSUES = {
    "air": 0, "soft_tissue": 1, "fat": 2, "cortical_bone": 3, "trabecular_bone": 4,
    "bladder": 5, "prostate": 6, "rectum": 7, "rectal_gas": 8,
}
# HU range each tissue's value is drawn from, per case (real CT values).
TISSUE_HU = {
    "air": (-1000, -1000), "soft_tissue": (35, 55), "fat": (-110, -85), "cortical_bone": (700, 1200),
    "trabecular_bone": (180, 320), "bladder": (5, 15), "prostate": (35, 45), "rectum": (15, 35),
    "rectal_gas": (-1000, -1000),
}


class _Grid:
    """Voxel-centre coordinates (mm of the reference anatomy) along each axis of a (z, y, x) volume."""

    def __init__(self, size_xyz, fov_xyz):
        nx, ny, nz = size_xyz
        self.x = ((np.arange(nx) + 0.5) / nx - 0.5) * fov_xyz[0]  # + = patient left (LPS)
        self.y = ((np.arange(ny) + 0.5) / ny - 0.5) * fov_xyz[1]  # + = posterior
        self.z = (np.arange(nz) + 0.5) / nz * fov_xyz[2]  # 0 = inferior edge of the scan, + = superior
        self.shape = (nz, ny, nx)

    def paint(self, labels, value, centre, semi, z_range=None, only_on=None):
        """Set `value` inside an ellipsoid (semi=(a, b, c)) or, with z_range, an elliptic cylinder (semi=(a, b)).

        Works on the bounding box only, so a few dozen shapes on 512x512x26 stay fast. `only_on` limits
        painting to voxels that currently hold that label (e.g. gas only inside the rectal lumen).
        """
        tx = ((self.x - centre[0]) / semi[0]) ** 2
        ty = ((self.y - centre[1]) / semi[1]) ** 2
        if z_range is None:
            tz = ((self.z - centre[2]) / semi[2]) ** 2
        else:
            tz = np.where((self.z >= z_range[0]) & (self.z <= z_range[1]), 0.0, np.inf)
        box = tuple(_span(t <= 1) for t in (tz, ty, tx))
        if any(b is None for b in box):
            return  # outside the field of view
        inside = tz[box[0], None, None] + ty[None, box[1], None] + tx[None, None, box[2]] <= 1
        region = labels[box]
        if only_on is not None:
            inside &= region == only_on
        region[inside] = value


def _span(flags: np.ndarray):
    idx = np.flatnonzero(flags)
    return slice(idx[0], idx[-1] + 1) if idx.size else None


def make_prostate_ct(rng: np.random.Generator, size_xyz=DEFAULT_SIZE_XYZ) -> tuple[sitk.Image, np.ndarray]:
    """One phantom: an int16 HU image with real geometry, and its (z, y, x) uint8 tissue label map."""
    nx, ny, nz = size_xyz
    # Spacing stays physical at every size (so the 2.5 mm vs ~1 mm anisotropy is always there); the anatomy
    # is scaled to the field of view instead, so a 48x48x12 grid shows a low-resolution version of the pelvis.
    spacing_xy = float(np.round(rng.uniform(460.0, 512.0) / REFERENCE_SIZE_XY, 6))
    fov = (REFERENCE_SIZE_XY * spacing_xy, REFERENCE_SIZE_XY * spacing_xy, DEFAULT_SIZE_XYZ[2] * SLICE_SPACING_MM)
    grid = _Grid(size_xyz, fov)
    labels = _paint_pelvis(grid, rng)

    hu_of_label = np.zeros(len(TISSUES), np.float32)
    for name, (low, high) in TISSUE_HU.items():
        hu_of_label[TISSUES[name]] = rng.uniform(low, high)
    hu = hu_of_label[labels]
    hu = ndimage.gaussian_filter(hu, sigma=(0.0, 0.6, 0.6))  # partial volume at in-plane edges
    hu += rng.standard_normal(hu.shape, dtype=np.float32) * np.float32(rng.uniform(10.0, 20.0))
    hu = np.clip(np.rint(hu), HU_MIN, HU_MAX).astype(np.int16)

    # Scanner-like placement: centred in-plane (with a table offset), a table position along z.
    origin = (-(nx - 1) * spacing_xy / 2.0,
              -(ny - 1) * spacing_xy / 2.0 + rng.uniform(-20.0, 20.0),
              float(np.round(rng.uniform(-250.0, -100.0) * 2) / 2))
    geometry = Geometry((spacing_xy, spacing_xy, SLICE_SPACING_MM), origin, (1, 0, 0, 0, 1, 0, 0, 0, 1))
    return array_to_image(hu, geometry), labels


def _paint_pelvis(grid: _Grid, rng: np.random.Generator) -> np.ndarray:
    """Tissue labels of one pelvis at prostate level; all sizes in mm, varied per case."""
    T = TISSUES
    u = rng.uniform
    labels = np.zeros(grid.shape, np.uint8)
    everywhere = (-1e9, 1e9)
    cx, cy = u(-10, 10), u(-5, 15)  # body centre

    # Body: soft tissue inside a subcutaneous fat ring; fat fills the space around the pelvic organs.
    body_a, body_b, fat_ring = u(160, 200), u(115, 145), u(12, 30)
    grid.paint(labels, T["fat"], (cx, cy), (body_a, body_b), everywhere)
    grid.paint(labels, T["soft_tissue"], (cx, cy), (body_a - fat_ring, body_b - fat_ring), everywhere)
    grid.paint(labels, T["fat"], (cx, cy + 10), (u(50, 60), u(55, 65)), everywhere)

    # Bones: cortical shell around trabecular core.
    def bone(centre, semi, z_range=None, shell=3.0):
        grid.paint(labels, T["cortical_bone"], centre, semi, z_range)
        grid.paint(labels, T["trabecular_bone"], centre, tuple(s - shell for s in semi), z_range)

    head_dx, head_dy, head_z, head_r = u(85, 100), u(-5, 10), u(38, 52), u(21, 26)
    for side in (-1, 1):
        head = (cx + side * head_dx, cy + head_dy, head_z)
        # Acetabulum cup around the head, a thin joint space, then the femoral head itself.
        grid.paint(labels, T["cortical_bone"], head, (head_r + 7,) * 3)
        grid.paint(labels, T["soft_tissue"], head, (head_r + 2,) * 3)
        bone(head, (head_r,) * 3)
        bone((head[0] + side * 30, head[1] + 5), (u(13, 17), u(13, 17)), (0, head_z - 12))  # femoral shaft
        bone((cx + side * u(50, 60), cy + u(30, 40)), (u(10, 14), u(14, 18)), (0, u(25, 35)))  # ischium
        bone((cx + side * 14, cy - u(55, 70)), (u(10, 13), u(8, 10)), (0, u(30, 40)))  # pubic symphysis
    bone((cx, cy + u(90, 100)), (u(30, 40), u(12, 16)), (u(42, 50), 1e9), shell=4.0)  # sacrum
    bone((cx, cy + u(82, 90)), (u(7, 9), u(7, 9)), (u(22, 28), 45))  # coccyx

    # Bladder above the prostate, prostate in front of the rectum; rectum with wall, content and gas.
    fill = u(0.7, 1.3)
    grid.paint(labels, T["bladder"], (cx + u(-8, 8), cy + u(-28, -12), u(48, 58)),
               (u(30, 42) * fill, u(25, 35) * fill, u(18, 26) * fill))
    prostate_y, prostate_b = cy + u(5, 15), u(13, 19)
    grid.paint(labels, T["prostate"], (cx + u(-4, 4), prostate_y, u(20, 30)), (u(18, 26), prostate_b, u(15, 22)))
    rectum = (cx + u(-5, 5), prostate_y + prostate_b + u(14, 20))
    rectum_a, rectum_b, rectum_top = u(14, 20), u(11, 16), u(40, 50)
    grid.paint(labels, T["soft_tissue"], rectum, (rectum_a, rectum_b), (0, rectum_top))  # muscular wall
    grid.paint(labels, T["rectum"], rectum, (rectum_a - 3, rectum_b - 3), (0, rectum_top))
    for _ in range(rng.integers(1, 4)):
        r = u(4, 9)
        gas_centre = (rectum[0] + u(-6, 6), rectum[1] + u(-5, 5), u(5, rectum_top - 5))
        grid.paint(labels, T["rectal_gas"], gas_centre, (r, r, r * u(1.0, 2.0)), only_on=T["rectum"])
    return labels


def write_prostate_ct_dataset(out: Path, num: int, seed: int, size_xyz=DEFAULT_SIZE_XYZ) -> None:
    """out/prostate_000.nii.gz ... (int16 HU). Case i uses its own random stream, so cases are independent."""
    for index in range(num):
        image, _ = make_prostate_ct(np.random.default_rng([seed, index]), size_xyz)
        write_image(image, Path(out) / f"prostate_{index:03d}.nii.gz")
