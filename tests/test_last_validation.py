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


def _run_config(directory: Path, **train: Any) -> dict[str, Any]:
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
            "dir": str(directory),
            "name": "r",
            "samples": 0,
            "plots": False,
            "progress_bar": False,
            "logger": "csv",
        },
    }


@pytest.mark.slow
@pytest.mark.parametrize("killed", [False, True], ids=["finished", "killed_after_the_last_validation"])
@pytest.mark.parametrize("more_epochs", [False, True], ids=["same_limits", "one_more_epoch"])
def test_a_resume_after_the_last_steps_validation_does_not_train_that_step_again(
    tmp_path: Path, killed: bool, more_epochs: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The validation after the last step runs with the loops inside that step, and Lightning does not save
    `should_stop`: a `last.ckpt` written there made a resumed run train the last batch again, as a fifth batch
    of a 4-batch epoch. `RunCheckpoint` writes it when training ends instead; a kill in between resumes from
    the previous validation's checkpoint and ends like an uninterrupted run."""
    from flows.training.checkpoint_io import RunCheckpoint
    from flows.training.pipeline import run
    from flows.training.safety import read_checkpoint

    full = run(_run_config(tmp_path / "full"), verbose=False)
    config = _run_config(tmp_path / "cut")
    if killed:  # dies after the last validation, before training's end
        monkeypatch.setattr(RunCheckpoint, "on_train_end", lambda self, trainer, module: None)
    run(config, verbose=False)
    monkeypatch.undo()
    run_dir = tmp_path / "cut" / "r"
    (run_dir / "metrics.json").unlink()  # as if killed before the outputs: `--resume` continues the run
    if more_epochs:
        config["train"]["max_epochs"] = 3
    resumed = run(config, verbose=False, resume=True)
    if more_epochs:  # killed: from step 6's checkpoint, whose log ends there; step 8 no longer ends the run
        assert resumed.metrics["steps"] == 12
        assert _validated_steps(run_dir) == ([3, 6, 9, 12] if killed else [3, 6, 8, 9, 12])
        return
    assert resumed.metrics["steps"] == 8 and _validated_steps(run_dir) == [3, 6, 8]
    expected = read_checkpoint(tmp_path / "full" / "r" / "checkpoints" / "last.ckpt")["state_dict"]
    after = read_checkpoint(run_dir / "checkpoints" / "last.ckpt")["state_dict"]
    assert all(torch.equal(expected[name], after[name]) for name in expected)
    assert resumed.metrics["test_log_likelihood"] == full.metrics["test_log_likelihood"]


@pytest.mark.slow
@pytest.mark.parametrize("case", ["same_limits", "more_epochs", "checkpoint_without_reason"])
def test_a_resumed_run_that_early_stopping_ended_stays_ended(
    tmp_path: Path, case: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Lightning does not save `should_stop`: resumed, an early-stopped run trained on to the next validation
    (and past it, had that one improved). `KeepEarlyStop` stops it again before its first step, from the
    saved stopping reason, or from the patience spent in a checkpoint without one (Lightning before 2.6)."""
    from flows.training.pipeline import run
    from flows.training.safety import read_checkpoint

    # a learning rate too small to lower the validation loss measurably: it does not improve after the first
    # validation, so patience 1 stops the run at its second validation (step 6), in the middle of its 5 epochs
    config = _run_config(tmp_path, lr=1e-12, max_epochs=5, early_stopping_patience=1)
    finished = run(config, verbose=False)
    assert finished.metrics["steps"] == 6
    run_dir = tmp_path / "r"
    last = run_dir / "checkpoints" / "last.ckpt"
    assert read_checkpoint(last)["global_step"] == 6
    (run_dir / "metrics.json").unlink()  # as if killed before the outputs: `--resume` continues the run
    if case == "more_epochs":
        config["train"]["max_epochs"] = 6  # resumed with a longer budget: the stopping rule still holds
    if case == "checkpoint_without_reason":
        checkpoint = read_checkpoint(last)
        states = [state for key, state in checkpoint["callbacks"].items() if key.startswith("EarlyStopping")]
        assert len(states) == 1 and states[0].pop("stopping_reason") != 0
        torch.save(checkpoint, last)
    resumed = run(config, verbose=False, resume=True)
    assert resumed.metrics["steps"] == 6
    assert _validated_steps(run_dir) == [3, 6]
    assert read_checkpoint(last)["global_step"] == 6
    assert resumed.metrics["test_log_likelihood"] == finished.metrics["test_log_likelihood"]
    assert "had been stopped early" in caplog.text
