"""Checkpoints: written atomically (runfolder.atomic_write), loaded without unpickling (weights_only=True).

A crash or kill -9 can leave at most a hidden temporary file, which is ignored; resume takes the newest checkpoint
that loads. Names and listing are the run-folder layout's (runfolder.py).
"""

from __future__ import annotations

import logging
import pickle
from pathlib import Path

import torch

from CTDiffusionLib.errors import InputError
from CTDiffusionLib.runfolder import atomic_write, checkpoint_name, list_checkpoints

log = logging.getLogger("ctdiffusion")
__all__ = ["save_checkpoint", "list_checkpoints", "load_checkpoint", "load_latest"]


def save_checkpoint(folder: Path, step: int, state: dict, keep: int = 2) -> Path:
    """Write step_XXXXXXXX.pt atomically, then drop all but the newest `keep` checkpoints."""
    path = atomic_write(Path(folder) / checkpoint_name(step), lambda tmp: torch.save(state, tmp))
    for old in list_checkpoints(folder)[:-keep]:
        old.unlink(missing_ok=True)
    return path


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
