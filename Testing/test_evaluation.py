"""Quality metrics behave: identical sets score identical, noise/blur move the expected metric, mode collapse and
memorised copies are caught, implausible masks fail the right check, and the CLI writes the report.

Tiny phantoms (32x32x8 CT, 48x48x6 masks) and a few feature-network steps keep this file CPU-cheap.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from CTDiffusionLib.data.discovery import discover_cases, read_case
from CTDiffusionLib.data.phantoms import write_phantom_dataset
from CTDiffusionLib.data.preprocess import ct_to_grid, masks_to_grid
from CTDiffusionLib.evaluation import ct_realism, masks, novelty
from CTDiffusionLib.evaluation.distances import frechet_distance, median_bandwidth, mmd2
from CTDiffusionLib.evaluation.diversity import pair_values, within_set_matrix
from CTDiffusionLib.evaluation.similarity import ForegroundDice, InPlaneMSSSIM, ms_ssim_scales

ROOT = Path(__file__).resolve().parents[1]
CT_GRID = (32, 32, 8)
MASK_GRID = (48, 48, 6)  # at 32x32 nearest-neighbour downsampling breaks thin (DCM) walls
FEATURE_STEPS = 8


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    """Tiny convolutions on a shared 2-core machine: one thread avoids OpenMP oversubscription (restored after)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def write_generated(folder: Path, arrays: list, *, profile: str, spacing=(1.5, 1.5, 2.5), conditions=None) -> Path:
    """A folder as `ctdiffusion generate` writes it: synthetic_0001.nii.gz + synthetic_0001.json ..."""
    folder.mkdir(parents=True, exist_ok=True)
    for k, arr in enumerate(arrays, start=1):
        dtype = np.uint8 if profile == "cardiac-masks" else np.int16
        img = sitk.GetImageFromArray(np.round(arr).astype(dtype))
        img.SetSpacing(spacing)
        sitk.WriteImage(img, str(folder / f"synthetic_{k:04d}.nii.gz"))
        side = {"file": f"synthetic_{k:04d}.nii.gz", "index": k, "seed": k, "sampler": "dpm++", "steps": 25,
                "model_sha256": "0" * 64, "profile": profile, "mode": "2d" if arr.shape[0] == 1 else "3d",
                "condition": conditions[k - 1] if conditions else None, "guidance_scale": 3.0 if conditions else None}
        (folder / f"synthetic_{k:04d}.json").write_text(json.dumps(side))
    return folder


@pytest.fixture(scope="module")
def ct_data(tmp_path_factory):
    """8 CT phantoms: 4 held-out ('real'), 4 training; plus their arrays on the CT grid."""
    root = tmp_path_factory.mktemp("ct")
    write_phantom_dataset("prostate-ct", 8, root / "all", seed=3, size_xyz=(40, 40, 8))
    files = sorted((root / "all").glob("*.nii.gz"))
    for sub, chunk in (("real", files[:4]), ("train", files[4:])):
        (root / sub).mkdir()
        for f in chunk:
            (root / sub / f.name).symlink_to(f)
    grid = {sub: [ct_to_grid(sitk.ReadImage(str(f)), CT_GRID) for f in sorted((root / sub).glob("*.nii.gz"))]
            for sub in ("real", "train")}
    return root, grid


@pytest.fixture(scope="module")
def mask_data(tmp_path_factory):
    """10 ACDC-layout phantom patients (20 ED/ES cases): patients 1-5 held out, 6-10 training."""
    root = tmp_path_factory.mktemp("masks")
    write_phantom_dataset("cardiac-masks", 10, root / "all", seed=5, size_xyz=(64, 64, 6))
    patients = sorted(p for p in (root / "all").iterdir() if p.is_dir())
    for sub, chunk in (("real", patients[:5]), ("train", patients[5:])):
        (root / sub).mkdir()
        for p in chunk:
            p.rename(root / sub / p.name)
    cases = discover_cases([root / "real"], "cardiac-masks")
    arrays = [masks_to_grid(read_case(c, "cardiac-masks"), MASK_GRID, "3d")[0] for c in cases]
    return root, cases, arrays


# ------------------------------------------------------------------------------------------ CT realism metrics


def test_noised_copy_raises_noise_and_histogram_distance(ct_data):
    _, grid = ct_data
    real = grid["real"]
    rng = np.random.default_rng(0)
    noised = [v + rng.normal(0, 40, v.shape).astype(np.float32) for v in real]
    m_real = [ct_realism.body_mask(v) for v in real]
    m_noised = [ct_realism.body_mask(v) for v in noised]
    h_real = ct_realism.hu_histogram(real, m_real)
    assert ct_realism.histogram_w1(h_real, ct_realism.hu_histogram(real, m_real)) == pytest.approx(0.0, abs=1e-9)
    assert ct_realism.histogram_w1(h_real, ct_realism.hu_histogram(noised, m_noised)) > 5.0
    for v, n, mv, mn in zip(real, noised, m_real, m_noised):
        assert ct_realism.high_frequency_share(n) > ct_realism.high_frequency_share(v) * 1.2
        assert ct_realism.tissue_contrast(n, mn) > ct_realism.tissue_contrast(v, mv)


def test_blurred_copy_lowers_high_frequency_share_and_ms_ssim(ct_data):
    _, grid = ct_data
    real = grid["real"]
    blurred = [ndimage.gaussian_filter(v, (0, 1.0, 1.0)) for v in real]
    for v, b in zip(real, blurred):
        assert ct_realism.high_frequency_share(b) < 0.5 * ct_realism.high_frequency_share(v)
    sim = InPlaneMSSSIM(CT_GRID[1], CT_GRID[0])
    a, b = sim.prepare(real), sim.prepare(blurred)
    pairs = [(i, i) for i in range(len(real))]
    same = sim.pairs(a, a, pairs)
    assert np.allclose(same, 1.0, atol=1e-5)
    assert (sim.pairs(a, b, pairs) < 0.99).all()


def test_glcm_texture_changes_with_noise(ct_data):
    _, grid = ct_data
    v = grid["real"][0]
    m = ct_realism.body_mask(v)
    noised = v + np.random.default_rng(1).normal(0, 40, v.shape)
    clean, noisy = ct_realism.glcm_features(v, m), ct_realism.glcm_features(noised, m)
    assert noisy["glcm_contrast"] > clean["glcm_contrast"]
    assert noisy["glcm_homogeneity"] < clean["glcm_homogeneity"]


def test_fat_muscle_contrast_sees_the_subcutaneous_fat_on_any_grid():
    """An elliptic body of muscle (+40 HU) with a fat layer (-90 HU) under the skin: the deep-minus-subcutaneous
    median is the fat/muscle difference at any grid size; without the fat layer it is 0, and blurring the fat-free
    body into the air (partial volume at the skin) does not fake it."""
    for size in (48, 128):
        yy, xx = np.mgrid[:size, :size] / size - 0.5
        r = np.sqrt((xx / 0.45) ** 2 + (yy / 0.3) ** 2)
        body = np.where(r < 1, 40.0, -1000.0)
        with_fat = np.where((r < 1) & (r > 0.8), -90.0, body)
        for arr, expected in ((with_fat, 130.0), (body, 0.0)):
            vol = np.repeat(arr[None], 4, axis=0).astype(np.float32)
            assert ct_realism.fat_muscle_contrast(vol, ct_realism.body_mask(vol)) == pytest.approx(expected), size
        soft_edge = ndimage.gaussian_filter(np.repeat(body[None], 4, axis=0), (0, 1.0, 1.0)).astype(np.float32)
        assert abs(ct_realism.fat_muscle_contrast(soft_edge, ct_realism.body_mask(soft_edge))) < 20.0
    empty = np.full((2, 16, 16), -1000.0, np.float32)
    assert np.isnan(ct_realism.fat_muscle_contrast(empty, ct_realism.body_mask(empty)))


@pytest.mark.parametrize("shape", [(26, 64, 64), (26, 112, 112), (8, 32, 32), (12, 48, 48), (1, 64, 64)])
def test_ms_ssim_fits_26_slice_and_tiny_volumes(shape):
    rng = np.random.default_rng(0)
    base = ndimage.gaussian_filter(rng.normal(0, 300, shape), (0, 2, 2)).astype(np.float32)
    other = base + rng.normal(0, 100, shape).astype(np.float32)
    sim = InPlaneMSSSIM(shape[1], shape[2])
    assert sim.scales == ms_ssim_scales(shape[1], shape[2]) >= 2
    a, b = sim.prepare([base]), sim.prepare([other])
    assert sim.pairs(a, a, [(0, 0)])[0] == pytest.approx(1.0, abs=1e-5)
    assert 0.0 < sim.pairs(a, b, [(0, 0)])[0] < 0.99


def test_mode_collapse_shows_in_ms_ssim_and_dice(ct_data, mask_data):
    _, grid = ct_data
    sim = InPlaneMSSSIM(CT_GRID[1], CT_GRID[0])
    real_div = pair_values(within_set_matrix(sim, grid["real"])).mean()
    collapsed_div = pair_values(within_set_matrix(sim, [grid["real"][0]] * 4)).mean()
    assert collapsed_div == pytest.approx(1.0, abs=1e-5)
    assert collapsed_div > real_div + 0.02
    _, _, arrays = mask_data
    dice = ForegroundDice()
    real_d = pair_values(within_set_matrix(dice, arrays)).mean()
    assert pair_values(within_set_matrix(dice, [arrays[0]] * 5)).mean() == pytest.approx(1.0)
    assert real_d < 0.95


def test_dice_leaves_out_structures_absent_from_both():
    """Two apical slices without RV: their similarity is that of LV and MYO, not lifted by a free 1 for the RV."""
    a = np.zeros((1, 16, 16), np.uint8)
    a[0, 4:12, 4:12] = masks.MYO
    a[0, 6:10, 6:10] = masks.LV
    b = a.copy()
    b[0, 4, 4:12] = 0  # one row of myocardium less
    dice = ForegroundDice()
    myo = 2 * (b == masks.MYO).sum() / ((a == masks.MYO).sum() + (b == masks.MYO).sum())
    assert dice.pairs(dice.prepare([a]), dice.prepare([b]), [(0, 0)])[0] == pytest.approx((myo + 1.0) / 2)
    with_rv = b.copy()
    with_rv[0, 13, 4:8] = masks.RV  # RV in one of them only: it counts, with Dice 0
    assert dice.pairs(dice.prepare([a]), dice.prepare([with_rv]), [(0, 0)])[0] == pytest.approx((myo + 1.0) / 3)
    empty = np.zeros_like(a)
    assert dice.matrix(dice.prepare([empty, a]), dice.prepare([empty, a])).tolist() == [[1.0, 0.0], [0.0, 1.0]]


def test_cases_stored_in_another_voxel_order_are_compared_in_model_order(tmp_path):
    """Training reorients every case to LPS before gridding; the evaluation does the same with real, training and
    generated volumes, so a case stored in RAS order is not compared mirrored in x and y."""
    from CTDiffusionLib.evaluation.inputs import load_cases, load_generated

    write_phantom_dataset("prostate-ct", 1, tmp_path / "lps", seed=4, size_xyz=(40, 40, 8))
    (tmp_path / "ras").mkdir()
    src = next((tmp_path / "lps").glob("*.nii.gz"))
    ras = sitk.DICOMOrient(sitk.ReadImage(str(src)), "RAS")
    sitk.WriteImage(ras, str(tmp_path / "ras" / src.name))
    arr = ct_to_grid(sitk.ReadImage(str(src)), CT_GRID)
    assert not np.array_equal(sitk.GetArrayFromImage(ras), sitk.GetArrayFromImage(sitk.ReadImage(str(src))))
    gen = load_generated(write_generated(tmp_path / "gen", [arr], profile="prostate-ct"))
    for folder in ("lps", "ras"):
        (case,) = load_cases(tmp_path / folder, gen, "--real")
        assert np.allclose(case.array, arr, atol=1e-3), folder
    (tmp_path / "gen_ras").mkdir()
    sitk.WriteImage(sitk.DICOMOrient(sitk.ReadImage(str(tmp_path / "gen" / "synthetic_0001.nii.gz")), "RAS"),
                    str(tmp_path / "gen_ras" / "synthetic_0001.nii.gz"))
    assert np.array_equal(load_generated(tmp_path / "gen_ras", "prostate-ct").samples[0].array, gen.samples[0].array)


# ------------------------------------------------------------------------------------------ distances, novelty


def test_frechet_and_mmd_are_zero_for_identical_sets_and_grow_with_shift():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(12, 64))
    bw = median_bandwidth(a)
    assert frechet_distance(a, a.copy()) == pytest.approx(0.0, abs=1e-6)
    assert mmd2(a, a.copy(), bw) == pytest.approx(0.0, abs=1e-12)
    shifted = a + 0.5
    assert frechet_distance(a, shifted) > 10.0
    assert mmd2(a, shifted, bw) > 0.01


def test_memorisation_threshold_and_flags():
    rng = np.random.default_rng(0)
    heldout = 1.0 - np.exp(rng.normal(np.log(0.1), 0.3, size=40))  # new volumes: similarity ~0.9
    fit = novelty.memorisation_threshold(heldout)
    thr = fit["threshold"]
    assert thr >= heldout.max()  # never below the closest genuinely new volume
    assert fit["false_flag_chance"] == pytest.approx(novelty.FALSE_FLAG_RATE, rel=0.01) or thr == heldout.max()
    flags = novelty.flag(np.array([0.85, thr, (thr + 1) / 2, 1.0]), thr)
    assert flags.tolist() == [False, False, True, True]
    assert novelty.flag(np.array([1.0]), 1.0).tolist() == [True]  # exact copies always flagged
    assert novelty.gate_sentence("pass", [], 3, thr, 0.001).startswith("PASS: no sample is a near-copy")
    assert novelty.gate_sentence("flagged", ["synthetic_0002"], 3, thr, 0.001).startswith("FLAGGED:")


def test_floor_interval_and_verdict_rule():
    from CTDiffusionLib.evaluation import floors

    null = list(np.linspace(0.0, 1.0, 1001))
    lo, hi = floors.interval(null, 0.05, "two-sided")
    assert lo == pytest.approx(0.025) and hi == pytest.approx(0.975)
    assert floors.interval(null, 0.05, "upper") == pytest.approx((0.0, 0.95))
    assert floors.verdict(0.99, (lo, hi), "upper") == "fail"
    assert floors.verdict(0.01, (lo, hi), "upper") == "ok"
    assert floors.verdict(0.01, (lo, hi), "two-sided") == "fail"
    assert floors.verdict(None, (lo, hi), "upper") == "fail"  # cannot be computed (e.g. no body found)
    summary = {"a": floors.judgement(0.5, null, "upper"), "b": floors.judgement(2.0, null, "two-sided")}
    floors.finalise(summary)
    assert summary["a"]["verdict"] == "ok" and summary["b"]["verdict"] == "fail"
    assert summary["a"]["interval_level"] == pytest.approx(1 - 0.05 / 2)  # family-wise over both metrics
    assert summary["a"]["interval_95"] == pytest.approx([0.025, 0.975])
    split = floors.make_split(12, 5, 10, seed=0)  # more generated than the pool allows: subsampled at equal n
    assert (split.n_gen, split.n_ref) == (5, 5) and len(split.gen_draws) == floors.DRAWS
    for a, b in split.null:
        assert len(a) == 5 and len(b) == 5 and not set(a) & set(b)


# ------------------------------------------------------------------------------------------ mask plausibility


def test_real_phantom_masks_pass_every_check(mask_data):
    root, cases, arrays = mask_data
    for arr in arrays:
        checks = masks.plausibility_checks(arr)
        assert masks.passes(checks), checks
        assert all(v is True for v in checks.values()), checks
    # 2D-slice mode: the phantom's RV ellipse leaves slivers near the apex that are one body in 3D but can be
    # separate pieces on a single slice, so only the one-component check may fail there (and rarely)
    slices = [s[None] for case in cases for s in masks_to_grid(read_case(case, "cardiac-masks"), MASK_GRID[:2], "2d")]
    results = [masks.plausibility_checks(s) for s in slices]
    for r in results:
        assert all(v is not False for k, v in r.items() if k != "one_component_per_structure"), r
    assert masks.pass_rates(results)["all"] >= 0.7


def _mid(arr):
    zs = np.where((arr == masks.LV).any(axis=(1, 2)))[0]
    return zs[len(zs) // 2]


def test_corrupted_masks_fail_the_right_check(mask_data):
    _, _, arrays = mask_data
    good = arrays[0]
    z = _mid(good)

    touching = good.copy()  # myocardium removed on the side away from the RV: LV touches background
    lv_y, lv_x = np.where(touching[z] == masks.LV)
    ring = (touching[z] == masks.MYO) & (np.arange(touching.shape[2])[None, :] > lv_x.max() - 1)
    touching[z][ring] = 0
    res = masks.plausibility_checks(touching)
    assert res["lv_isolated"] is False and res["myo_ring_on_mid_slices"] is False

    split = good.copy()  # a stray LV island far from the heart
    split[z, 0:2, 0:2] = masks.LV
    res = masks.plausibility_checks(split)
    assert res["one_component_per_structure"] is False
    assert res["no_holes_in_cavities"] is True

    holed = good.copy()  # a hole in the LV cavity
    cy, cx = int(lv_y.mean()), int(lv_x.mean())
    holed[z, cy, cx] = 0
    res = masks.plausibility_checks(holed)
    assert res["no_holes_in_cavities"] is False
    assert res["one_component_per_structure"] is True

    detached = good.copy()  # RV moved away from the myocardium
    rv_slices = (detached == masks.RV).any(axis=(1, 2))
    detached[detached == masks.RV] = 0
    detached[rv_slices, 0:2, 0:3] = masks.RV
    res = masks.plausibility_checks(detached)
    assert res["rv_adjacent_to_myo"] is False
    assert res["lv_isolated"] is True

    assert masks.passes(masks.plausibility_checks(good))
    rates = masks.pass_rates([masks.plausibility_checks(a) for a in (good, touching, split, holed)])
    assert rates["all"] == pytest.approx(0.25)


# ------------------------------------------------------------------------------------------ whole pipeline


def test_masks_pipeline_identical_sets_and_per_condition(tmp_path, mask_data):
    from CTDiffusionLib.evaluation import run_evaluation
    from CTDiffusionLib.evaluation.features import build_feature_space

    root, cases, arrays = mask_data
    gen = write_generated(tmp_path / "gen", arrays, profile="cardiac-masks",
                          conditions=[dict(c.conditions) for c in cases])
    out = tmp_path / "report"
    m = run_evaluation(root / "real", gen, out, train=root / "train", seed=0, feature_steps=FEATURE_STEPS)
    s = m["summary"]
    assert m["profile"] == "cardiac-masks" and m["mode"] == "3d"
    assert s["plausibility_pass_rate"]["generated"] == s["plausibility_pass_rate"]["real_floor"] == 1.0
    assert s["dice_diversity"]["generated"] == pytest.approx(s["dice_diversity"]["real_value"])
    for key in ("lv_volume_w1", "rv_volume_w1", "myo_volume_w1", "frechet_distance", "mmd"):
        assert s[key]["generated"] == pytest.approx(0.0, abs=1e-6), key
        assert s[key]["real_floor"] > 0, key
    assert m["memorisation"]["status"] == "pass"
    assert m["verdict"] == "ok", {k: v for k, v in m["verdicts"].items() if v == "fail"}  # the real set itself
    assert "self-trained" in m["feature_network"]
    # per-condition breakdown: one row per (group, phase) that the sidecars carry
    keys = {",".join(f"{k}={v}" for k, v in sorted(c.conditions.items())) for c in cases}
    assert set(m["per_condition"]) == keys
    row = next(iter(m["per_condition"].values()))
    assert row["n_generated"] == row["n_real"] >= 1
    assert row["pass_rate_generated"] == 1.0
    on_disk = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    assert on_disk["per_condition"].keys() == m["per_condition"].keys()
    assert "Per condition" in (out / "report.html").read_text(encoding="utf-8")
    # the saved feature network can be supplied back by path
    _, desc = build_feature_space(arrays[:3], "cardiac-masks", weights=out / "feature_net.safetensors")
    assert "user-supplied" in desc


def test_cli_end_to_end_flags_copies_of_training_cases(tmp_path, ct_data):
    root, grid = ct_data
    gen = write_generated(tmp_path / "gen", grid["train"][:3], profile="prostate-ct")
    run = tmp_path / "run"
    run.mkdir()
    (run / "events.jsonl").write_text("\n".join(json.dumps(e) for e in [
        {"event": "progress", "phase": "train", "step": s, "total": 20, "loss": 1.0 / s} for s in range(1, 21)]
        + [{"event": "progress", "phase": "validate", "step": 20, "epoch": 1, "val_loss": 0.1}]) + "\n")
    out = tmp_path / "report"
    env = {**os.environ, "CTDIFFUSION_EVAL_FEATURE_STEPS": str(FEATURE_STEPS), "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "CTDiffusionLib", "evaluate", "--real", str(root / "real"),
                           "--generated", str(gen), "--train", str(root / "train"), "--out", str(out),
                           "--run", str(run), "--device", "cpu", "--events"],
                          capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    events = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert [e["event"] for e in events][0] == "start" and events[-1]["event"] == "done"
    assert any(e["event"] == "progress" and e["phase"] == "evaluate" for e in events)
    m = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    assert sorted(m["memorisation"]["flagged"]) == ["synthetic_0001", "synthetic_0002", "synthetic_0003"]
    assert all(r["memorised"] and r["nearest_similarity"] == pytest.approx(1.0, abs=1e-5) for r in m["per_sample"])
    assert {r["nearest_train"] for r in m["per_sample"]} == {c.case_id for c in discover_cases([root / "train"],
                                                                                               "prostate-ct")[:3]}
    for key in ("profile", "feature_network", "summary", "per_sample", "memorisation", "figures"):
        assert key in m
    for entry in m["summary"].values():
        assert {"generated", "real_floor", "better", "description"} <= set(entry)
    assert m["summary"]["hu_histogram_w1"]["real_floor"] is not None
    html = (out / "report.html").read_text(encoding="utf-8")
    assert "FLAGGED" in html.split("<h2>")[0]  # the gate is stated at the top
    assert "figures/loss_curves.png" in m["figures"]
    for fig in m["figures"]:
        assert (out / fig).stat().st_size > 1000 and fig in html
    assert (out / "events.jsonl").exists()


def test_cli_empty_generated_folder_exits_2(tmp_path, capsys):
    from CTDiffusionLib.cli import main

    (tmp_path / "empty").mkdir()
    (tmp_path / "real").mkdir()
    out = tmp_path / "report"
    code = main(["evaluate", "--real", str(tmp_path / "real"), "--generated", str(tmp_path / "empty"),
                 "--out", str(out)])
    assert code == 2
    err = capsys.readouterr().err
    assert "--generated" in err and "empty" in err and "contains no volumes" in err
    assert not out.exists()  # nothing half-written left behind
