"""The finite numbers among a metric's values: a case can give no value (None) or a NaN/inf (an empty structure,
a constant image), and every summary leaves those out the same way."""

from __future__ import annotations

import math

import numpy as np


def finite_or_none(x) -> float | None:
    """`x` as a float, or None when it is missing, NaN or infinite (JSON has no NaN)."""
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def finite_values(values) -> np.ndarray:
    """The finite numbers among `values` (None, NaN and inf left out), as a float array."""
    return np.asarray([x for x in values if x is not None and np.isfinite(x)], dtype=float)


def mean_of_finite(values) -> float | None:
    """The mean of the finite values, None when there are none."""
    v = finite_values(values)
    return float(v.mean()) if v.size else None
