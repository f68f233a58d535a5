"""Reliability: bad inputs that readers let through, and faults a run must survive (kill -9, full disk, two runs on
one folder, an edited bundle). docs/reliability.md lists every case with the test that covers it."""

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from conftest import ROOT, run_cli
from CTDiffusionLib.data.dataset import PreparedData, _prepare_case, split_summary
from CTDiffusionLib.data.discovery import Case
from CTDiffusionLib.data.preprocess import orientation_of
from CTDiffusionLib.data.volume_io import array_to_image, Geometry, read_image, write_image
from CTDiffusionLib.errors import EXIT_BAD_INPUT, EXIT_FAILED, InputError
from CTDiffusionLib.events import parse_event_line, read_events
from CTDiffusionLib.generation import output_geometry
from CTDiffusionLib.models import bundle as bundle_module
from CTDiffusionLib.models.bundle import bundle_is_current, load_bundle, save_bundle
from CTDiffusionLib.profiles import get_profile
from CTDiffusionLib.training.checkpoints import list_checkpoints, load_checkpoint
from CTDiffusionLib.training.crash_recovery import RunFolderBusy, RunLock, remove_temp_files, trim_events_after

TINY = ["--profile", "prostate-ct", "--preset", "tiny", "--batch-size", "2", "--sample-every", "0"]
CHILD_ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
TEMP_MARKERS = (".tmp",)


def _cli(*args) -> list[str]:
    return [sys.executable, "-m", "CTDiffusionLib", *map(str, args)]


def _temp_leftovers(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if any(m in p.name for m in TEMP_MARKERS)]


# ---------------------------------------------------------------------------------------------- bad inputs

def test_nifti_with_nan_is_refused_by_train(tmp_path, ct_phantoms, capsys):
    data = tmp_path / "data"
    shutil.copytree(ct_phantoms, data)
    victim = sorted(data.glob("*.nii.gz"))[2]
    image = sitk.Cast(read_image(victim), sitk.sitkFloat32)
    array = sitk.GetArrayFromImage(image)
    array[3, 10:13, 10:12] = np.nan  # 6 voxels; ITK's NIfTI reader would hand these over as 0
    write_image(array_to_image(array, Geometry.of(image)), victim)
    code = run_cli("train", *TINY, "--data", data, "--out", tmp_path / "run", "--steps", 2)
    err = capsys.readouterr().err
    assert code == EXIT_BAD_INPUT
    assert f"{victim} contains 6 NaN or infinite voxel values" in err
    assert not (tmp_path / "run").exists()


def _asymmetric_ct(direction_z: float) -> sitk.Image:
    """A CT volume whose content differs top to bottom, stored with its z axis running up (+1) or down (-1)."""
    z, y, x = np.meshgrid(np.arange(8), np.arange(20), np.arange(24), indexing="ij")
    hu = (-1000 + 150 * z + 10 * x + (y > 12) * 300).astype(np.int16)
    geometry = Geometry((0.8, 0.9, 2.5), (-10.0, 20.0, 30.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    image = array_to_image(hu, geometry)
    if direction_z > 0:
        return image
    flipped = array_to_image(hu[::-1].copy(), geometry)  # the same scan, slices stored top to bottom
    flipped.SetOrigin(image.TransformIndexToPhysicalPoint((0, 0, 7)))
    flipped.SetDirection((1, 0, 0, 0, 1, 0, 0, 0, -1))
    return flipped


def test_every_case_is_reoriented_before_resampling(tmp_path):
    up, down = _asymmetric_ct(+1), _asymmetric_ct(-1)
    assert orientation_of(up) == "LPS" and orientation_of(down) == "LPI"
    cfg = {"grid": [16, 16, 4], "mode": "3d"}
    results = []
    for name, image in (("up", up), ("down", down)):
        path = write_image(image, tmp_path / f"{name}.nii.gz")
        profile = get_profile("prostate-ct")
        results.append(_prepare_case(Case(name, path), profile, cfg, profile.intensity_config()))
    (a,), info_a = results[0]
    (b,), info_b = results[1]
    assert not np.allclose(sitk.GetArrayFromImage(up), sitk.GetArrayFromImage(down))  # stored differently
    np.testing.assert_allclose(a.astype(np.float32), b.astype(np.float32), atol=1e-3)  # trained the same
    assert (info_a["stored_orientation"], info_b["stored_orientation"]) == ("LPS", "LPI")
    np.testing.assert_allclose(info_b["direction"], np.eye(3).ravel())
    np.testing.assert_allclose(info_a["origin"], info_b["origin"], atol=1e-4)


def test_generated_volumes_come_out_in_the_bundle_orientation(tiny_ct_run, tmp_path):
    meta = json.loads((tiny_ct_run / "model" / "model.json").read_text(encoding="utf-8"))
    assert meta["orientation"] == "LPS"
    assert run_cli("generate", "--model", tiny_ct_run, "--num", 1, "--steps", 2, "--sampler", "ddim",
                   "--out", tmp_path / "gen", "--device", "cpu") == 0
    assert orientation_of(read_image(tmp_path / "gen" / "synthetic_0001.nii.gz")) == "LPS"
    # A reference stored upside down gives the same model grid as its upright twin, still in LPS order.
    from_up, from_down = output_geometry(meta, _asymmetric_ct(+1)), output_geometry(meta, _asymmetric_ct(-1))
    assert orientation_of(array_to_image(np.zeros((2, 2, 2)), from_down)) == "LPS"
    np.testing.assert_allclose(from_down.origin, from_up.origin, atol=1e-4)
    np.testing.assert_allclose(from_down.spacing, from_up.spacing, atol=1e-6)


def _prepared(n_train: int, n_val: int) -> PreparedData:
    cases = [Case(f"c{i}", Path(f"c{i}.nii.gz")) for i in range(n_train + n_val)]
    split = {"train": list(range(n_train)), "val": list(range(n_train, n_train + n_val))}
    return PreparedData([np.zeros(1)] * len(cases), list(range(len(cases))), cases, split, {})


def test_split_summary_warns_and_refuses():
    summary, warnings = split_summary(_prepared(20, 5))
    assert summary == "split: 20 training volumes (20 samples), 5 validation volumes (5 samples)" and not warnings
    _, warnings = split_summary(_prepared(1, 0))
    assert any(w.startswith("No validation volumes") for w in warnings)
    assert any(w.startswith("Only 1 training volume:") for w in warnings)
    _, warnings = split_summary(_prepared(12, 3))
    assert warnings == ["Only 3 validation volumes: the validation loss and the quality report on held-out data are "
                        "indicative only below 5 held-out volumes."]
    with pytest.raises(InputError, match="leaves no training volumes"):
        split_summary(_prepared(0, 3))


def test_training_on_one_volume_says_so(tmp_path, ct_phantoms, capsys, caplog):
    one = sorted(ct_phantoms.glob("*.nii.gz"))[0]
    run = tmp_path / "run"
    assert run_cli("train", *TINY, "--data", one, "--out", run, "--steps", 1, "--events") == 0
    captured = capsys.readouterr()
    start = next(e for e in map(parse_event_line, captured.out.splitlines()) if e and e["event"] == "start")
    assert start["split"] == "split: 1 training volume (1 sample), 0 validation volumes (0 samples)"
    assert any("No validation volumes" in w for w in start["warnings"])
    assert any(r.levelname == "WARNING" and "No validation volumes" in r.message for r in caplog.records)
    assert json.loads((run / "dataset.json").read_text(encoding="utf-8"))["warnings"] == start["warnings"]


# ---------------------------------------------------------------------------------------------- run lock

def test_run_lock_refuses_a_second_holder_and_dies_with_its_process(tmp_path):
    run = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from pathlib import Path\n"
        "from CTDiffusionLib.training.crash_recovery import RunLock\n"
        f"RunLock(Path({str(run)!r})).acquire(); print('locked', flush=True); time.sleep(600)")],
        cwd=ROOT, env=CHILD_ENV, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunFolderBusy) as excinfo:
            RunLock(run).acquire()
        assert f"in use by another training (process {holder.pid} on" in excinfo.value.message
        holder.kill()  # kill -9: no cleanup code runs in the holder
        holder.wait(timeout=30)
        with RunLock(run):  # the kernel dropped the lock with the process: not stuck
            pass
    finally:
        if holder.poll() is None:
            holder.kill()


# ---------------------------------------------------------------------------------------------- kill -9

def _check_complete_files(run: Path) -> None:
    """Every file in the run folder that is not an atomic writer's temp file is whole and readable."""
    for path in run.rglob("*"):
        if not path.is_file() or any(m in part for part in path.relative_to(run).parts for m in TEMP_MARKERS):
            continue
        if path.suffix == ".pt":
            load_checkpoint(path)
        elif path.suffix == ".json":
            json.loads(path.read_text(encoding="utf-8"))
        elif path.suffix == ".jsonl":
            lines = path.read_text(encoding="utf-8").splitlines()
            assert all(parse_event_line(line) for line in lines), path
        elif path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as z:
                [z[k] for k in z.files]
    if (run / "model" / "model.json").exists():
        load_bundle(run / "model")


def _run_child_until_killed(cmd, after_step: int | None, when: float) -> tuple[int, dict | None]:
    """Start a training child and kill -9 it. after_step None: `when` seconds after spawn, or as soon as it starts
    training, whichever comes first (a kill during start-up); else: once it reports a step > after_step, `when`
    (0..1) of one step's duration later (mid-step, mid-validation or mid-checkpoint, on any machine speed).
    Returns its exit code and its start event (None when it died before training started)."""
    proc = subprocess.Popen(cmd, cwd=ROOT, env=CHILD_ENV, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            text=True)
    timer, start, rate = threading.Timer(when, proc.kill), None, None
    try:
        if after_step is None:
            timer.start()
        for line in proc.stdout:
            event = parse_event_line(line) or {}
            rate = event.get("it_per_s") or rate
            if event.get("event") == "start":
                start = event
                if after_step is None:
                    proc.kill()
                    break
            if after_step is not None and event.get("event") in ("progress", "checkpoint") \
                    and event.get("step", -1) > after_step:
                timer = threading.Timer(when / rate if rate else when, proc.kill)
                timer.start()
                break
        proc.wait(timeout=600)
    finally:
        timer.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, start


def test_kill_9_three_times_then_finish(ct_phantoms, tmp_path, capsys):
    total, every = 18, 2  # 4 training volumes, batch 2: 2 steps per epoch; a checkpoint every epoch
    train_args = [*TINY, "--data", ct_phantoms, "--steps", total, "--checkpoint-every", every]
    reference = tmp_path / "reference"
    assert run_cli("train", *train_args, "--out", reference) == 0
    ref_loss = {e["step"]: e["loss"] for e in read_events(reference / "events.jsonl")
                if e["event"] == "progress" and e["phase"] == "train"}

    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    run = tmp_path / "run"
    new_run = _cli("train", *train_args, "--out", run, "--events")
    resume = _cli("train", "--profile", "prostate-ct", "--out", run, "--resume", "--events")
    # One kill during start-up (imports, preprocessing), then three in a row while it trains: each a random
    # time after a random step, so they land mid-step, mid-validation or mid-checkpoint.
    moments = [(None, rng.uniform(0.5, 4.0))] + [("random step", rng.uniform(0.0, 1.0)) for _ in range(3)]
    for k, (after_step, when) in enumerate(moments):
        cmd = resume if (run / "config.json").exists() else new_run
        before = _last_checkpoint_step(run)
        if after_step is not None:
            # past the next checkpoint step, so every kill leaves one more complete checkpoint behind (three kills
            # before the first checkpoint would leave nothing to resume from); leaves >= 2 of the 18 steps
            after_step = rng.randrange(before + every, before + every + 3)
        code, start = _run_child_until_killed(cmd, after_step, when)
        assert code == -signal.SIGKILL, f"kill {k + 1} (seed {seed}) came too late: exit {code}"
        if start is not None:  # it continued from the newest checkpoint there was
            assert start["step"] == before, f"seed {seed}"
            assert (start["resumed_from"] or "").endswith(f"step_{before:08d}.pt") or before == 0, f"seed {seed}"
        assert _last_checkpoint_step(run) >= before, f"seed {seed}"
        _check_complete_files(run)
        with RunLock(run, create=False):  # the killed run left no lock behind (no folder yet: nothing to lock)
            pass

    # What a kill in the middle of save() leaves: a cut-off checkpoint temp file; and weights that are not the ones
    # model.json names (a foreign copy). The next start must clear the first and rewrite the bundle.
    newest = list_checkpoints(run / "checkpoints")[-1]
    (run / "checkpoints" / ".step_00000099.tmp-0123456789ab.pt").write_bytes(newest.read_bytes()[:1000])
    (run / "checkpoints" / "step_00000098.pt.tmp").write_bytes(newest.read_bytes()[:1000])  # older versions' name
    (run / "model" / "model.safetensors").write_bytes((reference / "model" / "model.safetensors").read_bytes())

    # A live training holds the folder: a second one on it is refused with one sentence and removes nothing.
    before = _last_checkpoint_step(run)
    proc = subprocess.Popen(resume if (run / "config.json").exists() else new_run, cwd=ROOT, env=CHILD_ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        for line in proc.stdout:
            event = parse_event_line(line)
            if event and event["event"] == "start":
                assert event["step"] == before, f"seed {seed}"
                capsys.readouterr()
                assert run_cli("train", "--profile", "prostate-ct", "--out", run, "--resume") == EXIT_BAD_INPUT
                assert f"The run folder {run} is in use by another training (process {proc.pid}" in \
                    capsys.readouterr().err
                break
        rest, _ = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, f"seed {seed}"

    assert load_checkpoint(list_checkpoints(run / "checkpoints")[-1])["step"] == total
    assert not _temp_leftovers(run), _temp_leftovers(run)
    _check_complete_files(run)
    events = list(read_events(run / "events.jsonl"))
    train_steps = [e["step"] for e in events if e["event"] == "progress" and e["phase"] == "train"]
    assert train_steps == sorted(set(train_steps)), f"duplicate or backward steps (seed {seed}): {train_steps}"
    epoch_ends = list(range(every, total + 1, every))
    assert set(epoch_ends) <= set(train_steps), f"missing steps (seed {seed}): {train_steps}"
    val_steps = [e["step"] for e in events if e["event"] == "progress" and e["phase"] == "validate"]
    assert val_steps == epoch_ends, f"seed {seed}"
    assert [e["step"] for e in events if e["event"] == "checkpoint"] == epoch_ends, f"seed {seed}"
    loss = {e["step"]: e["loss"] for e in events if e["event"] == "progress" and e["phase"] == "train"}
    for step in epoch_ends:  # the same loss curve as the run that was never interrupted
        assert loss[step] == pytest.approx(ref_loss[step], rel=1e-3, abs=1e-5), (step, seed)
    assert json.loads((run / "model" / "model.json").read_text(encoding="utf-8"))["training"]["step"] == total


def _checkpoint_step_of(path: str) -> int:
    return int(Path(path).stem.split("_")[1])


def _last_checkpoint_step(run: Path) -> int:
    saved = list_checkpoints(run / "checkpoints")
    return _checkpoint_step_of(str(saved[-1])) if saved else 0


class _Killed(BaseException):
    """Stands for kill -9: nothing after the point it is raised runs."""


@pytest.mark.parametrize("killed_before", ["model.json", "model.safetensors"])
def test_bundle_killed_mid_save_reads_as_one_whole_bundle(tiny_ct_run, tmp_path, monkeypatch, killed_before):
    """A save killed before model.json is replaced leaves the old bundle; killed after it (model.json ahead of
    model.safetensors), readers take the incoming weights model.json names, and the trainer's check says "rewrite"."""
    folder = tmp_path / "model"
    shutil.copytree(tiny_ct_run / "model", folder)
    model, meta = load_bundle(folder)
    old_step = meta["training"]["step"]
    new_state = {k: v + 1.0 if v.is_floating_point() else v for k, v in model.state_dict().items()}
    new_meta = {k: v for k, v in meta.items() if not k.startswith("_")}
    new_meta["training"] = {**meta["training"], "step": old_step + 1}

    real_replace = os.replace
    def replace_until_killed(src, dst):
        if Path(dst).name == killed_before:
            raise _Killed
        return real_replace(src, dst)
    monkeypatch.setattr(bundle_module.os, "replace", replace_until_killed)
    with pytest.raises(_Killed):
        save_bundle(folder, new_state, new_meta)
    monkeypatch.setattr(bundle_module.os, "replace", real_replace)

    loaded, loaded_meta = load_bundle(folder)
    expected = new_state if killed_before == "model.safetensors" else model.state_dict()
    assert loaded_meta["training"]["step"] == (old_step + 1 if killed_before == "model.safetensors" else old_step)
    for name, tensor in loaded.state_dict().items():
        assert torch.equal(tensor, expected[name]), name
    assert bundle_is_current(folder, old_step) == (killed_before == "model.json")
    assert not bundle_is_current(folder, old_step + 1)  # an unfinished save is rewritten on resume

    save_bundle(folder, new_state, new_meta)  # the rewrite finishes the bundle and leaves no incoming file
    assert bundle_is_current(folder, old_step + 1)
    assert sorted(p.name for p in folder.iterdir()) == ["model.json", "model.safetensors"]


def test_remove_temp_files_clears_what_atomic_writers_leave(tmp_path):
    leftovers = ["checkpoints/.step_00000004.tmp-0123456789ab.pt", "model/.model.tmp-0123456789ab.json",
                 "checkpoints/step_00000004.pt.tmp", "model/model.json.tmp", "config.json.tmp",
                 "cache/prostate_001-abc.tmp.npz", "samples/.step_2_0001.nii.gz.tmp-1a2b/step_2_0001.nii.gz"]
    kept = ["checkpoints/step_00000002.pt", "model/model.json", "events.jsonl", "input/notes.tmp"]
    for name in leftovers + kept:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("x")
    remove_temp_files(tmp_path)
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file()) == sorted(kept)


def test_trim_events_drops_replayed_steps_and_partial_lines(tmp_path):
    log = tmp_path / "events.jsonl"
    lines = [{"event": "start", "step": 0}, {"event": "progress", "phase": "train", "step": 3},
             {"event": "checkpoint", "step": 4}, {"event": "progress", "phase": "train", "step": 5}]
    log.write_text("".join(json.dumps(e) + "\n" for e in lines) + '{"event": "progress", "st')
    assert trim_events_after(log, 4) == 2
    assert [e.get("step") for e in read_events(log)] == [0, 3, 4]


# ---------------------------------------------------------------------------------------------- full disk

def _limit_file_size(limit: int):
    import resource  # POSIX only

    def apply() -> None:  # in the child: writes past `limit` bytes fail (EFBIG), as on a full disk
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


def test_disk_full_while_writing_a_checkpoint(ct_phantoms, tmp_path):
    run = tmp_path / "run"
    assert run_cli("train", *TINY, "--data", ct_phantoms, "--out", run, "--steps", 2, "--checkpoint-every", 2) == 0
    previous = list_checkpoints(run / "checkpoints")[-1]
    limit = previous.stat().st_size // 2  # smaller than a checkpoint, larger than every other file of the run
    assert max(p.stat().st_size for p in run.rglob("*") if p.is_file() and p.suffix != ".pt") < limit
    child = subprocess.run(_cli("train", "--profile", "prostate-ct", "--out", run, "--resume", "--steps", 4),
                           cwd=ROOT, env=CHILD_ENV, capture_output=True, text=True, timeout=600,
                           preexec_fn=_limit_file_size(limit))
    assert child.returncode == EXIT_FAILED, child.stderr[-2000:]
    assert "Traceback" not in child.stderr
    assert f"error: Could not write the checkpoint {run / 'checkpoints' / 'step_00000004.pt'} (File too large" \
        in child.stderr
    assert f"The previous checkpoint {previous.name} is intact" in child.stderr
    assert list_checkpoints(run / "checkpoints") == [previous] and not _temp_leftovers(run)
    assert load_checkpoint(previous)["step"] == 2
    last = list(read_events(run / "events.jsonl"))[-1]
    assert last["event"] == "error" and "Could not write the checkpoint" in last["message"]
    assert run_cli("train", "--profile", "prostate-ct", "--out", run, "--resume", "--steps", 4) == 0
    assert load_checkpoint(list_checkpoints(run / "checkpoints")[-1])["step"] == 4


def test_disk_full_while_writing_a_generated_volume(tiny_ct_run, ct_phantoms, tmp_path):
    reference = sorted(ct_phantoms.glob("*.nii.gz"))[0]
    args = ["generate", "--model", tiny_ct_run, "--num", 2, "--steps", 2, "--sampler", "ddim", "--device", "cpu",
            "--reference", reference]
    assert run_cli(*args, "--out", tmp_path / "ok") == 0
    size = (tmp_path / "ok" / "synthetic_0001.nii.gz").stat().st_size
    assert (tmp_path / "ok" / "events.jsonl").stat().st_size < size // 2
    out = tmp_path / "full"
    child = subprocess.run(_cli(*args, "--out", out), cwd=ROOT, env=CHILD_ENV, capture_output=True, text=True,
                           timeout=600, preexec_fn=_limit_file_size(size // 2))
    assert child.returncode == EXIT_FAILED, child.stderr[-2000:]
    assert "Traceback" not in child.stderr
    assert f"error: Could not write {out / 'synthetic_0001.nii.gz'}:" in child.stderr
    # no volume, no sidecar, no temp folder (the folder's marker and lock are output_folder.py's)
    assert sorted(p.name for p in out.iterdir() if p.name not in (".ctdiffusion-output", ".lock")) == ["events.jsonl"]


# ---------------------------------------------------------------------------------------------- edited bundle

def _edit(meta: dict, change: str) -> None:
    kwargs = meta["model"]["kwargs"]
    if change == "channels":
        kwargs["channels"] = [16, 32, 48]
    elif change == "channels-unnamed-preset":
        kwargs["channels"], meta["preset"] = [16, 32, 48], "my-own"
    elif change == "res-blocks-unnamed-preset":
        kwargs["num_res_blocks"], meta["preset"] = 2, "my-own"
    elif change == "preset":
        meta["preset"] = "default"
    elif change == "profile":
        meta["profile"] = "cardiac-masks"
    elif change == "grid":
        meta["data"]["grid"] = [30, 30, 8]
    elif change == "kinds-unnamed-preset":
        kwargs["level_kinds"], meta["preset"] = ["2d", "4d", "3d"], "my-own"


@pytest.mark.parametrize("change, words", [
    ("channels", "tensors have other shapes, e.g."),
    ("channels-unnamed-preset", "tensors have other shapes, e.g."),
    ("res-blocks-unnamed-preset", "tensors missing from model.safetensors (e.g."),
    ("profile", "profile cardiac-masks needs 4 image channel(s) in and out, the network has 1 in and 1 out"),
    ("grid", "Grid 30x30x8 does not divide by 4 in-plane"),
    ("kinds-unnamed-preset", "its network cannot be built (ValueError: level_kinds must be"),
])
def test_edited_model_json_is_one_clear_sentence(tiny_ct_run, tmp_path, capsys, change, words):
    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_ct_run / "model", bundle)
    meta = json.loads((bundle / "model.json").read_text(encoding="utf-8"))
    _edit(meta, change)
    (bundle / "model.json").write_text(json.dumps(meta, indent=2), encoding="utf-8")
    capsys.readouterr()
    code = run_cli("generate", "--model", bundle, "--num", 1, "--out", tmp_path / "gen", "--device", "cpu")
    err = capsys.readouterr().err
    assert code == EXIT_BAD_INPUT
    assert f"error: {bundle / 'model.json'} does not fit its weights: " in err and words in err, err
    assert "Traceback" not in err and "state_dict" not in err
    assert not (tmp_path / "gen").exists()


@pytest.fixture
def small_disk(tmp_path):
    """A real, tiny file system (tmpfs) for true 'No space left on device' errors; skipped where mount is not
    allowed (not root, containers without CAP_SYS_ADMIN, macOS/Windows)."""
    mounts = []

    def mount(size_bytes: int) -> Path:
        folder = tmp_path / f"disk{len(mounts)}"
        folder.mkdir()
        result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_bytes}", "tmpfs", str(folder)],
                                capture_output=True, text=True)
        if result.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({result.stderr.strip() or result.returncode})")
        mounts.append(folder)
        return folder

    if sys.platform != "linux" or shutil.which("mount") is None:
        pytest.skip("tmpfs needs Linux and mount")
    yield mount
    for folder in mounts:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True)


def test_real_full_disk_checkpoint_and_volume(ct_phantoms, tiny_ct_run, tmp_path, small_disk, capsys):
    # Room for the data cache, one checkpoint and the bundle, but not for a second checkpoint beside the first.
    sizes = {"ckpt": list_checkpoints(tiny_ct_run / "checkpoints")[-1].stat().st_size,
             "bundle": (tiny_ct_run / "model" / "model.safetensors").stat().st_size}
    disk = small_disk(int(1.5 * sizes["ckpt"] + sizes["bundle"] + (1 << 20)))
    run = disk / "run"
    assert run_cli("train", *TINY, "--data", ct_phantoms, "--out", run, "--steps", 4, "--checkpoint-every", 2) \
        == EXIT_FAILED
    err = capsys.readouterr().err
    assert f"Could not write the checkpoint {run / 'checkpoints' / 'step_00000004.pt'} (No space left on device" in err
    assert [p.name for p in list_checkpoints(run / "checkpoints")] == ["step_00000002.pt"]
    assert load_checkpoint(run / "checkpoints" / "step_00000002.pt")["step"] == 2 and not _temp_leftovers(run)
    load_bundle(run / "model")

    reference = sorted(ct_phantoms.glob("*.nii.gz"))[0]
    args = ["generate", "--model", tiny_ct_run, "--num", 1, "--steps", 2, "--sampler", "ddim", "--device", "cpu",
            "--reference", reference]
    assert run_cli(*args, "--out", tmp_path / "ok") == 0
    volume_size = (tmp_path / "ok" / "synthetic_0001.nii.gz").stat().st_size
    out = small_disk(max(volume_size // 2, 16384)) / "gen"
    capsys.readouterr()
    assert run_cli(*args, "--out", out) == EXIT_FAILED
    assert f"error: Could not write {out / 'synthetic_0001.nii.gz'}:" in capsys.readouterr().err
    # the folder's marker and lock are output_folder.py's
    assert sorted(p.name for p in out.iterdir() if p.name not in (".ctdiffusion-output", ".lock")) == ["events.jsonl"]


def test_resume_logs_a_checkpoint_whose_event_was_lost(ct_phantoms, tmp_path):
    # kill -9 between the checkpoint's rename and its event: the log must still show the checkpoint once.
    run = tmp_path / "run"
    assert run_cli("train", *TINY, "--data", ct_phantoms, "--out", run, "--steps", 2, "--checkpoint-every", 2) == 0
    log = run / "events.jsonl"
    lines = [line for line in log.read_text(encoding="utf-8").splitlines()
             if (parse_event_line(line) or {}).get("event") not in ("checkpoint", "done")]
    log.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    assert run_cli("train", "--profile", "prostate-ct", "--out", run, "--resume", "--steps", 4) == 0
    assert [e["step"] for e in read_events(log) if e["event"] == "checkpoint"] == [2, 4]


def test_bundle_of_a_since_redesigned_preset_still_generates(tiny_ct_run, tmp_path):
    """model.json's own network is what loads: a bundle whose preset name now means another network (presets are
    redesigned between versions; `default` was) keeps generating with the network it was trained as."""
    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_ct_run / "model", bundle)
    meta = json.loads((bundle / "model.json").read_text(encoding="utf-8"))
    _edit(meta, "preset")  # names `default`, whose network today is much larger than this tiny one
    (bundle / "model.json").write_text(json.dumps(meta, indent=2), encoding="utf-8")
    assert run_cli("generate", "--model", bundle, "--num", 2, "--out", tmp_path / "gen", "--device", "cpu",
                   "--steps", 2, "--batch-size", 2) == 0
    assert len(list((tmp_path / "gen").glob("*.nii.gz"))) == 2
