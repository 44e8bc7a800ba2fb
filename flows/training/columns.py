"""Per-column handling of a table: bounds, discrete and categorical columns (`data.bounds`,
`data.discrete_columns`, `data.categorical_columns`; `DensityEstimator(bounds=..., ...)`).

A `ColumnPlan` says, per modelled column `j`: its declared bounds `low[j], high[j]`, whether it holds
integers (`discrete[j]`: integer columns and categorical codes), whether an integer column is dequantised with
learned noise (`variational[j]`, else U[0, 1) noise), and for categorical columns the sorted category values
behind the codes `0 .. K-1`. A continuous column lives on the open interval `(low, high)`; a dequantised
column's values `k` satisfy `low <= k <= high` and the model sees `k + u` on
`(low - margin, high + 1 + margin)` (so float rounding of `k + u` never reaches a bound). The model's support
is folded into the flow as a `flows.bijectors.ColumnSupport`. Categorical columns (`argmax`, every plan made
now) are argmax-dequantised: a column of `K` categories is `K` unbounded model coordinates, and the flow
is wrapped in a `flows.column_dequantization.ColumnDequantizedFlow` that draws them (and the variational
noise) from a learned `q`. Plans saved before argmax (`argmax` False) dequantise the codes uniformly inside
`(0, K)`. With dequantised columns, log-likelihoods are log-probability masses of the discrete parts (a lower
bound, through the dequantisation) plus log densities of the continuous ones.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Optional, Union

import numpy as np

from flows.training.config import ConfigError

__all__ = ["ColumnPlan", "normalized_bounds", "resolve_columns"]

Key = Union[str, int]

#: how far the model's support of a dequantised column reaches beyond its cells (in the column's units)
DISCRETE_MARGIN = 1e-3


@dataclass
class ColumnPlan:
    """Per-column support and dequantisation of a `(n, D)` table (see the module docstring)."""

    low: list[float]
    high: list[float]
    discrete: list[bool]
    #: column index -> the sorted values behind its codes 0 .. K-1
    categories: dict[int, list[float]] = field(default_factory=dict)
    #: column index -> softplus scale of a half-bounded column (set from the training data by `fit_scales`)
    scale: list[float] = field(default_factory=list)
    #: per column: an integer column dequantised with learned (variational) noise; [] = none
    variational: list[bool] = field(default_factory=list)
    #: categorical columns are argmax-dequantised (False: codes with U[0, 1) noise, plans saved before it)
    argmax: bool = False
    #: column index -> the text labels of a string categorical column (read from CSV / Parquet): its table
    #: values are the codes 0 .. K-1 of these labels (its `categories` are the codes)
    labels: dict[int, list[str]] = field(default_factory=dict)
    #: per column: declared to hold integers (`discrete_columns`), so that a fractional value has probability 0;
    #: [] = none (the all-column `dequantize` shortcut, and plans saved before this field)
    integer: list[bool] = field(default_factory=list)

    @property
    def features(self) -> int:
        return len(self.low)

    @property
    def bounded(self) -> bool:
        return any(math.isfinite(v) for v in self.low + self.high)

    @property
    def dequantized(self) -> bool:
        return any(self.discrete)

    @property
    def learned(self) -> list[bool]:
        """`(D,)`: columns dequantised by the learned `q` of a `ColumnDequantizedFlow` (argmax categorical
        columns and variational integer columns)."""
        variational = self.variational or [False] * self.features
        return [bool(v) or (self.argmax and j in self.categories) for j, v in enumerate(variational)]

    @property
    def mask(self) -> np.ndarray:
        """`(D,)` float64: 1 for columns dequantised with U[0, 1) noise, 0 for the others."""
        return np.asarray(self.discrete, dtype=np.float64) * ~np.asarray(self.learned, dtype=bool)

    @property
    def kept(self) -> list[int]:
        """The columns that are model columns too (all but the argmax categorical ones), in order."""
        return [j for j in range(self.features) if not (self.argmax and j in self.categories)]

    @property
    def model_features(self) -> int:
        """The width `D'` of the rows the flow models: kept columns plus `K` per argmax column."""
        extra = sum(len(v) for v in self.categories.values()) if self.argmax else 0
        return len(self.kept) + extra

    def wrap(self, flow: Any, mean: Optional[np.ndarray] = None, std: Optional[np.ndarray] = None) -> Any:
        """`flow` (over model rows) wrapped in the `ColumnDequantizedFlow` of the learned columns, or as it is
        when there are none; `mean`, `std` `(len(kept),)` standardise the conditioning of `q`."""
        if not any(self.learned):
            return flow
        import torch

        from flows.column_dequantization import ColumnDequantizedFlow

        dtype = torch.get_default_dtype()
        categories = {j: len(v) for j, v in self.categories.items()} if self.argmax else {}
        variational = [j for j, v in enumerate(self.variational) if v]
        tensors = [None if a is None else torch.as_tensor(a, dtype=dtype) for a in (mean, std)]
        return ColumnDequantizedFlow(flow, self.features, categories, variational, None, *tensors)

    def model_rows(self, table: np.ndarray) -> np.ndarray:
        """`table (n, D)` as stand-in model rows `(n, D')`: kept columns, zeros for argmax coordinates."""
        extra = self.model_features - len(self.kept)
        return np.concatenate([table[:, self.kept], np.zeros((table.shape[0], extra))], axis=1)

    def record(self) -> dict[str, Any]:
        """Plain data for a checkpoint (infinities as None)."""
        return {
            "low": [v if math.isfinite(v) else None for v in self.low],
            "high": [v if math.isfinite(v) else None for v in self.high],
            "discrete": list(self.discrete),
            "categories": {str(j): list(values) for j, values in self.categories.items()},
            "scale": list(self.scale),
            "variational": list(self.variational),
            "argmax": self.argmax,
            "labels": {str(j): list(values) for j, values in self.labels.items()},
            "integer": list(self.integer),
        }

    @classmethod
    def from_record(cls, record: Optional[Mapping[str, Any]], features: int) -> ColumnPlan:
        """The plan of `record` (a plan without bounds or dequantisation for None: older checkpoints)."""
        if not record:
            return cls([-math.inf] * features, [math.inf] * features, [False] * features)
        return cls(
            [-math.inf if v is None else float(v) for v in record["low"]],
            [math.inf if v is None else float(v) for v in record["high"]],
            [bool(v) for v in record["discrete"]],
            {int(j): list(values) for j, values in (record.get("categories") or {}).items()},
            [float(v) for v in record.get("scale") or []],
            [bool(v) for v in record.get("variational") or []],
            bool(record.get("argmax", False)),
            {int(j): [str(v) for v in values] for j, values in (record.get("labels") or {}).items()},
            [bool(v) for v in record.get("integer") or []],
        )

    def support(self) -> Any:
        """The `ColumnSupport` bijector of the bounds over the model rows `(D',)`: argmax coordinates are
        unbounded (None without bounds)."""
        low, high = self.model_bounds()
        kept = self.kept
        extra = self.model_features - len(kept)
        low = np.concatenate([low[kept], np.full(extra, -math.inf)])
        high = np.concatenate([high[kept], np.full(extra, math.inf)])
        if not (np.isfinite(low).any() or np.isfinite(high).any()):
            return None
        import torch

        from flows.bijectors.support import ColumnSupport

        dtype = torch.get_default_dtype()
        scale = np.concatenate([np.asarray(self.scale or [1.0] * self.features)[kept], np.ones(extra)])
        return ColumnSupport(
            torch.as_tensor(low, dtype=dtype),
            torch.as_tensor(high, dtype=dtype),
            torch.as_tensor(scale, dtype=dtype),
        )

    def model_bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """`(D,)` bounds of the values the flow sees: dequantised columns widened to their cells."""
        low, high = np.asarray(self.low, dtype=np.float64), np.asarray(self.high, dtype=np.float64)
        discrete = np.asarray(self.discrete, dtype=bool)
        return (
            np.where(discrete, low - DISCRETE_MARGIN, low),
            np.where(discrete, high + 1.0 + DISCRETE_MARGIN, high),
        )

    def fit_scales(self, train: np.ndarray) -> None:
        """Softplus scales of the half-bounded columns: the mean distance of `train (n, D)` from the bound."""
        scales = []
        lows, highs = self.model_bounds()
        for j in range(self.features):
            low, high = lows[j], highs[j]
            if math.isfinite(low) != math.isfinite(high):
                distance = train[:, j] - low if math.isfinite(low) else high - train[:, j]
                value = float(np.mean(distance)) if distance.size else 1.0
                scales.append(value if math.isfinite(value) and value > 0 else 1.0)
            else:
                scales.append(1.0)
        self.scale = scales

    def encode(self, table: np.ndarray, columns: Sequence[str], name: str, strict: bool = True) -> np.ndarray:
        """`table (n, D)` with each categorical column's values replaced by their codes; a value that is not
        one of its column's categories is a ValueError naming it (`strict`), else the code -1 (outside)."""
        if not self.categories:
            return table
        table = np.array(table, dtype=np.float64, copy=True)
        for j, values in self.categories.items():
            known = np.asarray(values, dtype=np.float64)
            codes = np.searchsorted(known, table[:, j])
            found = (codes < known.size) & (known[np.minimum(codes, known.size - 1)] == table[:, j])
            if not strict:
                codes = np.where(found, codes, -1)
            elif not found.all():
                bad = np.unique(table[~found, j])[:5].tolist()
                raise ValueError(
                    f"{name}: categorical column {columns[j]!r} holds values {bad} that are not among its "
                    f"categories {values[:20]}"
                )
            table[:, j] = codes
        return table

    def decode(self, samples: np.ndarray) -> np.ndarray:
        """Model samples `(..., D)` as data: discrete columns floored, categorical codes mapped to values."""
        samples = np.array(samples, dtype=np.float64, copy=True)
        for j in np.flatnonzero(self.discrete):  # the cell [k, k + 1) is k; the margins belong to the bounds
            samples[..., j] = np.clip(np.floor(samples[..., j]), self.low[j], self.high[j])
        for j, values in self.categories.items():
            codes = np.clip(samples[..., j], 0, len(values) - 1).astype(np.int64)
            samples[..., j] = np.asarray(values, dtype=np.float64)[codes]
        return samples

    def outside(self, table: np.ndarray) -> np.ndarray:
        """`(n, D)` True where a value lies outside its column's support: continuous values must be strictly
        inside `(low, high)`, dequantised values in `[low, high]`, and those of declared integer columns must
        be integers (2.5 in such a column has probability 0, like a value beyond its bounds)."""
        if not any(self.integer):
            return self._beyond_bounds(table)
        with np.errstate(invalid="ignore"):
            fractional = np.asarray(self.integer, dtype=bool) & (table != np.floor(table))
        return self._beyond_bounds(table) | fractional

    def _beyond_bounds(self, table: np.ndarray) -> np.ndarray:
        """`(n, D)` True where a value is NaN or beyond its column's bounds (open for continuous columns,
        closed for dequantised ones)."""
        low, high = np.asarray(self.low), np.asarray(self.high)
        discrete = np.asarray(self.discrete, dtype=bool)
        with np.errstate(invalid="ignore"):
            continuous_bad = (table <= low) | (table >= high)
            discrete_bad = (table < low) | (table > high)
        return np.where(discrete, discrete_bad, continuous_bad) | np.isnan(table)

    def check(self, table: np.ndarray, columns: Sequence[str], name: str) -> None:
        """A ValueError naming each column of `table (n, D)` with values outside its declared support."""
        if not self.bounded:
            return
        bad = self._beyond_bounds(table)  # (non-integers in integer columns have their own check and message)
        problems = []
        for j in np.flatnonzero(bad.any(axis=0)):
            values = table[bad[:, j], j]
            worst = values[np.argmax(np.abs(values))]
            kind = "[{}, {}] (discrete: closed)" if self.discrete[j] else "({}, {}) (open)"
            problems.append(
                f"column {columns[j]!r} has {values.size} values outside its bounds "
                f"{kind.format(_bound(self.low[j]), _bound(self.high[j]))}, e.g. {worst:g}"
            )
        if problems:
            raise ValueError(f"{name}: " + "; ".join(problems) + ". Fix the data, or widen the bounds")


def _bound(value: float) -> str:
    return "None" if not math.isfinite(value) else f"{value:g}"


def _index(key: Any, columns: Sequence[str], option: str) -> int:
    """The position of the column named (or numbered) `key`; a ConfigError naming the option otherwise."""
    if isinstance(key, (int, np.integer)) and not isinstance(key, bool):
        if 0 <= int(key) < len(columns):
            return int(key)
        raise ConfigError(
            f"{option}: column position {key} is out of range for a table of {len(columns)} modelled columns "
            f"{list(columns)}"
        )
    names = [str(c) for c in columns]
    if str(key) in names:
        return names.index(str(key))
    raise ConfigError(f"{option}: unknown column {key!r}; the modelled columns are {names}")


def _pair(value: Any, key: Any) -> tuple[float, float]:
    """`(low, high)` from a `[low, high]` pair with None for no bound."""
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise ConfigError(
            f"bounds of column {key!r}: expected a pair (low, high) with None for no bound, got {value!r}"
        )
    low, high = (-math.inf if value[0] is None else value[0]), (math.inf if value[1] is None else value[1])
    try:
        low, high = float(low), float(high)
    except (TypeError, ValueError):
        raise ConfigError(f"bounds of column {key!r}: expected numbers or None, got {value!r}") from None
    if math.isnan(low) or math.isnan(high) or not low < high or low == math.inf or high == -math.inf:
        raise ConfigError(f"bounds of column {key!r}: expected low < high, got {value!r}")
    return low, high


def normalized_bounds(bounds: Optional[Mapping[Any, Any]]) -> dict[Any, list[Optional[float]]]:
    """`bounds` checked (a ConfigError naming a bad pair) as plain data: `{key: [low or None, high or None]}`."""
    if bounds is None:
        return {}
    if not isinstance(bounds, Mapping):
        raise ConfigError(f"bounds: expected a mapping column -> (low, high), got {type(bounds).__name__}")
    plain: dict[Any, list[Optional[float]]] = {}
    for key, value in bounds.items():
        low, high = _pair(value, key)
        name = int(key) if isinstance(key, (int, np.integer)) and not isinstance(key, bool) else str(key)
        plain[name] = [low if math.isfinite(low) else None, high if math.isfinite(high) else None]
    return plain


def resolve_columns(
    columns: Sequence[str],
    tables: Sequence[np.ndarray],
    bounds: Optional[Mapping[Any, Any]] = None,
    discrete_columns: Sequence[Key] = (),
    categorical_columns: Sequence[Key] = (),
    dequantize_all: bool = False,
    dequantization: str = "uniform",
    labels: Optional[Mapping[str, list[str]]] = None,
) -> ColumnPlan:
    """The plan for a table with `columns`; `tables` (train, val, test) give the categories (their sorted
    distinct values). `dequantize_all` (the `dequantize` shortcut) makes every column discrete;
    `dequantization` ("uniform" or "variational") is the noise of the integer (non-categorical) columns;
    `labels` (`{name: text labels}`) names the string categorical columns whose tables hold codes."""
    if dequantization not in ("uniform", "variational"):
        raise ConfigError(f"dequantization: expected 'uniform' or 'variational', got {dequantization!r}")
    features = len(columns)
    low, high = [-math.inf] * features, [math.inf] * features
    discrete = [bool(dequantize_all)] * features
    for key, value in (bounds or {}).items():
        j = _index(key, columns, "bounds")
        low[j], high[j] = _pair(value, key)
    # fit checks declared discrete columns for integers only without the all-column shortcut
    integer = [False] * features
    for key in discrete_columns:
        j = _index(key, columns, "discrete_columns")
        discrete[j], integer[j] = True, not dequantize_all
    categories: dict[int, list[float]] = {}
    for key in categorical_columns:
        j = _index(key, columns, "categorical_columns")
        if bounds and any(_index(k, columns, "bounds") == j for k in bounds):
            raise ConfigError(
                f"column {columns[j]!r} is categorical: its codes get their own bounds; drop its bounds"
            )
        values = np.unique(np.concatenate([np.asarray(t[:, j], dtype=np.float64) for t in tables]))
        values = values[~np.isnan(values)]
        if values.size < 2:
            raise ConfigError(
                f"categorical column {columns[j]!r} has {values.size} distinct values; needs 2 or more"
            )
        categories[j] = values.tolist()
        low[j], high[j], discrete[j] = 0.0, float(values.size - 1), True
    variational = [
        d and j not in categories and dequantization == "variational" for j, d in enumerate(discrete)
    ]
    text = {j: list((labels or {})[str(columns[j])]) for j in categories if str(columns[j]) in (labels or {})}
    return ColumnPlan(
        low, high, discrete, categories, variational=variational, argmax=True, labels=text, integer=integer
    )
