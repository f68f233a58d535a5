"""The per-structure part of the quality report for a paired run's output (CT + label pairs in the nnU-Net raw
layout, what `generate --from-labels` / `--num` on a paired run writes): HU per structure, adherence (a segmenter
trained on the real training pairs), and near-copies of training label maps, in metrics.json and report.html.

The "generated" sets here are phantom pairs standing in for a model's output, so every answer is known: fresh phantoms
are new, real-looking pairs; a training pair written again (as is, or mirrored) is a copy; a CT whose bone was
painted over with soft tissue does not follow its label map."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import run_cli

STRUCTURES = "prostate,bladder,bone=femur+hip_bone+sacrum"
SIZE = (48, 48, 12)


def _write_phantoms(out: Path, num: int, seed: int) -> Path:
    from CTDiffusionLib.data.phantoms import write_phantom_dataset

    return write_phantom_dataset("prostate-ct", num, out, seed=seed, size_xyz=SIZE, with_labels=True)


def _pairs(folder: Path) -> tuple[list, list]:
    """(structures, [(case_id, CT, label map)]) of a phantom pairs folder, with STRUCTURES selected."""
    from CTDiffusionLib.data.pairs import discover_pairs, read_pair, select_structures

    cases = discover_pairs(folder)
    structures = select_structures(cases, STRUCTURES)
    return structures, [(c.case_id, *read_pair(c, structures)) for c in cases]


def _write_generated(out: Path, pairs: list, structures: list, from_labels: bool = False) -> Path:
    """Pairs written as `generate` writes them (nnU-Net raw layout + sidecars)."""
    from CTDiffusionLib.data.pairs import write_nnunet_pairs

    write_nnunet_pairs(out, pairs, structures)
    (out / "sidecars").mkdir()
    for case_id, _, _ in pairs:
        side = {"case": case_id, "profile": "prostate-ct", "seed": 0}
        if from_labels:
            side["from_labels"] = f"/somewhere/{case_id}.nii.gz"
        (out / "sidecars" / f"{case_id}.json").write_text(json.dumps(side))
    return out


@pytest.fixture(scope="module")
def sets(tmp_path_factory) -> dict:
    """Training and held-out phantom pairs, and a 'generated' set: two fresh phantoms, a training pair as it is and
    the same training pair mirrored left-right (what a flip augmentation would show the model)."""
    root = tmp_path_factory.mktemp("structure_report")
    train, heldout = _write_phantoms(root / "train", 6, 0), _write_phantoms(root / "heldout", 4, 1000)
    structures, train_pairs = _pairs(train)
    _, fresh = _pairs(_write_phantoms(root / "fresh", 2, 5000))
    copy_id, ct, labels = train_pairs[1]
    mirrored = (sitk.Flip(ct, [True, False, False]), sitk.Flip(labels, [True, False, False]))
    for image in mirrored:
        image.CopyInformation(ct)
    generated = [(f"fresh_{k}", c, lab) for k, (_, c, lab) in enumerate(fresh)]
    generated += [("copy", ct, labels), ("mirrored_copy", *mirrored)]
    return {"train": train, "heldout": heldout, "structures": structures, "copied": copy_id,
            "generated": _write_generated(root / "generated", generated, structures), "root": root,
            "generated_pairs": generated}


def _report(sets, generated: Path, adherence: bool):
    from CTDiffusionLib.evaluation.paired_inputs import load_paired_inputs
    from CTDiffusionLib.evaluation.structure_report import structure_report

    gen, _, _, paired = load_paired_inputs(sets["heldout"], generated, sets["train"], None, None)
    return structure_report(paired, gen, adherence=adherence)


def test_a_copied_training_label_map_is_flagged_and_fresh_ones_are_not(sets):
    section, summary, rows = _report(sets, sets["generated"], adherence=False)
    assert section["adherence"]["status"] == "not_checked"  # switched off: no segmenter trained
    memo = section["label_memorisation"]
    assert memo["status"] == "flagged"
    assert sorted(memo["flagged"]) == ["copy", "mirrored_copy"]
    assert {c["train"] for c in memo["near_copies"]} == {sets["copied"]}
    # the threshold comes from real-vs-real label maps (held-out + leave-one-out training), as the CT check's does
    assert memo["n_null"] == 4 + 6 and 0 < memo["threshold"] < 1
    assert not rows["fresh_0"]["label_memorised"] and not rows["fresh_1"]["label_memorised"]
    assert rows["fresh_0"]["label_nearest_similarity"] <= memo["threshold"]
    assert rows["copy"]["label_memorised"] and rows["copy"]["label_nearest_train"] == sets["copied"]
    assert summary["label_map_memorised_fraction"]["generated"] == pytest.approx(0.5)
    assert summary["label_map_memorised_fraction"]["verdict"] == "fail"


def test_label_maps_given_with_from_labels_are_not_checked_as_generated(sets, tmp_path):
    generated = _write_generated(tmp_path / "given", sets["generated_pairs"], sets["structures"], from_labels=True)
    section, summary, rows = _report(sets, generated, adherence=False)
    assert section["label_memorisation"]["status"] == "not_checked"
    assert "given" in section["label_memorisation"]["reason"]
    assert sorted(section["given_label_maps"]) == ["copy", "fresh_0", "fresh_1", "mirrored_copy"]
    assert summary == {} and rows == {}


def test_a_ct_that_ignores_its_bone_labels_fails_hu_and_adherence_for_bone(sets, tmp_path):
    """Real phantom CTs follow their labels: every structure passes. The same CTs with the bone painted over with
    muscle-like HU fail bone's HU and bone's Dice, and only bone's."""
    _, fresh = _pairs(_write_phantoms(tmp_path / "fresh", 4, 7000))
    good, _, _ = _report(sets, _write_generated(tmp_path / "good", fresh, sets["structures"]), adherence=True)
    boneless = []
    for case_id, ct, labels in fresh:
        hu = sitk.GetArrayFromImage(ct).astype(np.int16)
        hu[sitk.GetArrayFromImage(labels) == 3] = 45  # bone (value 3) -> muscle HU
        painted = sitk.GetImageFromArray(hu)
        painted.CopyInformation(ct)
        boneless.append((case_id, painted, labels))
    bad, _, _ = _report(sets, _write_generated(tmp_path / "bad", boneless, sets["structures"]), adherence=True)
    for name in ("prostate", "bladder", "bone"):
        assert good["hu"]["per_structure"][name]["verdict"] == "ok", name
        assert good["adherence"]["per_structure"][name]["verdict"] == "ok", name
    assert bad["hu"]["per_structure"]["bone"]["verdict"] == "fail"
    assert bad["hu"]["per_structure"]["bone"]["generated"]["median"] == 45
    assert bad["adherence"]["per_structure"]["bone"]["verdict"] == "fail"
    assert bad["adherence"]["per_structure"]["bone"]["generated"] < good["adherence"]["per_structure"]["bone"]["generated"]
    for name in ("prostate", "bladder"):
        assert bad["hu"]["per_structure"][name]["verdict"] == "ok", name
    reference = good["adherence"]["per_structure"]["bone"]
    assert reference["reference_n_cases"] == 4 and len(reference["reference_ci95"]) == 2


def test_evaluate_on_pairs_writes_the_structure_section(sets, tmp_path, monkeypatch):
    from CTDiffusionLib.evaluation.structure_table import COLUMNS, structure_rows

    monkeypatch.setenv("CTDIFFUSION_EVAL_FEATURE_STEPS", "5")
    out = tmp_path / "report"
    assert run_cli("evaluate", "--real", sets["heldout"], "--train", sets["train"], "--generated", sets["generated"],
                   "--out", out, "--device", "cpu") == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["counts"] == {"generated": 4, "real": 4, "train": 6}
    section = metrics["structures"]
    assert [s["name"] for s in section["structures"]] == ["prostate", "bladder", "bone"]
    assert section["adherence"]["status"] == "measured"
    assert sorted(section["label_memorisation"]["flagged"]) == ["copy", "mirrored_copy"]
    assert metrics["verdicts"]["label_map_memorised_fraction"] == "fail"
    rows = structure_rows(metrics)
    assert [r["structure"] for r in rows] == ["prostate", "bladder", "bone"]
    assert all(r["hu_generated"] != "\u2013" and r["dice_real"] != "\u2013" for r in rows)
    page = (out / "report.html").read_text()
    assert "Per structure" in page and "Label maps: FLAGGED: 2 of 4" in page
    for _key, title in COLUMNS:
        assert title in page
    for row in rows:
        assert row["hu_generated"] in page and row["dice_generated"] in page


def test_structure_rows_read_the_section_defensively():
    """An unpaired report has no rows; a missing adherence (no --train) leaves its cells blank, not an error; verdicts
    show as the quality table shows them."""
    from CTDiffusionLib.evaluation.structure_table import structure_rows

    assert structure_rows({"summary": {}}) == []
    summary = {"median": 40.0, "q1": 20.0, "q3": 60.0, "iqr": 40.0, "voxels": 9}
    metrics = {"structures": {
        "structures": [{"name": "muscle", "value": 1, "sources": ["muscle"]}, {"name": "bone", "value": 2}],
        "hu": {"per_structure": {"muscle": {"real": summary, "generated": {**summary, "median": 90.0}, "verdict": "fail"},
                                 "bone": {"real": summary, "generated": {"median": None}, "verdict": None}}},
        "adherence": {"status": "not_checked", "reason": "no --train"}}}
    muscle, bone = structure_rows(metrics)
    assert (muscle["structure"], muscle["hu_verdict_label"], muscle["hu_generated"], muscle["hu_real"]) == \
        ("muscle", "FAIL", "90 [20, 60]", "40 [20, 60]")
    assert muscle["dice_generated"] == muscle["dice_real"] == "\u2013" and muscle["dice_verdict"] == ""
    assert bone["hu_generated"] == "\u2013" and bone["hu_verdict"] == ""
