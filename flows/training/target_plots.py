"""Figures of a sampling (target) run, written into `run_dir/plots` by the run like the table task's.

2-D targets: `density.png`, the target's density beside the learned one on the same grid (each normalised
over the view, so that the two share a colour scale) and the flow's samples. Targets of more dimensions with
exact samples: `pairs.png`, target samples (below the diagonal) against the flow's (above). Every run with a
training log: `loss.png` (`train_loss` and `val_reverse_kl`, both `KL(q || p) - log Z`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from flows.training.plots import (
    _as_points,
    _find_metrics_csv,
    _matplotlib,
    _plot_losses,
    _save_atomic,
    _subsample,
    density_grid,
    pairs_figure,
    plot_bounds,
    read_loss_history,
)

__all__ = ["write_target_plots"]


def _target_reference(target: Any, n: int, seed: int) -> Optional[np.ndarray]:
    """`n` exact samples `(n, D)` of the target, or None when it has none."""
    sample = getattr(target, "sample", None)
    if sample is None:
        return None
    generator = torch.Generator().manual_seed(seed)
    try:
        drawn = sample(n, generator=generator)
    except TypeError:  # a user's sample(n) without a generator
        drawn = sample(n)
    return _as_points(drawn, "target samples")


def _plot_target_density(
    out_dir: Path, flow: Any, target: Any, samples: np.ndarray, reference: Optional[np.ndarray], dpi: int
) -> Path:
    figure_cls, _ = _matplotlib()
    bounds = plot_bounds(reference if reference is not None else samples)
    grid = 200
    xs, ys, target_density = density_grid(target, bounds, grid)
    _, _, flow_density = density_grid(flow, bounds, grid)
    cell = (xs[1] - xs[0]) * (ys[1] - ys[0])
    fig = figure_cls(figsize=(13.5, 4.5), layout="constrained")
    axes = fig.subplots(1, 3)
    extent = (bounds[0, 0], bounds[0, 1], bounds[1, 0], bounds[1, 1])
    shown = []
    for density in (target_density, flow_density):
        mass = float(np.nansum(density) * cell)
        shown.append(density / mass if mass > 0 else density)
    top = max(float(np.nanmax(d)) for d in shown)
    for ax, density, title in (
        (axes[0], shown[0], "target density (normalised in view)"),
        (axes[1], shown[1], "learned density (normalised in view)"),
    ):
        image = ax.imshow(
            density, origin="lower", extent=extent, aspect="auto", cmap="viridis", vmin=0, vmax=top
        )
        ax.set_title(title)
    fig.colorbar(image, ax=axes[1], fraction=0.046, pad=0.04)
    axes[2].scatter(samples[:, 0], samples[:, 1], s=1.5, alpha=0.4, color="tab:orange", linewidths=0)
    axes[2].set_title(f"flow samples (n={samples.shape[0]})")
    for ax in axes:
        ax.set_xlim(bounds[0])
        ax.set_ylim(bounds[1])
        ax.set_xlabel("x0")
        ax.set_ylabel("x1")
    return _save_atomic(fig, out_dir / "density.png", dpi)


def write_target_plots(
    run_dir: Path, flow: Any, target: Any, samples: Any, seed: int = 0, max_points: int = 3000, dpi: int = 100
) -> list[Path]:
    """Write the run's figures (see the module docstring) from the flow, the target and flow samples `(n, D)`."""
    out_dir = Path(run_dir) / "plots"
    points = _subsample(_as_points(samples, "samples"), max_points)
    points = points[np.all(np.isfinite(points), axis=1)]
    reference = _target_reference(target, max_points, seed)
    written: list[Path] = []
    features = points.shape[1]
    if features == 2:
        written.append(_plot_target_density(out_dir, flow, target, points, reference, dpi))
    elif features > 2 and reference is not None:
        dims = list(range(min(4, features)))
        figure = pairs_figure(reference, points, dims, None, max_points)
        written.append(_save_atomic(figure, out_dir / "pairs.png", dpi))
    csv_path = _find_metrics_csv(Path(run_dir))
    series = read_loss_history(csv_path, (("train_loss", "val_reverse_kl"),)) if csv_path else {}
    if series:
        written.append(_plot_losses(out_dir, series, dpi))
    return written
