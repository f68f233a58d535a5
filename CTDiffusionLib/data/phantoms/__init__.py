"""Synthetic data sets in the same on-disk layout as the real data (for demos, tests and smoke runs)."""

from __future__ import annotations

import sys
from pathlib import Path

from CTDiffusionLib.errors import InputError
from CTDiffusionLib.memory import require_memory, volume_bytes
from CTDiffusionLib.output_folder import check_output_folder
from CTDiffusionLib.profiles import Profile, get_profile
from CTDiffusionLib.runfolder import staged_folder


def write_phantom_dataset(profile, num: int, out, seed: int = 0, size_xyz: tuple | None = None,
                          with_labels: bool = False) -> Path:
    """Write `num` phantom cases of `profile` into the new (or empty) folder `out`; deterministic for `seed`.
    `with_labels`: the cases with their organ labels, in the nnU-Net raw layout (data/pairs.py).

    The set is built in a hidden sibling folder and renamed into place at the end, so an error or Ctrl-C
    never leaves a half-written data set behind.
    """
    profile = get_profile(profile)
    writer = profile.phantom_writer()  # the profile's generator module; it also knows its default size
    module = sys.modules[writer.__module__]
    pairs_writer = getattr(module, "write_pairs", None) if with_labels else None  # a module with labels has one
    if with_labels and pairs_writer is None:
        raise InputError(f"The {profile.name} phantoms have no separate labels (--with-labels).",
                         "--with-labels is for CT phantoms; cardiac-masks phantoms are label maps already.")
    if int(num) < 1:
        raise InputError(f"The number of phantom cases must be at least 1, got {num}.", "Pass --num 1 or more.")
    size = _checked_size(profile, size_xyz or module.DEFAULT_SIZE_XYZ)
    out = Path(out).expanduser()
    check_output_folder(out, "phantoms")  # the one rule (output_folder.py); a data set is only ever built anew
    if out.exists() and any(out.iterdir()):
        raise InputError(f"The output folder {out} already exists and is not empty.",
                         "Choose a new folder, or delete the old one first.")
    require_memory(volume_bytes(size, 4) * 3, f"a {'x'.join(map(str, size))} phantom volume")

    if pairs_writer is not None:
        return pairs_writer(out, int(num), int(seed) % 2**63, size)  # builds `out` in a staged folder itself
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
