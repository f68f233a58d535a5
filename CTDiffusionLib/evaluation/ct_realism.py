"""CT realism statistics: HU histogram inside the body, tissue contrast, noise, texture.

All are computed per volume on the common grid. This is the prostate-ct profile's evaluation module
(Profile.evaluation): `sample_stats`, `set_metrics`, `sample_row` and `set_summary` are what the pipeline calls;
the pipeline judges every set metric against real-vs-real floors (floors.py).
"""

from __future__ import annotations

import numpy as np
from CTDiffusionLib.evaluation.finite import finite_values, mean_of_finite
from scipy import ndimage
from scipy.stats import wasserstein_distance

HU_MIN, HU_MAX = -1024.0, 3071.0
HIST_BIN_HU = 5.0  # fine enough for tissue peaks, deterministic (no random subsampling: identical sets give 0)
HIST_EDGES = np.arange(HU_MIN, HU_MAX + HIST_BIN_HU, HIST_BIN_HU)
BODY_THRESHOLD_HU = -400.0  # between air (-1000) and fat (-100)
TISSUE_RANGE = (-200.0, 300.0)  # fat .. enhanced soft tissue: excludes air pockets and bone
HF_CUTOFF = 0.25  # cycles/pixel; half of Nyquist. Above it: edges and noise, not anatomy
GLCM_LEVELS = 16
# Depth bands as fractions of each slice's greatest depth under the skin, so they mean the same on any grid: the
# subcutaneous layer (where fat lies, 1-4 cm in a pelvis of ~12 cm half-width) and the deep soft tissue (muscle,
# organs).
SUBCUTANEOUS_DEPTH = (0.1, 0.3)
DEEP_DEPTH = 0.5


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


def fat_muscle_contrast(vol: np.ndarray, mask: np.ndarray) -> float:
    """Median HU of the deep soft tissue minus median HU of the subcutaneous layer (soft-tissue voxels only, depth
    measured in-plane from the body outline). Subcutaneous fat makes it large (~100 HU in the phantoms); a body of
    uniform muscle-like tissue gives ~0. The spread (tissue_contrast) cannot tell these apart from blur or bone
    halos; this can."""
    soft = (vol >= TISSUE_RANGE[0]) & (vol <= TISSUE_RANGE[1])
    layer, deep = [], []
    for v, m, s in zip(vol, mask, soft):
        if not m.any():
            continue
        depth = ndimage.distance_transform_edt(m)
        depth = depth / depth.max()
        layer.append(v[(depth > SUBCUTANEOUS_DEPTH[0]) & (depth <= SUBCUTANEOUS_DEPTH[1]) & s])
        deep.append(v[(depth > DEEP_DEPTH) & s])
    layer = np.concatenate(layer) if layer else np.empty(0)
    deep = np.concatenate(deep) if deep else np.empty(0)
    return float(np.median(deep) - np.median(layer)) if layer.size and deep.size else float("nan")


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


CT_PROPERTIES = ("body_mean_hu", "tissue_contrast_hu", "fat_muscle_contrast_hu", "noise_hf_share", "glcm_contrast",
                 "glcm_homogeneity", "glcm_energy", "glcm_correlation")


def ct_properties(vol: np.ndarray, mask: np.ndarray) -> dict:
    props = {
        "body_mean_hu": float(vol[mask].mean()) if mask.any() else float("nan"),
        "tissue_contrast_hu": tissue_contrast(vol, mask),
        "fat_muscle_contrast_hu": fat_muscle_contrast(vol, mask),
        "noise_hf_share": high_frequency_share(vol),
    }
    props.update(glcm_features(vol, mask))
    return props


# ------------------------------------------------------------------ the profile's evaluation interface
FOUND = {"key": "body_found_rate", "what": "a body (CT above -400 HU, at least 0.5% of the voxels, not constant)",
         "missing": "No body found", "empty": "all air"}
DIVERSITY_KEY = "ms_ssim_diversity"
NO_BODY_SHARE = 0.005  # a body smaller than 0.5% of the volume (or a constant volume) is "no body found"
SET_PROPERTIES = {"tissue_contrast_hu": "tissue contrast: HU standard deviation of body voxels in -200..300 HU",
                  "fat_muscle_contrast_hu": "fat/muscle contrast: median HU of the deep soft tissue (over half of a "
                                            "slice's greatest depth) minus that of the subcutaneous layer (10-30% "
                                            "of it), voxels in -200..300 HU",
                  "noise_hf_share": f"noise: share of in-plane power above {HF_CUTOFF} cycles/pixel",
                  "glcm_contrast": "GLCM texture contrast (16 levels of -200..300 HU, in-plane neighbours)",
                  "glcm_homogeneity": "GLCM texture homogeneity"}


def sample_stats(vol: np.ndarray) -> dict:
    """Everything the set metrics and figures need from one volume, computed once."""
    mask = body_mask(vol)
    freqs, power = radial_spectrum(vol)
    found = not (mask.mean() < NO_BODY_SHARE or float(vol.std()) < 1.0)
    if not found:
        mask = np.zeros_like(mask)
    return {"props": ct_properties(vol, mask), "hist": hu_histogram([vol], [mask]), "freqs": freqs,
            "spectrum": power, "found": found}




def set_metrics(gen_stats: list, real_stats: list, distance, value) -> dict:
    """Summary entries: `distance(fn)` judges a two-set distance fn(a, b), `value(fn, sided)` a one-set value;
    each returns the judgement fields, to which the description is added here."""
    def w1(a, b):
        return histogram_w1(sum(s["hist"] for s in a), sum(s["hist"] for s in b))

    out = {"hu_histogram_w1": {**distance(w1), "better": "lower",
                               "description": "Wasserstein-1 distance (HU) between body HU histograms, generated vs "
                                              "real"}}
    for prop, text in SET_PROPERTIES.items():
        def mean(items, p=prop):
            return mean_of_finite([s["props"][p] for s in items])

        def gap(a, b, mean=mean):
            ma, mb = mean(a), mean(b)
            return abs(ma - mb) if None not in (ma, mb) else None

        out[f"{prop}_gap"] = {**distance(gap), "better": "lower",
                              "description": f"|mean generated - mean real| of the {text}",
                              "generated_value": mean(gen_stats), "real_value": mean(real_stats)}
    return out


def sample_row(stats: dict) -> dict:
    return dict(stats["props"])


def set_summary(stats_by_set: dict) -> dict:
    """metrics.json extras: mean/std/n of every per-volume property per set."""
    def summ(values):
        v = finite_values(values)
        return {"mean": float(v.mean()) if v.size else None, "std": float(v.std()) if v.size else None,
                "n": int(v.size)}

    return {"ct_properties": {k: {p: summ([st["props"][p] for st in v]) for p in CT_PROPERTIES}
                              for k, v in stats_by_set.items() if v}}
