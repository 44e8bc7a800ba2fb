"""Plots of a conditional flow: the learned `p(x | c)` at a few context values beside held-out data.

For a 1-D `x`, one panel per context value: the learned density curve over a histogram of the held-out rows
whose contexts are nearest to it. For a 2-D `x`: the density heatmap with those rows on top. The context
values are test contexts at the 10%, 50% and 90% quantiles of the first context column. Written
atomically into `run_dir/plots/conditional.png` (with `loss.png`, as `write_plots` does).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Union

import numpy as np
import torch

from flows.training.plots import _history_series, _matplotlib, _plot_losses, _save_atomic, plot_bounds

__all__ = ["nearest_rows", "pick_contexts", "write_conditional_plots"]


def pick_contexts(context: np.ndarray, quantiles: tuple[float, ...] = (0.1, 0.5, 0.9)) -> np.ndarray:
    """Rows of `context (n, k)` at the given quantiles of its first column: `(len(quantiles), k)`."""
    order = np.argsort(context[:, 0], kind="stable")
    picks = [order[min(context.shape[0] - 1, int(q * context.shape[0]))] for q in quantiles]
    return context[picks]


def nearest_rows(context: np.ndarray, value: np.ndarray, count: int) -> np.ndarray:
    """Indices of the `count` rows of `context (n, k)` nearest to `value (k,)` in per-column std units."""
    scale = context.std(axis=0)
    scale = np.where(scale > 0, scale, 1.0)
    distance = (((context - value) / scale) ** 2).sum(axis=1)
    return np.argsort(distance, kind="stable")[: min(count, context.shape[0])]


@torch.no_grad()
def _conditional_density(flow: Any, points: np.ndarray, value: np.ndarray) -> np.ndarray:
    """`p(x | c = value)` at `points (n, D)`: `(n,)` float64."""
    reference = next(iter(flow.parameters()), None)
    dtype = reference.dtype if reference is not None else torch.get_default_dtype()
    device = reference.device if reference is not None else torch.device("cpu")
    x = torch.as_tensor(points, dtype=dtype, device=device)
    c = torch.as_tensor(
        np.broadcast_to(value, (points.shape[0], value.shape[0])).copy(), dtype=dtype, device=device
    )
    was_training = flow.training
    flow.eval()
    density = flow.log_prob(x, c).double().exp().cpu().numpy()
    flow.train(was_training)
    return density


def write_conditional_plots(
    run_dir: Union[str, Path],
    flow: Any,
    splits: Any,
    neighbours: int = 300,
    grid_size: int = 120,
    dpi: int = 100,
) -> list[Path]:
    """`plots/conditional.png` (1-D or 2-D `x`; nothing for more) and `plots/loss.png`; returns the paths.

    `splits` is a conditional `DataSplits` (test rows and test contexts are used).
    """
    run_dir = Path(run_dir)
    out_dir = run_dir / "plots"
    x, context = np.asarray(splits.test), np.asarray(splits.test_context)
    written: list[Path] = []
    if x.shape[1] in (1, 2):
        written.append(_plot_conditional(out_dir, flow, splits, x, context, neighbours, grid_size, dpi))
    series = _history_series(run_dir, None)
    if series:
        written.append(_plot_losses(out_dir, series, dpi))
    return written


def _label(splits: Any, value: np.ndarray) -> str:
    shown = ", ".join(f"{name}={v:.3g}" for name, v in zip(splits.context_columns[:3], value[:3]))
    return shown + (", ..." if value.shape[0] > 3 else "")


def _plot_conditional(
    out_dir: Path,
    flow: Any,
    splits: Any,
    x: np.ndarray,
    context: np.ndarray,
    neighbours: int,
    grid_size: int,
    dpi: int,
) -> Path:
    figure_cls, _ = _matplotlib()
    values = pick_contexts(context)
    bounds = plot_bounds(x)
    fig = figure_cls(figsize=(4.5 * len(values), 4.0), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(values)))
    for ax, value in zip(axes, values):
        near = x[nearest_rows(context, value, neighbours)]
        if x.shape[1] == 1:
            grid = np.linspace(bounds[0, 0], bounds[0, 1], grid_size * 4)[:, None]
            ax.hist(
                near[:, 0],
                bins=40,
                range=tuple(bounds[0]),
                density=True,
                alpha=0.5,
                label="held-out (nearest c)",
            )
            ax.plot(
                grid[:, 0],
                _conditional_density(flow, grid, value),
                color="tab:orange",
                label="learned p(x | c)",
            )
            ax.set_xlabel(splits.columns[0])
            ax.legend(fontsize=7)
        else:
            xs = np.linspace(bounds[0, 0], bounds[0, 1], grid_size)
            ys = np.linspace(bounds[1, 0], bounds[1, 1], grid_size)
            grid = np.stack(np.meshgrid(xs, ys), axis=-1).reshape(-1, 2)
            density = _conditional_density(flow, grid, value).reshape(grid_size, grid_size)
            extent = (bounds[0, 0], bounds[0, 1], bounds[1, 0], bounds[1, 1])
            ax.imshow(density, origin="lower", extent=extent, aspect="auto", cmap="viridis")
            ax.scatter(near[:, 0], near[:, 1], s=3, color="white", alpha=0.6, linewidths=0)
            ax.set_xlim(bounds[0])
            ax.set_ylim(bounds[1])
            ax.set_xlabel(splits.columns[0])
            ax.set_ylabel(splits.columns[1])
        ax.set_title(f"p(x | {_label(splits, value)})", fontsize=9)
    return _save_atomic(fig, out_dir / "conditional.png", dpi)
