"""Phantom data sets: on-disk layout, geometry, HU per tissue, determinism, and measurable group effects."""

import time

import numpy as np
import pytest
from scipy import ndimage

from CTDiffusionLib.cli import main as cli_main
from CTDiffusionLib.data.discovery import discover_cases, read_acdc_info
from CTDiffusionLib.data.phantoms import write_phantom_dataset
from CTDiffusionLib.data.phantoms.cardiac_masks import GROUPS, LV, MYO, RV, make_cardiac_patient
from CTDiffusionLib.data.phantoms.prostate_ct import TISSUES, make_prostate_ct
from CTDiffusionLib.data.volume_io import image_to_array, read_image, read_label_image
from CTDiffusionLib.errors import InputError

CT_SIZE = (48, 48, 12)
MASK_SIZE = (64, 64, 6)


@pytest.fixture(scope="module")
def cardiac_set(tmp_path_factory):
    """Ten patients (two per group) read back from disk: {group: [(ed, es, info), ...]}."""
    root = write_phantom_dataset("cardiac-masks", 10, tmp_path_factory.mktemp("c") / "acdc", seed=0,
                                 size_xyz=MASK_SIZE)
    by_group = {g: [] for g in GROUPS}
    for case in discover_cases([root], "cardiac-masks"):
        if case.conditions["phase"] == "ED":
            es_case = next(p for p in case.path.parent.glob("*_gt.nii.gz") if p != case.path)
            ed = image_to_array(read_label_image(case.path))[0]
            es = image_to_array(read_label_image(es_case))[0]
            by_group[case.conditions["group"]].append((ed, es))
    return by_group


# ---------------------------------------------------------------------------------------------- prostate CT

def test_ct_layout_dtype_and_geometry(tmp_path):
    out = write_phantom_dataset("prostate-ct", 2, tmp_path / "ct", seed=1, size_xyz=CT_SIZE)
    assert sorted(p.name for p in out.iterdir()) == ["prostate_000.nii.gz", "prostate_001.nii.gz"]
    spacings = []
    for path in sorted(out.iterdir()):
        image = read_image(path)
        array, geometry = image_to_array(image)
        assert array.dtype == np.int16 and array.shape == (12, 48, 48)
        assert 0.9 <= geometry.spacing[0] == geometry.spacing[1] <= 1.0 and geometry.spacing[2] == 2.5
        assert geometry.direction == (1, 0, 0, 0, 1, 0, 0, 0, 1)
        assert all(-400 < o < 0 for o in geometry.origin)  # scanner-like, not (0, 0, 0)
        assert array.min() >= -1024 and array.max() > 600  # air and bone are there
        spacings.append(geometry.spacing[0])
    assert spacings[0] != spacings[1]  # varied per case
    assert [p.name for p in tmp_path.iterdir()] == ["ct"]  # no staging folder left behind


def eroded_values(hu, labels, tissue, erode=True):
    mask = labels == TISSUES[tissue]
    return hu[ndimage.binary_erosion(mask) if erode else mask]  # erosion skips partial-volume edges


def test_ct_hounsfield_units_per_tissue():
    image, labels = make_prostate_ct(np.random.default_rng(5), (96, 96, 10))
    hu = image_to_array(image)[0].astype(float)
    expected = {"air": (-1024, -960), "fat": (-125, -70), "soft_tissue": (20, 70), "bladder": (-10, 30),
                "prostate": (20, 60), "trabecular_bone": (150, 350)}
    for tissue, (low, high) in expected.items():
        values = eroded_values(hu, labels, tissue, erode=tissue != "trabecular_bone")
        assert values.size > 10, tissue
        assert low <= np.median(values) <= high, (tissue, np.median(values))
    assert np.percentile(hu[labels == TISSUES["cortical_bone"]], 90) > 600
    assert hu[labels == TISSUES["rectal_gas"]].min() < -800
    # Noise ~10-20 HU: the spread inside the body soft tissue is visible but small.
    assert 5 < np.std(eroded_values(hu, labels, "soft_tissue")) < 30


def test_ct_all_organs_present_at_tiny_size():
    _, labels = make_prostate_ct(np.random.default_rng(0), CT_SIZE)
    assert set(np.unique(labels)) == set(TISSUES.values())


def test_ct_deterministic_by_seed_and_varied(tmp_path):
    paths = [write_phantom_dataset("prostate-ct", 2, tmp_path / name, seed=seed, size_xyz=CT_SIZE)
             for name, seed in (("a", 7), ("b", 7), ("c", 8))]
    arrays = {p.name: [image_to_array(read_image(f))[0] for f in sorted(p.iterdir())] for p in paths}
    np.testing.assert_array_equal(arrays["a"][0], arrays["b"][0])
    np.testing.assert_array_equal(arrays["a"][1], arrays["b"][1])
    assert not np.array_equal(arrays["a"][0], arrays["c"][0])
    assert not np.array_equal(arrays["a"][0], arrays["a"][1])  # cases differ within a set


def test_ct_organs_vary_between_cases():
    prostate_sizes = {int((make_prostate_ct(np.random.default_rng(i), CT_SIZE)[1] == TISSUES["prostate"]).sum())
                      for i in range(4)}
    assert len(prostate_sizes) > 2


# ---------------------------------------------------------------------------------------------- cardiac masks

def test_cardiac_layout_and_info(tmp_path):
    out = write_phantom_dataset("cardiac-masks", 6, tmp_path / "acdc", seed=2, size_xyz=MASK_SIZE)
    patients = sorted(p.name for p in out.iterdir())
    assert patients == [f"patient00{i}" for i in range(1, 7)]
    for index, name in enumerate(patients):
        info = read_acdc_info(out / name / "Info.cfg")
        assert info["Group"] == GROUPS[index % 5] and info["ED"] == 1 and info["ES"] > 1
        assert {"Height", "Weight", "NbFrame"} <= set(info)
        files = sorted(p.name for p in (out / name).glob("*.nii.gz"))
        assert files == [f"{name}_frame01_gt.nii.gz", f"{name}_frame{info['ES']:02d}_gt.nii.gz"]
        for path in files:
            array, geometry = image_to_array(read_image(out / name / path))
            assert array.dtype == np.uint8 and array.shape == (6, 64, 64)
            assert set(np.unique(array)) == {0, RV, MYO, LV}
            assert 1.3 < geometry.spacing[0] == geometry.spacing[1] < 1.8 and geometry.spacing[2] == 10.0


def lv_volume(labels):
    return int((labels == LV).sum())


def wall_thickness(labels):
    """Mean over slices of equivalent-circle radius(LV + MYO) - radius(LV), in voxels."""
    lv = (labels == LV).sum(axis=(1, 2))
    epi = lv + (labels == MYO).sum(axis=(1, 2))
    keep = lv > 0
    return float(np.mean(np.sqrt(epi[keep] / np.pi) - np.sqrt(lv[keep] / np.pi)))


def mean_of(cases, measure, phase=0):
    return np.mean([measure(case[phase]) for case in cases])


def test_group_effects_are_measurable(cardiac_set):
    lv = {g: mean_of(cardiac_set[g], lv_volume) for g in GROUPS}
    assert lv["DCM"] > 1.4 * lv["NOR"] and lv["NOR"] > 1.4 * lv["HCM"]
    assert lv["MINF"] > lv["NOR"]
    wall = {g: mean_of(cardiac_set[g], wall_thickness) for g in GROUPS}
    assert wall["HCM"] > 1.3 * wall["NOR"] and wall["NOR"] > wall["DCM"]
    rv = {g: mean_of(cardiac_set[g], lambda a: (a == RV).sum()) for g in GROUPS}
    assert rv["RV"] > 1.5 * rv["NOR"]


def test_es_lv_smaller_than_ed_and_wall_thicker(cardiac_set):
    for group, cases in cardiac_set.items():
        for ed, es in cases:
            assert lv_volume(es) < 0.9 * lv_volume(ed), group
            assert wall_thickness(es) > wall_thickness(ed), group


def test_lv_never_touches_rv_or_background(cardiac_set):
    arrays = [a for cases in cardiac_set.values() for pair in cases for a in pair]
    arrays += [make_cardiac_patient(np.random.default_rng(s), g, (216, 256, 10))[p]
               for s, g in enumerate(GROUPS) for p in ("ED", "ES")]
    for labels in arrays:
        neighbours = ndimage.binary_dilation(labels == LV, structure=np.array([[[0, 1, 0], [1, 1, 1], [0, 1, 0]]]))
        touching = set(np.unique(labels[neighbours & (labels != LV)]))
        assert touching <= {MYO}, touching
        assert (labels == LV).any() and (labels == RV).any()


def test_minf_has_a_thinned_sector():
    patient = make_cardiac_patient(np.random.default_rng(4), "MINF", (216, 256, 10))["ED"]
    normal = make_cardiac_patient(np.random.default_rng(4), "NOR", (216, 256, 10))["ED"]

    def thinnest_over_typical(labels):
        k = int(np.argmax((labels == LV).sum(axis=(1, 2))))
        depth = ndimage.distance_transform_edt(labels[k] != LV)  # distance from the cavity
        outer_edge = (labels[k] == MYO) & ndimage.binary_dilation(labels[k] < MYO)  # facing RV or background
        return np.percentile(depth[outer_edge], 5) / np.median(depth[outer_edge])

    assert thinnest_over_typical(patient) < 0.6 < 0.8 < thinnest_over_typical(normal)


def test_cardiac_deterministic_and_fast():
    start = time.perf_counter()
    a = make_cardiac_patient(np.random.default_rng([0, 3]), "HCM")
    elapsed = time.perf_counter() - start
    b = make_cardiac_patient(np.random.default_rng([0, 3]), "HCM")
    c = make_cardiac_patient(np.random.default_rng([1, 3]), "HCM")
    assert np.array_equal(a["ED"], b["ED"]) and a["info"] == b["info"]
    assert not np.array_equal(a["ED"], c["ED"])
    assert a["ED"].shape == (10, 256, 216)
    assert elapsed < 2.0  # two volumes at the default size; typically ~0.05 s


# ---------------------------------------------------------------------------------------------- writing rules

def test_refuses_non_empty_output(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    with pytest.raises(InputError) as excinfo:
        write_phantom_dataset("prostate-ct", 1, tmp_path / "out", size_xyz=CT_SIZE)
    assert str(tmp_path / "out") in excinfo.value.message
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["keep.txt"]


def test_empty_existing_output_is_fine(tmp_path):
    (tmp_path / "out").mkdir()
    write_phantom_dataset("cardiac-masks", 1, tmp_path / "out", size_xyz=MASK_SIZE)
    assert (tmp_path / "out" / "patient001" / "Info.cfg").is_file()


@pytest.mark.parametrize("profile, size", [("prostate-ct", (4, 4, 1)), ("cardiac-masks", (64, 64))])
def test_bad_size(tmp_path, profile, size):
    with pytest.raises(InputError):
        write_phantom_dataset(profile, 1, tmp_path / "out", size_xyz=size)
    assert not list(tmp_path.iterdir())


def test_cli_phantoms(tmp_path, capsys):
    assert cli_main(["phantoms", "--profile", "cardiac-masks", "--num", "2", "--out", str(tmp_path / "m"),
                     "--size", "32x32x4", "--seed", "3"]) == 0
    assert len(discover_cases([tmp_path / "m"], "cardiac-masks")) == 4
    assert cli_main(["phantoms", "--profile", "prostate-ct", "--num", "1", "--out", str(tmp_path / "m")]) == 2
