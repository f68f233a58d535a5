"""The report's verdicts on adversarial "generated" sets built from phantoms (tiny: 48x48x12 CT, 8 per set).

Real data: 16 CT phantoms (8 training, 8 held-out). Each adversarial folder plays the generated set:
exact copies of training cases, copies shifted by 1-2 voxels, mirrored copies, augmented copies (zoom and flip as
the CT presets train with, plus rotation with a run whose config.json rotates), pure noise, collapse (one volume
eight times), constant air, fresh real phantoms from a seed never trained on, and those fresh phantoms with their
fat (-150..-40 HU) turned into muscle (+40 HU). Each must get the right verdict, and the fresh real set must get no
fail at all. The real-side analysis is shared (reference_cache) so the file runs in a few minutes on a CPU. Set
CTDIFFUSION_QUALITY_TABLE=FILE.md to write the table docs/quality.md shows.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from CTDiffusionLib.data.augment import augment_sample
from CTDiffusionLib.data.phantoms import write_phantom_dataset
from CTDiffusionLib.errors import InputError
from test_evaluation import _one_torch_thread  # noqa: F401  (autouse fixture: one torch thread)
from verdict_table import failing_metrics, write_verdict_table

SIZE = (48, 48, 12)  # phantoms are written on the evaluation grid: the copies below are copies on that grid
N = 8
FEATURE_STEPS = 8


def _read(folder: Path) -> list:
    files = sorted(folder.glob("*.nii.gz"))
    return [(f.name.split(".")[0], sitk.ReadImage(str(f))) for f in files]


def _write_set(folder: Path, arrays: list, like: sitk.Image) -> Path:
    """A generated folder: synthetic_0001.nii.gz ... (int16 HU) with the phantoms' geometry, and sidecars."""
    folder.mkdir(parents=True)
    for k, arr in enumerate(arrays, start=1):
        img = sitk.GetImageFromArray(np.round(arr).astype(np.int16))
        img.CopyInformation(like)
        sitk.WriteImage(img, str(folder / f"synthetic_{k:04d}.nii.gz"))
        (folder / f"synthetic_{k:04d}.json").write_text(json.dumps({"profile": "prostate-ct", "mode": "3d"}))
    return folder


def _shift_edge(arr: np.ndarray, dy: int, dx: int) -> np.ndarray:
    return ndimage.shift(arr, (0, dy, dx), order=0, mode="nearest")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("verdicts")
    write_phantom_dataset("prostate-ct", 2 * N, root / "all", seed=11, size_xyz=SIZE)
    write_phantom_dataset("prostate-ct", N, root / "fresh", seed=424242, size_xyz=SIZE)
    cases = _read(root / "all")
    for sub, chunk in (("train", cases[:N]), ("real", cases[N:])):
        (root / sub).mkdir()
        for name, _ in chunk:
            (root / sub / f"{name}.nii.gz").symlink_to(root / "all" / f"{name}.nii.gz")
    train = [(name, sitk.GetArrayFromImage(img).astype(np.float32)) for name, img in cases[:N]]
    fresh = [sitk.GetArrayFromImage(img).astype(np.float32) for _, img in _read(root / "fresh")]
    like = cases[0][1]
    rng = np.random.default_rng(7)
    zoom_flip = {"zoom": [0.9, 1.1], "flip": True, "rotate_deg": 0.0}
    air = float(min(a.min() for _, a in train))
    sets = {
        "exact copies": [a for _, a in train],
        "copies shifted 1-2 voxels": [_shift_edge(a, 1 + k % 2, 2 - k % 2) for k, (_, a) in enumerate(train)],
        "mirrored copies": [a[..., ::-1] for _, a in train],
        "augmented copies (zoom, flip)": [augment_sample(a, zoom_flip, rng, False) for _, a in train],
        "augmented copies (zoom, flip, rotation; run rotates)": [
            augment_sample(a, {**zoom_flip, "rotate_deg": 10.0}, rng, False) for _, a in train],
        "pure noise": [rng.normal(-100.0, 400.0, train[0][1].shape) for _ in range(N)],
        "collapse (one volume repeated)": [fresh[0]] * N,
        "constant (all air)": [np.full_like(train[0][1], air) for _ in range(N)],
        "fresh real (new phantom seed)": fresh,
        "fresh real with its fat turned into muscle": [np.where((a >= -150) & (a < -40), 40.0, a) for a in fresh],
    }
    folders = {name: _write_set(root / "sets" / f"set{k}", arrays, like) for k, (name, arrays) in enumerate(sets.items())}
    run = root / "run_rotating"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"data": {"augment": {**zoom_flip, "rotate_deg": 15.0}}}))
    return root, [name for name, _ in train], folders, run


@pytest.fixture(scope="module")
def results(data, tmp_path_factory):
    from CTDiffusionLib.evaluation import run_evaluation

    root, train_names, folders, run = data
    out = tmp_path_factory.mktemp("reports")
    cache = {}
    res = {}
    for k, (name, folder) in enumerate(folders.items()):
        res[name] = run_evaluation(root / "real", folder, out / f"r{k}", train=root / "train", seed=0,
                                   feature_steps=FEATURE_STEPS, reference_cache=cache,
                                   run_dir=run if "run rotates" in name else None)
    table = os.environ.get("CTDIFFUSION_QUALITY_TABLE")
    if table:
        _write_table(Path(table), res)
    return res


def _write_table(path: Path, res: dict) -> None:
    m = next(iter(res.values()))
    write_verdict_table(path, res, f"Near-copy threshold {m['memorisation']['threshold']:.4f} (aligned in-plane "
                                   f"MS-SSIM); chance that a genuinely new volume is flagged: "
                                   f"{m['memorisation']['false_flag_chance']:.2g}.")


def test_every_metric_has_a_verdict_and_an_interval(results):
    for name, m in results.items():
        assert set(m["verdicts"]) == set(m["summary"]), name
        assert set(m["verdicts"].values()) <= {"ok", "fail"}, name
        for key, entry in m["summary"].items():
            assert entry["verdict"] == m["verdicts"][key]
            assert m["intervals"][key] == entry["interval"] and len(entry["interval"]) == 2, (name, key)
            assert entry["interval"][0] <= entry["interval"][1]


def test_fresh_real_gets_no_fail(results):
    m = results["fresh real (new phantom seed)"]
    assert not failing_metrics(m), {k: (m["summary"][k]["generated"], m["summary"][k]["interval"]) for k in failing_metrics(m)}
    assert m["near_copies"] == [] and m["memorisation"]["status"] == "pass"
    assert m["verdict"] == "ok" and m["verdict_line"].startswith("OK")
    assert 0 < m["memorisation"]["false_flag_chance"] <= 0.01


@pytest.mark.parametrize("name", ["exact copies", "copies shifted 1-2 voxels", "mirrored copies",
                                  "augmented copies (zoom, flip)",
                                  "augmented copies (zoom, flip, rotation; run rotates)"])
def test_copies_of_training_cases_are_flagged_by_name(results, data, name):
    _, train_names, _, _ = data
    m = results[name]
    assert "memorised_fraction" in failing_metrics(m) and m["memorisation"]["status"] == "flagged"
    flagged = {c["sample"]: c for c in m["near_copies"]}
    assert sorted(flagged) == [f"synthetic_{k:04d}" for k in range(1, N + 1)]
    for k, train_name in enumerate(train_names, start=1):  # each sample is matched to the case it was made from
        assert flagged[f"synthetic_{k:04d}"]["train"] == train_name
        assert flagged[f"synthetic_{k:04d}"]["similarity"] > m["memorisation"]["threshold"]
    if name == "exact copies":
        assert all(c["similarity"] == 1.0 for c in m["near_copies"])
    assert "nearest_train_similarity" in failing_metrics(m)


def test_noise_fails_diversity_on_the_low_side_and_realism(results):
    m = results["pure noise"]
    div = m["summary"]["ms_ssim_diversity"]
    assert div["verdict"] == "fail" and div["generated"] < div["interval"][0]
    assert {"hu_histogram_w1", "nearest_train_similarity"} <= failing_metrics(m)
    assert m["summary"]["nearest_train_similarity"]["generated"] < m["summary"]["nearest_train_similarity"]["interval"][0]
    assert m["near_copies"] == []


def test_collapse_fails_diversity_on_the_high_side(results):
    m = results["collapse (one volume repeated)"]
    div = m["summary"]["ms_ssim_diversity"]
    assert div["verdict"] == "fail" and div["generated"] > div["interval"][1]
    assert div["generated"] == pytest.approx(1.0, abs=1e-6)


def test_fat_turned_into_muscle_fails_the_fat_muscle_contrast(results):
    m = results["fresh real with its fat turned into muscle"]
    entry = m["summary"]["fat_muscle_contrast_hu_gap"]
    assert "fat_muscle_contrast_hu_gap" in failing_metrics(m)
    assert entry["generated_value"] < entry["real_value"] - entry["interval"][1]  # the contrast is too low
    assert m["near_copies"] == []


def test_constant_volume_is_no_body_found(results):
    m = results["constant (all air)"]
    assert {"body_found_rate", "hu_histogram_w1", "tissue_contrast_hu_gap"} <= failing_metrics(m)
    assert m["summary"]["body_found_rate"]["generated"] == 0.0
    assert any(n.startswith(f"No body found in {N} of {N} generated volumes") for n in m["notes"])
    assert all(r["found"] is False for r in m["per_sample"])


def test_metrics_json_is_scriptable(results, data, tmp_path):
    m = results["exact copies"]
    assert m["near_copies"][0].keys() == {"sample", "train", "similarity"}
    for key in ("profile", "counts", "summary", "per_sample", "memorisation", "figures", "feature_network"):
        assert key in m  # keys the demo and the Slicer tables read
    for entry in m["summary"].values():
        assert {"generated", "real_floor", "better", "description", "interval", "verdict"} <= set(entry)
    assert "3 networks" in m["feature_network"] or "seeds" in m["feature_network"]


# ------------------------------------------------------------------------------------------------ bad inputs


def _mask_like(tmp_path, arr, dtype, name="gen"):
    folder = tmp_path / name
    folder.mkdir()
    img = sitk.GetImageFromArray(arr.astype(dtype))
    sitk.WriteImage(img, str(folder / "synthetic_0001.nii.gz"))
    return folder


def test_fractional_mask_labels_are_refused_before_any_cast(tmp_path):
    from CTDiffusionLib.evaluation.inputs import load_generated

    arr = np.zeros((4, 16, 16), np.float32)
    arr[1:3, 4:10, 4:10] = 2.6  # would become MYO (2) by a uint8 cast
    folder = _mask_like(tmp_path, arr, np.float32)
    with pytest.raises(InputError) as err:
        load_generated(folder, "cardiac-masks")
    assert "synthetic_0001.nii.gz" in str(err.value) and "fractional" in str(err.value)


def test_mask_label_outside_range_names_the_generated_file(tmp_path):
    from CTDiffusionLib.evaluation.inputs import load_generated

    arr = np.zeros((4, 16, 16), np.uint8)
    arr[1:3, 4:10, 4:10] = 3
    arr[2, 5, 5] = 5
    folder = _mask_like(tmp_path, arr, np.uint8)
    with pytest.raises(InputError) as err:
        load_generated(folder)  # no sidecar, no --profile: still recognised as masks, and refused by file name
    assert "synthetic_0001.nii.gz" in str(err.value) and "outside 0..3" in str(err.value)


def test_field_of_view_mismatch_is_warned(data, tmp_path):
    from CTDiffusionLib.evaluation.inputs import geometry_warnings, load_generated, load_reference_sets

    root, _, folders, _ = data
    like = sitk.ReadImage(str(next((folders["fresh real (new phantom seed)"]).glob("*.nii.gz"))))
    arrays = [sitk.GetArrayFromImage(like)] * 2
    half = sitk.Image(like)
    half.SetSpacing([s * 0.5 for s in like.GetSpacing()])
    gen = load_generated(_write_set(tmp_path / "gen", arrays, half))
    real_s, _ = load_reference_sets(root / "real", None, gen)
    warnings = geometry_warnings(gen, real_s, "--real")
    assert len(warnings) == 1 and "field of view" in warnings[0]
    assert geometry_warnings(load_generated(folders["fresh real (new phantom seed)"]), real_s, "--real") == []
