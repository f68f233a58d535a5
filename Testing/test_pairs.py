"""Paired data (CT + label map): every layout discovered with its names and values, structure choice and merging,
the nnU-Net raw layout written and read back, and every bad pair refused with one sentence (data/pairs.py).

All layouts are built here from phantom pairs (`ctdiffusion phantoms --with-labels`) at a tiny grid.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from CTDiffusionLib.data.pairs import (  # noqa: E402
    PairCase,
    Structure,
    discover_pairs,
    read_dataset_structures,
    read_pair,
    select_structures,
    structure_names,
    write_nnunet_pairs,
)
from CTDiffusionLib.data.phantoms import write_phantom_dataset  # noqa: E402
from CTDiffusionLib.data.phantoms.prostate_ct import ORGAN_TISSUES  # noqa: E402
from CTDiffusionLib.errors import InputError  # noqa: E402

SIZE = (32, 32, 8)
PHANTOM_NAMES = list(ORGAN_TISSUES)  # prostate, bladder, rectum, seminal_vesicles, femur, hip_bone, sacrum, fat, muscle
SPARSE = {"prostate": 1, "bladder": 5, "rectum": 18, "femur": 117, "hip_bone": 40}  # others left out (-> 0)


@pytest.fixture(scope="module")
def phantom_pairs(tmp_path_factory) -> Path:
    return write_phantom_dataset("prostate-ct", 3, tmp_path_factory.mktemp("pairs") / "phantom_pairs", seed=4,
                                 size_xyz=SIZE, with_labels=True)


def _array(path_or_image) -> np.ndarray:
    image = path_or_image if isinstance(path_or_image, sitk.Image) else sitk.ReadImage(str(path_or_image))
    return sitk.GetArrayFromImage(image)


def _phantom_case(folder: Path, index: int) -> tuple[Path, Path]:
    case = f"prostate_{index:03d}"
    return folder / "imagesTr" / f"{case}_0000.nii.gz", folder / "labelsTr" / f"{case}.nii.gz"


def _write_like(array: np.ndarray, reference: Path, path: Path) -> Path:
    image = sitk.GetImageFromArray(array)
    image.CopyInformation(sitk.ReadImage(str(reference)))
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path), True)
    return path


def _sparse_labels(phantom_labels: np.ndarray) -> np.ndarray:
    """Phantom values -> the SPARSE values (structures not in SPARSE become background)."""
    out = np.zeros(phantom_labels.shape, np.uint8)
    for name, value in SPARSE.items():
        out[phantom_labels == PHANTOM_NAMES.index(name) + 1] = value
    return out


def _decathlon(phantom_pairs: Path, out: Path, cases=(0, 1)) -> Path:
    """Decathlon layout: same file name in imagesTr/labelsTr, dataset.json labels {"value": name}, sparse values."""
    for i in cases:
        image, labels = _phantom_case(phantom_pairs, i)
        (out / "imagesTr").mkdir(parents=True, exist_ok=True)
        shutil.copy(image, out / "imagesTr" / f"pelvis_{i}.nii.gz")
        _write_like(_sparse_labels(_array(labels)), labels, out / "labelsTr" / f"pelvis_{i}.nii.gz")
    meta = {"name": "pelvis", "labels": {"0": "background", **{str(v): n for n, v in SPARSE.items()}},
            "numTraining": len(cases)}
    (out / "dataset.json").write_text(json.dumps(meta))
    return out


# ---------------------------------------------------------------------------------------------- phantom pairs

def test_phantom_pairs_are_the_plain_phantoms_with_organ_labels_on_their_grid(phantom_pairs, tmp_path):
    plain = write_phantom_dataset("prostate-ct", 3, tmp_path / "plain", seed=4, size_xyz=SIZE)
    meta = json.loads((phantom_pairs / "dataset.json").read_text())
    assert meta["channel_names"] == {"0": "CT"} and meta["file_ending"] == ".nii.gz" and meta["numTraining"] == 3
    assert meta["labels"] == {"background": 0, **{name: k for k, name in enumerate(PHANTOM_NAMES, start=1)}}
    assert [s["name"] for s in meta["structures"]] == PHANTOM_NAMES
    for i in range(3):
        image_path, labels_path = _phantom_case(phantom_pairs, i)
        # the CT is byte for byte the file `phantoms` writes without --with-labels
        assert image_path.read_bytes() == (plain / f"prostate_{i:03d}.nii.gz").read_bytes()
        image, labels = sitk.ReadImage(str(image_path)), sitk.ReadImage(str(labels_path))
        assert image.GetPixelID() == sitk.sitkInt16 and labels.GetPixelID() == sitk.sitkUInt8
        assert (labels.GetSize(), labels.GetSpacing(), labels.GetOrigin(), labels.GetDirection()) == \
               (image.GetSize(), image.GetSpacing(), image.GetOrigin(), image.GetDirection())
        values = _array(labels)
        assert set(np.unique(values)) <= set(range(len(PHANTOM_NAMES) + 1))
        for name in ("prostate", "bladder", "rectum", "femur", "hip_bone", "fat", "muscle"):
            assert np.any(values == PHANTOM_NAMES.index(name) + 1), (i, name)
        hu = _array(image)
        fat, bone = values == PHANTOM_NAMES.index("fat") + 1, np.isin(values, [5, 6, 7])
        assert np.median(hu[fat]) < -50 and np.median(hu[bone]) > 150  # labels sit on their tissue
        # femora lie left and right of the body, lateral to the hip bones' centre of mass on each side
        zyx = np.argwhere(values == PHANTOM_NAMES.index("femur") + 1)
        x_mm = np.array([image.TransformIndexToPhysicalPoint([int(c[2]), int(c[1]), int(c[0])])[0] for c in zyx])
        assert x_mm.min() < -50 and x_mm.max() > 50


# ---------------------------------------------------------------------------------------------- layouts

def test_nnunet_layout_is_discovered_with_names_and_values(phantom_pairs):
    cases = discover_pairs(phantom_pairs)
    assert [c.case_id for c in cases] == ["prostate_000", "prostate_001", "prostate_002"]
    assert cases[0].image.name == "prostate_000_0000.nii.gz" and cases[0].labels.name == "prostate_000.nii.gz"
    assert cases[0].label_names == {k: name for k, name in enumerate(PHANTOM_NAMES, start=1)}
    assert structure_names(cases) == PHANTOM_NAMES
    assert discover_pairs(phantom_pairs / "labelsTr") == cases  # a data set's labelsTr/ names the data set
    structures = select_structures(cases)
    assert [s.name for s in structures] == PHANTOM_NAMES
    ct, labels = read_pair(cases[1], structures)
    assert np.array_equal(_array(labels), _array(cases[1].labels)) and labels.GetPixelID() == sitk.sitkUInt8
    assert np.array_equal(_array(ct), _array(cases[1].image))


def test_decathlon_layout_with_sparse_values(phantom_pairs, tmp_path):
    folder = _decathlon(phantom_pairs, tmp_path / "Task99_Pelvis")
    (folder / "imagesTr" / "._pelvis_0.nii.gz").write_bytes(b"macOS resource fork")  # as in the real MSD tars
    cases = discover_pairs(folder)
    assert [c.case_id for c in cases] == ["pelvis_0", "pelvis_1"]
    assert cases[0].image.name == cases[0].labels.name == "pelvis_0.nii.gz"
    assert cases[0].label_names == {1: "prostate", 5: "bladder", 18: "rectum", 40: "hip_bone", 117: "femur"}
    # default: every structure, in source-value order, numbered 1..K
    structures = select_structures(cases)
    assert [s.name for s in structures] == ["prostate", "bladder", "rectum", "hip_bone", "femur"]
    _, labels = read_pair(cases[0], structures)
    phantom = _array(_phantom_case(phantom_pairs, 0)[1])
    expected = np.zeros_like(phantom)
    for k, s in enumerate(structures, start=1):
        expected[phantom == PHANTOM_NAMES.index(s.name) + 1] = k
    assert np.array_equal(_array(labels), expected)


def test_sparse_values_and_merged_structures_round_trip_into_dataset_json(phantom_pairs, tmp_path):
    cases = discover_pairs(_decathlon(phantom_pairs, tmp_path / "msd"))
    structures = select_structures(cases, "bladder, pelvis_bones=femur+hip_bone ,prostate")
    assert structures == [Structure("bladder", ("bladder",)), Structure("pelvis_bones", ("femur", "hip_bone")),
                          Structure("prostate", ("prostate",))]
    out = write_nnunet_pairs(tmp_path / "out", ((c.case_id, *read_pair(c, structures)) for c in cases), structures)
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["labels"] == {"background": 0, "bladder": 1, "pelvis_bones": 2, "prostate": 3}
    assert meta["numTraining"] == 2 and meta["channel_names"] == {"0": "CT"} and meta["file_ending"] == ".nii.gz"
    assert meta["structures"][1] == {"name": "pelvis_bones", "value": 2, "sources": ["femur", "hip_bone"]}
    phantom = _array(_phantom_case(phantom_pairs, 1)[1])
    written = _array(out / "labelsTr" / "pelvis_1.nii.gz")
    assert sitk.ReadImage(str(out / "labelsTr" / "pelvis_1.nii.gz")).GetPixelID() == sitk.sitkUInt8
    expected = np.zeros_like(phantom)
    expected[phantom == 2] = 1
    expected[np.isin(phantom, [5, 6])] = 2
    expected[phantom == 1] = 3
    assert np.array_equal(written, expected)
    assert np.array_equal(_array(out / "imagesTr" / "pelvis_1_0000.nii.gz"), _array(cases[1].image))
    # the written folder is itself a pairs source with the chosen names, and records the merge
    again = discover_pairs(out)
    assert again[0].label_names == {1: "bladder", 2: "pelvis_bones", 3: "prostate"}
    assert read_dataset_structures(out) == structures


def test_totalsegmentator_layout_and_merging_left_and_right(phantom_pairs, tmp_path):
    root = tmp_path / "totalseg"
    for i in (0, 2):
        image_path, labels_path = _phantom_case(phantom_pairs, i)
        case = root / f"s{i:04d}"
        (case / "segmentations").mkdir(parents=True)
        shutil.copy(image_path, case / "ct.nii.gz")
        labels = _array(labels_path)
        half = np.zeros(labels.shape, bool)
        half[:, :, SIZE[0] // 2:] = True  # image right half = patient left (LPS, identity direction)
        femur = labels == PHANTOM_NAMES.index("femur") + 1
        masks = {"prostate": labels == 1, "urinary_bladder": labels == 2, "femur_left": femur & half,
                 "femur_right": femur & ~half, "hip_left": (labels == 6) & half, "hip_right": (labels == 6) & ~half}
        for name, mask in masks.items():
            _write_like(mask.astype(np.uint8), labels_path, case / "segmentations" / f"{name}.nii.gz")
    cases = discover_pairs(root)
    assert [c.case_id for c in cases] == ["s0000", "s0002"]
    assert cases[0].labels is None and cases[0].image.name == "ct.nii.gz"
    assert sorted(cases[0].label_files) == sorted(structure_names(cases))
    assert set(cases[0].label_names.values()) == {"prostate", "urinary_bladder", "femur_left", "femur_right",
                                                  "hip_left", "hip_right"}
    structures = select_structures(cases, "prostate,bladder=urinary_bladder,femur=femur_left+femur_right")
    _, labels = read_pair(cases[1], structures)
    phantom = _array(_phantom_case(phantom_pairs, 2)[1])
    expected = np.select([phantom == 1, phantom == 2, phantom == 5], [1, 2, 3], 0).astype(np.uint8)
    assert np.array_equal(_array(labels), expected)
    # one case folder on its own is a source too
    assert [c.case_id for c in discover_pairs(root / "s0002")] == ["s0002"]


def _write_seg_nrrd(labels: np.ndarray, reference: Path, path: Path, segments, components: int = 1) -> Path:
    """A .seg.nrrd the way Slicer writes one: SegmentN_ID/_Name/_LabelValue/_Layer keys in the NRRD header."""
    if components == 1:
        image = sitk.GetImageFromArray(labels.astype(np.uint8))
    else:
        image = sitk.GetImageFromArray(np.stack([labels.astype(np.uint8)] * components, axis=-1), isVector=True)
    image.CopyInformation(sitk.ReadImage(str(reference)))
    for i, (name, value, layer) in enumerate(segments):
        for key, text in (("ID", f"Segment_{i + 1}"), ("Name", name), ("LabelValue", str(value)),
                          ("Layer", str(layer)), ("Color", "0.5 0.5 0.5")):
            image.SetMetaData(f"Segment{i}_{key}", text)
    image.SetMetaData("Segmentation_MasterRepresentation", "Binary labelmap")
    image.SetMetaData("Segmentation_ReferenceImageExtentOffset", "0 0 0")
    sitk.WriteImage(image, str(path), True)
    return path


def test_volume_beside_its_seg_nrrd(phantom_pairs, tmp_path):
    folder = tmp_path / "slicer"
    folder.mkdir()
    segments = [("Prostate", 3, 0), ("Bladder", 7, 0), ("Femur", 12, 0)]
    for i in (0, 1):
        image_path, labels_path = _phantom_case(phantom_pairs, i)
        shutil.copy(image_path, folder / f"patient{i}.nii.gz")
        phantom = _array(labels_path)
        labels = np.select([phantom == 1, phantom == 2, phantom == 5], [3, 7, 12], 0)
        _write_seg_nrrd(labels, labels_path, folder / f"patient{i}.seg.nrrd", segments)
    cases = discover_pairs(folder)
    assert [c.case_id for c in cases] == ["patient0", "patient1"]
    assert cases[1].image.name == "patient1.nii.gz" and cases[1].labels.name == "patient1.seg.nrrd"
    assert cases[1].label_names == {3: "Prostate", 7: "Bladder", 12: "Femur"}
    # a single volume or its .seg.nrrd names the same pair
    assert discover_pairs(folder / "patient1.nii.gz") == discover_pairs(folder / "patient1.seg.nrrd") == [cases[1]]
    structures = select_structures(cases, "Femur,Prostate")
    _, labels = read_pair(cases[0], structures)
    phantom = _array(_phantom_case(phantom_pairs, 0)[1])
    assert np.array_equal(_array(labels), np.select([phantom == 5, phantom == 1], [1, 2], 0))
    # a list file naming the folder finds the same pairs
    listing = tmp_path / "pairs.txt"
    listing.write_text("# Slicer pairs\nslicer\n")
    assert discover_pairs(listing) == cases


def test_seg_nrrd_with_overlapping_layers_is_refused(phantom_pairs, tmp_path):
    image_path, labels_path = _phantom_case(phantom_pairs, 0)
    shutil.copy(image_path, tmp_path / "ct.nii.gz")
    phantom = _array(labels_path)
    seg = _write_seg_nrrd((phantom == 1).astype(np.uint8), labels_path, tmp_path / "ct.seg.nrrd",
                          [("Prostate", 1, 0), ("Gland", 1, 1)], components=2)
    with pytest.raises(InputError, match=r"ct\.seg\.nrrd stores overlapping segments in 2 layers"):
        discover_pairs(seg)


def test_nnunet_regions_take_their_values(tmp_path, phantom_pairs):
    folder = tmp_path / "regions"
    shutil.copytree(phantom_pairs, folder)
    meta = json.loads((folder / "dataset.json").read_text())
    meta["labels"] = {"background": 0, "organs": [1, 2, 3, 4], "prostate": 1, "bones": [5, 6, 7], "fat": 8,
                      "muscle": 9}
    meta.pop("structures")
    (folder / "dataset.json").write_text(json.dumps(meta))
    case = discover_pairs(folder)[0]
    assert case.label_names == {1: "prostate", 2: "organs", 3: "organs", 4: "organs", 5: "bones", 6: "bones",
                                7: "bones", 8: "fat", 9: "muscle"}
    _, labels = read_pair(case, select_structures([case], "bones"))
    assert np.array_equal(_array(labels), np.isin(_array(case.labels), [5, 6, 7]).astype(np.uint8))


# ---------------------------------------------------------------------------------------------- bad pairs

def test_label_map_on_another_grid_is_resampled_with_a_warning(phantom_pairs, tmp_path, caplog):
    folder = tmp_path / "grid"
    shutil.copytree(phantom_pairs, folder)
    labels_path = folder / "labelsTr" / "prostate_000.nii.gz"
    labels = sitk.ReadImage(str(labels_path))
    coarse = sitk.Resample(labels, [s // 2 for s in labels.GetSize()], sitk.Transform(), sitk.sitkNearestNeighbor,
                           labels.GetOrigin(), [s * 2 for s in labels.GetSpacing()], labels.GetDirection(), 0,
                           sitk.sitkUInt8)
    sitk.WriteImage(coarse, str(labels_path), True)
    case = discover_pairs(folder)[0]
    with caplog.at_level(logging.WARNING, logger="ctdiffusion"):
        ct, out = read_pair(case, select_structures([case]))
    assert "prostate_000.nii.gz is on another grid" in caplog.text and "nearest-neighbour" in caplog.text
    assert (out.GetSize(), out.GetSpacing(), out.GetOrigin()) == (ct.GetSize(), ct.GetSpacing(), ct.GetOrigin())
    assert set(np.unique(_array(out))) <= set(range(10)) and np.any(_array(out) == 9)


def test_cropped_label_map_on_the_same_lattice_is_pasted_silently(phantom_pairs, tmp_path, caplog):
    folder = tmp_path / "cropped"
    shutil.copytree(phantom_pairs, folder)
    labels_path = folder / "labelsTr" / "prostate_001.nii.gz"
    full = sitk.ReadImage(str(labels_path))
    sitk.WriteImage(full[4:28, 6:30, 1:7], str(labels_path), True)  # as Slicer crops a segmentation's extent
    case = discover_pairs(folder)[1]
    with caplog.at_level(logging.WARNING, logger="ctdiffusion"):
        _, out = read_pair(case, select_structures([case]))
    assert "another grid" not in caplog.text
    expected = np.zeros_like(_array(full))
    expected[1:7, 6:30, 4:28] = _array(full)[1:7, 6:30, 4:28]
    assert np.array_equal(_array(out), expected)


def test_label_map_that_misses_the_ct_is_refused(phantom_pairs, tmp_path):
    folder = tmp_path / "far"
    shutil.copytree(phantom_pairs, folder)
    labels_path = folder / "labelsTr" / "prostate_002.nii.gz"
    labels = sitk.ReadImage(str(labels_path))
    labels.SetOrigin([o + 1000.0 for o in labels.GetOrigin()])
    sitk.WriteImage(labels, str(labels_path), True)
    case = discover_pairs(folder)[2]
    with pytest.raises(InputError, match=r"The label map .*prostate_002\.nii\.gz does not overlap its CT"):
        read_pair(case, select_structures([case]))


def test_fractional_labels_are_refused(phantom_pairs, tmp_path):
    folder = tmp_path / "fractional"
    shutil.copytree(phantom_pairs, folder)
    labels_path = folder / "labelsTr" / "prostate_000.nii.gz"
    values = _array(labels_path).astype(np.float32)
    values[values == 2] = 1.5
    _write_like(values, labels_path, labels_path)
    case = discover_pairs(folder)[0]
    with pytest.raises(InputError, match=r"prostate_000\.nii\.gz holds fractional values"):
        read_pair(case, select_structures([case]))
    # float files with whole numbers are label maps all the same
    _write_like(_array(phantom_pairs / "labelsTr" / "prostate_000.nii.gz").astype(np.float32), labels_path,
                labels_path)
    assert np.any(_array(read_pair(case, select_structures([case]))[1]) == 2)


def test_missing_label_file_and_missing_image_are_refused(phantom_pairs, tmp_path):
    folder = tmp_path / "missing"
    shutil.copytree(phantom_pairs, folder)
    (folder / "labelsTr" / "prostate_001.nii.gz").unlink()
    with pytest.raises(InputError, match=r"The image .*prostate_001_0000\.nii\.gz has no label map: "
                                         r".*labelsTr/prostate_001\.nii\.gz is missing"):
        discover_pairs(folder)
    shutil.copy(folder / "labelsTr" / "prostate_000.nii.gz", folder / "labelsTr" / "prostate_001.nii.gz")
    (folder / "imagesTr" / "prostate_002_0000.nii.gz").unlink()
    with pytest.raises(InputError, match=r"The label map .*prostate_002\.nii\.gz has no image"):
        discover_pairs(folder)
    lonely = tmp_path / "lonely"
    lonely.mkdir()
    shutil.copy(phantom_pairs / "imagesTr" / "prostate_000_0000.nii.gz", lonely / "scan.nii.gz")
    with pytest.raises(InputError, match=r"scan\.nii\.gz has no label map: scan\.seg\.nrrd is missing"):
        discover_pairs(lonely / "scan.nii.gz")


def test_unknown_or_clashing_structures_are_refused(phantom_pairs):
    cases = discover_pairs(phantom_pairs)
    with pytest.raises(InputError, match=r"The structure 'liver' \(--structures\) appears in no case"):
        select_structures(cases, "prostate,liver")
    with pytest.raises(InputError, match=r"The structure 'femur_left' \(--structures\) appears in no case"):
        select_structures(cases, "femur=femur_left+femur_right")
    with pytest.raises(InputError, match="put into both"):
        select_structures(cases, "bone=femur+hip_bone,femur")
    with pytest.raises(InputError, match="empty name"):
        select_structures(cases, "bones=femur+")
    with pytest.raises(InputError, match="reserved"):
        select_structures(cases, "background=fat")


def test_label_values_the_data_does_not_name_are_refused(phantom_pairs, tmp_path):
    folder = tmp_path / "unnamed"
    shutil.copytree(phantom_pairs, folder)
    meta = json.loads((folder / "dataset.json").read_text())
    del meta["labels"]["muscle"]
    (folder / "dataset.json").write_text(json.dumps(meta))
    case = discover_pairs(folder)[0]
    with pytest.raises(InputError, match=r"prostate_000\.nii\.gz holds values 9 that dataset\.json does not name"):
        read_pair(case, select_structures([case]))


def test_write_nnunet_pairs_leaves_nothing_when_it_fails(phantom_pairs, tmp_path):
    cases = discover_pairs(phantom_pairs)
    structures = select_structures(cases)

    def pairs():
        yield (cases[0].case_id, *read_pair(cases[0], structures))
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_nnunet_pairs(tmp_path / "out", pairs(), structures)
    assert list(tmp_path.iterdir()) == []
    ct, labels = read_pair(cases[0], structures)
    with pytest.raises(ValueError, match="outside 0..2"):
        write_nnunet_pairs(tmp_path / "out", [("a", ct, labels)], structures[:2])
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(InputError, match="already exists and is not empty"):
        write_nnunet_pairs(phantom_pairs, [], structures)


def test_pair_case_round_trips_through_json(phantom_pairs):
    case = discover_pairs(phantom_pairs)[0]
    assert PairCase.from_dict(json.loads(json.dumps(case.to_dict()))) == case
    assert hash(case) == hash(PairCase.from_dict(case.to_dict()))


# ---------------------------------------------------------------------------------------------- command line

def test_cli_phantoms_with_labels(tmp_path):
    command = [sys.executable, "-m", "CTDiffusionLib", "phantoms", "--profile", "prostate-ct", "--with-labels",
               "--num", "2", "--size", "24x24x4", "--out", str(tmp_path / "pairs")]
    done = subprocess.run(command, capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in (tmp_path / "pairs" / "labelsTr").iterdir()) == ["prostate_000.nii.gz",
                                                                                   "prostate_001.nii.gz"]
    refused = subprocess.run([*command[:5], "cardiac-masks", *command[6:-1], str(tmp_path / "masks")],
                             capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1])
    assert refused.returncode == 2 and "have no separate labels" in refused.stderr
    assert not (tmp_path / "masks").exists()
