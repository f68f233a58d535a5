"""Novelty / memorisation gate.

For each generated sample: the most similar training case (same similarity as the diversity metric) and that
similarity. The yardstick is how close genuinely new real cases come to the training set: the nearest-train
similarity of every held-out real case. A generated sample more similar to a training case than 95% of held-out
cases are (i.e. closer than their 5th distance percentile) is flagged as memorised; an exact copy (similarity
~1) is always flagged, even when the held-out set happens to contain a duplicate of a training case.
"""

from __future__ import annotations

import numpy as np

PERCENTILE = 95.0
COPY_SIMILARITY = 1.0 - 1e-6


def nearest(sim_matrix: np.ndarray) -> tuple:
    """Row-wise nearest column: (index array, similarity array)."""
    idx = np.argmax(sim_matrix, axis=1)
    return idx, sim_matrix[np.arange(sim_matrix.shape[0]), idx]


def memorisation_threshold(heldout_nearest: np.ndarray) -> float:
    """95th percentile of the held-out similarities, taken as an observed value (method 'higher'): with a small
    held-out set an interpolated percentile would sit below the closest held-out case and flag a sample as close
    as a genuinely new real case."""
    return float(np.percentile(heldout_nearest, PERCENTILE, method="higher"))


def flag(similarities: np.ndarray, threshold: float) -> np.ndarray:
    return (similarities > threshold) | (similarities >= COPY_SIMILARITY)


def gate_sentence(status: str, flagged: list, n: int, threshold: float | None) -> str:
    """The line the report opens with."""
    if status == "not_checked":
        return ("NOT CHECKED: no training set was given (--train), so memorisation of training cases could not be "
                "tested.")
    if status == "pass":
        return (f"PASS: no sample is closer to a training case than 95% of held-out cases "
                f"(threshold similarity {threshold:.4f}).")
    names = ", ".join(flagged[:20]) + (" ..." if len(flagged) > 20 else "")
    return (f"FLAGGED: {len(flagged)} of {n} generated samples are closer to a training case than 95% of held-out "
            f"cases (similarity > {threshold:.4f}) and may be memorised copies: {names}.")
