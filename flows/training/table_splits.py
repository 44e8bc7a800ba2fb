"""A table's splits prepared by its column plan (bounds, discrete and categorical columns, dequantisation):
what training and `flows test` both do to the rows before a flow sees them. Needs no Lightning."""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np

from flows.training.columns import ColumnPlan, resolve_columns
from flows.training.config import Config
from flows.training.data import DataSplits, dequantize_fixed

__all__ = ["prepare_splits"]


def prepare_splits(splits: DataSplits, config: Config, seed: int) -> DataSplits:
    """Resolve the per-column handling (`data.bounds`, `data.discrete_columns`, `data.categorical_columns`,
    and `data.dequantize` for every column, automatic for integer data) into a `ColumnPlan`: categorical
    values become codes, values outside the bounds are a ValueError, and the fixed dequantisation noise of
    the dequantised columns goes onto the validation and test splits. `info["columns_plan"]` holds the plan
    and `info["dequantized"]` whether any column is dequantised."""
    data = config.data
    dequantize = data.dequantize
    if dequantize is None and not (data.discrete_columns or data.categorical_columns):
        dequantize = splits.discrete or bool(np.all(splits.train == np.round(splits.train)))
        if dequantize:
            warnings.warn(
                f"every training value of {splits.name} is an integer: adding U[0, 1) dequantisation noise "
                "(set data.dequantize: false to fit the values as they are, or declare data.discrete_columns / "
                "data.categorical_columns per column; data.dequantization: variational learns the noise)",
                stacklevel=2,
            )
    tables = (splits.train, splits.val, splits.test)
    plan = resolve_columns(
        splits.columns,
        tables,
        data.bounds,
        data.discrete_columns,
        data.categorical_columns,
        bool(dequantize),
        data.dequantization,
        splits.info.get("labels"),
    )
    train, val, test = (
        plan.encode(t, splits.columns, name) for t, name in zip(tables, ("train", "val", "test"))
    )
    distinct = {id(t): t for t in (train, val, test)}.values()  # the test split may be the validation one
    plan.check(np.concatenate(list(distinct)), splits.columns, "the data (train, validation and test rows)")
    if not dequantize:  # declared columns must hold integers (the all-column shortcut keeps its old meaning)
        _check_discrete(train, plan, splits.columns)
    if plan.dequantized:
        val, test = (dequantize_fixed(t, seed + k, plan.mask) for k, t in ((1, val), (2, test)))
    plan.fit_scales(dequantize_fixed(train, seed, plan.mask) if plan.dequantized else train)
    info = dict(splits.info, dequantized=plan.dequantized, columns_plan=plan)
    return dataclasses.replace(splits, train=train, val=val, test=test, info=info)


def _check_discrete(train: np.ndarray, plan: ColumnPlan, columns: list[str]) -> None:
    """A ValueError naming a declared discrete column that holds non-integer values."""
    for j in np.flatnonzero(plan.discrete):
        fractional = train[:, j] != np.round(train[:, j])
        if fractional.any():
            raise ValueError(
                f"discrete column {columns[j]!r} holds {int(fractional.sum())} non-integer values (e.g. "
                f"{train[fractional, j][0]:g}); dequantisation adds U[0, 1) noise to integers: round or "
                "rescale the column, or leave it continuous"
            )
