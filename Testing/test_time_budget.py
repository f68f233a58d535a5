"""`train --minutes`: the length fixed from the measured speed, the deadline, the learning-rate schedule, resume.

The trainer reads its clock through this module's `time` (`time.monotonic()`); these tests replace that clock with
one that advances a set number of seconds per training step, so every decision (when the speed is measured, which total it gives,
when the deadline cuts the run) is exact and independent of the machine's speed. Nothing here measures time.
"""

from __future__ import annotations

import json
import types

import pytest
import torch
from diffusers.optimization import get_cosine_schedule_with_warmup

from conftest import run_cli, stop_after
from CTDiffusionLib.errors import EXIT_BAD_INPUT, EXIT_INTERRUPTED
from CTDiffusionLib.events import read_events
from CTDiffusionLib.runfolder import read_config
from CTDiffusionLib.training import trainer as trainer_module
from CTDiffusionLib.training.budget import RESERVE, SKIP_STEPS, TimeBudget, measure_for
from CTDiffusionLib.training.checkpoints import list_checkpoints, load_checkpoint
from CTDiffusionLib.training.lr_schedule import lr_factor

TINY = ["--profile", "prostate-ct", "--preset", "tiny", "--batch-size", "2", "--sample-every", "0",
        "--warmup-steps", "2", "--val-fraction", "0"]
T0 = 1_000_000.0


class StepClock:
    """A wall clock that moves only when a training step ends: `seconds_per_step(step)` after each one."""

    def __init__(self, seconds_per_step):
        self.now, self.seconds_per_step = T0, seconds_per_step

    def install(self, monkeypatch) -> None:
        monkeypatch.setattr(trainer_module, "time", types.SimpleNamespace(time=lambda: self.now,
                                                                          monotonic=lambda: self.now))
        original = trainer_module.Trainer.train_step

        def timed_step(trainer):
            loss = original(trainer)
            self.now += self.seconds_per_step(trainer.step)
            return loss

        monkeypatch.setattr(trainer_module.Trainer, "train_step", timed_step)


def _training(run) -> dict:
    return read_config(run)["training"]


def _train_progress(run) -> list[dict]:
    return [e for e in read_events(run / "events.jsonl") if e["event"] == "progress" and e["phase"] == "train"]


# ---------------------------------------------------------------- the budget alone
def test_budget_fixes_the_length_from_the_measured_speed():
    budget = TimeBudget(seconds=100.0, started=T0, start_step=0)
    answers = {}
    for step in range(60):  # 2 steps per second
        answer = budget.propose(step, 2**62, T0 + step / 2)
        if answer is not None:
            answers[step] = answer
    # measuring starts after SKIP_STEPS steps and lasts measure_for(100 s) = 10 s = 20 steps
    resolved_at = SKIP_STEPS + 20
    left = 100.0 - resolved_at / 2
    assert min(answers) == resolved_at  # nothing before the speed is measured (re-plans: test_budget_replan.py)
    assert answers[resolved_at] == resolved_at + int(2.0 * left * (1 - RESERVE))
    assert measure_for(100.0) == 10.0 and measure_for(3600.0) == 60.0


def test_budget_cuts_the_run_at_the_deadline_when_the_host_slows_down():
    budget = TimeBudget(seconds=60.0, started=T0, start_step=0)
    total, now, proposals = 2**62, T0, []
    for step in range(200):
        answer = budget.propose(step, total, now)
        if answer is not None:
            proposals.append((step, now - T0, answer))
            total = answer
        if step >= total:
            break
        now += 1.0 if step < 46 else 4.0  # four times slower after the last re-plan (at 75 % = 45 s)
    (fixed_at, _, fixed_total), *_ = proposals
    assert fixed_total > fixed_at + 1  # the first answer is the measured length ...
    (_, _, planned), (cut_at, cut_time, cut_total) = proposals[-2:]
    assert cut_time >= 60.0 and all(t < 60.0 for _, t, _ in proposals[:-1])  # ... the last comes past the deadline
    assert cut_total == cut_at + 1 < planned  # and ends the run one step after it, before the planned end


def test_a_budget_shorter_than_the_first_steps_ends_after_the_next_step():
    budget = TimeBudget(seconds=1.0, started=T0, start_step=40)
    assert budget.propose(40, 2**62, T0 + 0.5) is None
    assert budget.propose(41, 2**62, T0 + 5.0) == 42


# ---------------------------------------------------------------- learning rate
@pytest.mark.parametrize("warmup,total", [(20, 300), (0, 50), (200, 20000)])
def test_lr_factor_is_diffusers_cosine_when_decay_starts_after_warmup(warmup, total):
    """Runs from before --minutes resume with exactly the schedule they started with."""
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    reference = get_cosine_schedule_with_warmup(optimizer, warmup, total).lr_lambdas[0]
    for step in range(total + 2):
        assert lr_factor(step, warmup, None, total) == reference(step)


def test_lr_factor_holds_the_peak_until_decay_from_then_falls_to_zero():
    values = [lr_factor(s, 5, 30, 100) for s in range(101)]
    assert values[:5] == [s / 5 for s in range(5)]
    assert values[5:31] == [1.0] * 26
    assert all(a > b for a, b in zip(values[30:100], values[31:101]))
    assert values[100] == 0.0


# ---------------------------------------------------------------- the trainer
def test_minutes_run_fixes_its_length_and_records_it(ct_phantoms, tmp_path, monkeypatch):
    StepClock(lambda step: 1.0).install(monkeypatch)
    run = tmp_path / "run"
    assert run_cli("train", *TINY, "--data", ct_phantoms, "--out", run, "--minutes", 0.5,
                   "--checkpoint-every", 100) == 0
    # 1 s per step: speed measured from step 3 for measure_for(30 s) = 3 s, so fixed at step 6 with
    # 24 s left: 6 + floor(24 * (1 - RESERVE)) = 29 steps
    fixed_at, total = SKIP_STEPS + 3, 29
    assert RESERVE == 0.03
    training = _training(run)
    assert (training["steps"], training["total_steps"], training["lr_decay_from"], training["minutes"]) == (
        total, total, fixed_at, 0.5)
    assert load_checkpoint(list_checkpoints(run / "checkpoints")[-1])["step"] == total
    progress = _train_progress(run)
    # before: no total until the speed is measured, then the estimate; after: the fixed length
    assert [e["total"] for e in progress if e["step"] <= SKIP_STEPS] == [None] * sum(
        e["step"] <= SKIP_STEPS for e in progress)
    assert all(e["total"] > e["step"] for e in progress if SKIP_STEPS < e["step"] <= fixed_at)
    assert {e["total"] for e in progress if e["step"] > fixed_at} == {total}
    lrs = {e["step"]: e["lr"] for e in progress}
    assert all(lrs[s] == training["lr"] for s in lrs if 2 <= s <= fixed_at)  # flat while the length is open
    assert lrs[total] == 0.0  # the cosine reached its end at the fixed total
    events = list(read_events(run / "events.jsonl"))
    start = next(e for e in events if e["event"] == "start")
    assert start["total"] is None and start["minutes"] == 0.5
    assert next(e for e in events if e["event"] == "done")["step"] == total
    model = json.loads((run / "model" / "model.json").read_text(encoding="utf-8"))
    assert model["training"] == {"step": total, "total_steps": total}


def test_minutes_run_ends_at_the_deadline_when_steps_slow_down(ct_phantoms, tmp_path, monkeypatch):
    StepClock(lambda step: 1.0 if step <= 23 else 3.0).install(monkeypatch)
    run = tmp_path / "run"
    assert run_cli("train", *TINY, "--data", ct_phantoms, "--out", run, "--minutes", 0.5,
                   "--checkpoint-every", 100) == 0
    # fixed at step 6 (t = 6 s) to 29 steps, re-planned to the same 29 at 25/50/75 % (the last at step 23, t = 23 s);
    # then at 3 s per step the 30 s deadline passes at step 26 (t = 32 s): the run ends one step later
    training = _training(run)
    assert training["lr_decay_from"] == 6
    assert training["steps"] == 27 == load_checkpoint(list_checkpoints(run / "checkpoints")[-1])["step"]
    assert [p["reason"] for p in training["budget_plans"]] == ["measured", "deadline"]


def test_stopped_minutes_run_resumes_to_the_same_weights(ct_phantoms, tmp_path, monkeypatch):
    """Stop after the length is fixed, resume: the same steps and learning rates as one run. The resumed run
    continues the rest of its budget (its re-plans too), so it runs on the same step clock."""
    full, split = tmp_path / "full", tmp_path / "split"
    clock = StepClock(lambda step: 1.0)
    clock.install(monkeypatch)
    assert run_cli("train", *TINY, "--data", ct_phantoms, "--out", full, "--minutes", 0.5,
                   "--checkpoint-every", 100) == 0

    stop_after(monkeypatch, 10)
    assert run_cli("train", *TINY, "--data", ct_phantoms, "--out", split, "--minutes", 0.5,
                   "--checkpoint-every", 100) == EXIT_INTERRUPTED
    monkeypatch.undo()
    clock.install(monkeypatch)  # the same clock, without the stop
    assert run_cli("train", "--profile", "prostate-ct", "--out", split, "--resume") == 0
    assert _training(split)["steps"] == _training(full)["steps"]
    a = load_checkpoint(list_checkpoints(full / "checkpoints")[-1])
    b = load_checkpoint(list_checkpoints(split / "checkpoints")[-1])
    assert a["step"] == b["step"]
    for key in a["model"]:
        torch.testing.assert_close(a["model"][key], b["model"][key], rtol=1e-5, atol=1e-6, msg=key)


@pytest.mark.parametrize("minutes", ["0", "-5", "inf", "nan", "ten"])
def test_minutes_must_be_a_finite_positive_number(ct_phantoms, tmp_path, capsys, minutes):
    for command in (["train", *TINY, "--data", str(ct_phantoms), "--out", str(tmp_path / "r")],
                    ["demo", "--out", str(tmp_path / "d")]):
        with pytest.raises(SystemExit) as stop:
            run_cli(*command, "--minutes", minutes)
        assert stop.value.code == EXIT_BAD_INPUT
        assert "argument --minutes: expected a number of minutes" in capsys.readouterr().err
    assert not (tmp_path / "r").exists() and not (tmp_path / "d").exists()


def test_minutes_cannot_change_a_resumed_run(tiny_ct_run, capsys):
    assert run_cli("train", "--profile", "prostate-ct", "--out", tiny_ct_run, "--resume", "--minutes", 5) == \
        EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert "--minutes cannot change the length of a resumed run" in err and "--steps N" in err


def test_run_stopped_before_its_length_was_fixed_measures_again_on_resume(ct_phantoms, tmp_path, monkeypatch):
    StepClock(lambda step: 1.0).install(monkeypatch)
    timed_step = trainer_module.Trainer.train_step
    run, fixed = tmp_path / "run", tmp_path / "fixed"
    for out in (run, fixed):
        monkeypatch.setattr(trainer_module.Trainer, "train_step", timed_step)
        stop_after(monkeypatch, 2)
        assert run_cli("train", *TINY, "--data", ct_phantoms, "--out", out, "--minutes", 0.5,
                       "--checkpoint-every", 100) == EXIT_INTERRUPTED
        assert (_training(out)["lr_decay_from"], _training(out)["total_steps"]) == (None, None)
    monkeypatch.setattr(trainer_module.Trainer, "train_step", timed_step)
    # a new 30 s budget from step 2: measured from step 5 for 3 s, fixed at step 8 to 8 + floor(24 * 0.97) = 31
    assert run_cli("train", "--profile", "prostate-ct", "--out", run, "--resume") == 0
    assert (_training(run)["lr_decay_from"], _training(run)["steps"]) == (8, 31)
    # a step count given on resume replaces the open budget: the cosine runs from the resumed step to it
    assert run_cli("train", "--profile", "prostate-ct", "--out", fixed, "--resume", "--steps", 12) == 0
    assert (_training(fixed)["lr_decay_from"], _training(fixed)["steps"]) == (2, 12)
    assert load_checkpoint(list_checkpoints(fixed / "checkpoints")[-1])["step"] == 12


def test_a_warmup_longer_than_the_fixed_run_is_cut_to_a_quarter_of_it(ct_phantoms, tmp_path, monkeypatch):
    """A preset's warm-up is in steps (the thesis: 1000); a short budget must still reach the peak and decay."""
    StepClock(lambda step: 1.0).install(monkeypatch)
    run = tmp_path / "run"
    assert run_cli("train", *TINY, "--warmup-steps", 100, "--data", ct_phantoms, "--out", run, "--minutes", 0.5,
                   "--checkpoint-every", 100) == 0  # the last --warmup-steps counts
    training = _training(run)
    # fixed at step 6 to 29 steps (as above): warm-up min(100, max(6, 29 // 4)) = 7
    assert (training["steps"], training["lr_decay_from"], training["warmup_steps"]) == (29, 6, 7)
    lrs = {e["step"]: e["lr"] for e in _train_progress(run)}
    assert max(lrs.values()) > 0.95 * training["lr"] and lrs[29] == 0.0  # uncut: at most 29 % of the peak, never 0
