"""Shared fixtures for tests that need the real MRML core (slicer-core from PyPI) with an application logic
booted the way the Slicer application (or trame-slicer) does. Import the fixtures into a test module:

    from slicer_fixtures import core_app, write_ct, write_mask  # noqa: F401
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

slicer = pytest.importorskip("slicer")


@pytest.fixture
def core_app():
    """A fresh scene with the application logic and module logics registered; cleared afterwards."""
    from CTDiffusionLib.scene import core

    app = core.boot_core_application(slicer.vtkMRMLScene())
    yield app
    core.release_core_application()


# Geometry used by the files the tests write (LPS, as stored in NIfTI/NRRD via ITK).
SPACING = (0.8, 0.7, 2.5)
ORIGIN = (-20.0, -15.0, 30.0)
DIRECTION = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)


def write_ct(path, size=(24, 20, 6), seed=0, origin=ORIGIN, spacing=SPACING):
    import SimpleITK as sitk

    rng = np.random.default_rng(seed)
    x, y, z = size
    arr = np.full((z, y, x), -1000, np.int16)
    arr[:, 4:y - 4, 4:x - 4] = 40 + rng.integers(-20, 20, (z, y - 8, x - 8))
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(spacing)
    img.SetOrigin(origin)
    img.SetDirection(DIRECTION)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(img, str(path), True)
    return Path(path)


def write_mask(path, size=(24, 20, 4), labels=(1, 2, 3), origin=ORIGIN, spacing=SPACING):
    import SimpleITK as sitk

    x, y, z = size
    arr = np.zeros((z, y, x), np.uint8)
    for i, label in enumerate(labels):
        arr[:, 3 + 5 * i:7 + 5 * i, 5:15] = label
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(spacing)
    img.SetOrigin(origin)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(img, str(path), True)
    return Path(path)


def write_generated(folder, profile, n=2, **kw):
    """A folder shaped like `generate` output: synthetic_0001.nii.gz + synthetic_0001.json ..."""
    import json

    folder = Path(folder)
    for i in range(1, n + 1):
        name = f"synthetic_{i:04d}"
        if profile == "cardiac-masks":
            write_mask(folder / f"{name}.nii.gz", **kw)
        else:
            write_ct(folder / f"{name}.nii.gz", seed=i, **kw)
        (folder / f"{name}.json").write_text(json.dumps({
            "file": f"{name}.nii.gz", "index": i, "seed": i, "sampler": "ddim", "steps": 4, "model_sha256": "0" * 64,
            "profile": profile, "mode": "3d", "condition": None, "guidance_scale": None}))
    return folder


def phantom_pair_nodes(folder, index: int, rename: dict):
    """A CT volume node and a segmentation node from phantom pair `index` of an nnU-Net folder (phantoms
    --with-labels): the segments whose values `rename` maps ({value: name}) get those names, the rest are removed."""
    from CTDiffusionLib.scene.nodes import load_ct_volume, segmentation_from_label_file

    folder = Path(folder)
    ct = load_ct_volume(folder / "imagesTr" / f"prostate_{index:03d}_0000.nii.gz", name=f"patient {index}")
    seg_node = segmentation_from_label_file(folder / "labelsTr" / f"prostate_{index:03d}.nii.gz", name=f"seg {index}")
    segmentation = seg_node.GetSegmentation()
    for i in reversed(range(segmentation.GetNumberOfSegments())):
        segment = segmentation.GetNthSegment(i)
        if segment.GetLabelValue() in rename:
            segment.SetName(rename[segment.GetLabelValue()])
        else:
            segmentation.RemoveSegment(segmentation.GetNthSegmentID(i))
    return ct, seg_node
