"""Smoke tests of the benchmark scripts: `bench_peers.py --quick` and `bench_compile.py` run and print their
tables (no timing asserted).

Peers that are not installed (they live in the optional `bench` extra) are skipped by the script itself.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_peers.py"


@pytest.mark.slow
def test_bench_peers_quick_prints_a_table() -> None:
    command = [sys.executable, str(SCRIPT), "--quick", "--threads", "1", "--batch", "64", "--features", "4"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=900, check=False)
    assert result.returncode == 0, result.stderr[-4000:]
    output = result.stdout
    for architecture in ("maf", "nsf-coupling", "nsf-ar", "realnvp"):
        assert f"## {architecture}  D=4" in output, output[-4000:]
    rows = [line for line in output.splitlines() if line.startswith("flows ") and " | " in line]
    assert len(rows) == 4, output[-4000:]
    for row in rows:
        cells = [cell.strip() for cell in row.split("|")]
        assert float(cells[1].split()[0]) > 0  # log_prob milliseconds
    assert "flows fast sampling: fixed point" in output
    floors = [line for line in output.splitlines() if line.startswith("floor ") and " | " in line]
    assert len(floors) == 4, output[-4000:]
    assert output.count("ATen calls per training step: flows ") == 4, output[-4000:]


def test_matmul_floor_holds_every_linear_layer_of_the_flow() -> None:
    """The floor row's model runs exactly the flow's dense layer shapes (a lower bound, not a smaller net)."""
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        import bench_peers
    finally:
        sys.path.remove(str(SCRIPT.parent))
    import torch

    for architecture in ("maf", "nsf-coupling", "nsf-ar", "realnvp"):
        spec = bench_peers.Spec(architecture, features=6, transforms=3, hidden=16)
        flow = bench_peers.build_flows(spec, 16).module
        linears = [m for m in flow.modules() if isinstance(m, torch.nn.Linear)]
        floor = bench_peers.MatmulFloor(flow, batch=5)
        assert [tuple(w.shape) for w in floor.weights] == [tuple(m.weight.shape) for m in linears]
        assert sum(p.numel() for p in floor.parameters()) == sum(
            p.numel() for m in linears for p in m.parameters()
        )
        out = floor(torch.zeros(5, 6))
        assert out.shape == (5,) and torch.isfinite(out).all()
        out.sum().backward()
        assert all(w.grad is not None for w in floor.weights)


def test_training_budget_is_the_time_a_target_leaves_beyond_the_floor() -> None:
    """fastest peer 30 ms, floor 10 ms: 1.5x needs flows <= 20 ms, so 10 ms beyond the floor against 15 now
    (33% less); a floor above the target's time forbids it."""
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        import bench_peers
    finally:
        sys.path.remove(str(SCRIPT.parent))

    def result(library: str, seconds: float, calls: int) -> object:
        return bench_peers.Result(library, 1, 1, 1.0, seconds, 1.0, 0.0, "", train_calls=calls)

    results = [result("flows", 0.025, 1800), result("zuko", 0.030, 2100), result("floor", 0.010, 90)]
    line = bench_peers.training_budget(results)
    assert "ATen calls per training step: flows 1,800, zuko 2,100" in line and "floor 90" not in line
    assert "needs flows <= 20.00 ms" in line and "is 15.00 ms and may be 10.00 ms (33% less)" in line
    results[2] = result("floor", 0.021, 90)
    assert "may be 0.00 ms (the floor forbids it)" in bench_peers.training_budget(results)
    results[:] = [result("flows", 0.018, 1800), result("zuko", 0.030, 2100), result("floor", 0.010, 90)]
    assert "is 8.00 ms and may be 10.00 ms (met, by the medians)" in bench_peers.training_budget(results)


def test_paired_ratio_cancels_load_changes_between_rounds() -> None:
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        import bench_peers
    finally:
        sys.path.remove(str(SCRIPT.parent))
    load = [1.0, 3.0, 1.5, 2.0, 5.0]  # the machine's slowdown in each round
    peer = [0.02 * f for f in load]
    ours = [0.01 * f for f in load]
    assert bench_peers.paired_ratio(peer, ours) == pytest.approx(2.0)
    # Fewer than three rounds: the ratio of the medians.
    assert bench_peers.paired_ratio([4.0, 2.0], [1.0]) == pytest.approx(3.0)


@pytest.mark.slow
def test_bench_overhead_prints_ratios_against_the_plain_loop() -> None:
    script = SCRIPT.parent / "bench_overhead.py"
    command = [
        sys.executable,
        str(script),
        "--steps",
        "3",
        "--rounds",
        "1",
        "--rows",
        "100",
        "--main-epochs",
        "0",
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stderr[-4000:]
    rows = [line.split("|") for line in result.stdout.splitlines() if line.strip().startswith("3 |")]
    cases = {cells[1].strip(): float(cells[3]) for cells in rows}
    assert cases["plain flows"] == 1.0 and cases["estimator"] > 0, result.stdout[-4000:]
    # each estimator against the plain loop over its own model (the fitted mixture base, or the normal one)
    same_model = {cells[1].strip(): cells[4].strip() for cells in rows}
    assert "plain (gmm)" in cases and float(same_model["estimator"]) > 0, result.stdout[-4000:]
    assert float(same_model["est. normal"]) == pytest.approx(cases["est. normal"]), result.stdout[-4000:]


@pytest.mark.slow
def test_bench_tarflow_sampling_quick_agrees_across_methods() -> None:
    """`bench_tarflow_sampling.py --quick` runs; the cached and Jacobi samples equal the naive loop's."""
    script = SCRIPT.parent / "bench_tarflow_sampling.py"
    result = subprocess.run(
        [sys.executable, str(script), "--quick"], capture_output=True, text=True, timeout=900, check=False
    )
    assert result.returncode == 0, result.stderr[-4000:]
    rows = [
        line
        for line in result.stdout.splitlines()
        if line.split("|")[0].strip() in ("naive loop", "KV cache", "Jacobi")
    ]
    assert len(rows) == 6, result.stdout
    for row in rows:
        cells = [cell.strip() for cell in row.split("|")]
        assert float(cells[1]) > 0  # samples/s
        assert float(cells[4]) < 1e-4, row  # max |x - x_naive|


BENCHMARKS = SCRIPT.parent


@pytest.mark.slow
def test_sampling_gradient_benchmark_reports_every_estimator() -> None:
    import json

    command = [sys.executable, str(BENCHMARKS / "sampling_gradients.py"), "--target", "double_well"]
    command += ["--warmup-steps", "2", "--repeats", "5", "--batch", "16", "--hidden", "8"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stderr[-4000:]
    report = json.loads(result.stdout)
    for kind in ("reparam", "path", "path_two_pass"):
        assert report[kind]["total_variance"] > 0 and report[kind]["median_step_ms"] > 0
    assert report["time_ratio_path_over_two_pass"] > 0


@pytest.mark.slow
def test_sampling_peers_benchmark_prints_its_table() -> None:
    command = [sys.executable, str(BENCHMARKS / "sampling_peers.py"), "--targets", "double_well"]
    command += ["--steps", "7", "--batch", "32", "--eval", "1000"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stderr[-4000:]
    rows = [line for line in result.stdout.splitlines() if line.startswith("| double_well |")]
    assert {row.split("|")[2].strip() for row in rows} >= {"flows reparam", "flows path"}
    for row in rows:
        assert 0 < float(row.split("|")[4]) <= 1  # the normalised ESS


def test_bench_streaming_entropy_is_that_of_its_gaussian(tmp_path: Path) -> None:
    """The KL gap of `bench_streaming.py` subtracts the exact entropy of the rows it writes."""
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        import bench_streaming
    finally:
        sys.path.remove(str(SCRIPT.parent))
    import math

    import numpy as np
    import pyarrow.parquet as pq

    mean, lower = bench_streaming.covariance()
    covariance = lower @ lower.T
    features = covariance.shape[0]
    expected = 0.5 * (features * math.log(2 * math.pi * math.e) + np.linalg.slogdet(covariance)[1])
    assert bench_streaming.entropy() == pytest.approx(expected, rel=1e-12)
    path = bench_streaming.write_table(tmp_path / "g.parquet", 20_000)
    rows = pq.read_table(path).to_pandas().to_numpy(dtype=np.float64)
    assert rows.shape == (20_000, features)
    np.testing.assert_allclose(rows.mean(0), mean, atol=5 * np.sqrt(np.diag(covariance) / 20_000).max())
    np.testing.assert_allclose(np.cov(rows.T), covariance, atol=0.1 * np.abs(covariance).max())


@pytest.mark.slow
def test_sampling_ais_benchmark_compares_is_and_ais(tmp_path: Path) -> None:
    from flows.training import run

    config = {
        "target": {"name": "funnel", "features": 3, "validation_samples": 64, "evaluation_samples": 256},
        "model": {"name": "maf", "transforms": 1, "hidden_features": [8]},
        "train": {"objective": "reverse_kl", "batch_size": 32, "max_steps": 3, "num_threads": 1},
        "output": {"dir": str(tmp_path), "name": "f", "samples": 0, "plots": False, "progress_bar": False},
    }
    checkpoint = run(config, verbose=False).checkpoint
    command = [sys.executable, str(BENCHMARKS / "sampling_ais.py"), "--ckpt", str(checkpoint)]
    command += ["--target", "funnel", "--features", "3", "-n", "200", "--steps", "2"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stderr[-4000:]
    lines = result.stdout.splitlines()
    assert lines[0].startswith("IS: n 200 log Z") and lines[1].startswith("AIS 2 x HMC")
    assert float(lines[2].split(":")[1]) > 0


@pytest.mark.slow
def test_bench_compile_prints_its_row() -> None:
    """`bench_compile.py` compiles a MAF training step in a fresh process and prints calls, times, speed-up."""
    script = SCRIPT.parent / "bench_compile.py"
    command = [sys.executable, str(script), "--cases", "maf-8", "--steps", "5"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=900, check=False)
    assert result.returncode == 0, result.stderr[-4000:]
    row = next(line for line in result.stdout.splitlines() if line.startswith("maf-8"))
    cells = [cell.strip() for cell in row.split("|")]
    assert cells[1] == "98,640" and int(cells[2].replace(",", "")) > 100, row  # parameters, ATen calls
    eager_ms, compiled_ms, compile_s = float(cells[3]), float(cells[4]), float(cells[6])
    assert eager_ms > 0 and compiled_ms > 0 and compile_s > 0, row
    assert float(cells[5].rstrip("x")) == pytest.approx(eager_ms / compiled_ms, rel=0.02), row
