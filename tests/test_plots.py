"""Tests for flows.training.plots: density grid mass, PNG files, pairwise marginals, loss curves."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.distributions import MultivariateNormal

pytest.importorskip("matplotlib")

from flows.training.plots import density_grid, plot_bounds, read_loss_history, write_plots  # noqa: E402

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _png_size(path: Path) -> tuple[int, int]:
    """(width, height) from the IHDR chunk; asserts the PNG signature."""
    raw = path.read_bytes()
    assert raw[:8] == PNG_SIGNATURE, f"{path} is not a PNG"
    assert raw[12:16] == b"IHDR"
    return int.from_bytes(raw[16:20], "big"), int.from_bytes(raw[20:24], "big")


class GaussianFlow:
    """A stand-in 'flow': a correlated 2-D Gaussian from torch.distributions, with log_prob and sample."""

    def __init__(self, mean: tuple[float, float] = (1.0, -2.0)) -> None:
        cov = torch.tensor([[1.0, 0.6], [0.6, 0.5]], dtype=torch.float64)
        self.dist = MultivariateNormal(torch.tensor(mean, dtype=torch.float64), covariance_matrix=cov)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        return self.dist.log_prob(x.to(torch.float64))

    def sample(self, n: int) -> np.ndarray:
        torch.manual_seed(0)
        return self.dist.sample((n,)).numpy()


def test_density_grid_integrates_to_one_for_gaussian() -> None:
    flow = GaussianFlow()
    # +-7 standard deviations around the mean in each coordinate: the missing mass is negligible
    bounds = np.array([[1.0 - 7.0, 1.0 + 7.0], [-2.0 - 5.0, -2.0 + 5.0]])
    xs, ys, density = density_grid(flow, bounds, grid_size=300)
    assert xs.shape == (300,) and ys.shape == (300,) and density.shape == (300, 300)
    mass = density.sum() * (xs[1] - xs[0]) * (ys[1] - ys[0])
    assert mass == pytest.approx(1.0, abs=2e-3)
    # orientation: rows follow y, columns follow x; the peak sits at the mean
    i, j = np.unravel_index(np.argmax(density), density.shape)
    assert xs[j] == pytest.approx(1.0, abs=0.1) and ys[i] == pytest.approx(-2.0, abs=0.1)
    # values match the closed form at a grid point
    expected = math.exp(float(flow.log_prob(torch.tensor([[xs[5], ys[7]]]))))
    assert density[7, 5] == pytest.approx(expected, rel=1e-10)


def test_density_grid_uses_module_dtype_and_restores_training_mode() -> None:
    seen: list[torch.dtype] = []

    class Module(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.scale = torch.nn.Parameter(torch.ones((), dtype=torch.float32))

        def log_prob(self, x: torch.Tensor) -> torch.Tensor:
            seen.append(x.dtype)
            assert not self.training
            return -0.5 * (x**2).sum(-1) * self.scale - math.log(2 * math.pi)

    module = Module().train()
    _, _, density = density_grid(module, np.array([[-6.0, 6.0], [-6.0, 6.0]]), grid_size=120)
    assert set(seen) == {torch.float32} and module.training
    assert density.sum() * (12 / 120) ** 2 == pytest.approx(1.0, abs=1e-3)


def test_density_grid_rejects_bad_bounds() -> None:
    with pytest.raises(ValueError, match="bounds"):
        density_grid(GaussianFlow(), np.array([[1.0, 0.0], [0.0, 1.0]]))


def test_plot_bounds_cover_data_with_padding() -> None:
    x = np.random.default_rng(0).uniform(-1, 3, size=(10_000, 2))
    x[:, 1] = 5.0  # constant column still gets a non-empty range
    b = plot_bounds(x)
    assert b.shape == (2, 2)
    assert b[0, 0] < -1.0 + 0.1 and b[0, 1] > 3.0 - 0.1
    assert b[1, 0] < 5.0 < b[1, 1]


def _metrics_csv(path: Path, family: str = "nll") -> None:
    """A CSVLogger-style file: train curve every step, val curve and a bpd column every 3 steps, a learning
    rate column; empty cells elsewhere."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [f"epoch,step,lr,train_{family},val_{family},val_bpd"]
    for step in range(10):
        lines.append(f"0,{step},0.001,{3.0 - 0.1 * step},,")
        if step % 3 == 2:
            lines.append(f"0,{step},,,{2.9 - 0.1 * step},{1.5 - 0.01 * step}")
    path.write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize("family", ["nll", "loss"])
def test_read_loss_history_skips_empty_cells(tmp_path: Path, family: str) -> None:
    csv_path = tmp_path / "metrics.csv"
    _metrics_csv(csv_path, family)
    series = read_loss_history(csv_path)
    # one family of curves (same units): the lr and bits/dim columns are left out
    assert set(series) == {f"train_{family}", f"val_{family}"}
    steps, values = series[f"train_{family}"]
    np.testing.assert_allclose(steps, np.arange(10))
    np.testing.assert_allclose(values, 3.0 - 0.1 * np.arange(10))
    np.testing.assert_allclose(series[f"val_{family}"][0], [2, 5, 8])


def test_read_loss_history_falls_back_to_bits_per_dim(tmp_path: Path) -> None:
    csv_path = tmp_path / "metrics.csv"
    csv_path.write_text("epoch,step,train_bpd,val_bpd\n0,0,3.0,\n0,1,,2.5\n")
    series = read_loss_history(csv_path)
    assert set(series) == {"train_bpd", "val_bpd"} and series["val_bpd"][1].tolist() == [2.5]


def test_write_plots_2d_writes_density_and_loss(tmp_path: Path) -> None:
    flow = GaussianFlow()
    data = flow.sample(2000)
    _metrics_csv(tmp_path / "logs" / "version_0" / "metrics.csv")
    paths = write_plots(
        tmp_path, flow, {"train": data, "test": data[:500]}, flow.sample(1000), grid_size=80, dpi=60
    )
    assert [p.name for p in paths] == ["density.png", "loss.png"]
    for p in paths:
        assert p.is_file() and p.parent == tmp_path / "plots"
        width, height = _png_size(p)
        assert width > 100 and height > 100
    # no temporary files left behind, and the usual permissions (not mkstemp's 0600)
    assert sorted(q.name for q in (tmp_path / "plots").iterdir()) == ["density.png", "loss.png"]
    reference = tmp_path / "reference.txt"
    reference.write_text("x")
    assert all(p.stat().st_mode & 0o777 == reference.stat().st_mode & 0o777 for p in paths)


def test_write_plots_tabular_pairs_and_history_mapping(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    data = rng.normal(size=(300, 9))
    samples = rng.normal(size=(200, 9))
    paths = write_plots(
        tmp_path, None, {"test": data}, samples, history={"train_loss": [3.0, 2.0, 1.5]}, max_dims=4, dpi=40
    )
    assert [p.name for p in paths] == ["pairs.png", "loss.png"]
    for p in paths:
        _png_size(p)
    # a 4x4 corner plot is larger than a 2x2 one
    small = write_plots(tmp_path / "small", None, {"test": data}, samples, dims=[0, 3], dpi=40)
    assert _png_size(paths[0])[0] > _png_size(small[0])[0]


def test_write_plots_overwrites_atomically(tmp_path: Path) -> None:
    flow = GaussianFlow()
    data = flow.sample(300)
    first = write_plots(tmp_path, flow, {"train": data}, data, grid_size=50, dpi=40)[0]
    before = first.read_bytes()
    second = write_plots(tmp_path, flow, {"train": data}, data + 1.0, grid_size=50, dpi=40)[0]
    assert first == second and second.read_bytes() != before
    assert [q.name for q in (tmp_path / "plots").iterdir()] == ["density.png"]


def test_write_plots_errors(tmp_path: Path) -> None:
    data = np.zeros((10, 2))
    with pytest.raises(ValueError, match="needs a flow"):
        write_plots(tmp_path, None, {"train": data}, data)
    with pytest.raises(ValueError, match="event shape"):
        write_plots(tmp_path, GaussianFlow(), {"train": data}, np.zeros((10, 3)))
    with pytest.raises(ValueError, match="non-empty mapping"):
        write_plots(tmp_path, GaussianFlow(), {}, data)
    with pytest.raises(ValueError, match="dims"):
        write_plots(tmp_path, None, {"train": np.zeros((10, 4))}, np.zeros((10, 4)), dims=[0, 9])
    with pytest.raises(TypeError, match="history"):
        write_plots(tmp_path, GaussianFlow(), {"train": data + np.arange(2)}, data, history=3)  # type: ignore[arg-type]
