"""Plausibility of a volume a reader let through: geometry a scanner cannot produce (zero, NaN or negative spacing in
a NIfTI header, a sheared direction matrix), a size that would not fit in memory, a volume too small to be a scan,
and intensities that are not Hounsfield units. Each problem is one InputError naming the file.

Readers (volume_io.read_image) call `check_fits`, `nifti_header_problem` and `check_geometry`; training calls
`check_training_volume` (size) and `check_hounsfield` (CT profiles) per file, before anything is trained.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from CTDiffusionLib.errors import InputError

# A real CT in HU: air near -1000, bone and contrast up to a few thousand, metal (extended scale) up to ~30000;
# padding outside the field of view is -1024, -2048 or -3024. Outside these bounds the values are not HU.
HU_LOWEST, HU_HIGHEST = -4000.0, 32000.0
AIR_BELOW_HU = -500.0  # the darkest 0.5 % of a body CT (air around and in the body) lies below this
MIN_IN_PLANE = 8  # voxels; smaller is not a scan (a thumbnail, a test file, a header with wrong dimensions)
_SHEAR_TOLERANCE = 1e-3
_READ_FACTOR = 3  # reading: the voxels, a float copy and the resampled result

_GEOMETRY_HINT = "Fix the header (e.g. in 3D Slicer: Volumes > Volume Information) and save the volume again."


def check_fits(path: Path, what: str) -> None:
    """Refuse a file whose voxels cannot fit in memory, from its header alone ("needs N GB, this machine has M")."""
    from CTDiffusionLib.memory import require_memory, volume_bytes

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        return  # the full read reports an unreadable file with its own sentence
    bytes_per_voxel = 8 if "64" in sitk.GetPixelIDValueAsString(reader.GetPixelID()) else 4  # as read, or float
    size = reader.GetSize()
    require_memory(volume_bytes(size, bytes_per_voxel * reader.GetNumberOfComponents()) * _READ_FACTOR,
                   f"Reading the {what} {path} ({'x'.join(map(str, size))} voxels)",
                   hint="Crop or downsample the volume first, or use a machine with more memory.")


def nifti_header_problem(path: Path, suffix: str) -> str | None:
    """What is wrong with the geometry in a NIfTI header that ITK would silently change: voxel sizes (pixdim) of
    zero or NaN (read as 1 mm) or negative (read as positive, with a flipped axis), and a sheared sform matrix
    (coerced to the nearest rotation, which turns every output). None when fine or not NIfTI."""
    opener = gzip.open if suffix == ".nii.gz" else open
    try:
        with opener(path, "rb") as stream:
            header = stream.read(540)
    except OSError:
        return None
    for endian in "<>":
        if len(header) >= 348 and int(np.frombuffer(header[:4], endian + "i4")[0]) == 348:
            ndim = int(np.frombuffer(header[40:42], endian + "i2")[0])
            pixdim = np.frombuffer(header[76:108], endian + "f4").astype(np.float64)
            sform_code = int(np.frombuffer(header[254:256], endian + "i2")[0])
            srows = np.frombuffer(header[280:328], endian + "f4").astype(np.float64).reshape(3, 4)
        elif len(header) >= 540 and int(np.frombuffer(header[:4], endian + "i4")[0]) == 540:
            ndim = int(np.frombuffer(header[16:24], endian + "i8")[0])
            pixdim = np.frombuffer(header[104:168], endian + "f8")
            sform_code = int(np.frombuffer(header[348:352], endian + "i4")[0])
            srows = np.frombuffer(header[400:496], endian + "f8").reshape(3, 4)
        else:
            continue
        for axis, value in zip("xyz", pixdim[1:1 + min(max(ndim, 0), 3)]):
            if not np.isfinite(value) or value <= 0:
                return f"its header gives a voxel size of {value:g} mm along {axis}"
        if sform_code > 0 and ndim >= 3:
            matrix = srows[:, :3]
            lengths = np.linalg.norm(matrix, axis=0)
            if not np.all(np.isfinite(matrix)) or np.any(lengths <= 0):
                return "its sform matrix is degenerate"
            axes = matrix / lengths
            if np.abs(axes.T @ axes - np.eye(3)).max() > _SHEAR_TOLERANCE:
                return f"its sform matrix is sheared (the x and y axes meet at {_angle(axes):.1f} degrees, not 90)"
        return None
    return None


def _angle(axes: np.ndarray) -> float:
    """Angle between the first two columns (unit or not), in degrees."""
    a, b = axes[:, 0], axes[:, 1]
    cos = abs(float(a @ b)) / max(float(np.linalg.norm(a) * np.linalg.norm(b)), 1e-12)
    return float(np.degrees(np.arccos(min(cos, 1.0))))


def check_geometry(image: sitk.Image, path: Path, what: str) -> None:
    """Spacing finite and above 0; direction a rotation (orthonormal), not a shear that would turn every output."""
    spacing = np.asarray(image.GetSpacing(), dtype=np.float64)
    if not np.all(np.isfinite(spacing)) or np.any(spacing <= 0):
        raise InputError(f"The {what} {path} has a voxel size of {' x '.join(f'{s:g}' for s in spacing)} mm.",
                         _GEOMETRY_HINT)
    n = image.GetDimension()
    direction = np.asarray(image.GetDirection(), dtype=np.float64).reshape(n, n)
    if not np.all(np.isfinite(direction)) or \
            np.abs(direction.T @ direction - np.eye(n)).max() > _SHEAR_TOLERANCE:
        raise InputError(f"The {what} {path} has a sheared or scaled direction matrix (its x and y axes meet at "
                         f"{_angle(direction):.1f} degrees, not 90); a scanner writes a pure rotation.",
                         _GEOMETRY_HINT + " Resampling it onto a regular grid first also works.")


def check_training_volume(image: sitk.Image, path) -> None:
    """A volume too small to be a scan is refused instead of being silently resampled up to the training grid."""
    size = image.GetSize()
    if min(size[:2]) < MIN_IN_PLANE:
        raise InputError(f"The volume {path} is only {'x'.join(map(str, size))} voxels; a scan has at least "
                         f"{MIN_IN_PLANE} voxels along x and y.", "Remove it from the data set.")


def check_hounsfield(hu: np.ndarray, path) -> None:
    """Intensities of a CT case (as read, scale slope applied) must look like Hounsfield units."""
    values = np.asarray(hu)
    low, high = float(values.min()), float(values.max())
    if not (np.isfinite(low) and np.isfinite(high)) or low < HU_LOWEST or high > HU_HIGHEST:
        raise InputError(f"The CT {path} has values from {low:.4g} to {high:.4g}, which are not Hounsfield units "
                         f"(a CT lies within {HU_LOWEST:g} .. {HU_HIGHEST:g} HU, air near -1000).",
                         "Export the scan in HU (apply the rescale slope/intercept, e.g. with 3D Slicer or "
                         "dcm2niix), or leave this file out.")
    if high - low < 1:
        raise InputError(f"The CT {path} has the same value ({low:g}) in every voxel.",
                         "The export failed or the file is a placeholder: export it again, or leave it out.")

def air_warning(hu: np.ndarray, path) -> str | None:
    """A warning when a CT case has no air (a tight crop may mean it; HU + 1024 stored without its intercept may
    not): None when its darkest voxels are below AIR_BELOW_HU."""
    darkest = float(np.percentile(np.asarray(hu), 0.5))
    if darkest <= AIR_BELOW_HU:
        return None
    return (f"The CT {path} has no air: its darkest voxels are {darkest:.0f} (0.5th percentile), where a body CT in "
            "Hounsfield units has air near -1000 HU; if the values are stored without their rescale intercept "
            "(e.g. HU + 1024), export the scan in HU.")
