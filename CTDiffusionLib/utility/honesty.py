"""What keeps the benchmark honest: the test cases are never trained on, and copies are named.

Overlap: a test pair whose CT or label file is also a training or synthetic file (the same file after resolving
links, or byte-identical content) is refused before anything is trained: the held-out score would be a training
score.

Near-copies: a synthetic set that copies the training CTs "helps" for the wrong reason. Each synthetic CT is compared
with every training CT by the quality report's near-copy check (evaluation/novelty.py: aligned in-plane MS-SSIM,
invariant to flips, zoom and shifts), with the threshold from real-vs-real (held-out test CTs and training CTs
against the other training CTs), exactly as `ctdiffusion evaluate --train` does.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from CTDiffusionLib.errors import InputError

_HASH_CHUNK = 1 << 20


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_HASH_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def refuse_overlap(test_files: dict, other_files: dict) -> None:
    """test_files / other_files: {case label: (files...)}, labels like '--train prostate_003'. InputError naming
    the first test file that is a training or synthetic file, or has the same bytes as one."""
    by_path = {Path(f).resolve(): (owner, f) for owner, files in other_files.items() for f in files}
    test_sizes = {Path(f).stat().st_size for files in test_files.values() for f in files}
    by_digest = {}  # only files whose size some test file shares are hashed (cheap on large sets)
    for owner, files in other_files.items():
        for f in files:
            if Path(f).stat().st_size in test_sizes:
                by_digest.setdefault(file_digest(Path(f)), (owner, f))
    for files in test_files.values():
        for f in files:
            hit, how = by_path.get(Path(f).resolve()), "is the same file as"
            if hit is None:
                hit, how = by_digest.get(file_digest(Path(f))), "has the same content as"
            if hit is not None:
                raise InputError(f"The test file {f} {how} {hit[1]} ({hit[0]}), so the held-out score would be a "
                                 "training score.",
                                 "Give --test a folder of pairs that are in neither --train nor --synthetic.")


def as_samples(cases: list) -> list:
    """SegCases (CT on the working grid) as the samples the near-copy check reads: name, array, meta."""
    return [SimpleNamespace(name=c.name, array=c.image, meta={}) for c in cases]


def near_copies(synthetic: list, train: list, test: list, profile="prostate-ct", device: str = "cpu",
                seed: int = 0) -> dict:
    """Synthetic samples that are near-copies of training samples (objects with .name, .array on one grid and
    .meta, whose "subject" groups the samples of one patient). Returns the check's threshold, what it is invariant
    to, and {"synthetic", "train", "similarity"} per near-copy."""
    from CTDiffusionLib.evaluation import novelty
    from CTDiffusionLib.evaluation.pipeline import _near_copy_null, _search
    from CTDiffusionLib.evaluation.similarity import similarity_for
    from CTDiffusionLib.profiles import get_profile

    gen = SimpleNamespace(profile=get_profile(profile))
    sim = similarity_for(gen.profile, train[0].array.shape)
    null = _near_copy_null(gen, test, train, sim, device, None, seed)
    search, space = _search(gen, sim, None)
    idx, best = novelty.nearest(search.matrix([c.array for c in synthetic], [c.array for c in train], device))
    threshold = null["threshold"]
    flags = novelty.flag(best, threshold["threshold"])
    copies = [{"synthetic": s.name, "train": train[int(j)].name, "similarity": float(v)}
              for s, j, v, f in zip(synthetic, idx, best, flags) if f]
    return {"threshold": threshold["threshold"], "false_flag_chance": threshold["false_flag_chance"],
            "n_null": threshold["n_null"], "invariant_to": novelty.describe_space(space),
            "median_nearest_similarity": float(np.median(best)) if len(best) else None, "near_copies": copies}
