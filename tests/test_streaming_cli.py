"""`flows score` streams its input and `flows sample` writes in chunks: the same numbers as scoring or
sampling the whole table at once, whatever the chunk size, written atomically."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from flows.training import cli_score
from flows.training.checkpoints import load_model
from flows.training.cli import main
from flows.training.evaluation import draw_samples, evaluate_log_prob
from flows.training.pipeline import run
from flows.training.table_writer import table_writer
from tests.test_streaming import write_parquet


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("streaming_cli")
    x = np.random.default_rng(0).normal(size=(400, 3)) * [1.0, 2.0, 0.5] + [0.0, 1.0, -1.0]
    np.savetxt(tmp / "train.csv", x, delimiter=",", header="a,b,c", comments="")
    config = {
        "data": {"dataset": f"file:{tmp / 'train.csv'}", "streaming": False},
        "model": {"name": "nsf", "transforms": 2, "hidden_features": [8, 8], "bins": 4},
        "train": {"batch_size": 64, "max_steps": 3, "num_threads": 1},
        "trainer": {"accelerator": "cpu"},
        "output": {"dir": str(tmp), "name": "run", "samples": 0, "plots": False, "progress_bar": False},
    }
    return Path(run(config, verbose=False).checkpoint)


def test_score_streams_parquet_and_csv_pieces(
    checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cli_score, "CHUNK_ROWS", 37)  # several chunks per piece, pieces of 100 rows
    rows = np.random.default_rng(1).normal(size=(1000, 3))
    flow = load_model(checkpoint).flow
    expected = evaluate_log_prob(flow, rows)
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(
        pa.table({"c": rows[:, 2], "a": rows[:, 0], "b": rows[:, 1]}),
        tmp_path / "t.parquet",
        row_group_size=100,
    )
    np.savetxt(tmp_path / "t.csv", rows, delimiter=",", header="a,b,c", comments="", fmt="%.17g")
    for name, out in (("t.parquet", "lp.npy"), ("t.csv", "lp.csv")):
        assert (
            main(
                [
                    "score",
                    "--ckpt",
                    str(checkpoint),
                    "--data",
                    str(tmp_path / name),
                    "--out",
                    str(tmp_path / out),
                ]
            )
            == 0
        )
    from_parquet = np.load(tmp_path / "lp.npy")  # the columns were matched by name (c, a, b in the file)
    from_csv = np.loadtxt(tmp_path / "lp.csv", delimiter=",", skiprows=1)
    assert from_parquet.shape == (1000, 1)
    np.testing.assert_allclose(from_parquet[:, 0], expected, rtol=1e-6)
    np.testing.assert_allclose(from_csv, expected, rtol=1e-6)


def test_score_errors_leave_no_output(
    checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = np.random.default_rng(2).normal(size=(300, 3))
    rows[250, 1] = np.nan  # in a late piece: the output written so far must not appear
    write_parquet(tmp_path / "bad.parquet", rows, 50, names=["a", "b", "c"])
    out = tmp_path / "lp.csv"
    assert (
        main(["score", "--ckpt", str(checkpoint), "--data", str(tmp_path / "bad.parquet"), "--out", str(out)])
        == 2
    )
    assert "first row indices: [250]" in capsys.readouterr().err
    assert not out.exists() and not list(tmp_path.glob(".lp.csv*"))


def test_sample_writes_chunks_that_equal_one_draw(
    checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cli_score, "SAMPLE_CHUNK_ROWS", 7)
    for out in ("s.npy", "s.csv"):
        assert (
            main(
                ["sample", "--ckpt", str(checkpoint), "-n", "50", "--seed", "4", "--out", str(tmp_path / out)]
            )
            == 0
        )
    expected = draw_samples(load_model(checkpoint).flow, 50, seed=4, batch_size=7)
    np.testing.assert_allclose(np.load(tmp_path / "s.npy"), expected, rtol=1e-12)
    np.testing.assert_allclose(np.loadtxt(tmp_path / "s.csv", delimiter=",", skiprows=1), expected, rtol=1e-7)


def test_npy_writer_fills_in_its_header_last(tmp_path: Path) -> None:
    chunks = [np.random.default_rng(i).normal(size=(n, 4)) for i, n in enumerate((3, 0, 1000, 1))]
    with table_writer(tmp_path / "t.npy", list("abcd")) as writer:
        for chunk in chunks:
            writer.write(chunk)
        assert not (tmp_path / "t.npy").exists()  # only complete tables appear
    loaded = np.load(tmp_path / "t.npy")
    np.testing.assert_array_equal(loaded, np.concatenate(chunks))
    with open(tmp_path / "t.npy", "rb") as handle:
        assert np.lib.format.read_magic(handle) == (1, 0)
        assert handle.seek(0, 2) == 128 + loaded.nbytes  # the data start 64-byte aligned
    with (
        pytest.raises(ValueError, match=r"shape \(n, 4\)"),
        table_writer(tmp_path / "u.npy", list("abcd")) as writer,
    ):
        writer.write(np.zeros((2, 3)))
    assert not (tmp_path / "u.npy").exists()


def test_score_memory_does_not_grow_with_the_rows(
    checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """numpy's allocations (traced) while scoring 10x more rows stay those of one piece and one chunk."""
    import tracemalloc

    monkeypatch.setattr(cli_score, "CHUNK_ROWS", 2048)
    peaks = []
    for rows in (10_000, 100_000):
        x = np.random.default_rng(rows).normal(size=(rows, 3))
        write_parquet(tmp_path / f"t{rows}.parquet", x, 5_000, names=["a", "b", "c"])
        tracemalloc.start()
        out = tmp_path / f"lp{rows}.npy"
        assert (
            main(
                [
                    "score",
                    "--ckpt",
                    str(checkpoint),
                    "--data",
                    str(tmp_path / f"t{rows}.parquet"),
                    "--out",
                    str(out),
                ]
            )
            == 0
        )
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
        assert np.load(out).shape == (rows, 1)
    # the larger table alone is 2.4 MB of float64: holding it would show
    assert peaks[1] < 1.5 * peaks[0] + 500_000, peaks


def test_parquet_column_names_come_from_the_schema_without_reading_rows(tmp_path, monkeypatch) -> None:
    """`flows score` asks for a file's column names first; for Parquet that must not load the table (a
    16M-row file briefly took 2 GB when the names came from `pandas.read_parquet`)."""
    import pandas as pd

    from flows.datasets import table_columns

    frame = pd.DataFrame(np.zeros((3, 2)), columns=["a", "b"], index=pd.Index([5, 6, 7], name="kept"))
    with_index, plain = tmp_path / "with_index.parquet", tmp_path / "plain.parquet"
    frame.to_parquet(with_index, index=True)
    frame.to_parquet(plain, index=False)
    expected = {path: list(pd.read_parquet(path).columns) for path in (with_index, plain)}

    def refuse(*args, **kwargs):
        raise AssertionError("read the rows")

    monkeypatch.setattr(pd, "read_parquet", refuse)
    for path, names in expected.items():
        assert table_columns(path) == names == ["a", "b"]
