"""Conditional density estimation: context columns, their standardisation, and the context embedding.

`data.context_columns` names (or gives positions of) the table columns a model conditions on; the other
columns are modelled, `p(x | c)`. The context is standardised with the training split's mean/std, and that
standardisation (then the optional `model.embedding` network) is folded into the flow as its `embedding`,
so `flow.log_prob(x, c)` and `flow.sample(n, c)` take the context in raw units.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Optional, Union

import numpy as np
import torch
from torch import Tensor, nn

from flows.training.config import ConfigError, check_value, unknown_key_error
from flows.training.data import DataSplits, splits_from_arrays
from flows.training.evaluation import draw_samples, write_samples
from flows.training.frames import in_fitted_order

__all__ = [
    "ContextStandardize",
    "ContextStats",
    "build_embedding",
    "check_embedding",
    "conditional_splits_from_arrays",
    "context_indices",
    "context_stats",
    "stats_from_record",
    "with_context",
]


# ----------------------------------------------------------------------------------------------- splits


def context_indices(columns: Sequence[str], selection: Sequence[Union[str, int]], source: str) -> list[int]:
    """Positions in `columns` of the context `selection` (names or positions); a ConfigError for unknown
    names, positions out of range, repeats, or a selection that leaves no column to model."""
    indices: list[int] = []
    for item in selection:
        if isinstance(item, str):
            if item not in columns:
                raise ConfigError(
                    f"config key 'data.context_columns': column {item!r} is not in {source}; "
                    f"expected one of {list(columns)}"
                )
            indices.append(list(columns).index(item))
        elif isinstance(item, int) and not isinstance(item, bool) and -len(columns) <= item < len(columns):
            indices.append(item % len(columns))
        else:
            raise ConfigError(
                f"config key 'data.context_columns': expected column names or positions in "
                f"[0, {len(columns)}) of {source}, got {item!r}"
            )
    if len(set(indices)) != len(indices):
        raise ConfigError(f"config key 'data.context_columns': a column is named twice in {list(selection)}")
    if len(indices) >= len(columns):
        raise ConfigError(
            f"config key 'data.context_columns': {list(selection)} leaves none of the {len(columns)} columns "
            f"{list(columns)} to model; expected at most {len(columns) - 1} context columns"
        )
    return indices


def with_context(splits: DataSplits, selection: Sequence[Union[str, int]]) -> DataSplits:
    """`splits` with the `selection` columns moved from the tables into the context tables.

    A conditional synthetic target (its `info["context_columns"]`) conditions on its own context columns
    (the default for an empty selection); its entropy is that of the rest given them, so any other
    selection is an error.
    """
    required = splits.info.get("context_columns")
    if required and not selection:
        selection = list(required)
    if not selection:
        return splits
    indices = context_indices(splits.columns, selection, splits.name)
    names = [splits.columns[i] for i in indices]
    if required and names != list(required):
        raise ConfigError(
            f"config key 'data.context_columns': {splits.name} is a conditional target of {splits.columns} "
            f"given {list(required)}; expected {list(required)} (or []), got {list(selection)}"
        )
    keep = [i for i in range(len(splits.columns)) if i not in indices]
    return dataclasses.replace(
        splits,
        train=splits.train[:, keep],
        val=splits.val[:, keep],
        test=splits.test[:, keep],
        columns=[splits.columns[i] for i in keep],
        train_context=splits.train[:, indices],
        val_context=splits.val[:, indices],
        test_context=splits.test[:, indices],
        context_columns=names,
    )


def conditional_splits_from_arrays(
    x: Any, x_val: Any, context: Any, context_val: Any, val_fraction: float, seed: int
) -> DataSplits:
    """`splits_from_arrays` for `x (n, D)` given `context (n, k)` (and `x_val` given `context_val`):
    rows are held out together. Unnamed context columns are called `c0, c1, ...`."""
    from flows.datasets import as_array

    if context is None or (x_val is None) != (context_val is None):
        raise TypeError(
            "a conditional fit needs context= beside X, and context_val= beside X_val (both or neither); "
            f"got context={'given' if context is not None else None}, X_val={'given' if x_val is not None else None}, "
            f"context_val={'given' if context_val is not None else None}"
        )
    tables = {}
    x_val, context_val = (
        in_fitted_order(x_val, x, "X_val"),
        in_fitted_order(context_val, context, "context_val"),
    )
    for name, rows, ctx in (("X", x, context), ("X_val", x_val, context_val)):
        if rows is None:
            continue
        table, columns = as_array(rows, name)
        ctx_table, ctx_columns = as_array(ctx, "context" if name == "X" else "context_val", categorical=False)
        if ctx_table.shape[0] != table.shape[0]:
            raise ValueError(
                f"{name} has {table.shape[0]} rows, but its context has {ctx_table.shape[0]}; expected one "
                "context row per row"
            )
        if ctx_columns == [f"x{i}" for i in range(len(ctx_columns))]:
            ctx_columns = [f"c{i}" for i in range(len(ctx_columns))]
        tables[name] = (np.concatenate([table, ctx_table], axis=1), columns + ctx_columns, len(ctx_columns))
    joint, columns, k = tables["X"]
    joint_val = tables["X_val"][0] if "X_val" in tables else None
    if "X_val" in tables and tables["X_val"][2] != k:
        raise ValueError(f"context_val has {tables['X_val'][2]} columns, context has {k}")
    if len(set(columns)) != len(columns):
        raise ValueError(f"X and context share column names: {columns}; rename the context's columns")
    splits = splits_from_arrays(joint, joint_val, None, val_fraction, seed)
    splits.columns = columns
    return with_context(splits, list(range(len(columns) - k, len(columns))))


# ------------------------------------------------------------------------------------- standardisation


@dataclass
class ContextStats:
    """The context columns and their training mean / std (each `(k,)`)."""

    columns: list[str]
    mean: np.ndarray
    std: np.ndarray

    @property
    def features(self) -> int:
        return len(self.columns)

    def record(self) -> dict[str, Any]:
        """Plain values for the checkpoint's model record."""
        return {
            "columns": list(self.columns),
            "mean": [float(v) for v in self.mean],
            "std": [float(v) for v in self.std],
        }


def context_stats(splits: DataSplits, standardize: bool) -> Optional[ContextStats]:
    """The training context's mean / std (zeros / ones without `standardize`); None when unconditional."""
    if not splits.context_columns or splits.train_context is None:
        return None
    k = splits.context_features
    if standardize:
        from flows.training.standardization import standardization_of

        mean, std = standardization_of(splits.train_context, splits.context_columns)
    else:
        mean, std = np.zeros(k), np.ones(k)
    return ContextStats(list(splits.context_columns), np.asarray(mean), np.asarray(std))


def stats_from_record(record: Optional[Mapping[str, Any]]) -> Optional[ContextStats]:
    """The `ContextStats` stored by `ContextStats.record` (None for an unconditional model)."""
    if not record:
        return None
    return ContextStats(
        [str(c) for c in record["columns"]],
        np.asarray(record["mean"], dtype=np.float64),
        np.asarray(record["std"], dtype=np.float64),
    )


class ContextStandardize(nn.Module):
    """`c -> (c - mean) / std` with fixed buffers `(k,)`: a context `(..., k)` in raw units to standard units."""

    def __init__(self, mean: np.ndarray, std: np.ndarray) -> None:
        super().__init__()
        dtype = torch.get_default_dtype()
        self.register_buffer("mean", torch.as_tensor(np.asarray(mean), dtype=dtype))
        self.register_buffer("std", torch.as_tensor(np.asarray(std), dtype=dtype))

    def forward(self, context: Tensor) -> Tensor:
        if context.shape[-1] != self.mean.shape[0]:
            raise ValueError(
                f"expected a context of {self.mean.shape[0]} columns (shape (..., {self.mean.shape[0]})), "
                f"got shape {tuple(context.shape)}"
            )
        return (context - self.mean) / self.std


# ------------------------------------------------------------------------------------------- embedding

#: `model.embedding` keys and their types; `name` picks the network (only "mlp" so far)
EMBEDDING_KEYS: dict[str, Any] = {
    "name": str,
    "hidden_features": list[int],
    "out_features": int,
    "dropout": float,
}
EMBEDDING_NAMES = ("mlp",)


def check_embedding(value: Any) -> dict[str, Any]:
    """Validate a `model.embedding` section (`{name: mlp, hidden_features: [32, 32], out_features: 8}`)."""
    if not isinstance(value, Mapping):
        raise ConfigError(
            f"config key 'model.embedding': expected a mapping like {{name: mlp, hidden_features: [32, 32], "
            f"out_features: 8}}, got {type(value).__name__} {value!r}"
        )
    out: dict[str, Any] = {}
    for key, item in value.items():
        if key not in EMBEDDING_KEYS:
            raise unknown_key_error(f"model.embedding.{key}", list(EMBEDDING_KEYS), "model.embedding")
        out[key] = check_value(f"model.embedding.{key}", item, EMBEDDING_KEYS[key])
    if out.get("name") not in EMBEDDING_NAMES:
        raise ConfigError(
            f"config key 'model.embedding.name': expected one of {list(EMBEDDING_NAMES)}, got {out.get('name')!r}"
        )
    if "out_features" not in out:
        raise ConfigError(
            "config key 'model.embedding.out_features' is required (the embedded context width)"
        )
    if out["out_features"] < 1:
        raise ConfigError(
            f"config key 'model.embedding.out_features': expected >= 1, got {out['out_features']}"
        )
    hidden = out.setdefault("hidden_features", [64, 64])
    if not hidden or any(width < 1 for width in hidden):
        raise ConfigError(
            f"config key 'model.embedding.hidden_features': expected a non-empty list of positive widths, got {hidden}"
        )
    dropout = out.setdefault("dropout", 0.0)
    if not 0.0 <= dropout < 1.0:
        raise ConfigError(f"config key 'model.embedding.dropout': expected a number in [0, 1), got {dropout}")
    return out


def build_embedding(spec: Optional[Mapping[str, Any]], stats: ContextStats) -> tuple[nn.Module, int]:
    """The flow's context embedding (standardisation, then the `spec` network if any) and its output width."""
    standardize = ContextStandardize(stats.mean, stats.std)
    if spec is None:
        return nn.Sequential(standardize), stats.features
    from flows.nn import MLP

    options = check_embedding(spec)
    network = MLP(
        stats.features, options["out_features"], options["hidden_features"], dropout=options["dropout"]
    )
    return nn.Sequential(standardize, network), options["out_features"]


# --------------------------------------------------------------------------------------------- outputs


def sample_at_contexts(flow: nn.Module, splits: DataSplits, n: int, seed: int, path: Any) -> np.ndarray:
    """One sample at each of the first `n` test contexts (cycled when there are fewer), written to `path`
    as rows `[x, context]` with the table's column names; returns those rows `(n, D + k)`."""
    contexts = np.resize(splits.test_context, (n, splits.context_features))
    samples = draw_samples(flow, 1, seed=seed, context=contexts)[0]
    plan = splits.info.get("columns_plan")  # discrete columns as integers, categories as their values
    samples = plan.decode(samples) if plan is not None else samples
    rows = np.concatenate([samples, contexts], axis=1)
    write_samples(path, rows, list(splits.columns) + list(splits.context_columns))
    return rows
