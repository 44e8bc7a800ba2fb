"""Build a table `Flow` from a `model` config section, with the column bounds (`ColumnSupport`) and the data
standardisation folded in as its first bijectors. `model.name` picks a builder of `flows.training.registry.MODELS` (`maf`, `nsf`, `realnvp`,
`gaussian`); `features` (and `context_features`) come from the data, not from the config.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, Optional

import numpy as np
import torch
from torch import nn

from flows.bijectors.elementwise import Standardize
from flows.bijectors.support import ColumnSupport
from flows.core import Bijector, Chain
from flows.flow import Flow
from flows.training.config import Config, ConfigError
from flows.training.registry import check_model_options, model_builder, with_model_defaults
from flows.training.standardization import standardization_of

__all__ = [
    "build_flow",
    "preprocessing_of",
    "resolve_model",
    "standardization_of",
    "standardizer_of",
    "support_of",
]


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
def build_flow(
    model: Mapping[str, Any],
    features: int,
    mean: Optional[np.ndarray] = None,
    std: Optional[np.ndarray] = None,
    context: Optional[Any] = None,
    support: Optional[ColumnSupport] = None,
) -> Flow:
    """The flow of a `model` section for `features`-dimensional rows.

    With `mean` and `std` (each `(features,)`), a fixed standardising bijector is prepended, so that the
    flow's `log_prob` and samples are in the units of the data: `log p(x) = log p_std((x - mean) / std)
    - sum(log std)`. Pass zeros/ones placeholders when the values will come from a state dict.
    `context` (a `flows.training.context.ContextStats`) makes the flow conditional on `k` raw context
    columns, standardised (then embedded by `model.embedding`) inside the flow. `support` (the column
    bounds) comes first of all, so the standardisation's `mean`/`std` are those of the rows mapped by it:
    `transform = Chain(support, Standardize, model)`.
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
    if support is not None:
        if support.features != features:
            raise ValueError(f"support has {support.features} columns, the model {features}")
        flow.transform = Chain(support, flow.transform)
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


def _leading(flow: nn.Module) -> list[Bijector]:
    """The fixed bijectors that `build_flow` folds in front (`ColumnSupport`, then `Standardize`)."""
    transform = getattr(flow, "transform", None)
    found: list[Bijector] = []
    for kind in (ColumnSupport, Standardize):
        first = transform[0] if isinstance(transform, Chain) else transform
        if isinstance(first, kind):
            found.append(first)
            transform = transform[1] if isinstance(transform, Chain) and len(transform) > 1 else None
    return found


def standardizer_of(flow: nn.Module) -> Optional[Standardize]:
    """The standardising bijector that `build_flow` folds in (None when the flow has none)."""
    return next((b for b in _leading(flow) if isinstance(b, Standardize)), None)


def support_of(flow: nn.Module) -> Optional[ColumnSupport]:
    """The column bounds that `build_flow` folds in first (None when the flow has none)."""
    return next((b for b in _leading(flow) if isinstance(b, ColumnSupport)), None)


def preprocessing_of(flow: nn.Module) -> Optional[Bijector]:
    """Data units to standardised units: the leading `ColumnSupport` and `Standardize` as one bijector."""
    leading = _leading(flow)
    return None if not leading else leading[0] if len(leading) == 1 else Chain(*leading)
