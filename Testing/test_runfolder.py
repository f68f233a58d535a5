"""Run-folder layout, its readers, and the one atomic write every save uses."""

import json
import os

import pytest

from CTDiffusionLib import runfolder
from CTDiffusionLib.errors import InputError
from CTDiffusionLib.runfolder import (RunFolder, atomic_write, is_temporary, list_checkpoints, read_config, read_json,
                                      read_model_json, resolve_bundle_dir, temporary_path, write_json)


def test_layout_names(tmp_path):
    run = RunFolder(tmp_path)
    assert run.config == tmp_path / "config.json" and run.dataset == tmp_path / "dataset.json"
    assert run.events == tmp_path / "events.jsonl" and run.checkpoints == tmp_path / "checkpoints"
    assert run.samples == tmp_path / "samples" and run.input == tmp_path / "input"
    assert run.bundle.weights == tmp_path / "model" / "model.safetensors"
    assert run.bundle.meta == tmp_path / "model" / "model.json"
    assert run.checkpoint(500) == tmp_path / "checkpoints" / "step_00000500.pt"
    assert not run.is_run() and not tmp_path.joinpath("checkpoints").exists()  # building one creates nothing


def test_atomic_write_text_bytes_and_callable(tmp_path):
    target = tmp_path / "sub" / "a.json"
    atomic_write(target, '{"x": 1}')
    assert json.loads(target.read_text()) == {"x": 1}
    atomic_write(target, b"\x00\x01")
    assert target.read_bytes() == b"\x00\x01"
    seen = []

    def writer(tmp):
        seen.append(tmp)
        tmp.write_bytes(b"from writer")

    atomic_write(tmp_path / "vol.nii.gz", writer)
    assert (tmp_path / "vol.nii.gz").read_bytes() == b"from writer"
    # the writer got a hidden file in the same folder keeping the full suffix (SimpleITK / numpy pick formats by it)
    assert seen[0].parent == tmp_path and seen[0].name.startswith(".") and seen[0].name.endswith(".nii.gz")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sub", "vol.nii.gz"]


def test_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path):
    target = tmp_path / "config.json"
    write_json(target, {"old": True})

    def broken(tmp):
        tmp.write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write(target, broken)
    with pytest.raises(KeyboardInterrupt):
        atomic_write(target, lambda tmp: (_ for _ in ()).throw(KeyboardInterrupt()))
    assert json.loads(target.read_text()) == {"old": True}
    assert [p.name for p in tmp_path.iterdir()] == ["config.json"]


def test_writer_that_writes_nothing_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        atomic_write(tmp_path / "x.bin", lambda tmp: None)
    assert list(tmp_path.iterdir()) == []


def test_temporary_names_are_recognised_and_never_listed_as_checkpoints(tmp_path):
    tmp = temporary_path(tmp_path / "checkpoints" / "step_00000010.pt")
    assert is_temporary(tmp) and not is_temporary(tmp_path / "step_00000010.pt")
    (tmp_path / "checkpoints").mkdir()
    tmp.write_bytes(b"partial")
    for step in (20, 10):
        (tmp_path / "checkpoints" / f"step_{step:08d}.pt").write_bytes(b"x")
    assert [p.name for p in list_checkpoints(tmp_path / "checkpoints")] == ["step_00000010.pt", "step_00000020.pt"]
    assert list_checkpoints(tmp_path / "nothing") == []


def test_read_json_errors_name_the_file(tmp_path):
    with pytest.raises(InputError, match="missing"):
        read_json(tmp_path / "dataset.json", "data set description")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(InputError, match="bad.json .*not valid JSON"):
        read_json(tmp_path / "bad.json")
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(InputError, match="not hold a JSON object"):
        read_json(tmp_path / "list.json")


def test_read_config_checks_format(tmp_path):
    with pytest.raises(InputError, match="holds no CTDiffusion run"):
        read_config(tmp_path)
    write_json(tmp_path / "config.json", {"format": "something-else"})
    with pytest.raises(InputError, match="not a CTDiffusion run configuration"):
        read_config(tmp_path)
    write_json(tmp_path / "config.json", {"format": runfolder.RUN_FORMAT, "profile": "prostate-ct"})
    assert read_config(tmp_path)["profile"] == "prostate-ct"
    assert RunFolder(tmp_path).is_run()


def test_bundle_resolution_and_model_json(tmp_path):
    run = RunFolder(tmp_path / "run")
    run.checkpoints.mkdir(parents=True)
    with pytest.raises(InputError, match="no model bundle yet"):
        resolve_bundle_dir(run.root)
    with pytest.raises(InputError, match="pickled"):
        resolve_bundle_dir(tmp_path / "weights.pt")
    with pytest.raises(InputError, match="does not exist"):
        resolve_bundle_dir(tmp_path / "missing")
    write_json(run.bundle.meta, {"format": runfolder.BUNDLE_FORMAT, "profile": "cardiac-masks"})
    for given in (run.root, run.model, run.bundle.meta):
        assert resolve_bundle_dir(given) == run.model
    meta = read_model_json(run.root)
    assert meta["profile"] == "cardiac-masks" and meta["_folder"] == str(run.model)
    write_json(run.bundle.meta, {"format": "other"})
    with pytest.raises(InputError, match="is not a ctdiffusion-bundle/1 file"):
        read_model_json(run.root)
    run.bundle.meta.write_text("{")
    with pytest.raises(InputError, match="not valid JSON"):
        read_model_json(run.root)


@pytest.mark.skipif(os.name == "nt", reason="POSIX permissions")
def test_unreadable_json_is_an_input_error(tmp_path):
    path = tmp_path / "config.json"
    path.write_text("{}")
    path.chmod(0)
    try:
        if os.access(path, os.R_OK):
            pytest.skip("running as root: permissions are not enforced")
        with pytest.raises(InputError, match="cannot be read"):
            read_json(path)
    finally:
        path.chmod(0o644)
