"""One streaming pass over a table: row counts per piece and split, and per-column statistics of the
training rows (mean and std by Chan et al.'s pairwise merge in float64, min, max, integer-valued), cached
as JSON beside the data and keyed by the files' size and mtime.

A cache whose key differs (other files, other bytes, other split settings) or that does not parse into
exactly the expected structure is ignored and rewritten: it is never trusted blindly.
"""

from __future__ import annotations

import hashlib
import json
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np

from flows.datasets.stream import TEST, TRAIN, VAL, Piece, TableSource, list_pieces, read_piece, split_of_rows
from flows.io import atomic_write_text

__all__ = ["ColumnMoments", "TableScan", "scan_table"]

CACHE_VERSION = 1


class ColumnMoments:
    """Running count, mean and sum of squared deviations per column (float64), merged batch by batch with
    Chan, Golub and LeVeque's update (stable where the naive sum of squares cancels)."""

    def __init__(self, width: int) -> None:
        self.count = 0
        self.mean = np.zeros(width)
        self.m2 = np.zeros(width)

    def add(self, rows: np.ndarray) -> None:
        """Merge the rows `(n, width)` (or values `(n,)` when width is 1) into the running moments."""
        rows = np.asarray(rows, dtype=np.float64).reshape(rows.shape[0], -1)
        n = rows.shape[0]
        if n == 0:
            return
        mean = rows.mean(axis=0)
        m2 = ((rows - mean) ** 2).sum(axis=0)
        total = self.count + n
        delta = mean - self.mean
        self.mean = self.mean + delta * (n / total)
        self.m2 = self.m2 + m2 + delta**2 * (self.count * n / total)
        self.count = total

    def std(self, ddof: int = 0) -> np.ndarray:
        """Standard deviation per column (nan with too few rows)."""
        if self.count - ddof <= 0:
            return np.full_like(self.mean, math.nan)
        return np.sqrt(self.m2 / (self.count - ddof))


@dataclass
class TableScan:
    """The result of `scan_table`: pieces with row counts, split counts per piece, training statistics."""

    pieces: list[Piece]
    #: rows of each split in each piece, `(pieces, 3)` (train, val, test)
    split_rows: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    minimum: np.ndarray
    maximum: np.ndarray
    integer: np.ndarray

    @property
    def train_rows(self) -> int:
        return int(self.split_rows[:, TRAIN].sum())

    def rows(self, split: int) -> int:
        return int(self.split_rows[:, split].sum())

    @property
    def discrete(self) -> bool:
        """Every training value is an integer."""
        return bool(np.all(self.integer))


def _scan(source: TableSource, seed: int, val_fraction: float, test_fraction: float) -> TableScan:
    width = len(source.columns)
    moments = ColumnMoments(width)
    minimum, maximum = np.full(width, np.inf), np.full(width, -np.inf)
    integer = np.ones(width, dtype=bool)
    pieces, counts, first = [], [], 0
    for piece in list_pieces(source):
        rows = read_piece(piece, source, first)
        labels = split_of_rows(first, rows.shape[0], seed, val_fraction, test_fraction)
        train = rows[labels == TRAIN]
        moments.add(train)
        if train.shape[0]:
            minimum = np.minimum(minimum, train.min(axis=0))
            maximum = np.maximum(maximum, train.max(axis=0))
            integer &= np.all(train == np.round(train), axis=0)
        pieces.append(Piece(piece.path, piece.index, piece.start, piece.stop, int(rows.shape[0])))
        counts.append([int(np.sum(labels == split)) for split in (TRAIN, VAL, TEST)])
        first += rows.shape[0]
    if moments.count < 2:
        raise ValueError(
            f"{source.paths[0]}: {moments.count} training rows after the validation/test split; expected at "
            "least 2"
        )
    std = moments.std()
    return TableScan(
        pieces,
        np.asarray(counts, dtype=np.int64).reshape(-1, 3),
        moments.mean,
        std,
        minimum,
        maximum,
        integer,
    )


def _key(source: TableSource, seed: int, val_fraction: float, test_fraction: float) -> dict[str, Any]:
    return {
        "version": CACHE_VERSION,
        "files": source.fingerprint(),
        "columns": list(source.columns),
        "header": source.header,
        "block_bytes": source.block_bytes,
        "split": [int(seed), float(val_fraction), float(test_fraction)],
    }


def cache_path(source: TableSource, key: dict[str, Any]) -> Path:
    """`<first file>.flows-stats.<digest of key>.json` beside the first file."""
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    first = Path(source.paths[0])
    return first.with_name(f"{first.name}.flows-stats.{digest}.json")


def _to_json(scan: TableScan, key: dict[str, Any], source: TableSource) -> str:
    files = {path: i for i, path in enumerate(source.paths)}
    pieces = [
        [files[p.path], p.index, p.start, p.stop, p.rows, *map(int, counts)]
        for p, counts in zip(scan.pieces, scan.split_rows)
    ]
    values = {
        "key": key,
        "pieces": pieces,
        "mean": scan.mean.tolist(),
        "std": scan.std.tolist(),
        "min": scan.minimum.tolist(),
        "max": scan.maximum.tolist(),
        "integer": [bool(v) for v in scan.integer],
    }
    return json.dumps(values) + "\n"


def _from_json(text: str, key: dict[str, Any], source: TableSource) -> Optional[TableScan]:
    """The scan stored in `text`, or None when it is for another key or not exactly well-formed."""
    try:
        values = json.loads(text)
    except ValueError:
        return None
    width = len(source.columns)
    if not isinstance(values, dict) or values.get("key") != key:
        return None
    try:
        pieces, counts = [], []
        for item in values["pieces"]:
            if len(item) != 8 or not all(type(v) is int and v >= 0 for v in item):
                return None
            file, index, start, stop, rows, *split = item
            if sum(split) != rows:
                return None
            pieces.append(Piece(source.paths[file], index, start, stop, rows))
            counts.append(split)
        stats = [np.asarray(values[name], dtype=np.float64) for name in ("mean", "std", "min", "max")]
        integer = values["integer"]
        if (
            not pieces
            or any(s.shape != (width,) or not np.isfinite(s).all() for s in stats)
            or not isinstance(integer, list)
            or len(integer) != width
            or not all(isinstance(v, bool) for v in integer)
            or np.any(stats[1] < 0)
        ):
            return None
    except (KeyError, TypeError, ValueError, IndexError):
        return None
    split_rows = np.asarray(counts, dtype=np.int64)
    if split_rows[:, TRAIN].sum() < 2:
        return None
    return TableScan(pieces, split_rows, *stats, np.asarray(integer, dtype=bool))


def scan_table(
    source: TableSource, seed: int, val_fraction: float = 0.0, test_fraction: float = 0.0, cache: bool = True
) -> TableScan:
    """Counts and training statistics of `source` with rows split by `split_of_rows(seed, fractions)`;
    read from (and written to) the cache beside the data when `cache` (a read-only directory only warns)."""
    key = _key(source, seed, val_fraction, test_fraction)
    path = cache_path(source, key)
    if cache and path.is_file():
        try:
            found = _from_json(path.read_text(encoding="utf-8")[: 1 << 28], key, source)
        except (OSError, UnicodeDecodeError):
            found = None
        if found is not None:
            return found
    scan = _scan(source, seed, val_fraction, test_fraction)
    if cache:
        try:
            atomic_write_text(path, _to_json(scan, key, source))
        except OSError as error:
            warnings.warn(f"could not cache the table statistics in {path}: {error}", stacklevel=2)
    return scan
