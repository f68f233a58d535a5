"""Synthetic data sets in the same on-disk layout as the real data (for demos, tests and smoke runs)."""

from __future__ import annotations

import sys
from pathlib import Path

from CTDiffusionLib.errors import InputError
from CTDiffusionLib.profiles import Profile, get_profile
from CTDiffusionLib.runfolder import staged_folder


def write_phantom_dataset(profile, num: int, out, seed: int = 0, size_xyz: tuple | None = None) -> Path:
    """Write `num` phantom cases of `profile` into the new (or empty) folder `out`; deterministic for `seed`.

    The set is built in a hidden sibling folder and renamed into place at the end, so an error or Ctrl-C
    never leaves a half-written data set behind.
    """
    profile = get_profile(profile)
    writer = profile.phantom_writer()  # the profile's generator module; it also knows its default size
    if int(num) < 1:
        raise InputError(f"The number of phantom cases must be at least 1, got {num}.", "Pass --num 1 or more.")
    size = _checked_size(profile, size_xyz or sys.modules[writer.__module__].DEFAULT_SIZE_XYZ)
    out = Path(out).expanduser()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise InputError(f"The output folder {out} already exists and is not empty.",
                         "Choose a new folder, or delete the old one first.")

    with staged_folder(out) as staging:  # a failed or interrupted writer leaves no half data set
        writer(staging, int(num), int(seed) % 2**63, size)  # SeedSequence needs a non-negative seed
    return out


def _checked_size(profile: Profile, size_xyz) -> tuple[int, int, int]:
    size = tuple(int(s) for s in size_xyz)
    minimum = profile.phantom_min_size
    if len(size) != 3 or any(s < m for s, m in zip(size, minimum)):
        raise InputError(f"The phantom size {'x'.join(map(str, size))} is too small or not 3D for {profile.name}.",
                         f"Give XxYxZ voxels, at least {'x'.join(map(str, minimum))}.")
    return size
