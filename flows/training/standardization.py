"""The standardisation of a table: per-column mean and std, folded into a flow as its first bijector.

Kept in its own module so that the data (x) and the context columns use the same statistics.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Optional

import numpy as np

__all__ = ["extreme_outliers", "standardization_of"]

OUTLIER_SCALES = 1000.0


def _robust_scale(column: np.ndarray) -> float:
    """IQR / 1.349, else 1.4826 * MAD (both the std for normal data); 0 when most values are equal."""
    q25, median, q75 = np.percentile(column, [25, 50, 75])
    iqr = (q75 - q25) / 1.349
    return float(iqr) if iqr > 0 else float(1.4826 * np.median(np.abs(column - median)))


def extreme_outliers(train: np.ndarray, columns: Sequence[str]) -> dict[str, int]:
    """Column name -> number of rows further than `OUTLIER_SCALES` robust scales from the column's median
    (columns whose robust scale is 0, mostly one value, have none by this rule)."""
    counts: dict[str, int] = {}
    for index, name in enumerate(columns):
        column = np.asarray(train[:, index], dtype=np.float64)
        scale = _robust_scale(column)
        if scale > 0:
            count = int(np.sum(np.abs(column - np.median(column)) > OUTLIER_SCALES * scale))
            if count:
                counts[str(name)] = count
    return counts


def standardization_of(
    train: np.ndarray, columns: Optional[Sequence[str]] = None
) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std (ddof 0) per column of the training split; constant columns get std 1.

    Extreme outliers (`extreme_outliers`) get a `UserWarning` naming the columns and row counts. The
    statistics stay the plain mean and std on purpose: the flow is fitted by maximum likelihood to every
    row, outliers included, so a robust scale would not rescue the ordinary rows; it would only move the
    outlier to ~1e15 standard units, where float32 training overflows on its first step. (Plain moments also
    keep standardised training data at unit variance, as mollification and `noise_std` assume.) The
    moments are taken on each column divided by its largest magnitude, so values near 1e300 do not overflow.
    """
    names = list(columns) if columns is not None else [f"x{i}" for i in range(train.shape[1])]
    size = np.max(np.abs(train), axis=0) if train.size else np.ones(train.shape[1])
    size = np.where((size > 0) & np.isfinite(size), size, 1.0)
    scaled = train / size
    mean = scaled.mean(axis=0) * size
    std = scaled.std(axis=0) * size
    std = np.where(std > 0, std, 1.0)
    outliers = extreme_outliers(train, names)
    if outliers:
        listing = [f"{name} ({count} rows)" for name, count in outliers.items()]
        warnings.warn(
            f"extreme outliers (more than {OUTLIER_SCALES:g} robust scales from the median) in columns "
            f"{listing}: they dominate the standardisation std and the maximum-likelihood fit, and the "
            "ordinary rows get squeezed together (poor scores, samples spread over the outliers' range). "
            "Check them (a wrong unit, a sentinel value, a typo?) and drop or fix them before fitting",
            UserWarning,
            stacklevel=2,
        )
    return mean, std
