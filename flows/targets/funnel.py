"""Neal's funnel (Neal 2003, "Slice sampling"): `v ~ N(0, 3^2)`, `x_i | v ~ N(0, e^v)` for i = 1..D-1.

Normalised (log Z = 0) and exactly sampled.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor

from flows.targets.base import TargetBase

__all__ = ["Funnel"]


class Funnel(TargetBase):
    """Neal's funnel in `features` dimensions (default 10); coordinate 0 is `v`, with std `scale` (3)."""

    log_normalizer: Optional[float] = 0.0

    def __init__(self, features: int = 10, scale: float = 3.0) -> None:
        if features < 2:
            raise ValueError(f"the funnel needs features >= 2 (v and at least one x), got {features}")
        if not scale > 0:
            raise ValueError(f"scale: expected a positive std of v, got {scale}")
        self.features = int(features)
        self.scale = float(scale)

    def log_prob(self, x: Tensor) -> Tensor:
        """`(batch, D) -> (batch,)`: `log N(v; 0, scale^2) + sum_i log N(x_i; 0, e^v)`."""
        v, rest = x[:, 0], x[:, 1:]
        log_2pi = math.log(2 * math.pi)
        log_v = -0.5 * (v / self.scale) ** 2 - math.log(self.scale) - 0.5 * log_2pi
        d = rest.shape[1]
        log_rest = -0.5 * (rest**2).sum(1) * torch.exp(-v) - 0.5 * d * v - 0.5 * d * log_2pi
        return log_v + log_rest

    def sample(self, n: int, generator: Optional[torch.Generator] = None) -> Tensor:
        """`(n, D)` exact samples (float64)."""
        v = self.scale * torch.randn(n, 1, generator=generator, dtype=torch.float64)
        rest = torch.randn(n, self.features - 1, generator=generator, dtype=torch.float64) * torch.exp(v / 2)
        return torch.cat([v, rest], 1)
