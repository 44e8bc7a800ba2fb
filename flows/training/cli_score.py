"""`flows score` and plain `flows sample`, chunk by chunk: memory does not grow with the row count.

`score` reads Parquet / CSV / TSV piece by piece (`flows.datasets.stream`; NPY / NPZ are read whole) and
writes each piece's log densities as it goes; `sample` draws and writes `-n` rows in chunks. Both write
into a temporary file that replaces `--out` only when it is complete (`flows.training.table_writer`).
"""

from __future__ import annotations

import argparse
import itertools
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np

from flows.datasets.stream import STREAM_FORMATS, list_pieces, open_source, read_piece
from flows.training.evaluation import LikelihoodTally, iter_samples, table_log_prob
from flows.training.table_writer import table_writer

__all__ = ["sample_rows", "score_rows", "table_batches"]

#: rows per chunk of scoring
CHUNK_ROWS = 65_536
#: rows per chunk of sampling: `draw_samples`' chunk, so that a file equals its draw for the same seed (the
#: random stream of a draw depends on the chunk sizes)
SAMPLE_CHUNK_ROWS = 10_000


def table_batches(
    path: str,
    columns: Optional[Sequence[Union[str, int]]],
    header: Optional[bool],
    key: Optional[str],
    rows: int = CHUNK_ROWS,
    labels: Optional[dict[str, list[str]]] = None,
) -> tuple[Iterator[np.ndarray], list[str]]:
    """Batches `(<= rows, len(columns))` float64 of the selected columns of a table, and their names:
    streamed piece by piece for Parquet / CSV / TSV, from the whole array for NPY / NPZ. `labels`
    (`{name: text labels}`, Parquet / CSV / TSV): text columns coded as in `read_piece`."""
    if Path(path).suffix.lower() not in STREAM_FORMATS:
        from flows.datasets import load_table

        table, names = load_table(path, columns=columns, header=header, key=key, min_rows=1)
        return (table[i : i + rows] for i in range(0, table.shape[0], rows)), names
    source = open_source(path, columns, header)

    def batches() -> Iterator[np.ndarray]:
        first = 0
        for piece in list_pieces(source):
            part = read_piece(piece, source, first, labels)
            first += part.shape[0]
            yield from (part[i : i + rows] for i in range(0, part.shape[0], rows))

    return batches(), list(source.names)


def _context_selection(path: str, header: Optional[bool], loaded: Any) -> list[Union[str, int]]:
    """The model's context columns in `path`: by name when the file names its columns, else by position
    (after the model's columns); a file naming columns but not the context's is an error."""
    from flows.datasets import table_columns

    names = table_columns(path, header)
    if names is None:
        return list(range(loaded.features, loaded.features + len(loaded.context_columns)))
    missing = [c for c in loaded.context_columns if c not in names]
    if missing:
        raise ValueError(
            f"{path} lacks the context columns {missing} the model conditions on (it conditions on "
            f"{loaded.context_columns}; the file has {names})"
        )
    return list(loaded.context_columns)


def score_rows(
    loaded: Any,
    arguments: argparse.Namespace,
    columns: Optional[list[Union[str, int]]],
    header: Optional[bool],
) -> LikelihoodTally:
    """Write the log density of every row of `arguments.data` to `arguments.out` (column `log_prob`)."""
    features = loaded.features
    context = _context_selection(arguments.data, header, loaded) if loaded.context_columns else []
    if context and columns is None:  # by position: the model's columns, then the context's
        columns = list(range(features))
    selection = None if columns is None else [*columns, *context]
    labels = {loaded.columns[j]: values for j, values in loaded.plan.labels.items()}  # string categories
    batches, names = table_batches(arguments.data, selection, header, arguments.key, labels=labels)
    first = next(batches, None)  # a table that cannot be read is reported before a wrong column count
    batches = itertools.chain([] if first is None else [first], batches)
    width = len(names) - len(context)
    if width != features:
        raise ValueError(
            f"{arguments.data} has {width} columns {names[:width]}; the model expects {features} "
            f"({loaded.columns}); select them with --columns"
        )
    tally = LikelihoodTally()
    with table_writer(arguments.out, ["log_prob"]) as writer:
        given = None
        if context:  # (tee holds a batch until both sides have taken it: only with a context side)
            batches, with_context = itertools.tee(batches)
            given = (batch[:, features:] for batch in with_context)
        rows = (batch[:, :features] for batch in batches)
        for batch, context_batch in zip(rows, given if given is not None else itertools.repeat(None)):
            # The column plan: categories coded, rows off the support -inf, discrete columns' mass bound.
            log_prob = table_log_prob(loaded.flow, batch, loaded.plan, context=context_batch)
            writer.write(log_prob[:, None])
            tally.add(log_prob)
        if tally.moments.count == 0:
            raise ValueError(f"{arguments.data} has no rows to score")
    return tally


def sample_rows(loaded: Any, arguments: argparse.Namespace) -> int:
    """Write `-n` samples of `loaded.flow` to `arguments.out` in chunks; returns the row count."""
    with table_writer(arguments.out, loaded.columns, loaded.plan.labels) as writer:
        for chunk in iter_samples(loaded.flow, arguments.num_samples, arguments.seed, SAMPLE_CHUNK_ROWS):
            writer.write(loaded.plan.decode(chunk))
    return writer.rows


def print_score(path: str, tally: LikelihoodTally, note: Optional[str]) -> None:
    if note is not None:  # after success: an error stays the only line on stderr
        print(note, file=sys.stderr)
    print(f"wrote {tally.moments.count} log densities to {path}; mean {tally.mean:.4f} nats")
