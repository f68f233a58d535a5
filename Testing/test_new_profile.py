"""A third data type is one new Profile: the generic paths (discovery, reading, model space and back, batches,
previews, CLI choices, generation's decoding) work for it without any other file knowing its name.

The skeleton here is pelvic organ masks with five classes, so label 4 is valid for it and invalid for cardiac masks:
reading, one-hot channels and colours must all follow the profile, not the cardiac defaults.
"""

import numpy as np
import pytest
import torch

from CTDiffusionLib import profiles
from CTDiffusionLib.data.dataset import make_batch, prepare_dataset, split_cases
from CTDiffusionLib.data.discovery import discover_cases, read_case
from CTDiffusionLib.data.preprocess import case_to_grid, from_unit, to_unit
from CTDiffusionLib.data.volume_io import Geometry, array_to_image, image_to_array, write_image
from CTDiffusionLib.errors import InputError
from CTDiffusionLib.profiles import LabelClass, Profile

PELVIC_MASKS = Profile(
    name="pelvic-masks",
    label="Pelvic organ masks",
    classes=(
        LabelClass(0, "background", (0.0, 0.0, 0.0)),
        LabelClass(1, "bladder", (0.95, 0.85, 0.25), ("urinary bladder",)),
        LabelClass(2, "rectum", (0.55, 0.35, 0.2)),
        LabelClass(3, "prostate", (0.3, 0.45, 0.95)),
        LabelClass(4, "femoral heads", (0.9, 0.9, 0.9), ("femur",)),
    ),
    default_preset="tiny3d",
    output_dtype="uint8",
    slicer_node_class="vtkMRMLSegmentationNode",
    slicer_source_node_classes=("vtkMRMLSegmentationNode", "vtkMRMLLabelMapVolumeNode"),
)
GEOMETRY = Geometry((1.0, 1.0, 3.0), (-40.0, -40.0, -30.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))


@pytest.fixture
def pelvic(monkeypatch):
    monkeypatch.setitem(profiles.PROFILES, PELVIC_MASKS.name, PELVIC_MASKS)  # the only registration needed
    return PELVIC_MASKS


def _pelvis(shift: int) -> np.ndarray:
    labels = np.zeros((6, 40, 40), np.uint8)
    labels[1:5, 8 + shift:16 + shift, 10:30] = 1  # bladder
    labels[1:5, 24:30, 16:24] = 2  # rectum
    labels[2:4, 17:22, 17:23] = 3  # prostate
    labels[:, 30:36, 4:10] = 4  # femoral head (left)
    return labels


@pytest.fixture
def pelvic_folder(tmp_path):
    folder = tmp_path / "pelvis"
    for i in range(3):
        write_image(array_to_image(_pelvis(i), GEOMETRY), folder / f"case_{i}.nii.gz")
    return folder


def test_registration_is_seen_by_lookup_and_cli(pelvic):
    from CTDiffusionLib.cli import build_parser

    assert profiles.get_profile("pelvic-masks") is pelvic
    args = build_parser().parse_args(["train", "--profile", "pelvic-masks", "--out", "x"])
    assert args.profile == "pelvic-masks"


def test_discovery_and_reading_follow_the_profile(pelvic, pelvic_folder):
    cases = discover_cases(pelvic_folder, "pelvic-masks")
    assert [c.case_id for c in cases] == ["case_0", "case_1", "case_2"]
    image = read_case(cases[0], pelvic)  # label 4 is one of its classes
    assert image_to_array(image)[0].max() == 4
    with pytest.raises(InputError, match="labels outside the expected range"):
        read_case(cases[0], "cardiac-masks")  # four classes there: label 4 is rejected
    (pelvic_folder / "empty").mkdir()
    with pytest.raises(InputError, match="holds no supported image files\\."):  # no DICOM or ACDC layouts here
        discover_cases(pelvic_folder / "empty", pelvic)
    # no ACDC grouping for this layout: every case is its own subject
    assert sorted(sum(split_cases(cases, pelvic, 0.34, 0).values(), [])) == [0, 1, 2]


def test_model_space_round_trip_and_batches(pelvic, pelvic_folder):
    cases = discover_cases(pelvic_folder, pelvic)
    crops, spacing = case_to_grid(read_case(cases[0], pelvic), pelvic, (16, 16, 4), "3d")
    assert len(crops) == 1 and crops[0].shape == (4, 16, 16) and crops[0].dtype == np.uint8
    assert set(np.unique(crops[0])) == {0, 1, 2, 3, 4} and len(spacing) == 3
    unit = to_unit(crops[0], pelvic)
    assert unit.shape == (5, 4, 16, 16) and set(np.unique(unit)) == {-1.0, 1.0}
    np.testing.assert_array_equal(from_unit(unit, pelvic.intensity_config()), crops[0])

    data = prepare_dataset(cases, "pelvic-masks", {"grid": [16, 16, 4], "mode": "3d", "val_fraction": 0.0},
                           None, seed=0)
    assert set(data.stats["cases"][0]["label_voxels"]) == {"bladder", "rectum", "prostate", "femoral heads"}
    batch = make_batch(data, [0, 1], pelvic, {"zoom": [0.9, 1.1], "flip": True}, np.random.default_rng(0))
    assert batch.shape == (2, 5, 4, 16, 16)
    assert torch.all(batch.argmax(1) <= 4)


def test_previews_use_the_profile_colours(pelvic):
    from CTDiffusionLib.previews import mid_slice_rgb

    rgb = mid_slice_rgb(_pelvis(0), "pelvic-masks")
    assert rgb.shape == (40, 40, 3)  # the middle slice
    assert tuple(rgb[33, 6]) == pelvic.classes[4].color  # femoral head
    assert tuple(rgb[10, 20]) == pelvic.classes[1].color  # bladder
    assert pelvic.label_for_name("Femur") == 4


def test_generation_decodes_and_places_by_the_profile(pelvic):
    from CTDiffusionLib.generation import decode, output_geometry

    meta = {"profile": "pelvic-masks", "intensity": pelvic.intensity_config(),
            "geometry": {"spacing": [2.0, 2.0, 3.0], "origin": [0.0, 0.0, 0.0], "direction": list(GEOMETRY.direction),
                         "size": [16, 16, 4]}}
    x = torch.from_numpy(np.stack([to_unit(_pelvis(0)[:4, ::2, ::2].copy(), pelvic)]))
    arrays = decode(x, meta)
    assert arrays[0].dtype == np.dtype(pelvic.output_dtype) and arrays[0].max() == 4
    reference = array_to_image(_pelvis(0), GEOMETRY)
    geometry = output_geometry(meta, reference)  # a label map keeps its crop spacing, takes the reference's origin
    assert geometry.spacing == (2.0, 2.0, 3.0) and geometry.origin == GEOMETRY.origin


def test_missing_pieces_are_clear_errors(pelvic, tmp_path):
    from CTDiffusionLib.data.phantoms import write_phantom_dataset
    from CTDiffusionLib.presets import resolve_preset

    with pytest.raises(InputError, match="no phantom generator for profile pelvic-masks"):
        write_phantom_dataset("pelvic-masks", 2, tmp_path / "p")
    with pytest.raises(InputError) as exc:
        resolve_preset("pelvic-masks", None)
    assert "add them to presets.py" in exc.value.hint
