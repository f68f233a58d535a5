"""Reading/writing volumes: exact geometry and voxel round trips, and one clear InputError per bad input."""

import gzip
import json

import numpy as np
import pytest
import SimpleITK as sitk

from CTDiffusionLib.data.volume_io import (
    Geometry,
    array_to_image,
    image_to_array,
    read_dicom_series,
    read_image,
    read_label_image,
    write_dicom_series,
    write_image,
)
from CTDiffusionLib.errors import InputError

ROTATED = (0.0, -1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0)  # 90 degrees about z (a proper rotation)
GEOMETRY = Geometry((0.7, 0.8, 2.5), (-120.5, 33.25, -300.125), ROTATED)


def ct_array(shape=(4, 6, 5), seed=0):
    return np.random.default_rng(seed).integers(-1024, 3000, size=shape).astype(np.int16)


def label_array(shape=(3, 6, 5)):
    return np.random.default_rng(1).integers(0, 4, size=shape).astype(np.uint8)


def assert_same_geometry(a: Geometry, b: Geometry):
    np.testing.assert_allclose(a.spacing, b.spacing, atol=1e-5)
    np.testing.assert_allclose(a.origin, b.origin, atol=1e-4)
    np.testing.assert_allclose(a.direction, b.direction, atol=1e-6)


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd", ".mha", ".mhd", ".nii"])
def test_ct_round_trip_keeps_geometry_and_hu(tmp_path, suffix):
    array = ct_array()
    path = write_image(array_to_image(array, GEOMETRY), tmp_path / "sub" / f"ct{suffix}")
    back, geometry = image_to_array(read_image(path))
    assert back.dtype == np.int16
    np.testing.assert_array_equal(back, array)
    assert_same_geometry(geometry, GEOMETRY)
    assert not [p.name for p in path.parent.iterdir() if p.name.startswith(".")]  # no temp leftovers


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd", ".mha"])
def test_label_round_trip_is_exact_uint8(tmp_path, suffix):
    labels = label_array()
    path = write_image(array_to_image(labels, GEOMETRY), tmp_path / f"mask{suffix}")
    back, geometry = image_to_array(read_label_image(path))
    assert back.dtype == np.uint8
    np.testing.assert_array_equal(back, labels)
    assert_same_geometry(geometry, GEOMETRY)


def test_write_image_replaces_existing_file(tmp_path):
    path = tmp_path / "ct.nii.gz"
    write_image(array_to_image(ct_array(seed=1), GEOMETRY), path)
    write_image(array_to_image(ct_array(seed=2), GEOMETRY), path)
    np.testing.assert_array_equal(image_to_array(read_image(path))[0], ct_array(seed=2))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ct.nii.gz"]


def test_geometry_dict_round_trip_through_json():
    restored = Geometry.from_dict(json.loads(json.dumps(GEOMETRY.to_dict())))
    assert restored == GEOMETRY and hash(restored) == hash(GEOMETRY)
    assert Geometry.of(array_to_image(ct_array(), GEOMETRY)) == GEOMETRY


def test_array_to_image_is_zyx():
    image = array_to_image(np.zeros((3, 4, 5), np.int16), GEOMETRY)
    assert image.GetSize() == (5, 4, 3)


@pytest.mark.parametrize("direction", [(1, 0, 0, 0, 1, 0, 0, 0, 1), ROTATED])
def test_dicom_series_round_trip(tmp_path, direction):
    array = ct_array(shape=(5, 6, 7))
    geometry = Geometry(GEOMETRY.spacing, GEOMETRY.origin, direction)
    folder = write_dicom_series(array_to_image(array, geometry), tmp_path / "series")
    assert len(list(folder.glob("*.dcm"))) == 5  # one file per slice
    for image in (read_dicom_series(folder), read_image(folder)):
        back, back_geometry = image_to_array(image)
        np.testing.assert_array_equal(back, array)
        assert_same_geometry(back_geometry, geometry)


def test_single_slice_volume_is_fine(tmp_path):
    path = write_image(array_to_image(ct_array(shape=(1, 6, 5)), GEOMETRY), tmp_path / "one.nii.gz")
    assert read_image(path).GetSize() == (5, 6, 1)


# ---------------------------------------------------------------------------------------------- bad inputs

def assert_input_error_names(excinfo, path):
    assert isinstance(excinfo.value, InputError) and excinfo.value.exit_code == 2
    assert str(path) in excinfo.value.message
    assert excinfo.value.hint


def test_missing_file(tmp_path):
    path = tmp_path / "nope.nii.gz"
    with pytest.raises(InputError) as excinfo:
        read_image(path)
    assert_input_error_names(excinfo, path)
    assert "does not exist" in excinfo.value.message


def test_unsupported_suffix(tmp_path):
    path = tmp_path / "scan.png"
    path.write_bytes(b"\x89PNG")
    with pytest.raises(InputError) as excinfo:
        read_image(path)
    assert_input_error_names(excinfo, path)
    assert ".nii.gz" in excinfo.value.hint


def test_empty_folder(tmp_path):
    with pytest.raises(InputError) as excinfo:
        read_image(tmp_path)
    assert_input_error_names(excinfo, tmp_path)


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".nrrd", ".mha"])
@pytest.mark.parametrize("keep", [0.5, 0.05])  # cut in the voxel data, and near the header
def test_truncated_file(tmp_path, suffix, keep):
    path = write_image(array_to_image(ct_array(shape=(16, 32, 32)), GEOMETRY), tmp_path / f"cut{suffix}")
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(InputError) as excinfo:
        read_image(path)
    assert_input_error_names(excinfo, path)
    assert "cannot be read" in excinfo.value.message


def test_garbage_file_with_image_suffix(tmp_path):
    path = tmp_path / "fake.nii.gz"
    path.write_bytes(gzip.compress(b"not an image at all" * 20))
    with pytest.raises(InputError) as excinfo:
        read_image(path)
    assert_input_error_names(excinfo, path)


def test_2d_image(tmp_path):
    path = tmp_path / "slice.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((6, 5), np.int16)), str(path))
    with pytest.raises(InputError) as excinfo:
        read_image(path)
    assert_input_error_names(excinfo, path)
    assert "2D" in excinfo.value.message


def test_4d_image(tmp_path):
    path = tmp_path / "patient001_4d.nii.gz"
    frame = sitk.GetImageFromArray(np.zeros((3, 6, 5), np.int16))
    sitk.WriteImage(sitk.JoinSeries([frame, frame]), str(path))
    with pytest.raises(InputError) as excinfo:
        read_image(path)
    assert_input_error_names(excinfo, path)
    assert "4D" in excinfo.value.message


def test_vector_image(tmp_path):
    path = tmp_path / "rgb.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((3, 6, 5, 3), np.uint8), isVector=True), str(path))
    with pytest.raises(InputError) as excinfo:
        read_image(path)
    assert_input_error_names(excinfo, path)
    assert "3 values per voxel" in excinfo.value.message


@pytest.mark.parametrize("suffix", [".nrrd", ".mha", ".nii", ".nii.gz"])
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_voxels_in_every_format(tmp_path, bad, suffix):
    # ITK's NIfTI reader turns NaN/inf into 0, so this also checks that the file's own values are read.
    array = np.zeros((3, 6, 5), np.float32)
    array[1, 2, 3] = array[2, 0, 1] = bad
    path = write_image(array_to_image(array, GEOMETRY), tmp_path / f"float{suffix}")
    with pytest.raises(InputError) as excinfo:
        read_image(path)
    assert_input_error_names(excinfo, path)
    assert "contains 2 NaN or infinite voxel values" in excinfo.value.message


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_nifti_non_finite_count_across_read_chunks(tmp_path, monkeypatch, dtype):
    from CTDiffusionLib.data import volume_io

    monkeypatch.setattr(volume_io, "_SCAN_CHUNK", 7)  # values straddle chunk borders
    array = np.random.default_rng(0).normal(size=(5, 6, 7)).astype(dtype)
    array.flat[[0, 17, 100, 209]] = [np.nan, np.inf, -np.inf, np.nan]
    path = write_image(array_to_image(array, GEOMETRY), tmp_path / "float.nii.gz")
    with pytest.raises(InputError, match="contains 4 NaN"):
        read_image(path)
    array.flat[[0, 17, 100, 209]] = 0.0
    finite = write_image(array_to_image(array, GEOMETRY), tmp_path / "finite.nii")
    assert read_image(finite).GetSize() == (7, 6, 5)


def test_labels_outside_range(tmp_path):
    labels = label_array()
    labels[0, 0, 0], labels[1, 1, 1] = 5, 7
    path = write_image(array_to_image(labels, GEOMETRY), tmp_path / "mask.nii.gz")
    with pytest.raises(InputError) as excinfo:
        read_label_image(path)
    assert_input_error_names(excinfo, path)
    assert "0..3 expected (0 bg, 1 RV, 2 MYO, 3 LV), found 5, 7" in excinfo.value.message
    assert read_label_image(path, num_labels=8).GetPixelID() == sitk.sitkUInt8


def test_negative_labels(tmp_path):
    labels = label_array().astype(np.int16)
    labels[0, 0, 0] = -1
    path = write_image(array_to_image(labels, GEOMETRY), tmp_path / "mask.nii.gz")
    with pytest.raises(InputError, match="found -1"):
        read_label_image(path)


def test_float_labels(tmp_path):
    whole = write_image(array_to_image(label_array().astype(np.float32), GEOMETRY), tmp_path / "whole.nii.gz")
    np.testing.assert_array_equal(image_to_array(read_label_image(whole))[0], label_array())
    half = write_image(array_to_image(label_array() + np.float32(0.5), GEOMETRY), tmp_path / "half.nii.gz")
    with pytest.raises(InputError) as excinfo:
        read_label_image(half)
    assert_input_error_names(excinfo, half)


def test_dicom_folder_with_two_series(tmp_path):
    for name in ("a", "b"):
        write_dicom_series(array_to_image(ct_array(), GEOMETRY), tmp_path / name)
    for dcm in (tmp_path / "b").iterdir():
        dcm.rename(tmp_path / "a" / f"b_{dcm.name}")
    with pytest.raises(InputError) as excinfo:
        read_image(tmp_path / "a")
    assert_input_error_names(excinfo, tmp_path / "a")
    assert "2 DICOM series" in excinfo.value.message
    with pytest.raises(InputError, match="no DICOM series with SeriesInstanceUID 1.2.3"):
        read_dicom_series(tmp_path / "a", "1.2.3")


def test_write_dicom_refuses_non_empty_folder(tmp_path):
    (tmp_path / "keep.txt").write_text("x")
    with pytest.raises(InputError):
        write_dicom_series(array_to_image(ct_array(), GEOMETRY), tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]


def _dicom_series(folder, slices=8):
    image = array_to_image(ct_array((slices, 6, 5)), GEOMETRY)
    return write_dicom_series(image, folder), sorted(folder.iterdir())


def _move_slice(dcm, shift_mm):
    """Rewrite one slice file with its ImagePositionPatient moved along z (GEOMETRY's slice normal)."""
    image = sitk.ReadImage(str(dcm))
    x, y, z = (float(v) for v in image.GetMetaData("0020|0032").split("\\"))
    image.SetMetaData("0020|0032", f"{x}\\{y}\\{z + shift_mm}")
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    writer.SetFileName(str(dcm))
    writer.Execute(image)


def test_dicom_series_with_missing_slices(tmp_path):
    folder, files = _dicom_series(tmp_path / "ct")
    files[3].unlink()
    files[4].unlink()
    with pytest.raises(InputError) as excinfo:
        read_image(folder)
    assert_input_error_names(excinfo, folder)
    assert "missing 2 slices" in excinfo.value.message and "7.50 mm" in excinfo.value.message


def test_dicom_series_with_uneven_spacing(tmp_path):
    folder, files = _dicom_series(tmp_path / "ct")
    for dcm in files[5:]:
        _move_slice(dcm, 1.0)  # 2.5 mm slices, then one gap of 3.5 mm
    with pytest.raises(InputError) as excinfo:
        read_image(folder)
    assert_input_error_names(excinfo, folder)
    assert "uneven slice spacing" in excinfo.value.message and "3.50 mm" in excinfo.value.message


def test_dicom_series_with_two_slices_at_one_position(tmp_path):
    folder, files = _dicom_series(tmp_path / "ct")
    _move_slice(files[2], -2.5)  # now at the same place as slice 2: two acquisitions mixed in one series
    with pytest.raises(InputError, match="two slices at the same position"):
        read_image(folder)


def test_dicom_series_with_small_position_jitter_is_fine(tmp_path):
    folder, files = _dicom_series(tmp_path / "ct")
    _move_slice(files[4], 0.004)  # rounding in the position tag, as scanners write it
    assert read_image(folder).GetSize() == (5, 6, 8)
