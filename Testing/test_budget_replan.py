"""`train --minutes`: the length planned again from the recent speed, a continuous learning rate, exact resume.

As in test_time_budget.py, time is a clock that advances a set number of seconds per step (StepClock) or values
given to the budget directly: every decision is exact, and nothing here depends on the machine's speed.
"""

from __future__ import annotations

import math

import pytest
import torch

from conftest import run_cli, stop_after
from CTDiffusionLib.errors import EXIT_INTERRUPTED
from CTDiffusionLib.events import read_events
from CTDiffusionLib.runfolder import read_config
from CTDiffusionLib.training import trainer as trainer_module
from CTDiffusionLib.training.budget import REPLAN_AT, RESERVE, TimeBudget
from CTDiffusionLib.training.checkpoints import list_checkpoints, load_checkpoint
from CTDiffusionLib.training.lr_schedule import LearningRatePlan, lr_factor
from CTDiffusionLib.training.run_length import RunLength
from test_time_budget import T0, TINY, StepClock

OPEN = 2**62


# ---------------------------------------------------------------- the learning-rate plan
@pytest.mark.parametrize("new_total", [140, 400])  # shorter and longer than the 250 planned
def test_a_replan_keeps_the_learning_rate_continuous_and_ends_at_zero(new_total):
    plan = LearningRatePlan(warmup=10, total=250, decay_from=30)
    replan_at = 120  # in the middle of the cosine
    new = plan.replanned(replan_at, new_total)
    assert new.factor(replan_at) == plan.factor(replan_at)  # exactly: the rate the optimiser holds does not move
    after = [new.factor(s) for s in range(replan_at, new_total + 1)]
    assert all(a > b for a, b in zip(after, after[1:]))  # still falling, to exactly 0 at the new end
    assert after[-1] == 0.0
    # the next step moves by about as much as the old plan's would have, scaled by how much time is left
    old_slope = plan.factor(replan_at) - plan.factor(replan_at + 1)
    new_slope = new.factor(replan_at) - new.factor(replan_at + 1)
    assert new_slope == pytest.approx(old_slope * (250 - replan_at) / (new_total - replan_at), rel=0.05)
    assert (new.factor(replan_at + 1) > plan.factor(replan_at + 1)) == (new_total > 250)


def test_replans_compose_and_the_record_round_trips():
    plan = LearningRatePlan(warmup=5, total=200, decay_from=20)
    first = plan.replanned(60, 300)
    second = first.replanned(150, 180)  # the host slowed down after speeding up
    assert second.factor(150) == first.factor(150)
    assert second.phase(150) == pytest.approx(first.phase(150))
    assert second.factor(180) == 0.0
    assert LearningRatePlan.from_dict(second.to_dict()) == second


def test_a_replan_before_the_cosine_starts_only_moves_its_end():
    plan = LearningRatePlan(warmup=50, total=400, decay_from=10)  # still warming up at step 20
    new = plan.replanned(20, 300)
    assert new == LearningRatePlan(warmup=50, total=300, decay_from=10)
    assert [new.factor(s) for s in range(51)] == [plan.factor(s) for s in range(51)]
    assert new.factor(300) == 0.0 and new.factor(50) == 1.0


def test_a_plan_never_replanned_is_the_old_schedule():
    for step in range(0, 260, 7):
        assert LearningRatePlan(10, 250, 30).factor(step) == lr_factor(step, 10, 30, 250)


# ---------------------------------------------------------------- the budget, driven by a given speed
def run_budget(seconds_per_step, seconds: float = 30.0, stop_at: int | None = None, state=None,
               start=(T0, 0), plan=None):
    """Drive TimeBudget and the learning-rate plan as the trainer does (propose before each step, the trainer
    then applies the answer); returns (changes, lr factor of every step, final step, budget, plan)."""
    now, step = start
    budget = (TimeBudget.resumed(seconds, state, now, step) if state else TimeBudget(seconds, now, step))
    plan = plan or LearningRatePlan(2, OPEN)
    changes, factors = [], {}
    while step < plan.total:
        new = budget.propose(step, plan.total, now)
        if new is not None:
            before = plan.factor(step)
            plan = (LearningRatePlan(plan.warmup, new, decay_from=step) if plan.decay_from is None
                    else plan.replanned(step, new))
            assert plan.factor(step) == before  # continuous at every change (the first one starts from the peak)
            changes.append({**budget.last, "factor": before})
        if stop_at is not None and step == stop_at:
            return changes, factors, step, budget, plan, now
        factors[step] = plan.factor(step)
        step += 1
        now += seconds_per_step(step)
    return changes, factors, step, budget, plan, now


def test_the_length_is_replanned_in_both_directions_from_the_recent_speed():
    # 1 s a step, then twice as fast from step 11, then 1.5 s a step from step 31; a 30 s budget
    changes, _, end, _, _, _ = run_budget(lambda s: 1.0 if s <= 10 else 0.5 if s <= 30 else 1.5)
    summary = [(c["reason"], c["step"], c["previous_total"], c["total"]) for c in changes]
    # measured: from step 3 (after SKIP_STEPS) for 3 s, at 1 step/s: 6 + floor(24 * 0.97) = 29
    # 25 % (7.5 s): still 1 step/s, so still 29 (no change); 50 % (15 s, step 20): 12 steps in 7 s since the
    # last plan -> 20 + floor(12/7 * 15 * 0.97) = 44; 75 % (22.5 s, step 32): 12 steps in 8 s -> 42;
    # slower after that: the deadline (30 s) passes at step 37 and the run ends one step later
    assert summary == [("measured", 6, None, 29), ("replanned", 20, 29, 44), ("replanned", 32, 44, 42),
                       ("deadline", 37, 42, 38)]
    assert changes[1]["it_per_s"] == pytest.approx(12 / 7, abs=1e-4)
    assert math.floor(12 / 7 * 15 * (1 - RESERVE)) == 44 - 20
    assert end == 38


def test_a_steady_speed_replans_only_to_use_the_reserve():
    changes, _, end, _, _, now = run_budget(lambda s: 0.5, seconds=100.0)
    assert [c["reason"] for c in changes] == ["measured", "replanned", "replanned", "replanned"]
    totals = [c["total"] for c in changes]
    assert totals == sorted(totals) and totals[-1] - totals[0] <= RESERVE * totals[0]
    assert [round(c["seconds_left"] / 100.0, 2) for c in changes[1:]] == [round(1 - s, 2) for s in REPLAN_AT]
    assert 99.0 <= now - T0 <= 100.0  # the run used its whole budget, give or take a step and the last reserve


def test_a_resumed_budget_continues_exactly():
    speed = lambda s: 1.0 if s <= 10 else 0.5 if s <= 30 else 1.5  # noqa: E731
    whole = run_budget(speed)
    first = run_budget(speed, stop_at=25)
    _, _, step, budget, plan, now = first
    state = budget.state(now)
    rest = run_budget(speed, state=state, start=(T0 + 5000.0, step), plan=plan)  # any clock, any gap between jobs
    assert first[0] + rest[0] == whole[0]
    assert {**first[1], **rest[1]} == whole[1]


# ---------------------------------------------------------------- the trainer
SPEED = {"seconds_per_step": lambda step: 1.0 if step <= 10 else 0.5 if step <= 30 else 1.5}


def _record_lr(monkeypatch, seen: dict) -> None:
    step = trainer_module.Trainer.train_step

    def recorded(trainer):
        seen[trainer.step] = trainer.optimizer.param_groups[0]["lr"]  # the rate this step trains with
        return step(trainer)

    monkeypatch.setattr(trainer_module.Trainer, "train_step", recorded)


def _train(ct_phantoms, out, *extra) -> int:
    return run_cli("train", *TINY, "--data", ct_phantoms, "--out", out, "--minutes", 0.5, *extra)


def test_an_interrupted_minutes_run_follows_the_same_plan_as_one_run(ct_phantoms, tmp_path, monkeypatch):
    """Re-planned before and after the stop (longer, then shorter, then the deadline): the resumed run continues
    the same budget, so it makes the same decisions at the same steps, with the same learning rates and weights."""
    full, split = tmp_path / "full", tmp_path / "split"
    clock, lrs_full, lrs_split = StepClock(SPEED["seconds_per_step"]), {}, {}
    clock.install(monkeypatch)
    _record_lr(monkeypatch, lrs_full)
    assert _train(ct_phantoms, full, "--checkpoint-every", 100) == 0

    monkeypatch.undo()
    clock.now = T0
    clock.install(monkeypatch)
    _record_lr(monkeypatch, lrs_split)
    stop_after(monkeypatch, 25)  # after the re-plan at step 20, before the one at step 32
    assert _train(ct_phantoms, split, "--checkpoint-every", 100) == EXIT_INTERRUPTED
    monkeypatch.undo()
    clock.install(monkeypatch)
    _record_lr(monkeypatch, lrs_split)
    assert run_cli("train", "--profile", "prostate-ct", "--out", split, "--resume") == 0

    a, b = read_config(full)["training"], read_config(split)["training"]
    assert [(p["reason"], p["step"], p["total"]) for p in a["budget_plans"]] == [
        ("measured", 6, 29), ("replanned", 20, 44), ("replanned", 32, 42), ("deadline", 37, 38)]
    assert b["budget_plans"] == a["budget_plans"] and b["lr_plan"] == a["lr_plan"] and b["steps"] == a["steps"] == 38
    assert lrs_split == lrs_full and len(lrs_full) == 38
    for step in (20, 32):  # the rate does not jump where the plan changed (a new cosine from step 6 would)
        assert abs(lrs_full[step + 1] - lrs_full[step]) < 0.1 * a["lr"]
    wa = load_checkpoint(list_checkpoints(full / "checkpoints")[-1])
    wb = load_checkpoint(list_checkpoints(split / "checkpoints")[-1])
    assert wa["step"] == wb["step"] == 38
    for key in wa["model"]:
        torch.testing.assert_close(wa["model"][key], wb["model"][key], rtol=1e-5, atol=1e-6, msg=key)


def test_each_replan_is_in_the_progress_events_and_config(ct_phantoms, tmp_path, monkeypatch):
    StepClock(SPEED["seconds_per_step"]).install(monkeypatch)
    run = tmp_path / "run"
    assert _train(ct_phantoms, run, "--checkpoint-every", 100) == 0
    plans = read_config(run)["training"]["budget_plans"]
    told = [e for e in read_events(run / "events.jsonl") if e["event"] == "progress" and "budget" in e]
    assert [e["budget"] for e in told] == plans  # each change once, in the report after it
    assert [e["step"] for e in told] == [p["step"] + 1 for p in plans]
    assert all(e["total"] == e["budget"]["total"] for e in told)
    assert set(plans[1]) == {"reason", "step", "previous_total", "total", "it_per_s", "seconds_left"}


def test_a_crash_after_a_replan_replays_on_the_plan_of_its_checkpoint(ct_phantoms, tmp_path, monkeypatch):
    """config.json is ahead of the checkpoint after a crash; the resumed run takes the checkpoint's plan and budget,
    and re-plans at the same step again."""
    full, crashed = tmp_path / "full", tmp_path / "crashed"
    clock = StepClock(SPEED["seconds_per_step"])
    clock.install(monkeypatch)
    assert _train(ct_phantoms, full, "--checkpoint-every", 15) == 0

    monkeypatch.undo()
    clock.now = T0
    clock.install(monkeypatch)
    step = trainer_module.Trainer.train_step

    def crash_after_22(trainer):
        if trainer.step == 22:
            raise MemoryError()  # ends the job without a checkpoint, as a kill would
        return step(trainer)

    monkeypatch.setattr(trainer_module.Trainer, "train_step", crash_after_22)
    assert _train(ct_phantoms, crashed, "--checkpoint-every", 15) != 0
    assert read_config(crashed)["training"]["steps"] == 44  # re-planned at step 20, after the checkpoint at 15
    monkeypatch.undo()
    clock.install(monkeypatch)
    assert run_cli("train", "--profile", "prostate-ct", "--out", crashed, "--resume") == 0
    assert read_config(crashed)["training"]["budget_plans"] == read_config(full)["training"]["budget_plans"]
    wa = load_checkpoint(list_checkpoints(full / "checkpoints")[-1])
    wb = load_checkpoint(list_checkpoints(crashed / "checkpoints")[-1])
    for key in wa["model"]:
        torch.testing.assert_close(wa["model"][key], wb["model"][key], rtol=1e-5, atol=1e-6, msg=key)


def test_steps_given_on_resume_end_a_replanned_budget_without_a_jump():
    training = {"batch_size": 2, "lr": 1e-3, "warmup_steps": 2, "steps": 44, "ema_decay": 0.999,
                "checkpoint_every": 100, "minutes": 0.5, "lr_decay_from": 6,
                "lr_plan": LearningRatePlan(2, 29, 6).replanned(20, 44).to_dict()}
    resumed = {**training, "steps": 60}  # --resume --steps 60
    length = RunLength(resumed, num_train_samples=4)
    length.budget_state = {"seconds_used": 12.5, "next_replan": 2, "window": [15.0, 20]}
    before = length.plan.factor(25)
    length.replace_with_steps(25)
    assert length.plan.factor(25) == before and length.plan.factor(60) == 0.0 and length.total == 60
    assert length.budget_state is None and length.time_budget(T0, 25) is None  # no more re-plans
    assert resumed["steps"] == resumed["total_steps"] == 60 and resumed["budget_plans"][-1]["reason"] == "steps"
