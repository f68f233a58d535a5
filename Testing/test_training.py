"""Training: exact resume, clean stop on signals, kill -9 + resume, divergence, run-folder protection."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import ROOT, run_cli, stop_after
from CTDiffusionLib.errors import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_INTERRUPTED
from CTDiffusionLib.events import read_events
from CTDiffusionLib.profiles import PROSTATE_CT
from CTDiffusionLib.runfolder import is_temporary
from CTDiffusionLib.training import trainer as trainer_module
from CTDiffusionLib.training.checkpoints import list_checkpoints, load_checkpoint

TINY = ["--profile", "prostate-ct", "--preset", "tiny", "--batch-size", "2", "--sample-every", "0"]


def _weights(run: Path) -> dict:
    state = load_checkpoint(list_checkpoints(run / "checkpoints")[-1])
    return {**{"model." + k: v for k, v in state["model"].items()}, **{"ema." + k: v for k, v in state["ema"].items()}}


def test_resume_continues_exactly(ct_phantoms, tmp_path, monkeypatch):
    full, split = tmp_path / "full", tmp_path / "split"
    assert run_cli("train", *TINY, "--data", ct_phantoms, "--out", full, "--steps", 6, "--checkpoint-every", 3) == 0

    original = trainer_module.Trainer.train_step
    stop_after(monkeypatch, 3)
    assert run_cli("train", *TINY, "--data", ct_phantoms, "--out", split, "--steps", 6, "--checkpoint-every",
                   100) == EXIT_INTERRUPTED
    assert [p.name for p in list_checkpoints(split / "checkpoints")] == ["step_00000003.pt"]
    monkeypatch.setattr(trainer_module.Trainer, "train_step", original)
    assert run_cli("train", "--profile", "prostate-ct", "--out", split, "--resume") == 0

    a, b = _weights(full), _weights(split)
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6, msg=key)
    events = list(read_events(split / "events.jsonl"))
    assert [e["status"] for e in events if e["event"] == "done"] == ["stopped", "completed"]
    assert any(e["event"] == "start" and e["resumed_from"] for e in events)


def test_kill_9_then_resume(ct_phantoms, tmp_path):
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "CTDiffusionLib", "train", *TINY, "--data", str(ct_phantoms), "--out", str(run),
           "--steps", "8", "--checkpoint-every", "2", "--events"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        for line in proc.stdout:
            event = json.loads(line)
            if event["event"] == "checkpoint":
                break
        proc.kill()  # SIGKILL: no handler runs, no final checkpoint
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    saved = list_checkpoints(run / "checkpoints")
    assert saved and not any(is_temporary(p) for p in (run / "model").iterdir())  # no half-written bundle file
    assert run_cli("train", "--profile", "prostate-ct", "--out", run, "--resume") == 0
    state = load_checkpoint(list_checkpoints(run / "checkpoints")[-1])
    assert state["step"] == 8
    json.loads((run / "model" / "model.json").read_text(encoding="utf-8"))


def test_sigterm_stops_with_a_checkpoint(ct_phantoms, tmp_path):
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "CTDiffusionLib", "train", *TINY, "--data", str(ct_phantoms), "--out", str(run),
           "--steps", "500", "--checkpoint-every", "400", "--events"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        for line in proc.stdout:
            if json.loads(line)["event"] == "progress":
                break
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == EXIT_INTERRUPTED
    last = json.loads(out.strip().splitlines()[-1])
    assert last["event"] == "done" and last["status"] == "stopped"
    step = load_checkpoint(list_checkpoints(run / "checkpoints")[-1])["step"]
    assert 0 < step < 500


def test_divergence_is_an_error_not_a_model(ct_phantoms, tmp_path, capsys):
    run = tmp_path / "run"
    code = run_cli("train", *TINY, "--data", ct_phantoms, "--out", run, "--steps", 5, "--lr", 1e30,
                   "--warmup-steps", 0, "--checkpoint-every", 100, "--events")
    assert code == EXIT_FAILED
    errors = [json.loads(l) for l in capsys.readouterr().out.splitlines() if '"error"' in l]
    assert errors and "loss became" in errors[-1]["message"] and "--lr" in errors[-1]["hint"]
    assert not list_checkpoints(run / "checkpoints")


def test_existing_run_needs_resume_and_missing_run_cannot_resume(tiny_ct_run, ct_phantoms, tmp_path, capsys):
    assert run_cli("train", *TINY, "--data", ct_phantoms, "--out", tiny_ct_run, "--steps", 2) == EXIT_BAD_INPUT
    assert "already holds a training run" in capsys.readouterr().err
    assert run_cli("train", "--profile", "prostate-ct", "--out", tmp_path / "nothing", "--resume") == EXIT_BAD_INPUT
    assert "config.json is missing" in capsys.readouterr().err
    assert not (tmp_path / "nothing").exists()


def test_run_folder_contract(tiny_ct_run):
    config = json.loads((tiny_ct_run / "config.json").read_text(encoding="utf-8"))
    assert config["profile"] == "prostate-ct" and config["training"]["steps"] == 6
    assert config["data"]["grid"] == [32, 32, 8] and config["diffusion"]["num_train_timesteps"] == 1000
    dataset = json.loads((tiny_ct_run / "dataset.json").read_text(encoding="utf-8"))
    assert len(dataset["split"]["train"]) == 4 and len(dataset["split"]["val"]) == 1
    assert all(len(c["spacing"]) == 3 and "hu" in c for c in dataset["cases"])
    kinds = [e["event"] for e in read_events(tiny_ct_run / "events.jsonl")]
    assert kinds[0] == "start" and kinds[-1] == "done" and "checkpoint" in kinds and "progress" in kinds
    progress = [e for e in read_events(tiny_ct_run / "events.jsonl") if e["event"] == "progress"]
    assert {"step", "total", "epoch", "loss", "lr", "it_per_s", "eta_s"} <= set(progress[0])
    assert any("val_loss" in e for e in progress)
    meta = json.loads((tiny_ct_run / "model" / "model.json").read_text(encoding="utf-8"))
    assert meta["intensity"] == PROSTATE_CT.intensity_config() and len(meta["geometry"]["spacing"]) == 3
    assert set(load_file(str(tiny_ct_run / "model" / "model.safetensors")))
    assert list((tiny_ct_run / "cache").glob("*.npz"))


def test_typed_training_config_reads_old_and_new_run_folders():
    """config.json keeps its plain form; the trainer's typed view fills keys older runs lack and ignores extras."""
    from CTDiffusionLib.training.config import TrainingConfig, total_steps

    old = {"batch_size": 2, "lr": 1e-3, "warmup_steps": 20, "steps": 300, "ema_decay": 0.99, "checkpoint_every": 50,
           "sample_every": 100, "seed": 0, "epochs": None, "amp": "auto", "compile": False, "grad_checkpoint": False,
           "weight_decay": 0.0, "grad_clip": 1.0, "keep_checkpoints": 2, "cond_drop": 0.15,
           "total_steps": 300, "steps_per_epoch": 2}  # no channels_last / attention yet
    tr = TrainingConfig.from_dict(old)
    assert tr.batch_size == 2 and tr.channels_last and tr.attention == "auto" and tr.keep_checkpoints == 2
    assert total_steps(tr, 5) == (300, 3)
    assert total_steps(TrainingConfig.from_dict({**old, "epochs": 4}), 5) == (12, 3)
    with pytest.raises(TypeError):
        TrainingConfig.from_dict({"lr": 1e-3})  # a config without the essentials is a bug, not a default


def test_validation_runs_at_most_max_validations_times(ct_phantoms, tmp_path, monkeypatch):
    """5 cases: 4 train at batch 2 = 2 steps an epoch; 12 steps = 6 epochs. With a cap of 2 validation points the
    trainer validates every 3rd epoch end (steps 6 and 12), not at all 6."""
    monkeypatch.setattr(trainer_module, "MAX_VALIDATIONS", 2)
    run = tmp_path / "run"
    assert run_cli("train", "--profile", "prostate-ct", "--data", ct_phantoms, "--out", run, "--preset", "tiny",
                   "--steps", 12, "--batch-size", 2, "--checkpoint-every", 12, "--sample-every", 0) == 0
    validated = [e["step"] for e in read_events(run / "events.jsonl") if e.get("phase") == "validate"]
    assert validated == [6, 12]
