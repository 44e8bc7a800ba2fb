"""Load a user's table (CSV, TSV, NPY, NPZ, Parquet) or in-memory data as a validated float64 matrix."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["SUPPORTED_FORMATS", "as_array", "load_table", "validate_table"]

SUPPORTED_FORMATS: dict[str, str] = {
    ".csv": "comma-separated text",
    ".tsv": "tab-separated text",
    ".npy": "numpy array",
    ".npz": "numpy archive (pick the array with key=)",
    ".parquet": "Apache Parquet (needs pandas and pyarrow)",
}


def _pandas() -> Any:
    try:
        import pandas
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "reading CSV/TSV/Parquet tables and DataFrames needs pandas (and pyarrow for Parquet); "
            "install them with `pip install pandas pyarrow` or the project's data extra"
        ) from err
    return pandas


def validate_table(x: Any, name: str = "data") -> np.ndarray:
    """Check that x is a finite numeric 2-D table with >= 2 rows and >= 1 column; return it as float64 (n, D)."""
    arr = np.asarray(x)
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_):
        raise TypeError(f"{name} must be numeric, got an array of dtype {arr.dtype}")
    if np.issubdtype(arr.dtype, np.complexfloating):
        raise TypeError(f"{name} must be real-valued, got dtype {arr.dtype}")
    if arr.ndim != 2:
        raise ValueError(f"{name} must be a 2-D table (rows, columns), got {arr.ndim}-D shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"{name} is empty: shape {arr.shape}")
    if arr.shape[0] < 2:
        raise ValueError(f"{name} needs at least 2 rows, got {arr.shape[0]}")
    arr = np.ascontiguousarray(arr, dtype=np.float64)
    bad = ~np.isfinite(arr)
    if bad.any():
        n_nan = int(np.isnan(arr).sum())
        n_inf = int(bad.sum()) - n_nan
        rows = np.flatnonzero(bad.any(axis=1))
        raise ValueError(
            f"{name} has {n_nan} NaN and {n_inf} infinite values in {rows.size} rows; "
            f"first row indices: {rows[:5].tolist()}"
        )
    return arr


def _default_names(d: int) -> list[str]:
    return [f"x{i}" for i in range(d)]


def as_array(data: Any, name: str = "data") -> tuple[np.ndarray, list[str]]:
    """Convert a numpy array (1-D becomes one column), pandas DataFrame/Series or nested list to (n, D) float64.

    Returns (validated array, column names). DataFrames must have numeric columns only.
    """
    try:
        import pandas as pd
    except ImportError:  # pandas is optional
        pd = None
    if pd is not None and isinstance(data, pd.Series):
        data = data.to_frame()
    if pd is not None and isinstance(data, pd.DataFrame):
        if data.shape[0] == 0:  # a header without rows: pandas types every column as text
            raise ValueError(
                f"{name} is empty: shape {data.shape} (columns {[str(c) for c in data.columns]})"
            )
        non_numeric = [
            str(c)
            for c in data.columns
            if not (pd.api.types.is_numeric_dtype(data[c]) or pd.api.types.is_bool_dtype(data[c]))
        ]
        if non_numeric:
            raise TypeError(f"{name} has non-numeric columns {non_numeric}; drop or encode them first")
        names = [str(c) for c in data.columns]
        return validate_table(data.to_numpy(dtype=np.float64), name), names
    if isinstance(data, (str, bytes)) or data is None:
        raise TypeError(f"{name} must be an array, DataFrame or list of numbers, got {type(data).__name__}")
    try:
        arr = np.asarray(data)
    except ValueError as err:  # ragged nested lists
        raise ValueError(f"{name} must be rectangular (all rows the same length): {err}") from err
    if arr.dtype == object:
        try:
            arr = arr.astype(np.float64)
        except (TypeError, ValueError) as err:
            raise TypeError(
                f"{name} contains non-numeric entries (could not convert to float: {err})"
            ) from err
    if arr.ndim == 1:
        arr = arr[:, None]
    out = validate_table(arr, name)
    return out, _default_names(out.shape[1])


def _select(
    arr: np.ndarray, names: list[str], columns: Sequence[str | int] | None, path: Path
) -> tuple[np.ndarray, list[str]]:
    """Pick columns by name or position; returns (array (n, k), names)."""
    if columns is None:
        return arr, names
    idx: list[int] = []
    for c in columns:
        if isinstance(c, (int, np.integer)) and not isinstance(c, bool):
            if not -len(names) <= c < len(names):
                raise ValueError(f"column index {c} out of range for {len(names)} columns in {path}")
            idx.append(int(c) % len(names))
        elif isinstance(c, str):
            if c not in names:
                raise ValueError(f"column {c!r} not found in {path}; available columns: {names}")
            idx.append(names.index(c))
        else:
            raise TypeError(f"columns must be names (str) or positions (int), got {c!r}")
    return arr[:, idx], [names[i] for i in idx]


def _sniff_header(path: Path, sep: str) -> bool:
    """True when the first non-empty line has a field that does not parse as a number."""
    with path.open(newline="") as fh:
        for row in csv.reader(fh, delimiter=sep):
            if not any(field.strip() for field in row):
                continue
            for field in row:
                try:
                    float(field)
                except ValueError:
                    if field.strip() != "":
                        return True
            return False
    return False


def _read_text(path: Path, sep: str, header: bool | None) -> Any:
    pd = _pandas()
    if header is None:
        header = _sniff_header(path, sep)
    df = pd.read_csv(path, sep=sep, header=0 if header else None)
    if not header:
        df.columns = _default_names(df.shape[1])
    return df


def load_table(
    path: str | Path,
    columns: Sequence[str | int] | None = None,
    header: bool | None = None,
    key: str | None = None,
) -> tuple[np.ndarray, list[str]]:
    """Load a numeric table from CSV/TSV/NPY/NPZ/Parquet; returns (float64 array (n, D), column names).

    ``header`` (CSV/TSV only) is auto-detected when None; ``key`` names the array inside an NPZ archive
    (optional when it holds exactly one); ``columns`` selects columns by name or position.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in SUPPORTED_FORMATS:
        raise ValueError(
            f"unsupported table format {path.suffix or '(no extension)'!r} for {path}; "
            f"supported: {', '.join(SUPPORTED_FORMATS)}"
        )
    if not path.is_file():
        raise FileNotFoundError(f"table file not found: {path.resolve()}")
    if suffix in (".csv", ".tsv"):
        df = _read_text(path, "," if suffix == ".csv" else "\t", header)
        arr, names = as_array(df, name=str(path))
    elif suffix == ".parquet":
        arr, names = as_array(_pandas().read_parquet(path), name=str(path))
    elif suffix == ".npy":
        arr, names = as_array(np.load(path, allow_pickle=False), name=str(path))
    else:
        with np.load(path, allow_pickle=False) as archive:
            keys = list(archive.files)
            if key is None:
                if len(keys) != 1:
                    raise ValueError(f"{path} holds arrays {keys}; pass key= to choose one")
                key = keys[0]
            if key not in keys:
                raise ValueError(f"array {key!r} not in {path}; available: {keys}")
            raw = archive[key]
        arr, names = as_array(raw, name=f"{path}[{key}]")
    arr, names = _select(arr, names, columns, path)
    return arr, names
