"""How a `train` job continues a run: whether --out starts a run or resumes one, the configuration it resumes with,
and the state it continues from (the newest checkpoint, with what a crash left behind repaired).

Resuming replays exactly what an uninterrupted run would have done: the weights, optimiser, EMA and learning-rate
state come from the checkpoint, and so do a --minutes run's length and budget (training/run_length.py), even when
config.json has moved past the checkpoint. What --resume refuses is in resume_checks.py; the lock and the clean-up
of half-written files in crash_recovery.py.
"""

from __future__ import annotations

from pathlib import Path

from CTDiffusionLib.errors import InputError
from CTDiffusionLib.models.bundle import bundle_is_current, save_bundle
from CTDiffusionLib.output_folder import OUTPUT_MARKER
from CTDiffusionLib.runfolder import INPUT, RunFolder, read_config
from CTDiffusionLib.training.checkpoints import load_latest
from CTDiffusionLib.training.config import TrainingConfig
from CTDiffusionLib.training.crash_recovery import LOCK_NAME, checkpoint_logged, trim_events_after


def open_run_folder(out: Path, resume: bool) -> dict | None:
    """Checks --out against --resume; returns the stored config when resuming."""
    run = RunFolder(out)
    if resume:
        if not run.is_run():
            raise InputError(f"--resume: {out} holds no run ({run.config.name} is missing).",
                             "Point --out at an existing run folder, or drop --resume to start a new run.")
        return read_config(out)
    if run.is_run():
        raise InputError(f"{out} already holds a training run.",
                         "Add --resume to continue it, or choose a new --out folder.")
    # input/: data the Slicer module exported; a run killed before its config.json was written leaves only the
    # lock, events and cache behind, and a new run may start over them. Under torchrun the other ranks look while
    # rank 0 is claiming the folder, so the marker may still be under its temporary name.
    ours = (INPUT, LOCK_NAME, OUTPUT_MARKER, run.events.name, run.cache.name, run.stop_request.name)
    if out.exists() and any(p.name not in ours and not p.name.startswith(OUTPUT_MARKER) for p in out.iterdir()):
        raise InputError(f"{out} is not empty and is not a CTDiffusion run folder.", "Choose a new --out folder.")
    return None


def resumed_config(stored: dict, args) -> tuple[dict, bool]:
    """A stored config.json with what a resume may change (the length: --steps/--epochs, never --minutes);
    returns it and whether a step count replaces the run's time budget (RunLength.replace_with_steps then ends
    the budget at the resumed step)."""
    config = stored
    training = config["training"]
    budget = TrainingConfig.from_dict(training)
    if getattr(args, "minutes", None) is not None:
        raise InputError("--minutes cannot change the length of a resumed run.",
                         f"Resume without --minutes to measure its {training['minutes']:g}-minute budget again, "
                         "or give --steps N." if budget.budget_open else
                         f"Resume with --steps N instead (this run is set to {training['steps']} steps in its "
                         "config.json).")
    if not (args.steps or args.epochs):
        return config, False
    training["steps"], training["epochs"] = args.steps or training["steps"], args.epochs
    return config, budget.minutes is not None


def continue_from_checkpoint(trainer, run: RunFolder, events, steps_given: bool) -> Path | None:
    """Load the newest checkpoint into `trainer` (None when the run stopped before its first one); with
    `steps_given`, a step count given on --resume replaces the run's time budget from here. Then repair what a
    crash (kill -9, full disk) may have left: events past the checkpoint, a bundle newer or older than it, a
    checkpoint whose event was never written."""
    latest = load_latest(run.checkpoints)
    resumed_from = None
    if latest:
        resumed_from, state = latest
        trainer.load_state_dict(state)
    if steps_given:
        trainer.replace_budget_with_steps()
    if trainer.dist.is_main:
        trim_events_after(run.events, trainer.step)  # replayed from the checkpoint, not written twice
        if trainer.step and not bundle_is_current(run.model, trainer.step):
            save_bundle(run.model, trainer.ema.module.state_dict(), trainer.bundle_meta())
        if resumed_from and not checkpoint_logged(run.events, trainer.step):
            events.emit("checkpoint", path=str(resumed_from), step=trainer.step, bundle=str(run.model))
    return resumed_from
