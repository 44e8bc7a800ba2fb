"""The context side of `flows score` and `flows sample` for conditional table models.

A conditional checkpoint records its context column names (`model_record`'s `context`); these read them
from a table by name, or by position from a file without column names.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

import numpy as np

__all__ = ["read_context", "sample_given_contexts"]


def read_context(
    path: str,
    header: Optional[bool],
    key: Optional[str],
    context_columns: list[str],
    positions: Sequence[int],
    rows: Optional[int] = None,
) -> np.ndarray:
    """The model's context columns of table `path` `(n, k)`: by name when the file names its columns,
    else the columns at `positions`. A file naming columns but not the context's is a ValueError listing
    the missing ones; `rows` (when given) must equal the table's row count."""
    from flows.datasets import load_table, table_columns

    names = table_columns(path, header)
    if names is not None:
        missing = [c for c in context_columns if c not in names]
        if missing:
            raise ValueError(
                f"{path} lacks the context columns {missing} the model conditions on (it conditions on "
                f"{context_columns}; the file has {names})"
            )
        selection: list[Any] = list(context_columns)
    else:
        selection = list(positions)
    table, _ = load_table(path, columns=selection, header=header, key=key, min_rows=1)
    if rows is not None and table.shape[0] != rows:
        raise ValueError(f"{path}: expected {rows} context rows, got {table.shape[0]}")
    return np.array(table, dtype=np.float64)  # a writable copy (a column selection can be a read-only view)


def sample_given_contexts(loaded: Any, arguments: argparse.Namespace) -> int:
    """`flows sample` of a conditional model: `-n` samples per row of `--context`, written as rows
    `[context_row, x...]` grouped by context row."""
    from flows.training.evaluation import draw_samples, write_samples

    if not loaded.context_columns:
        raise ValueError(
            f"--context is for conditional models; {arguments.ckpt} models {loaded.columns} without a context"
        )
    if arguments.context is None:
        raise ValueError(
            f"{arguments.ckpt} is conditional on the columns {loaded.context_columns}; pass --context "
            "table.csv holding them (one row per context to sample at)"
        )
    k = len(loaded.context_columns)
    contexts = read_context(arguments.context, None, None, loaded.context_columns, range(k))
    n, m = arguments.num_samples, contexts.shape[0]
    samples = loaded.plan.decode(
        draw_samples(loaded.flow, n, seed=arguments.seed, context=contexts)
    )  # (n, m, D)
    flat = np.transpose(samples, (1, 0, 2)).reshape(m * n, -1)
    rows = np.column_stack([np.repeat(np.arange(m), n), flat])
    path = write_samples(Path(arguments.out), rows, ["context_row", *loaded.columns])
    print(f"wrote {n} samples of {flat.shape[1]} columns for each of {m} context rows to {path}")
    return 0
