"""Phantom data sets: on-disk layout, geometry, HU per tissue, determinism, and measurable group effects."""

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

@pytest.fixture(scope="module")
def native_cases():
    """Three cases at the source data's 512 x 512 x 26: (HU array, labels, geometry)."""
    cases = []
    for seed in range(3):
        image, labels = make_prostate_ct(np.random.default_rng([0, seed]), (512, 512, 26))
        hu, geometry = image_to_array(image)
        cases.append((hu.astype(np.float32), labels, geometry))
    return cases


def test_ct_layout_dtype_and_geometry(tmp_path):
    out = write_phantom_dataset("prostate-ct", 2, tmp_path / "ct", seed=1, size_xyz=CT_SIZE)
    assert sorted(p.name for p in out.iterdir()) == ["prostate_000.nii.gz", "prostate_001.nii.gz"]
    spacings = []
    for path in sorted(out.iterdir()):
        array, geometry = image_to_array(read_image(path))
        assert array.dtype == np.int16 and array.shape == (12, 48, 48)
        # Small grids are coarse pixels over the whole field of view (44-50 cm) and the whole 65 mm scan.
        assert geometry.spacing[0] == geometry.spacing[1] and 440 <= 48 * geometry.spacing[0] <= 500
        assert geometry.spacing[2] == pytest.approx(65.0 / 12)
        assert geometry.direction == (1, 0, 0, 0, 1, 0, 0, 0, 1)
        assert all(-400 < o < 0 for o in geometry.origin)  # scanner-like, not (0, 0, 0)
        assert array.min() >= -1024 and array.max() > 300  # air and (partial-volumed) bone are there
        spacings.append(geometry.spacing[0])
    assert spacings[0] != spacings[1]  # varied per case
    assert [p.name for p in tmp_path.iterdir()] == ["ct"]  # no staging folder left behind


def test_native_geometry(native_cases):
    for hu, labels, geometry in native_cases:
        assert hu.shape == labels.shape == (26, 512, 512)
        assert 0.85 <= geometry.spacing[0] <= 0.98 and geometry.spacing[2] == pytest.approx(2.5)


def inner(labels, tissue, iterations=2):
    """Voxels of `tissue` away from its edges (partial volume there is expected), eroded in-plane only."""
    mask = labels == TISSUES[tissue]
    return ndimage.binary_erosion(mask, structure=np.ones((1, 3, 3), bool), iterations=iterations)


def test_hounsfield_units_per_tissue(native_cases):
    expected = {"fat": (-115, -85), "muscle": (35, 60), "bladder": (-5, 17), "prostate": (30, 50),
                "marrow": (190, 390), "cortical_bone": (700, 1500), "rectal_gas": (-1000, -800),
                "seminal_vesicle": (20, 45)}
    for hu, labels, _ in native_cases:
        for tissue, (low, high) in expected.items():
            iterations = 1 if tissue in ("cortical_bone", "marrow", "seminal_vesicle", "rectal_gas") else 2
            values = hu[inner(labels, tissue, iterations)]
            assert values.size > 20, tissue
            assert low <= np.median(values) <= high, (tissue, np.median(values))
        air = hu[inner(labels, "air", 3)]
        assert np.median(air) < -980


def test_noise_is_ct_like_and_correlated(native_cases):
    for hu, labels, _ in native_cases:
        muscle = inner(labels, "muscle", 3)
        assert 8 < np.std(hu[muscle]) < 25
        # Neighbouring voxels share noise (reconstruction kernels smooth it); white noise would give ~0.
        air = inner(labels, "air", 3)
        air[:, :, -1] = False
        a = hu - np.median(hu[air])
        pair = air & np.roll(air, -1, axis=2)
        corr = np.corrcoef(a[pair], np.roll(a, -1, axis=2)[pair])[0, 1]
        assert 0.3 < corr < 0.95, corr


def test_edges_have_partial_volume(native_cases):
    """Voxels on the skin-air boundary take values between air and soft tissue, not just the two extremes."""
    hu, labels, _ = native_cases[0]
    body = labels != TISSUES["air"]
    edge = body & ~ndimage.binary_erosion(body, structure=np.ones((1, 3, 3), bool))
    between = (hu[edge] > -850) & (hu[edge] < -200)
    assert between.mean() > 0.15


def centroid(mask):
    return np.array(ndimage.center_of_mass(mask))  # (z, y, x) in voxels


def test_anatomy_by_level(native_cases):
    T = TISSUES
    for hu, labels, _ in native_cases:
        nz = labels.shape[0]
        per_slice = lambda t: (labels == T[t]).sum(axis=(1, 2))  # noqa: E731
        bone = per_slice("cortical_bone") + per_slice("marrow")
        assert (bone > 500).all()  # pelvic or femoral bone on every slice
        for organ in ("bladder", "prostate", "rectal_content", "rectal_wall", "seminal_vesicle", "fat", "muscle",
                      "skin", "table"):
            assert per_slice(organ).sum() > 0, organ
        # Cranio-caudal order: prostate low, seminal vesicles above it, bladder above both; rectum throughout.
        prostate, bladder = centroid(labels == T["prostate"]), centroid(labels == T["bladder"])
        vesicles = centroid(labels == T["seminal_vesicle"])
        assert prostate[0] < vesicles[0] < bladder[0]
        assert per_slice("prostate")[:4].sum() > 0 and per_slice("bladder")[0] == 0  # apex in the lowest 1 cm
        assert per_slice("bladder")[nz - 1] > per_slice("prostate")[nz - 1]
        assert (per_slice("rectal_content") + per_slice("rectal_gas") > 0).all()
        # Antero-posterior order (y grows posteriorly): symphysis/bladder in front of the prostate, in front of
        # the rectum; the table under the patient's back.
        rectum = centroid(labels == T["rectal_content"])
        assert bladder[1] < rectum[1] and prostate[1] < rectum[1]
        body_back = np.max(np.nonzero((labels != T["air"]) & (labels != T["table"]) &
                                      (labels != T["table_core"]))[1])
        assert np.min(np.nonzero(labels == T["table"])[1]) >= body_back - 2
        # The pelvis is left-right symmetric in bone (two femoral heads, two hips) within the patient's roll.
        x = np.nonzero((labels == T["cortical_bone"]) | (labels == T["marrow"]))[2]
        mid = centroid(labels != T["air"])[2]
        left, right = (x > mid).sum(), (x < mid).sum()
        assert 0.7 < left / right < 1.4
        # Subcutaneous fat surrounds the muscles: along the mid-slice's centre column, skin then fat come first.
        column = labels[nz // 2, :, int(mid)]
        body_rows = np.flatnonzero(column != T["air"])
        assert column[body_rows[0]] == T["skin"] and T["fat"] in column[body_rows[0]:body_rows[0] + 8]


def femoral_heads(labels, spacing_mm, k):
    """Round marrow cross-sections 30-55 mm across whose centre lies 70-110 mm left/right of the body midline."""
    mid = centroid(labels[k] != TISSUES["air"])[1]
    parts, n = ndimage.label(labels[k] == TISSUES["marrow"])
    sides = set()
    for i in range(1, n + 1):
        blob = parts == i
        diameter = 2 * np.sqrt(blob.sum() / np.pi) * spacing_mm
        ys, xs = np.nonzero(blob)
        lateral = (xs.mean() - mid) * spacing_mm
        round_ = np.ptp(xs) <= 1.4 * np.ptp(ys) + 2 and np.ptp(ys) <= 1.4 * np.ptp(xs) + 2
        if 30 <= diameter <= 55 and 70 <= abs(lateral) <= 110 and round_:
            sides.add(np.sign(lateral))
    return sides


def test_femoral_heads_in_the_upper_slices_with_cortex(native_cases):
    for hu, labels, geometry in native_cases:
        nz = labels.shape[0]
        with_heads = [k for k in range(nz) if femoral_heads(labels, geometry.spacing[0], k) == {-1, 1}]
        assert with_heads and min(with_heads) > nz // 3, with_heads
        assert not femoral_heads(labels, geometry.spacing[0], 0)  # the lowest slice is below the hip joints
        # every marrow region is wrapped in cortex: its in-plane neighbours are cortical bone, not soft tissue
        marrow = labels == TISSUES["marrow"]
        rim = ndimage.binary_dilation(marrow, structure=np.ones((1, 3, 3), bool)) & ~marrow
        assert np.mean(labels[rim] == TISSUES["cortical_bone"]) > 0.95
        assert np.percentile(hu[labels == TISSUES["cortical_bone"]], 90) > 650


def test_small_grids_keep_the_organs():
    for size in (CT_SIZE, (64, 64, 16), (96, 96, 26)):
        image, labels = make_prostate_ct(np.random.default_rng(0), size)
        hu = image_to_array(image)[0]
        assert hu.shape == labels.shape == size[::-1]
        for organ in ("bladder", "prostate", "rectal_content", "cortical_bone", "marrow", "fat", "muscle", "table"):
            assert (labels == TISSUES[organ]).any(), (size, organ)
        # Fat and muscle stay distinguishable at coarse pixels.
        assert np.median(hu[labels == TISSUES["fat"]]) < -40 < 20 < np.median(hu[labels == TISSUES["muscle"]])


def test_ct_deterministic_by_seed_and_varied(tmp_path):
    paths = [write_phantom_dataset("prostate-ct", 2, tmp_path / name, seed=seed, size_xyz=CT_SIZE)
             for name, seed in (("a", 7), ("b", 7), ("c", 8))]
    arrays = {p.name: [image_to_array(read_image(f))[0] for f in sorted(p.iterdir())] for p in paths}
    np.testing.assert_array_equal(arrays["a"][0], arrays["b"][0])
    np.testing.assert_array_equal(arrays["a"][1], arrays["b"][1])
    assert not np.array_equal(arrays["a"][0], arrays["c"][0])
    assert not np.array_equal(arrays["a"][0], arrays["a"][1])  # cases differ within a set


def test_cases_vary_in_body_and_organs():
    measures = {"body": [], "bladder": [], "prostate": [], "fat": [], "body_x": []}
    for seed in range(8):
        image, labels = make_prostate_ct(np.random.default_rng([3, seed]), (128, 128, 26))
        spacing = image.GetSpacing()
        voxel = spacing[0] * spacing[1] * spacing[2]
        body = (labels != TISSUES["air"]) & (labels != TISSUES["table"]) & (labels != TISSUES["table_core"])
        measures["body"].append(body.sum() * voxel)
        measures["bladder"].append((labels == TISSUES["bladder"]).sum() * voxel)
        measures["prostate"].append((labels == TISSUES["prostate"]).sum() * voxel)
        measures["fat"].append((labels == TISSUES["fat"]).sum() / body.sum())
        measures["body_x"].append((centroid(body)[2] - 63.5) * spacing[0])
    cv = {k: np.std(v) / abs(np.mean(v)) for k, v in measures.items() if k != "body_x"}
    assert cv["body"] > 0.05 and cv["prostate"] > 0.1 and cv["fat"] > 0.1, cv
    assert max(measures["bladder"]) > 1.8 * min(measures["bladder"])  # bladder filling varies
    assert np.ptp(measures["body_x"]) > 5  # position in the field of view varies (mm)


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


def test_cardiac_deterministic():
    a = make_cardiac_patient(np.random.default_rng([0, 3]), "HCM")
    b = make_cardiac_patient(np.random.default_rng([0, 3]), "HCM")
    c = make_cardiac_patient(np.random.default_rng([1, 3]), "HCM")
    assert np.array_equal(a["ED"], b["ED"]) and a["info"] == b["info"]
    assert not np.array_equal(a["ED"], c["ED"])
    assert a["ED"].shape == (10, 256, 216)


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


def test_heart_tapers_from_base_to_apex():
    for seed, group in enumerate(GROUPS * 2):
        patient = make_cardiac_patient(np.random.default_rng([5, seed]), group, (216, 256, 10))
        for phase in ("ED", "ES"):
            labels = patient[phase]
            lv = (labels == LV).sum(axis=(1, 2))
            heart = np.flatnonzero(lv)
            assert len(heart) >= 7, (group, phase)
            assert lv[heart[0]] > 1.5 * lv[heart[-1]], (group, phase)  # base wider than apex
            assert np.all(np.diff(lv[heart]) <= 0), (group, phase)  # never widens toward the apex
            rv = (labels == RV).sum(axis=(1, 2))
            assert rv[heart[0]] > 0 and rv[heart[-1]] == 0, (group, phase)  # the RV stops before the apex
