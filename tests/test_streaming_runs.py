"""Streamed runs end to end: the pipeline picks the streamed task, standardises with the training rows'
statistics, evaluates the hashed test rows, resumes bit-identically after SIGKILL mid-epoch, and loader
workers deliver the batches of the stream's layout."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from flows.datasets.stream import TEST, TRAIN, open_source, split_of_rows
from flows.datasets.stream_stats import scan_table
from flows.training.config import ConfigError, parse_config
from flows.training.evaluation import evaluate_log_prob
from flows.training.models import standardizer_of
from flows.training.pipeline import run, task_for
from flows.training.streaming import EpochLoader, ShardedTableStream, SplitStream, StreamedSplit
from flows.training.tasks.streaming import StreamingTableTask, load_streamed_table
from flows.training.tasks.tabular import TabularTask
from tests.test_durability import RUN_SPECIFIC, _assert_same_weights_and_log, _kill_and_resume
from tests.test_streaming import table_with_ids, write_parquet

TINY_NSF = {"name": "nsf", "transforms": 2, "hidden_features": [16, 16], "residual_blocks": 0, "bins": 4}


def gaussian_table(path: Path, n: int = 600) -> np.ndarray:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, 2)) @ np.array([[2.0, 0.5], [0.0, 0.7]]) + np.array([5.0, -3.0])
    write_parquet(path, x, 64)
    return x


def streamed_config(tmp_path: Path, name: str, **train: Any) -> dict[str, Any]:
    return {
        "seed": 3,
        "data": {"dataset": f"file:{tmp_path / 'table.parquet'}", "streaming": True, "shuffle_buffer": 100},
        "model": dict(TINY_NSF),
        "train": {
            "batch_size": 32,
            "max_epochs": 3,
            "lr": 3e-3,
            "num_threads": 1,
            "early_stopping_patience": None,
            **train,
        },
        "trainer": {"accelerator": "cpu"},
        "output": {
            "dir": str(tmp_path / "runs"),
            "name": name,
            "samples": 50,
            "plots": False,
            "progress_bar": False,
        },
    }


def test_a_streamed_run_standardises_and_evaluates_the_hashed_splits(tmp_path: Path) -> None:
    x = gaussian_table(tmp_path / "table.parquet")
    config = streamed_config(tmp_path, "streamed", max_epochs=1)
    assert isinstance(task_for(config), StreamingTableTask)
    result = run(config, verbose=False)
    labels = split_of_rows(0, x.shape[0], 3, 0.1, 0.1)
    train, test = x[labels == TRAIN], x[labels == TEST]
    standardizer = standardizer_of(result.flow)
    z = standardizer(torch.as_tensor(train, dtype=torch.float32))[0].double()  # (x - mean) / std
    torch.testing.assert_close(z.mean(0), torch.zeros(2, dtype=torch.float64), rtol=0, atol=1e-5)
    torch.testing.assert_close(z.std(0, correction=0), torch.ones(2, dtype=torch.float64), rtol=0, atol=1e-5)
    expected = evaluate_log_prob(result.flow, test)
    assert result.metrics["test_rows"] == test.shape[0]
    assert result.metrics["test_log_likelihood"] == pytest.approx(float(expected.mean()), rel=1e-6)
    assert result.metrics["train_rows"] == train.shape[0] and result.metrics["streamed"] is True
    assert result.metrics["steps"] == train.shape[0] // 32  # one epoch of the single shard's full chunks
    samples = np.loadtxt(result.run_dir / "samples.csv", delimiter=",", skiprows=1)
    assert samples.shape == (50, 2)


def test_streaming_auto_and_keys_that_do_not_apply(tmp_path: Path) -> None:
    gaussian_table(tmp_path / "table.parquet")
    config = streamed_config(tmp_path, "auto")
    config["data"]["streaming"] = "auto"
    assert isinstance(task_for(config), TabularTask) and not isinstance(task_for(config), StreamingTableTask)
    config["data"]["stream_memory_fraction"] = 1e-12  # the file is larger than this share of the RAM
    assert isinstance(task_for(config), StreamingTableTask)
    gaussian_table(tmp_path / "second.parquet")
    config["data"].update(dataset=f"file:{tmp_path / '*.parquet'}", stream_memory_fraction=0.25)
    assert isinstance(task_for(config), StreamingTableTask)  # a glob of several files always streams
    with pytest.raises(ConfigError, match="data.shards"):
        parse_config({"data": {"dataset": "toy:moons", "shards": 2}})
    with pytest.raises(ConfigError, match="data.shuffle_buffer"):
        parse_config({"data": {"dataset": "file:x.parquet", "shuffle_buffer": -1}})
    with pytest.raises(ConfigError, match="context_columns"):
        StreamingTableTask().resolve({**config, "data": {**config["data"], "context_columns": ["c0"]}})


def test_loader_workers_deliver_the_stream_layout(tmp_path: Path) -> None:
    write_parquet(tmp_path / "ids.parquet", table_with_ids(700), 50)
    source = open_source(str(tmp_path / "ids.parquet"))
    split = StreamedSplit(source, scan_table(source, 1, 0.0, 0.0, cache=False), TRAIN, 1, 0.0, 0.0)
    stream = ShardedTableStream(split, 16, 2, 50, True, 5, num_workers=2)
    stream.set_epoch(2)
    expected = [b for pair in zip(stream.batches(0), stream.batches(1)) for b in pair]
    got = [batch[0].double().numpy() for batch in EpochLoader(stream, lambda: 2, num_workers=2)]
    assert len(got) == len(expected) == len(stream)
    for a, b in zip(got, expected):
        np.testing.assert_array_equal(a, b.astype(np.float32))
    stream.resume_from(2, 3)  # mid-epoch: a fresh iterator starts at worker 0, which now makes batch 3
    resumed = [batch[0].double().numpy() for batch in EpochLoader(stream, lambda: 2, num_workers=2)]
    assert len(resumed) == len(expected) - 3
    for a, b in zip(resumed, expected[3:]):
        np.testing.assert_array_equal(a, b.astype(np.float32))


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_is_bit_identical(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gaussian_table(tmp_path / "table.parquet")
    # 480 training rows, batch 32: 15 batches an epoch; a checkpoint every 4 steps, killed at step 22, so
    # the last checkpoint (step 20) is 5 batches into the second epoch
    full = run(streamed_config(tmp_path, "full", max_epochs=2, val_every_n_steps=4), verbose=False)
    assert full.metrics["steps"] == 30
    killed = streamed_config(tmp_path, "killed", max_epochs=2, val_every_n_steps=4)
    run_dir = _kill_and_resume(killed, tmp_path, 22, 20, monkeypatch)
    resumed = json.loads((run_dir / "metrics.json").read_text())
    expected = {k: v for k, v in full.metrics.items() if k not in RUN_SPECIFIC}
    assert {k: v for k, v in resumed.items() if k not in RUN_SPECIFIC} == json.loads(json.dumps(expected))
    _assert_same_weights_and_log(tmp_path / "runs" / "full", run_dir)


def test_given_validation_and_test_files_are_streamed_whole(tmp_path: Path) -> None:
    x = gaussian_table(tmp_path / "table.parquet")
    np.savetxt(tmp_path / "val.csv", x[:77], delimiter=",", header="c0,c1", comments="", fmt="%.17g")
    write_parquet(tmp_path / "test.parquet", x[:55], 20)
    config = streamed_config(tmp_path, "given")
    config["data"].update(val_path=str(tmp_path / "val.csv"), test_path=str(tmp_path / "test.parquet"))
    table = load_streamed_table(parse_config(config).data, 3)
    assert (table.train.rows, table.val.rows, table.test.rows) == (600, 77, 55)  # nothing held out by hash
    val = np.concatenate(list(SplitStream(table.val, 32).arrays()))
    np.testing.assert_allclose(val, x[:77], rtol=1e-15)
    np.savetxt(tmp_path / "narrow.csv", x[:5, :1], delimiter=",", header="c0", comments="")
    config["data"]["val_path"] = str(tmp_path / "narrow.csv")
    with pytest.raises(ValueError, match="has 1 columns"):
        load_streamed_table(parse_config(config).data, 3)


def test_a_streamed_run_refuses_a_column_float32_cannot_resolve(tmp_path: Path) -> None:
    """The check of tables held in memory: 1e9 + N(0, 1) would train on a few rounded points."""
    x = np.random.default_rng(1).normal(size=(300, 2)) + [0.0, 1e9]
    write_parquet(tmp_path / "table.parquet", x, 64)
    with pytest.raises(ValueError, match=r"spread is too small .* c1 \(values up to 1e\+09 .* float32"):
        run(streamed_config(tmp_path, "offset", max_epochs=1), verbose=False)


def test_the_streamed_resolution_check_uses_every_training_row(tmp_path: Path) -> None:
    """Times sorted in the file: the first 10,000 rows span a std of 5,800 s, which float32 (steps of 128 s
    at 1.7e9) cannot resolve to 1%, but all 20,000 span 11,500 s, which it can."""
    x = np.column_stack([np.random.default_rng(2).normal(size=20_000), 1.7e9 + 2.0 * np.arange(20_000)])
    write_parquet(tmp_path / "table.parquet", x, 4096)
    result = run(streamed_config(tmp_path, "sorted", max_epochs=1, max_steps=2), verbose=False)
    assert result.metrics["steps"] == 2
