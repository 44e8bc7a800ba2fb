"""Smoke test of `benchmarks/bench_peers.py --quick`: it runs and prints a table (no timing asserted).

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
