"""The standardisation of a table: per-column mean and std, folded into a flow as its first bijector.

Kept in its own module so that the data (x) and the context columns use the same statistics.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Optional

import numpy as np

__all__ = ["check_resolution", "extreme_outliers", "standardization_of"]

OUTLIER_SCALES = 1000.0

#: The coarsest rounding of a column's values, in its standard deviations, that a model may compute with:
#: at least 100 representable values per standard deviation.
RESOLUTION = 1e-2


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


def check_resolution(
    train: np.ndarray, columns: Sequence[str], dtype_name: str, eps: float, what: str = "columns"
) -> None:
    """A ValueError naming the columns of `train (n, D)` that a model computing in a float type of relative
    precision `eps` (`dtype_name`) cannot resolve: a small spread on a large offset (1e9 + N(0, 1), say, or
    timestamps a few seconds apart), where the values round to steps of more than `RESOLUTION` standard
    deviations when cast to that type, so that the model would see a handful of points instead of the data.
    Constant columns (std 0) are fine: standardisation maps them to one value on purpose. `what` names the
    table's columns in the message ("columns", "context columns")."""
    problems = []
    for index, name in enumerate(columns):
        column = np.asarray(train[:, index], dtype=np.float64)
        finite = column[np.isfinite(column)]
        if finite.size < 2:
            continue
        std = float(finite.std())
        largest = float(np.max(np.abs(finite)))
        step = largest * eps  # the spacing of the type's values near the largest magnitude (within 2x)
        if std > 0 and step > RESOLUTION * std:
            problems.append(
                f"{name!s} (values up to {largest:.6g} with std {std:.3g}: {dtype_name} rounds them to steps of "
                f"about {step:.3g}, {step / std:.3g} standard deviations)"
            )
    if problems:
        raise ValueError(
            f"{what} whose spread is too small for their offset to be computed in {dtype_name}: "
            + "; ".join(problems)
            + ". Subtract an offset from each (e.g. its median, or a reference time from timestamps) before "
            "fitting, and from the rows you score; or train in float64 (trainer precision '64-true')"
        )
