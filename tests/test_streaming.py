"""Streamed tables: every training row once per epoch across ranks and loader workers, equal batch counts,
global batches independent of the number of ranks for fixed shards, determinism, mid-epoch resume, hash
splits independent of how the file is cut, one-pass statistics against numpy, and the statistics cache."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from flows.datasets import stream_stats
from flows.datasets.stream import TEST, TRAIN, VAL, open_source, split_of_rows
from flows.datasets.stream_stats import ColumnMoments, cache_path, scan_table
from flows.training.streaming import ShardedTableStream, SplitStream, StreamedSplit


def write_parquet(path: Path, x: np.ndarray, row_group_size: int, names: Optional[list[str]] = None) -> Path:
    names = names or [f"c{i}" for i in range(x.shape[1])]
    pq.write_table(
        pa.table({name: x[:, i] for i, name in enumerate(names)}), path, row_group_size=row_group_size
    )
    return path


def table_with_ids(n: int, seed: int = 0) -> np.ndarray:
    """Rows `(n, 3)`: the row's global index, then two random columns."""
    rng = np.random.default_rng(seed)
    return np.column_stack([np.arange(n, dtype=np.float64), rng.normal(size=(n, 2))])


def train_split(pattern: str, seed: int = 3, val: float = 0.1, test: float = 0.1, **options) -> StreamedSplit:
    source = open_source(pattern, **options)
    return StreamedSplit(source, scan_table(source, seed, val, test, cache=False), TRAIN, seed, val, test)


@pytest.fixture
def two_files(tmp_path: Path) -> str:
    """1,000 rows in two Parquet files with row groups of 70 rows (ids 0..999 in glob order)."""
    x = table_with_ids(1000)
    write_parquet(tmp_path / "part-0.parquet", x[:450], 70)
    write_parquet(tmp_path / "part-1.parquet", x[450:], 70)
    return str(tmp_path / "part-*.parquet")


def epoch_batches(split: StreamedSplit, batch: int, world: int, workers: int, shards: int, epoch: int = 0):
    """`batches[rank][k]` of one epoch, made the way a DataLoader interleaves its workers' batches."""
    out = []
    for rank in range(world):
        stream = ShardedTableStream(split, batch, shards, 64, True, 11, rank, world, workers)
        stream.set_epoch(epoch)
        per_worker = [list(stream.batches(w)) for w in range(max(1, workers))]
        ordered = [per_worker[k % len(per_worker)][k // len(per_worker)] for k in range(len(stream))]
        assert all(len(b) == len(per_worker[0]) for b in per_worker)
        out.append(ordered)
    return out


@pytest.mark.parametrize(("world", "workers"), [(1, 0), (2, 0), (2, 2), (3, 1)])
def test_every_training_row_once_per_epoch_across_ranks_and_workers(
    two_files: str, world: int, workers: int
) -> None:
    split = train_split(two_files)
    train_ids = {int(i) for p in range(len(split.scan.pieces)) for i in split.piece_rows(p)[:, 0]}
    assert len(train_ids) == split.rows
    shards = world * max(1, workers)
    batches = epoch_batches(split, 16, world, workers, shards)
    assert len({len(rank) for rank in batches}) == 1  # the same number of batches on every rank (DDP)
    seen = np.concatenate([b[:, 0] for rank in batches for b in rank]).astype(int)
    assert len(seen) == len(set(seen.tolist()))  # no row twice
    assert set(seen.tolist()) <= train_ids  # only training rows
    per_shard = split.rows // shards
    chunk = 16 * world * max(1, workers) // shards
    assert len(seen) == shards * (per_shard // chunk) * chunk  # all but each shard's ragged rest
    assert split.rows - len(seen) < shards * (chunk + 1)


def test_global_batches_do_not_depend_on_the_number_of_ranks(two_files: str) -> None:
    split = train_split(two_files)
    single = epoch_batches(split, 32, 1, 0, 4, epoch=2)[0]
    for world in (2, 4):
        ranks = epoch_batches(split, 32 // world, world, 0, 4, epoch=2)
        assert len(ranks[0]) == len(single)
        for k, global_batch in enumerate(single):
            for rank in range(world):  # rank r holds rows r, r + W, ... of the global batch
                np.testing.assert_array_equal(ranks[rank][k], global_batch[rank::world])
    with_workers = epoch_batches(split, 16, 2, 2, 4, epoch=2)  # 2 ranks x 2 workers, the same 4 shards
    single_workers = epoch_batches(split, 32, 1, 2, 4, epoch=2)[0]
    for k, global_batch in enumerate(single_workers):
        for rank in range(2):
            np.testing.assert_array_equal(with_workers[rank][k], global_batch[rank::2])


def test_order_is_deterministic_per_seed_and_changes_with_the_epoch(two_files: str) -> None:
    split = train_split(two_files)
    first = np.concatenate(epoch_batches(split, 16, 1, 0, 2, epoch=0)[0])
    again = np.concatenate(epoch_batches(split, 16, 1, 0, 2, epoch=0)[0])
    other_epoch = np.concatenate(epoch_batches(split, 16, 1, 0, 2, epoch=1)[0])
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first[:, 0], other_epoch[:, 0])
    # the shuffle reaches across pieces: a batch mixes rows of several row groups
    assert len({int(i) // 70 for i in first[:16, 0]}) > 2


@pytest.mark.parametrize("workers", [0, 3])
def test_resume_skips_exactly_the_batches_done(two_files: str, workers: int) -> None:
    split = train_split(two_files)
    full = epoch_batches(split, 8, 1, workers, max(1, workers), epoch=1)[0]
    for done in (1, 4, 5):
        stream = ShardedTableStream(split, 8, max(1, workers), 64, True, 11, 0, 1, workers)
        stream.set_epoch(1)
        stream.resume_from(1, done)
        per_worker = [list(stream.batches(w)) for w in range(max(1, workers))]
        # a fresh DataLoader iterator starts at worker 0: worker w now makes batch done + w + j * workers
        resumed = [per_worker[i % len(per_worker)][i // len(per_worker)] for i in range(len(full) - done)]
        for got, expected in zip(resumed, full[done:]):
            np.testing.assert_array_equal(got, expected)
    stream = ShardedTableStream(split, 8, 1, 64, True, 11)
    stream.resume_from(0, 3)  # a resume point of another epoch does not apply
    stream.set_epoch(1)
    np.testing.assert_array_equal(next(stream.batches()), full[0])


def test_invalid_shard_layouts_are_refused(two_files: str) -> None:
    split = train_split(two_files)
    with pytest.raises(ValueError, match="multiple of devices"):
        ShardedTableStream(split, 16, 3, 64, True, 0, 0, 2, 0)
    with pytest.raises(ValueError, match="must divide the global batch"):
        ShardedTableStream(split, 3, 4, 64, True, 0, 0, 2, 0)
    with pytest.raises(ValueError, match="too few"):
        ShardedTableStream(split, 1024, 2, 64, True, 0, 0, 1, 0)


def test_hash_split_does_not_depend_on_how_the_table_is_cut(tmp_path: Path) -> None:
    x = table_with_ids(3000, seed=1)
    write_parquet(tmp_path / "a.parquet", x, 97)
    write_parquet(tmp_path / "b.parquet", x, 1000)
    np.savetxt(tmp_path / "c.csv", x, delimiter=",", header="id,a,b", comments="", fmt="%.17g")
    ids = {}
    for name, options in (("a.parquet", {}), ("b.parquet", {}), ("c.csv", {"block_bytes": 2048})):
        source = open_source(str(tmp_path / name), **options)
        scan = scan_table(source, 5, 0.2, 0.1, cache=False)
        assert len(scan.pieces) > 1
        for label in (TRAIN, VAL, TEST):
            split = StreamedSplit(source, scan, label, 5, 0.2, 0.1)
            rows = np.concatenate([split.piece_rows(p) for p in range(len(scan.pieces))])
            assert rows.shape[0] == split.rows
            ids.setdefault(label, []).append(rows[:, 0].astype(int).tolist())
        np.testing.assert_allclose(rows, x[np.asarray(ids[TEST][-1])])  # CSV values round-trip
    for label in (TRAIN, VAL, TEST):
        assert ids[label][0] == ids[label][1] == ids[label][2]
    counts = [len(ids[label][0]) for label in (TRAIN, VAL, TEST)]
    assert sum(counts) == 3000 and not set(ids[TRAIN][0]) & set(ids[VAL][0])
    # binomial counts: 3 standard deviations around 20 % and 10 %
    assert abs(counts[1] - 600) < 3 * np.sqrt(3000 * 0.2 * 0.8) and abs(counts[2] - 300) < 3 * np.sqrt(270)
    labels = split_of_rows(0, 3000, 5, 0.2, 0.1)
    np.testing.assert_array_equal(np.flatnonzero(labels == VAL), np.sort(ids[VAL][0]))
    assert not np.array_equal(labels, split_of_rows(0, 3000, 6, 0.2, 0.1))  # the seed matters


def test_one_pass_statistics_match_numpy_in_float64(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    x = np.column_stack([1e8 + rng.normal(size=5000), rng.integers(0, 9, 5000), rng.normal(size=5000) * 1e-3])
    write_parquet(tmp_path / "t.parquet", x, 333)
    source = open_source(str(tmp_path / "t.parquet"))
    scan = scan_table(source, 0, 0.1, 0.05, cache=False)
    train = x[split_of_rows(0, 5000, 0, 0.1, 0.05) == TRAIN]
    assert scan.train_rows == train.shape[0]
    np.testing.assert_allclose(
        scan.mean, train.mean(axis=0), rtol=1e-14, atol=1e-12 * train.std(axis=0).max()
    )
    np.testing.assert_allclose(scan.std, train.std(axis=0), rtol=1e-9)
    np.testing.assert_array_equal(scan.minimum, train.min(axis=0))
    np.testing.assert_array_equal(scan.maximum, train.max(axis=0))
    np.testing.assert_array_equal(scan.integer, [False, True, False])
    # the naive sum of squares loses every digit of the 1e8-offset column's variance; the merge keeps them
    moments = ColumnMoments(1)
    for chunk in np.array_split(x[:, :1], 17):
        moments.add(chunk)
    naive = np.sqrt(np.mean(x[:, 0] ** 2) - np.mean(x[:, 0]) ** 2)
    assert abs(moments.std()[0] - x[:, 0].std()) < 1e-8 < abs(naive - x[:, 0].std())


def test_statistics_cache_is_used_only_when_it_matches(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    x = table_with_ids(800)
    path = write_parquet(tmp_path / "t.parquet", x, 100)
    source = open_source(str(path))
    first = scan_table(source, 0, 0.1, 0.1)
    key = stream_stats._key(source, 0, 0.1, 0.1)
    cached = cache_path(source, key)
    assert cached.is_file() and cached.parent == path.parent
    calls = []
    real_scan = stream_stats._scan
    monkeypatch.setattr(stream_stats, "_scan", lambda *a: calls.append(a) or real_scan(*a))
    again = scan_table(source, 0, 0.1, 0.1)
    assert calls == [] and np.array_equal(again.split_rows, first.split_rows)
    np.testing.assert_array_equal(again.mean, first.mean)

    # malformed caches are recomputed, never trusted
    values = json.loads(cached.read_text())
    for broken in (
        "{not json",
        json.dumps({**values, "mean": values["mean"][:-1]}),
        json.dumps({**values, "std": [-1.0] * len(values["std"])}),
        json.dumps({**values, "pieces": [[0, 0, 0, 0, 100, 1, 1, 1]] + values["pieces"][1:]}),
        json.dumps({**values, "mean": ["NaN"] * len(values["mean"])}),
    ):
        cached.write_text(broken)
        calls.clear()
        fixed = scan_table(source, 0, 0.1, 0.1)
        assert len(calls) == 1
        np.testing.assert_array_equal(fixed.mean, first.mean)
    # a changed file (new bytes, new mtime) gets a new key: the old cache no longer applies
    write_parquet(path, x[:700] * 2.0, 100)
    os.utime(path, ns=(os.stat(path).st_atime_ns, os.stat(path).st_mtime_ns + 10**9))
    changed = scan_table(open_source(str(path)), 0, 0.1, 0.1)
    assert changed.train_rows < first.train_rows
    assert not np.allclose(changed.mean, first.mean)


def test_split_stream_batches_cover_the_split_in_file_order(two_files: str) -> None:
    source = open_source(two_files)
    scan = scan_table(source, 3, 0.1, 0.1, cache=False)
    split = StreamedSplit(source, scan, VAL, 3, 0.1, 0.1)
    batches = list(SplitStream(split, 32).arrays())
    assert len(batches) == len(SplitStream(split, 32)) and all(b.shape[0] == 32 for b in batches[:-1])
    ids = np.concatenate(batches)[:, 0]
    np.testing.assert_array_equal(ids, np.flatnonzero(split_of_rows(0, 1000, 3, 0.1, 0.1) == VAL))
    noisy = np.concatenate(list(SplitStream(split, 32, dequantize_seed=4).arrays()))
    again = np.concatenate(list(SplitStream(split, 32, dequantize_seed=4).arrays()))
    noise = noisy - np.concatenate(batches)
    np.testing.assert_array_equal(noisy, again)  # one fixed draw
    assert noise.min() >= 0 and noise.max() < 1 and noise.std() > 0.2


def test_unstreamable_and_mismatched_files_are_clear_errors(tmp_path: Path) -> None:
    np.save(tmp_path / "t.npy", np.zeros((4, 2)))
    with pytest.raises(ValueError, match="cannot stream '.npy'"):
        open_source(str(tmp_path / "t.npy"))
    with pytest.raises(FileNotFoundError, match="no file matches"):
        open_source(str(tmp_path / "missing-*.parquet"))
    write_parquet(tmp_path / "p-0.parquet", np.zeros((4, 2)), 2)
    write_parquet(tmp_path / "p-1.parquet", np.zeros((4, 3)), 2)
    with pytest.raises(ValueError, match="has columns"):
        open_source(str(tmp_path / "p-*.parquet"))
    (tmp_path / "bad.csv").write_text("a,b\n1,2\n3,x\n")
    source = open_source(str(tmp_path / "bad.csv"))
    with pytest.raises(TypeError, match=r"non-numeric columns \['b'\]"):
        scan_table(source, 0, cache=False)
    (tmp_path / "nan.csv").write_text("a,b\n1,2\n3,nan\n4,5\n")
    with pytest.raises(ValueError, match=r"1 NaN and 0 infinite values in 1 rows; first row indices: \[1\]"):
        scan_table(open_source(str(tmp_path / "nan.csv")), 0, cache=False)
