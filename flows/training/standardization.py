"""The standardisation of a table: per-column mean and std, folded into a flow as its first bijector.

Kept in its own module so that the data (x) and the context columns use the same statistics.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Optional

import numpy as np
import torch

__all__ = ["check_resolution", "check_table_resolution", "extreme_outliers", "standardization_of"]

OUTLIER_SCALES = 1000.0

#: The coarsest rounding of a column's values, in its standard deviations, that a model may compute with
#: (at least 50 representable values per standard deviation).
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
    largest: np.ndarray, std: np.ndarray, columns: Sequence[str], dtype: torch.dtype, what: str = "columns"
) -> None:
    """A ValueError naming the columns that a model computing in `dtype` cannot resolve: a small spread on a
    large offset (1e9 + N(0, 1), say, or timestamps seconds apart), where casting to `dtype` rounds values by
    up to more than `RESOLUTION` standard deviations, so that the model would see a handful of points instead
    of the data. `largest` and `std` `(D,)` are each column's largest magnitude and standard deviation (of a
    table in memory, `check_table_resolution`; of a streamed one, its scan). The worst rounding is half the
    spacing of `dtype`'s values at `largest` (float32 stores integers below 2**24 exactly, but a column of them
    with a spread below 1 is mostly one value). Constant columns (std 0) are fine: standardisation maps them to
    one value on purpose. `what` names the columns in the message ("columns", "context columns")."""
    largest = np.asarray(largest, dtype=np.float64)
    std = np.asarray(std, dtype=np.float64)
    magnitude = torch.as_tensor(largest).to(dtype)
    spacing = (torch.nextafter(magnitude, torch.full_like(magnitude, math.inf)) - magnitude).double().numpy()
    rounding = spacing / 2
    name = str(dtype).removeprefix("torch.")
    with np.errstate(invalid="ignore"):  # (beyond the dtype's range: the range checks report those)
        coarse = np.isfinite(rounding) & (std > 0) & (rounding > RESOLUTION * std)
    problems = [
        f"{columns[j]!s} (values up to {largest[j]:.6g} with std {std[j]:.3g}: {name} rounds them by up to "
        f"{rounding[j]:.3g}, {rounding[j] / std[j]:.3g} standard deviations)"
        for j in np.flatnonzero(coarse)
    ]
    if problems:
        raise ValueError(
            f"{what} whose spread is too small for their offset to be computed in {name}: "
            + "; ".join(problems)
            + ". Subtract an offset from each (e.g. its median, or a reference time from timestamps) before "
            "fitting, and from the rows you score; or train in float64 (trainer precision '64-true')"
        )


def check_table_resolution(
    table: np.ndarray, columns: Sequence[str], dtype: torch.dtype, what: str = "columns"
) -> None:
    """`check_resolution` of the columns of `table (n, D)` (finite values; a table without rows passes)."""
    if table.shape[0] == 0:
        return
    values = np.where(np.isfinite(table), table, 0.0)
    check_resolution(np.max(np.abs(values), axis=0), values.std(axis=0), columns, dtype, what)
