"""Streaming tables larger than memory: peak RSS, rows per second and KL gap of training and scoring, as the
file grows; and the throughput of a streamed epoch against the in-memory path on a table that fits.

The data are a Gaussian in D = 8 with a known covariance, written as Parquet (float32 columns, row groups of
1M rows), so the exact entropy H gives the KL gap = test NLL - H (nats). Every measurement runs in a fresh
subprocess that reports its own peak RSS (`resource.getrusage`: `prlimit --as` is unreliable with torch's
virtual reservations, and a cgroup may not be available), so RSS that stays flat as the file grows is the
evidence that memory does not depend on the row count.

    OMP_NUM_THREADS=1 python benchmarks/bench_streaming.py --sizes 2000000 8000000 --steps 300
    OMP_NUM_THREADS=1 python benchmarks/bench_streaming.py --sizes 50000000 --steps 300 --skip-epoch
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
FEATURES = 8
ROW_GROUP = 1_000_000
MODEL = {"name": "nsf", "transforms": 4, "hidden_features": [64, 64], "bins": 8}


def covariance() -> tuple[np.ndarray, np.ndarray]:
    """A fixed mean and a well-conditioned covariance with correlations: `L L^T` for a seeded `L`."""
    rng = np.random.default_rng(1234)
    lower = np.tril(rng.normal(scale=0.4, size=(FEATURES, FEATURES)), -1) + np.diag(
        rng.uniform(0.5, 2.0, FEATURES)
    )
    return rng.normal(scale=3.0, size=FEATURES), lower


def entropy() -> float:
    """Differential entropy of the generator, nats: `D/2 log(2 pi e) + log det L`."""
    _, lower = covariance()
    return 0.5 * FEATURES * math.log(2 * math.pi * math.e) + float(np.sum(np.log(np.diag(lower))))


def write_table(path: Path, rows: int) -> Path:
    """`rows` Gaussian rows as Parquet, written one row group at a time (memory independent of `rows`)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if path.is_file() and pq.ParquetFile(path).metadata.num_rows == rows:
        return path
    mean, lower = covariance()
    rng = np.random.default_rng(rows)
    temporary = path.with_name(path.name + ".tmp")
    schema = pa.schema([(f"x{i}", pa.float32()) for i in range(FEATURES)])
    with pq.ParquetWriter(temporary, schema) as writer:
        for start in range(0, rows, ROW_GROUP):
            x = (rng.standard_normal((min(ROW_GROUP, rows - start), FEATURES)) @ lower.T + mean).astype(
                np.float32
            )
            writer.write_table(pa.table({f"x{i}": x[:, i] for i in range(FEATURES)}, schema=schema))
    os.replace(temporary, path)
    return path


def _config(path: Path, run_dir: Path, name: str, streaming: bool, **train: Any) -> dict[str, Any]:
    return {
        "seed": 0,
        "data": {
            "dataset": f"file:{path}",
            "streaming": streaming,
            "val_fraction": train.pop("val_fraction", 0.0005),
            "test_fraction": train.pop("test_fraction", 0.0005),
            "dequantize": False,
        },
        "model": dict(MODEL),
        "train": {"batch_size": 1024, "lr": 1e-3, "warmup_steps": 50, "num_threads": 1, **train},
        "trainer": {"accelerator": "cpu"},
        "output": {
            "dir": str(run_dir),
            "name": name,
            "samples": 0,
            "plots": False,
            "progress_bar": False,
            "logger": "none",
        },
    }


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _batch_timer() -> list[tuple[int, float]]:
    """Install a callback recording `(epoch, time)` at the end of every training batch; returns the list."""
    from lightning.pytorch.callbacks import Callback

    import flows.training.trainer as trainer_module

    times: list[tuple[int, float]] = []

    class BatchTimer(Callback):
        def on_train_batch_end(self, trainer: Any, *args: Any) -> None:
            times.append((int(trainer.current_epoch), time.perf_counter()))

    callbacks = trainer_module.safety_callbacks
    trainer_module.safety_callbacks = lambda monitor="val_nll": [*callbacks(monitor), BatchTimer()]
    return times


def child_train(arguments: argparse.Namespace) -> dict[str, Any]:
    """Scan (statistics pass, cached) then train `--steps` steps streamed; rows/s, peak RSS, KL gap."""
    from flows.training import run
    from flows.training.config import parse_config
    from flows.training.tasks.streaming import load_streamed_table

    path, run_dir = Path(arguments.file), Path(arguments.run_dir)
    config = _config(path, run_dir, arguments.name, True, max_steps=arguments.steps, max_epochs=1)
    for cached in path.parent.glob(path.name + ".flows-stats.*.json"):  # time the pass, not a cache read
        cached.unlink()
    start = time.perf_counter()
    table = load_streamed_table(parse_config(config).data, 0)
    scan_seconds = time.perf_counter() - start
    times = _batch_timer()
    result = run(config, verbose=False)
    steps = len(times)
    rate = (steps - 1) * 1024 / (times[-1][1] - times[0][1])
    gap = -result.metrics["test_log_likelihood"] - entropy()
    return {
        "rows": sum(p.rows for p in table.train.scan.pieces),
        "file_mb": path.stat().st_size / 1e6,
        "scan_seconds": scan_seconds,
        "train_rows_per_s": rate,
        "steps": steps,
        "test_rows": result.metrics["test_rows"],
        "gap": gap,
        "gap_2se": result.metrics["test_log_likelihood_2se"],
        "checkpoint": result.metrics["checkpoint"],
        "peak_rss_mb": _peak_rss_mb(),
    }


def child_score(arguments: argparse.Namespace) -> dict[str, Any]:
    """`flows score` over the whole file into `.npy`; rows/s and peak RSS."""
    from flows.training.cli import main

    out = Path(arguments.run_dir) / f"{arguments.name}-scores.npy"
    start = time.perf_counter()
    status = main(["score", "--ckpt", arguments.checkpoint, "--data", arguments.file, "--out", str(out)])
    seconds = time.perf_counter() - start
    scores = np.load(out, mmap_mode="r")
    mean = float(np.mean(scores[: min(len(scores), 2_000_000)]))
    rows = int(scores.shape[0])
    out.unlink()
    return {
        "status": status,
        "rows": rows,
        "score_rows_per_s": rows / seconds,
        "gap_first_2m": -mean - entropy(),
        "peak_rss_mb": _peak_rss_mb(),
    }


def child_epoch(arguments: argparse.Namespace) -> dict[str, Any]:
    """Two epochs on a table that fits, streamed or in memory; rows/s of the second epoch's steps."""
    from flows.training import run

    times = _batch_timer()
    streaming = arguments.streaming == "true"
    config = _config(
        Path(arguments.file),
        Path(arguments.run_dir),
        arguments.name,
        streaming,
        max_epochs=2,
        val_fraction=0.05,
        test_fraction=0.05,
    )
    run(config, verbose=False)
    second = [t for epoch, t in times if epoch == 1]
    return {
        "epoch_rows_per_s": (len(second) - 1) * 1024 / (second[-1] - second[0]),
        "peak_rss_mb": _peak_rss_mb(),
    }


def _child(mode: str, **options: Any) -> dict[str, Any]:
    command = [sys.executable, __file__, "--child", mode]
    for key, value in options.items():
        command += [f"--{key.replace('_', '-')}", str(value)]
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{mode} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--sizes", type=int, nargs="*", default=[2_000_000, 8_000_000], help="rows of each file"
    )
    parser.add_argument(
        "--score-sizes", type=int, nargs="*", default=None, help="sizes to score too (default: every size)"
    )
    parser.add_argument("--steps", type=int, default=300, help="streamed training steps (batch 1024)")
    parser.add_argument("--fit-rows", type=int, default=200_000, help="rows of the table that fits in memory")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds of the epoch comparison")
    parser.add_argument("--dir", default="/tmp/flows-bench-streaming", help="where the tables and runs go")
    parser.add_argument("--skip-epoch", action="store_true", help="skip the streamed vs in-memory epoch")
    parser.add_argument("--child", choices=["train", "score", "epoch"], help=argparse.SUPPRESS)
    for hidden in ("file", "run-dir", "name", "checkpoint", "streaming"):
        parser.add_argument(f"--{hidden}", help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if arguments.child:
        import torch

        torch.set_num_threads(1)
        work = {"train": child_train, "score": child_score, "epoch": child_epoch}[arguments.child]
        print(json.dumps(work(arguments)))
        return

    directory = Path(arguments.dir)
    directory.mkdir(parents=True, exist_ok=True)
    print(f"# Gaussian D={FEATURES}, entropy {entropy():.4f} nats; model {MODEL}; batch 1024; one thread")
    print(
        "| rows | file MB | scan rows/s | train rows/s | train peak RSS MB | KL gap (nats) | score rows/s | score peak RSS MB |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for rows in arguments.sizes:
        start = time.perf_counter()
        path = write_table(directory / f"gauss-{rows}.parquet", rows)
        print(f"(wrote {path} in {time.perf_counter() - start:.0f} s)", file=sys.stderr)
        train = _child(
            "train", file=path, run_dir=directory / "runs", name=f"train-{rows}", steps=arguments.steps
        )
        print(f"(trained on {rows:,} rows: {json.dumps(train)})", file=sys.stderr, flush=True)
        score = {"score_rows_per_s": math.nan, "peak_rss_mb": math.nan}
        if arguments.score_sizes is None or rows in arguments.score_sizes:
            score = _child(
                "score", file=path, run_dir=directory, name=f"score-{rows}", checkpoint=train["checkpoint"]
            )
        print(
            f"| {rows:,} | {train['file_mb']:.0f} | {rows / train['scan_seconds']:,.0f} | "
            f"{train['train_rows_per_s']:,.0f} | {train['peak_rss_mb']:.0f} | {train['gap']:.4f} +- "
            f"{train['gap_2se']:.4f} ({train['test_rows']:,} test rows) | {score['score_rows_per_s']:,.0f} | "
            f"{score['peak_rss_mb']:.0f} |",
            flush=True,
        )
    if arguments.skip_epoch:
        return
    path = write_table(directory / f"gauss-{arguments.fit_rows}.parquet", arguments.fit_rows)
    rates: dict[str, list[float]] = {"true": [], "false": []}
    for round_index in range(arguments.rounds):  # interleaved: both see the same machine load
        for streaming in ("false", "true"):
            result = _child(
                "epoch",
                file=path,
                run_dir=directory / "runs",
                name=f"epoch-{streaming}-{round_index}",
                streaming=streaming,
            )
            rates[streaming].append(result["epoch_rows_per_s"])
    ratios = [memory / streamed for memory, streamed in zip(rates["false"], rates["true"])]
    print(
        f"\nepoch on {arguments.fit_rows:,} rows (fits in memory), median of {arguments.rounds} interleaved rounds: "
        f"in-memory {statistics.median(rates['false']):,.0f} rows/s, streamed {statistics.median(rates['true']):,.0f} "
        f"rows/s; streamed / in-memory epoch time {statistics.median(ratios):.2f}x "
        f"(per round: {', '.join(f'{r:.2f}' for r in ratios)})"
    )


if __name__ == "__main__":
    main()
