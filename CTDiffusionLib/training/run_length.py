"""How long a run is and how its learning rate falls, in one place: the plan in force
(lr_schedule.LearningRatePlan), the keys of config.json's "training" section that record it, and the record each
checkpoint of a --minutes run keeps.

A step or epoch count fixes the length when the run starts; a --minutes budget fixes it once the speed is measured
and may change it at each re-plan (training/budget.py). config.json always shows the plan in force (`steps`,
`total_steps`, `warmup_steps`, `lr_decay_from`, `lr_plan`, and `budget_plans`: every change the budget made, with
its reason and measured speed). A checkpoint keeps the same keys as they were at its step, with the budget's state:
a run that crashed after a re-plan but before its next checkpoint replays the steps since then on the plan those
steps first ran on, and re-plans at the same point again.
"""

from __future__ import annotations

import copy
import dataclasses

from CTDiffusionLib.training.budget import TimeBudget
from CTDiffusionLib.training.config import OPEN_LENGTH, TrainingConfig, total_steps
from CTDiffusionLib.training.lr_schedule import LearningRatePlan

LENGTH_KEYS = ("steps", "total_steps", "warmup_steps", "lr_decay_from", "lr_plan", "budget_plans")


class RunLength:
    def __init__(self, training: dict, num_train_samples: int):
        """`training`: config.json's "training" section, updated in place whenever the length changes."""
        self.training = training
        self.minutes = TrainingConfig.from_dict(training).minutes
        self.num_train_samples = num_train_samples
        # the length the step or epoch count gives (one given on --resume replaces a budget: replace_with_steps)
        self.steps_total, self.per_epoch = total_steps(self._config(minutes=None), num_train_samples)
        self.plan = self._plan_from_config()
        self.budget_state: dict | None = None  # a resumed --minutes run's TimeBudget.state

    def _config(self, **changes) -> TrainingConfig:
        return dataclasses.replace(TrainingConfig.from_dict(self.training), **changes)

    def _plan_from_config(self) -> LearningRatePlan:
        tr = self._config()
        if tr.budget_open:  # flat after warm-up until the budget fixes the length
            return LearningRatePlan(tr.warmup_steps, OPEN_LENGTH)
        if self.training.get("lr_plan"):
            return LearningRatePlan.from_dict(self.training["lr_plan"])
        total = total_steps(self._config(minutes=None), self.num_train_samples)[0]
        # a --minutes run's warm-up was capped when its length was fixed (change)
        warmup = tr.warmup_steps if tr.minutes is not None else min(tr.warmup_steps, total // 4)
        return LearningRatePlan(warmup, total, tr.lr_decay_from)

    @property
    def open(self) -> bool:
        """A --minutes run whose length is not fixed yet."""
        return self.minutes is not None and self.plan.decay_from is None

    @property
    def total(self) -> int:
        return self.plan.total

    @property
    def planned_total(self) -> int | None:
        """The run's last step; None while a --minutes budget has not fixed it yet."""
        return None if self.open else self.plan.total

    def time_budget(self, now: float, step: int) -> TimeBudget | None:
        """The budget this job trains to: a new one while the length is open, the stored one of a resumed run."""
        if self.minutes is None:
            return None
        if self.open:
            return TimeBudget(self.minutes * 60.0, now, step)
        return TimeBudget.resumed(self.minutes * 60.0, self.budget_state, now, step) if self.budget_state else None

    # -- changes
    def change(self, step: int, total: int, note: dict | None = None) -> None:
        """The budget's new length from `step` on: the first one starts the cosine decay here; later ones re-scale
        the rest of it (LearningRatePlan.replanned), so the learning rate does not jump."""
        if self.open:
            # a warm-up longer than a quarter of the run would never reach the decay: end it by then (or now)
            self.plan = LearningRatePlan(min(self.plan.warmup, max(step, total // 4)), int(total), decay_from=step)
        else:
            self.plan = self.plan.replanned(step, total)
        self._record(note)

    def replace_with_steps(self, step: int) -> None:
        """--steps/--epochs on --resume of a --minutes run: the budget ends, the run ends at that count. An open
        budget's decay starts here; a fixed one's cosine is re-scaled from here to the new end."""
        if self.open:
            self.plan = LearningRatePlan(self.plan.warmup, self.steps_total, decay_from=step)
        else:
            self.plan = self.plan.replanned(step, self.steps_total)
        self.budget_state = None
        self._record({"reason": "steps", "step": step, "total": self.steps_total})

    def _record(self, note: dict | None) -> None:
        plan = self.plan
        self.training.update(steps=plan.total, total_steps=plan.total, warmup_steps=plan.warmup,
                             lr_decay_from=plan.decay_from, lr_plan=plan.to_dict())
        if note is not None:
            self.training["budget_plans"] = [*self.training.get("budget_plans", []), note]

    # -- checkpoints
    def record(self, budget_state: dict | None) -> dict:
        """What a checkpoint keeps: the length keys as they are now, and the budget's state."""
        return {"training": copy.deepcopy({k: self.training[k] for k in LENGTH_KEYS if k in self.training}),
                "budget": budget_state}

    def adopt(self, record: dict) -> None:
        """Back to the length a checkpoint recorded (config.json may be ahead of it after a crash)."""
        for key in LENGTH_KEYS:
            if key in record["training"]:
                self.training[key] = record["training"][key]
            else:
                self.training.pop(key, None)
        self.plan = self._plan_from_config()
        self.budget_state = record.get("budget")
