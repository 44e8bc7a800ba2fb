"""One figure of the learned 2-D densities of finished toy runs, for the docs.

    python -m experiments.figures --out docs/results_toys.png RESULTS_DIR

reads ``RESULTS_DIR/results.csv`` (written by ``experiments.run``), takes every successful run on 2-D data,
reloads its best checkpoint and draws ``exp(log_prob)`` on a grid around its test data, with the test
log-likelihood and the gap to the true entropy in each title. The PNG is written atomically.
"""

from __future__ import annotations

import argparse
import csv
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Optional

import numpy as np

__all__ = ["main", "toy_density_figure"]


def toy_density_figure(results_dir: str | Path, out: str | Path, grid_size: int = 200, dpi: int = 80) -> Path:
    """Draw the learned density of each 2-D run listed in ``results_dir/results.csv`` into ``out`` (PNG)."""
    from flows.datasets import toy_sample
    from flows.training.checkpoints import load_model
    from flows.training.plots import _matplotlib, _save_atomic, density_grid, plot_bounds

    results_dir = Path(results_dir)
    with (results_dir / "results.csv").open(newline="") as handle:
        rows = [r for r in csv.DictReader(handle) if r["status"] == "ok" and r["config"].startswith("toys/")]
    if not rows:
        raise ValueError(f"no successful toy runs in {results_dir / 'results.csv'}")
    figure_cls, _ = _matplotlib()
    columns = min(4, len(rows))
    lines = math.ceil(len(rows) / columns)
    fig = figure_cls(figsize=(3.2 * columns, 3.4 * lines), layout="constrained")
    axes = np.asarray(fig.subplots(lines, columns, squeeze=False)).ravel()
    for ax in axes:
        ax.axis("off")
    for ax, row in zip(axes, rows):
        run_dir = Path(row["run_dir"])
        loaded = load_model(run_dir / "checkpoints" / "best.ckpt")
        data = toy_sample(row["dataset"], 5000, seed=int(row["seed"]))
        bounds = plot_bounds(data)
        _, _, density = density_grid(loaded.flow, bounds, grid_size)
        extent = (bounds[0, 0], bounds[0, 1], bounds[1, 0], bounds[1, 1])
        ax.imshow(density, origin="lower", extent=extent, aspect="auto", cmap="viridis")
        gap = f", gap {float(row['gap']):.3f}" if row["gap"] else ""
        ax.set_title(f"{row['dataset']}: {float(row['test_log_likelihood']):.3f} nats{gap}", fontsize=9)
    fig.suptitle(
        "learned densities (NSF, configs/toys, 1,000 CPU steps): test log-likelihood and gap to the entropy"
    )
    return _save_atomic(fig, Path(out), dpi)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m experiments.figures", description=__doc__)
    parser.add_argument("results_dir", help="an --out folder of experiments.run")
    parser.add_argument("--out", required=True, help="PNG file to write")
    args = parser.parse_args(argv)
    print(toy_density_figure(args.results_dir, args.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
