"""Dequantisation of category and integer columns on Palmer penguins (#14): codes vs argmax, uniform vs
variational.

Every setting scores the same quantity, `log P(species, island, sex, year) + log p(the four measurements)` per
test row (a lower bound: importance-weighted over 16 draws), on the same split, so the paired difference of two
settings is a fair comparison (higher is better):

- `codes`: species / island / sex coded 0..K-1 by sorted label and dequantised uniformly inside their bounds
  (what `categorical_columns` did before argmax dequantisation: it imposes an order on the categories);
- `argmax`: `categorical_columns` (argmax dequantisation, a learned q);
- `argmax + variational`: also `dequantization="variational"` for the integer column `year`.

Also printed: the largest gap between a category's share in 20,000 samples and in the training rows, and the
fit's wall time. Seeds are run one after another; the ratios of times are from the same machine and load.

    python benchmarks/bench_dequantization.py --steps 600 --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

import flows

CATEGORIES = ["species", "island", "sex"]
BOUNDS = {c: (0, None) for c in ("bill_length_mm", "bill_depth_mm", "flipper_length_mm", "body_mass_g")}


def _settings(table: object) -> dict[str, tuple[object, dict]]:
    coded = table.copy()
    code_bounds = {}
    for name in CATEGORIES:
        labels = sorted(coded[name].unique())
        coded[name] = coded[name].map({label: code for code, label in enumerate(labels)}).astype(float)
        code_bounds[name] = (0, len(labels) - 1)
    common = {"bounds": BOUNDS, "discrete_columns": ["year"]}
    return {
        "codes (uniform)": (
            coded,
            {**common, "bounds": {**BOUNDS, **code_bounds}, "discrete_columns": ["year", *CATEGORIES]},
        ),
        "argmax": (table, {**common, "categorical_columns": CATEGORIES}),
        "argmax + variational": (
            table,
            {**common, "categorical_columns": CATEGORIES, "dequantization": "variational"},
        ),
    }


def _share_gap(samples: object, train: object) -> float:
    gaps = []
    for name in CATEGORIES:
        truth = train[name].value_counts(normalize=True)
        drawn = samples[name].value_counts(normalize=True).reindex(truth.index, fill_value=0.0)
        gaps.append(float(np.max(np.abs(drawn - truth))))
    return max(gaps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--steps", type=int, default=600, help="optimiser steps (early stopping may end sooner)"
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    args = parser.parse_args()
    torch.set_num_threads(1)
    import palmerpenguins
    from sklearn.model_selection import train_test_split

    table = palmerpenguins.load_penguins().dropna().reset_index(drop=True)
    for seed in args.seeds:
        train_rows, test_rows = train_test_split(np.arange(len(table)), test_size=0.2, random_state=seed)
        print(f"\nseed {seed}: {len(train_rows)} train / {len(test_rows)} test rows")
        reference = None
        for label, (data, options) in _settings(table).items():
            train, test = data.iloc[train_rows], data.iloc[test_rows]
            start = time.perf_counter()
            est = flows.DensityEstimator(max_epochs=None, max_steps=args.steps, seed=seed, **options).fit(
                train
            )
            seconds = time.perf_counter() - start
            scores = est.score_samples(test)
            se = scores.std(ddof=1) / np.sqrt(scores.size)
            paired = ""
            if reference is None:
                reference = scores
            else:
                diff = scores - reference
                paired = f"; vs codes {diff.mean():+.3f} ± {diff.std(ddof=1) / np.sqrt(diff.size):.3f}"
            samples = est.sample(20_000, random_state=seed)
            print(
                f"  {label:22s} test LL {scores.mean():8.3f} ± {se:.3f}{paired}; largest category share gap "
                f"{_share_gap(samples, train):.3f}; fit {seconds:.0f} s ({est.n_steps_} steps)",
                flush=True,
            )


if __name__ == "__main__":
    main()
