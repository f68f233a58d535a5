"""Distribution distances between two sets of feature vectors: Fréchet distance (the FID formula) and MMD.

Fréchet: ||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^1/2), the maths of monai.metrics.FIDMetric, but the trace
of the matrix square root is taken from the eigenvalues of the symmetric PSD matrix S_a^1/2 S_b S_a^1/2. With a few
dozen samples and 32 features the covariances are singular; the symmetric route stays real and accurate there,
while MONAI's scipy.linalg.sqrtm route can return complex noise and prints to stdout (our JSON event channel).

MMD: biased (V-statistic) squared MMD with a Gaussian kernel whose bandwidth is the median pairwise distance of
the reference (real) features, fixed for all comparisons in one report so they are on one scale. Biased on
purpose: identical sets give exactly 0. (monai.metrics.MMDMetric uses a linear kernel and needs equal set sizes.)
"""

from __future__ import annotations

import numpy as np


def _psd_sqrt(m: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((m + m.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """a, b: (n, d) feature arrays (n >= 2)."""
    mu_a, mu_b = a.mean(0), b.mean(0)
    s_a = np.atleast_2d(np.cov(a, rowvar=False))
    s_b = np.atleast_2d(np.cov(b, rowvar=False))
    root_a = _psd_sqrt(s_a)
    inner = root_a @ s_b @ root_a
    tr_cross = np.sqrt(np.clip(np.linalg.eigvalsh((inner + inner.T) / 2), 0, None)).sum()
    value = float(((mu_a - mu_b) ** 2).sum() + np.trace(s_a) + np.trace(s_b) - 2 * tr_cross)
    return max(value, 0.0)


def median_bandwidth(ref: np.ndarray) -> float:
    d = np.sqrt(((ref[:, None] - ref[None]) ** 2).sum(-1))
    off = d[~np.eye(len(ref), dtype=bool)]
    med = float(np.median(off)) if off.size else 1.0
    return med if med > 0 else 1.0


def mmd2(a: np.ndarray, b: np.ndarray, bandwidth: float) -> float:
    def k(x, y):
        return np.exp(-((x[:, None] - y[None]) ** 2).sum(-1) / (2 * bandwidth ** 2))

    return max(float(k(a, a).mean() + k(b, b).mean() - 2 * k(a, b).mean()), 0.0)
