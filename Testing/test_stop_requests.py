"""Every job stops on its output folder's stop-request file (CTDiffusionLib/stopping.py), the signal-free path the
Slicer module's Stop/Cancel relies on where CTRL_BREAK cannot reach the child (Windows, PythonSlicer launcher)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import run_cli

from CTDiffusionLib.errors import EXIT_INTERRUPTED
from CTDiffusionLib.jobs.commands import build_command
from CTDiffusionLib.requests import EvaluateRequest, GenerateRequest, TrainRequest
from CTDiffusionLib.runfolder import RunFolder


def test_every_job_command_carries_its_stop_file(tmp_path):
    jobs = [TrainRequest(profile="prostate-ct", data=str(tmp_path / "d"), out=str(tmp_path / "run")),
            GenerateRequest(model=str(tmp_path / "run"), num=2, out=str(tmp_path / "gen")),
            EvaluateRequest(real=str(tmp_path / "d"), generated=str(tmp_path / "gen"), out=str(tmp_path / "rep"))]
    for settings in jobs:
        command = build_command(settings, in_slicer=False)
        assert command.stop_file == str(RunFolder(settings.out).stop_request), settings


def _events(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "events.jsonl").read_text().splitlines() if line.strip()]


def test_generation_stops_at_the_next_step_when_the_stop_file_appears(tiny_ct_run, tmp_path, monkeypatch):
    from CTDiffusionLib import generation

    out = tmp_path / "gen"
    real_sample = generation.sample

    def sample_then_request_stop(*args, **kwargs):  # the parent's Stop arrives while the first volume is sampled
        RunFolder(out).stop_request.write_text("stop")
        return real_sample(*args, **kwargs)

    monkeypatch.setattr(generation, "sample", sample_then_request_stop)
    code = run_cli("generate", "--model", tiny_ct_run, "--num", 3, "--out", out, "--sampler", "ddim", "--steps", 4)
    assert code == EXIT_INTERRUPTED
    assert not list(out.glob("*.nii.gz"))  # stopped inside the first volume: nothing half-written
    done = _events(out)[-1]
    assert done["event"] == "done" and done["status"] == "stopped" and "0 of 3" in done["message"]


def test_a_stale_stop_file_does_not_stop_the_next_generation(tiny_ct_run, tmp_path):
    from CTDiffusionLib.runfolder import OUTPUT_MARKER

    out = tmp_path / "gen"  # a folder of ours whose earlier generate was stopped before its first volume
    out.mkdir()
    (out / OUTPUT_MARKER).write_text('{"format": "ctdiffusion-output/1", "command": "generate"}')
    RunFolder(out).stop_request.write_text("left by an earlier job")
    assert run_cli("generate", "--model", tiny_ct_run, "--num", 1, "--out", out, "--sampler", "ddim",
                   "--steps", 2) == 0
    assert len(list(out.glob("*.nii.gz"))) == 1


def test_evaluation_stops_between_stages_and_leaves_no_report(tiny_ct_run, ct_phantoms, tmp_path, monkeypatch):
    from CTDiffusionLib.evaluation import pipeline

    generated = tmp_path / "gen"
    assert run_cli("generate", "--model", tiny_ct_run, "--num", 2, "--out", generated, "--sampler", "ddim",
                   "--steps", 2) == 0
    out = tmp_path / "report"
    real_load = pipeline._load_inputs

    def load_then_request_stop(*args, **kwargs):
        RunFolder(out).stop_request.write_text("stop")
        return real_load(*args, **kwargs)

    monkeypatch.setattr(pipeline, "_load_inputs", load_then_request_stop)
    code = run_cli("evaluate", "--real", ct_phantoms, "--generated", generated, "--out", out, "--device", "cpu")
    assert code == EXIT_INTERRUPTED
    assert not (out / "report.html").exists() and not (out / "metrics.json").exists()


def test_stop_flag_is_the_one_the_trainer_uses():
    from CTDiffusionLib import stopping
    from CTDiffusionLib.training import trainer

    assert trainer.StopFlag is stopping.StopFlag
    with pytest.raises(Exception) as raised:
        with stopping.stop_requests(None) as flag:
            flag.signalled = True
            stopping.check("stopped here", "hint")
    assert raised.value.exit_code == EXIT_INTERRUPTED


def test_a_stop_request_file_in_a_folder_of_the_users_is_left_alone(tmp_path):
    """A stale request is dropped only in a folder of ours: the user's own file of that name stays, byte for byte."""
    from CTDiffusionLib.runfolder import OUTPUT_MARKER
    from CTDiffusionLib.stopping import StopFlag

    users = tmp_path / "users"
    users.mkdir()
    (users / "stop-request").write_text("mine")
    StopFlag.for_output(users)
    assert (users / "stop-request").read_text() == "mine"
    ours = tmp_path / "ours"
    ours.mkdir()
    (ours / OUTPUT_MARKER).write_text('{"format": "ctdiffusion-output/1", "command": "generate"}')
    (ours / "stop-request").write_text("")
    StopFlag.for_output(ours)
    assert not (ours / "stop-request").exists()
