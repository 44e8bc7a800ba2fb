"""Tables read piece by piece (Parquet row groups, CSV/TSV byte blocks), never whole, via pyarrow.

A table is one file or a sorted glob of files. It is cut into *pieces* that can each be read on their own:
a Parquet row group (from the file's metadata), or a block of about `block_bytes` of a CSV/TSV file that ends
at a line break (a CSV field must then not contain a line break, which numeric tables never do). Rows are
numbered in file order, piece after piece: that global row index is what `split_of_rows` hashes to put a
row in the train, validation or test split, so the split of a row does not depend on who reads it.
"""

from __future__ import annotations

import glob
import io
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np

__all__ = [
    "STREAM_FORMATS",
    "Piece",
    "TableSource",
    "expand_paths",
    "iter_row_chunks",
    "open_source",
    "read_piece",
    "split_of_rows",
]

STREAM_FORMATS = (".parquet", ".csv", ".tsv")
#: split labels returned by `split_of_rows`
TRAIN, VAL, TEST = 0, 1, 2


@dataclass(frozen=True)
class Piece:
    """One independently readable part of a file: row group `index` (Parquet) or bytes `[start, stop)`
    (CSV/TSV). `rows` is known from Parquet metadata; for text it is filled in by a scan (-1 before)."""

    path: str
    index: int
    start: int = 0
    stop: int = 0
    rows: int = -1


@dataclass(frozen=True)
class TableSource:
    """What to read: the files, the selected columns (positions into each file's columns) and their names."""

    paths: tuple[str, ...]
    columns: tuple[int, ...]
    names: tuple[str, ...]
    header: bool
    block_bytes: int
    #: number of columns in each file (before selection)
    width: int

    def fingerprint(self) -> list[list[Any]]:
        """`[path, size, mtime_ns]` per file: a cache made for other bytes does not match."""
        out = []
        for path in self.paths:
            stat = os.stat(path)
            out.append([os.path.abspath(path), int(stat.st_size), int(stat.st_mtime_ns)])
        return out


def _pyarrow() -> Any:
    try:
        import pyarrow
        import pyarrow.csv
        import pyarrow.parquet
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError(
            "streaming tables (data.streaming) needs pyarrow; install it with `pip install pyarrow` or the "
            "project's data extra"
        ) from error
    return pyarrow


def expand_paths(pattern: str) -> list[str]:
    """The files of a path or glob (sorted); an error when none match or a format cannot be streamed."""
    expanded = os.path.expanduser(pattern)
    paths = sorted(glob.glob(expanded)) if glob.has_magic(expanded) else [expanded]
    if not paths:
        raise FileNotFoundError(f"no file matches {pattern!r}")
    for path in paths:
        if os.path.isdir(path):
            raise ValueError(f"table path {path} is a directory; expected a table file")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"table file not found: {os.path.abspath(path)}")
        if Path(path).suffix.lower() not in STREAM_FORMATS:
            raise ValueError(
                f"{path}: cannot stream {Path(path).suffix or '(no extension)'!r} files; expected one of "
                f"{', '.join(STREAM_FORMATS)} (NPY/NPZ are read whole: set data.streaming: false)"
            )
    return paths


def _delimiter(path: str) -> str:
    return "\t" if path.lower().endswith(".tsv") else ","


def _file_names(path: str, header: Optional[bool]) -> tuple[list[str], bool]:
    """Column names of one file and whether a text file has a header row (sniffed when `header` is None)."""
    from flows.datasets.files import _header_names, _sniff_header, parquet_columns

    if path.lower().endswith(".parquet"):
        return parquet_columns(Path(path)), False

    delimiter = _delimiter(path)
    if os.path.getsize(path) == 0:
        raise ValueError(f"{path} is empty (0 bytes); expected a table with a header row or numeric rows")
    has_header = _sniff_header(Path(path), delimiter) if header is None else header
    names = _header_names(Path(path), delimiter)
    return (names if has_header else [f"x{i}" for i in range(len(names))]), has_header


def open_source(
    pattern: str,
    columns: Optional[Sequence[Union[str, int]]] = None,
    header: Optional[bool] = None,
    block_bytes: int = 16 << 20,
) -> TableSource:
    """Resolve files, header and selected columns; every file must have the first file's columns."""
    from flows.datasets.files import _column_indices

    paths = expand_paths(pattern)
    names, has_header = _file_names(paths[0], header)
    for path in paths[1:]:
        other, _ = _file_names(path, header)
        if other != names:
            raise ValueError(f"{path} has columns {other}; expected {names} like {paths[0]}")
    chosen = list(range(len(names))) if columns is None else _column_indices(names, columns, Path(paths[0]))
    return TableSource(
        tuple(paths), tuple(chosen), tuple(names[i] for i in chosen), has_header, int(block_bytes), len(names)
    )


def list_pieces(source: TableSource) -> list[Piece]:
    """The pieces of every file in order (text pieces still without row counts)."""
    pieces: list[Piece] = []
    for path in source.paths:
        if path.lower().endswith(".parquet"):
            metadata = _pyarrow().parquet.ParquetFile(path).metadata
            pieces += [
                Piece(path, i, rows=metadata.row_group(i).num_rows) for i in range(metadata.num_row_groups)
            ]
        else:
            pieces += _text_blocks(path, source.header, source.block_bytes)
    return pieces


def _text_blocks(path: str, header: bool, block_bytes: int) -> list[Piece]:
    """Byte ranges of about `block_bytes` that start after the header and end after a line break."""
    size = os.path.getsize(path)
    blocks: list[Piece] = []
    with open(path, "rb") as handle:
        start = len(handle.readline()) if header else 0
        while start < size:
            handle.seek(min(size, start + block_bytes))
            stop = min(size, handle.tell() + len(handle.readline()))
            blocks.append(Piece(path, len(blocks), start, stop))
            start = stop
    return blocks


def read_piece(
    piece: Piece,
    source: TableSource,
    first: Optional[int] = None,
    labels: Optional[Mapping[str, Sequence[str]]] = None,
) -> np.ndarray:
    """The selected columns of one piece as float64 `(rows, len(source.columns))`. Non-numeric columns and
    NaN or infinite values are errors naming the file (and, given `first`, the piece's first global row,
    the indices of the bad rows). `labels` (`{name: text labels}`): those columns are read as text and
    coded `0 .. K-1` (-1 for a label not in the list)."""
    pa = _pyarrow()
    try:
        if piece.path.lower().endswith(".parquet"):
            table = pa.parquet.ParquetFile(piece.path).read_row_group(piece.index, columns=list(source.names))
        else:
            with open(piece.path, "rb") as handle:
                handle.seek(piece.start)
                data = handle.read(piece.stop - piece.start)
            table = pa.csv.read_csv(
                io.BytesIO(data),
                read_options=pa.csv.ReadOptions(column_names=[f"c{i}" for i in range(source.width)]),
                parse_options=pa.csv.ParseOptions(delimiter=_delimiter(piece.path)),
                convert_options=pa.csv.ConvertOptions(include_columns=[f"c{i}" for i in source.columns]),
            )
    except (pa.ArrowInvalid, OSError) as error:
        raise ValueError(f"{piece.path} could not be parsed as a table: {error}") from error
    numeric = (pa.types.is_integer, pa.types.is_floating, pa.types.is_boolean, pa.types.is_null)
    labels = labels or {}
    text = [
        n
        for n, column in zip(source.names, table.columns)
        if n not in labels and not any(f(column.type) for f in numeric)
    ]
    if text:
        raise TypeError(f"{piece.path} has non-numeric columns {text}; drop or encode them first")
    array = np.column_stack(
        [
            _codes(column, labels[name])
            if name in labels
            else np.asarray(column.to_numpy(zero_copy_only=False), dtype=np.float64)
            for name, column in zip(source.names, table.columns)
        ]
    ).reshape(-1, len(source.columns))
    bad = ~np.isfinite(array)
    if bad.any():
        n_nan = int(np.isnan(array).sum())
        rows = np.flatnonzero(bad.any(axis=1))
        where = (
            f"first row indices: {(rows[:5] + first).tolist()}"
            if first is not None
            else f"piece {piece.index}"
        )
        raise ValueError(
            f"{piece.path} has {n_nan} NaN and {int(bad.sum()) - n_nan} infinite values in {rows.size} rows; "
            f"{where}"
        )
    return array


def _codes(column: Any, labels: Sequence[str]) -> np.ndarray:
    """A column of text labels as float codes into `labels` (-1 for one not among them)."""
    index = {label: float(code) for code, label in enumerate(labels)}
    return np.asarray([index.get(str(v), -1.0) for v in column.to_pylist()], dtype=np.float64)


def iter_row_chunks(source: TableSource, pieces: Sequence[Piece]) -> Iterator[tuple[int, np.ndarray]]:
    """`(global index of the first row, rows)` of each piece in file order."""
    first = 0
    for piece in pieces:
        rows = read_piece(piece, source, first)
        yield first, rows
        first += rows.shape[0]


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """The splitmix64 finaliser on uint64 (a fixed, well-mixed hash of the row index)."""
    with np.errstate(over="ignore"):
        x = x + np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def split_of_rows(first: int, count: int, seed: int, val_fraction: float, test_fraction: float) -> np.ndarray:
    """Split label (`TRAIN`, `VAL`, `TEST`) `(count,)` of global rows `first ... first + count - 1`: a hash
    of (row index, seed) mapped to [0, 1) falls below `test_fraction` (test), below `test_fraction +
    val_fraction` (validation) or above (train). The same row gets the same label in every run and reader."""
    index = np.arange(first, first + count, dtype=np.uint64)
    with np.errstate(over="ignore"):
        keyed = index + np.uint64(seed % (1 << 64)) * np.uint64(0xD1B54A32D192ED03)
    u = (_splitmix64(keyed) >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))
    labels = np.full(count, TRAIN, dtype=np.uint8)
    labels[u < test_fraction + val_fraction] = VAL
    labels[u < test_fraction] = TEST
    return labels
