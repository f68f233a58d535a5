"""`utility --segmenter nnunet` (issue 27 item 1) without nnU-Net: the refusal when it is not installed, and the
whole arm plumbing against a fake nnU-Net v2 (an importable `nnunetv2` package and the three commands on PATH, small
Python scripts that check their arguments and environment the way nnunetv2 2.x needs them, see
CTDiffusionLib/utility/nnunet.py). The fake "model" predicts the true labels when its dataset holds real cases and
background when it holds synthetic cases only, so the scores, the gain and the verdict are known.
"""

from __future__ import annotations

import json
import os
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import phantom_pair_sets, run_cli

SIZE = "32x32x8"
STRUCTURES = "bladder,femur"

COMMON = '''
import argparse, json, os, sys
from pathlib import Path

with open(os.environ["FAKE_NNUNET_CALLS"], "a") as f:  # what was called, with which folders
    f.write(json.dumps({"argv": sys.argv, **{k: os.environ.get(k) for k in
            ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")}}) + "\\n")


def dataset(root, number):
    found = sorted(Path(os.environ[root]).glob("Dataset%03d_*" % int(number)))
    assert len(found) == 1, (root, number, found)
    return found[0]
'''

FAKES = {
    "nnUNetv2_plan_and_preprocess": '''
p = argparse.ArgumentParser()
p.add_argument("-d", nargs="+", type=int, required=True)
p.add_argument("-c", nargs="+", default=["2d", "3d_fullres", "3d_lowres"])
p.add_argument("-np", nargs="+", type=int)
p.add_argument("-npfp", type=int, default=8)
p.add_argument("--verify_dataset_integrity", action="store_true")
a = p.parse_args()
assert a.verify_dataset_integrity and a.c == ["3d_fullres"]
for number in a.d:
    raw = dataset("nnUNet_raw", number)
    ds = json.loads((raw / "dataset.json").read_text())
    images = sorted(x.name for x in (raw / "imagesTr").iterdir())
    labels = sorted(x.name for x in (raw / "labelsTr").iterdir())
    assert ds["numTraining"] == len(images) == len(labels) > 0, ds
    assert ds["channel_names"] == {"0": "CT"} and ds["file_ending"] == ".nii.gz" and ds["labels"]["background"] == 0
    assert [x.replace("_0000.nii.gz", ".nii.gz") for x in images] == labels
    out = Path(os.environ["nnUNet_preprocessed"]) / raw.name
    out.mkdir(parents=True)
    (out / "nnUNetPlans.json").write_text(json.dumps({"dataset_name": raw.name, "configurations": {"3d_fullres": {}}}))
''',
    "nnUNetv2_train": '''
p = argparse.ArgumentParser()
p.add_argument("dataset_name_or_id")
p.add_argument("configuration")
p.add_argument("fold")
p.add_argument("-tr", default="nnUNetTrainer")
p.add_argument("-p", default="nnUNetPlans")
p.add_argument("-device", default="cuda")
a = p.parse_args()
assert a.device in ("cpu", "cuda", "mps") and a.fold in ("all", "0", "1", "2", "3", "4")
plans = json.loads((dataset("nnUNet_preprocessed", a.dataset_name_or_id) / (a.p + ".json")).read_text())
assert a.configuration in plans["configurations"]
folder = (Path(os.environ["nnUNet_results"]) / plans["dataset_name"] / ("%s__%s__%s" % (a.tr, a.p, a.configuration))
          / ("fold_" + a.fold))
assert not folder.exists(), "a second training into the same results folder"
if os.environ.get("FAKE_NNUNET_FAIL"):
    sys.exit("RuntimeError: the fake trainer ran out of memory")
if os.environ.get("FAKE_NNUNET_STOP"):  # the user presses Stop while nnU-Net trains (with a worker process)
    import subprocess
    worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    Path(os.environ["FAKE_NNUNET_STOP"]).write_text(str(worker.pid))
    (Path(os.environ["nnUNet_results"]).parents[2] / "stop-request").write_text("stop")
    import time
    time.sleep(120)
folder.mkdir(parents=True)
(folder / "checkpoint_final.pth").write_text(plans["dataset_name"])
''',
    "nnUNetv2_predict": '''
import SimpleITK as sitk

p = argparse.ArgumentParser()
for flag in ("-i", "-o", "-d", "-c"):
    p.add_argument(flag, required=True)
p.add_argument("-f", nargs="+", default=["0", "1", "2", "3", "4"])
p.add_argument("-tr", default="nnUNetTrainer")
p.add_argument("-p", default="nnUNetPlans")
p.add_argument("-device", default="cuda")
p.add_argument("-npp", type=int, default=3)
p.add_argument("-nps", type=int, default=3)
a = p.parse_args()
name = dataset("nnUNet_results", a.d).name
model = Path(os.environ["nnUNet_results"]) / name / ("%s__%s__%s" % (a.tr, a.p, a.c)) / ("fold_" + a.f[0])
assert (model / "checkpoint_final.pth").read_text() == name
Path(a.o).mkdir(parents=True, exist_ok=True)
for image in sorted(Path(a.i).glob("*_0000.nii.gz")):
    case = image.name[:-len("_0000.nii.gz")]
    ct = sitk.ReadImage(str(image))
    if "real" in name:  # learned from real pairs: right
        labels = sitk.ReadImage(str(Path(a.i).parent / "labelsTs" / (case + ".nii.gz")))
    else:  # synthetic only: finds nothing
        labels = sitk.Image(ct.GetSize(), sitk.sitkUInt8)
        labels.CopyInformation(ct)
    sitk.WriteImage(labels, str(Path(a.o) / (case + ".nii.gz")))
''',
}


@pytest.fixture(scope="module")
def pair_sets(tmp_path_factory) -> dict:
    return phantom_pair_sets(tmp_path_factory.mktemp("pairs"), {"train": (3, 0), "test": (2, 1000), "fresh": (3, 500)}, SIZE)


@pytest.fixture()
def fake_nnunet(tmp_path, monkeypatch) -> Path:
    """An importable `nnunetv2` and the three commands on PATH; returns the file the commands log their calls to."""
    site = tmp_path / "fake_site" / "nnunetv2"
    site.mkdir(parents=True)
    (site / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(site.parent))
    bin_dir = tmp_path / "fake_bin"
    bin_dir.mkdir()
    for name, body in FAKES.items():
        script = bin_dir / name
        script.write_text(f"#!{sys.executable}\n" + textwrap.dedent(COMMON) + textwrap.dedent(body))
        script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    calls = tmp_path / "calls.jsonl"
    monkeypatch.setenv("FAKE_NNUNET_CALLS", str(calls))
    return calls


def _utility(pair_sets, out: Path, *extra) -> int:
    return run_cli("utility", "--train", pair_sets["train"], "--synthetic", pair_sets["fresh"], "--test",
                   pair_sets["test"], "--out", out, "--seeds", 2, "--iterations", 40, "--structures", STRUCTURES,
                   "--device", "cpu", "--segmenter", "nnunet", *extra)


def test_without_nnunet_the_nnunet_segmenter_is_refused_with_how_to_install_it(pair_sets, tmp_path, monkeypatch,
                                                                               capsys):
    from CTDiffusionLib.utility import nnunet

    monkeypatch.setenv("PATH", str(tmp_path / "empty"))  # no nnUNetv2_* commands
    if nnunet.importlib.util.find_spec("nnunetv2") is not None:  # a machine that has it: hide the package
        monkeypatch.setattr(nnunet.importlib.util, "find_spec", lambda name, *a: None)
    assert not nnunet.is_installed()
    out = tmp_path / "out"
    assert _utility(pair_sets, out) == 2
    err = capsys.readouterr().err
    assert "nnunetv2" in err and "pip install nnunetv2 -c constraints.txt" in err and "Traceback" not in err
    assert not out.exists()  # refused before anything was written


def test_a_package_without_its_commands_is_not_taken_for_an_install(fake_nnunet, pair_sets, tmp_path, monkeypatch,
                                                                    capsys):
    from CTDiffusionLib.utility import nnunet

    monkeypatch.setenv("PATH", str(tmp_path / "empty"))  # the package imports, the commands are missing
    assert nnunet.importlib.util.find_spec("nnunetv2") is not None and not nnunet.is_installed()
    assert _utility(pair_sets, tmp_path / "out") == 2
    assert "nnUNetv2_plan_and_preprocess, which is not on PATH" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_the_three_arms_run_through_nnunet_and_are_scored_like_the_monai_ones(fake_nnunet, pair_sets, tmp_path):
    out = tmp_path / "out"
    assert _utility(pair_sets, out) == 0
    result = json.loads((out / "utility.json").read_text())

    segmenter = result["segmenter"]
    assert segmenter["network"] == "nnU-Net v2" and segmenter["configuration"] == "3d_fullres"
    assert segmenter["fold"] == "all" and segmenter["seeds"] == [0, 1]
    assert segmenter["trainer"] == "nnUNetTrainer_1epoch" and segmenter["iterations"] == 250  # >= the 40 asked
    arms = result["arms"]
    assert set(arms) == {"real", "synthetic", "real+synthetic"}
    for arm, expected in (("real", 1.0), ("synthetic", 0.0), ("real+synthetic", 1.0)):
        assert arms[arm]["dice"] == pytest.approx(expected), arm
        assert arms[arm]["dice_per_seed"] == pytest.approx([expected, expected]), arm
        assert set(arms[arm]["per_structure"]) == set(STRUCTURES.split(","))
    assert arms["real"]["hd95"] == pytest.approx(0.0) and arms["synthetic"]["hd95"] is None  # nothing predicted
    assert result["gain"]["dice"] == pytest.approx(0.0) and result["verdict"] == "no measurable gain"
    assert result["counts"] == {"train": 3, "synthetic": 3, "synthetic_available": 3, "test": 2, "seeds": 2}
    assert (out / result["figure"]).is_file()

    calls = [json.loads(line) for line in fake_nnunet.read_text().splitlines()]
    commands = [Path(c["argv"][0]).name for c in calls]
    assert commands.count("nnUNetv2_plan_and_preprocess") == 3  # once per arm
    assert commands.count("nnUNetv2_train") == 6 and commands.count("nnUNetv2_predict") == 6  # arms x seeds
    work = (out / "nnunet").resolve()
    for c in calls:  # every nnU-Net folder lies inside OUT/nnunet
        assert all(Path(c[k]).resolve().is_relative_to(work) for k in ("nnUNet_raw", "nnUNet_preprocessed",
                                                                        "nnUNet_results"))
    trained = {(c["argv"][1], c["nnUNet_results"]) for c in calls if c["argv"][0].endswith("nnUNetv2_train")}
    assert len(trained) == 6  # each seed into its own results folder
    raw = sorted(p.name for p in (work / "raw").iterdir())
    assert raw == ["Dataset001_real", "Dataset002_synthetic", "Dataset003_real_synthetic"]
    mixed = json.loads((work / "raw" / "Dataset003_real_synthetic" / "dataset.json").read_text())
    assert mixed["numTraining"] == 6 and mixed["labels"] == {"background": 0, "bladder": 1, "femur": 2}
    tests = [sitk.GetArrayFromImage(sitk.ReadImage(str(f))) for f in sorted((work / "test" / "imagesTs").iterdir())]
    assert len(tests) == 2
    for dataset in raw:  # the segmenter never trains on a test CT
        for f in (work / "raw" / dataset / "imagesTr").iterdir():
            trained_on = sitk.GetArrayFromImage(sitk.ReadImage(str(f)))
            assert not any(np.array_equal(trained_on, t) for t in tests), f


def test_a_stop_request_while_nnunet_trains_ends_it_and_leaves_nothing(fake_nnunet, pair_sets, tmp_path,
                                                                       monkeypatch):
    import psutil

    worker_pid = tmp_path / "worker.pid"  # the fake trainer starts a worker, asks to stop, would train 2 minutes
    monkeypatch.setenv("FAKE_NNUNET_STOP", str(worker_pid))
    out = tmp_path / "out"
    assert _utility(pair_sets, out) == 130
    commands = [Path(json.loads(line)["argv"][0]).name for line in fake_nnunet.read_text().splitlines()]
    assert commands[-1] == "nnUNetv2_train" and "nnUNetv2_predict" not in commands  # ended during the training
    assert not out.exists()  # a folder this run created goes again

    def alive(pid: int) -> bool:
        try:
            return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False

    pid = int(worker_pid.read_text())
    deadline = time.monotonic() + 30  # the worker got SIGTERM with its trainer; give the system time to reap it
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not alive(pid), "nnU-Net's worker process outlived the stopped benchmark"


def test_a_failing_nnunet_command_is_named_with_its_output_kept(fake_nnunet, pair_sets, tmp_path, monkeypatch,
                                                                capsys):
    monkeypatch.setenv("FAKE_NNUNET_FAIL", "1")
    out = tmp_path / "out"
    assert _utility(pair_sets, out) == 1
    err = capsys.readouterr().err
    assert "nnUNetv2_train failed (exit code 1): RuntimeError: the fake trainer ran out of memory" in err
    kept = Path(err.split("See its whole output in ")[1].split(".log")[0] + ".log")
    try:
        assert "nnUNetv2_train 1 3d_fullres all -tr nnUNetTrainer_1epoch" in kept.read_text()
    finally:
        kept.unlink()
    assert not out.exists()  # the run's folder goes, the log it names stays
