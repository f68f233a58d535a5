"""The thesis' augmentation (random in-plane zoom and left-right flip; rotation optional), via MONAI transforms.

Parameters are drawn from the caller's generator, so a training step's batch is a pure function of (seed, step):
that is what makes --resume continue exactly. Zoom and rotation act in-plane only (the slice axis is coarse);
labels use nearest-neighbour so they stay labels.
"""

from __future__ import annotations

import numpy as np
from monai.transforms import Flip, Rotate, Zoom

AUGMENTATIONS = ("zoom", "flip", "rotate")


def parse_augment(text: str | None, default: dict) -> dict:
    """'zoom,flip' -> augmentation config (ranges from the preset); 'none' -> {} (off)."""
    if text is None:
        return dict(default)
    names = [n.strip() for n in text.split(",") if n.strip()]
    if names == ["none"]:
        return {}
    from CTDiffusionLib.errors import InputError

    bad = [n for n in names if n not in AUGMENTATIONS]
    if bad:
        raise InputError(f"--augment: unknown augmentation {', '.join(bad)}.",
                         f"Use a comma list of {', '.join(AUGMENTATIONS)}, or none.")
    return {"zoom": (default.get("zoom") or [0.9, 1.1]) if "zoom" in names else None,
            "flip": "flip" in names,
            "rotate_deg": (default.get("rotate_deg") or 15.0) if "rotate" in names else 0.0}


def augment_sample(sample: np.ndarray, cfg: dict, rng: np.random.Generator, is_label: bool) -> np.ndarray:
    """One compact sample (spatial dims only) -> augmented copy of the same shape and dtype."""
    dtype = sample.dtype
    x = sample.astype(np.float32)[None]  # channel first for MONAI
    in_plane_3d = sample.ndim == 3
    if cfg.get("zoom"):
        lo, hi = cfg["zoom"]
        f = float(rng.uniform(lo, hi))
        zoom = (1.0, f, f) if in_plane_3d else (f, f)
        mode = "nearest" if is_label else ("trilinear" if in_plane_3d else "bilinear")
        x = Zoom(zoom=zoom, mode=mode, padding_mode="edge", keep_size=True)(x)
    if cfg.get("rotate_deg"):
        theta = float(np.deg2rad(rng.uniform(-cfg["rotate_deg"], cfg["rotate_deg"])))
        angle = (theta, 0.0, 0.0) if in_plane_3d else theta
        x = Rotate(angle=angle, mode="nearest" if is_label else "bilinear",
                   padding_mode="zeros" if is_label else "border", keep_size=True)(x)
    if cfg.get("flip") and rng.random() < 0.5:
        x = Flip(spatial_axis=x.ndim - 2)(x)  # last spatial axis = x (left-right)
    x = np.asarray(x)[0]
    return np.rint(x).astype(dtype) if is_label else x.astype(dtype)
