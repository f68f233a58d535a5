"""Profiles: one object per data type holds its classes, colours, windows and the names other code dispatches on."""

import subprocess
import sys

import pytest

from CTDiffusionLib.errors import InputError
from CTDiffusionLib.profiles import (CARDIAC_MASKS, PROFILE_NAMES, PROFILES, PROSTATE_CT, DisplayWindow, LabelClass,
                                     Profile, get_profile, resolve)


def test_registry_lists_both_data_types_in_order():
    assert PROFILE_NAMES == ("prostate-ct", "cardiac-masks")
    assert list(PROFILES) == list(PROFILE_NAMES)
    assert get_profile("prostate-ct") is PROSTATE_CT and get_profile(CARDIAC_MASKS) is CARDIAC_MASKS


def test_unknown_profile_names_the_valid_ones():
    with pytest.raises(InputError) as exc:
        get_profile("pelvis")
    assert "'pelvis'" in exc.value.message and "prostate-ct, cardiac-masks" in exc.value.hint
    with pytest.raises(InputError):
        get_profile(None)


def test_ct_profile_facts():
    p = PROSTATE_CT
    assert not p.is_label_map and p.channels == 1 and p.classes == ()
    assert p.hu_range == (-1024.0, 2000.0) and p.fill_value == -1024.0
    assert p.display_window.range == (-160.0, 240.0)  # soft tissue, W400 / L40
    assert (p.display_window.level, p.display_window.width) == (40.0, 400.0)
    assert p.comparison_window.range == (-1000.0, 1000.0)
    assert p.intensity_config() == {"kind": "hu_piecewise", "hu": [-1024.0, -200.0, 300.0, 1200.0, 2000.0],
                                    "unit": [-1.0, -0.8, 0.4, 0.9, 1.0]}
    assert Profile("x", "X", hu_range=(0.0, 1.0)).intensity_config() == {"kind": "hu_linear", "hu_range": [0.0, 1.0]}
    assert p.output_dtype == "int16" and p.slicer_node_class == "vtkMRMLScalarVolumeNode"
    assert p.default_preset == "default" and "dicom" in p.folder_layouts


def test_mask_profile_facts_and_one_colour_set():
    p = CARDIAC_MASKS
    assert p.is_label_map and p.channels == 4 and p.hu_range is None and p.display_window is None
    assert p.class_names == ("background", "RV", "MYO", "LV")
    assert [c.name for c in p.foreground_classes] == ["RV", "MYO", "LV"]
    assert p.intensity_config() == {"kind": "onehot", "classes": ["background", "RV", "MYO", "LV"]}
    assert p.output_dtype == "uint8" and p.slicer_node_class == "vtkMRMLSegmentationNode"
    assert p.default_preset == "slice2d" and p.condition_keys == ("group", "phase") and "acdc" in p.folder_layouts
    colors = p.label_colors()
    assert colors[0] == (0.0, 0.0, 0.0) and len(set(colors)) == 4  # indexable by label value, all distinct
    assert p.classes[2].hex_color == "#5ccc59"  # myocardium green (the Slicer segment colour)


def test_segment_names_and_aliases_map_to_labels():
    p = CARDIAC_MASKS
    assert p.label_for_name("MYO") == 2 and p.label_for_name(" Left Ventricle ") == 3
    assert p.label_for_name("right ventricular cavity") == 1 and p.label_for_name("liver") is None
    assert PROSTATE_CT.label_for_name("RV") is None


def test_profile_checks_its_own_consistency():
    with pytest.raises(ValueError):
        Profile("both", "Both", classes=(LabelClass(0, "bg", (0, 0, 0)),), hu_range=(0.0, 1.0))
    with pytest.raises(ValueError):
        Profile("neither", "Neither")
    with pytest.raises(ValueError):
        Profile("gap", "Gap", classes=(LabelClass(0, "bg", (0, 0, 0)), LabelClass(2, "x", (1, 0, 0))))
    for knots in [((0.0, -1.0), (0.5, 0.5), (0.4, 0.6), (1.0, 1.0)),  # HU not rising
                  ((0.0, -1.0), (0.5, 0.0), (0.9, 1.0))]:  # does not end at the range's end
        with pytest.raises(ValueError):
            Profile("knots", "Knots", hu_range=(0.0, 1.0), hu_knots=knots)
    with pytest.raises(Exception):
        PROSTATE_CT.name = "other"  # frozen


def test_window_arithmetic():
    w = DisplayWindow("w", level=-600.0, width=1500.0)
    assert w.range == (-1350.0, 150.0)


def test_lazy_helpers_resolve_only_when_asked():
    from CTDiffusionLib.data.phantoms import prostate_ct

    assert PROSTATE_CT.phantom_writer() is prostate_ct.write_prostate_ct_dataset
    assert resolve("CTDiffusionLib.errors:InputError") is InputError
    skeleton = Profile("x", "X", hu_range=(0.0, 1.0))
    with pytest.raises(InputError) as exc:
        skeleton.phantom_writer()
    assert "prostate-ct" in exc.value.hint


def test_import_is_light():
    """The Slicer module imports profiles at start-up: no torch, numpy or SimpleITK may come with it."""
    code = ("import sys; import CTDiffusionLib.profiles, CTDiffusionLib.runfolder; "
            "heavy = [m for m in ('torch', 'numpy', 'SimpleITK', 'monai') if m in sys.modules]; print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
