"""The last training step of every run is validated (`flows.training.last_validation.ValidateLastStep`)."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np
import pytest

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
