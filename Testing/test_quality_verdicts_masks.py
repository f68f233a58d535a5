"""The report's verdicts on adversarial "generated" sets of cardiac masks, in both generation modes.

Real data: 12 ACDC-layout phantom patients (ED + ES each; 6 training, 6 held-out), stored in RAS voxel order as
NIfTI files from RAS-based tools often are (training reorients every case to the model's LPS order, so a generated
copy comes out in LPS order). Each adversarial folder plays the output of `ctdiffusion generate`: synthetic_0001.nii.gz
(uint8 labels on the model grid, the training set's geometry) + synthetic_0001.json (profile, mode, seed, ...), one
(1, y, x) slice per file for the 2D presets (slice2d, the profile's default) and one (z, y, x) stack for the 3D
presets. Its samples are built from exactly what training sees (`prepare_dataset`: reoriented, cropped around the
heart, nearest-neighbour resized): exact copies of training samples, copies shifted by 1-2 voxels in-plane,
mirrored copies, augmented copies (zoom 0.9-1.1 and rotation up to 15 degrees, nearest-neighbour, with the presets'
own augmentation), random labels, collapse (one sample repeated), empty masks, broken topology (the LV touching
background; holes in the LV) and fresh real phantoms from a seed never trained on. Each set must get the right
verdict, and the fresh real set no fail at all. The real-side analysis is shared per mode (reference_cache).
Set CTDIFFUSION_QUALITY_TABLE_MASKS=FILE.md to write the tables docs/quality.md shows (FILE-2d.md, FILE-3d.md).
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
from CTDiffusionLib.data.dataset import prepare_dataset
from CTDiffusionLib.data.discovery import discover_cases
from CTDiffusionLib.data.phantoms import write_phantom_dataset
from CTDiffusionLib.data.volume_io import Geometry
from CTDiffusionLib.evaluation import masks
from CTDiffusionLib.presets import PRESETS
from test_evaluation import _one_torch_thread  # noqa: F401  (autouse fixture: one torch thread)
from verdict_table import failing_metrics, write_verdict_table

PROFILE = "cardiac-masks"
SIZE = (64, 64, 6)  # phantom volumes; the model grids below are what the presets crop and resize to
GRID = {"2d": (48, 48), "3d": (48, 48, 6)}  # at 32 px nearest-neighbour resizing breaks thin walls, in real data too
PRESET = {"2d": "slice2d", "3d": "stack3d"}  # whose augmentation the augmented copies use
PATIENTS = 6  # per side (training, held-out); fresh: 4 more from another seed
N = 8
FEATURE_STEPS = 8

EXACT, SHIFTED, MIRRORED = "exact copies", "copies shifted 1-2 voxels", "mirrored copies"
AUGMENTED = "augmented copies (zoom, rotation)"
NOISE, COLLAPSE, EMPTY = "random labels", "collapse (one mask repeated)", "empty (all background)"
LV_OPEN, HOLES = "LV touching background", "holes in the LV"
FRESH = "fresh real (new phantom seed)"
COPIES = [EXACT, SHIFTED, MIRRORED, AUGMENTED]


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory):
    root = tmp_path_factory.mktemp("mask_verdicts")
    write_phantom_dataset(PROFILE, 2 * PATIENTS, root / "all", seed=11, size_xyz=SIZE)
    write_phantom_dataset(PROFILE, 4, root / "fresh", seed=424242, size_xyz=SIZE)
    for f in root.rglob("*_gt.nii.gz"):  # same anatomy in space, voxels stored in RAS order (x and y reversed)
        sitk.WriteImage(sitk.DICOMOrient(sitk.ReadImage(str(f)), "RAS"), str(f))
    patients = sorted(p for p in (root / "all").iterdir() if p.is_dir())
    for sub, chunk in (("train", patients[:PATIENTS]), ("real", patients[PATIENTS:])):
        (root / sub).mkdir()
        for p in chunk:
            p.rename(root / sub / p.name)
    return root


def _training_view(folder: Path, mode: str) -> tuple:
    """What training sees of FOLDER: [(name as the report names it, (z, y, x) uint8)], and the output geometry a
    model trained on it writes with (the same preparation `ctdiffusion train` runs)."""
    data = prepare_dataset(discover_cases([folder], PROFILE), PROFILE,
                           {"grid": list(GRID[mode]), "mode": mode, "val_fraction": 0.0}, None, 0)
    out, seen = [], {}
    for arr, c in zip(data.samples, data.sample_case):
        case_id = data.cases[c].case_id
        k = seen[c] = seen.get(c, -1) + 1
        out.append((f"{case_id}_s{k:02d}", arr[None]) if mode == "2d" else (case_id, arr))
    return out, data.geometry


def _write_generated(folder: Path, arrays: list, geometry: dict, mode: str) -> Path:
    """A folder as `ctdiffusion generate` writes it (generation.write_volume + the same sidecar keys)."""
    from CTDiffusionLib.generation import write_volume

    folder.mkdir(parents=True)
    geo = Geometry(geometry["spacing"], geometry["origin"], geometry["direction"])
    for k, arr in enumerate(arrays, start=1):
        assert arr.shape == ((1,) if mode == "2d" else ()) + tuple(GRID[mode][::-1]) and arr.dtype == np.uint8
        path = write_volume(np.ascontiguousarray(arr), geo, folder / f"synthetic_{k:04d}.nii.gz")
        sidecar = {"file": path.name, "index": k, "seed": k - 1, "sampler": "dpm++", "steps": 20,
                   "model_sha256": None, "profile": PROFILE, "mode": mode, "condition": None,
                   "guidance_scale": None, "reference": None}
        (folder / f"synthetic_{k:04d}.json").write_text(json.dumps(sidecar), encoding="utf-8")
    return folder


def _shift(a: np.ndarray, dy: int, dx: int) -> np.ndarray:
    return ndimage.shift(a, (0, dy, dx), order=0, mode="constant", cval=0)  # background comes in at the edge


def _augment(a: np.ndarray, cfg: dict, rng, mode: str) -> np.ndarray:
    """As make_batch augments a compact training sample: (y, x) slices in 2D, (z, y, x) stacks in 3D."""
    return augment_sample(a[0], cfg, rng, True)[None] if mode == "2d" else augment_sample(a, cfg, rng, True)


def _open_lv(a: np.ndarray) -> np.ndarray:
    """Myocardium removed beside the LV on the side away from the RV (phantom RV: image left): LV meets background."""
    a = a.copy()
    for z in range(a.shape[0]):
        lv_x = np.where(a[z] == masks.LV)[1]
        if lv_x.size:
            a[z][(a[z] == masks.MYO) & (np.arange(a.shape[2])[None, :] >= lv_x.max())] = 0
    return a


def _hole(a: np.ndarray) -> np.ndarray:
    """One background voxel inside the LV cavity on every slice where the cavity has an inside."""
    a = a.copy()
    for z in range(a.shape[0]):
        ys, xs = np.where(ndimage.binary_erosion(a[z] == masks.LV))
        if ys.size:
            k = int(np.argmin((ys - ys.mean()) ** 2 + (xs - xs.mean()) ** 2))
            a[z, ys[k], xs[k]] = 0
    return a


@pytest.fixture(scope="module", params=["2d", "3d"])
def data(request, phantoms):
    mode = request.param
    root = phantoms
    train, geometry = _training_view(root / "train", mode)
    fresh_all, _ = _training_view(root / "fresh", mode)
    rng = np.random.default_rng(7)
    picked = [train[i] for i in rng.choice(len(train), N, replace=False)]
    fresh = [fresh_all[i][1] for i in rng.choice(len(fresh_all), N, replace=False)]
    aug = PRESETS[PROFILE][PRESET[mode]]["augment"]
    assert aug["zoom"] == [0.9, 1.1] and aug["rotate_deg"] == 15.0  # what the brief of this test says it uses
    shape = picked[0][1].shape
    sets = {
        EXACT: [a for _, a in picked],
        SHIFTED: [_shift(a, 1 + k % 2, 2 - k % 2) for k, (_, a) in enumerate(picked)],
        MIRRORED: [np.ascontiguousarray(a[..., ::-1]) for _, a in picked],
        AUGMENTED: [_augment(a, aug, rng, mode) for _, a in picked],
        NOISE: [rng.integers(0, 4, shape, dtype=np.uint8) for _ in range(N)],
        COLLAPSE: [fresh[0]] * N,
        EMPTY: [np.zeros(shape, np.uint8) for _ in range(N)],
        LV_OPEN: [_open_lv(a) for a in fresh],
        HOLES: [_hole(a) for a in fresh],
        FRESH: fresh,
    }
    folders = {name: _write_generated(root / f"sets_{mode}" / f"set{k}", arrays, geometry, mode)
               for k, (name, arrays) in enumerate(sets.items())}
    return {"mode": mode, "root": root, "train_names": [name for name, _ in train],
            "sources": [name for name, _ in picked], "folders": folders, "sets": sets}


@pytest.fixture(scope="module")
def results(data, tmp_path_factory):
    from CTDiffusionLib.evaluation import run_evaluation

    mode, root, folders = data["mode"], data["root"], data["folders"]
    out = tmp_path_factory.mktemp(f"reports_{mode}")
    cache = {}
    res = {name: run_evaluation(root / "real", folder, out / f"r{k}", train=root / "train", seed=0,
                                feature_steps=FEATURE_STEPS, reference_cache=cache)
           for k, (name, folder) in enumerate(folders.items())}
    table = os.environ.get("CTDIFFUSION_QUALITY_TABLE_MASKS")
    if table:
        path = Path(table)
        _write_table(path.with_name(f"{path.stem}-{mode}{path.suffix}"), res)
    return res


def _write_table(path: Path, res: dict) -> None:
    m = next(iter(res.values()))
    write_verdict_table(path, res, f"{m['mode'].upper()} ({'x'.join(map(str, m['grid_xyz']))}; {m['counts']['real']} "
                                   f"held-out and {m['counts']['train']} training samples): near-copy threshold "
                                   f"{m['memorisation']['threshold']:.4f} (aligned Dice); chance that a genuinely new "
                                   f"sample is flagged: {m['memorisation']['false_flag_chance']:.2g}.")


def _below(m, key) -> bool:
    e = m["summary"][key]
    return e["verdict"] == "fail" and e["generated"] is not None and e["generated"] < e["interval"][0]


def _above(m, key) -> bool:
    e = m["summary"][key]
    return e["verdict"] == "fail" and e["generated"] is not None and e["generated"] > e["interval"][1]


def test_generated_folders_read_back_as_written(data, results):
    mode = data["mode"]
    m = results[FRESH]
    assert m["profile"] == PROFILE and m["mode"] == mode and m["grid_xyz"] == list(GRID[mode]) + ([1] if mode == "2d" else [])
    assert m["counts"]["generated"] == N and m["counts"]["train"] > N
    for name, m in results.items():
        assert set(m["verdicts"]) == set(m["summary"]), name
        assert set(m["verdicts"].values()) <= {"ok", "fail"}, name
        for key, entry in m["summary"].items():
            assert entry["verdict"] == m["verdicts"][key]
            assert m["intervals"][key] == entry["interval"] and len(entry["interval"]) == 2, (name, key)
            assert entry["interval"][0] <= entry["interval"][1]


def test_fresh_real_gets_no_fail(results):
    m = results[FRESH]
    assert not failing_metrics(m), {k: (m["summary"][k]["generated"], m["summary"][k]["interval"]) for k in failing_metrics(m)}
    assert m["near_copies"] == [] and m["memorisation"]["status"] == "pass"
    assert m["verdict"] == "ok" and m["verdict_line"].startswith("OK")
    assert 0 < m["memorisation"]["false_flag_chance"] <= 0.01


def test_near_copy_null_is_made_of_new_patients(results):
    """The threshold comes from genuinely new anatomy: held-out patients, and training samples compared with the
    training samples of other patients only (not their own patient's other frame, or the neighbouring slices)."""
    memo = results[FRESH]["memorisation"]
    assert memo["train_leave_one_out_nearest"] and memo["heldout_nearest"]
    for row in memo["train_leave_one_out_nearest"]:
        assert _patient(row["name"]) != _patient(row["nearest_train"]), row
    assert memo["threshold"] < 1.0 and memo["n_null"] == len(memo["heldout_nearest"]) + len(
        memo["train_leave_one_out_nearest"])


def _patient(name: str) -> str:
    return name.split("_")[0]  # patient003_ED_s02 -> patient003


@pytest.mark.parametrize("name", COPIES)
def test_copies_of_training_samples_are_flagged_by_name(data, results, name):
    """Every copy's nearest training sample is the one it was made from, and the set is flagged. Exact, shifted and
    mirrored copies are each flagged; so are augmented 3D stacks. An augmented 2D slice is flagged unless it is the
    apical slice of its stack (no RV; an LV cavity of a few dozen voxels in its ring): nearest-neighbour zoom and
    rotation blur it below what a new patient's apical slice reaches against some training slice, so flagging it
    would flag new anatomy too."""
    mode, sources = data["mode"], data["sources"]
    m = results[name]
    assert "memorised_fraction" in failing_metrics(m) and m["memorisation"]["status"] == "flagged"
    assert _above(m, "nearest_train_similarity")
    names = [f"synthetic_{k:04d}" for k in range(1, N + 1)]
    assert [r["name"] for r in m["per_sample"]] == names
    assert [r["nearest_train"] for r in m["per_sample"]] == sources
    flagged = {c["sample"]: c for c in m["near_copies"]}
    for sample, source in zip(names, sources):
        if sample in flagged:
            assert flagged[sample]["train"] == source
            assert flagged[sample]["similarity"] > m["memorisation"]["threshold"]
    if name == AUGMENTED and mode == "2d":
        apical = {}  # case -> index of its last heart slice (the phantom's apex is at the end of the stack)
        for n in data["train_names"]:
            case, k = n.rsplit("_s", 1)
            apical[case] = max(apical.get(case, 0), int(k))
        for sample, source in zip(names, sources):
            case, k = source.rsplit("_s", 1)
            assert sample in flagged or int(k) == apical[case], (sample, source)
        assert len(flagged) > N // 2
    else:
        assert sorted(flagged) == names
    if name == EXACT:
        assert all(c["similarity"] == 1.0 for c in m["near_copies"])


def test_random_labels_fail_anatomy_and_likeness(results):
    m = results[NOISE]
    for key in ("plausibility_pass_rate", "check_one_component_per_structure", "check_lv_isolated",
                "nearest_train_similarity"):
        assert _below(m, key), key
    for key in ("lv_volume_w1", "myo_volume_w1", "rv_volume_w1", "frechet_distance", "mmd"):
        assert _above(m, key), key
    assert m["near_copies"] == [] and m["summary"]["plausibility_pass_rate"]["generated"] == 0.0


def test_collapse_fails_diversity_on_the_high_side(results):
    div = results[COLLAPSE]["summary"]["dice_diversity"]
    assert div["verdict"] == "fail" and div["generated"] > div["interval"][1]
    assert div["generated"] == pytest.approx(1.0, abs=1e-6)
    assert results[COLLAPSE]["near_copies"] == []  # a fresh phantom repeated: collapsed, but not memorised


def test_empty_masks_are_no_structure_found(results):
    m = results[EMPTY]
    assert _below(m, "structure_found_rate") and m["summary"]["structure_found_rate"]["generated"] == 0.0
    assert {"lv_volume_w1", "nearest_train_similarity", "frechet_distance", "mmd"} <= failing_metrics(m)
    lv = m["summary"]["check_lv_isolated"]  # no LV anywhere: the check applies to no sample, which fails
    assert lv["generated"] is None and lv["verdict"] == "fail"
    assert any(n.startswith(f"No heart structure found in {N} of {N} generated volumes") for n in m["notes"])
    assert all(r["found"] is False for r in m["per_sample"])


def test_lv_touching_background_fails_its_check(data, results):
    assert all(masks.plausibility_checks(a)["lv_isolated"] is False for a in data["sets"][LV_OPEN])  # the corruption took
    m = results[LV_OPEN]
    assert _below(m, "check_lv_isolated") and m["summary"]["check_lv_isolated"]["generated"] == 0.0
    assert _below(m, "plausibility_pass_rate")
    assert m["near_copies"] == []


def test_holes_in_the_lv_fail_their_check(data, results):
    assert all(masks.plausibility_checks(a)["no_holes_in_cavities"] is False for a in data["sets"][HOLES])
    m = results[HOLES]
    assert _below(m, "check_no_holes_in_cavities") and m["summary"]["check_no_holes_in_cavities"]["generated"] == 0.0
    assert _below(m, "plausibility_pass_rate")
    assert m["near_copies"] == []
