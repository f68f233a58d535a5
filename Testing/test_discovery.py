"""Finding cases: volume folders, list files, DICOM trees, ACDC layout, condition tables, and bad inputs."""

import numpy as np
import pytest

from CTDiffusionLib.data.discovery import (
    Case,
    apply_condition_csv,
    discover_cases,
    read_acdc_info,
    read_case,
)
from CTDiffusionLib.data.phantoms import write_phantom_dataset
from CTDiffusionLib.data.volume_io import Geometry, array_to_image, image_to_array, write_dicom_series, write_image
from CTDiffusionLib.errors import InputError

GEOMETRY = Geometry((0.9, 0.9, 2.5), (-10.0, -20.0, -100.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))


def small_ct(value=0):
    return array_to_image(np.full((3, 4, 5), value, np.int16), GEOMETRY)


def small_mask():
    return array_to_image(np.arange(60, dtype=np.uint8).reshape(3, 4, 5) % 4, GEOMETRY)


@pytest.fixture
def ct_folder(tmp_path):
    folder = tmp_path / "ct"
    for name in ("b_case.nii.gz", "a_case.nrrd", "c case.mha"):
        write_image(small_ct(), folder / name)
    (folder / "notes.csv").write_text("not an image")
    (folder / ".a_case.nrrd.tmp-123").mkdir()  # a half-written temp folder is ignored
    write_image(small_ct(), folder / "derived" / "d.nii.gz")  # subfolders of a volume folder are not read
    return folder


@pytest.fixture
def acdc(tmp_path):
    root = write_phantom_dataset("cardiac-masks", 3, tmp_path / "acdc", seed=3, size_xyz=(24, 24, 3))
    # Real ACDC folders also hold images; only *_gt files are masks.
    write_image(small_ct(), root / "patient001" / "patient001_frame01.nii.gz")
    write_image(small_ct(), root / "patient001" / "patient001_4d.nii.gz")
    return root


def assert_names(excinfo, path):
    assert excinfo.value.exit_code == 2 and str(path) in excinfo.value.message and excinfo.value.hint


# ---------------------------------------------------------------------------------------------- prostate CT

def test_folder_of_volumes(ct_folder):
    cases = discover_cases([ct_folder], "prostate-ct")
    assert [c.case_id for c in cases] == ["a_case", "b_case", "c_case"]  # sorted, filesystem-safe
    assert [c.path.name for c in cases] == ["a_case.nrrd", "b_case.nii.gz", "c case.mha"]
    assert all(c.series_uid is None and c.conditions == {} for c in cases)
    assert discover_cases(ct_folder, "prostate-ct") == cases  # a lone path works too
    assert image_to_array(read_case(cases[0], "prostate-ct"))[0].shape == (3, 4, 5)


def test_single_file_and_list_file(ct_folder, tmp_path):
    single = discover_cases([ct_folder / "b_case.nii.gz"], "prostate-ct")
    assert [c.case_id for c in single] == ["b_case"]
    listing = tmp_path / "lists" / "train.txt"
    listing.parent.mkdir()
    listing.write_text(f"# training cases\n../ct/b_case.nii.gz\n\n{ct_folder / 'a_case.nrrd'}\n")
    cases = discover_cases([listing], "prostate-ct")
    assert [c.case_id for c in cases] == ["a_case", "b_case"]
    assert cases[1].path == listing.parent / "../ct/b_case.nii.gz"


def test_list_file_naming_missing_files(ct_folder, tmp_path):
    listing = tmp_path / "list.txt"
    listing.write_text(f"{ct_folder / 'a_case.nrrd'}\nmissing_one.nii.gz\n")
    with pytest.raises(InputError) as excinfo:
        discover_cases([listing], "prostate-ct")
    assert_names(excinfo, listing)
    assert "missing_one.nii.gz" in excinfo.value.message


def test_dicom_tree(tmp_path, caplog):
    root = tmp_path / "dicom"
    write_dicom_series(small_ct(1), root / "patient01" / "CT")
    write_dicom_series(small_ct(2), root / "patient02")
    write_dicom_series(small_ct(3), tmp_path / "extra")
    for dcm in (tmp_path / "extra").iterdir():  # a second series in the same folder as patient02's
        dcm.rename(root / "patient02" / f"x_{dcm.name}")
    cases = discover_cases([root], "prostate-ct")
    assert [c.case_id for c in cases] == ["patient01_CT", "patient02_s1", "patient02_s2"]
    assert "holds 2 DICOM series; each becomes its own case (patient02_s1, patient02_s2)" in caplog.text
    assert all(c.series_uid for c in cases) and cases[1].series_uid != cases[2].series_uid
    values = sorted(int(image_to_array(read_case(c, "prostate-ct"))[0][0, 0, 0]) for c in cases)
    assert values == [1, 2, 3]
    assert [c.case_id for c in discover_cases([root / "patient01" / "CT"], "prostate-ct")] == ["CT"]


# ---------------------------------------------------------------------------------------------- ACDC

def test_acdc_layout_phases_and_groups(acdc):
    cases = discover_cases([acdc], "cardiac-masks")
    assert [c.case_id for c in cases] == [f"patient00{i}_{p}" for i in (1, 2, 3) for p in ("ED", "ES")]
    assert all(c.path.name.endswith("_gt.nii.gz") for c in cases)
    assert [c.conditions["group"] for c in cases] == ["NOR", "NOR", "MINF", "MINF", "DCM", "DCM"]
    for case in cases:
        info = read_acdc_info(case.path.parent / "Info.cfg")
        frame = int(case.path.name.split("_frame")[1][:2])
        assert frame == info[case.conditions["phase"]]
    # A patient folder on its own, and a single gt file next to its Info.cfg, keep their conditions.
    assert [c.case_id for c in discover_cases([acdc / "patient002"], "cardiac-masks")] == \
        ["patient002_ED", "patient002_ES"]
    single = discover_cases([cases[0].path], "cardiac-masks")
    assert single == [cases[0]]
    assert read_case(cases[0], "cardiac-masks").GetPixelIDTypeAsString() == "8-bit unsigned integer"


def test_read_acdc_info(tmp_path):
    path = tmp_path / "Info.cfg"
    path.write_text("ED: 1\nES: 12\nGroup: DCM\nHeight: 184.0\nNbFrame: 30\nWeight: 95.0\n")
    assert read_acdc_info(path) == {"ED": 1, "ES": 12, "Group": "DCM", "Height": 184.0, "NbFrame": 30,
                                    "Weight": 95.0}


def test_acdc_patient_without_info(acdc):
    (acdc / "patient002" / "Info.cfg").unlink()
    with pytest.raises(InputError) as excinfo:
        discover_cases([acdc], "cardiac-masks")
    assert_names(excinfo, acdc / "patient002")
    assert "Info.cfg" in excinfo.value.message


def test_acdc_info_without_group(acdc):
    info = acdc / "patient003" / "Info.cfg"
    info.write_text("".join(line + "\n" for line in info.read_text(encoding="utf-8").splitlines() if not line.startswith("Group")))
    with pytest.raises(InputError) as excinfo:
        discover_cases([acdc], "cardiac-masks")
    assert_names(excinfo, info)
    assert "Group" in excinfo.value.message


def test_acdc_frame_that_is_neither_ed_nor_es(acdc):
    stray = acdc / "patient001" / "patient001_frame07_gt.nii.gz"
    write_image(small_mask(), stray)
    with pytest.raises(InputError) as excinfo:
        discover_cases([acdc], "cardiac-masks")
    assert_names(excinfo, stray)


def test_plain_label_volumes_have_no_conditions(tmp_path):
    for name in ("m1.nii.gz", "m2.nrrd"):
        write_image(small_mask(), tmp_path / "masks" / name)
    cases = discover_cases([tmp_path / "masks"], "cardiac-masks")
    assert [(c.case_id, c.conditions) for c in cases] == [("m1", {}), ("m2", {})]


# ---------------------------------------------------------------------------------------------- bad inputs

def test_missing_source(tmp_path):
    with pytest.raises(InputError) as excinfo:
        discover_cases([tmp_path / "nowhere"], "prostate-ct")
    assert_names(excinfo, tmp_path / "nowhere")


@pytest.mark.parametrize("profile", ["prostate-ct", "cardiac-masks"])
def test_empty_folder_says_what_is_accepted(tmp_path, profile):
    (tmp_path / "readme.md").write_text("no images here")
    with pytest.raises(InputError) as excinfo:
        discover_cases([tmp_path], profile)
    assert_names(excinfo, tmp_path)
    assert ".nii.gz" in excinfo.value.hint and ".nrrd" in excinfo.value.hint


def test_unsupported_single_file(tmp_path):
    path = tmp_path / "scan.jpg"
    path.write_bytes(b"jpeg")
    with pytest.raises(InputError) as excinfo:
        discover_cases([path], "prostate-ct")
    assert_names(excinfo, path)


def test_duplicate_case_ids(tmp_path):
    write_image(small_ct(), tmp_path / "one" / "case.nii.gz")
    write_image(small_ct(), tmp_path / "two" / "case.nrrd")
    with pytest.raises(InputError) as excinfo:
        discover_cases([tmp_path / "one", tmp_path / "two"], "prostate-ct")
    assert "'case'" in excinfo.value.message and str(tmp_path / "two" / "case.nrrd") in excinfo.value.message


def test_unknown_profile(ct_folder):
    with pytest.raises(InputError, match="Unknown profile"):
        discover_cases([ct_folder], "brain-mri")


# ---------------------------------------------------------------------------------------------- conditions

def test_condition_csv_by_name_path_and_id(ct_folder, tmp_path):
    cases = discover_cases([ct_folder], "prostate-ct")
    table = tmp_path / "conditions.csv"
    table.write_text(f"file,scanner,age\na_case.nrrd,GE,61\n{ct_folder / 'b_case.nii.gz'},Siemens,70\n"
                     "c_case,GE,\n")
    merged = apply_condition_csv(cases, table)
    assert [c.conditions for c in merged] == [{"scanner": "GE", "age": 61}, {"scanner": "Siemens", "age": 70},
                                              {"scanner": "GE"}]
    assert [c.case_id for c in merged] == [c.case_id for c in cases]


def test_condition_csv_merges_with_acdc_conditions(acdc, tmp_path):
    cases = discover_cases([acdc], "cardiac-masks")
    table = tmp_path / "c.csv"
    table.write_text("file,site\n" + "".join(f"{c.case_id},S{i}\n" for i, c in enumerate(cases)))
    merged = apply_condition_csv(cases, table)
    assert merged[0].conditions == {"group": "NOR", "phase": "ED", "site": "S0"}


def test_condition_csv_without_file_column(ct_folder, tmp_path):
    table = tmp_path / "bad.csv"
    table.write_text("name,group\na_case,NOR\n")
    with pytest.raises(InputError) as excinfo:
        apply_condition_csv(discover_cases([ct_folder], "prostate-ct"), table)
    assert_names(excinfo, table)
    assert "'file'" in excinfo.value.message


def test_condition_csv_missing_case(ct_folder, tmp_path):
    table = tmp_path / "partial.csv"
    table.write_text("file,group\na_case,NOR\nb_case,DCM\n")
    with pytest.raises(InputError) as excinfo:
        apply_condition_csv(discover_cases([ct_folder], "prostate-ct"), table)
    assert_names(excinfo, table)
    assert "c_case" in excinfo.value.message


def test_case_is_hashable_and_serialisable(tmp_path):
    case = Case("x", str(tmp_path / "x.nii.gz"), None, {"group": "NOR"})
    assert isinstance(case.path, type(tmp_path)) and {case: 1}[case] == 1
    assert Case.from_dict(case.to_dict()) == case
    assert case != Case("x", tmp_path / "x.nii.gz")  # conditions take part in equality
