"""End-to-end command line per profile (phantoms -> train -> generate) and every bad input: exit code 2, one clear
sentence naming the file, nothing half-written."""

import json
import shutil

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from safetensors.torch import save_file

from conftest import run_cli
from CTDiffusionLib.errors import EXIT_BAD_INPUT


def _read(path):
    image = sitk.ReadImage(str(path))
    return image, sitk.GetArrayFromImage(image)


def test_ct_end_to_end(tiny_ct_run, ct_phantoms, tmp_path):
    out = tmp_path / "gen"
    assert run_cli("generate", "--model", tiny_ct_run, "--num", 3, "--out", out, "--sampler", "ddim", "--steps", 3,
                   "--seed", 11) == 0
    files = sorted(out.glob("synthetic_*.nii.gz"))
    assert [f.name for f in files] == ["synthetic_0001.nii.gz", "synthetic_0002.nii.gz", "synthetic_0003.nii.gz"]
    meta = json.loads((tiny_ct_run / "model" / "model.json").read_text(encoding="utf-8"))
    for i, f in enumerate(files, start=1):
        image, arr = _read(f)
        assert image.GetPixelID() == sitk.sitkInt16 and image.GetSize() == (32, 32, 8)
        np.testing.assert_allclose(image.GetSpacing(), meta["geometry"]["spacing"], rtol=1e-5)
        assert -1024 <= arr.min() and arr.max() <= 2000
        side = json.loads(f.with_name(f"synthetic_{i:04d}.json").read_text(encoding="utf-8"))
        assert side["seed"] == 10 + i and side["sampler"] == "ddim" and side["steps"] == 3
        assert side["model_sha256"] == meta["sha256"] and side["profile"] == "prostate-ct"
    # the real data's field of view: 48 voxels -> 32 voxels 1.5x as large (cases differ by a few % in spacing)
    real, _ = _read(sorted(ct_phantoms.glob("*.nii.gz"))[0])
    assert abs(image.GetSpacing()[0] / (real.GetSpacing()[0] * 48 / 32) - 1) < 0.1
    assert abs(image.GetSpacing()[2] - real.GetSpacing()[2] * 12 / 8) < 0.5


def test_generation_is_reproducible_and_reference_geometry(tiny_ct_run, ct_phantoms, tmp_path):
    ref = sorted(ct_phantoms.glob("*.nii.gz"))[2]
    a, b = tmp_path / "a", tmp_path / "b"
    for out in (a, b):
        assert run_cli("generate", "--model", tiny_ct_run / "model", "--num", 2, "--out", out, "--sampler", "dpm++",
                       "--steps", 3, "--seed", 5, "--reference", ref) == 0
    for name in ("synthetic_0001.nii.gz", "synthetic_0002.nii.gz"):
        np.testing.assert_array_equal(_read(a / name)[1], _read(b / name)[1])
    reference = sitk.ReadImage(str(ref))
    image, arr = _read(a / "synthetic_0001.nii.gz")
    # on the reference's exact voxel grid, in HU
    assert image.GetSize() == reference.GetSize() and image.GetPixelID() == sitk.sitkInt16
    for got, want in ((image.GetSpacing(), reference.GetSpacing()), (image.GetOrigin(), reference.GetOrigin()),
                      (image.GetDirection(), reference.GetDirection())):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)
    assert -1024 <= arr.min() and arr.max() <= 2000


def test_mask_end_to_end_with_conditions(tiny_mask_run, tmp_path):
    out = tmp_path / "gen"
    assert run_cli("generate", "--model", tiny_mask_run, "--num", 2, "--out", out, "--steps", 3,
                   "--condition", "group=DCM,phase=ED", "--guidance-scale", 2) == 0
    image, arr = _read(out / "synthetic_0001.nii.gz")
    assert image.GetPixelID() == sitk.sitkUInt8 and image.GetSize() == (32, 32, 1)
    assert set(np.unique(arr)) <= {0, 1, 2, 3}
    side = json.loads((out / "synthetic_0002.json").read_text(encoding="utf-8"))
    assert side["condition"] == {"group": "DCM", "phase": "ED"} and side["guidance_scale"] == 2 and side["mode"] == "2d"
    meta = json.loads((tiny_mask_run / "model" / "model.json").read_text(encoding="utf-8"))
    assert meta["conditions"] == {"group": ["DCM", "HCM", "MINF", "NOR", "RV"], "phase": ["ED", "ES"]}


def test_unknown_condition_lists_known_values(tiny_mask_run, tmp_path, capsys):
    out = tmp_path / "gen"
    assert run_cli("generate", "--model", tiny_mask_run, "--num", 1, "--out", out, "--condition",
                   "group=XYZ") == EXIT_BAD_INPUT
    assert "Known values: DCM, HCM, MINF, NOR, RV" in capsys.readouterr().err
    assert not out.exists()


def test_condition_on_unconditional_model(tiny_ct_run, tmp_path, capsys):
    assert run_cli("generate", "--model", tiny_ct_run, "--num", 1, "--out", tmp_path / "g", "--condition",
                   "group=DCM") == EXIT_BAD_INPUT
    assert "without conditions" in capsys.readouterr().err


# ------------------------------------------------------------------ bad training data
def _write(path, array, spacing=(1.0, 1.0, 2.5)):
    image = sitk.GetImageFromArray(array)
    if image.GetDimension() == 3:
        image.SetSpacing(spacing)
    sitk.WriteImage(image, str(path))
    return path


def _bad_ct_folder(tmp_path, kind):
    folder = tmp_path / kind
    folder.mkdir()
    good = np.full((12, 48, 48), -1000, np.int16)
    _write(folder / "good.nii.gz", good)
    bad = folder / "bad.nii.gz"
    if kind == "empty":
        for f in folder.iterdir():
            f.unlink()
    elif kind == "truncated":
        _write(bad, good)
        bad.write_bytes(bad.read_bytes()[:200])
    elif kind == "garbage":
        bad.write_bytes(b"this is not an image")
    elif kind == "2d":
        _write(bad, np.zeros((48, 48), np.int16))
    elif kind == "4d":
        sitk.WriteImage(sitk.JoinSeries([sitk.GetImageFromArray(good)] * 2), str(bad))
    elif kind == "nan":  # NRRD keeps NaN; ITK's NIfTI reader already turns NaN into 0 before we see it
        arr = good.astype(np.float32)
        arr[3, 4, 5] = np.nan
        _write(folder / "bad.nrrd", arr)
    return folder


@pytest.mark.parametrize("kind,phrase", [("empty", "no"), ("truncated", "bad.nii.gz"), ("garbage", "bad.nii.gz"),
                                         ("2d", "bad.nii.gz"), ("4d", "bad.nii.gz"), ("nan", "bad.nrrd")])
def test_bad_ct_input(tmp_path, capsys, kind, phrase):
    data = _bad_ct_folder(tmp_path, kind)
    out = tmp_path / "run"
    assert run_cli("train", "--profile", "prostate-ct", "--preset", "tiny", "--data", data, "--out", out,
                   "--steps", 1, "--events") == EXIT_BAD_INPUT
    captured = capsys.readouterr()
    error = json.loads([l for l in captured.out.splitlines() if '"error"' in l][-1])
    assert phrase in error["message"].lower() or phrase in error["message"]
    assert captured.err.startswith("error: ")
    assert not out.exists(), "nothing half-written"


def test_labels_outside_0_to_3(mask_phantoms, tmp_path, capsys):
    data = tmp_path / "acdc"
    shutil.copytree(mask_phantoms, data)
    gt = sorted(data.glob("patient003/*_gt.nii.gz"))[0]
    image = sitk.ReadImage(str(gt))
    arr = sitk.GetArrayFromImage(image)
    arr[0, 0, 0] = 7
    bad = sitk.GetImageFromArray(arr)
    bad.CopyInformation(image)
    sitk.WriteImage(bad, str(gt))
    out = tmp_path / "run"
    assert run_cli("train", "--profile", "cardiac-masks", "--preset", "tiny2d", "--data", data, "--out", out,
                   "--steps", 1) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert gt.name in err and "7" in err
    assert not out.exists()


def test_acdc_without_info_cfg(mask_phantoms, tmp_path, capsys):
    data = tmp_path / "acdc"
    shutil.copytree(mask_phantoms, data)
    (data / "patient002" / "Info.cfg").unlink()
    assert run_cli("train", "--profile", "cardiac-masks", "--preset", "tiny2d", "--data", data, "--out",
                   tmp_path / "run", "--steps", 1) == EXIT_BAD_INPUT
    assert "Info.cfg" in capsys.readouterr().err and not (tmp_path / "run").exists()


# ------------------------------------------------------------------ bad bundles
@pytest.fixture
def bundle_copy(tiny_ct_run, tmp_path):
    copy = tmp_path / "bundle"
    shutil.copytree(tiny_ct_run / "model", copy)
    return copy


def _generate(model, tmp_path):
    return run_cli("generate", "--model", model, "--num", 1, "--out", tmp_path / "gen", "--steps", 2)


def test_bundle_missing_weights(bundle_copy, tmp_path, capsys):
    (bundle_copy / "model.safetensors").unlink()
    assert _generate(bundle_copy, tmp_path) == EXIT_BAD_INPUT
    assert "model.safetensors" in capsys.readouterr().err and not (tmp_path / "gen").exists()


def test_bundle_missing_json(bundle_copy, tmp_path, capsys):
    (bundle_copy / "model.json").unlink()
    assert _generate(bundle_copy, tmp_path) == EXIT_BAD_INPUT
    assert "model.json is missing" in capsys.readouterr().err


def test_bundle_with_mismatched_weights(bundle_copy, tiny_mask_run, tmp_path, capsys):
    shutil.copy(tiny_mask_run / "model" / "model.safetensors", bundle_copy / "model.safetensors")
    assert _generate(bundle_copy, tmp_path) == EXIT_BAD_INPUT
    assert "sha256 differs" in capsys.readouterr().err


def test_bundle_whose_json_lies_about_the_architecture(bundle_copy, tmp_path, capsys):
    meta = json.loads((bundle_copy / "model.json").read_text(encoding="utf-8"))
    meta["model"]["kwargs"]["channels"] = [8, 16, 32]
    (bundle_copy / "model.json").write_text(json.dumps(meta))
    assert _generate(bundle_copy, tmp_path) == EXIT_BAD_INPUT
    assert "model.json does not fit its weights" in capsys.readouterr().err


def test_bundle_from_before_the_stored_scheduler_samples_the_same(bundle_copy, tiny_ct_run, tmp_path):
    """model.json now carries the scheduler's own settings; a bundle without them (older version) still loads and
    gives the same volumes, because it falls back to the settings it was made with."""
    meta = json.loads((bundle_copy / "model.json").read_text(encoding="utf-8"))
    assert meta["scheduler"]["timestep_spacing"] == "trailing" and meta["scheduler"]["clip_sample"] is True
    del meta["scheduler"]
    (bundle_copy / "model.json").write_text(json.dumps(meta))
    for model, out in ((tiny_ct_run, tmp_path / "new"), (bundle_copy, tmp_path / "old")):
        assert run_cli("generate", "--model", model, "--num", 1, "--out", out, "--sampler", "ddim", "--steps", 3,
                       "--seed", 5) == 0
    np.testing.assert_array_equal(_read(tmp_path / "new" / "synthetic_0001.nii.gz")[1],
                                  _read(tmp_path / "old" / "synthetic_0001.nii.gz")[1])


def test_pickled_files_are_refused(tmp_path, capsys):
    pickled = tmp_path / "model.pt"
    torch.save({"weights": torch.zeros(2), "payload": Exception("not a tensor")}, pickled)
    assert _generate(pickled, tmp_path) == EXIT_BAD_INPUT
    assert "pickled" in capsys.readouterr().err


def test_checkpoint_needing_unpickling_is_refused(tiny_ct_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(tiny_ct_run, run)
    torch.save({"step": 99, "payload": Exception("not a tensor")}, run / "checkpoints" / "step_00000099.pt")
    assert run_cli("train", "--profile", "prostate-ct", "--out", run, "--resume") == EXIT_BAD_INPUT
    assert "unpickling" in capsys.readouterr().err


def test_safetensors_only_bundle_loads_without_pickle(tiny_ct_run):
    from CTDiffusionLib.models.bundle import load_bundle

    model, meta = load_bundle(tiny_ct_run)
    assert meta["profile"] == "prostate-ct" and not model.training


def test_ct_with_csv_conditions_and_3d_masks_with_conditions(ct_phantoms, mask_phantoms, tmp_path):
    """Conditioning is one mechanism for every profile/mode: CT with labels from a CSV, 3D-stack masks from Info.cfg."""
    csv = tmp_path / "labels.csv"
    files = sorted(ct_phantoms.glob("*.nii.gz"))
    csv.write_text("file,risk\n" + "".join(f"{f.name},{'high' if i % 2 else 'low'}\n" for i, f in enumerate(files)))
    run = tmp_path / "ct"
    assert run_cli("train", "--profile", "prostate-ct", "--preset", "tiny", "--data", ct_phantoms, "--out", run,
                   "--steps", 2, "--batch-size", 2, "--sample-every", 0, "--conditions", csv) == 0
    assert json.loads((run / "model" / "model.json").read_text(encoding="utf-8"))["conditions"] == {"risk": ["high", "low"]}
    assert run_cli("generate", "--model", run, "--num", 2, "--out", tmp_path / "g1", "--steps", 2,
                   "--condition", "risk=high") == 0
    run3d = tmp_path / "m3d"
    assert run_cli("train", "--profile", "cardiac-masks", "--preset", "tiny3d", "--data", mask_phantoms, "--out",
                   run3d, "--steps", 2, "--batch-size", 2, "--sample-every", 0, "--conditions", "group") == 0
    assert run_cli("generate", "--model", run3d, "--num", 2, "--out", tmp_path / "g2", "--steps", 2,
                   "--condition", "group=HCM") == 0
    image, arr = _read(tmp_path / "g2" / "synthetic_0001.nii.gz")
    assert image.GetSize() == (32, 32, 8) and set(np.unique(arr)) <= {0, 1, 2, 3}


def test_demo_plans_its_stages_and_the_cli_runs_them(tmp_path, monkeypatch, capsys):
    """demo.py returns the sub-command lines; the CLI runs them in order and stops at the first failure."""
    import sys

    from CTDiffusionLib import cli
    from CTDiffusionLib.demo import demo_stages

    stages = demo_stages("cardiac-masks", tmp_path / "demo", "cpu", 7)
    assert [name for name, _ in stages] == ["phantoms (training set)", "phantoms (held-out real set)", "train",
                                            "generate", "evaluate"]
    train = dict(stages)["train"]
    assert train[:3] == ["train", "--profile", "cardiac-masks"] and train[train.index("--steps") + 1] == "7"
    ct_stages = dict(demo_stages("prostate-ct", tmp_path / "ct", "cpu"))
    for argv in [*dict(stages).values(), *ct_stages.values()]:
        cli.build_parser().parse_args(argv)  # every planned line is a valid command
    # both sample with the model's own default sampler; the CT demo trains a rectified flow (Euler, 25 steps)
    for generate in (ct_stages["generate"], dict(stages)["generate"]):
        assert "--sampler" not in generate and "--steps" not in generate
    ct_train = ct_stages["train"]  # CT: a time budget by default, a rectified flow in bf16
    assert ct_train[ct_train.index("--objective") + 1] == "flow" and ct_train[ct_train.index("--amp") + 1] == "on"
    assert "--steps" not in ct_train and float(ct_train[ct_train.index("--minutes") + 1]) > 0
    mask_train = dict(demo_stages("cardiac-masks", tmp_path / "d", "cpu"))["train"]  # masks: a budget too
    assert "--steps" not in mask_train and mask_train[mask_train.index("--preset") + 1] == "demo"
    longer = dict(demo_stages("cardiac-masks", tmp_path / "m", "cpu", minutes=2.5))["train"]
    assert "--steps" not in longer and longer[longer.index("--minutes") + 1] == "2.5"
    import subprocess

    code = "import sys, CTDiffusionLib.demo; print('CTDiffusionLib.cli' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() \
        == "False"  # no cli <-> demo import cycle

    ran = []
    real_main = cli.main

    def fake_main(argv=None):
        if argv and argv[0] != "demo":
            ran.append(argv[0])
            return 2 if argv[0] == "generate" else 0
        return real_main(argv)

    monkeypatch.setattr(cli, "main", fake_main)
    assert cli.main(["demo", "--out", str(tmp_path / "demo"), "--profile", "cardiac-masks"]) == 2
    assert ran == ["phantoms", "phantoms", "train", "generate"]
    assert "[demo] generate failed with exit code 2" in capsys.readouterr().err

    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("")
    assert real_main(["demo", "--out", str(tmp_path / "full")]) == EXIT_BAD_INPUT


def test_sizes_are_parsed_once_for_every_flag(tmp_path, capsys):
    from CTDiffusionLib.errors import InputError
    from CTDiffusionLib.textformat import parse_size

    assert parse_size("96x96x26", "--size") == (96, 96, 26) and parse_size("64,64", "--grid", (2,)) == (64, 64)
    with pytest.raises(InputError, match="--grid '64x64' is not a size of 3 axes .this preset's 3d mode."):
        parse_size("64x64", "--grid", (3,), "this preset's 3d mode")
    for bad in ("0x4x4", "ax4", ""):
        with pytest.raises(InputError):
            parse_size(bad, "--size")
    assert run_cli("phantoms", "--profile", "prostate-ct", "--num", 1, "--out", tmp_path / "p", "--size", "9x") \
        == EXIT_BAD_INPUT
    assert "--size '9x' is not a size" in capsys.readouterr().err and not (tmp_path / "p").exists()


def test_an_error_event_into_a_vanished_run_folder_is_still_reported(tmp_path, capsys):
    """An error while its run folder has just been removed (e.g. by another process) reaches stdout and stderr;
    the report itself must not crash."""
    from CTDiffusionLib.events import EventWriter

    run = tmp_path / "run"
    writer = EventWriter(to_stdout=True)
    writer.set_log_path(run / "events.jsonl")
    run.rmdir()
    writer.emit("error", message="The volume x.nii.gz cannot be read.", hint="Check it.", exit_code=2)
    captured = capsys.readouterr()
    assert '"event":"error"' in captured.out and "could not append the error event" in captured.err


class _RecordedWrites:
    """A stand-in stderr that keeps every write() call separately."""

    def __init__(self):
        self.writes: list[str] = []

    def write(self, text: str) -> int:
        self.writes.append(text)
        return len(text)

    def flush(self) -> None:
        pass


def test_error_and_hint_reach_stderr_in_one_write(bundle_copy, tmp_path, monkeypatch):
    """Under torchrun every rank reports into one pipe: a message written in pieces (print's separate newline) let
    another rank's message land in the middle of a line. One write of a few hundred bytes is atomic on a pipe."""
    (bundle_copy / "model.safetensors").unlink()
    stderr = _RecordedWrites()
    monkeypatch.setattr("sys.stderr", stderr)
    assert run_cli("generate", "--model", bundle_copy, "--num", 1, "--out", tmp_path / "gen") == EXIT_BAD_INPUT
    reports = [w for w in stderr.writes if "error:" in w]
    assert len(reports) == 1 and reports[0].startswith("error: ") and "\nhint: " in reports[0], stderr.writes
    assert reports[0].endswith("\n"), stderr.writes
