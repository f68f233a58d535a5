"""CT + label pairs through the real MRML core (slicer-core): volume + segmentation nodes out to files a training
run reads, generated pairs back in as a volume and a named segmentation on the same geometry, one segmentation
out as a label map on a chosen volume's grid (scene/pairs.py)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from slicer_fixtures import core_app, phantom_pair_nodes  # noqa: F401

slicer = pytest.importorskip("slicer")

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from CTDiffusionLib.data.pairs import discover_pairs, read_pair, select_structures  # noqa: E402
from CTDiffusionLib.data.phantoms import write_phantom_dataset  # noqa: E402
from CTDiffusionLib.data.phantoms.prostate_ct import ORGAN_TISSUES  # noqa: E402
from CTDiffusionLib.errors import InputError  # noqa: E402
from CTDiffusionLib.scene import pairs as scene_pairs  # noqa: E402

PHANTOM_NAMES = list(ORGAN_TISSUES)
ROTATED = (0.0, -1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0)  # 90 degrees about z: direction must survive, not just spacing


@pytest.fixture(scope="module")
def rotated_pairs(tmp_path_factory) -> Path:
    """Two phantom pairs re-oriented (direction not identity), in the nnU-Net layout."""
    folder = write_phantom_dataset("prostate-ct", 2, tmp_path_factory.mktemp("scene_pairs") / "pairs", seed=7,
                                   size_xyz=(28, 24, 6), with_labels=True)
    for path in [*(folder / "imagesTr").iterdir(), *(folder / "labelsTr").iterdir()]:
        image = sitk.ReadImage(str(path))
        image.SetDirection(ROTATED)
        sitk.WriteImage(image, str(path), True)
    return folder


def _geometry(node) -> tuple:
    matrix = slicer.vtkMatrix4x4() if hasattr(slicer, "vtkMatrix4x4") else __import__("vtk").vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    return (tuple(node.GetImageData().GetDimensions()),
            tuple(round(matrix.GetElement(r, c), 4) for r in range(3) for c in range(4)))


def _file_geometry(path) -> tuple:
    image = sitk.ReadImage(str(path))
    return image.GetSize(), np.round(image.GetSpacing(), 4).tolist(), np.round(image.GetOrigin(), 4).tolist(), \
        np.round(image.GetDirection(), 4).tolist()


def _segments(seg_node) -> dict:
    segmentation = seg_node.GetSegmentation()
    return {segmentation.GetNthSegment(i).GetName(): segmentation.GetNthSegmentID(i)
            for i in range(segmentation.GetNumberOfSegments())}


def test_segmentation_nodes_to_pairs_folder_and_back(core_app, rotated_pairs, tmp_path):
    rename = {1: "Prostate", 2: "Bladder", 5: "Femur", 6: "Hip bone"}
    pairs = [phantom_pair_nodes(rotated_pairs, i, rename) for i in (0, 1)]

    # nodes -> NAME.nii.gz + NAME.seg.nrrd, written by Slicer's own writers; the engine reads their headers
    written = scene_pairs.export_pair_files(pairs, tmp_path / "files")
    assert [p.name for p in written] == ["patient_0.seg.nrrd", "patient_1.seg.nrrd"]
    cases = discover_pairs(tmp_path / "files")
    assert sorted(cases[0].label_names.values()) == sorted(rename.values())

    # nodes -> nnU-Net raw folder with the segment names; a merge chosen as on the command line
    out = scene_pairs.export_pairs(pairs, tmp_path / "nnunet", "Bladder,bones=Femur+Hip bone,Prostate")
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["labels"] == {"background": 0, "Bladder": 1, "bones": 2, "Prostate": 3}
    for i in (0, 1):
        phantom = sitk.GetArrayFromImage(sitk.ReadImage(str(rotated_pairs / "labelsTr" / f"prostate_{i:03d}.nii.gz")))
        labels = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "labelsTr" / f"patient_{i}.nii.gz")))
        expected = np.select([phantom == 2, np.isin(phantom, [5, 6]), phantom == 1], [1, 2, 3], 0)
        assert np.array_equal(labels, expected)
        assert _file_geometry(out / "labelsTr" / f"patient_{i}.nii.gz") == \
               _file_geometry(rotated_pairs / "imagesTr" / f"prostate_{i:03d}_0000.nii.gz") == \
               _file_geometry(out / "imagesTr" / f"patient_{i}_0000.nii.gz")

    # files -> nodes: a volume and a named segmentation, on the same geometry as the nodes we started from
    loaded = scene_pairs.import_pairs(out, beside=pairs[0][0])
    assert len(loaded) == 2
    for (volume, seg_node), (original, _) in zip(loaded, pairs):
        assert volume.GetClassName() == "vtkMRMLScalarVolumeNode"
        assert seg_node.GetClassName() == "vtkMRMLSegmentationNode"
        assert list(_segments(seg_node)) == ["Bladder", "bones", "Prostate"]
        assert _geometry(volume) == _geometry(original)
        assert np.array_equal(slicer.util.arrayFromVolume(volume), slicer.util.arrayFromVolume(original))
        # the segmentation round-trips voxel for voxel onto the same grid
        back = tmp_path / f"{volume.GetName()}_back.nii.gz"
        names = scene_pairs.export_segmentation_labels(seg_node, back, reference_volume=volume)
        assert names == ["Bladder", "bones", "Prostate"]
        assert _file_geometry(back) == _file_geometry(out / "labelsTr" / f"{volume.GetName()}.nii.gz")
        assert np.array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(back))),
                              sitk.GetArrayFromImage(sitk.ReadImage(str(out / "labelsTr" /
                                                                        f"{volume.GetName()}.nii.gz"))))
    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(core_app.scene)
    assert sh.GetItemName(sh.GetItemParent(sh.GetItemByDataNode(loaded[0][1]))) == "CTDiffusion synthetic"


def test_segmentation_to_label_map_for_a_model(core_app, rotated_pairs, tmp_path, caplog):
    ct, seg_node = phantom_pair_nodes(rotated_pairs, 1, {1: "PROSTATE", 2: "bladder", 8: "Fat"})
    # the model's structures, in its order; segment names match ignoring case, "Fat" is not one of them
    names = scene_pairs.export_segmentation_labels(seg_node, tmp_path / "for_model.nii.gz", ["bladder", "prostate"],
                                                   reference_volume=ct)
    assert names == ["bladder", "prostate"] and "Fat" in caplog.text
    written = sitk.ReadImage(str(tmp_path / "for_model.nii.gz"))
    phantom = sitk.GetArrayFromImage(sitk.ReadImage(str(rotated_pairs / "labelsTr" / "prostate_001.nii.gz")))
    assert np.array_equal(sitk.GetArrayFromImage(written), np.select([phantom == 2, phantom == 1], [1, 2], 0))
    assert _file_geometry(tmp_path / "for_model.nii.gz") == \
           _file_geometry(rotated_pairs / "imagesTr" / "prostate_001_0000.nii.gz")
    with pytest.raises(InputError, match="has no segment named like the model's structures"):
        scene_pairs.export_segmentation_labels(seg_node, tmp_path / "none.nii.gz", ["liver"], reference_volume=ct)
    assert not (tmp_path / "none.nii.gz").exists()


def test_overlapping_segments_are_refused_with_one_sentence(core_app, rotated_pairs, tmp_path):
    ct, seg_node = phantom_pair_nodes(rotated_pairs, 0, {1: "Prostate"})
    # a second import of the same label map puts an overlapping copy of the prostate in a second layer
    labelmap = slicer.vtkMRMLLabelMapVolumeNode()
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    storage.SetFileName(str(rotated_pairs / "labelsTr" / "prostate_000.nii.gz"))
    storage.ReadData(labelmap)
    slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(labelmap, seg_node)
    with pytest.raises(InputError, match=r"patient_0\.seg\.nrrd stores overlapping segments in \d+ layers"):
        scene_pairs.export_pairs([(ct, seg_node)], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_exported_pairs_read_like_any_other_pairs(core_app, rotated_pairs, tmp_path):
    ct, seg_node = phantom_pair_nodes(rotated_pairs, 0, {2: "Bladder", 3: "Rectum"})
    scene_pairs.export_pair_files([(ct, seg_node)], tmp_path / "files")
    case = discover_pairs(tmp_path / "files")[0]
    image, labels = read_pair(case, select_structures([case], "Rectum"))
    phantom = sitk.GetArrayFromImage(sitk.ReadImage(str(rotated_pairs / "labelsTr" / "prostate_000.nii.gz")))
    assert np.array_equal(sitk.GetArrayFromImage(labels), (phantom == 3).astype(np.uint8))
    assert np.allclose(labels.GetDirection(), ROTATED) and labels.GetSize() == image.GetSize()
    with pytest.raises(InputError, match="already exists and is not empty"):
        scene_pairs.export_pair_files([(ct, seg_node)], tmp_path / "files")
