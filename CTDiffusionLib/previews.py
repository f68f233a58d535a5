"""Small PNG previews of volumes (mid slice), for the run folder's samples/ and the docs."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from CTDiffusionLib.data.volume_io import image_to_array, read_image

CT_WINDOW = (-160.0, 240.0)  # soft-tissue window (level 40, width 400)
MASK_COLORS = np.array([[0, 0, 0], [0.3, 0.5, 1.0], [0.9, 0.7, 0.2], [0.9, 0.2, 0.2]])  # bg, RV, MYO, LV


def mid_slice_rgb(array_zyx: np.ndarray, profile: str) -> np.ndarray:
    """RGB image of the middle axial slice: CT in a soft-tissue window, masks in the fixed label colours."""
    sl = array_zyx[array_zyx.shape[0] // 2]
    if profile == "prostate-ct":
        lo, hi = CT_WINDOW
        g = np.clip((sl.astype(np.float32) - lo) / (hi - lo), 0, 1)
        return np.repeat(g[..., None], 3, axis=-1)
    return MASK_COLORS[np.clip(sl.astype(int), 0, len(MASK_COLORS) - 1)]


def save_mid_slice_png(volume_path: Path, png_path: Path, profile: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    array, _ = image_to_array(read_image(volume_path))
    plt.imsave(png_path, mid_slice_rgb(array, profile)[::-1])  # flip rows: patient anterior up
    return png_path
