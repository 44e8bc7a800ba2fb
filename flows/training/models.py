"""Build a table `Flow` from a `model` config section, with the data standardisation folded in as its first
bijector. `model.name` picks a builder of `flows.training.registry.MODELS` (`maf`, `nsf`, `realnvp`,
`gaussian`); `features` (and `context_features`) come from the data, not from the config.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Mapping, Sequence
from typing import Any, Optional

import numpy as np
import torch
from torch import nn

from flows.bijectors.elementwise import Standardize
from flows.core import Bijector, Chain
from flows.flow import Flow
from flows.training.config import Config, ConfigError
from flows.training.registry import check_model_options, model_builder, with_model_defaults

__all__ = ["build_flow", "resolve_model", "standardization_of", "standardizer_of"]


def resolve_model(config: Config) -> Config:
    """`config` with its (tabular) model section completed by `with_model_defaults`."""
    return dataclasses.replace(config, model=with_model_defaults(config.model, "table"))


def _standardize_bijector(mean: np.ndarray, std: np.ndarray) -> Bijector:
    dtype = torch.get_default_dtype()
    return Standardize(
        torch.as_tensor(np.asarray(mean), dtype=dtype), torch.as_tensor(np.asarray(std), dtype=dtype)
    )


#: A value further than this many robust scales (IQR / 1.349, else the scaled MAD) from its column's
#: median is an extreme outlier (impossible for normal data; about 1 row in 1,500 of a Cauchy column).
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


def build_flow(
    model: Mapping[str, Any],
    features: int,
    mean: Optional[np.ndarray] = None,
    std: Optional[np.ndarray] = None,
) -> Flow:
    """The flow of a `model` section for `features`-dimensional rows.

    With `mean` and `std` (each `(features,)`), a fixed standardising bijector is prepended, so that the
    flow's `log_prob` and samples are in the units of the data: `log p(x) = log p_std((x - mean) / std)
    - sum(log std)`. Pass zeros/ones placeholders when the values will come from a state dict.
    """
    options = check_model_options(model)
    builder = model_builder(model["name"], "table")
    try:
        flow = builder(features=features, **options)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"model {model['name']!r} rejected its options {options}: {error}") from error
    if not isinstance(flow, Flow):
        raise TypeError(
            f"model builder {model['name']!r} returned {type(flow).__name__}, expected a flows.Flow"
        )
    if mean is not None or std is not None:
        if mean is None or std is None:
            raise ValueError("standardisation needs both mean and std")
        if np.shape(mean) != (features,) or np.shape(std) != (features,):
            raise ValueError(
                f"mean and std must have shape ({features},), got {np.shape(mean)} and {np.shape(std)}"
            )
        flow.transform = Chain(_standardize_bijector(mean, std), flow.transform)
    return flow


def standardizer_of(flow: nn.Module) -> Optional[Standardize]:
    """The standardising bijector that `build_flow` folds in first (None when the flow has none)."""
    transform = getattr(flow, "transform", None)
    first = transform[0] if isinstance(transform, Chain) else transform
    return first if isinstance(first, Standardize) else None
