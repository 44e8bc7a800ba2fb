"""2-process DDP on CPU (gloo) gives the parameters of the equivalent single-process run.

The DDP run goes through the CLI in a subprocess (Lightning's `ddp` strategy re-launches the command for
rank 1); each rank takes a per-device batch of B rows of the same global batch of 2B rows (data rows, or a
target run's base samples and target samples), so after the averaged gradients the parameters must equal
those of one process with batch 2B.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from flows.training import run
from tests.helpers import assert_same_trained_state, ddp_environment, last_state

REPO = Path(__file__).resolve().parents[1]


def _config(directory: Path) -> dict:
    return {
        "seed": 7,
        "data": {"dataset": "toy:moons", "n_train": 512, "n_val": 64, "n_test": 64},
        # An NSF with ActNorm-free coupling splines, LU linear layers and random permutations; small enough
        # that two CPU processes take a few steps in seconds.
        "model": {
            "name": "nsf",
            "transforms": 2,
            "hidden_features": [16, 16],
            "residual_blocks": 1,
            "bins": 4,
        },
        "train": {
            "batch_size": 32,
            "max_steps": 6,
            "max_epochs": 10,
            "lr": 3e-3,
            "warmup_steps": 2,
            "early_stopping_patience": None,
            "num_threads": 1,
            "mollification": {"fraction": 0.5, "sigma": 0.5},
        },
        "trainer": {"accelerator": "cpu"},
        "output": {
            "dir": str(directory),
            "samples": 0,
            "plots": False,
            "progress_bar": False,
            "logger": "none",
        },
    }


def _target_config(directory: Path, objective: str) -> dict:
    config = _config(directory)
    del config["data"]
    config["target"] = {"name": "funnel", "features": 4, "validation_samples": 256, "evaluation_samples": 512}
    config["model"] = {"name": "maf", "transforms": 2, "hidden_features": [16, 16], "scale_bound": 6.0}
    config["train"] = {**config["train"], "objective": objective, "warmup_steps": 0}
    del config["train"]["mollification"]
    return config


def _run_two_processes(tmp_path: Path, config: dict, strategy: str = "ddp") -> subprocess.CompletedProcess:
    """`flows fit` of `config` with Lightning's `strategy` on 2 CPU processes (run directory `tmp_path / "ddp"`)."""
    path = tmp_path / "ddp.yaml"
    path.write_text(yaml.safe_dump(config))
    command = [sys.executable, "-m", "flows.training.cli", "fit", "--config", str(path)]
    command += ["--output.name", "ddp", "--trainer.strategy", strategy, "--trainer.devices", "2"]
    return subprocess.run(
        command, capture_output=True, text=True, env=ddp_environment(REPO), timeout=170, cwd=tmp_path
    )


def _ddp_matches_single(tmp_path: Path, config: dict, expect: str, strategy: str = "ddp") -> None:
    """Train `config` on 2 processes (batch B) and on one (batch 2B): the same parameters after 6 steps."""
    ddp = _run_two_processes(tmp_path, config, strategy)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    assert expect in ddp.stdout

    single_config = {**config, "train": {**config["train"], "batch_size": 2 * config["train"]["batch_size"]}}
    single_config["output"] = {**config["output"], "name": "single"}
    single = run(single_config, verbose=False)
    assert single.metrics["world_size"] == 1 and single.metrics["steps"] == 6
    initial = run(
        {
            **single_config,
            "train": {**single_config["train"], "max_steps": 1},
            "output": {**single_config["output"], "name": "one"},
        },
        verbose=False,
    )
    assert_same_trained_state(
        last_state(tmp_path / "ddp"), last_state(tmp_path / "single"), last_state(initial.run_dir)
    )


@pytest.mark.slow
def test_two_process_ddp_matches_single_process(tmp_path: Path) -> None:
    _ddp_matches_single(tmp_path, _config(tmp_path), "test log-likelihood")


@pytest.mark.slow
def test_two_process_ddp_spawn_matches_single_process(tmp_path: Path) -> None:
    """`ddp_spawn` hands the trained weights back to the main process in a bare state_dict file, which the run's
    checkpoint reader refused as "not a flows checkpoint" before it read Lightning's own files too."""
    _ddp_matches_single(tmp_path, _config(tmp_path), "test log-likelihood", strategy="ddp_spawn")


@pytest.mark.slow
def test_two_process_target_run_matches_single_process(tmp_path: Path) -> None:
    """A target run's ranks push their rows of one global batch of base samples (seeded by seed and step)
    through the flow; before, each rank drew its own stream and the parameters depended on the process count."""
    _ddp_matches_single(tmp_path, _target_config(tmp_path, "reverse_kl_path"), "target funnel: ESS")


@pytest.mark.slow
def test_two_process_ddp_agrees_on_the_compile_choice(tmp_path: Path) -> None:
    """`train.compile: auto` chooses after 23 steps; the ranks take rank 0's choice through the strategy's
    broadcast (a rank that broadcast alone would hang the run)."""
    config = _config(tmp_path)
    config["train"] = {**config["train"], "max_steps": 26, "compile": "auto"}
    ddp = _run_two_processes(tmp_path, config)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    assert "steps: 26" in ddp.stdout and "train.compile auto: eager (3 steps left" in ddp.stdout, ddp.stdout
