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


@pytest.mark.parametrize("command", ["train", "generate", "evaluate"])
@pytest.mark.parametrize("case", sorted(USER_FOLDERS))
def test_a_folder_of_the_users_is_refused_and_left_as_it_was(case, command, tmp_path, ct_phantoms, tiny_ct_run,
                                                            capsys):
    out = _user_folder(tmp_path, USER_FOLDERS[case])
    before = _tree(tmp_path)
    argv = {"train": ["train", *TINY, "--data", ct_phantoms, "--steps", 1],
            "generate": ["generate", "--model", tiny_ct_run, *GEN],
            "evaluate": ["evaluate", "--real", ct_phantoms, "--generated", ct_phantoms]}[command]
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
