"""Linear bijectors on vectors: a fixed `Permutation` and the LU-parameterised `LULinear`.

Both are unconditional: they accept a `context` (chains pass it to every member) and ignore it.
Event: 1-D vectors of `features` elements, any leading batch dimensions.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from flows.core import Bijector

__all__ = ["LULinear", "Permutation"]


def _check_features(features: object, name: str = "features") -> int:
    if isinstance(features, bool) or not isinstance(features, int):
        raise TypeError(f"{name} must be an int, got {type(features).__name__}")
    if features < 1:
        raise ValueError(f"{name} must be at least 1, got {features}")
    return features


class Permutation(Bijector):
    """Reorder the features: `y = x[..., indices]`, `ladj = 0`.

    `kind="random"` draws a permutation from a generator seeded with `seed` (or from torch's global
    generator when `seed=None`); `kind="reverse"` reverses the feature order. The indices are buffers,
    so they follow `.to(device)` and are saved in the `state_dict`.
    """

    def __init__(self, features: int, kind: str = "random", seed: Optional[int] = 0) -> None:
        super().__init__()
        features = _check_features(features)
        if kind == "random":
            generator = None if seed is None else torch.Generator().manual_seed(int(seed))
            indices = torch.randperm(features, generator=generator)
        elif kind == "reverse":
            indices = torch.arange(features - 1, -1, -1)
        else:
            raise ValueError(f"Permutation kind must be 'random' or 'reverse', got {kind!r}")
        self.features = features
        self.kind = kind
        self.register_buffer("indices", indices)
        self.register_buffer("inverse_indices", torch.argsort(indices))

    def extra_repr(self) -> str:
        return f"features={self.features}, kind={self.kind!r}"

    def forward(self, x: Tensor, context: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        """`x (batch, features) -> (x[..., indices], zeros(batch))`; the context is ignored."""
        self.check_event(x, (self.features,))
        return x[..., self.indices], self.zero_ladj(x)

    def inverse(self, y: Tensor, context: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        """`y (batch, features) -> (y[..., inverse_indices], zeros(batch))`; the context is ignored."""
        self.check_event(y, (self.features,))
        return y[..., self.inverse_indices], self.zero_ladj(y)


class LULinear(Bijector):
    """An invertible linear map `y = W x + b` with `W = L U` (Durkan et al. 2019, neural spline flows).

    `L` is unit lower triangular, `U` upper triangular with a positive diagonal
    `softplus(raw) + eps`. Initialised to the identity with zero bias. `ladj = sum(log diag U)`, the same
    for every sample (expanded to the batch shape). There is no built-in permutation: pair it with a
    `Permutation` to mix the feature order (as NSF does). Unconditional: the context is ignored.

    The inverse solves two triangular systems (`torch.linalg.solve_triangular`), so it costs
    `O(features^2)` per sample and never forms `W^{-1}`.
    """

    def __init__(self, features: int, eps: float = 1e-3) -> None:
        super().__init__()
        features = _check_features(features)
        if not eps > 0:
            raise ValueError(f"eps must be positive, got {eps}")
        self.features = features
        self.eps = float(eps)
        # Packed strictly-triangular entries (no dead parameters); index buffers place them.
        lower_rows, lower_cols = torch.tril_indices(features, features, offset=-1)
        self.register_buffer("lower_indices", lower_rows * features + lower_cols, persistent=False)
        self.register_buffer("upper_indices", lower_cols * features + lower_rows, persistent=False)
        self.lower_entries = nn.Parameter(torch.zeros(lower_rows.numel()))
        self.upper_entries = nn.Parameter(torch.zeros(lower_rows.numel()))
        identity_raw = math.log(math.expm1(1.0 - self.eps))  # softplus(raw) + eps == 1
        self.unconstrained_diagonal = nn.Parameter(torch.full((features,), identity_raw))
        self.bias = nn.Parameter(torch.zeros(features))

    def extra_repr(self) -> str:
        return f"features={self.features}"

    def diagonal(self) -> Tensor:
        """The positive diagonal of `U`, shape `(features,)`."""
        return F.softplus(self.unconstrained_diagonal) + self.eps

    def factors(self) -> tuple[Tensor, Tensor]:
        """`(L, U)`, each `(features, features)`: L unit lower triangular, U upper triangular."""
        size = self.features * self.features
        lower = self.lower_entries.new_zeros(size).index_add(0, self.lower_indices, self.lower_entries)
        upper = self.upper_entries.new_zeros(size).index_add(0, self.upper_indices, self.upper_entries)
        eye = torch.eye(self.features, dtype=lower.dtype, device=lower.device)
        lower = lower.view(self.features, self.features) + eye
        upper = upper.view(self.features, self.features) + torch.diag(self.diagonal())
        return lower, upper

    def weight(self) -> Tensor:
        """The matrix `W = L U`, shape `(features, features)`."""
        lower, upper = self.factors()
        return lower @ upper

    def logabsdet(self) -> Tensor:
        """`log |det W| = sum(log diag U)`, a 0-d tensor."""
        return torch.log(self.diagonal()).sum()

    def forward(self, x: Tensor, context: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        """`x (batch, features) -> (W x + b (batch, features), ladj (batch))`; the context is ignored."""
        self.check_event(x, (self.features,))
        y = F.linear(x, self.weight(), self.bias)
        return y, self.logabsdet().expand(self.batch_shape(x))

    def inverse(self, y: Tensor, context: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        """`y (batch, features) -> (W^{-1} (y - b) (batch, features), -ladj (batch))`."""
        self.check_event(y, (self.features,))
        lower, upper = self.factors()
        batch = self.batch_shape(y)
        rows = (y - self.bias).reshape(-1, self.features)
        # Row form: x W^T = z with W^T = U^T L^T; solve t L^T = z, then x U^T = t.
        t = torch.linalg.solve_triangular(lower.mT, rows, upper=True, left=False, unitriangular=True)
        x = torch.linalg.solve_triangular(upper.mT, t, upper=False, left=False)
        return x.reshape(batch + (self.features,)), (-self.logabsdet()).expand(batch)
