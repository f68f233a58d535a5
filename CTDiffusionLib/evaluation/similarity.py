"""Pairwise similarity between two volumes on the same grid: the one yardstick for diversity and novelty.

CT: MS-SSIM computed in-plane, slice by slice (slice k of A against slice k of B), averaged over slices. Why not
3D MS-SSIM: MONAI's MS-SSIM halves every axis per scale, and with 26 slices of 2.5 mm (or 8-16 slices on tiny
grids) z runs out after one or two scales while x/y (256-512 voxels) still has room for five; pooling z would
also merge slices 5-10 mm apart. In-plane, the number of scales is chosen so every scale fits the 7x7 Gaussian
window (5 scales from 112 px, 4 from 63, 3 from 28, 2 from 14), with the standard MS-SSIM weights renormalised.
HU are windowed to the profile's comparison window (-1000..1000 HU) -> [0, 1] (data_range 1): wide enough for
air/fat/tissue/bone edges.

Label maps: mean Dice over the foreground classes present in either mask (MONAI DiceMetric per class; a structure
absent from both is left out, two empty masks score 1). Counting an absent structure as a perfect 1 would hand every
pair of apical 2D slices (no RV) a third of the score for free: they would look alike whatever their shapes, which
compresses the scale and lifts the near-copy threshold above what augmented copies of training slices score.
"""

from __future__ import annotations

import numpy as np
import torch

MS_SSIM_KERNEL = 7
MS_SSIM_SIGMA = 1.5
MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)  # Wang et al. 2003
CHUNK_VOXELS = 4_000_000  # voxels per batch of pairs: bounds memory on CPU and GPU


def ms_ssim_scales(height: int, width: int, kernel: int = MS_SSIM_KERNEL) -> int:
    """Largest number of scales (<= 5) for which the coarsest image is still at least `kernel` pixels wide.
    Matches MONAI's own check: size // (scales-1)**2 > kernel-1."""
    for s in range(5, 0, -1):
        if min(height, width) // max(1, s - 1) ** 2 > kernel - 1:
            return s
    raise ValueError(f"images of {height}x{width} pixels are too small for MS-SSIM with a {kernel}x{kernel} window")


def _weights(scales: int) -> tuple:
    w = np.array(MS_SSIM_WEIGHTS[:scales], dtype=float)
    return tuple(float(x) for x in w / w.sum())


class Similarity:
    name = ""
    description = ""

    def prepare(self, arrays: list) -> torch.Tensor:
        raise NotImplementedError

    def _score(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def pairs(self, a: torch.Tensor, b: torch.Tensor, index_pairs: list, device: str = "cpu") -> np.ndarray:
        """Similarity of a[i] and b[j] for every (i, j) in index_pairs, computed in memory-bounded chunks."""
        if not index_pairs:
            return np.zeros(0)
        per_pair = int(np.prod(a.shape[1:]))
        chunk = max(1, CHUNK_VOXELS // max(per_pair, 1))
        out = []
        with torch.no_grad():
            for k in range(0, len(index_pairs), chunk):
                ii, jj = zip(*index_pairs[k:k + chunk])
                out.append(self._score(a[list(ii)].to(device), b[list(jj)].to(device)).double().cpu())
        return torch.cat(out).numpy()

    def matrix(self, a: torch.Tensor, b: torch.Tensor, device: str = "cpu") -> np.ndarray:
        pairs = [(i, j) for i in range(a.shape[0]) for j in range(b.shape[0])]
        return self.pairs(a, b, pairs, device).reshape(a.shape[0], b.shape[0])


class InPlaneMSSSIM(Similarity):
    name = "ms_ssim"

    def __init__(self, height: int, width: int, window: tuple = (-1000.0, 1000.0)):
        self.window = window
        self.scales = ms_ssim_scales(height, width)
        self.weights = _weights(self.scales)
        self.description = (f"in-plane MS-SSIM ({self.scales} scales, {MS_SSIM_KERNEL}x{MS_SSIM_KERNEL} Gaussian "
                            f"window, sigma {MS_SSIM_SIGMA}) on HU windowed to [{window[0]:.0f}, "
                            f"{window[1]:.0f}], averaged over slices")

    def prepare(self, arrays: list) -> torch.Tensor:
        lo, hi = self.window
        x = np.stack([np.clip((a.astype(np.float32) - lo) / (hi - lo), 0.0, 1.0) for a in arrays])
        return torch.from_numpy(x)  # (N, Z, Y, X)

    def _score(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        from monai.metrics.regression import compute_ms_ssim

        p, z, h, w = a.shape
        val = compute_ms_ssim(a.reshape(p * z, 1, h, w), b.reshape(p * z, 1, h, w), spatial_dims=2, data_range=1.0,
                              kernel_size=MS_SSIM_KERNEL, kernel_sigma=MS_SSIM_SIGMA, weights=self.weights)
        return val.reshape(p, z).mean(dim=1)


class ForegroundDice(Similarity):
    name = "dice"

    def __init__(self, class_names=("background", "RV", "MYO", "LV")):
        self.n_classes = len(class_names)
        self.description = (f"mean Dice over {', '.join(class_names[1:])}, each where present in either mask "
                            "(two empty masks score 1)")

    def prepare(self, arrays: list) -> torch.Tensor:
        return torch.from_numpy(np.stack([a.astype(np.int64) for a in arrays]))  # (N, Z, Y, X) labels

    def _score(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        from monai.metrics import DiceMetric

        oh_a = torch.nn.functional.one_hot(a, self.n_classes).movedim(-1, 1).float()
        oh_b = torch.nn.functional.one_hot(b, self.n_classes).movedim(-1, 1).float()
        dice = DiceMetric(include_background=False, reduction="none", ignore_empty=False)(oh_a, oh_b)
        present = (oh_a[:, 1:] + oh_b[:, 1:]).flatten(2).amax(-1) > 0  # (pairs, classes): in either mask
        n = present.sum(dim=1)
        mean = torch.where(present, dice, torch.zeros_like(dice)).sum(dim=1) / n.clamp_min(1)
        return torch.where(n > 0, mean, torch.ones_like(mean))


def similarity_for(profile, shape_zyx: tuple) -> Similarity:
    """The similarity of a profile (a Profile or its name): Dice for label maps, MS-SSIM for intensity images."""
    from CTDiffusionLib.profiles import get_profile

    profile = get_profile(profile)
    if profile.is_label_map:
        return ForegroundDice(profile.class_names)
    return InPlaneMSSSIM(shape_zyx[1], shape_zyx[2], profile.comparison_window.range)
