"""Load a user's table (CSV, TSV, NPY, NPZ, Parquet) or in-memory data as a validated float64 matrix."""

from __future__ import annotations

import csv
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "SUPPORTED_FORMATS",
    "as_array",
    "code_text_columns",
    "load_table",
    "load_tables",
    "table_columns",
    "validate_table",
]

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


def validate_table(x: Any, name: str = "data", min_rows: int = 2) -> np.ndarray:
    """Check that x is a finite numeric 2-D table with >= `min_rows` rows (2 for training tables, 1 for rows to
    score or condition on) and >= 1 column; return it as float64 (n, D)."""
    arr = np.asarray(x)
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_):
        raise TypeError(f"{name} must be numeric, got an array of dtype {arr.dtype}")
    if np.issubdtype(arr.dtype, np.complexfloating):
        raise TypeError(f"{name} must be real-valued, got dtype {arr.dtype}")
    if arr.ndim != 2:
        raise ValueError(f"{name} must be a 2-D table (rows, columns), got {arr.ndim}-D shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"{name} is empty: shape {arr.shape}")
    if arr.shape[0] < min_rows:
        raise ValueError(f"{name} needs at least {min_rows} rows, got {arr.shape[0]}")
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


def _repeated(names: Sequence[str]) -> list[str]:
    """The names that occur more than once, sorted."""
    return sorted({c for c in names if names.count(c) > 1})


def check_unique_names(frame: Any, name: str) -> None:
    """A ValueError naming the repeated column names of the DataFrame `frame`, compared as text (columns are
    matched by name, and pandas gives a frame, not a column, for a repeated name)."""
    duplicates = _repeated([str(c) for c in frame.columns])
    if duplicates:
        raise ValueError(
            f"{name} has several columns named {duplicates} (names compared as text: {list(frame.columns)}); "
            "rename them"
        )


def as_array(
    data: Any, name: str = "data", min_rows: int = 2, categorical: bool = True
) -> tuple[np.ndarray, list[str]]:
    """Convert a numpy array (1-D becomes one column), pandas DataFrame/Series or nested list to (n, D) float64.

    Returns (validated array, column names). DataFrames must have numeric columns only; `min_rows` as in
    `validate_table`. `categorical`: the error for text columns points at `categorical_columns` (False for a
    context, whose columns that option does not cover: it points at one-hot codes).
    """
    try:
        import pandas as pd
    except ImportError:  # pandas is optional
        pd = None
    if pd is not None and isinstance(data, pd.Series):  # one column; unnamed, it gets the default name
        data = data.to_frame(name=data.name if data.name is not None else _default_names(1)[0])
    if pd is not None and isinstance(data, pd.DataFrame):
        if data.shape[0] == 0:  # a header without rows: pandas types every column as text
            raise ValueError(
                f"{name} is empty: shape {data.shape} (columns {[str(c) for c in data.columns]})"
            )
        check_unique_names(data, name)
        non_numeric = [
            str(c)
            for c in data.columns
            if not (pd.api.types.is_numeric_dtype(data[c]) or pd.api.types.is_bool_dtype(data[c]))
        ]
        if non_numeric:
            advice = (
                "drop or encode them first, or declare them categorical (DensityEstimator(categorical_columns="
                "[...]), data.categorical_columns in a config)"
                if categorical
                else "encode them as numbers first, e.g. one-hot columns from pandas.get_dummies (categorical_"
                "columns declares columns of X, not of the context)"
            )
            raise TypeError(f"{name} has non-numeric columns {non_numeric}; {advice}")
        complex_columns = [
            f"{c} ({data[c].dtype})" for c in data.columns if pd.api.types.is_complex_dtype(data[c])
        ]
        if complex_columns:
            raise TypeError(
                f"{name} must be real-valued, got complex columns {complex_columns}; "
                "split them into real and imaginary columns first"
            )
        names = [str(c) for c in data.columns]
        return validate_table(data.to_numpy(dtype=np.float64), name, min_rows), names
    if isinstance(data, (str, bytes)) or data is None:
        raise TypeError(f"{name} must be an array, DataFrame or list of numbers, got {type(data).__name__}")
    if isinstance(data, np.ma.MaskedArray):  # masked entries are missing values, not the values under them
        masked = np.ma.getmaskarray(data).reshape(data.shape[0], -1) if data.ndim else np.zeros((1, 1), bool)
        rows = np.flatnonzero(masked.any(axis=1))
        if rows.size:
            raise ValueError(
                f"{name} is a masked array with {int(masked.sum())} masked entries in {rows.size} rows (first "
                f"row indices: {rows[:5].tolist()}); drop those rows or fill them in (X.filled(...)) first"
            )
        data = np.ma.getdata(data)
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
    out = validate_table(arr, name, min_rows)
    return out, _default_names(out.shape[1])


def _column_indices(names: list[str], columns: Sequence[str | int], path: Path) -> list[int]:
    """Positions of `columns` (names or positions) among `names`; errors list what is available."""
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
    return idx


def _sniff_header(path: Path, sep: str) -> bool:
    """True when the first non-empty line has a field that does not parse as a number."""
    with path.open(newline="", encoding="utf-8-sig") as fh:  # (a BOM, as Excel writes, is not data)
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


def _csv_rows(path: Path, sep: str) -> Iterator[tuple[int, list[str]]]:
    """(line number, fields) of the non-blank rows of a text table."""
    with path.open(newline="", encoding="utf-8-sig") as fh:  # (a BOM, as Excel writes, is not data)
        reader = csv.reader(fh, delimiter=sep)
        for row in reader:
            if any(field.strip() for field in row):
                yield reader.line_num, row


def _header_names(path: Path, sep: str) -> list[str]:
    """The fields of the first non-blank row; duplicate names are an error (they cannot be matched)."""
    names = next((row for _, row in _csv_rows(path, sep)), [])
    names = [name.strip() for name in names]
    duplicates = _repeated(names)
    if duplicates:
        raise ValueError(
            f"{path} has duplicate column names {duplicates} in its header; expected unique names "
            "(rename them so that columns can be matched by name)"
        )
    return names


def _check_text(path: Path, sep: str) -> None:
    """A ValueError for a binary file (NUL bytes near its start), and for a `.csv` whose first row holds no
    comma but semicolons (a European "CSV": its fields would be read as one text column)."""
    with path.open("rb") as fh:
        start = fh.read(8192)
    if b"\x00" in start:
        raise ValueError(
            f"{path} is not a text table: it holds NUL bytes (a binary file?); expected CSV / TSV text"
        )
    first = next((row for _, row in _csv_rows(path, sep)), [])
    if sep == "," and len(first) == 1 and ";" in first[0]:
        raise ValueError(
            f"{path} looks separated by semicolons (its first row is {first[0][:60]!r}); flows reads .csv files "
            "as comma-separated with '.' decimals: convert it, e.g. pandas.read_csv(path, sep=';', "
            "decimal=',').to_csv(new_path, index=False)"
        )


def _check_ragged(path: Path, sep: str) -> None:
    """A ValueError naming the first rows whose number of fields differs from the first row's."""
    rows = _csv_rows(path, sep)
    first = next(rows, None)
    if first is None:
        return
    width = len(first[1])
    bad = [(line, len(row)) for line, row in rows if len(row) != width]
    if bad:
        listing = ", ".join(f"line {line} has {count}" for line, count in bad[:5])
        raise ValueError(
            f"{path} is ragged: expected {width} fields per row like its first row, but {len(bad)} rows "
            f"differ ({listing})"
        )


def _read_text(path: Path, sep: str, header: bool | None, columns: Sequence[str | int] | None) -> Any:
    """A text table as a DataFrame of the selected `columns` (only those need to be numeric)."""
    try:
        return _read_text_utf8(path, sep, header, columns)
    except UnicodeDecodeError as error:
        raise ValueError(f"{path} is not UTF-8 text ({error}); expected a UTF-8 encoded table") from error


def _read_text_utf8(path: Path, sep: str, header: bool | None, columns: Sequence[str | int] | None) -> Any:
    pd = _pandas()
    if path.stat().st_size == 0:
        raise ValueError(f"{path} is empty (0 bytes); expected a table with a header row or numeric rows")
    _check_text(path, sep)
    _check_ragged(path, sep)  # pandas reads short rows as NaN and long ones as an index column
    if header is None:
        header = _sniff_header(path, sep)
    names = _header_names(path, sep) if header else None
    try:
        df = pd.read_csv(path, sep=sep, header=0 if header else None, index_col=False, encoding="utf-8-sig")
    except pd.errors.EmptyDataError as error:
        raise ValueError(
            f"{path} holds no table (only blank lines); expected a header row or numeric rows"
        ) from error
    except pd.errors.ParserError as error:
        raise ValueError(f"{path} could not be parsed as a table: {error}") from error
    if not header:
        df.columns = _default_names(df.shape[1])
    elif names is not None and len(names) == df.shape[1]:
        df.columns = names
    if columns is not None:
        df = df.iloc[:, _column_indices([str(c) for c in df.columns], columns, path)]
    elif header and _written_index(df):
        warnings.warn(
            f"{path}: its first column has no name and holds the row numbers 0 .. {df.shape[0] - 1}, the index "
            "that pandas' DataFrame.to_csv writes by default; it is left out (name the columns to model to keep "
            "it, or write the file with index=False)",
            UserWarning,
            stacklevel=2,
        )
        df = df.iloc[:, 1:]
    return df


def _written_index(df: Any) -> bool:
    """Whether the first column of a table read with a header is pandas' default index written by `to_csv`:
    no name (pandas calls it 'Unnamed: 0') and the values 0, 1, ..., n - 1, beside other columns."""
    if df.shape[1] < 2 or str(df.columns[0]).strip() not in ("", "Unnamed: 0"):
        return False
    first = df.iloc[:, 0].to_numpy()
    return first.dtype.kind in "iuf" and np.array_equal(first, np.arange(df.shape[0]))


def table_columns(path: str | Path, header: bool | None = None) -> list[str] | None:
    """The column names a table file carries (a CSV/TSV header, Parquet's schema), or None when it has none.

    Duplicate names in a header are an error (ValueError listing them).
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in (".csv", ".tsv") and path.is_file() and path.stat().st_size > 0:
        sep = "," if suffix == ".csv" else "\t"
        has_header = _sniff_header(path, sep) if header is None else header
        return _header_names(path, sep) if has_header else None
    if suffix == ".parquet" and path.is_file():
        return parquet_columns(path)
    return None


def parquet_columns(path: Path) -> list[str]:
    """The data columns of a Parquet file from its schema alone (the rows are not read): pandas' stored
    index columns are left out, as `pandas.read_parquet(path).columns` leaves them out. Used by the whole-table
    and the streaming readers alike."""
    _pandas()  # the data extra's clear error when pandas / pyarrow are missing
    import pyarrow.parquet as pq

    schema = pq.read_schema(path)
    metadata = schema.pandas_metadata or {}
    index = {name for name in metadata.get("index_columns", []) if isinstance(name, str)}
    return [str(name) for name in schema.names if name not in index]


def _checked_path(path: Path) -> Path:
    """`path` if it names an existing table file of a supported format; a clear error otherwise."""
    suffix = path.suffix.lower()
    if path.is_dir():
        raise ValueError(f"table path {path} is a directory; expected a table file")
    if suffix not in SUPPORTED_FORMATS:
        raise ValueError(
            f"unsupported table format {path.suffix or '(no extension)'!r} for {path}; "
            f"supported: {', '.join(SUPPORTED_FORMATS)}"
        )
    if not path.is_file():
        raise FileNotFoundError(f"table file not found: {path.resolve()}")
    return path


def _read_frame(path: Path, columns: Sequence[str | int] | None, header: bool | None) -> Any:
    """A CSV / TSV / Parquet table as a DataFrame of the selected `columns`."""
    if path.suffix.lower() in (".csv", ".tsv"):
        return _read_text(path, "," if path.suffix.lower() == ".csv" else "\t", header, columns)
    df = _pandas().read_parquet(path)
    if columns is not None:
        df = df.iloc[:, _column_indices([str(c) for c in df.columns], columns, path)]
    return df


def code_text_columns(frame: Any, labels: dict[str, list[str]]) -> Any:
    """A copy of the DataFrame `frame` whose columns named in `labels` hold float codes `0 .. K-1` of their
    labels (text; -1 for a label not in the list, so it lies outside the column's categories)."""
    frame = frame.copy()
    for name, known in labels.items():
        index = {label: code for code, label in enumerate(known)}
        frame[name] = [float(index.get(str(v), -1)) for v in frame[name]]
    return frame


def load_tables(
    paths: Sequence[str | Path],
    categorical: Sequence[str | int],
    columns: Sequence[str | int] | None = None,
    header: bool | None = None,
    key: str | None = None,
) -> tuple[list[np.ndarray], list[str], dict[str, list[str]]]:
    """Tables of the same columns (`load_table` each) whose `categorical` columns (names or positions of
    the selected columns) may hold text labels (CSV / TSV / Parquet): a text column is coded `0 .. K-1` by
    the sorted labels of all the files. Returns the arrays, the column names and `{name: labels}` of the
    text columns. Missing labels are a ValueError naming the column."""
    checked = [_checked_path(Path(p)) for p in paths]
    if not categorical or any(p.suffix.lower() not in (".csv", ".tsv", ".parquet") for p in checked):
        loaded = [load_table(p, columns, header, key) for p in checked]
        return [a for a, _ in loaded], loaded[0][1], {}
    pd = _pandas()
    frames = [_read_frame(p, columns, header) for p in checked]
    names = [str(c) for c in frames[0].columns]
    for frame in frames:
        frame.columns = [str(c) for c in frame.columns]
    text = []
    for c in categorical:
        name = names[_column_indices(names, [c], checked[0])[0]] if not isinstance(c, str) else c
        present = [f for f in frames if name in f.columns]
        if present and any(not pd.api.types.is_numeric_dtype(f[name]) for f in present):
            text.append(name)
    labels: dict[str, list[str]] = {}
    for name in text:
        series = [f[name] for f in frames if name in f.columns]
        if any(s.isna().any() for s in series):
            raise ValueError(f"categorical column {name!r} has missing values; drop or fill them first")
        labels[name] = sorted({str(v) for s in series for v in s.unique()})
    arrays = [as_array(code_text_columns(f, labels), name=str(p))[0] for f, p in zip(frames, checked)]
    return arrays, names, labels


def load_table(
    path: str | Path,
    columns: Sequence[str | int] | None = None,
    header: bool | None = None,
    key: str | None = None,
    min_rows: int = 2,
) -> tuple[np.ndarray, list[str]]:
    """Load a numeric table from CSV/TSV/NPY/NPZ/Parquet; returns (float64 array (n, D), column names).
    `min_rows`: 2 for a training table, 1 for rows to score or condition on.

    ``header`` (CSV/TSV only) is auto-detected when None; ``key`` names the array inside an NPZ archive
    (optional when it holds exactly one); ``columns`` selects columns by name or position (only the selected
    columns of a CSV/TSV/Parquet table need to be numeric). Empty, ragged (rows of different lengths) and
    duplicate-header CSV files are errors naming the file.
    """
    path = _checked_path(Path(path))
    suffix = path.suffix.lower()
    if suffix in (".csv", ".tsv", ".parquet"):
        return as_array(_read_frame(path, columns, header), name=str(path), min_rows=min_rows)
    if suffix == ".npy":
        arr, names = as_array(np.load(path, allow_pickle=False), name=str(path), min_rows=min_rows)
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
        arr, names = as_array(raw, name=f"{path}[{key}]", min_rows=min_rows)
    if columns is None:
        return arr, names
    idx = _column_indices(names, columns, path)
    return arr[:, idx], [names[i] for i in idx]
