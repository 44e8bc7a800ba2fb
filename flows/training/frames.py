"""DataFrames in and out of `DensityEstimator`: category labels to codes and back, samples as a DataFrame.

A categorical column of a DataFrame may hold any labels (strings, numbers, pandas categories); the
estimator codes them `0 .. K-1` in sorted order before the pipeline sees the table
(`flows.training.columns` then dequantises the codes) and maps sampled codes back to the labels.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Optional

import numpy as np

from flows.datasets.files import check_unique_names

__all__ = ["code_labels", "in_fitted_order", "is_frame", "label_codes", "select_columns", "to_frame"]


def is_frame(X: Any) -> bool:
    """True for a pandas DataFrame (pandas is optional)."""
    try:
        import pandas as pd
    except ImportError:  # pragma: no cover - without pandas
        return False
    return isinstance(X, pd.DataFrame)


def select_columns(frame: Any, expected: Sequence[str], name: str) -> Any:
    """The columns of the DataFrame `frame` named `expected` (names compared as text), in that order; extra
    columns are dropped. A ValueError when `frame` lacks one of them or has two columns of one name."""
    check_unique_names(frame, name)
    names = [str(c) for c in frame.columns]
    missing = [c for c in expected if c not in names]
    if missing:
        raise ValueError(
            f"{name} lacks the columns {missing}: it has {names}, the estimator was fitted on {list(expected)}; "
            "name its columns as in fit, or pass a numpy array to match them by position"
        )
    return frame.iloc[:, [names.index(c) for c in expected]]


def in_fitted_order(data: Any, reference: Any, name: str) -> Any:
    """`data` (validation rows or contexts) with the columns of the DataFrame `reference` it goes with, matched
    by name, when both are DataFrames (`select_columns`); anything else as it is (matched by position)."""
    if not (is_frame(data) and is_frame(reference)):
        return data
    return select_columns(data, [str(c) for c in reference.columns], name)


def _plain(value: Any) -> Any:
    """A numpy / pandas scalar as the Python value (what a checkpoint stores safely)."""
    return value.item() if hasattr(value, "item") else value


def _column(frame: Any, key: Any) -> Any:
    """The column of `frame` named `key`, or at position `key` (an int that is not a column name)."""
    if key in frame.columns:
        return key
    if isinstance(key, (int, np.integer)) and not isinstance(key, bool) and 0 <= int(key) < frame.shape[1]:
        return frame.columns[int(key)]
    raise ValueError(f"categorical_columns: unknown column {key!r}; the DataFrame has {list(frame.columns)}")


def label_codes(X: Any, X_val: Any, keys: Sequence[Any]) -> tuple[Any, Any, dict[str, list[Any]]]:
    """Code the categorical columns `keys` of the DataFrames `X` (and `X_val`, may be None) as
    `0 .. K-1` by their sorted labels (those of both tables). Returns the coded copies and
    `{column name: labels}`. Tables that are not DataFrames come back unchanged, with no labels."""
    if not keys or not is_frame(X):
        return X, X_val, {}
    check_unique_names(X, "X")
    if is_frame(X_val):
        check_unique_names(X_val, "X_val")
    X = X.copy()
    X_val = X_val.copy() if is_frame(X_val) else X_val
    labels: dict[str, list[Any]] = {}
    for key in keys:
        name = _column(X, key)
        values = [X[name]] + ([X_val[name]] if is_frame(X_val) else [])
        if any(v.isna().any() for v in values):
            raise ValueError(f"categorical column {name!r} has missing values; drop or fill them first")
        found = {_plain(v) for series in values for v in series.unique()}
        try:
            ordered = sorted(found)
        except TypeError:  # mixed label types
            ordered = sorted(found, key=str)
        labels[str(name)] = ordered
        X[name] = code_labels(X[name], ordered)
        if is_frame(X_val):
            X_val[name] = code_labels(X_val[name], ordered)
    return X, X_val, labels


def code_labels(series: Any, labels: list[Any]) -> np.ndarray:
    """`series` (labels) as float codes into `labels`; -1 for a label not among them."""
    index = {label: code for code, label in enumerate(labels)}
    return np.asarray([index.get(_plain(v), -1) for v in series], dtype=np.float64)


def to_frame(
    samples: np.ndarray, columns: Sequence[str], labels: Optional[dict[str, list[Any]]] = None
) -> Any:
    """Samples `(n, D)` (categorical columns as codes) as a DataFrame with `columns`, codes as labels."""
    import pandas as pd

    frame = pd.DataFrame(samples, columns=list(columns))
    for name, values in (labels or {}).items():
        codes = np.clip(frame[name].to_numpy(), 0, len(values) - 1).astype(np.int64)
        frame[name] = pd.Series(np.asarray(values, dtype=object)[codes], index=frame.index)
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            frame[name] = frame[name].astype(
                type(values[0]) if len({type(v) for v in values}) == 1 else float
            )
    return frame
