"""One run of the main job (`flows fit --config configs/demo.yaml`) in a fresh process, shared by
`bench_overhead.py` and `main_job_configs.py` (a helper module, not a benchmark)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional


@dataclass
class MainJobRun:
    """What one run took and reported (None where its output did not say)."""

    seconds: float
    test_log_likelihood: Optional[float]
    steps: Optional[int]
    stdout: str


def run_main_job(tree: Path, arguments: list[str], env: Optional[dict[str, str]] = None) -> MainJobRun:
    """`flows fit --config configs/demo.yaml *arguments` with `tree`'s code and config (`env` added to the
    environment), timed from process start to exit."""
    command = [sys.executable, "-m", "flows.training.cli", "fit", "--config", "configs/demo.yaml", *arguments]
    full_env = {**os.environ, **(env or {}), "PYTHONPATH": str(tree)}
    start = time.perf_counter()
    result = subprocess.run(command, cwd=tree, env=full_env, check=True, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    log_likelihood = re.search(r"test log-likelihood: (\S+)", result.stdout)
    steps = re.search(r"; steps: (\d+);", result.stdout)
    return MainJobRun(
        seconds,
        float(log_likelihood.group(1)) if log_likelihood else None,
        int(steps.group(1)) if steps else None,
        result.stdout,
    )
