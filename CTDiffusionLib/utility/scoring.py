"""Scores of one predicted label map against the true one, per structure, with MONAI's metrics.

Dice (monai.metrics.DiceMetric) and the 95th-percentile Hausdorff distance (monai.metrics.HausdorffDistanceMetric,
percentile 95) in millimetres on the working grid's spacing. A structure absent from the true map of a case is
left out of that case (NaN: neither a free 1 nor a penalty); a structure present but not predicted scores Dice 0
and no HD95 (NaN: undefined, reported as missing rather than as a number).
"""

from __future__ import annotations

import warnings

import numpy as np
import torch


def _one_hot(labels: np.ndarray, n_classes: int) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(labels, np.int64))
    return torch.nn.functional.one_hot(t, n_classes).movedim(-1, 0)[None].float()  # (1, C, Z, Y, X)


def score_case(predicted: np.ndarray, truth: np.ndarray, n_classes: int, spacing_zyx) -> dict:
    """{"dice": array (n_classes - 1,), "hd95": array (n_classes - 1,)} for one case; NaN where undefined."""
    from monai.metrics import DiceMetric, HausdorffDistanceMetric

    pred, true = _one_hot(predicted, n_classes), _one_hot(truth, n_classes)
    present = true[0, 1:].flatten(1).amax(1) > 0
    dice = DiceMetric(include_background=False, reduction="none", ignore_empty=True)(pred, true)[0].numpy()
    found = pred[0, 1:].flatten(1).amax(1) > 0
    hd95 = np.full(n_classes - 1, np.nan)
    both = (present & found).numpy()
    if both.any():
        metric = HausdorffDistanceMetric(include_background=False, percentile=95, reduction="none")
        with warnings.catch_warnings():  # MONAI warns about the empty classes this function leaves out anyway
            warnings.simplefilter("ignore")
            values = metric(pred, true, spacing=[float(s) for s in spacing_zyx])[0].numpy()
        hd95[both] = values[both]
    dice = np.where(present.numpy(), dice, np.nan)
    return {"dice": dice.astype(float), "hd95": hd95.astype(float)}


def case_mean(per_structure: np.ndarray) -> float:
    """One case's score: the mean over the structures it has (NaN when it has none)."""
    v = np.asarray(per_structure, float)
    return float(np.nanmean(v)) if np.isfinite(v).any() else float("nan")
