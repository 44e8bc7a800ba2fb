"""Training options that adapt to the table (`flows.training.table_defaults`) and `DensityEstimator`'s use of them."""

from __future__ import annotations

import math

import numpy as np
import pytest

from flows.training.table_defaults import (
    MIN_STEPS,
    MIN_VALIDATION_STEPS,
    auto_batch_size,
    table_train_options,
)


@pytest.mark.parametrize(
    ("rows", "batch"), [(5, 32), (246, 32), (600, 64), (1000, 128), (2_000, 256), (48_000, 256)]
)
def test_auto_batch_is_a_power_of_two_near_an_eighth_of_the_rows(rows: int, batch: int) -> None:
    assert auto_batch_size(rows) == batch


def test_small_tables_train_for_steps_and_validate_every_fifty() -> None:
    options = table_train_options(246, "auto", "auto", {})
    assert options["batch_size"] == 32 and options["max_epochs"] is None
    assert options["max_steps"] == MIN_STEPS
    assert options["val_every_n_steps"] == MIN_VALIDATION_STEPS


def test_large_tables_keep_one_hundred_epochs_and_one_validation_per_epoch() -> None:
    options = table_train_options(48_000, "auto", "auto", {})
    per_epoch = math.ceil(48_000 / 256)
    assert options == {
        "batch_size": 256,
        "max_epochs": None,
        "max_steps": 100 * per_epoch,
        "val_every_n_steps": per_epoch,
    }


def test_explicit_options_win() -> None:
    assert table_train_options(246, 64, 10, {"lr": 0.01}) == {"batch_size": 64, "max_epochs": 10, "lr": 0.01}
    options = table_train_options(246, "auto", "auto", {"max_steps": 300, "val_every_n_steps": 7})
    assert options["max_steps"] == 300 and options["val_every_n_steps"] == 7 and options["max_epochs"] is None
    # a given batch size still sets the length and validation interval of an "auto" max_epochs
    options = table_train_options(10_000, 100, "auto", {})
    assert options["max_steps"] == 100 * 100 and options["val_every_n_steps"] == 100


def test_the_estimator_gives_a_small_table_many_steps() -> None:
    """247 rows at the old batch 256 were one step per epoch and 17-27 steps in all; now the batch is 32
    and early stopping counts validations of 50 steps (60 steps here, to keep the test short)."""
    import flows

    rows = np.random.default_rng(0).normal(size=(275, 2))
    est = flows.DensityEstimator(
        transforms=1, hidden_features=[8], residual_blocks=0, max_steps=60, seed=0
    ).fit(rows)
    assert est.config_.train.batch_size == 32
    assert est.config_.train.max_epochs is None  # the length is counted in steps
    assert est.n_steps_ == 60  # 8 epochs of 8 steps (the old defaults: 8 steps)
    assert est.config_.train.val_every_n_steps == MIN_VALIDATION_STEPS
    assert est.n_steps_ > 5 * est.n_epochs_
    assert est.get_params()["batch_size"] == "auto"  # stored as given (scikit-learn's clone)
    explicit = flows.DensityEstimator(
        transforms=1, hidden_features=[8], residual_blocks=0, batch_size=256, max_epochs=3
    ).fit(rows)
    assert explicit.config_.train.batch_size == 256 and explicit.n_steps_ == 3
