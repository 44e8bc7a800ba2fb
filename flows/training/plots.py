"""Diagnostic figures for a trained flow: density heatmap (2-D), pairwise marginals (D > 2), loss curves.

matplotlib is imported lazily (it lives in the ``data`` extra) and used through its object-oriented API with
the Agg canvas, so writing plots never switches the backend of a user's interactive session. Every file is
written to a temporary name in the target folder and moved into place with ``os.replace``.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Optional, Protocol, Union

import numpy as np
import torch

from flows.io import atomic_open

__all__ = [
    "density_figure",
    "density_grid",
    "fit_figure",
    "marginal_figure",
    "pairs_figure",
    "save_figure",
    "plot_bounds",
    "read_loss_history",
    "write_plots",
]

History = Union[str, Path, Mapping[str, Sequence[float]], None]


class HasLogProb(Protocol):
    """Anything with ``log_prob(x: Tensor (n, 2)) -> Tensor (n,)`` (a `flows.Flow`, a torch distribution)."""

    def log_prob(self, x: torch.Tensor) -> torch.Tensor: ...


def _matplotlib() -> tuple[Any, Any]:
    """(Figure, FigureCanvasAgg), imported on first use with a message that names the extra."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "writing plots needs matplotlib; install it with `pip install matplotlib` "
            "(or the project's data extra: `pip install flows[data]`)"
        ) from err
    return Figure, FigureCanvasAgg


def _save_atomic(fig: Any, path: Path, dpi: int) -> Path:
    """Render ``fig`` as PNG to a temp file beside ``path``, then ``os.replace`` it into place."""
    _, canvas_cls = _matplotlib()
    canvas_cls(fig)
    with atomic_open(path, "wb") as handle:
        fig.savefig(handle, format="png", dpi=dpi)
    return path


def _as_points(x: Any, name: str) -> np.ndarray:
    """A (n, ...) float64 numpy array from a numpy array or tensor; raises on empty or 0-d input."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim < 2 or arr.shape[0] == 0:
        raise ValueError(f"{name} must have shape (n, features...) with n >= 1, got shape {arr.shape}")
    return arr


def _subsample(x: np.ndarray, max_points: int, seed: int = 0) -> np.ndarray:
    if x.shape[0] <= max_points:
        return x
    idx = np.random.default_rng(seed).choice(x.shape[0], size=max_points, replace=False)
    return x[np.sort(idx)]


def plot_bounds(points: np.ndarray, quantile: float = 0.005, pad: float = 0.1) -> np.ndarray:
    """Per-column plotting range of ``points (n, D)``: the [q, 1 - q] quantiles widened by ``pad`` of the span.

    Returns (D, 2) with lower and upper bounds; a constant column gets a unit-wide range.
    """
    finite = points[np.all(np.isfinite(points), axis=1)]
    if finite.shape[0] == 0:
        raise ValueError("cannot choose plot bounds: every point has a NaN or infinite coordinate")
    lo = np.quantile(finite, quantile, axis=0)
    hi = np.quantile(finite, 1.0 - quantile, axis=0)
    span = np.where(hi - lo > 0, hi - lo, 1.0)
    return np.stack([lo - pad * span, hi + pad * span], axis=1)


def _module_device_dtype(flow: Any) -> tuple[torch.device, torch.dtype]:
    if isinstance(flow, torch.nn.Module):
        for p in flow.parameters():
            return p.device, p.dtype
        for b in flow.buffers():
            if b.is_floating_point():
                return b.device, b.dtype
    return torch.device("cpu"), torch.get_default_dtype()


def density_grid(
    flow: HasLogProb, bounds: np.ndarray, grid_size: int = 200, batch_size: int = 16384
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Evaluate ``exp(flow.log_prob)`` on a regular grid of cell centres over ``bounds (2, 2)``.

    Returns ``(xs (G,), ys (G,), density (G, G))`` with ``density[i, j] = p(xs[j], ys[i])`` (rows follow y, as
    ``imshow`` expects); ``density.sum() * dx * dy`` approximates the mass inside the bounds.
    """
    bounds = np.asarray(bounds, dtype=np.float64)
    if bounds.shape != (2, 2) or not np.all(bounds[:, 1] > bounds[:, 0]):
        raise ValueError(f"bounds must be [[xmin, xmax], [ymin, ymax]] with min < max, got {bounds.tolist()}")
    if isinstance(grid_size, bool) or not isinstance(grid_size, int) or grid_size < 2:
        raise ValueError(f"grid_size must be an integer >= 2, got {grid_size!r}")
    edges_x = np.linspace(bounds[0, 0], bounds[0, 1], grid_size + 1)
    edges_y = np.linspace(bounds[1, 0], bounds[1, 1], grid_size + 1)
    xs = 0.5 * (edges_x[1:] + edges_x[:-1])
    ys = 0.5 * (edges_y[1:] + edges_y[:-1])
    gx, gy = np.meshgrid(xs, ys)  # (G, G), rows follow y
    points = np.stack([gx.ravel(), gy.ravel()], axis=1)
    device, dtype = _module_device_dtype(flow)
    was_training = isinstance(flow, torch.nn.Module) and flow.training
    if was_training:
        flow.eval()
    try:
        chunks = []
        with torch.no_grad():
            for start in range(0, points.shape[0], batch_size):
                batch = torch.as_tensor(points[start : start + batch_size], dtype=dtype, device=device)
                chunks.append(flow.log_prob(batch).detach().to("cpu", torch.float64).numpy())
    finally:
        if was_training:
            flow.train()
    log_density = np.concatenate(chunks).reshape(grid_size, grid_size)
    density = np.exp(np.where(np.isfinite(log_density), log_density, -np.inf))
    return xs, ys, density


#: metric-name fragments of training curves, in order of preference; one family is plotted (units differ)
LOSS_FAMILIES: tuple[str, ...] = ("nll", "loss", "bpd")


def read_loss_history(
    path: Union[str, Path], families: Sequence[Union[str, tuple[str, ...]]] = LOSS_FAMILIES
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Training curves of a Lightning CSVLogger ``metrics.csv``: ``{column: (steps (k,), values (k,))}``.

    The columns of the first family in ``families`` that occurs in a column name (by default ``train_nll``
    and ``val_nll``; else ``*loss*``; else ``*bpd*``; a family given as a tuple of fragments takes the columns
    with any of them) are returned with their non-empty rows, against the ``step`` column when there is
    one (else the row index).
    """
    path = Path(path)
    with path.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    if not rows:
        return {}
    names = [c for c in rows[0] if c is not None and c not in ("step", "epoch")]
    columns: list[str] = []
    for family in families:
        fragments = (family,) if isinstance(family, str) else family
        columns = [c for c in names if any(f in c.lower() for f in fragments)]
        if columns:
            break
    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for column in columns:
        steps, values = [], []
        for i, row in enumerate(rows):
            raw = (row.get(column) or "").strip()
            if not raw:
                continue
            try:
                value = float(raw)
                step = float(row["step"]) if (row.get("step") or "").strip() else float(i)
            except ValueError:
                continue
            steps.append(step)
            values.append(value)
        if values:
            out[column] = (np.asarray(steps), np.asarray(values))
    return out


def _find_metrics_csv(run_dir: Path) -> Optional[Path]:
    """The most recently modified ``metrics.csv`` under ``run_dir`` (CSVLogger nests it in version folders)."""
    found = [p for p in run_dir.rglob("metrics.csv") if p.is_file()]
    return max(found, key=lambda p: p.stat().st_mtime) if found else None


def _history_series(run_dir: Path, history: History) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    if history is None:
        csv_path = _find_metrics_csv(run_dir)
        return read_loss_history(csv_path) if csv_path is not None else {}
    if isinstance(history, (str, Path)):
        return read_loss_history(history)
    if isinstance(history, Mapping):
        series = {}
        for name, values in history.items():
            arr = np.asarray(values, dtype=np.float64).ravel()
            if arr.size:
                series[str(name)] = (np.arange(arr.size, dtype=np.float64), arr)
        return series
    raise TypeError(
        f"history must be a path to metrics.csv, a mapping of name -> values, or None; got {type(history).__name__}"
    )


def _pick_data(splits: Mapping[str, Any]) -> tuple[str, np.ndarray]:
    if not isinstance(splits, Mapping) or not splits:
        raise ValueError("splits must be a non-empty mapping such as {'train': x, 'test': x_test}")
    for name in ("train", "test", "val"):
        if name in splits:
            return name, _as_points(splits[name], f"splits[{name!r}]")
    name = next(iter(splits))
    return str(name), _as_points(splits[name], f"splits[{name!r}]")


def _names(columns: Optional[Sequence[str]], features: int) -> list[str]:
    """Axis labels: the table's column names, else x0, x1, ..."""
    if columns is not None and len(columns) == features:
        return [str(c) for c in columns]
    return [f"x{i}" for i in range(features)]


def density_figure(
    flow: HasLogProb,
    data: np.ndarray,
    samples: np.ndarray,
    data_name: str = "data",
    columns: Optional[Sequence[str]] = None,
    grid_size: int = 200,
) -> Any:
    """2-D: the learned density `exp(log_prob)` as a heatmap beside the data `(n, 2)` and samples `(m, 2)`."""
    figure_cls, _ = _matplotlib()
    bounds = plot_bounds(np.concatenate([data, samples[np.all(np.isfinite(samples), axis=1)]]))
    xs, ys, density = density_grid(flow, bounds, grid_size)
    fig = figure_cls(figsize=(13.5, 4.5), layout="constrained")
    axes = fig.subplots(1, 3)
    extent = (bounds[0, 0], bounds[0, 1], bounds[1, 0], bounds[1, 1])
    image = axes[0].imshow(density, origin="lower", extent=extent, aspect="auto", cmap="viridis")
    fig.colorbar(image, ax=axes[0], fraction=0.046, pad=0.04)
    mass = float(density.sum() * (xs[1] - xs[0]) * (ys[1] - ys[0]))
    axes[0].set_title(f"learned density (mass in view {mass:.3f})")
    for ax, points, title, color in (
        (axes[1], data, f"data ({data_name}, n={data.shape[0]})", "tab:blue"),
        (axes[2], samples, f"samples (n={samples.shape[0]})", "tab:orange"),
    ):
        ax.scatter(points[:, 0], points[:, 1], s=1.5, alpha=0.4, color=color, linewidths=0)
        ax.set_title(title)
    names = _names(columns, 2)
    for ax in axes:
        ax.set_xlim(bounds[0])
        ax.set_ylim(bounds[1])
        ax.set_xlabel(names[0])
        ax.set_ylabel(names[1])
    return fig


def marginal_figure(
    data: np.ndarray,
    samples: np.ndarray,
    columns: Optional[Sequence[str]] = None,
    flow: Optional[HasLogProb] = None,
) -> Any:
    """1-D: histograms of the data `(n, 1)` and samples `(m, 1)`, and the learned density when `flow` is given."""
    figure_cls, _ = _matplotlib()
    fig = figure_cls(figsize=(6, 4), layout="constrained")
    ax = fig.subplots()
    finite = samples[np.all(np.isfinite(samples), axis=1)]
    bounds = plot_bounds(np.concatenate([data, finite]))[0]
    bins = np.linspace(bounds[0], bounds[1], 60)
    ax.hist(data[:, 0], bins=bins, density=True, alpha=0.5, label="data", color="tab:blue")
    ax.hist(finite[:, 0], bins=bins, density=True, alpha=0.5, label="samples", color="tab:orange")
    if flow is not None:
        grid = np.linspace(bounds[0], bounds[1], 400)
        device, dtype = _module_device_dtype(flow)
        with torch.no_grad():
            log_density = flow.log_prob(torch.as_tensor(grid[:, None], dtype=dtype, device=device))
        ax.plot(grid, np.exp(log_density.double().cpu().numpy()), color="black", label="learned density")
    ax.set_xlabel(_names(columns, 1)[0])
    ax.set_ylabel("density")
    ax.legend()
    return fig


def pairs_figure(
    data: np.ndarray,
    samples: np.ndarray,
    dims: Sequence[int],
    columns: Optional[Sequence[str]] = None,
    max_points: int = 5000,
) -> Any:
    """Corner plot: data below the diagonal, samples above it, both 1-D marginals on the diagonal."""
    figure_cls, _ = _matplotlib()
    k = len(dims)
    names = _names(columns, data.shape[1])
    data_k, samples_k = data[:, dims], samples[:, dims]
    samples_k = samples_k[np.all(np.isfinite(samples_k), axis=1)]
    bounds = plot_bounds(data_k)
    data_k, samples_k = _subsample(data_k, max_points), _subsample(samples_k, max_points, seed=1)
    fig = figure_cls(figsize=(2.2 * k, 2.2 * k), layout="constrained")
    axes = np.asarray(fig.subplots(k, k, squeeze=False))
    for i in range(k):
        for j in range(k):
            ax = axes[i, j]
            if i == j:
                bins = np.linspace(bounds[i, 0], bounds[i, 1], 40)
                ax.hist(data_k[:, i], bins=bins, density=True, alpha=0.5, color="tab:blue")
                ax.hist(samples_k[:, i], bins=bins, density=True, alpha=0.5, color="tab:orange")
                ax.set_xlim(bounds[i])
            else:
                points, color = (data_k, "tab:blue") if i > j else (samples_k, "tab:orange")
                ax.scatter(points[:, j], points[:, i], s=1.0, alpha=0.3, color=color, linewidths=0)
                ax.set_xlim(bounds[j])
                ax.set_ylim(bounds[i])
            ax.tick_params(labelsize=6)
            if i == k - 1:
                ax.set_xlabel(names[dims[j]], fontsize=8)
            if j == 0:
                ax.set_ylabel(names[dims[i]], fontsize=8)
    fig.suptitle("pairwise marginals: data (blue, below diagonal) vs samples (orange, above)")
    return fig


def fit_figure(
    flow: Optional[HasLogProb],
    data: np.ndarray,
    samples: np.ndarray,
    columns: Optional[Sequence[str]] = None,
    dims: Optional[Sequence[int]] = None,
    max_dims: int = 6,
    max_points: int = 5000,
    grid_size: int = 200,
    data_name: str = "data",
) -> tuple[str, Any]:
    """The figure of a table fit and its file stem, by the number of columns of `data (n, D)` and `samples
    (m, D)`: one, `marginal` (histograms and the learned density); two, `density` (the learned density beside
    data and samples; needs `flow`); more, `pairs` (the first `max_dims` columns, or `dims`)."""
    features = data.shape[1]
    if features == 1:
        return "marginal", marginal_figure(data, samples, columns, flow)
    if features == 2:
        shown = _subsample(data, max_points)
        return "density", density_figure(
            flow, shown, _subsample(samples, max_points), data_name, columns, grid_size
        )
    chosen = list(range(min(max_dims, features))) if dims is None else [int(d) for d in dims]
    if len(chosen) < 2 or any(not 0 <= d < features for d in chosen):
        raise ValueError(f"dims must list at least 2 column indices in [0, {features}), got {chosen}")
    return "pairs", pairs_figure(data, samples, chosen, columns, max_points)


def save_figure(fig: Any, path: Union[str, Path], dpi: int = 100) -> Path:
    """Write `fig` as a PNG atomically (temporary file beside `path`, then `os.replace`)."""
    return _save_atomic(fig, Path(path), dpi)


def _plot_images(run_dir: Path, samples: np.ndarray, dpi: int, n_max: int = 64) -> Path:
    """Grid of image samples (n, C, H, W), each rescaled to [0, 1] by its own range."""
    figure_cls, _ = _matplotlib()
    images = samples[:n_max]
    side = int(math.ceil(math.sqrt(images.shape[0])))
    fig = figure_cls(figsize=(1.2 * side, 1.2 * side), layout="constrained")
    axes = np.asarray(fig.subplots(side, side, squeeze=False)).ravel()
    for ax in axes:
        ax.axis("off")
    for ax, image in zip(axes, images):
        img = np.moveaxis(image, 0, -1)
        lo, hi = np.nanmin(img), np.nanmax(img)
        img = (img - lo) / (hi - lo) if hi > lo else np.zeros_like(img)
        ax.imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray" if img.shape[-1] == 1 else None)
    return _save_atomic(fig, run_dir / "samples.png", dpi)


def _plot_losses(run_dir: Path, series: Mapping[str, tuple[np.ndarray, np.ndarray]], dpi: int) -> Path:
    figure_cls, _ = _matplotlib()
    fig = figure_cls(figsize=(7, 4), layout="constrained")
    ax = fig.subplots()
    for name, (steps, values) in sorted(series.items()):
        marker = "o" if values.size < 50 else None
        ax.plot(steps, values, label=name, marker=marker, markersize=3, linewidth=1)
    ax.set_xlabel("step")
    names = " ".join(series).lower()
    ax.set_ylabel(
        "bits/dim" if "bpd" in names else "negative log-likelihood (nats)" if "nll" in names else "loss"
    )
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _save_atomic(fig, run_dir / "loss.png", dpi)


def write_plots(
    run_dir: Union[str, Path],
    flow: Optional[HasLogProb],
    splits: Mapping[str, Any],
    samples: Any,
    history: History = None,
    *,
    dims: Optional[Sequence[int]] = None,
    max_dims: int = 6,
    max_points: int = 5000,
    grid_size: int = 200,
    dpi: int = 100,
    columns: Optional[Sequence[str]] = None,
) -> list[Path]:
    """Write the diagnostic PNGs of one run into ``run_dir/plots`` and return their paths.

    ``flow.log_prob`` must take points in the same units as ``splits`` (name -> (n, D) arrays) and
    ``samples (m, D)``. Figures: 2-D data, ``density.png`` (exp(log_prob) heatmap beside the data and the
    samples; needs ``flow``); D > 2, ``pairs.png`` (the first ``max_dims`` columns, or ``dims``); 1-D,
    ``marginal.png``; images (m, C, H, W), ``samples.png``; and ``loss.png`` from ``history`` (a
    metrics.csv path or name -> values), or from the newest ``metrics.csv`` under ``run_dir`` when None.
    ``columns`` name the axes (default x0, x1, ...).
    """
    run_dir = Path(run_dir)
    out_dir = run_dir / "plots"
    data_name, data = _pick_data(splits)
    samples_arr = _as_points(samples, "samples")
    if samples_arr.shape[1:] != data.shape[1:]:
        raise ValueError(
            f"samples have event shape {samples_arr.shape[1:]} but the data {data_name!r} has {data.shape[1:]}"
        )
    series = _history_series(run_dir, history)
    written: list[Path] = []
    if data.ndim == 2:
        if data.shape[1] == 2 and flow is None:
            raise ValueError("the 2-D density heatmap needs a flow with log_prob; got flow=None")
        stem, fig = fit_figure(
            flow, data, samples_arr, columns, dims, max_dims, max_points, grid_size, data_name
        )
        written.append(_save_atomic(fig, out_dir / f"{stem}.png", dpi))
    elif data.ndim == 4:
        written.append(_plot_images(out_dir, samples_arr, dpi))
    if series:
        written.append(_plot_losses(out_dir, series, dpi))
    return written
