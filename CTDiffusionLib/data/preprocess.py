"""Bring one case to the profile's training grid, and map intensities to model space and back.

Intensity images (prostate CT): the whole physical extent of the volume is resampled (anti-aliased linear) onto a
fixed grid, so volumes of different sizes and spacings become comparable; HU are mapped invertibly to [-1, 1] over
the profile's HU range, linearly or piecewise linearly (the profile's knots, stored as the run's intensity config).
Label maps (cardiac masks): crop around the foreground (the heart), pad to a square (in mm), nearest-neighbour
resize (labels are never interpolated); one channel per class scaled to [-1, 1]; argmax returns labels.
Which of the two applies is the profile's `is_label_map`; the way back is the stored intensity config's "kind".
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from CTDiffusionLib.profiles import CARDIAC_MASKS, PROSTATE_CT, Profile

# defaults of the helpers below for callers that do not pass a profile's values (evaluation, tests)
NUM_CLASSES = CARDIAC_MASKS.channels

CROP_MARGIN = 0.25  # fraction of the heart's in-plane extent kept around it on each side
# Every case is turned to this voxel order before resampling, so a scan stored with a reversed axis does not train
# flipped; generated volumes come out in it (ITK/DICOM code: voxel axes run toward Left, Posterior, Superior).
ORIENTATION = "LPS"


def orientation_of(image: sitk.Image) -> str:
    """The three-letter axis code of the image's voxel order, e.g. 'LPS' or 'RAI'."""
    return sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(image.GetDirection())


def reorient(image: sitk.Image, orientation: str = ORIENTATION) -> sitk.Image:
    """The same voxels in `orientation` order (axes permuted/flipped only: no interpolation, labels stay labels)."""
    return image if orientation_of(image) == orientation else sitk.DICOMOrient(image, orientation)


# ---------------------------------------------------------------- CT
def ct_grid_geometry(image: sitk.Image, grid_xyz) -> tuple[tuple, tuple, tuple]:
    """(spacing, origin, direction) of a grid covering the same physical extent as `image`."""
    size, spacing = np.array(image.GetSize(), float), np.array(image.GetSpacing(), float)
    grid = np.array(grid_xyz, float)
    new_spacing = size * spacing / grid
    direction = np.array(image.GetDirection()).reshape(3, 3)
    # keep the outer edge of the field of view where it was: voxel centres move by half the spacing change
    shift = direction @ ((new_spacing - spacing) / 2.0)
    new_origin = np.array(image.GetOrigin()) + shift
    return tuple(new_spacing), tuple(new_origin), tuple(image.GetDirection())


def ct_to_grid(image: sitk.Image, grid_xyz, fill_hu: float = PROSTATE_CT.hu_range[0]) -> np.ndarray:
    """float32 HU array (z, y, x) on the grid; blurs before down-sampling so small grids do not alias; `fill_hu`
    outside the image."""
    spacing, origin, direction = ct_grid_geometry(image, grid_xyz)
    image = sitk.Cast(image, sitk.sitkFloat32)
    sigma = [max(0.0, (n - o) / 2.0) for n, o in zip(spacing, image.GetSpacing())]
    if max(sigma) > 0:
        image = sitk.SmoothingRecursiveGaussian(image, [max(s, 1e-3) for s in sigma])
    out = sitk.Resample(image, [int(g) for g in grid_xyz], sitk.Transform(), sitk.sitkLinear, origin, spacing,
                        direction, float(fill_hu), sitk.sitkFloat32)
    return sitk.GetArrayFromImage(out)


def hu_to_unit(hu: np.ndarray, intensity: dict | None = None) -> np.ndarray:
    """HU -> model values in [-1, 1] by an intensity config (default: the prostate-CT profile's); clamps outside."""
    hu_points, unit_points = _intensity_knots(intensity or PROSTATE_CT.intensity_config())
    return np.interp(hu, hu_points, unit_points)


def unit_to_hu(x: np.ndarray, intensity: dict | None = None) -> np.ndarray:
    """Model values -> int16 HU, the inverse of `hu_to_unit` for the same intensity config."""
    hu_points, unit_points = _intensity_knots(intensity or PROSTATE_CT.intensity_config())
    return np.round(np.interp(x, unit_points, hu_points)).astype(np.int16)


def _intensity_knots(intensity: dict) -> tuple[list[float], list[float]]:
    """(HU, model value) points of an intensity mapping: two for hu_linear, the stored knots for hu_piecewise."""
    if intensity["kind"] == "hu_linear":
        return list(intensity["hu_range"]), [-1.0, 1.0]
    if intensity["kind"] == "hu_piecewise":
        return list(intensity["hu"]), list(intensity["unit"])
    raise ValueError(f"unknown intensity mapping {intensity['kind']!r}")


# ---------------------------------------------------------------- masks
def _nearest_resize(array: np.ndarray, shape) -> np.ndarray:
    """Nearest-neighbour resize by index sampling (labels stay labels; no interpolation at all)."""
    index = np.ix_(*[np.minimum((np.arange(n) + 0.5) * (s / n), s - 1).astype(int) for n, s in zip(shape, array.shape)])
    return array[index]


def mask_crops(image: sitk.Image, grid, mode: str) -> tuple[list[np.ndarray], tuple[float, float, float]]:
    """Crops on the grid + the spacing (x, y, z) they have. Empty masks give no crops."""
    labels = sitk.GetArrayFromImage(image).astype(np.uint8)  # (z, y, x)
    sx, sy, sz = image.GetSpacing()
    heart = labels > 0
    if not heart.any():
        return [], (sx, sy, sz)
    zs = np.flatnonzero(heart.any(axis=(1, 2)))
    ys = np.flatnonzero(heart.any(axis=(0, 2)))
    xs = np.flatnonzero(heart.any(axis=(0, 1)))
    side_mm = max((ys[-1] - ys[0] + 1) * sy, (xs[-1] - xs[0] + 1) * sx) * (1 + 2 * CROP_MARGIN)
    cy, cx = (ys[0] + ys[-1] + 1) / 2.0, (xs[0] + xs[-1] + 1) / 2.0
    ny, nx = int(round(side_mm / sy)), int(round(side_mm / sx))
    y0, x0 = int(round(cy - ny / 2.0)), int(round(cx - nx / 2.0))
    stack = labels[zs[0]: zs[-1] + 1]
    # square crop with zero padding where it leaves the image
    crop = np.zeros((stack.shape[0], ny, nx), np.uint8)
    ys_src = slice(max(y0, 0), min(y0 + ny, stack.shape[1]))
    xs_src = slice(max(x0, 0), min(x0 + nx, stack.shape[2]))
    crop[:, ys_src.start - y0: ys_src.stop - y0, xs_src.start - x0: xs_src.stop - x0] = stack[:, ys_src, xs_src]
    gx, gy = int(grid[0]), int(grid[1])
    if mode == "2d":
        slices = [_nearest_resize(s, (gy, gx)) for s in crop if s.any()]
        return slices, (side_mm / gx, side_mm / gy, sz)
    gz = int(grid[2])
    return [_nearest_resize(crop, (gz, gy, gx))], (side_mm / gx, side_mm / gy, crop.shape[0] * sz / gz)


def masks_to_grid(image: sitk.Image, grid, mode: str) -> list[np.ndarray]:
    """uint8 label arrays on the grid: '2d' one (y, x) per heart slice, '3d' one (z, y, x) per case."""
    return mask_crops(image, grid, mode)[0]


def labels_to_unit(labels: np.ndarray, num_classes: int = NUM_CLASSES) -> np.ndarray:
    """(spatial...) uint8 -> (classes, spatial...) float32 in {-1, 1}."""
    onehot = np.eye(num_classes, dtype=np.float32)[labels.astype(np.int64)]
    return np.moveaxis(onehot, -1, 0) * 2.0 - 1.0


def unit_to_labels(x: np.ndarray) -> np.ndarray:
    """(classes, spatial...) -> uint8 labels by argmax."""
    return np.argmax(x, axis=0).astype(np.uint8)


# ---------------------------------------------------------------- per profile
def case_to_grid(image: sitk.Image, profile: Profile, grid, mode: str) -> tuple[list[np.ndarray], tuple]:
    """One read case -> its compact samples on the grid and their spacing (x, y, z): an intensity image gives one
    float32 HU array, a label map one uint8 crop per heart slice ('2d') or per case ('3d'), none if empty."""
    if profile.is_label_map:
        return mask_crops(image, grid, mode)
    spacing, _, _ = ct_grid_geometry(image, grid)
    return [ct_to_grid(image, grid, profile.fill_value)], spacing


def to_unit(sample: np.ndarray, profile: Profile, intensity: dict | None = None) -> np.ndarray:
    """A compact sample in real units (HU or labels) -> model space (channels, spatial...) float32 in [-1, 1], by
    the run's intensity config (default: the profile's)."""
    if profile.is_label_map:
        return labels_to_unit(sample, profile.channels)
    return hu_to_unit(sample, intensity or profile.intensity_config())[None].astype(np.float32)


def from_unit(x: np.ndarray, intensity: dict) -> np.ndarray:
    """Model space (channels, spatial...) -> real units, by the intensity mapping stored with the model
    (config.json / model.json "intensity", written by Profile.intensity_config): int16 HU or uint8 labels."""
    if intensity["kind"] == "onehot":
        return unit_to_labels(x)
    return unit_to_hu(x[0], intensity)
