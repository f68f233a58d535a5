"""One training per run folder, and a clean restart after a crash (kill -9, power loss, full disk).

The lock is an OS file lock on RUN_DIR/.lock: the kernel drops it when the holding process ends, however it ends,
so a crashed run never leaves the folder locked. While the lock is held nobody else writes to the folder, so what a
crashed writer left behind can be cleared: temp files of atomic writes, and events that came after the checkpoint
the run resumes from (they are replayed, and would otherwise appear twice in the loss curve).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import socket
import time
from pathlib import Path

from CTDiffusionLib.errors import InputError
from CTDiffusionLib.events import parse_event_line
from CTDiffusionLib.runfolder import INPUT, RunFolder, atomic_write

log = logging.getLogger("ctdiffusion")
LOCK_NAME = ".lock"
STEP_EVENTS = ("progress", "checkpoint", "sample")  # events that belong to one training step
# runfolder.atomic_write's and write_image's hidden ".tmp-<id>" names, and the ".tmp" suffix of older versions.
_TEMP_NAME = re.compile(r"\.tmp($|[.-])")
_WINDOWS_LOCK_OFFSET = 1 << 30  # lock a byte far past the holder text, so others can still read who holds it


class RunFolderBusy(InputError):
    """Another live process trains on this run folder."""

    output_in_use = True  # the CLI must not remove a folder another process is writing to


class RunLock:
    """Exclusive, crash-safe use of a run folder (`with RunLock(folder): ...`)."""

    def __init__(self, run_dir: Path, create: bool = True, activity: str = "another training"):
        self.run_dir, self.create, self.activity = Path(run_dir), create, activity
        self._fd: int | None = None

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def acquire(self) -> None:
        if not self.run_dir.is_dir():
            if not self.create:
                return  # nothing to protect; the caller reports the missing folder
            self.run_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.run_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            _lock(fd)
        except OSError:
            holder = _read_holder(fd)
            os.close(fd)
            raise RunFolderBusy(f"The {'run ' if self.activity == 'another training' else ''}folder {self.run_dir} "
                                f"is in use by {self.activity} ({holder}).",
                                "Wait for it to finish or stop it, then start again (with --resume to continue "
                                "it); or choose another --out folder." if self.activity == "another training" else
                                "Wait for it to finish, or choose another --out folder.") from None
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                 "started": time.strftime("%Y-%m-%d %H:%M:%S")}).encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the lock; the file stays (deleting it would race a new holder)
            self._fd = None


def _lock(fd: int) -> None:
    if os.name == "nt":
        import msvcrt

        os.lseek(fd, _WINDOWS_LOCK_OFFSET, os.SEEK_SET)
        msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        os.lseek(fd, 0, os.SEEK_SET)
    else:
        import fcntl

        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)


def _read_holder(fd: int) -> str:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        info = json.loads(os.read(fd, 4096).decode() or "{}")
        return f"process {info['pid']} on {info['host']}, started {info['started']}"
    except (OSError, ValueError, KeyError):
        return "a process that is still running"


def remove_temp_files(run_dir: Path, keep=(INPUT,)) -> list[Path]:
    """Delete the temp files/folders atomic writers left when their process died (call with the lock held)."""
    removed = []
    for dirpath, dirnames, filenames in os.walk(run_dir):
        if Path(dirpath) == run_dir:
            dirnames[:] = [d for d in dirnames if d not in keep]
        for name in [d for d in dirnames if _TEMP_NAME.search(d)] + [f for f in filenames if _TEMP_NAME.search(f)]:
            path = Path(dirpath) / name
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
                dirnames.remove(name)
            else:
                path.unlink(missing_ok=True)
            removed.append(path)
    for path in removed:
        log.info("removed %s, left half-written by an earlier run that was stopped abruptly", path)
    return removed


def clean_up_after_earlier_jobs(run_dir: Path) -> None:
    """Before a job uses its run folder (with the lock held): the half-written files of a job that was killed, and
    a stop request an earlier job left (it is not for this one)."""
    remove_temp_files(run_dir)
    RunFolder(run_dir).stop_request.unlink(missing_ok=True)


def trim_events_after(events_file: Path, step: int) -> int:
    """Drop step events later than `step` (the run replays them from its checkpoint) and any line that is not a
    complete event; the file is rewritten atomically. Returns how many lines were dropped."""
    if not events_file.is_file():
        return 0
    lines = events_file.read_text(encoding="utf-8", errors="replace").splitlines()
    kept = []
    for line in lines:
        event = parse_event_line(line)
        if event is None:
            continue
        if event["event"] in STEP_EVENTS and isinstance(event.get("step"), int) and event["step"] > step:
            continue
        kept.append(line)
    dropped = len(lines) - len(kept)
    if dropped:
        atomic_write(events_file, "".join(line + "\n" for line in kept))
        log.info("events.jsonl: dropped %d events after step %d (they are replayed from the checkpoint)", dropped, step)
    return dropped


def checkpoint_logged(events_file: Path, step: int) -> bool:
    """Whether events.jsonl has the `checkpoint` event of `step` (a kill right after the checkpoint's rename but
    before its event leaves a checkpoint the log does not mention)."""
    if not events_file.is_file():
        return False
    lines = events_file.read_text(encoding="utf-8", errors="replace").splitlines()
    return any((e or {}).get("event") == "checkpoint" and e.get("step") == step for e in map(parse_event_line, lines))
