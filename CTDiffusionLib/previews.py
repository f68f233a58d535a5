"""Small PNG previews of volumes (mid slice), for the run folder's samples/ and the docs."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from CTDiffusionLib.data.volume_io import image_to_array, read_image
from CTDiffusionLib.profiles import get_profile


def mid_slice_rgb(array_zyx: np.ndarray, profile) -> np.ndarray:
    """RGB image of the middle axial slice: intensity images in the profile's display window, label maps in its
    class colours (the same colours as the Slicer segments and the report figures)."""
    profile = get_profile(profile)
    sl = array_zyx[array_zyx.shape[0] // 2]
    if profile.is_label_map:
        colors = np.array(profile.label_colors(), dtype=np.float64)
        return colors[np.clip(sl.astype(int), 0, len(colors) - 1)]
    lo, hi = profile.display_window.range
    g = np.clip((sl.astype(np.float32) - lo) / (hi - lo), 0, 1)
    return np.repeat(g[..., None], 3, axis=-1)


def save_mid_slice_png(volume_path: Path, png_path: Path, profile) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    array, _ = image_to_array(read_image(volume_path))
    plt.imsave(png_path, mid_slice_rgb(array, profile)[::-1])  # flip rows: patient anterior up
    return png_path
