"""Synthetic ACDC-style short-axis heart masks (0 bg, 1 RV, 2 MYO, 3 LV) at end-diastole and end-systole.

Every slice is drawn at once with numpy broadcasting: the LV cavity is an ellipse that shrinks toward the
apex, the myocardium a ring of (possibly varying) thickness around it, the RV a crescent cut out of an
ellipse that overlaps the myocardium on one side. The five ACDC groups change these shapes in ways a model
(and a test) can measure; ED and ES of one patient share position, rotation and slice range.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy import ndimage

from CTDiffusionLib.data.volume_io import Geometry, array_to_image, write_image

DEFAULT_SIZE_XYZ = (216, 256, 10)
REFERENCE_SIZE_XY = (216, 256)  # the anatomy is laid out for this grid, then scaled to the requested size
SLICE_SPACING_MM = 10.0
BG, RV, MYO, LV = 0, 1, 2, 3
GROUPS = ("NOR", "MINF", "DCM", "HCM", "RV")

# Multipliers on a normal heart, per group: LV cavity radius, wall thickness, RV size; ES cavity radius / ED
# (DCM and MINF contract poorly: low ejection fraction); MINF thins the wall in one sector to `infarct`.
GROUP_EFFECTS = {
    "NOR": dict(lv=1.00, wall=1.0, rv=1.00, es_lv=0.70, infarct=1.0),
    "MINF": dict(lv=1.15, wall=1.0, rv=1.00, es_lv=0.82, infarct=0.35),
    "DCM": dict(lv=1.40, wall=0.7, rv=1.00, es_lv=0.85, infarct=1.0),
    "HCM": dict(lv=0.75, wall=1.8, rv=0.95, es_lv=0.60, infarct=1.0),
    "RV": dict(lv=0.95, wall=1.0, rv=1.50, es_lv=0.70, infarct=1.0),
}
ES_WALL_THICKENING = 1.35  # the myocardium thickens as the cavity empties
ES_RV_FACTOR = 0.8
_IN_PLANE_CROSS = ndimage.generate_binary_structure(2, 1)[None]  # 4-neighbours within a slice only


def group_of(index: int) -> str:
    """ACDC group of the phantom patient with 0-based `index` (patient001 -> NOR, patient002 -> MINF, ...)."""
    return GROUPS[index % len(GROUPS)]


def make_cardiac_patient(rng: np.random.Generator, group: str, size_xyz=DEFAULT_SIZE_XYZ) -> dict:
    """One patient: {"ED": labels, "ES": labels} as (z, y, x) uint8 arrays, plus "geometry" and "info" (Info.cfg)."""
    nx, ny, nz = size_xyz
    effects = GROUP_EFFECTS[group]
    u = rng.uniform
    spacing_xy = float(np.round(u(1.4, 1.75), 4))
    # Millimetres of reference anatomy per voxel: the spacing itself at the default size; larger for tiny grids
    # so the heart keeps its share of the field of view.
    zoom = min(REFERENCE_SIZE_XY[0] / nx, REFERENCE_SIZE_XY[1] / ny)
    mm = spacing_xy * zoom
    x = (np.arange(nx) + 0.5 - nx / 2) * mm
    y = (np.arange(ny) + 0.5 - ny / 2) * mm

    # Shared by ED and ES: where the heart is, how it is turned, which slices it spans.
    anatomy = dict(
        centre=(u(-15, 15), u(-15, 15)),
        rotation=u(0, np.pi),
        ellipticity=u(0.85, 1.0),
        rv_direction=np.pi + u(-0.4, 0.4),  # RV on the image's left, as in ACDC short-axis views
        infarct_direction=u(-np.pi, np.pi),
        infarct_width=u(np.radians(60), np.radians(100)),
        radius=24.0 * u(0.9, 1.1) * effects["lv"],
        wall=8.0 * u(0.9, 1.1) * effects["wall"],
        rv_size=0.85 * 32.0 * u(0.9, 1.1) * effects["rv"],  # from a normal heart, so only the RV group changes it
        infarct=effects["infarct"],
    )
    # The heart fills most of the stack (as in ACDC); a modest spread keeps group effects larger than it.
    n_heart = int(rng.integers(max(2, int(np.ceil(0.75 * nz))), nz + 1)) if nz >= 2 else 1
    first = int(rng.integers(0, nz - n_heart + 1))
    t = np.full(nz, np.nan)  # position base (0) -> apex (<1) of each heart slice; NaN = no heart
    t[first:first + n_heart] = np.arange(n_heart) / n_heart

    es_frame = int(rng.integers(9, 16))
    info = {"ED": 1, "ES": es_frame, "Group": group, "Height": round(u(150, 195), 1),
            "NbFrame": int(rng.integers(max(20, es_frame + 5), 36)), "Weight": round(u(50, 110), 1)}
    ed = _draw_heart(x, y, t, **anatomy)
    es = _draw_heart(x, y, t, **{**anatomy, "radius": anatomy["radius"] * effects["es_lv"],
                                 "wall": anatomy["wall"] * ES_WALL_THICKENING,
                                 "rv_size": anatomy["rv_size"] * ES_RV_FACTOR})
    geometry = Geometry((spacing_xy, spacing_xy, SLICE_SPACING_MM), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    return {"ED": ed, "ES": es, "geometry": geometry, "info": info}


def _draw_heart(x, y, t, *, centre, rotation, ellipticity, rv_direction, infarct_direction, infarct_width,
                radius, wall, rv_size, infarct) -> np.ndarray:
    """Label volume (z, y, x) for per-slice positions `t` (NaN where the slice misses the heart)."""
    heart = ~np.isnan(t)[:, None, None]
    tz = np.where(heart, t[:, None, None], 0.0)
    dx = x[None, None, :] - centre[0]
    dy = y[None, :, None] - centre[1]
    dist = np.hypot(dx, dy)
    angle = np.arctan2(dy, dx)

    # LV cavity: an ellipse per slice, shrinking toward the apex (ellipsoid-like long axis).
    cavity_scale = np.where(heart, np.sqrt(1.0 - tz**2), 0.0) * radius
    rel = angle - rotation
    ellipse_unit = ellipticity / np.sqrt((ellipticity * np.cos(rel)) ** 2 + np.sin(rel) ** 2)  # radius of a=1
    cavity_radius = cavity_scale * ellipse_unit

    # Myocardium: wall slightly thinner toward the apex; MINF thins it smoothly inside one angular sector.
    off = np.angle(np.exp(1j * (angle - infarct_direction)))  # wrapped to (-pi, pi]
    sector = np.clip(np.cos(np.clip(off / infarct_width * np.pi, -np.pi / 2, np.pi / 2)), 0.0, 1.0)
    wall_map = wall * (1.0 - 0.25 * tz) * (1.0 - (1.0 - infarct) * sector)
    epicardium = heart & (dist < cavity_radius + wall_map)
    lv = dist < cavity_radius

    # RV: an ellipse centred inside the epicardium on the RV side, so what shows outside it is a crescent
    # attached to the myocardium; it stops before the apex.
    along = dx * np.cos(rv_direction) + dy * np.sin(rv_direction)
    across = -dx * np.sin(rv_direction) + dy * np.cos(rv_direction)
    epi_mean = cavity_scale * (1 + ellipticity) / 2 + wall * (1.0 - 0.25 * tz)
    rv_scale = np.where(heart, np.sqrt(np.clip(1.0 - (tz / 0.8) ** 2, 0.0, None)), 0.0) * rv_size
    with np.errstate(divide="ignore", invalid="ignore"):
        rv = ((along - 0.55 * epi_mean) / rv_scale) ** 2 + (across / (1.9 * rv_scale)) ** 2 < 1.0

    labels = np.zeros(lv.shape, np.uint8)
    labels[rv] = RV
    labels[epicardium] = MYO
    labels[lv] = LV
    # Guarantee anatomy: a one-voxel myocardium shell wherever the LV would touch RV or background in-plane.
    shell = ndimage.binary_dilation(labels == LV, structure=_IN_PLANE_CROSS) & (labels != LV)
    labels[shell] = MYO
    return labels


def format_acdc_info(info: dict) -> str:
    """Info.cfg text in ACDC's own format ('ED: 1', 'Group: DCM', 'Height: 184.0', ...)."""
    return "".join(f"{key}: {value}\n" for key, value in info.items())


def write_cardiac_dataset(out: Path, num: int, seed: int, size_xyz=DEFAULT_SIZE_XYZ) -> None:
    """out/patient001/{Info.cfg, patient001_frame01_gt.nii.gz (ED), patient001_frameNN_gt.nii.gz (ES)}, ..."""
    for index in range(num):
        patient = make_cardiac_patient(np.random.default_rng([seed, index]), group_of(index), size_xyz)
        name = f"patient{index + 1:03d}"
        folder = Path(out) / name
        folder.mkdir(parents=True)
        (folder / "Info.cfg").write_text(format_acdc_info(patient["info"]), encoding="utf-8")
        for phase in ("ED", "ES"):
            image = array_to_image(patient[phase], patient["geometry"])
            write_image(image, folder / f"{name}_frame{patient['info'][phase]:02d}_gt.nii.gz")
