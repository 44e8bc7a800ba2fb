"""2-process DDP on CPU (gloo) gives the parameters of the equivalent single-process run.

The DDP run goes through the CLI in a subprocess (Lightning's `ddp` strategy re-launches the command for
rank 1); each rank takes a per-device batch of B rows of the same global batch of 2B rows, so after the
averaged gradients the parameters must equal those of one process with batch 2B.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from flows.training import run

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


def _last_state(run_dir: Path) -> dict[str, torch.Tensor]:
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    return checkpoint["state_dict"]


@pytest.mark.slow
def test_two_process_ddp_matches_single_process(tmp_path: Path) -> None:
    config = _config(tmp_path)
    path = tmp_path / "ddp.yaml"
    path.write_text(yaml.safe_dump(config))
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    for variable in (
        "RANK",
        "LOCAL_RANK",
        "WORLD_SIZE",
        "NODE_RANK",
        "MASTER_ADDR",
        "MASTER_PORT",
        "FLOWS_RUN_DIR",
    ):
        env.pop(variable, None)
    command = [sys.executable, "-m", "flows.training.cli", "fit", "--config", str(path)]
    command += ["--output.name", "ddp", "--trainer.strategy", "ddp", "--trainer.devices", "2"]
    ddp = subprocess.run(command, capture_output=True, text=True, env=env, timeout=170)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    assert "test log-likelihood" in ddp.stdout

    single_config = {**config, "train": {**config["train"], "batch_size": 64}}
    single_config["output"] = {**config["output"], "name": "single"}
    single = run(single_config, verbose=False)
    assert single.metrics["world_size"] == 1 and single.metrics["steps"] == 6

    ddp_state, single_state = _last_state(tmp_path / "ddp"), _last_state(tmp_path / "single")
    assert ddp_state.keys() == single_state.keys()
    initial = run(
        {
            **single_config,
            "train": {**single_config["train"], "max_steps": 1},
            "output": {**single_config["output"], "name": "one"},
        },
        verbose=False,
    )
    after_one_step = _last_state(initial.run_dir)
    moved = 0
    for key, value in single_state.items():
        torch.testing.assert_close(
            ddp_state[key], value, rtol=1e-4, atol=1e-5, msg=lambda m, key=key: f"{key}: {m}"
        )
        if value.is_floating_point() and not torch.allclose(value, after_one_step[key]):
            moved += 1
    assert moved > 0  # training moved the parameters, so the comparison is not between two initial states
