"""Tables written chunk by chunk (CSV, TSV or NPY by the suffix), atomically: a temporary file beside the
target that replaces it only once the whole table is written, so memory does not grow with the row count.

An NPY header holds the row count, which is known only at the end: the writer reserves a fixed-size header
and fills it in last (numpy reads headers padded with spaces; 128 bytes keep the data 64-byte aligned).
"""

from __future__ import annotations

import contextlib
import csv
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any, Optional, Union

import numpy as np

from flows.io import atomic_open

__all__ = ["TableWriter", "table_writer"]

_NPY_HEADER_BYTES = 128
_NPY_MAGIC = b"\x93NUMPY\x01\x00"


class TableWriter:
    """Appends float64 rows `(n, width)` to an open file (made by `table_writer`). `labels`
    (`{column: text labels}`): those columns hold codes, written as their labels (CSV / TSV)."""

    def __init__(
        self, handle: IO[Any], kind: str, width: int, labels: Optional[Mapping[int, Sequence[str]]] = None
    ) -> None:
        self.handle = handle
        self.kind = kind
        self.width = width
        self.rows = 0
        self.labels = dict(labels or {}) if kind != "npy" else {}

    def write(self, rows: np.ndarray) -> None:
        """Append `rows (n, width)`."""
        rows = np.asarray(rows, dtype=np.float64)
        if rows.ndim != 2 or rows.shape[1] != self.width:
            raise ValueError(f"expected rows of shape (n, {self.width}), got {rows.shape}")
        if self.kind == "npy":
            self.handle.write(np.ascontiguousarray(rows).astype("<f8", copy=False).tobytes())
        elif self.labels:
            text = np.char.mod("%.8g", rows).astype(object)
            for j, known in self.labels.items():
                codes = np.clip(rows[:, j], 0, len(known) - 1).astype(np.int64)
                text[:, j] = np.asarray(known, dtype=object)[codes]
            csv.writer(
                self.handle, delimiter="," if self.kind == "csv" else "\t", lineterminator="\n"
            ).writerows(text.tolist())
        else:
            np.savetxt(self.handle, rows, delimiter="," if self.kind == "csv" else "\t", fmt="%.8g")
        self.rows += rows.shape[0]

    def _npy_header(self) -> bytes:
        text = f"{{'descr': '<f8', 'fortran_order': False, 'shape': ({self.rows}, {self.width}), }}"
        room = _NPY_HEADER_BYTES - len(_NPY_MAGIC) - 2
        text = text.ljust(room - 1) + "\n"
        return _NPY_MAGIC + len(text).to_bytes(2, "little") + text.encode("latin1")


@contextlib.contextmanager
def table_writer(
    path: Union[str, Path], columns: Sequence[str], labels: Optional[Mapping[int, Sequence[str]]] = None
) -> Iterator[TableWriter]:
    """A `TableWriter` for `path` (`.csv` / `.tsv` with a header of `columns`, or `.npy`; `labels` as in
    `TableWriter`, codes in NPY); the file appears, complete, when the block ends without an error."""
    path = Path(path)
    kind = path.suffix.lower().lstrip(".")
    if kind not in ("csv", "tsv", "npy"):
        raise ValueError(f"output file must end in .csv, .tsv or .npy, got {path}")
    with atomic_open(path, "wb" if kind == "npy" else "w") as handle:
        writer = TableWriter(handle, kind, len(columns), labels)
        if kind == "npy":
            handle.write(b"\0" * _NPY_HEADER_BYTES)
        else:
            handle.write(("," if kind == "csv" else "\t").join(columns) + "\n")
        yield writer
        if kind == "npy":
            handle.seek(0)
            handle.write(writer._npy_header())
            handle.seek(0, 2)
