"""Deterministic shuffled train/validation/test splits."""

from __future__ import annotations

import numpy as np

__all__ = ["train_val_test_split"]


def _check_fraction(value: float, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating)) or not 0.0 <= value < 1.0:
        raise ValueError(f"{name} must be a number in [0, 1), got {value!r}")
    return float(value)


def train_val_test_split(
    x: np.ndarray, val_fraction: float = 0.1, test_fraction: float = 0.1, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Shuffle rows of x (n, ...) with ``np.random.default_rng(seed)`` and split them.

    Returns (train, val, test) with ``int(round(val_fraction * n))`` validation rows and
    ``int(round(test_fraction * n))`` test rows, at least one each for a non-zero fraction (a table of 3 rows
    still has a validation row); the rest (at least one row) is the training split.
    """
    val_fraction = _check_fraction(val_fraction, "val_fraction")
    test_fraction = _check_fraction(test_fraction, "test_fraction")
    if val_fraction + test_fraction >= 1.0:
        raise ValueError(f"val_fraction + test_fraction must be < 1, got {val_fraction} + {test_fraction}")
    x = np.asarray(x)
    if x.ndim < 1 or x.shape[0] == 0:
        raise ValueError(f"expected an array with at least one row, got shape {x.shape}")
    n = x.shape[0]
    n_val = max(int(round(val_fraction * n)), int(val_fraction > 0))
    n_test = max(int(round(test_fraction * n)), int(test_fraction > 0))
    if n - n_val - n_test < 1:
        raise ValueError(
            f"{n} rows leave no training rows after {n_val} validation and {n_test} test rows (val_fraction "
            f"{val_fraction}, test_fraction {test_fraction}); give more rows, or smaller fractions"
        )
    perm = np.random.default_rng(seed).permutation(n)
    shuffled = x[perm]
    n_train = n - n_val - n_test
    return shuffled[:n_train], shuffled[n_train : n_train + n_val], shuffled[n_train + n_val :]
