"""Checkpoints: written atomically (temp file + rename), loaded without unpickling (weights_only=True).

A crash or kill -9 can leave at most a *.tmp file, which is ignored; resume takes the newest checkpoint that loads.
"""

from __future__ import annotations

import logging
import os
import pickle
import re
from pathlib import Path

import torch

from CTDiffusionLib.errors import InputError

log = logging.getLogger("ctdiffusion")
PATTERN = re.compile(r"^step_(\d{8})\.pt$")


def checkpoint_path(folder: Path, step: int) -> Path:
    return folder / f"step_{step:08d}.pt"


def save_checkpoint(folder: Path, step: int, state: dict, keep: int = 2) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = checkpoint_path(folder, step)
    tmp = path.with_suffix(".pt.tmp")
    torch.save(state, tmp)
    with open(tmp, "rb") as f:  # make the bytes durable before the rename publishes them
        os.fsync(f.fileno())
    os.replace(tmp, path)
    for old in list_checkpoints(folder)[:-keep]:
        old.unlink(missing_ok=True)
    return path


def list_checkpoints(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted((p for p in folder.iterdir() if PATTERN.match(p.name)), key=lambda p: p.name)


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
