"""Diversity: how alike the samples of one set are to each other.

Mode collapse shows as generated-generated similarity far above real-real similarity. Pairs are all i<j pairs,
or a seeded random subset of them when there are more than `max_pairs` (cost grows with n^2).
"""

from __future__ import annotations

import numpy as np

DEFAULT_MAX_PAIRS = 300


def within_set_pairs(n: int, max_pairs: int | None, seed: int) -> list:
    pairs = [(i, j) for i in range(n) for j in range(i + 1, n)]
    limit = max_pairs or DEFAULT_MAX_PAIRS
    if len(pairs) > limit:
        keep = np.random.default_rng(seed).choice(len(pairs), size=limit, replace=False)
        pairs = [pairs[k] for k in sorted(keep)]
    return pairs


def pairwise_similarity(similarity, prepared, *, max_pairs=None, seed=0, device="cpu") -> np.ndarray:
    """Similarities of distinct pairs inside one prepared set (empty when the set has fewer than 2 samples)."""
    pairs = within_set_pairs(prepared.shape[0], max_pairs, seed)
    return similarity.pairs(prepared, prepared, pairs, device)
