"""Checkpoints: written atomically (runfolder.atomic_write), loaded without unpickling (weights_only=True).

A crash or kill -9 can leave at most a hidden temporary file, which is ignored; resume takes the newest checkpoint
that loads. Names and listing are the run-folder layout's (runfolder.py).
"""

from __future__ import annotations

import logging
import pickle
import shutil
from pathlib import Path

import torch

from CTDiffusionLib.errors import InputError, TrainingFailed
from CTDiffusionLib.runfolder import atomic_write, checkpoint_name, list_checkpoints

log = logging.getLogger("ctdiffusion")
__all__ = ["save_checkpoint", "list_checkpoints", "load_checkpoint", "load_latest"]


def save_checkpoint(folder: Path, step: int, state: dict, keep: int = 2) -> Path:
    """Write step_XXXXXXXX.pt atomically, then drop all but the newest `keep` checkpoints. When the disk is full (or
    any write fails) no new file is left and the older checkpoints stay."""
    path = Path(folder) / checkpoint_name(step)
    recorder = _WriteErrorRecorder()
    try:
        atomic_write(path, lambda tmp: recorder.save(state, tmp))
    except (OSError, RuntimeError) as exc:  # torch turns a failed write into a cryptic RuntimeError
        previous = list_checkpoints(folder)
        raise TrainingFailed(
            f"Could not write the checkpoint {path} ({write_error_text(recorder.error or exc, Path(folder))}).",
            (f"The previous checkpoint {previous[-1].name} is intact: free disk space, then run the same command "
             "with --resume to continue from it." if previous else
             "Free disk space and start the run again.")) from None
    for old in list_checkpoints(folder)[:-keep]:
        old.unlink(missing_ok=True)
    return path


class _WriteErrorRecorder:
    """A binary file wrapper for torch.save that keeps the OSError (e.g. 'No space left on device') of a failed
    write, which torch would otherwise report only as an internal position mismatch."""

    def __init__(self):
        self._f, self.error = None, None

    def save(self, state: dict, path: Path) -> None:
        with open(path, "wb") as self._f:
            torch.save(state, self)

    def write(self, data) -> int:
        try:
            return self._f.write(data)
        except OSError as exc:
            self.error = exc
            raise

    def flush(self) -> None:
        self._f.flush()


def write_error_text(exc: BaseException, folder: Path) -> str:
    """Why a write failed, in words: the OS reason when there is one, and the free space left on that disk."""
    reason = getattr(exc, "strerror", None) or str(exc).strip().splitlines()[-1]
    try:
        free = f"{shutil.disk_usage(folder).free / 1e6:.1f} MB free on its disk"
    except OSError:
        free = "free space unknown"
    return f"{reason}; {free}"


def load_checkpoint(path: Path) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise InputError(f"{path} would need unpickling arbitrary Python objects to load ({str(exc).splitlines()[0]}).",
                         "CTDiffusion only loads plain tensors; this file was not written by CTDiffusion.") from None


def load_latest(folder: Path) -> tuple[Path, dict] | None:
    """Newest checkpoint that loads; damaged ones (cut short) are skipped with a warning."""
    for path in reversed(list_checkpoints(folder)):
        try:
            return path, load_checkpoint(path)
        except InputError:
            raise
        except Exception as exc:  # truncated / damaged file: fall back to the previous one
            log.warning("skipping damaged checkpoint %s (%s)", path, exc)
    return None
