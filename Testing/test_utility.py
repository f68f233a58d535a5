"""The downstream benchmark (`ctdiffusion utility`, issue 27): adversarial synthetic sets, each asserting the
verdict, the refusal of leaked test files, and the statistics on tables whose answer is known.

Phantom pairs at 32x32x8 and a short segmenter run (ITERATIONS, 2 seeds) keep each benchmark to seconds on one core.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import phantom_pair_sets, run_cli

SIZE = "32x32x8"
ITERATIONS = 40
STRUCTURES = "bladder,femur,fat,muscle"  # the larger organs: a short run learns them well enough to compare arms


@pytest.fixture(scope="module")
def pair_sets(tmp_path_factory) -> dict:
    """Real training pairs, held-out real test pairs and fresh phantom pairs never trained on."""
    return phantom_pair_sets(tmp_path_factory.mktemp("pairs"), {"train": (4, 0), "test": (3, 1000), "fresh": (4, 500)}, SIZE)


def _benchmark(pair_sets, synthetic: Path, out: Path) -> dict:
    code = run_cli("utility", "--train", pair_sets["train"], "--synthetic", synthetic, "--test", pair_sets["test"],
                   "--out", out, "--seeds", 2, "--iterations", ITERATIONS, "--structures", STRUCTURES,
                   "--device", "cpu")
    assert code == 0  # whatever the verdict
    return json.loads((out / "utility.json").read_text())


def _noise_pairs(pair_sets, out: Path) -> Path:
    """Pure-noise CTs (no anatomy), each carrying the label map of another case (the fresh phantoms')."""
    from CTDiffusionLib.data.pairs import discover_pairs, read_pair, select_structures, write_nnunet_pairs

    cases = discover_pairs([pair_sets["fresh"]])
    structures = select_structures(cases)
    rng = np.random.default_rng(7)
    pairs = []
    for case in cases:
        ct, labels = read_pair(case, structures)
        noise = sitk.GetImageFromArray(rng.normal(0.0, 500.0, sitk.GetArrayViewFromImage(ct).shape).astype(np.int16))
        noise.CopyInformation(ct)
        pairs.append((f"noise_{case.case_id}", noise, labels))
    return write_nnunet_pairs(out, pairs, structures)


def _contract(result: dict) -> None:
    assert set(result["arms"]) == {"real", "synthetic", "real+synthetic"}
    for arm in result["arms"].values():
        lo, hi = arm["dice_ci95"]
        assert lo <= arm["dice"] <= hi
        assert set(arm["per_structure"]) == set(STRUCTURES.split(","))
        assert arm["hd95"] is None or arm["hd95"] >= 0
    assert result["verdict"] in ("helps", "no measurable gain", "hurts") and result["metric"] == "dice"
    assert result["segmenter"]["iterations"] == ITERATIONS and result["segmenter"]["seeds"] == [0, 1]
    assert result["counts"] == {"train": 4, "synthetic": 4, "synthetic_available": 4, "test": 3, "seeds": 2}
    assert (Path(result["figure"]).name == "utility_dice.png")


def test_noise_ct_with_borrowed_labels_is_far_below_real_and_does_not_help(pair_sets, tmp_path):
    result = _benchmark(pair_sets, _noise_pairs(pair_sets, tmp_path / "noise"), tmp_path / "out")
    _contract(result)
    assert (tmp_path / "out" / result["figure"]).is_file()
    real, synthetic = result["arms"]["real"]["dice"], result["arms"]["synthetic"]["dice"]
    assert synthetic < real - 0.2, (synthetic, real)
    assert result["arms"]["synthetic"]["dice_ci95"][1] < result["arms"]["real"]["dice_ci95"][0]
    assert result["verdict"] != "helps"


@pytest.fixture(scope="module")
def fresh_result(pair_sets, tmp_path_factory) -> tuple[dict, Path]:
    out = tmp_path_factory.mktemp("fresh") / "out"
    return _benchmark(pair_sets, pair_sets["fresh"], out), out


def test_fresh_phantom_pairs_score_like_real_ones_and_do_not_hurt(fresh_result):
    result, _ = fresh_result
    _contract(result)
    real, synthetic = result["arms"]["real"]["dice"], result["arms"]["synthetic"]["dice"]
    assert abs(synthetic - real) < 0.15, (synthetic, real)  # 4 cases each side: case sampling alone moves it
    assert result["verdict"] != "hurts"
    assert result["near_copies"] == []  # new phantoms are not copies of the training ones


def test_copies_of_the_training_pairs_are_named_as_copies(pair_sets, tmp_path):
    copies = shutil.copytree(pair_sets["train"], tmp_path / "copies")
    result = _benchmark(pair_sets, copies, tmp_path / "out")
    named = {c["synthetic"] for c in result["near_copies"]}
    assert named == set(result["cases"]["train"])  # every synthetic case is a copy of its training case
    assert all(c["train"] == c["synthetic"] and c["similarity"] >= 0.999 for c in result["near_copies"])
    assert "rests on copies" in result["verdict_line"]


@pytest.mark.parametrize("leak", ["same folder", "copied file"])
def test_test_files_that_are_training_files_are_refused(pair_sets, tmp_path, leak):
    if leak == "same folder":
        test = pair_sets["train"]
    else:  # a held-out folder with one training CT copied into it under a new name
        test = shutil.copytree(pair_sets["test"], tmp_path / "test")
        first = sorted((pair_sets["train"] / "imagesTr").iterdir())[0]
        target = sorted((test / "imagesTr").iterdir())[0]
        shutil.copyfile(first, target)
    out = tmp_path / "out"
    code = run_cli("utility", "--train", pair_sets["train"], "--synthetic", pair_sets["fresh"], "--test", test,
                   "--out", out, "--seeds", 2, "--iterations", ITERATIONS, "--device", "cpu")
    assert code == 2
    assert not out.exists()  # nothing half-written left behind


def test_evaluate_with_utility_shows_the_benchmark_in_the_report(pair_sets, fresh_result, tmp_path, monkeypatch):
    """`evaluate --utility DIR`: the arms, gain and verdict become a section of report.html and "utility" in
    metrics.json, with the figure beside the report's own; a path that holds no utility.json is refused (exit 2)."""
    result, utility_dir = fresh_result
    generated = tmp_path / "generated"  # the fresh CTs as one `generate` run would write them: one spacing
    generated.mkdir()
    for k, f in enumerate(sorted((pair_sets["fresh"] / "imagesTr").iterdir()), start=1):
        image = sitk.ReadImage(str(f))
        image.SetSpacing((14.5, 14.5, 8.125))
        sitk.WriteImage(image, str(generated / f"synthetic_{k:04d}.nii.gz"))
    monkeypatch.setenv("CTDIFFUSION_EVAL_FEATURE_STEPS", "5")
    common = ("evaluate", "--real", pair_sets["test"] / "imagesTr", "--generated", generated, "--train",
              pair_sets["train"] / "imagesTr", "--device", "cpu")
    assert run_cli(*common, "--out", tmp_path / "refused", "--utility", pair_sets["train"]) == 2
    assert not (tmp_path / "refused").exists()
    assert run_cli(*common, "--out", tmp_path / "report", "--utility", utility_dir) == 0
    metrics = json.loads((tmp_path / "report" / "metrics.json").read_text())
    assert metrics["utility"]["verdict_line"] == result["verdict_line"]
    page = (tmp_path / "report" / "report.html").read_text()
    assert "Downstream utility" in page and result["verdict"] in page and "real+synthetic" in page
    assert (tmp_path / "report" / metrics["utility"]["figure"]).is_file()


def test_progress_events_carry_an_eta_and_a_stop_request_ends_the_run(pair_sets, tmp_path, monkeypatch, capsys):
    """Like training: progress events with eta_s on stdout (--events), and OUT/stop-request stops the benchmark after
    the current iteration: exit 130, a 'stopped' done event, no utility.json."""
    from CTDiffusionLib.events import EventReader
    from CTDiffusionLib.utility import arms

    out = tmp_path / "out"
    step = arms.Progress.step

    def request_stop_during_iteration_5(progress, arm, seed, in_arm, arm_total):
        if progress.done == 4:
            (out / "stop-request").write_text("stop")  # what the Slicer module's Stop writes
        step(progress, arm, seed, in_arm, arm_total)

    monkeypatch.setattr(arms, "PROGRESS_EVERY_S", 0.0)
    monkeypatch.setattr(arms.Progress, "step", request_stop_during_iteration_5)
    code = run_cli("utility", "--train", pair_sets["train"], "--synthetic", pair_sets["fresh"], "--test",
                   pair_sets["test"], "--out", out, "--seeds", 2, "--iterations", ITERATIONS, "--device", "cpu",
                   "--events")
    assert code == 130
    events = EventReader().feed(capsys.readouterr().out)
    kinds = [e["event"] for e in events]
    assert kinds[0] == "start" and kinds[-1] == "done" and events[-1]["status"] == "stopped"
    progress = [e for e in events if e["event"] == "progress" and e.get("arm")]
    assert [e["step"] for e in progress] == [1, 2, 3, 4]  # the check after iteration 5 stopped it
    assert all(e["total"] == 2 * 3 * ITERATIONS and e["eta_s"] > 0 for e in progress)
    assert not (out / "utility.json").exists()


# ------------------------------------------------------------------------------------------ statistics alone
def _tables(gain: float, noise: float, seeds: int = 3, cases: int = 20, seed: int = 0):
    rng = np.random.default_rng(seed)
    case_effect = rng.uniform(0.5, 0.9, cases)  # hard and easy cases, shared by both arms (paired)
    real = case_effect + rng.normal(0, noise, (seeds, cases))
    return real + gain + rng.normal(0, noise, (seeds, cases)), real


@pytest.mark.parametrize("gain, expected", [(0.05, "helps"), (-0.05, "hurts"), (0.0, "no measurable gain")])
def test_verdict_follows_the_interval_of_the_paired_gain(gain, expected):
    from CTDiffusionLib.utility.statistics import gain as paired_gain

    with_synthetic, real = _tables(gain, noise=0.01)
    result = paired_gain(with_synthetic, real)
    assert result["verdict"] == expected
    lo, hi = result["ci95"]
    assert lo <= result["dice"] <= hi


def test_noise_alone_rarely_claims_a_gain():
    """Under no true gain the interval should exclude 0 in about 5% of experiments, not much more."""
    from CTDiffusionLib.utility.statistics import gain as paired_gain

    verdicts = [paired_gain(*_tables(0.0, noise=0.05, seed=s), draws=1000)["verdict"] for s in range(60)]
    assert verdicts.count("no measurable gain") >= 50, verdicts


def test_interval_widens_with_fewer_cases_and_covers_seed_spread():
    from CTDiffusionLib.utility.statistics import mean_and_interval

    _, wide = mean_and_interval(_tables(0.0, 0.05, cases=5)[1])
    _, narrow = mean_and_interval(_tables(0.0, 0.05, cases=80)[1])
    assert wide[1] - wide[0] > narrow[1] - narrow[0]
    # two seeds that disagree by 0.2 on every case: the interval must not be the width of one seed's spread
    table = np.vstack([np.full(30, 0.6), np.full(30, 0.8)]) + np.random.default_rng(1).normal(0, 0.001, (2, 30))
    mean, (lo, hi) = mean_and_interval(table)
    assert lo < 0.65 and hi > 0.75 and abs(mean - 0.7) < 1e-2


# ------------------------------------------------------------------------------------------ adherence
def test_adherence_scores_a_ct_that_follows_its_labels_near_the_real_reference(pair_sets):
    """Real test CTs against their own label maps score like the real-vs-real reference; the same CTs against their
    label maps turned front to back (a generator that put the organs elsewhere) score far below it."""
    from CTDiffusionLib.data.pairs import discover_pairs, read_pair
    from CTDiffusionLib.utility.adherence import fit_segmenter, reference_dice, structure_dice

    seg = fit_segmenter(pair_sets["train"], structures=STRUCTURES, iterations=ITERATIONS)
    reference = reference_dice(seg, pair_sets["test"])
    assert set(reference) == set(STRUCTURES.split(",")) and all(r["n_cases"] == 3 for r in reference.values())
    own, misplaced = [], []
    for case in discover_pairs([pair_sets["test"]]):
        ct, labels = read_pair(case, seg.structures)
        flipped = sitk.GetImageFromArray(sitk.GetArrayFromImage(labels)[:, ::-1].copy())
        flipped.CopyInformation(labels)
        own.append(structure_dice(seg, ct, labels))
        misplaced.append(structure_dice(seg, ct, flipped))
    large = ("fat", "muscle")  # a short run segments these reliably
    for name in large:
        assert abs(np.mean([d[name] for d in own]) - reference[name]["dice"]) < 1e-6  # the same measurement
    followed = np.mean([reference[n]["dice"] for n in large])
    assert np.mean([d[n] for d in misplaced for n in large]) < followed - 0.1, (misplaced, reference)


# ------------------------------------------------------------------------------------------ cardiac masks
def _generated_like(acdc: Path, out: Path, wrong_group: bool) -> Path:
    """Phantom masks written as `generate` writes a group-conditioned 3D model's output: stacks on one grid with a
    sidecar naming the group each was asked for; `wrong_group` asks for the next group instead (a model that ignores
    its condition)."""
    from CTDiffusionLib.data.discovery import ACDC_GROUPS, discover_cases, read_case
    from CTDiffusionLib.data.preprocess import masks_to_grid, reorient
    from CTDiffusionLib.data.volume_io import Geometry, array_to_image, write_image
    from CTDiffusionLib.profiles import CARDIAC_MASKS

    out.mkdir()
    geometry = Geometry((1.5, 1.5, 10.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    for k, case in enumerate(discover_cases([str(acdc)], CARDIAC_MASKS), start=1):
        group = case.conditions["group"]
        if wrong_group:
            group = ACDC_GROUPS[(ACDC_GROUPS.index(group) + 1) % len(ACDC_GROUPS)]
        (stack,) = masks_to_grid(reorient(read_case(case, CARDIAC_MASKS)), (32, 32, 8), "3d")
        write_image(array_to_image(stack, geometry), out / f"synthetic_{k:04d}.nii.gz")
        (out / f"synthetic_{k:04d}.json").write_text(json.dumps(
            {"profile": "cardiac-masks", "mode": "3d", "condition": {"group": group}}))
    return out


def test_pathology_classifier_is_well_above_chance_and_catches_masks_of_the_wrong_group(tmp_path, monkeypatch):
    """Real masks: the classifier trained on real masks beats chance (0.2) by far. Generated masks that show another
    group than the one asked for: the conditioning accuracy falls far below the real accuracy, and as training data
    (wrong labels) they do not help."""
    from CTDiffusionLib.evaluation import novelty

    # the near-copy search is this run's slowest part and not what the test checks (the CT tests do): align each
    # mask to its 3 nearest training masks by signature instead of 12
    monkeypatch.setattr(novelty.AlignedSearch, "PREFILTER", 3)
    for name, num, seed in (("train", 15, 0), ("test", 10, 1000), ("fresh", 5, 500)):
        assert run_cli("phantoms", "--profile", "cardiac-masks", "--num", num, "--seed", seed, "--size", "64x64x8",
                       "--out", tmp_path / name) == 0
    synthetic = _generated_like(tmp_path / "fresh", tmp_path / "generated", wrong_group=True)
    assert run_cli("utility", "--train", tmp_path / "train", "--synthetic", synthetic, "--test", tmp_path / "test",
                   "--out", tmp_path / "out", "--seeds", 2, "--device", "cpu") == 0
    result = json.loads((tmp_path / "out" / "utility.json").read_text())
    assert result["metric"] == "accuracy" and result["counts"]["test_patients"] == 10
    real = result["arms"]["real"]["accuracy"]
    assert real > 0.45, result["arms"]["real"]
    conditioning = result["conditioning"]
    assert set(conditioning["per_group"]) == {"NOR", "MINF", "DCM", "HCM", "RV"}
    assert conditioning["accuracy"] < real - 0.25, (conditioning, real)
    assert result["verdict"] != "helps"
    assert (tmp_path / "out" / result["figure"]).is_file()
