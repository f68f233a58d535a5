"""Paired runs (`train --with-labels`): a CT model conditioned on label maps plus a label-map model, and the two
ways `generate` uses them (`--from-labels`, `--num` new pairs). Tiny grids, a few steps: the tests check the
contracts (what is recorded, which grid comes out, which values, resume), not image quality."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from conftest import run_cli

STRUCTURES = "prostate,bladder,bone=femur+hip_bone+sacrum"
DECLARED = {"background": 0, "prostate": 1, "bladder": 2, "bone": 3}


def _train(data: Path, out: Path, *extra) -> int:
    return run_cli("train", "--profile", "prostate-ct", "--data", data, "--out", out, "--with-labels",
                   "--structures", STRUCTURES, "--preset", "tiny", "--steps", 4, "--batch-size", 2,
                   "--checkpoint-every", 2, "--sample-every", 0, "--device", "cpu", *extra)


@pytest.fixture(scope="module")
def pairs(tmp_path_factory) -> Path:
    from CTDiffusionLib.data.phantoms import write_phantom_dataset

    return write_phantom_dataset("prostate-ct", 4, tmp_path_factory.mktemp("pairs") / "data", seed=3,
                                 size_xyz=(48, 48, 12), with_labels=True)


@pytest.fixture(scope="module")
def paired_run(pairs, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("paired") / "run"
    assert _train(pairs, run) == 0
    return run


def test_bundles_record_the_structures(paired_run):
    ct = json.loads((paired_run / "model" / "model.json").read_text())
    labels = json.loads((paired_run / "labels" / "model" / "model.json").read_text())
    expected = [{"name": "prostate", "value": 1, "sources": ["prostate"]},
                {"name": "bladder", "value": 2, "sources": ["bladder"]},
                {"name": "bone", "value": 3, "sources": ["femur", "hip_bone", "sacrum"]}]
    assert ct["labels"]["structures"] == expected and labels["labels"]["structures"] == expected
    assert (ct["labels"]["conditioning"], ct["labels"]["null"]) == ("concat", "zeros")
    assert (ct["model"]["kwargs"]["in_channels"], ct["model"]["kwargs"]["out_channels"]) == (1 + 3, 1)
    assert (labels["model"]["kwargs"]["in_channels"], labels["model"]["kwargs"]["out_channels"]) == (4, 4)
    assert labels["intensity"] == {"kind": "onehot", "classes": ["background", "prostate", "bladder", "bone"]}
    assert ct["training"]["step"] == labels["training"]["step"] == 4  # --steps applies to each model
    config = json.loads((paired_run / "config.json").read_text())
    assert config["labels"]["structures"] == expected


def test_label_dropout_zeros_the_condition_and_augmentation_moves_both():
    from CTDiffusionLib.data.dataset import PreparedData
    from CTDiffusionLib.data.paired_dataset import conditioned_sample
    from CTDiffusionLib.profiles import PROSTATE_CT

    labels = np.zeros((4, 8, 8), np.uint8)
    labels[:, 2:5, 1:3] = 1
    labels[:, 5:7, 5:8] = 2
    ct = np.where(labels > 0, 0.5, -0.5).astype(np.float16)
    data = PreparedData([ct], [0], [], {"train": [0], "val": []}, {}, label_maps=[labels], num_structures=2)
    x0, kept = conditioned_sample(data, 0, PROSTATE_CT, None, None, drop=0.0)
    assert kept.shape == (1, 2, 4, 8, 8) and set(np.unique(kept.numpy())) == {-1.0, 1.0}
    assert np.array_equal(kept[0, 0].numpy() > 0, labels == 1) and np.array_equal(kept[0, 1].numpy() > 0, labels == 2)
    dropped = [conditioned_sample(data, 0, PROSTATE_CT, None, None, drop=0.15,
                                  drop_rng=np.random.default_rng(seed))[1] for seed in range(200)]
    zero = [not c.any() for c in dropped]
    assert 10 <= sum(zero) <= 50  # ~15 % of 200 dropped, entirely zero; the others untouched
    assert all(np.array_equal(c, kept) for c, z in zip(dropped, zero) if not z)
    # augmentation: the label map gets the very draws of its CT (one zoom factor, one flip), nearest-neighbour
    from CTDiffusionLib.data.augment import augment_sample
    from CTDiffusionLib.data.preprocess import labels_to_unit

    cfg = {"zoom": [0.8, 1.2], "flip": True, "rotate_deg": 0.0}
    flips = set()
    for seed in range(8):
        x0_aug, cond = conditioned_sample(data, 0, PROSTATE_CT, cfg, np.random.default_rng(seed))
        alone = augment_sample(labels, cfg, np.random.default_rng(seed), is_label=True)
        assert np.array_equal(cond[0].numpy(), labels_to_unit(alone, 3)[1:])
        assert np.array_equal(x0_aug[0, 0].numpy(), augment_sample(ct, cfg, np.random.default_rng(seed), False))
        flips.add(bool(alone[0, 2:5, -3:-1].all()))  # the structure in columns 1-2 moved to the other side
    assert flips == {True, False}


def test_from_labels_writes_the_ct_on_the_label_maps_grid(paired_run, tmp_path):
    labels = np.zeros((10, 36, 40), np.uint8)  # (z, y, x): another size than the training grid
    labels[3:7, 10:20, 12:24] = 2
    labels[4:6, 20:26, 15:22] = 1
    image = sitk.GetImageFromArray(labels)
    image.SetSpacing((1.3, 0.9, 4.0))
    image.SetOrigin((-20.5, 13.0, 101.25))
    image.SetDirection((0.0, 1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0))  # rotated in-plane: not the LPS order
    source = tmp_path / "maps"
    source.mkdir()
    sitk.WriteImage(image, str(source / "case_a.nii.gz"))
    out = tmp_path / "gen"
    assert run_cli("generate", "--model", paired_run, "--from-labels", source, "--out", out, "--steps", 3,
                   "--device", "cpu") == 0
    ct = sitk.ReadImage(str(out / "imagesTr" / "case_a_0000.nii.gz"))
    written = sitk.ReadImage(str(out / "labelsTr" / "case_a.nii.gz"))
    for img in (ct, written):
        assert img.GetSize() == image.GetSize()
        assert np.allclose(img.GetSpacing(), image.GetSpacing()) and np.allclose(img.GetOrigin(), image.GetOrigin())
        assert np.allclose(img.GetDirection(), image.GetDirection())
    assert ct.GetPixelID() == sitk.sitkInt16 and written.GetPixelID() == sitk.sitkUInt8
    assert np.array_equal(sitk.GetArrayFromImage(written), labels)  # by value: the model's own values
    sidecar = json.loads((out / "sidecars" / "case_a.json").read_text())
    assert sidecar["network_evaluations"] == 3  # the paired default guidance is 1: one pass per step


def test_from_labels_matches_names_and_refuses_unknown_ones(paired_run, pairs, tmp_path, capsys):
    # the phantoms' dataset.json names nine structures, the model knows three (one merged from three)
    assert run_cli("generate", "--model", paired_run, "--from-labels", pairs, "--out", tmp_path / "g", "--steps", 2,
                   "--device", "cpu") == 2
    err = capsys.readouterr().err
    assert "does not know" in err and "rectum" in err and not (tmp_path / "g").exists()
    empty = sitk.GetImageFromArray(np.zeros((4, 8, 8), np.uint8))
    sitk.WriteImage(empty, str(tmp_path / "empty.nii.gz"))
    assert run_cli("generate", "--model", paired_run, "--from-labels", tmp_path / "empty.nii.gz", "--out",
                   tmp_path / "g2", "--steps", 2, "--device", "cpu") == 2
    assert "none of the model's structures" in capsys.readouterr().err


def test_num_writes_pairs_with_exactly_the_declared_values(paired_run, tmp_path):
    from CTDiffusionLib.data.pairs import discover_pairs, read_dataset_structures

    out = tmp_path / "pairs"
    assert run_cli("generate", "--model", paired_run, "--num", 3, "--out", out, "--steps", 3, "--device", "cpu",
                   "--guidance-scale", 3) == 0
    images = sorted((out / "imagesTr").glob("*.nii.gz"))
    labels = sorted((out / "labelsTr").glob("*.nii.gz"))
    assert len(images) == len(labels) == 3
    dataset = json.loads((out / "dataset.json").read_text())
    assert dataset["labels"] == DECLARED and dataset["numTraining"] == 3 and dataset["file_ending"] == ".nii.gz"
    assert dataset["channel_names"] == {"0": "CT"}
    for image, label in zip(images, labels):
        ct, lab = sitk.ReadImage(str(image)), sitk.ReadImage(str(label))
        assert ct.GetPixelID() == sitk.sitkInt16 and lab.GetPixelID() == sitk.sitkUInt8
        assert ct.GetSize() == lab.GetSize() == (32, 32, 8)
        assert set(np.unique(sitk.GetArrayFromImage(lab)).tolist()) <= set(DECLARED.values())
    # the output reads back as paired data with the same structures (what nnU-Net and our own reader need)
    assert [s.name for s in read_dataset_structures(out)] == ["prostate", "bladder", "bone"]
    assert [c.case_id for c in discover_pairs([out])] == ["synthetic_0001", "synthetic_0002", "synthetic_0003"]
    sidecar = json.loads((out / "sidecars" / "synthetic_0001.json").read_text())
    assert sidecar["network_evaluations"] == 3 + 2 * 3  # the label map's passes + the guided CT's


def test_resume_continues_the_unfinished_model(pairs, tmp_path, monkeypatch):
    from CTDiffusionLib.training import trainer as trainer_module

    step = trainer_module.Trainer.train_step

    def stop_label_model_after_2(trainer):
        loss = step(trainer)
        if trainer.run_dir.name == "labels" and trainer.step == 2:
            trainer.stop.signalled = True
        return loss

    monkeypatch.setattr(trainer_module.Trainer, "train_step", stop_label_model_after_2)
    run = tmp_path / "run"
    assert _train(pairs, run) == 130
    ct_checkpoints = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert ct_checkpoints == ["step_00000002.pt", "step_00000004.pt"]  # the CT model finished first
    assert sorted(p.name for p in (run / "labels" / "checkpoints").iterdir()) == ["step_00000002.pt"]
    ct_bundle = (run / "model" / "model.safetensors").stat().st_mtime_ns
    monkeypatch.setattr(trainer_module.Trainer, "train_step", step)
    trained = []
    monkeypatch.setattr(trainer_module.Trainer, "train_step",
                        lambda trainer: trained.append((trainer.run_dir.name, trainer.step)) or step(trainer))
    assert run_cli("train", "--profile", "prostate-ct", "--out", run, "--resume", "--device", "cpu") == 0
    assert trained == [("labels", 2), ("labels", 3)]  # only the label model's remaining steps
    assert (run / "model" / "model.safetensors").stat().st_mtime_ns == ct_bundle
    assert json.loads((run / "labels" / "model" / "model.json").read_text())["training"]["step"] == 4


def test_bad_combinations_are_refused_with_one_sentence(tiny_ct_run, pairs, mask_phantoms, tmp_path, capsys):
    assert run_cli("generate", "--model", tiny_ct_run, "--from-labels", pairs, "--out", tmp_path / "g") == 2
    assert "trained without label maps" in capsys.readouterr().err
    assert run_cli("train", "--profile", "cardiac-masks", "--data", mask_phantoms, "--out", tmp_path / "r",
                   "--with-labels", "--preset", "tiny3d", "--steps", 1) == 2
    assert "label maps already" in capsys.readouterr().err
    assert run_cli("train", "--profile", "prostate-ct", "--data", pairs, "--out", tmp_path / "r2",
                   "--structures", "prostate", "--preset", "tiny", "--steps", 1) == 2
    assert "--with-labels" in capsys.readouterr().err
    assert not (tmp_path / "r").exists() and not (tmp_path / "r2").exists()


def test_unpaired_bundle_generates_as_before(tiny_ct_run, tmp_path):
    """The paired code paths leave an unpaired bundle's generation alone: same files, same voxels for a seed."""
    from CTDiffusionLib.diffusion.sampling import sample
    from CTDiffusionLib.diffusion.schedulers import bundle_scheduler, sampler
    from CTDiffusionLib.generation import decode
    from CTDiffusionLib.models.bundle import load_bundle
    from CTDiffusionLib.runtime import autocast_dtype

    out = tmp_path / "g"
    assert run_cli("generate", "--model", tiny_ct_run, "--num", 1, "--out", out, "--sampler", "ddim", "--steps", 3,
                   "--seed", 5, "--device", "cpu") == 0
    assert sorted(p.name for p in out.glob("synthetic_*")) == ["synthetic_0001.json", "synthetic_0001.nii.gz"]
    model, meta = load_bundle(tiny_ct_run)
    # the reference: the sampling loop called as before the paired code existed (no spatial condition; a CPU batch
    # of one runs with a throw-away second sample, as generate does)
    cpu = torch.device("cpu")
    x0 = sample(model, sampler("ddim", meta["diffusion"], 3, base=bundle_scheduler(meta)), (1, 8, 32, 32),
                [5, 5 + 1_000_003], cpu, autocast_dtype=autocast_dtype(cpu, None))
    written = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "synthetic_0001.nii.gz")))
    assert np.array_equal(written, decode(x0[:1], meta)[0])


def test_paired_demo_plan_is_commands_a_user_could_type(tmp_path):
    from CTDiffusionLib.cli import build_parser
    from CTDiffusionLib.demo import PAIRED_DEMO, paired_demo_stages

    stages = dict(paired_demo_stages(tmp_path / "demo"))
    parsed = {name: build_parser().parse_args(argv) for name, argv in stages.items()}
    train = parsed["train (CT model, then label model)"]
    assert train.with_labels and train.structures == PAIRED_DEMO["structures"] and train.minutes == 8
    assert train.preset == "demo" and train.batch_size == 2
    from_labels = parsed["generate (CT for the held-out label maps)"]
    assert from_labels.from_labels == str((tmp_path / "demo" / "data" / "heldout").resolve())
    assert from_labels.num is None and parsed["generate (new pairs)"].num == PAIRED_DEMO["new_pairs"]
    assert all(p.with_labels for name, p in parsed.items() if name.startswith("phantom"))
    train = build_parser().parse_args(dict(paired_demo_stages(tmp_path / "d2", steps=10))[
        "train (CT model, then label model)"])
    assert (train.steps, train.minutes) == (10, None)


def test_structure_hu_pools_each_structure_in_real_and_generated_folders(paired_run, pairs, tmp_path):
    """HU per structure, with bone merged from three source structures in the real data and named 'bone' in the
    generated folder: every labelled voxel is counted once, under the right structure."""
    from CTDiffusionLib.data.paired_dataset import as_structures
    from CTDiffusionLib.evaluation.structures import compare_structure_hu

    out = tmp_path / "new"
    assert run_cli("generate", "--model", paired_run, "--num", 2, "--out", out, "--steps", 2, "--device", "cpu") == 0
    structures = as_structures(json.loads((paired_run / "config.json").read_text())["labels"]["structures"])
    table = compare_structure_hu(pairs, out, structures)
    generated = np.concatenate([sitk.GetArrayFromImage(sitk.ReadImage(str(p))).ravel()
                                for p in sorted((out / "labelsTr").glob("*.nii.gz"))])
    names = json.loads((pairs / "dataset.json").read_text())["labels"]
    real = np.concatenate([sitk.GetArrayFromImage(sitk.ReadImage(str(p))).ravel()
                           for p in sorted((pairs / "labelsTr").glob("*.nii.gz"))])
    for value, name in enumerate(["prostate", "bladder", "bone"], start=1):
        assert table[name]["generated"]["voxels"] == int(np.count_nonzero(generated == value))
    bone_values = [names[n] for n in ("femur", "hip_bone", "sacrum")]
    assert table["bone"]["real"]["voxels"] == int(np.isin(real, bone_values).sum()) > 0
    assert table["bladder"]["real"]["voxels"] == int(np.count_nonzero(real == names["bladder"]))
    assert table["bone"]["real"]["q1"] <= table["bone"]["real"]["median"] <= table["bone"]["real"]["q3"]


def test_paired_demo_ends_with_its_reports_structure_table(tmp_path):
    """The paired demo evaluates the CT it made for the held-out label maps; its summary shows that report's HU and
    adherence per structure (the rows report.html shows) and where the report is."""
    from CTDiffusionLib.cli import build_parser
    from CTDiffusionLib.demo import paired_demo_stages, paired_demo_summary
    from CTDiffusionLib.runfolder import RUN_FORMAT, write_json

    evaluate = build_parser().parse_args(dict(paired_demo_stages(tmp_path / "plan"))[
        "evaluate (CT for the held-out label maps)"])
    assert (Path(evaluate.generated).name, Path(evaluate.train).name, Path(evaluate.out).name) == (
        "generated", "train", "report")
    out = tmp_path / "demo"
    for folder, steps in ((out / "run", 480), (out / "run" / "labels", 470)):
        folder.mkdir(parents=True)
        write_json(folder / "config.json", {"format": RUN_FORMAT, "training": {"steps": steps}})
    hu = {"median": 40.0, "q1": 20.0, "q3": 60.0, "iqr": 40.0, "voxels": 9}
    (out / "report").mkdir()
    write_json(out / "report" / "metrics.json", {"structures": {
        "structures": [{"name": "bladder", "value": 1}],
        "hu": {"per_structure": {"bladder": {"real": hu, "generated": {**hu, "median": 12.0}, "verdict": "ok"}}},
        "adherence": {"per_structure": {"bladder": {"generated": 0.61, "generated_ci95": [0.5, 0.7],
                                                    "reference": 0.65, "reference_ci95": [0.56, 0.74]}}}}})
    text = paired_demo_summary(out, "cpu", 600)
    assert "480 CT-model and 470 label-model steps" in text and str(out / "report" / "report.html") in text
    line = next(l for l in text.splitlines() if l.strip().startswith("bladder"))
    assert "12 [20, 60]" in line and "40 [20, 60]" in line and "0.61" in line and "0.65" in line
