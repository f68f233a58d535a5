"""Reading and writing 3D volumes (NIfTI, NRRD, MetaImage, DICOM series) with their physical geometry.

Every problem a researcher can cause with a file (missing, damaged, 2D, 4D, NaN, bad labels) becomes an
InputError that names the file; anything else is a bug. Only SimpleITK and numpy are imported here so the
module loads fast inside Slicer and in the CLI.
"""

from __future__ import annotations

import gzip
import os
import shutil
import uuid
import zlib
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from CTDiffusionLib.data.volume_checks import check_fits, check_geometry, nifti_header_problem
from CTDiffusionLib.errors import CTDiffusionError, InputError
from CTDiffusionLib.runfolder import publish, staged_folder

SUPPORTED_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd")
# Header + separate data file: these cannot be written with one atomic rename of a temp file.
_DETACHED_HEADER_SUFFIXES = (".nhdr", ".mhd")
ACDC_LABEL_NAMES = ("bg", "RV", "MYO", "LV")
_FLOAT_PIXEL_IDS = {sitk.sitkFloat32, sitk.sitkFloat64}
_INT_PIXEL_IDS = {
    sitk.sitkUInt8, sitk.sitkInt8, sitk.sitkUInt16, sitk.sitkInt16,
    sitk.sitkUInt32, sitk.sitkInt32, sitk.sitkUInt64, sitk.sitkInt64,
}
_SUFFIX_HINT = "Accepted: " + ", ".join(SUPPORTED_SUFFIXES) + " files, or a folder holding one DICOM series."


@dataclass(frozen=True)
class Geometry:
    """Physical placement of a (z, y, x) numpy array, in SimpleITK's (x, y, z) conventions (LPS, mm)."""

    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[float, ...]  # 9 floats, row-major, as sitk.Image.GetDirection()

    def __post_init__(self):
        # Coerce lists (e.g. from JSON) to float tuples so Geometry stays hashable and compares by value.
        for name, length in (("spacing", 3), ("origin", 3), ("direction", 9)):
            values = tuple(float(v) for v in getattr(self, name))
            if len(values) != length:
                raise ValueError(f"Geometry.{name} needs {length} numbers, got {len(values)}")
            object.__setattr__(self, name, values)

    def to_dict(self) -> dict:
        return {"spacing": list(self.spacing), "origin": list(self.origin), "direction": list(self.direction)}

    @classmethod
    def from_dict(cls, d: dict) -> Geometry:
        return cls(spacing=d["spacing"], origin=d["origin"], direction=d["direction"])

    @classmethod
    def of(cls, image: sitk.Image) -> Geometry:
        if image.GetDimension() != 3:
            raise ValueError(f"Geometry needs a 3D image, got {image.GetDimension()}D")
        return cls(spacing=image.GetSpacing(), origin=image.GetOrigin(), direction=image.GetDirection())

    def apply_to(self, image: sitk.Image) -> sitk.Image:
        """Set this geometry on `image` (in place) and return it."""
        image.SetSpacing(self.spacing)
        image.SetOrigin(self.origin)
        image.SetDirection(self.direction)
        return image


# ---------------------------------------------------------------------------------------------- file names

def image_suffix(path) -> str | None:
    """The supported suffix `path` ends with (case-insensitive, '.nii.gz' as one suffix), else None."""
    name = Path(path).name.lower()
    return next((s for s in sorted(SUPPORTED_SUFFIXES, key=len, reverse=True) if name.endswith(s)), None)


def strip_image_suffix(path) -> str:
    """File name without its image suffix: 'patient001_frame01_gt.nii.gz' -> 'patient001_frame01_gt'."""
    name = Path(path).name
    suffix = image_suffix(name)
    return name[: len(name) - len(suffix)] if suffix else Path(name).stem


# ---------------------------------------------------------------------------------------------- reading

def read_image(path, *, what: str = "volume") -> sitk.Image:
    """Read a 3D scalar image file, or the single DICOM series in a folder; InputError for anything unusable."""
    path = Path(path).expanduser()
    if not path.exists():
        raise InputError(f"The {what} {path} does not exist.", "Check the path (relative paths start from the "
                         "current folder).")
    if path.is_dir():
        return read_dicom_series(path, what=what)
    suffix = image_suffix(path)
    if suffix is None:
        raise InputError(f"The {what} {path} has an unsupported file type ({''.join(path.suffixes) or 'no suffix'}).",
                         _SUFFIX_HINT)
    unreadable = f"The {what} {path} cannot be read: it is damaged, truncated or not a valid {suffix} image."
    check_fits(path, what)  # from the header: a volume larger than memory is a sentence, not a MemoryError
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        raise InputError(unreadable, f"Copy or export the file again. (SimpleITK: {_sitk_reason(exc)})") from None
    if suffix in (".nii", ".nii.gz"):
        # ITK's NIfTI reader silently fills a truncated file with garbage and turns NaN/inf voxels into 0, so the
        # file's own bytes are checked here.
        scan = _scan_nifti(path, suffix)
        if scan.problem:
            raise InputError(unreadable, f"Copy or export the file again ({scan.problem}).")
        if scan.non_finite:
            raise _non_finite_error(what, path, scan.non_finite)
        spacing_problem = nifti_header_problem(path, suffix)  # ITK reads 0/NaN as 1 mm, -x as +x, unshears
        if spacing_problem:
            raise InputError(f"The {what} {path} cannot be placed in space: {spacing_problem}.",
                             "Fix the geometry in the header (e.g. 3D Slicer: Volumes > Volume Information) and "
                             "save it again, or resample it onto a regular grid.")
    return _checked_volume(image, path, what)


@dataclass(frozen=True)
class _NiftiScan:
    problem: str | None  # why the file is shorter than its header promises; None when complete
    non_finite: int  # NaN/inf voxel values as stored in the file (float data types only)


# NIfTI datatype codes whose stored values can be NaN/inf -> numpy element type (complex: pairs of floats).
_NIFTI_FLOAT_CODES = {16: "f4", 64: "f8", 32: "f4", 1792: "f8"}
_SCAN_CHUNK = 1 << 22


def _scan_nifti(path: Path, suffix: str) -> _NiftiScan:
    """Read a NIfTI file once, in chunks: its data length against the header, and its non-finite voxel values."""
    opener = gzip.open if suffix == ".nii.gz" else open
    try:
        with opener(path, "rb") as stream:
            head = stream.read(540)
            layout = _nifti_layout(head)
            if layout is None:
                return _NiftiScan(None, 0)  # ITK read it; nothing more we can check
            vox_offset, nbytes, dtype = layout
            while len(head) < vox_offset:  # header extensions longer than what was read so far
                more = stream.read(vox_offset - len(head))
                if not more:
                    break
                head += more
            pending, length, non_finite, carry = head[vox_offset:], 0, 0, b""
            while length < nbytes:
                data, pending = pending or stream.read(_SCAN_CHUNK), b""
                if not data:
                    break
                data = data[: nbytes - length]
                length += len(data)
                if dtype is not None:
                    data = carry + data
                    usable = len(data) - len(data) % dtype.itemsize
                    values = np.frombuffer(data[:usable], dtype)
                    non_finite += int(values.size - np.count_nonzero(np.isfinite(values)))
                    carry = data[usable:]
    except (EOFError, OSError, zlib.error) as exc:
        return _NiftiScan(f"the compressed data ends early: {exc}", 0)
    if length < nbytes:
        return _NiftiScan(f"{vox_offset + length} bytes where the header needs {vox_offset + nbytes}", non_finite)
    return _NiftiScan(None, non_finite)


def _nifti_layout(header: bytes) -> tuple[int, int, np.dtype | None] | None:
    """(vox_offset, voxel bytes, float dtype or None) from a NIfTI-1 or NIfTI-2 header (either byte order)."""
    for endian in "<>":
        sizeof_hdr = int(np.frombuffer(header[:4], endian + "i4")[0]) if len(header) >= 4 else 0
        if sizeof_hdr == 348 and len(header) >= 348:
            dims = np.frombuffer(header[40:56], endian + "i2").astype(np.int64)
            datatype = int(np.frombuffer(header[70:72], endian + "i2")[0])
            bitpix = int(np.frombuffer(header[72:74], endian + "i2")[0])
            vox_offset = int(np.frombuffer(header[108:112], endian + "f4")[0])
        elif sizeof_hdr == 540 and len(header) >= 540:
            dims = np.frombuffer(header[16:80], endian + "i8")
            datatype = int(np.frombuffer(header[12:14], endian + "i2")[0])
            bitpix = int(np.frombuffer(header[14:16], endian + "i2")[0])
            vox_offset = int(np.frombuffer(header[168:176], endian + "i8")[0])
        else:
            continue
        if not 1 <= dims[0] <= 7 or bitpix <= 0 or vox_offset < 0:
            return None
        nbytes = int(np.prod(np.maximum(dims[1:1 + dims[0]], 1))) * bitpix // 8
        code = _NIFTI_FLOAT_CODES.get(datatype)
        return vox_offset, nbytes, np.dtype(endian + code) if code else None
    return None


def _non_finite_error(what: str, path: Path, count: int) -> InputError:
    return InputError(f"The {what} {path} contains {count} NaN or infinite voxel value{'s' if count != 1 else ''}.",
                      "Fill or mask those voxels (e.g. with -1024 HU for air) and save it again.")


def read_dicom_series(folder, series_uid: str | None = None, *, what: str = "volume") -> sitk.Image:
    """Read one DICOM series from `folder` (not its subfolders). Without `series_uid` the folder must hold one."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        problem = "is not a folder" if folder.exists() else "does not exist"
        raise InputError(f"The DICOM folder {folder} {problem}.",
                         "Pass a folder that holds the DICOM files of a series.")
    series_ids = dicom_series_ids(folder)
    if not series_ids:
        raise InputError(f"The folder {folder} holds no DICOM series.", _SUFFIX_HINT)
    if series_uid is None:
        if len(series_ids) > 1:
            raise InputError(f"The folder {folder} holds {len(series_ids)} DICOM series; one was expected.",
                             "Put each series in its own folder, or give the parent folder as a data source so "
                             "every series becomes its own case.")
        series_uid = series_ids[0]
    elif series_uid not in series_ids:
        raise InputError(f"The folder {folder} holds no DICOM series with SeriesInstanceUID {series_uid}.",
                         f"Series found there: {', '.join(series_ids)}.")
    files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), series_uid)
    _check_slice_positions(files, folder, series_uid)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    try:
        image = reader.Execute()
    except RuntimeError as exc:
        raise InputError(f"The DICOM series {series_uid} in {folder} cannot be read.",
                         f"Check that no file of the series is damaged. (SimpleITK: {_sitk_reason(exc)})") from None
    if image.GetDimension() == 3 and len(files) == 1:
        _set_single_slice_thickness(image, files[0])
    return _checked_volume(image, folder, what)


def _check_slice_positions(files, folder: Path, series_uid: str) -> None:
    """Refuse a series whose slices do not stack evenly: missing slices, uneven spacing, two slices at one
    position (mixed acquisitions) or mixed orientations. ITK would only warn and stack them as if even."""
    if len(files) < 2:
        return
    positions, orientations = [], []
    for name in files:
        reader = sitk.ImageFileReader()
        reader.SetFileName(name)
        try:
            reader.ReadImageInformation()
            positions.append([float(v) for v in reader.GetMetaData("0020|0032").split("\\")])
            orientations.append([float(v) for v in reader.GetMetaData("0020|0037").split("\\")])
        except (RuntimeError, ValueError):
            return  # no usable ImagePositionPatient/ImageOrientationPatient: nothing to check against
    where = f"The DICOM series {series_uid} in {folder}"
    hint = "Export the complete series again (every slice, one acquisition) into its own folder."
    orientations = np.array(orientations)
    if orientations.shape[1] != 6 or np.abs(orientations - orientations[0]).max() > 1e-3:
        raise InputError(f"{where} mixes slices with different orientations.", hint)
    normal = np.cross(orientations[0, :3], orientations[0, 3:])
    depth = np.sort(np.array(positions) @ normal)
    gaps = np.diff(depth)
    if gaps.min() < 1e-3:
        k = int(np.argmin(gaps))
        raise InputError(f"{where} has two slices at the same position ({depth[k]:.2f} mm along the slice normal); "
                         "it mixes several acquisitions.", hint)
    step = float(gaps.min())
    tolerance = max(0.05 * step, 0.01)
    uneven = np.flatnonzero(gaps > step + tolerance)
    if not uneven.size:
        return
    multiples = gaps[uneven] / step
    first = int(uneven[0])
    detail = f"the gap after slice {first + 1} (at {depth[first]:.2f} mm) is {gaps[first]:.2f} mm where the " \
             f"slice spacing is {step:.2f} mm"
    if np.all(np.abs(multiples - np.round(multiples)) * step <= tolerance):
        missing = int(np.sum(np.round(multiples) - 1))
        raise InputError(f"{where} is missing {missing} slice{'s' if missing != 1 else ''}: {detail}.", hint)
    raise InputError(f"{where} has uneven slice spacing: {detail}.", hint)


def dicom_series_ids(folder) -> tuple[str, ...]:
    """SeriesInstanceUIDs of the DICOM files directly in `folder` (sorted); quiet when there are none."""
    with _sitk_warnings_off():
        return tuple(sorted(sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))))


def read_label_image(path, num_labels: int = 4) -> sitk.Image:
    """Read a label volume; every voxel must be a whole number in 0..num_labels-1. Returned as UInt8."""
    path = Path(path).expanduser()
    image = read_image(path, what="label image")
    if image.GetPixelID() not in _INT_PIXEL_IDS:
        values = sitk.GetArrayViewFromImage(image)
        # Some tools save masks as float; accept them only when every value is a whole number.
        if not np.array_equal(values, np.round(values)):
            raise InputError(f"The label image {path} holds fractional values ({image.GetPixelIDTypeAsString()}); "
                             "whole-number labels are expected.",
                             "Export the segmentation as a labelmap (integer voxels), not as a probability map.")
    values = np.unique(sitk.GetArrayViewFromImage(image))
    bad = values[(values < 0) | (values >= num_labels)]
    if bad.size:
        found = ", ".join(str(int(v)) for v in bad[:10]) + (", ..." if bad.size > 10 else "")
        raise InputError(f"The label image {path} has labels outside the expected range: labels "
                         f"{_label_range_text(num_labels)}, found {found}.",
                         "Relabel the mask (e.g. merge or drop extra structures) before using it.")
    return sitk.Cast(image, sitk.sitkUInt8) if num_labels <= 256 else image


def _label_range_text(num_labels: int) -> str:
    text = f"0..{num_labels - 1} expected"
    if num_labels == len(ACDC_LABEL_NAMES):
        text += " (" + ", ".join(f"{i} {n}" for i, n in enumerate(ACDC_LABEL_NAMES)) + ")"
    return text


def _checked_volume(image: sitk.Image, path: Path, what: str) -> sitk.Image:
    """The checks every reader shares: 3D, one component, finite values."""
    dim = image.GetDimension()
    size = "x".join(str(s) for s in image.GetSize())
    if dim != 3:
        raise InputError(f"The {what} {path} is a {dim}D image ({size} voxels); a 3D volume is needed.",
                         "Give a 3D volume (a 4D time series such as an ACDC *_4d.nii.gz must be split into 3D "
                         "frames first)." if dim > 3 else "Give a 3D volume, not a single 2D slice or picture.")
    components = image.GetNumberOfComponentsPerPixel()
    if components != 1:
        raise InputError(f"The {what} {path} has {components} values per voxel (a vector or colour image); "
                         "a single-value 3D volume is needed.", "Export one scalar channel as its own volume.")
    if image.GetPixelID() in _FLOAT_PIXEL_IDS:
        bad = int(np.count_nonzero(~np.isfinite(sitk.GetArrayViewFromImage(image))))
        if bad:
            raise _non_finite_error(what, path, bad)
    check_geometry(image, path, what)  # spacing above 0, a rotation and not a shear
    return image


def _set_single_slice_thickness(image: sitk.Image, dicom_file: str) -> None:
    """ITK gives a one-file series a z spacing of 1 mm; use the file's slice spacing/thickness instead."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(dicom_file)
    reader.ReadImageInformation()
    for tag in ("0018|0088", "0018|0050"):  # SpacingBetweenSlices, SliceThickness
        if reader.HasMetaDataKey(tag):
            try:
                thickness = float(reader.GetMetaData(tag).strip())
            except ValueError:
                continue
            if thickness > 0:
                image.SetSpacing(image.GetSpacing()[:2] + (thickness,))
                return


def _sitk_reason(exc: RuntimeError) -> str:
    """The human part of a SimpleITK exception (it starts with source file names and line numbers)."""
    text = str(exc).strip()
    return text.split("sitk::ERROR:", 1)[-1].strip() if "sitk::ERROR:" in text else text.splitlines()[-1]


@contextmanager
def _sitk_warnings_off():
    previous = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    try:
        yield
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(previous)


# ---------------------------------------------------------------------------------------------- arrays

def image_to_array(image: sitk.Image) -> tuple[np.ndarray, Geometry]:
    """A copy of the voxels in (z, y, x) order, plus the geometry to put them back."""
    return sitk.GetArrayFromImage(image), Geometry.of(image)


def array_to_image(array_zyx: np.ndarray, geometry: Geometry) -> sitk.Image:
    """A 3D scalar image from a (z, y, x) array; bool arrays become UInt8 (SimpleITK has no bool)."""
    array = np.asarray(array_zyx)
    if array.ndim != 3:
        raise ValueError(f"array_to_image needs a (z, y, x) array, got shape {array.shape}")
    if array.dtype == bool:
        array = array.astype(np.uint8)
    return geometry.apply_to(sitk.GetImageFromArray(array, isVector=False))


# ---------------------------------------------------------------------------------------------- writing

def write_image(image: sitk.Image, path, *, exclusive: bool = False) -> Path:
    """Write `image` compressed, atomically (temp file in the same folder, then rename); parents are created.
    With `exclusive` an existing file is never replaced (runfolder.OutputExists instead)."""
    path = Path(path).expanduser()
    suffix = image_suffix(path)
    if suffix is None:
        raise InputError(f"Cannot write {path}: unsupported file type.", _SUFFIX_HINT)
    path.parent.mkdir(parents=True, exist_ok=True)
    # A hidden temp name keeps half-written files out of folder listings and case discovery.
    tmp_dir = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex[:12]}"
    tmp_dir.mkdir()
    try:
        tmp_file = tmp_dir / path.name
        try:
            sitk.WriteImage(image, str(tmp_file), useCompression=True)
        except RuntimeError as exc:
            raise write_failed(path, _sitk_reason(exc)) from None
        if suffix in (".nii", ".nii.gz"):
            # ITK's NIfTI writer only prints an error when the disk fills up and leaves a short file: check it.
            problem = _scan_nifti(tmp_file, suffix).problem
            if problem:
                raise write_failed(path, f"{_free_space_text(path.parent)}; the file came out short: {problem}")
        # Detached formats (.mhd/.nhdr) also wrote a data file that the header names: move it first and the
        # header last, so a reader never sees a header without its data.
        for data_file in sorted(tmp_dir.iterdir()):
            if data_file.name != path.name:
                os.replace(data_file, path.parent / data_file.name)
        publish(tmp_file, path, exclusive)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    return path


def write_failed(path, reason: str) -> CTDiffusionError:
    """The error for an output file that could not be written (disk full, quota, permissions): nothing is left."""
    return CTDiffusionError(f"Could not write {path}: {reason}.",
                            "Free disk space or choose another output folder, then run again; no partial file was "
                            "left behind.")


def _free_space_text(folder: Path) -> str:
    try:
        return f"{shutil.disk_usage(folder).free / 1e6:.1f} MB free on its disk"
    except OSError:
        return "the disk may be full"


def write_dicom_series(image: sitk.Image, folder) -> Path:
    """Write a 3D CT volume as a DICOM series (int16, one file per slice) into a new or empty `folder`."""
    folder = Path(folder).expanduser()
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise InputError(f"Cannot write a DICOM series to {folder}: it exists and is not an empty folder.",
                         "Choose a new folder.")
    array, geometry = image_to_array(image)
    array = np.clip(np.rint(array), -32768, 32767).astype(np.int16)
    volume = array_to_image(array, geometry)

    d = geometry.direction
    orientation = (d[0], d[3], d[6], d[1], d[4], d[7])  # direction columns = row and column cosines
    study_uid, series_uid, frame_uid = _new_uid(), _new_uid(), _new_uid()
    shared_tags = {
        "0008|0016": "1.2.840.10008.5.1.4.1.1.2",  # SOP class: CT Image Storage
        "0008|0060": "CT",
        "0008|103e": "CTDiffusion volume",
        "0010|0010": "CTDiffusion^Export",
        "0010|0020": "CTDIFFUSION",
        "0020|000d": study_uid,
        "0020|000e": series_uid,
        "0020|0011": "1",
        "0020|0052": frame_uid,
        "0020|0037": "\\".join(_ds(v) for v in orientation),
        "0018|0050": _ds(geometry.spacing[2]),  # SliceThickness
        "0018|0088": _ds(geometry.spacing[2]),  # SpacingBetweenSlices
        "0028|0030": f"{_ds(geometry.spacing[1])}\\{_ds(geometry.spacing[0])}",  # PixelSpacing: row\column
        "0028|1050": "40",  # a soft-tissue window for viewers
        "0028|1051": "400",
    }
    with staged_folder(folder) as tmp:
        writer = sitk.ImageFileWriter()
        writer.KeepOriginalImageUIDOn()  # keep our UIDs, so all slices share one series
        for k in range(volume.GetSize()[2]):
            slice_image = volume[:, :, k]
            tags = dict(shared_tags)
            tags["0008|0018"] = _new_uid()
            tags["0020|0013"] = str(k + 1)
            tags["0020|0032"] = "\\".join(_ds(v) for v in volume.TransformIndexToPhysicalPoint((0, 0, k)))
            for key, value in tags.items():
                slice_image.SetMetaData(key, value)
            writer.SetFileName(str(tmp / f"slice_{k:04d}.dcm"))
            writer.Execute(slice_image)
    return folder


def _new_uid() -> str:
    # "2.25." + a UUID as a decimal number is the standard way to make a DICOM UID without an org root.
    return f"2.25.{uuid.uuid4().int}"


def _ds(value: float) -> str:
    """A DICOM decimal string (at most 16 characters), as precise as fits."""
    for digits in range(12, 4, -1):
        text = f"{value:.{digits}g}"
        if len(text) <= 16:
            return text
    return f"{value:.4g}"
