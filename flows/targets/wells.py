"""Double wells: a 2-D double well `log p~(x) = -(a x0^4 + b x0^2 + c x0) - x1^2 / 2` and the many-well of
FAB (Midgley et al. 2023): independent copies of it on consecutive coordinate pairs (32-D = 16 copies, with
FAB's a = 1, b = -6, c = -0.5). Exact log Z from a float64 1-D quadrature of the quartic factor (Simpson's rule
on a fine grid) plus the Gaussian factor's `log sqrt(2 pi)`.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor

from flows.targets.base import TargetBase

__all__ = ["DoubleWell", "ManyWell", "quartic_log_normalizer"]


def quartic_log_normalizer(
    a: float, b: float, c: float, half_width: float = 20.0, points: int = 200_001
) -> float:
    """`log ∫ exp(-(a x^4 + b x^2 + c x)) dx` (needs a > 0) by Simpson's rule on [-half_width, half_width]."""
    if not a > 0:
        raise ValueError(f"the quartic coefficient must be positive for a normalisable well, got a = {a}")
    if points % 2 == 0:
        points += 1
    x = torch.linspace(-half_width, half_width, points, dtype=torch.float64)
    log_f = -(a * x**4 + b * x**2 + c * x)
    peak = log_f.max()
    f = torch.exp(log_f - peak)
    h = (2 * half_width) / (points - 1)
    weights = torch.ones(points, dtype=torch.float64)
    weights[1:-1:2], weights[2:-1:2] = 4.0, 2.0
    return float(peak + torch.log((weights * f).sum() * h / 3))


class DoubleWell(TargetBase):
    """2-D double well: a quartic well in x0 times a standard normal in x1 (FAB's well by default)."""

    def __init__(self, a: float = 1.0, b: float = -6.0, c: float = -0.5) -> None:
        self.a, self.b, self.c = float(a), float(b), float(c)
        self.features = 2
        self.log_normalizer: Optional[float] = quartic_log_normalizer(
            self.a, self.b, self.c
        ) + 0.5 * math.log(2 * math.pi)

    def log_prob(self, x: Tensor) -> Tensor:
        """`(batch, 2) -> (batch,)`."""
        x0, x1 = x[:, 0], x[:, 1]
        return -(self.a * x0**4 + self.b * x0**2 + self.c * x0) - 0.5 * x1**2

    def sample(self, n: int, generator: Optional[torch.Generator] = None, points: int = 20_001) -> Tensor:
        """`(n, 2)` samples (float64): x0 by inverting the quartic factor's CDF tabulated on a fine grid."""
        grid = torch.linspace(-20.0, 20.0, points, dtype=torch.float64)
        log_f = -(self.a * grid**4 + self.b * grid**2 + self.c * grid)
        cdf = torch.cumsum(torch.exp(log_f - log_f.max()), 0)
        cdf = cdf / cdf[-1]
        u = torch.rand(n, generator=generator, dtype=torch.float64)
        index = torch.searchsorted(cdf, u).clamp(1, points - 1)
        low, high = cdf[index - 1], cdf[index]
        fraction = ((u - low) / (high - low).clamp_min(1e-300)).clamp(0, 1)
        x0 = grid[index - 1] + fraction * (grid[1] - grid[0])
        x1 = torch.randn(n, generator=generator, dtype=torch.float64)
        return torch.stack([x0, x1], 1)


class ManyWell(TargetBase):
    """`features / 2` independent 2-D double wells on the coordinate pairs (0, 1), (2, 3), ... (default 32-D)."""

    def __init__(self, features: int = 32, a: float = 1.0, b: float = -6.0, c: float = -0.5) -> None:
        if features < 2 or features % 2:
            raise ValueError(f"the many-well needs an even number of features >= 2, got {features}")
        self.well = DoubleWell(a, b, c)
        self.features = int(features)
        assert self.well.log_normalizer is not None
        self.log_normalizer = features // 2 * self.well.log_normalizer

    def log_prob(self, x: Tensor) -> Tensor:
        """`(batch, D) -> (batch,)`: the sum of the wells' log densities."""
        pairs = x.reshape(x.shape[0], -1, 2)
        return self.well.log_prob(pairs.reshape(-1, 2)).reshape(x.shape[0], -1).sum(1)

    def sample(self, n: int, generator: Optional[torch.Generator] = None) -> Tensor:
        """`(n, D)` exact samples (float64): independent double-well samples on each coordinate pair."""
        pairs = self.well.sample(n * (self.features // 2), generator)
        return pairs.reshape(n, self.features)
