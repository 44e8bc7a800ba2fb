"""A φ⁴ scalar field on a periodic L x L lattice, in the hopping parametrisation of Albergo, Kanwar & Shanahan
(2019) and Nicoli et al. (2021): `S(φ) = Σ_x [-2κ Σ_μ φ_x φ_{x+μ} + (1 - 2λ) φ_x² + λ φ_x⁴]`,
`log p~(φ) = -S(φ)` over the `L²` sites (row-major). No closed-form normaliser (for λ = 0 the field is
Gaussian: `log Z = (n/2) log 2π - ½ log det 2(I - κA)`, A the lattice's adjacency matrix, which the tests use).
"""

from __future__ import annotations

import torch
from torch import Tensor

from flows.targets.base import TargetBase

__all__ = ["PhiFour"]


class PhiFour(TargetBase):
    """φ⁴ on a `size` x `size` periodic lattice with hopping `kappa` and coupling `lam` (features = size²)."""

    def __init__(self, size: int = 8, kappa: float = 0.3, lam: float = 0.022) -> None:
        if size < 2:
            raise ValueError(f"the lattice needs size >= 2, got {size}")
        if lam < 0:
            raise ValueError(f"lam must be >= 0 for a normalisable density, got {lam}")
        self.size, self.kappa, self.lam = int(size), float(kappa), float(lam)
        self.features = self.size**2

    def log_prob(self, x: Tensor) -> Tensor:
        """`(batch, L²) -> (batch,)`: `-S(φ)`."""
        phi = x.reshape(x.shape[0], self.size, self.size)
        hopping = (phi * (torch.roll(phi, -1, 1) + torch.roll(phi, -1, 2))).sum((1, 2))
        squared = phi**2
        local = ((1 - 2 * self.lam) * squared + self.lam * squared**2).sum((1, 2))
        return 2 * self.kappa * hopping - local
