"""The one rule for where a command may write: only into a folder it creates, or one that carries its own marker.

A user's folder that happens to hold a `.lock`, an `events.jsonl`, a `report.html` or anything else is never
written to: the command is refused with one sentence before it writes anything anywhere (not even a lock file).

    with claim_output_folder(args.out, "generate") as out:   # refused (InputError, exit 2) unless ours
        ...write into out...

What counts as ours (`check_output_folder`):
  - a folder that does not exist yet (it is created, marked and locked),
  - an empty folder (the user made it for us),
  - a folder with `.ctdiffusion-output` = {"format": "ctdiffusion-output/1", "command": C} where C is this command
    (or one of `accept`),
  - for `train` also a run folder of earlier versions (config.json "format": "ctdiffusion-run/1"), so old runs keep
    resuming, and a folder holding only `input/` (data an older Slicer module exported into the run folder).

While the block runs the folder is locked (OS file lock on FOLDER/.lock, released by the kernel however the process
ends), so a second command on the same folder is refused instead of mixing its outputs in. Files inside are written
with `runfolder.atomic_write(..., exclusive=True)` / `volume_io.write_image(..., exclusive=True)`, which refuse to
replace an existing file. New commands (utility, paired generation, ...) call `claim_output_folder` the same way.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from CTDiffusionLib.errors import InputError
from CTDiffusionLib.runfolder import CONFIG, INPUT, OUTPUT_MARKER, RUN_FORMAT, OutputExists, publish, read_json_or_empty
from CTDiffusionLib.training.crash_recovery import LOCK_NAME, RunLock

OUTPUT_FORMAT = "ctdiffusion-output/1"
_MARKER_TEMP = OUTPUT_MARKER + ".tmp-"  # a marker being written (runfolder's temp pattern: cleared at train start)
_NEW_FOLDER_HINT = "Choose a new --out folder (CTDiffusion creates it), or an empty one."


def check_output_folder(out: str | os.PathLike, command: str, accept: tuple[str, ...] = (), *,
                        holding_lock: bool = False) -> str:
    """Whether `command` may write into `out`, reading only: "new", "empty" or "ours"; InputError otherwise.
    `holding_lock`: the caller created FOLDER/.lock itself (claim_output_folder's second look)."""
    out = Path(out).expanduser()
    if not out.exists():
        return "new"
    if not out.is_dir():
        raise InputError(f"--out {out} is a file, not a folder.", _NEW_FOLDER_HINT)
    try:
        names = sorted(p.name for p in out.iterdir()
                       if not (holding_lock and p.name == LOCK_NAME) and not p.name.startswith(_MARKER_TEMP))
    except OSError as exc:
        raise InputError(f"--out {out} cannot be read ({exc.strerror or exc}).", _NEW_FOLDER_HINT) from None
    if OUTPUT_MARKER in names:
        owner = _marker_command(out / OUTPUT_MARKER)
        if owner is None:
            raise InputError(f"--out {out} has a damaged {OUTPUT_MARKER} marker, so it cannot be told apart from a "
                             "folder of yours.", _NEW_FOLDER_HINT)
        if owner != command and owner not in accept:
            raise InputError(f"--out {out} is an output folder of `ctdiffusion {owner}`, not of `{command}`.",
                             _NEW_FOLDER_HINT)
        return "ours"
    if command == "train" and _is_run_folder(out):
        return "ours"  # a run folder of a version before the marker: it keeps resuming
    if not names or (command == "train" and names == [INPUT]):
        return "empty"
    shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
    raise InputError(f"--out {out} already holds files CTDiffusion did not write there ({shown}); it writes only "
                     "into new folders or its own.",
                     _NEW_FOLDER_HINT + " An output folder of an older version (without the "
                     f"{OUTPUT_MARKER} marker) counts as foreign too.")


@contextmanager
def claim_output_folder(out: str | os.PathLike, command: str, *, accept: tuple[str, ...] = (), create: bool = True,
                        remove_if_failed: bool = False) -> Iterator[Path]:
    """Check `out` (`check_output_folder`), create and mark it, and hold its lock while the block runs.

    `command` is the sub-command name written into the marker; `accept` lists other commands whose folders this one
    may continue (none so far). With `create=False` a missing folder is left missing and not locked (the caller
    reports it, e.g. `train --resume`). With `remove_if_failed` a folder this call created is removed again when the
    block raises (a half-written report is of no use). Refusals are InputError (exit 2) and write nothing; another
    command holding the folder gives RunFolderBusy (exit 2, output_in_use: nothing is removed)."""
    out = Path(out).expanduser()
    state = check_output_folder(out, command, accept)
    if state == "new" and not create:
        yield out
        return
    created = _make_folder(out) if state == "new" else None  # None: another command created it first
    added = []  # what this call put into a folder that was empty, taken out again if the command is refused
    lock = RunLock(out, create=False,
                   activity="another training" if command == "train" else f"another `ctdiffusion {command}`")
    try:
        if state in ("new", "empty"):  # marked before it is locked: a kill in between leaves a folder that is ours
            added += [out / OUTPUT_MARKER] if _write_marker(out, command) else []
        had_lock_file = (out / LOCK_NAME).exists()
        try:
            lock.acquire()
        except OSError as exc:
            raise _unwritable(out, exc) from None
        added += [] if had_lock_file else [out / LOCK_NAME]
        check_output_folder(out, command, accept, holding_lock=True)  # again: another command may have filled it
        if not (out / OUTPUT_MARKER).exists() and not (command == "train" and _is_run_folder(out)):
            _write_marker(out, command)
        yield out
    except BaseException as exc:
        lock.release()
        failed_here = remove_if_failed or isinstance(exc, InputError)
        if failed_here and not getattr(exc, "output_in_use", False):  # a refused or failed command leaves nothing
            if created is not None:
                shutil.rmtree(created, ignore_errors=True)
            elif isinstance(exc, InputError):
                for path in added:
                    path.unlink(missing_ok=True)
        raise
    else:
        lock.release()


def _make_folder(out: Path) -> Path | None:
    """Create `out` (and missing parents); returns the topmost folder created, for removal on failure, or None when
    another command created `out` at the same moment (then it is theirs to remove, never ours)."""
    top = out
    while not top.parent.exists() and top.parent != top:
        top = top.parent
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.mkdir()
    except FileExistsError:
        return None
    except OSError as exc:
        raise _unwritable(out, exc) from None
    return top


def _write_marker(out: Path, command: str) -> bool:
    """Write the marker unless one is there already (True when this call wrote it). Written whole under a temporary
    name and then linked into place, which fails when the name exists: a kill at any moment leaves no marker, a
    whole one, or a temporary file that check_output_folder ignores; never a half-written marker."""
    tmp = out / f"{_MARKER_TEMP}{uuid.uuid4().hex[:12]}"
    try:
        tmp.write_text(json.dumps({"format": OUTPUT_FORMAT, "command": command}), encoding="utf-8")
        publish(tmp, out / OUTPUT_MARKER, exclusive=True)
        return True
    except OutputExists:
        return False  # another command starting on the same new folder was first; the checks under the lock follow
    except OSError as exc:
        raise _unwritable(out, exc) from None
    finally:
        tmp.unlink(missing_ok=True)


def _marker_command(marker: Path) -> str | None:
    data = read_json_or_empty(marker)
    if data.get("format") != OUTPUT_FORMAT or not isinstance(data.get("command"), str):
        return None
    return data["command"]


def _is_run_folder(out: Path) -> bool:
    return read_json_or_empty(out / CONFIG).get("format") == RUN_FORMAT


def _unwritable(out: Path, exc: OSError) -> InputError:
    return InputError(f"Cannot write into --out {out} ({exc.strerror or exc}).",
                      "Choose a folder on a writable disk where you have write permission.")


__all__ = ["OUTPUT_MARKER", "OUTPUT_FORMAT", "LOCK_NAME", "check_output_folder", "claim_output_folder"]
