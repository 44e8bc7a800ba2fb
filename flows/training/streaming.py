"""Training batches streamed from a table larger than memory, sharded across DDP ranks and loader workers.

Every epoch the pieces (Parquet row groups, CSV blocks) are put in an order drawn from `(seed, epoch)`, and
the training rows in that order are cut into `S` *shards* of consecutive rows (`data.shards`; their sizes
differ by at most one row). Each shard passes its rows through its own shuffle buffer (`data.shuffle_buffer`
rows, seeded by `(seed, epoch, shard)`) and emits chunks of `b = B * W * N / S` rows (B the per-device batch,
W the ranks, N the loader workers per rank). Global batch `k` is made of chunk `k // N` of every shard `s`
with `s % N == k % N`, interleaved; rank `r` holds the shards `s` with `(s % (W N)) // N == r`, which are
exactly its rows `r, r + W, ...` of the global batch (the layout of `GlobalBatchSampler`, so the training
noise is the same too). Loader worker `w` of a rank makes every N-th batch, reading only its own shards.

So each row is read by one consumer only, every rank makes the same number of batches per epoch (each
shard makes `floor(floor(T / S) / b)` chunks; the ragged rest of every shard, fewer than `b + 1` rows, is
left out of that epoch, as `GlobalBatchSampler` leaves out the last incomplete batch), and for a fixed `S`
the global batches do not depend on W: a run on 2 devices trains on the batches of one process with twice
the batch. A mid-epoch resume replays the shards' streams from the start of the epoch and skips the batches
already trained on: the same batches as an uninterrupted run, bit for bit.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Optional

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from flows.datasets.stream import TableSource, read_piece, split_of_rows
from flows.datasets.stream_stats import TableScan
from flows.dequantization import dequantize

__all__ = ["EpochLoader", "ShardedTableStream", "SplitStream", "StreamedSplit"]


@dataclass(frozen=True)
class StreamedSplit:
    """The rows of one split of a scanned table: rows whose `split_of_rows(seed, fractions)` label is
    `split` (a given validation or test file is scanned with fractions 0, so all its rows are `TRAIN`)."""

    source: TableSource
    scan: TableScan
    split: int
    seed: int
    val_fraction: float
    test_fraction: float

    @property
    def rows(self) -> int:
        return self.scan.rows(self.split)

    @cached_property
    def first_rows(self) -> list[int]:
        """Global index of the first row of every piece."""
        return np.concatenate([[0], np.cumsum([p.rows for p in self.scan.pieces])[:-1]]).astype(int).tolist()

    def piece_rows(self, position: int) -> np.ndarray:
        """The split's rows `(n, D)` of piece `position` (file order), float64."""
        first = self.first_rows[position]
        rows = read_piece(self.scan.pieces[position], self.source, first)
        labels = split_of_rows(first, rows.shape[0], self.seed, self.val_fraction, self.test_fraction)
        return rows[labels == self.split]


class ShardedTableStream(IterableDataset):
    """Training batches `(x (B, D) float32,)` of one rank (see the module docstring for the layout)."""

    def __init__(
        self,
        data: StreamedSplit,
        batch_size: int,
        shards: int,
        shuffle_buffer: int,
        shuffle: bool,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        num_workers: int = 0,
    ) -> None:
        workers = max(1, num_workers)
        consumers = world_size * workers
        if shards < 1 or shards % consumers:
            raise ValueError(
                f"data.shards ({shards}) must be a multiple of devices x loader workers ({world_size} x {workers})"
            )
        if (batch_size * consumers) % shards:
            raise ValueError(
                f"data.shards ({shards}) must divide the global batch x loader workers "
                f"({batch_size} x {world_size} x {workers})"
            )
        self.data = data
        self.batch_size = batch_size
        self.shards = shards
        self.buffer = max(0, int(shuffle_buffer))
        self.shuffle = shuffle
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.workers = workers
        self.chunk = batch_size * consumers // shards
        self.chunks_per_shard = (data.rows // shards) // self.chunk
        if self.chunks_per_shard < 1:
            raise ValueError(
                f"{data.rows} training rows are too few for {shards} shards of chunks of {self.chunk} rows "
                f"(batch {batch_size} x {consumers} consumers); lower train.batch_size or data.shards"
            )
        self.epoch = 0
        self._resume: Optional[tuple[int, int]] = None

    def __len__(self) -> int:
        """Batches per epoch (the same on every rank)."""
        return self.chunks_per_shard * self.workers

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def resume_from(self, epoch: int, batches_done: int) -> None:
        """Make the next iteration over `epoch` skip its first `batches_done` batches (a mid-epoch resume)."""
        self._resume = (int(epoch), int(batches_done)) if 0 < batches_done < len(self) else None

    # ------------------------------------------------------------------ layout

    def _spans(self, shard: int) -> list[tuple[int, int, int]]:
        """`(piece, lo, hi)`: shard `shard` of this epoch is the split's rows `lo:hi` of each listed piece."""
        counts = self.data.scan.split_rows[:, self.data.split]
        order = np.arange(len(counts))
        if self.shuffle:
            order = np.random.default_rng([self.seed, self.epoch, 0]).permutation(len(counts))
        total = int(counts.sum())
        start, stop = shard * total // self.shards, (shard + 1) * total // self.shards
        spans, offset = [], 0
        for piece in order.tolist():
            n = int(counts[piece])
            lo, hi = max(start, offset), min(stop, offset + n)
            if lo < hi:
                spans.append((piece, lo - offset, hi - offset))
            offset += n
            if offset >= stop:
                break
        return spans

    def _chunks(self, shard: int, skip: int) -> Iterator[np.ndarray]:
        """The chunks `(b, D)` of one shard this epoch after its first `skip` (which are still drawn)."""
        rng = np.random.default_rng([self.seed, self.epoch, 1, shard])
        b, made = self.chunk, 0
        pool = np.zeros((0, len(self.data.source.columns)))
        spans = iter(self._spans(shard))
        while made < self.chunks_per_shard:
            span = next(spans, None)
            if span is not None:
                piece, lo, hi = span
                pool = np.concatenate([pool, self.data.piece_rows(piece)[lo:hi]])
                if pool.shape[0] < self.buffer + b:
                    continue
            if self.shuffle:
                pool = pool[rng.permutation(pool.shape[0])]
            keep = self.buffer if span is not None else 0
            ready = (pool.shape[0] - keep) // b
            for i in range(ready):
                if made >= self.chunks_per_shard:
                    return
                if made >= skip:
                    yield pool[i * b : (i + 1) * b]
                made += 1
            pool = pool[ready * b :]
            if span is None:
                return

    def _owned(self, phase: int) -> list[int]:
        """This rank's shards that make the batches of `phase` (batch index modulo the workers)."""
        consumers = self.world_size * self.workers
        return [
            s
            for s in range(self.shards)
            if s % self.workers == phase and (s % consumers) // self.workers == self.rank
        ]

    def batches(self, worker: int = 0) -> Iterator[np.ndarray]:
        """The batches `(B, D)` float64 that loader worker `worker` makes this epoch, in order."""
        done = 0
        if self._resume is not None and self._resume[0] == self.epoch:
            done = self._resume[1]
        phase = (done + worker) % self.workers
        first_chunk = (done + worker) // self.workers
        shards = self._owned(phase)
        streams = [self._chunks(s, first_chunk) for s in shards]
        for _ in range(first_chunk, self.chunks_per_shard):
            chunks = [next(stream) for stream in streams]
            yield np.stack(chunks, axis=1).reshape(-1, chunks[0].shape[1])

    def __iter__(self) -> Iterator[tuple[torch.Tensor]]:
        info = get_worker_info()
        worker = 0 if info is None else info.id
        if info is not None and info.num_workers != self.workers:
            raise RuntimeError(
                f"the stream was built for {self.workers} loader workers, got {info.num_workers}"
            )
        for batch in self.batches(worker):
            yield (torch.as_tensor(batch, dtype=torch.float32),)
        self._resume = None


class SplitStream(IterableDataset):
    """A validation or test split in file order, batches `(x (<= batch, D) float32,)`; integer data get one
    fixed draw of U[0, 1) noise per batch when `dequantize_seed` is set (seeded by it and the batch index)."""

    def __init__(self, data: StreamedSplit, batch_size: int, dequantize_seed: Optional[int] = None) -> None:
        self.data = data
        self.batch_size = batch_size
        self.dequantize_seed = dequantize_seed

    def __len__(self) -> int:
        return -(-self.data.rows // self.batch_size)

    def arrays(self) -> Iterator[np.ndarray]:
        """Batches `(<= batch, D)` float64 in data units (dequantised when set)."""
        pending: list[np.ndarray] = []
        held, index = 0, 0
        for position in range(len(self.data.scan.pieces)):
            rows = self.data.piece_rows(position)
            pending.append(rows)
            held += rows.shape[0]
            while held >= self.batch_size:
                pool = np.concatenate(pending)
                yield self._noisy(pool[: self.batch_size], index)
                index += 1
                pending, held = [pool[self.batch_size :]], pool.shape[0] - self.batch_size
        if held:
            yield self._noisy(np.concatenate(pending), index)

    def _noisy(self, x: np.ndarray, index: int) -> np.ndarray:
        if self.dequantize_seed is None:
            return x
        noise = np.random.default_rng([self.dequantize_seed, index]).uniform(size=x.shape)
        return dequantize(torch.as_tensor(x), torch.as_tensor(noise)).numpy()

    def __iter__(self) -> Iterator[tuple[torch.Tensor]]:
        for batch in self.arrays():
            yield (torch.as_tensor(batch, dtype=torch.float32),)


class EpochLoader(DataLoader):
    """A `DataLoader` over a `ShardedTableStream` that tells the stream the epoch when an iteration starts
    (Lightning sets the epoch on samplers only, and an iterable dataset has none).

    The iteration starts at the first batch asked for, not at `iter()`: Lightning calls `iter()` while it
    sets up the loader, before a checkpoint restores the epoch and the resume point, and loader workers get
    their copy of the stream when they start.
    """

    def __init__(self, dataset: ShardedTableStream, epoch: Callable[[], int], **options: Any) -> None:
        super().__init__(dataset, batch_size=None, **options)
        self._epoch = epoch

    def __iter__(self) -> Iterator[Any]:
        return _LazyIterator(self)

    def _start(self) -> Iterator[Any]:
        self.dataset.set_epoch(self._epoch())
        iterator = super().__iter__()
        if self.num_workers > 0:  # the workers took their copy with the resume point: it is used up
            self.dataset._resume = None
        return iterator


class _LazyIterator:
    """Starts `loader`'s iteration at the first `next()`."""

    def __init__(self, loader: EpochLoader) -> None:
        self.loader = loader
        self.iterator: Optional[Iterator[Any]] = None

    def __iter__(self) -> _LazyIterator:
        return self

    def __next__(self) -> Any:
        if self.iterator is None:
            self.iterator = self.loader._start()
        return next(self.iterator)
