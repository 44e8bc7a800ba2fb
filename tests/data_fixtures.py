"""Builders of small synthetic files laid out like the MAF data archive, for the UCI loader tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

HEPMASS_FEATURES = ["f0", "f1", "f2", "f3", "f4", "mass"]


def write_power(root: Path, n: int = 317, seed: int = 1) -> np.ndarray:
    """power/data.npy with 8 raw columns (6 remain after dropping columns 3 and 1); returns the raw array."""
    data = np.random.default_rng(seed).normal(size=(n, 8)) * np.arange(1, 9) + np.arange(8)
    (root / "power").mkdir(parents=True, exist_ok=True)
    np.save(root / "power" / "data.npy", data)
    return data


def gas_frame(n: int = 400, seed: int = 2) -> pd.DataFrame:
    """Meth/Eth/Time plus a..g where (a, b) and (c, d) are > 0.98 correlated and g = -e (correlation -1)."""
    rng = np.random.default_rng(seed)
    a, c, e, f = (rng.normal(size=n) for _ in range(4))
    return pd.DataFrame(
        {
            "Time": np.arange(n, dtype=float),
            "Meth": rng.normal(size=n),
            "Eth": rng.normal(size=n),
            "a": a,
            "b": a + 0.01 * rng.normal(size=n),
            "c": c,
            "d": 2.0 * c + 0.02 * rng.normal(size=n) + 5.0,
            "e": e,
            "f": f + 0.5 * a,  # correlated with a and b, but far below 0.98
            "g": -e,
        }
    )


def write_gas(root: Path, n: int = 400, seed: int = 2) -> pd.DataFrame:
    """gas/ethylene_CO.pickle holding ``gas_frame``; returns the frame."""
    frame = gas_frame(n, seed)
    (root / "gas").mkdir(parents=True, exist_ok=True)
    frame.to_pickle(root / "gas" / "ethylene_CO.pickle")
    return frame


def _hepmass_rows(rng: np.random.Generator, n: int) -> np.ndarray:
    label = (rng.uniform(size=n) < 0.7).astype(float)
    feats = rng.normal(size=(n, 5))
    # f3: discrete-ish feature whose smallest value repeats (> 5 times among the positives)
    feats[:, 3] = np.where(rng.uniform(size=n) < 0.1, -3.0, np.abs(feats[:, 3]))
    mass = np.where(label == 1, 1000.0, rng.choice([500.0, 750.0, 1250.0], size=n))
    return np.column_stack([label, feats, mass])


def write_hepmass(
    root: Path, n_train: int = 300, n_test: int = 150, test_extra_column: bool = True, seed: int = 3
) -> tuple[np.ndarray, np.ndarray]:
    """hepmass/1000_{train,test}.csv with a '# label' first column; the test file optionally carries one
    extra trailing column (the one MAF's loader drops). Returns the raw (train, test) matrices as written."""
    rng = np.random.default_rng(seed)
    train = _hepmass_rows(rng, n_train)
    test = _hepmass_rows(rng, n_test)
    header = ["# label", *HEPMASS_FEATURES]
    (root / "hepmass").mkdir(parents=True, exist_ok=True)
    pd.DataFrame(train, columns=header).to_csv(root / "hepmass" / "1000_train.csv", index=False)
    if test_extra_column:
        test = np.column_stack([test, rng.normal(size=n_test)])
        header = [*header, "junk"]
    pd.DataFrame(test, columns=header).to_csv(root / "hepmass" / "1000_test.csv", index=False)
    return train, test


def write_miniboone(root: Path, n: int = 263, seed: int = 4) -> np.ndarray:
    """miniboone/data.npy with 43 columns; returns it."""
    data = np.random.default_rng(seed).gamma(2.0, size=(n, 43))
    (root / "miniboone").mkdir(parents=True, exist_ok=True)
    np.save(root / "miniboone" / "data.npy", data)
    return data


def write_bsds300(root: Path, seed: int = 5) -> dict[str, np.ndarray]:
    """BSDS300/BSDS300.hdf5 with float32 datasets train/validation/test of 63 columns; returns them."""
    import h5py

    rng = np.random.default_rng(seed)
    arrays = {
        k: rng.normal(size=(m, 63)).astype(np.float32)
        for k, m in [("train", 50), ("validation", 7), ("test", 9)]
    }
    (root / "BSDS300").mkdir(parents=True, exist_ok=True)
    with h5py.File(root / "BSDS300" / "BSDS300.hdf5", "w") as f:
        for k, v in arrays.items():
            f.create_dataset(k, data=v)
    return arrays
