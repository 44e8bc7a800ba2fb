"""The 40-component 2-D Gaussian mixture of the flow-annealed-importance-sampling benchmarks (FAB; Midgley et
al. 2023): equal weights, means uniform in [-loc_scaling, loc_scaling]^2 drawn from a fixed seed
(`(torch.rand(n, 2) - 0.5) * 2 * loc_scaling` after seeding, as in FAB's PyTorch code), isotropic components
of std `scale` (1, as in fab-jax). Normalised (log Z = 0) and exactly sampled.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor

from flows.targets.base import TargetBase

__all__ = ["GaussianMixture"]


class GaussianMixture(TargetBase):
    """An equal-weight mixture of `components` isotropic Gaussians (std `scale`) in `features` dimensions."""

    log_normalizer: Optional[float] = 0.0

    def __init__(
        self,
        components: int = 40,
        features: int = 2,
        loc_scaling: float = 40.0,
        scale: float = 1.0,
        seed: int = 0,
    ) -> None:
        if components < 1 or features < 1 or not scale > 0:
            raise ValueError(
                f"expected components >= 1, features >= 1 and scale > 0, got {components}, {features}, {scale}"
            )
        generator = torch.Generator().manual_seed(int(seed))
        #: (components, features) float64 means
        self.locs = ((torch.rand(components, features, generator=generator) - 0.5) * 2 * loc_scaling).double()
        self.features = int(features)
        self.components = int(components)
        self.scale = float(scale)

    def log_prob(self, x: Tensor) -> Tensor:
        """`(batch, D) -> (batch,)`: `logsumexp_k log N(x; mu_k, scale^2 I) - log K`."""
        locs = self.locs.to(x)
        squared = ((x[:, None, :] - locs[None]) ** 2).sum(-1) / self.scale**2  # (batch, K)
        log_normal = -0.5 * squared - self.features * (math.log(self.scale) + 0.5 * math.log(2 * math.pi))
        return torch.logsumexp(log_normal, 1) - math.log(self.components)

    def sample(self, n: int, generator: Optional[torch.Generator] = None) -> Tensor:
        """`(n, D)` exact samples (float64)."""
        which = torch.randint(self.components, (n,), generator=generator)
        noise = torch.randn(n, self.features, generator=generator, dtype=torch.float64)
        return self.locs[which] + self.scale * noise
