"""CT realism statistics: HU histogram inside the body, tissue contrast, noise, texture.

All are computed per volume on the common grid; the pipeline compares generated with real (held-out) and
real-vs-real (held-out vs train) so every number comes with the floor it should be judged against.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from scipy.stats import wasserstein_distance

HU_MIN, HU_MAX = -1024.0, 3071.0
HIST_BIN_HU = 5.0  # fine enough for tissue peaks, deterministic (no random subsampling: identical sets give 0)
HIST_EDGES = np.arange(HU_MIN, HU_MAX + HIST_BIN_HU, HIST_BIN_HU)
BODY_THRESHOLD_HU = -400.0  # between air (-1000) and fat (-100)
TISSUE_RANGE = (-200.0, 300.0)  # fat .. enhanced soft tissue: excludes air pockets and bone
HF_CUTOFF = 0.25  # cycles/pixel; half of Nyquist. Above it: edges and noise, not anatomy
GLCM_LEVELS = 16


def body_mask(vol: np.ndarray) -> np.ndarray:
    """Largest connected region above -400 HU, holes filled per slice (air in the bowel counts as body)."""
    mask = vol > BODY_THRESHOLD_HU
    lab, n = ndimage.label(mask)
    if n == 0:
        return mask
    sizes = ndimage.sum_labels(mask, lab, index=np.arange(1, n + 1))
    mask = lab == (1 + int(np.argmax(sizes)))
    return np.stack([ndimage.binary_fill_holes(s) for s in mask])


def hu_histogram(vols: list, masks: list) -> np.ndarray:
    """Counts of body HU values over the whole set in HIST_EDGES bins."""
    hist = np.zeros(len(HIST_EDGES) - 1)
    for v, m in zip(vols, masks):
        hist += np.histogram(np.clip(v[m], HU_MIN, HU_MAX - 1e-3), bins=HIST_EDGES)[0]
    return hist


def histogram_w1(hist_a: np.ndarray, hist_b: np.ndarray) -> float:
    """Wasserstein-1 distance (HU) between two body-HU histograms."""
    if hist_a.sum() == 0 or hist_b.sum() == 0:
        return float("nan")
    centers = (HIST_EDGES[:-1] + HIST_EDGES[1:]) / 2
    keep = (hist_a > 0) | (hist_b > 0)
    return float(wasserstein_distance(centers[keep], centers[keep], hist_a[keep], hist_b[keep]))


def tissue_contrast(vol: np.ndarray, mask: np.ndarray) -> float:
    """Tissue HU spread: standard deviation of body voxels in the fat..soft-tissue range."""
    v = vol[mask]
    v = v[(v >= TISSUE_RANGE[0]) & (v <= TISSUE_RANGE[1])]
    return float(v.std()) if v.size > 1 else float("nan")


def _inplane_power(vol: np.ndarray) -> tuple:
    """Mean in-plane power spectrum over slices (Hann-windowed: no border leakage) and radial frequency map."""
    z, h, w = vol.shape
    win = np.outer(np.hanning(h), np.hanning(w))
    x = np.clip(vol, HU_MIN, 2000.0)
    x = (x - x.mean(axis=(1, 2), keepdims=True)) * win
    power = (np.abs(np.fft.fft2(x)) ** 2).mean(axis=0)
    fy, fx = np.meshgrid(np.fft.fftfreq(h), np.fft.fftfreq(w), indexing="ij")
    return power, np.sqrt(fx ** 2 + fy ** 2)


def radial_spectrum(vol: np.ndarray, nbins: int = 32) -> tuple:
    """Radial power spectrum: (bin centres in cycles/pixel, mean power per bin)."""
    power, r = _inplane_power(vol)
    edges = np.linspace(0, np.sqrt(0.5), nbins + 1)
    idx = np.clip(np.digitize(r.ravel(), edges) - 1, 0, nbins - 1)
    sums = np.bincount(idx, weights=power.ravel(), minlength=nbins)
    counts = np.maximum(np.bincount(idx, minlength=nbins), 1)
    return (edges[:-1] + edges[1:]) / 2, sums / counts


def high_frequency_share(vol: np.ndarray) -> float:
    """Share of the in-plane power above HF_CUTOFF cycles/pixel (DC excluded): noise raises it, blur lowers it."""
    power, r = _inplane_power(vol)
    total = power[r > 0].sum()
    return float(power[r > HF_CUTOFF].sum() / total) if total > 0 else float("nan")


def glcm_features(vol: np.ndarray, mask: np.ndarray) -> dict:
    """Grey-level co-occurrence texture (in-plane offsets (0,1) and (1,0), symmetric, 16 levels of -200..300 HU)
    restricted to voxel pairs inside the body. NumPy only (no scikit-image dependency)."""
    lo, hi = TISSUE_RANGE
    q = np.clip(((vol - lo) / (hi - lo) * GLCM_LEVELS).astype(int), 0, GLCM_LEVELS - 1)
    pairs = []
    for a, b, ma, mb in ((q[:, :, :-1], q[:, :, 1:], mask[:, :, :-1], mask[:, :, 1:]),
                         (q[:, :-1, :], q[:, 1:, :], mask[:, :-1, :], mask[:, 1:, :])):
        both = ma & mb
        pairs.append(a[both] * GLCM_LEVELS + b[both])
    codes = np.concatenate(pairs)
    if codes.size == 0:
        return {k: float("nan") for k in ("glcm_contrast", "glcm_homogeneity", "glcm_energy", "glcm_correlation")}
    p = np.bincount(codes, minlength=GLCM_LEVELS ** 2).reshape(GLCM_LEVELS, GLCM_LEVELS).astype(float)
    p = p + p.T
    p /= p.sum()
    i, j = np.indices(p.shape)
    mu = (i * p).sum()
    var = ((i - mu) ** 2 * p).sum()
    corr = ((i - mu) * (j - mu) * p).sum() / var if var > 0 else 1.0
    return {
        "glcm_contrast": float(((i - j) ** 2 * p).sum()),
        "glcm_homogeneity": float((p / (1.0 + (i - j) ** 2)).sum()),
        "glcm_energy": float((p ** 2).sum()),
        "glcm_correlation": float(corr),
    }


CT_PROPERTIES = ("body_mean_hu", "tissue_contrast_hu", "noise_hf_share", "glcm_contrast", "glcm_homogeneity",
                 "glcm_energy", "glcm_correlation")


def ct_properties(vol: np.ndarray, mask: np.ndarray) -> dict:
    props = {
        "body_mean_hu": float(vol[mask].mean()) if mask.any() else float("nan"),
        "tissue_contrast_hu": tissue_contrast(vol, mask),
        "noise_hf_share": high_frequency_share(vol),
    }
    props.update(glcm_features(vol, mask))
    return props


class CTSetStats:
    """Everything per set that the comparisons need, computed once."""

    def __init__(self, vols: list):
        self.masks = [body_mask(v) for v in vols]
        self.hist = hu_histogram(vols, self.masks)
        self.props = [ct_properties(v, m) for v, m in zip(vols, self.masks)]
        spectra = [radial_spectrum(v) for v in vols]
        self.freqs = spectra[0][0]
        self.spectrum = np.mean([s[1] for s in spectra], axis=0)

    def values(self, prop: str) -> np.ndarray:
        return np.array([p[prop] for p in self.props], dtype=float)

    def mean(self, prop: str) -> float:
        v = self.values(prop)
        v = v[np.isfinite(v)]
        return float(v.mean()) if v.size else float("nan")
