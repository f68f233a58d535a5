"""What `train --resume` refuses: settings that differ from the run's own, and data that changed since it started.

A resumed run continues with the settings in its config.json; a different --preset, --grid, --batch-size, --data
(or --lr, --seed, --val-fraction ...) on the command line used to be ignored without a word. Now each is compared
with the run's and refused when it differs (the same value is fine: the Slicer module resumes with the run's own
--data). The data folder is compared with the cases the run started on (dataset.json) and with the preprocessing
cache, which is keyed by each file's size and modification time: cases removed, added or replaced are listed and
refused unless the user asks for it with --accept-changed-data (the split is then drawn again).
"""

from __future__ import annotations

from pathlib import Path

from CTDiffusionLib.errors import InputError

# command-line flag -> (attribute on args, where the run keeps it in config.json)
_COMPARED = {
    "--preset": ("preset", ("preset",)),
    "--batch-size": ("batch_size", ("training", "batch_size")),
    "--lr": ("lr", ("training", "lr")),
    "--seed": ("seed", ("training", "seed")),
    "--warmup-steps": ("warmup_steps", ("training", "warmup_steps")),
    "--val-fraction": ("val_fraction", ("data", "val_fraction")),
    "--schedule": ("schedule", ("diffusion", "beta_schedule")),
}
_NEW_RUN_HINT = ("Resume without it to continue the run with its own settings, or start a new run in a new --out "
                 "folder with the new ones.")


def check_same_kind_of_run(stored: dict, args, run_dir: Path) -> None:
    """--profile and --with-labels, when given, must describe the run being resumed."""
    if args.profile and args.profile != stored["profile"]:
        raise InputError(f"--profile {args.profile} differs from the run's profile {stored['profile']}.",
                         "Resume with the run's own profile.")
    if getattr(args, "with_labels", False) and not stored.get("labels"):
        raise InputError(f"--with-labels: the run in {run_dir} was trained without label maps.",
                         "Resume it without --with-labels, or start a new run with --with-labels.")


def check_resume_arguments(stored: dict, args) -> None:
    """InputError naming the first flag whose value differs from the resumed run's."""
    for flag, (attr, keys) in _COMPARED.items():
        given = getattr(args, attr, None)
        if given is None:
            continue
        kept = _lookup(stored, keys)
        if kept is not None and given != kept:
            raise InputError(f"--resume continues the run with its own settings, but {flag} {given} differs from "
                             f"the run's {kept}.", _NEW_RUN_HINT)
    if getattr(args, "grid", None):
        from CTDiffusionLib.training.config import parse_grid

        grid = parse_grid(args.grid, stored["data"].get("mode", "3d"))
        if list(grid) != list(stored["data"]["grid"]):
            raise InputError(f"--resume continues the run with its own settings, but --grid {args.grid} differs from "
                             f"the run's {'x'.join(map(str, stored['data']['grid']))}.", _NEW_RUN_HINT)
    if getattr(args, "data", None):
        given = [str(Path(s).resolve()) for s in args.data]
        kept = list(stored["data"].get("sources") or [])
        if given != kept:
            raise InputError(f"--resume continues the run on its own data, but --data {' '.join(args.data)} differs "
                             f"from the run's {' '.join(kept)}.",
                             "Resume without --data (the run knows its data), or start a new run on the new data.")


def check_data_unchanged(run_dir: Path, cases, config: dict, accept: bool = False) -> list[str]:
    """The cases found now against those the run started on; InputError listing what changed unless `accept`.
    Returns the change descriptions (empty when nothing changed)."""
    from CTDiffusionLib.data.dataset import _cache_key
    from CTDiffusionLib.profiles import get_profile
    from CTDiffusionLib.runfolder import RunFolder

    run = RunFolder(run_dir)
    if not run.dataset.is_file():
        return []  # killed before dataset.json: nothing to compare with
    before = [c.get("id") for c in run.read_dataset().get("cases", [])]
    now = {c.case_id: c for c in cases}
    removed = [i for i in before if i not in now]
    added = [i for i in now if i not in set(before)]
    replaced = []
    if run.cache.is_dir():
        profile = get_profile(config["profile"])
        cached = [p.name for p in run.cache.glob("*.npz")]
        for case_id in (i for i in before if i in now):
            mine = [n for n in cached if n.startswith(f"{case_id}-")]
            key = f"{case_id}-{_cache_key(now[case_id], config['data'], profile, config['intensity'])}.npz"
            if mine and key not in mine:
                replaced.append(case_id)
    changes = [f"{len(ids)} {what} ({_names(ids)})" for what, ids in
               (("removed", removed), ("added", added), ("replaced or modified", replaced)) if ids]
    if changes and not accept:
        raise InputError(f"The data of the run in {run_dir} changed since it started: cases "
                         f"{'; '.join(changes)}.",
                         "Restore the data the run started on, or add --accept-changed-data to continue on the "
                         "data as it is now (the split is drawn again), or start a new run.")
    return changes


def _lookup(config: dict, keys: tuple[str, ...]):
    value = config
    for key in keys:
        value = value.get(key) if isinstance(value, dict) else None
    return value


def _names(ids: list[str]) -> str:
    return ", ".join(ids[:5]) + (f" and {len(ids) - 5} more" if len(ids) > 5 else "")
