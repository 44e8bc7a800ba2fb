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
from torch import Tensor, nn

from flows.core import Bijector, Chain
from flows.flow import Flow
from flows.training.config import Config, ConfigError
from flows.training.registry import check_model_options, model_builder, with_model_defaults

__all__ = ["build_flow", "initialize_flow", "resolve_model", "standardization_of"]


def resolve_model(config: Config) -> Config:
    """`config` with its (tabular) model section completed by `with_model_defaults`."""
    return dataclasses.replace(config, model=with_model_defaults(config.model, "table"))


def _standardize_bijector(mean: np.ndarray, std: np.ndarray) -> Bijector:
    from flows.bijectors.elementwise import Standardize

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
    context: Optional[Any] = None,
) -> Flow:
    """The flow of a `model` section for `features`-dimensional rows.

    With `mean` and `std` (each `(features,)`), a fixed standardising bijector is prepended, so that the
    flow's `log_prob` and samples are in the units of the data: `log p(x) = log p_std((x - mean) / std)
    - sum(log std)`. Pass zeros/ones placeholders when the values will come from a state dict.
    `context` (a `flows.training.context.ContextStats`) makes the flow conditional on `k` raw context
    columns, standardised (then embedded by `model.embedding`) inside the flow.
    """
    options = check_model_options(model)
    embedding, context_features = _context_embedding(model, context)
    if context_features:
        options["context_features"] = context_features
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
    if embedding is not None:
        flow.embedding = embedding
        flow.context_features = int(context.features)  # the raw context's width, before the embedding
    return flow


def _context_embedding(model: Mapping[str, Any], context: Optional[Any]) -> tuple[Optional[nn.Module], int]:
    """The context embedding of a conditional model and the context width its layers see (None, 0 without)."""
    if context is None:
        if model.get("embedding") is not None:
            raise ConfigError(
                "config key 'model.embedding' embeds a context, but the data has none; set "
                "data.context_columns or remove model.embedding"
            )
        return None, 0
    from flows.training.context import build_embedding

    return build_embedding(model.get("embedding"), context)


def initialize_flow(flow: nn.Module, x: Tensor, context: Optional[Tensor] = None) -> bool:
    """Data-dependent initialisation (ActNorm) of every layer that has one, from a batch `x (batch, D)`
    (and its raw `context (batch, k)` for a conditional flow).

    Returns True when an initialiser ran. Layers see the batch as it reaches them (standardised first).
    """
    transform = getattr(flow, "transform", None)
    if transform is None:
        return False
    try:
        from flows.bijectors.normalization import initialize_actnorms
    except ImportError:
        return False
    embedding = getattr(flow, "embedding", None)
    with torch.no_grad():
        if context is not None and embedding is not None:
            context = embedding(context)
        initialize_actnorms(transform, x, context)
    return True
