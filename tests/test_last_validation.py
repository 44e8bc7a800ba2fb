"""The last training step of every run is validated (`flows.training.last_validation.ValidateLastStep`)."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import flows

SMALL = {"transforms": 2, "hidden_features": [16, 16], "num_threads": 1, "base": "normal"}


def _tables() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.normal(size=(300, 2)), rng.normal(size=(100, 2))


def _validated_steps(run_dir: Path) -> list[int]:
    """The optimiser steps (1-based) after which `val_nll` was logged."""
    with open(run_dir / "logs" / "metrics.csv", newline="") as handle:
        return [int(row["step"]) + 1 for row in csv.DictReader(handle) if row.get("val_nll")]


def test_a_fit_shorter_than_one_validation_interval_still_validates_its_final_weights() -> None:
    x, x_val = _tables()
    est = flows.DensityEstimator(max_steps=20, **SMALL).fit(x, X_val=x_val)  # validation every 50 steps
    assert est.n_steps_ == 20
    assert est.best_val_nll_ is not None
    # the one validation scored the weights the fit ends with (in memory: the best are the final ones)
    assert est.best_val_nll_ == pytest.approx(-float(np.mean(est.score_samples(x_val))), abs=1e-4)


@pytest.mark.parametrize(
    ("limits", "expected"),
    [
        ({"max_steps": 7}, [3, 6, 7]),
        # 300 rows in full batches of 64: 4 steps an epoch, so the run ends at step 8, between two validations
        ({"max_epochs": 2, "batch_size": 64}, [3, 6, 8]),
        ({"max_steps": 6}, [3, 6]),  # the last step is a validation step already: validated once
    ],
)
def test_the_last_step_is_validated_once_whatever_the_interval(
    tmp_path: Path, limits: dict[str, Any], expected: list[int]
) -> None:
    x, x_val = _tables()
    est = flows.DensityEstimator(val_every_n_steps=3, output_dir=tmp_path, **limits, **SMALL)
    est.fit(x, X_val=x_val)
    assert _validated_steps(tmp_path) == expected
    assert est.n_steps_ == expected[-1]


def _run_config(tmp_path: Path, **train: Any) -> dict[str, Any]:
    return {
        "seed": 1,
        "data": {"dataset": "toy:moons", "n_train": 256, "n_val": 64, "n_test": 64},
        "model": {"name": "nsf", "transforms": 2, "hidden_features": [8, 8], "residual_blocks": 0, "bins": 4},
        # 4 steps an epoch, validation every 3 steps: the run ends at step 8, validated only because it ends;
        # a constant learning rate at the end, so that one more step would change the weights
        "train": {
            "batch_size": 64,
            "max_epochs": 2,
            "val_every_n_steps": 3,
            "final_lr_fraction": 1.0,
            "early_stopping_patience": None,
            "num_threads": 1,
            **train,
        },
        "output": {
            "dir": str(tmp_path),
            "name": "r",
            "samples": 0,
            "plots": False,
            "progress_bar": False,
            "logger": "csv",
        },
    }


@pytest.mark.slow
@pytest.mark.parametrize(
    "ending", ["finished", "killed_after_the_last_validation", "resumed_with_more_epochs"]
)
def test_a_resume_after_the_last_steps_validation_does_not_train_that_step_again(
    tmp_path: Path, ending: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The validation after the last step writes `last.ckpt` with the loops inside that step; Lightning does not
    save `should_stop`, so without `ValidateLastStep`'s state (and `RunCheckpoint` rewriting `last.ckpt` when
    training ends) a resumed run replayed the last batch as a fifth batch of a 4-batch epoch."""
    from flows.training.checkpoint_io import RunCheckpoint
    from flows.training.pipeline import run
    from flows.training.safety import read_checkpoint

    config = _run_config(tmp_path)
    if ending == "killed_after_the_last_validation":  # the run dies before training's end rewrites last.ckpt
        monkeypatch.setattr(RunCheckpoint, "on_train_end", lambda self, trainer, module: None)
    full = run(config, verbose=False)
    monkeypatch.undo()
    run_dir = tmp_path / "r"
    assert full.metrics["steps"] == 8 and _validated_steps(run_dir) == [3, 6, 8]
    before = read_checkpoint(run_dir / "checkpoints" / "last.ckpt")["state_dict"]
    (run_dir / "metrics.json").unlink()  # as if killed before the outputs: `--resume` continues the run
    if ending == "resumed_with_more_epochs":
        config["train"]["max_epochs"] = 3
    resumed = run(config, verbose=False, resume=True)
    if ending == "resumed_with_more_epochs":
        assert resumed.metrics["steps"] == 12 and _validated_steps(run_dir) == [3, 6, 8, 9, 12]
        return
    assert resumed.metrics["steps"] == 8 and _validated_steps(run_dir) == [3, 6, 8]
    after = read_checkpoint(run_dir / "checkpoints" / "last.ckpt")["state_dict"]
    assert all(torch.equal(before[name], after[name]) for name in before)
    assert resumed.metrics["test_log_likelihood"] == full.metrics["test_log_likelihood"]
