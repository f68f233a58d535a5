"""Reliability, third round (issue 30): the 34 bad inputs and faults a new user tried that were mishandled.

Each case is a row of a table: what the user runs, the exit code, and a sentence that must name the file or
setting. For the cases about the user's own files, every file of the user's is hashed (sha256) before and after,
and nothing new may appear anywhere under the test's folder. docs/reliability.md lists the same rows.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import ROOT, run_cli
from CTDiffusionLib.errors import EXIT_BAD_INPUT, EXIT_FAILED, InputError
from CTDiffusionLib.output_folder import OUTPUT_MARKER, claim_output_folder
from CTDiffusionLib.training.crash_recovery import LOCK_NAME

TINY = ["--profile", "prostate-ct", "--preset", "tiny", "--batch-size", "2", "--sample-every", "0"]
CHILD_ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
GEN = ["--num", 1, "--steps", 2, "--sampler", "ddim", "--device", "cpu"]


def _tree(folder: Path) -> dict[str, str]:
    """Every file under `folder` (relative name -> sha256), folders as "dir"."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(folder.rglob("*"))}


def _refused(capsys, *argv, code=EXIT_BAD_INPUT) -> str:
    assert run_cli(*argv) == code
    return capsys.readouterr().err


# ------------------------------------------------------------------------------- 1. the user's files stay untouched

def _user_folder(tmp_path: Path, files: dict[str, bytes]) -> Path:
    folder = tmp_path / "users"
    for name, data in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    return folder


USER_FOLDERS = {  # case -> the user's files in the --out folder
    "lock-and-notes": {".lock": b"my lock\n", "notes.txt": b"mine\n"},
    "only-lock": {".lock": b"my lock\n"},
    "events": {"events.jsonl": b'{"mine": 1}\n'},
    "cache": {"cache/keep.npz": b"not a cache of ours"},
    "report": {"report.html": b"<p>mine</p>", "metrics.json": b"{}", "figures/montage.png": b"png"},
}


@pytest.mark.parametrize("command", ["train", "generate", "evaluate", "phantoms"])
@pytest.mark.parametrize("case", sorted(USER_FOLDERS))
def test_a_folder_of_the_users_is_refused_and_left_as_it_was(case, command, tmp_path, ct_phantoms, tiny_ct_run,
                                                            capsys):
    out = _user_folder(tmp_path, USER_FOLDERS[case])
    before = _tree(tmp_path)
    argv = {"train": ["train", *TINY, "--data", ct_phantoms, "--steps", 1],
            "generate": ["generate", "--model", tiny_ct_run, *GEN],
            "evaluate": ["evaluate", "--real", ct_phantoms, "--generated", ct_phantoms],
            "phantoms": ["phantoms", "--profile", "prostate-ct", "--num", 1, "--size", "48x48x12"]}[command]
    err = _refused(capsys, *argv, "--out", out)
    assert f"--out {out} already holds files CTDiffusion did not write there" in err
    assert _tree(tmp_path) == before  # same bytes, and nothing new (no .lock, no marker, no events.jsonl)


@pytest.mark.parametrize("where", ["data folder", "its parent"])
def test_out_equal_to_the_data_folder_writes_nothing_there(where, tmp_path, ct_phantoms, capsys):
    data = tmp_path / "project" / "data"
    shutil.copytree(ct_phantoms, data)
    out = data if where == "data folder" else data.parent
    before = _tree(tmp_path)
    err = _refused(capsys, "train", *TINY, "--data", data, "--out", out, "--steps", 1)
    assert f"--out {out} already holds files CTDiffusion did not write there" in err
    assert _tree(tmp_path) == before


def test_two_generates_into_one_folder_the_second_is_refused(tmp_path, tiny_ct_run, capsys):
    out = tmp_path / "generated"
    with claim_output_folder(out, "generate"):  # the first generate, still running
        before = _tree(tmp_path)
        err = _refused(capsys, "generate", "--model", tiny_ct_run, *GEN, "--seed", 7, "--out", out)
        assert f"The folder {out} is in use by another `ctdiffusion generate` (process {os.getpid()}" in err
        assert _tree(tmp_path) == before
    assert run_cli("generate", "--model", tiny_ct_run, *GEN, "--out", out) == 0
    before = _tree(tmp_path)
    err = _refused(capsys, "generate", "--model", tiny_ct_run, *GEN, "--seed", 7, "--out", out)
    assert f"{out} already holds generated volumes" in err
    assert _tree(tmp_path) == before


def test_an_earlier_report_of_ours_is_not_replaced(tmp_path, ct_phantoms, capsys):
    out = tmp_path / "report"
    with claim_output_folder(out, "evaluate"):  # an earlier evaluate that wrote its report here
        (out / "metrics.json").write_text("{}")
    before = _tree(tmp_path)
    err = _refused(capsys, "evaluate", "--real", ct_phantoms, "--generated", ct_phantoms, "--out", out)
    assert f"--out {out} already holds a quality report (metrics.json)" in err
    lock = f"report/{LOCK_NAME}"  # names its last holder
    assert {k: v for k, v in _tree(tmp_path).items() if k != lock} == {k: v for k, v in before.items() if k != lock}


def test_generated_files_are_never_replaced(tmp_path):
    from CTDiffusionLib.runfolder import OutputExists, atomic_write

    target = tmp_path / "synthetic_0001.json"
    target.write_text("first")
    with pytest.raises(OutputExists, match="already exists; CTDiffusion does not replace it"):
        atomic_write(target, "second", exclusive=True)
    assert target.read_text() == "first" and sorted(p.name for p in tmp_path.iterdir()) == [target.name]


def test_outputs_are_marked_and_old_run_folders_keep_resuming(tmp_path, ct_phantoms, tiny_ct_run, capsys):
    run = tmp_path / "run"
    shutil.copytree(tiny_ct_run, run)
    (run / OUTPUT_MARKER).unlink(missing_ok=True)  # a run folder of a version before the marker
    assert run_cli("train", "--profile", "prostate-ct", "--out", run, "--resume", "--steps", 7) == 0
    assert json.loads((tmp_path / "run" / "config.json").read_text())["format"] == "ctdiffusion-run/1"
    # a generate folder is not a run folder, and the other way round
    gen = tmp_path / "gen"
    assert run_cli("generate", "--model", run, *GEN, "--out", gen) == 0
    assert json.loads((gen / OUTPUT_MARKER).read_text()) == {"format": "ctdiffusion-output/1", "command": "generate"}
    before = _tree(tmp_path)
    err = _refused(capsys, "train", *TINY, "--data", ct_phantoms, "--out", gen, "--steps", 1)
    assert f"--out {gen} is an output folder of `ctdiffusion generate`, not of `train`" in err
    assert _tree(tmp_path) == before


def test_an_empty_folder_of_the_users_is_left_empty_when_refused(tmp_path, capsys):
    out = tmp_path / "empty"
    out.mkdir()
    err = _refused(capsys, "train", *TINY, "--data", tmp_path / "missing", "--out", out, "--steps", 1)
    assert "missing" in err
    assert list(out.iterdir()) == []


# ------------------------------------------------------------------------------- 2. a sentence, never a traceback

def _unwritable_folder(tmp_path: Path) -> Path:
    """A folder no command can write into: a read-only one for a normal user; root writes anywhere on a normal
    file system, so there a folder on sysfs, where nobody may create anything."""
    if os.geteuid() != 0:
        folder = tmp_path / "read-only"
        folder.mkdir()
        folder.chmod(0o555)
        return folder / "out"
    return Path("/sys/ctdiffusion-reliability-test/out")


@pytest.mark.parametrize("command", ["train", "generate", "evaluate"])
def test_read_only_out_is_one_sentence(command, tmp_path, ct_phantoms, tiny_ct_run, capsys):
    out = _unwritable_folder(tmp_path)
    argv = {"train": ["train", *TINY, "--data", ct_phantoms, "--steps", 1],
            "generate": ["generate", "--model", tiny_ct_run, *GEN],
            "evaluate": ["evaluate", "--real", ct_phantoms, "--generated", ct_phantoms]}[command]
    err = _refused(capsys, *argv, "--out", out)
    assert f"Cannot write into --out {out} (" in err and "Traceback" not in err
    assert not out.exists()


def _nifti_with_header(path: Path, array: np.ndarray, **fields) -> Path:
    """A NIfTI-1 file (uncompressed) written by ITK, then header fields patched in place: dims (x, y, z), pixdim
    (x, y, z) or scl_slope; the voxel data stay as ITK wrote them."""
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((1.0, 1.0, 2.5))
    sitk.WriteImage(image, str(path))
    header = bytearray(path.read_bytes())
    if "dims" in fields:
        header[42:48] = struct.pack("<3h", *fields["dims"])
    if "pixdim" in fields:
        header[80:92] = struct.pack("<3f", *fields["pixdim"])
    if "srow_y" in fields:  # a sheared sform, which the reader uses (sform_code 1)
        header[254:256] = struct.pack("<h", 1)
        header[296:312] = struct.pack("<4f", *fields["srow_y"])
    if "scl_slope" in fields:
        header[112:120] = struct.pack("<2f", fields["scl_slope"], 0.0)
    path.write_bytes(bytes(header))
    return path


def _ct(shape=(12, 48, 48), dtype=np.int16, low=-1000, high=400, seed=0) -> np.ndarray:
    """A plausible little CT in HU: air around a noisy body."""
    rng = np.random.default_rng(seed)
    z, y, x = np.indices(shape)
    body = (y - shape[1] / 2) ** 2 + (x - shape[2] / 2) ** 2 < (min(shape[1:]) / 3) ** 2
    return np.where(body, rng.uniform(-100, high, shape), low).astype(dtype)


def _data_folder(tmp_path: Path, ct_phantoms: Path, bad_name: str, write_bad) -> tuple[Path, Path]:
    data = tmp_path / "data"
    shutil.copytree(ct_phantoms, data)
    bad = write_bad(data / bad_name)
    return data, bad


# (case, file name, how to write it, phrase after the file's path)
BAD_CT_FILES = [
    ("volume larger than memory", "huge.nii", lambda p: _nifti_with_header(p, _ct(), dims=(30000, 30000, 30000)),
     "needs"),
    ("uint16 near 60000", "u16.nii.gz", lambda p: _write(p, (_ct().astype(np.int32) + 61000).astype(np.uint16)),
     "which are not Hounsfield units"),
    ("int32 near 2e9", "i32.nii.gz", lambda p: _write(p, (_ct().astype(np.int64) + 2_000_000_000).astype(np.int32)),
     "which are not Hounsfield units"),
    ("NIfTI scale slope 1e30", "slope.nii", lambda p: _nifti_with_header(p, _ct(), scl_slope=1e30),
     "which are not Hounsfield units"),
    ("float64 with 1e300", "f64.nrrd", lambda p: _write(p, np.where(_ct() > 0, 1e300, -1000.0)),
     "which are not Hounsfield units"),
    ("constant volume", "flat.nii.gz", lambda p: _write(p, np.full((12, 48, 48), 40, np.int16)),
     "has the same value (40) in every voxel"),
    ("1x1x1 volume", "dot.nii.gz", lambda p: _write(p, np.full((1, 1, 1), -1000, np.int16)),
     "is only 1x1x1 voxels"),
    ("3x3x3 volume", "tiny.nii.gz", lambda p: _write(p, _ct((3, 3, 3))), "is only 3x3x3 voxels"),
    ("sheared sform (NIfTI)", "shear.nii", lambda p: _nifti_with_header(p, _ct(), srow_y=(0.3, 0.954, 0.0, 0.0)),
     "its sform matrix is sheared (the x and y axes meet at 73.3 degrees, not 90)"),
    ("sheared direction (NRRD)", "shear.nrrd", lambda p: _write(p, _ct(), direction=_SHEAR),
     "sheared or scaled direction matrix (its x and y axes meet at 73.3 degrees"),
    ("zero spacing", "zero.nii", lambda p: _nifti_with_header(p, _ct(), pixdim=(0.0, 1.0, 2.5)),
     "voxel size of 0 mm along x"),
    ("NaN spacing", "nan.nii", lambda p: _nifti_with_header(p, _ct(), pixdim=(1.0, float("nan"), 2.5)),
     "voxel size of nan mm along y"),
    ("negative spacing", "neg.nii", lambda p: _nifti_with_header(p, _ct(), pixdim=(1.0, 1.0, -2.5)),
     "voxel size of -2.5 mm along z"),
]
_SHEAR = (1.0, 0.0, 0.0, 0.3, 0.954, 0.0, 0.0, 0.0, 1.0)  # x leans 16.7 degrees towards y: axes at 73.3 degrees


def _write(path: Path, array: np.ndarray, direction=None) -> Path:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((1.0, 1.0, 2.5))
    if direction is not None:
        image.SetDirection(direction)
    sitk.WriteImage(image, str(path))
    return path


@pytest.mark.parametrize("case,name,write_bad,phrase", BAD_CT_FILES, ids=[c[0] for c in BAD_CT_FILES])
def test_bad_ct_file_is_refused_naming_it(case, name, write_bad, phrase, tmp_path, ct_phantoms, capsys):
    data, bad = _data_folder(tmp_path, ct_phantoms, name, write_bad)
    before = _tree(data)
    err = _refused(capsys, "train", *TINY, "--data", data, "--out", tmp_path / "run", "--steps", 1)
    assert str(bad) in err and phrase in err, err
    assert "Traceback" not in err
    assert not (tmp_path / "run").exists() and _tree(data) == before


# (case, argv after the command's own, phrase); argparse refusals exit 2 with the flag named
BAD_SETTINGS = [
    ("train --seed -1", ["train", *TINY, "--seed", "-1"], "--seed: expected a whole number from 0 to 4294967295"),
    ("generate --seed 2^64-1", ["generate", "--model", "M", "--num", "1", "--seed", "18446744073709551615"],
     "--seed: expected a whole number from 0 to 4294967295, got 18446744073709551615"),
    ("train --lr nan", ["train", *TINY, "--lr", "nan"], "--lr: expected a finite number > 0, got nan"),
    ("generate --guidance-scale nan", ["generate", "--model", "M", "--num", "1", "--guidance-scale", "nan"],
     "--guidance-scale: expected a finite number >= 0, got nan"),
    ("generate --guidance-scale inf", ["generate", "--model", "M", "--num", "1", "--guidance-scale", "inf"],
     "--guidance-scale: expected a finite number >= 0, got inf"),
]


@pytest.mark.parametrize("case,argv,phrase", BAD_SETTINGS, ids=[c[0] for c in BAD_SETTINGS])
def test_bad_setting_is_refused_at_parse(case, argv, phrase, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run_cli(*argv, "--out", tmp_path / "out")
    assert exit_info.value.code == EXIT_BAD_INPUT
    assert phrase in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_memory_limit_on_the_process_counts(tmp_path):
    """Under `ulimit -v` (as the issue's MemoryError case ran) the estimate compares with what the limit leaves."""
    code = ("import resource; resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30)); "
            "from CTDiffusionLib.memory import available_bytes; print(*available_bytes(), sep='|')")
    child = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=CHILD_ENV, capture_output=True, text=True,
                           timeout=120)
    have, kind = child.stdout.strip().split("|")
    assert kind == "memory under this process's limit" and 0 < int(have) < 2 << 30, child.stderr


def test_batch_too_large_for_memory_is_refused_before_allocating(tmp_path, ct_phantoms, capsys):
    err = _refused(capsys, "train", *TINY[:-4], "--batch-size", 100000, "--sample-every", 0, "--data", ct_phantoms,
                   "--out", tmp_path / "run", "--steps", 1)
    assert "Training with --batch-size 100000 on the 32x32x8 grid needs" in err and "this machine has" in err
    assert not (tmp_path / "run").exists()


def test_phantoms_too_large_for_memory(tmp_path, capsys):
    err = _refused(capsys, "phantoms", "--profile", "prostate-ct", "--num", 1, "--size", "100000x100000x1000",
                   "--out", tmp_path / "ph")
    assert "a 100000x100000x1000 phantom volume needs" in err and "this machine has" in err
    assert not (tmp_path / "ph").exists()


@pytest.mark.parametrize("encoding", ["latin-1", "utf-16"])
def test_condition_csv_in_another_encoding(encoding, tmp_path, ct_phantoms, capsys):
    table = tmp_path / "conditions.csv"
    rows = ["file,site"] + [f"{p.name},Zürich" for p in sorted(ct_phantoms.glob("*.nii.gz"))]
    table.write_bytes("\n".join(rows).encode(encoding))
    argv = ["train", *TINY, "--data", ct_phantoms, "--out", tmp_path / "run", "--steps", 1, "--conditions", table]
    if encoding == "utf-16":  # a BOM says what it is: read as such (stopped after the data is read)
        from CTDiffusionLib.data.discovery import apply_condition_csv, discover_cases

        cases = apply_condition_csv(discover_cases([ct_phantoms], "prostate-ct"), table)
        assert {c.conditions["site"] for c in cases} == {"Zürich"}
        return
    err = _refused(capsys, *argv)
    assert f"The condition table {table} is not UTF-8 text (byte 0xfc" in err


def test_info_cfg_not_in_utf8(tmp_path, mask_phantoms, capsys):
    data = tmp_path / "acdc"
    shutil.copytree(mask_phantoms, data)
    info = sorted(data.rglob("Info.cfg"))[0]
    info.write_bytes(info.read_bytes() + "Comment: Müller\n".encode("latin-1"))
    err = _refused(capsys, "train", "--profile", "cardiac-masks", "--preset", "tiny2d", "--data", data, "--out",
                   tmp_path / "run", "--steps", 1)
    assert f"The ACDC info file {info} is not UTF-8 text" in err


@pytest.mark.parametrize("damage", ["cut short", "garbage"])
def test_damaged_cache_on_resume_is_prepared_again(damage, tmp_path, tiny_ct_run, caplog):
    run = tmp_path / "run"
    shutil.copytree(tiny_ct_run, run)
    victim = sorted((run / "cache").glob("*.npz"))[0]
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) // 2] if damage == "cut short" else os.urandom(len(data)))
    assert run_cli("train", "--profile", "prostate-ct", "--out", run, "--resume", "--steps", 7) == 0
    assert f"The cached case {victim} is damaged" in caplog.text
    assert np.load(victim)["n"] == 1  # written again, whole


def _bundle_copy(tmp_path: Path, tiny_ct_run: Path) -> Path:
    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_ct_run / "model", bundle)
    return bundle


def _edit_meta(bundle: Path, edit) -> None:
    meta = json.loads((bundle / "model.json").read_text())
    edit(meta)
    (bundle / "model.json").write_text(json.dumps(meta))


# (case, edit of model.json or of the weights, phrase)
EDITED_BUNDLES = [
    ("grid 4096^3", lambda b: _edit_meta(b, lambda m: m["data"].update(grid=[4096, 4096, 4096])),
     "data.grid is [4096, 4096, 4096]; 3 whole numbers from 1 to 2048 are expected"),
    ("grid 2048^3", lambda b: _edit_meta(b, lambda m: m["data"].update(grid=[2048, 2048, 2048])), "needs"),
    ("deeply nested", lambda b: (b / "model.json").write_text('{"a": ' * 100000 + "1" + "}" * 100000),
     "is not valid JSON (nested too deeply)"),
    ("num_res_blocks 100000", lambda b: _edit_meta(b, lambda m: m["model"]["kwargs"].update(num_res_blocks=100000)),
     "model.kwargs.num_res_blocks is 100000"),
    ("channels 100000", lambda b: _edit_meta(b, lambda m: m["model"]["kwargs"].update(channels=[16, 32, 100000])),
     "model.kwargs.channels is [16, 32, 100000]; whole numbers from 0 to 4096 are expected"),
    ("channels 4096", lambda b: _edit_meta(b, lambda m: m["model"]["kwargs"].update(channels=[4096, 4096, 4096])),
     "needs"),
    ("beta_start NaN", lambda b: _edit_meta(b, lambda m: m["diffusion"].update(beta_start=float("nan"))),
     "diffusion.beta_start is NaN; a finite number is expected"),
    ("beta_start above beta_end", lambda b: _edit_meta(b, lambda m: m["diffusion"].update(beta_start=0.5)),
     "0 < beta_start < beta_end < 1 is expected"),
    ("weights -> /dev/zero", lambda b: ((b / "model.safetensors").unlink(), (b / "model.safetensors")
                                         .symlink_to("/dev/zero")), "is not a regular file"),
    ("weights cut short", lambda b: (b / "model.safetensors").write_bytes((b / "model.safetensors").read_bytes()[:-10]),
     "its safetensors header declares"),
    ("weights padded", lambda b: (b / "model.safetensors").write_bytes(
        (b / "model.safetensors").read_bytes() + b"\0" * 10), "its safetensors header declares"),
    ("weights name outside", lambda b: _edit_meta(b, lambda m: m.update(weights="../../etc/passwd")),
     "weights is '../../etc/passwd'"),
]


@pytest.mark.parametrize("case,edit,phrase", EDITED_BUNDLES, ids=[c[0] for c in EDITED_BUNDLES])
def test_edited_bundle_is_refused_before_building(case, edit, phrase, tmp_path, tiny_ct_run, capsys):
    bundle = _bundle_copy(tmp_path, tiny_ct_run)
    edit(bundle)
    err = _refused(capsys, "generate", "--model", bundle, *GEN, "--out", tmp_path / "gen")
    assert phrase in err and "Traceback" not in err, err
    assert not (tmp_path / "gen").exists()


def test_viewer_port_in_use(tmp_path, tiny_ct_run, capsys):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        err = _refused(capsys, "view", tiny_ct_run, "--port", port)
    assert f"--port {port} on 127.0.0.1 cannot be used (Address already in use)" in err


def test_memory_error_that_reaches_the_cli_is_one_sentence(tmp_path, ct_phantoms, capsys, monkeypatch):
    from CTDiffusionLib.training import trainer

    def out_of_memory(*args, **kwargs):
        raise MemoryError()

    monkeypatch.setattr(trainer, "prepare_dataset", out_of_memory)
    err = _refused(capsys, "train", *TINY, "--data", ct_phantoms, "--out", tmp_path / "run", "--steps", 1,
                   code=EXIT_FAILED)
    assert "error: The computer ran out of memory." in err and "Traceback" not in err


def _limit_file_size(limit: int):
    import resource
    import signal

    def apply() -> None:  # in the child: writes past `limit` bytes fail (EFBIG), as on a full disk
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


def test_disk_full_during_evaluate_leaves_no_half_report(tmp_path, ct_phantoms, tiny_ct_run):
    generated = tmp_path / "gen"
    assert run_cli("generate", "--model", tiny_ct_run, "--num", 2, "--steps", 2, "--sampler", "ddim", "--out",
                   generated) == 0
    out = tmp_path / "report"
    env = {**CHILD_ENV, "CTDIFFUSION_EVAL_FEATURE_STEPS": "2"}
    child = subprocess.run([sys.executable, "-m", "CTDiffusionLib", "evaluate", "--real", ct_phantoms, "--train",
                            ct_phantoms, "--generated", generated, "--out", out, "--device", "cpu"],
                           cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
                           preexec_fn=_limit_file_size(20_000))
    assert child.returncode == EXIT_FAILED, child.stderr[-3000:]
    assert "Traceback" not in child.stderr
    assert "error: Could not write" in child.stderr
    assert not out.exists()  # no events.jsonl, no empty figures/


# ------------------------------------------------------------------------------- 3. ACDC, resume

def test_acdc_problems_are_said(tmp_path, mask_phantoms, caplog):
    from CTDiffusionLib.data.discovery import discover_cases

    data = tmp_path / "acdc"
    shutil.copytree(mask_phantoms, data)
    patients = sorted(p.parent for p in data.rglob("Info.cfg"))
    info = patients[0] / "Info.cfg"
    info.write_text(info.read_text().replace(f"Group: {_group(info)}", "Group: XYZ"))
    es_frame = _frame(patients[1] / "Info.cfg", "ES")
    for mask in patients[1].glob(f"*_frame{es_frame:02d}_gt.nii.gz"):
        mask.unlink()
    for mask in patients[2].glob("*_gt.nii.gz"):
        mask.unlink()
    cases = discover_cases([data], "cardiac-masks")
    assert f"The ACDC info file {info} names the group 'XYZ', which is not one of ACDC's NOR" in caplog.text
    assert f"The ACDC patient folder {patients[1]} has no ES mask (frame {es_frame}" in caplog.text
    assert "it trains on ED only" in caplog.text
    assert f"The ACDC patient folder {patients[2]} has an Info.cfg but no *_frameNN_gt masks; it is left out" \
        in caplog.text
    assert not any(Path(c.path).parent == patients[2] for c in cases)


def _group(info: Path) -> str:
    return next(line.split(":", 1)[1].strip() for line in info.read_text().splitlines() if line.startswith("Group"))


def _frame(info: Path, phase: str) -> int:
    return int(next(line.split(":", 1)[1] for line in info.read_text().splitlines() if line.startswith(phase + ":")))


RESUME_FLAGS = [
    ("--preset", ["--preset", "demo"], "--preset demo differs from the run's tiny"),
    ("--grid", ["--grid", "64x64x8"], "--grid 64x64x8 differs from the run's 32x32x8"),
    ("--batch-size", ["--batch-size", "4"], "--batch-size 4 differs from the run's 2"),
    ("--lr", ["--lr", "0.5"], "--lr 0.5 differs from the run's 0.001"),
    ("--data", ["--data", "OTHER"], "--resume continues the run on its own data, but --data"),
]


@pytest.mark.parametrize("flag,extra,phrase", RESUME_FLAGS, ids=[r[0] for r in RESUME_FLAGS])
def test_resume_with_other_settings_is_refused(flag, extra, phrase, tmp_path, tiny_ct_run, capsys):
    run = tmp_path / "run"
    shutil.copytree(tiny_ct_run, run)
    extra = [str(tmp_path) if a == "OTHER" else a for a in extra]
    before = _tree(run)
    err = _refused(capsys, "train", "--profile", "prostate-ct", "--out", run, "--resume", "--steps", 7, *extra)
    assert phrase in err, err
    ours = ("events.jsonl", LOCK_NAME)  # the error event is added, and the lock names its last holder
    assert {k: v for k, v in _tree(run).items() if k not in ours} == {k: v for k, v in before.items() if k not in ours}


def test_resume_with_its_own_settings_is_fine(tmp_path, tiny_ct_run, ct_phantoms):
    run = tmp_path / "run"
    shutil.copytree(tiny_ct_run, run)
    assert run_cli("train", *TINY, "--data", ct_phantoms, "--out", run, "--resume", "--steps", 7) == 0


@pytest.mark.parametrize("change", ["removed", "added", "replaced or modified"])
def test_resume_after_the_data_changed(change, tmp_path, ct_phantoms, capsys):
    data = tmp_path / "data"
    shutil.copytree(ct_phantoms, data)
    run = tmp_path / "run"
    assert run_cli("train", *TINY, "--data", data, "--out", run, "--steps", 2, "--checkpoint-every", 2) == 0
    files = sorted(data.glob("*.nii.gz"))
    if change == "removed":
        files[0].unlink()
    elif change == "added":
        shutil.copy(files[0], data / "extra_case.nii.gz")
    else:
        image = sitk.ReadImage(str(files[1]))
        sitk.WriteImage(image + 1, str(files[1]))
    err = _refused(capsys, "train", "--profile", "prostate-ct", "--out", run, "--resume", "--steps", 3)
    assert f"The data of the run in {run} changed since it started: cases 1 {change} (" in err, err
    assert run_cli("train", "--profile", "prostate-ct", "--out", run, "--resume", "--steps", 3,
                   "--accept-changed-data") == 0


# ------------------------------------------------------------------------------- 4. privacy

@pytest.mark.parametrize("turn", ["front-back flip", "left-right flip", "90", "180", "270"])
def test_near_copy_search_finds_flipped_and_turned_copies(turn):
    from CTDiffusionLib.evaluation import novelty
    from CTDiffusionLib.evaluation.similarity import similarity_for

    case = _ct((8, 48, 48), seed=3).astype(np.float32)
    case[:, 10:20, 30:40] = 900  # something off-centre, so every flip and turn differs from the original
    copy = {"front-back flip": case[:, ::-1, :], "left-right flip": case[:, :, ::-1],
            "90": np.rot90(case, 1, axes=(1, 2)), "180": np.rot90(case, 2, axes=(1, 2)),
            "270": np.rot90(case, 3, axes=(1, 2))}[turn].copy()
    others = [_ct((8, 48, 48), seed=s).astype(np.float32) for s in (4, 5)]
    sim = similarity_for("prostate-ct", case.shape)
    no_augmentation = {"data": {"augment": {"zoom": [1.0, 1.0], "flip": False, "rotate_deg": 0.0}}}
    space = novelty.augmentation_space("prostate-ct", no_augmentation)
    found = novelty.AlignedSearch(sim, space, is_label=False).matrix([copy], [case, *others])
    without_turns = novelty.AlignedSearch(sim, {**space, "quarter_turns": [0.0]}, is_label=False).matrix(
        [copy], [case, *others])
    assert found[0, 0] > 0.99 and found[0, 0] == found[0].max()
    if turn in ("front-back flip", "90", "180", "270"):  # what the earlier left-right-only search missed
        assert without_turns[0, 0] < 0.9
