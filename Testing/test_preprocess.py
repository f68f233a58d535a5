"""Preprocessing: the HU map is invertible, resampling keeps the field of view, masks stay labels."""

import numpy as np
import pytest
import SimpleITK as sitk

from CTDiffusionLib.data.augment import augment_sample, parse_augment
from CTDiffusionLib.data.preprocess import (ct_grid_geometry, ct_to_grid, hu_to_unit, labels_to_unit, mask_crops,
                                            masks_to_grid, unit_to_hu, unit_to_labels)


@pytest.mark.parametrize("intensity", [None, {"kind": "hu_linear", "hu_range": [-1024.0, 2000.0]}],
                         ids=["profile-piecewise", "linear"])
def test_hu_mapping_is_exact_for_every_hu_in_range(intensity):
    hu = np.arange(-1024, 2001, dtype=np.int16)
    unit = hu_to_unit(hu.astype(np.float32), intensity)
    assert unit.min() == -1.0 and unit.max() == 1.0 and np.all(np.diff(unit) > 0)
    np.testing.assert_array_equal(unit_to_hu(unit, intensity), hu)
    # float16 is how the training cache stores CT: within 1 HU of the truth in soft tissue and 2 HU in bone
    error = np.abs(unit_to_hu(unit.astype(np.float16).astype(np.float32), intensity) - hu)
    soft = (hu >= -200) & (hu <= 300)
    assert error[soft].max() <= 1 and error.max() <= 2


def test_profile_mapping_gives_soft_tissue_more_of_the_range():
    fat, muscle = hu_to_unit(np.array([-100.0, 50.0]))
    linear_fat, linear_muscle = hu_to_unit(np.array([-100.0, 50.0]), {"kind": "hu_linear",
                                                                     "hu_range": [-1024.0, 2000.0]})
    assert (muscle - fat) > 3 * (linear_muscle - linear_fat)


def test_profile_mapping_keeps_a_small_model_error_in_bone_above_soft_tissue():
    # Marrow/partial-volume bone at 400 HU with a model error of -0.04 units must stay bone (>= 300 HU); with all
    # bone squeezed into 20 % of the range (the first piecewise map) it fell to 293 HU, into the soft-tissue window.
    bone = hu_to_unit(np.array([400.0, 800.0]))
    assert np.all(unit_to_hu(bone - 0.04) >= 300)
    first = {"kind": "hu_piecewise", "hu": [-1024.0, -200.0, 300.0, 2000.0], "unit": [-1.0, -0.6, 0.6, 1.0]}
    assert unit_to_hu(hu_to_unit(np.array([400.0]), first) - 0.04, first)[0] < 300


def test_ct_to_grid_keeps_the_field_of_view_and_values():
    arr = np.full((26, 64, 64), -1000, np.int16)
    arr[:, 16:48, 16:48] = 40  # a block of soft tissue in the middle
    image = sitk.GetImageFromArray(arr)
    image.SetSpacing((0.9, 0.9, 2.5))
    image.SetOrigin((-30.0, 12.0, -100.0))
    out = ct_to_grid(image, (32, 32, 13))
    assert out.shape == (13, 32, 32) and out.dtype == np.float32
    assert abs(out[6, 16, 16] - 40) < 1 and abs(out[6, 1, 1] + 1000) < 1
    spacing, origin, _ = ct_grid_geometry(image, (32, 32, 13))
    np.testing.assert_allclose(spacing, (1.8, 1.8, 5.0))
    # the outer edge of the field of view stays put: origin - spacing/2 is unchanged
    np.testing.assert_allclose(np.subtract(origin, np.divide(spacing, 2)),
                               np.subtract(image.GetOrigin(), np.divide(image.GetSpacing(), 2)), atol=1e-6)


def _heart(shape=(6, 80, 80)):
    y, x = np.ogrid[: shape[1], : shape[2]]
    r = np.hypot(y - 40, x - 36)
    one = np.zeros(shape[1:], np.uint8)
    one[(np.hypot(y - 40, x - 54) < 7) & (r >= 12)] = 1
    one[r < 12] = 2
    one[r < 8] = 3
    labels = np.zeros(shape, np.uint8)
    labels[1:5] = one
    image = sitk.GetImageFromArray(labels)
    image.SetSpacing((1.5, 1.5, 10.0))
    return image, labels


def test_masks_to_grid_crops_the_heart_and_never_invents_labels():
    image, labels = _heart()
    slices = masks_to_grid(image, (32, 32), "2d")
    assert len(slices) == 4 and all(s.shape == (32, 32) and s.dtype == np.uint8 for s in slices)
    assert all(set(np.unique(s)) == {0, 1, 2, 3} for s in slices)
    # margin all round: the border of every crop is background
    assert all(s[0].max() == 0 and s[-1].max() == 0 and s[:, 0].max() == 0 and s[:, -1].max() == 0 for s in slices)
    [stack], spacing = mask_crops(image, (32, 32, 8), "3d")
    assert stack.shape == (8, 32, 32) and set(np.unique(stack)) <= {0, 1, 2, 3}
    assert spacing[2] == 4 * 10.0 / 8
    assert masks_to_grid(sitk.GetImageFromArray(np.zeros((3, 8, 8), np.uint8)), (32, 32), "2d") == []


def test_one_hot_round_trip():
    labels = np.random.default_rng(0).integers(0, 4, (5, 7)).astype(np.uint8)
    unit = labels_to_unit(labels)
    assert unit.shape == (4, 5, 7) and set(np.unique(unit)) == {-1.0, 1.0}
    np.testing.assert_array_equal(unit_to_labels(unit), labels)


def test_augmentation_keeps_shape_dtype_and_labels():
    rng = np.random.default_rng(0)
    _, labels = _heart()
    cfg = parse_augment("zoom,flip,rotate", {"zoom": [0.8, 1.2], "rotate_deg": 20.0})
    out = augment_sample(labels, cfg, rng, is_label=True)
    assert out.shape == labels.shape and out.dtype == np.uint8 and set(np.unique(out)) <= {0, 1, 2, 3}
    assert not np.array_equal(out, labels)
    ct = np.random.default_rng(1).uniform(-1, 1, (8, 32, 32)).astype(np.float16)
    out_ct = augment_sample(ct, cfg, rng, is_label=False)
    assert out_ct.shape == ct.shape and out_ct.dtype == np.float16
    assert parse_augment("none", cfg) == {}
    # same generator state -> same augmentation (what makes --resume exact)
    a = augment_sample(labels, cfg, np.random.default_rng(5), True)
    b = augment_sample(labels, cfg, np.random.default_rng(5), True)
    np.testing.assert_array_equal(a, b)


def test_training_cache_follows_the_runs_intensity_mapping(ct_phantoms, tmp_path):
    """A run stores its mapping; preparing data for it uses that mapping and caches it separately, so an older run
    (linear map) resumed after the profile's default changed still trains on what it started with."""
    from CTDiffusionLib.data.dataset import prepare_dataset
    from CTDiffusionLib.data.discovery import discover_cases

    cases = discover_cases(ct_phantoms, "prostate-ct")[:2]
    cfg = {"grid": [16, 16, 4], "mode": "3d", "val_fraction": 0.0}
    linear = {"kind": "hu_linear", "hu_range": [-1024.0, 2000.0]}
    new = prepare_dataset(cases, "prostate-ct", cfg, tmp_path, seed=0)
    old = prepare_dataset(cases, "prostate-ct", cfg, tmp_path, seed=0, intensity=linear)
    assert len(list(tmp_path.glob("*.npz"))) == 4  # one cache file per case and mapping
    for a, b in zip(new.samples, old.samples):
        hu_a = unit_to_hu(a.astype(np.float32))
        hu_b = unit_to_hu(b.astype(np.float32), linear)
        assert np.abs(hu_a.astype(int) - hu_b).max() <= 2  # the same HU through either mapping (float16 cache)
        assert not np.allclose(a, b)
