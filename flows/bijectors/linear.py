"""Linear bijectors on vectors: a fixed `Permutation` and the LU-parameterised `LULinear`.

Both are unconditional: they accept a `context` (chains pass it to every member) and ignore it.
Event: 1-D vectors of `features` elements, any leading batch dimensions.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from flows.core import Bijector, check_permutation, load_then_check

__all__ = ["LULinear", "LUMatrix", "Permutation"]


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

    volume_preserving = True

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

    def check_state(self) -> None:
        check_permutation(self, "indices", self.indices, self.features)
        if not torch.equal(self.inverse_indices, torch.argsort(self.indices)):
            raise ValueError(
                "Permutation.inverse_indices: expected the inverse of indices (argsort), got another"
            )

    @property
    def input_event_shape(self) -> tuple[int, ...]:
        return (self.features,)

    def forward(self, x: Tensor, context: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        """`x (batch, features) -> (x[..., indices], zeros(batch))`; the context is ignored."""
        self.check_event(x, (self.features,))
        # index_select: several times faster than advanced indexing on CPUs, forward and backward.
        return x.index_select(-1, self.indices), self.zero_ladj(x)

    def inverse(self, y: Tensor, context: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        """`y (batch, features) -> (y[..., inverse_indices], zeros(batch))`; the context is ignored."""
        self.check_event(y, (self.features,))
        return y.index_select(-1, self.inverse_indices), self.zero_ladj(y)


class LUMatrix(nn.Module):
    """A learnable invertible matrix `W = P L U` of shape `(size, size)`.

    `P` is a fixed permutation (a buffer), `L` unit lower triangular, `U` upper triangular with diagonal
    `sign * exp(log_diagonal)` (`sign` a fixed buffer). `log |det W| = sum(log_diagonal)`. Built from
    `weight` by an LU decomposition (Kingma & Dhariwal 2018), or the identity when `weight` is None.
    Shared by `LULinear` and the LU-parameterised `Invertible1x1Conv`.
    """

    def __init__(self, size: int, weight: Optional[Tensor] = None) -> None:
        super().__init__()
        size = _check_features(size, "size")
        self.size = size
        rows, cols = torch.tril_indices(size, size, offset=-1)
        # Packed strictly-triangular entries (no dead parameters); index buffers place them.
        self.register_buffer("lower_indices", rows * size + cols, persistent=False)
        self.register_buffer("upper_indices", cols * size + rows, persistent=False)
        if weight is None:
            permutation = None
            lower_entries = torch.zeros(rows.numel())
            upper_entries = torch.zeros(rows.numel())
            sign = torch.ones(size)
            log_diagonal = torch.zeros(size)
        else:
            if tuple(weight.shape) != (size, size):
                raise ValueError(f"weight must have shape {(size, size)}, got {tuple(weight.shape)}")
            permutation, lower, upper = torch.linalg.lu(weight.detach().to(torch.float64))
            diagonal = torch.diagonal(upper)
            if bool((diagonal == 0).any()):
                raise ValueError("weight must be invertible, got a singular matrix")
            lower_entries = lower[rows, cols].float()
            upper_entries = upper[cols, rows].float()
            sign = torch.sign(diagonal).float()
            log_diagonal = torch.log(diagonal.abs()).float()
        if permutation is None:
            self.register_buffer("permutation", None)
        else:
            self.register_buffer("permutation", permutation.float())
        self.register_buffer("sign", sign)
        self.lower_entries = nn.Parameter(lower_entries)
        self.upper_entries = nn.Parameter(upper_entries)
        self.log_diagonal = nn.Parameter(log_diagonal)

    def extra_repr(self) -> str:
        return f"size={self.size}, permuted={self.permutation is not None}"

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        load_then_check(self, super()._load_from_state_dict, *args, **kwargs)

    def check_state(self) -> None:
        """A ValueError unless `sign` holds +-1 and `permutation` (if any) is a permutation matrix: the fixed
        parts of `W`, which a loaded state must not change into a non-invertible or rescaled map (a sign of 3
        loaded as such scaled the density by 1/3)."""
        if self.sign.shape != (self.size,) or not bool((self.sign.abs() == 1).all()):
            raise ValueError(
                f"LUMatrix.sign: expected {self.size} values of +1 or -1, got {self.sign.flatten()[:10].tolist()}"
            )
        if self.permutation is not None:
            p = self.permutation
            ok = p.shape == (self.size, self.size) and bool(((p == 0) | (p == 1)).all())
            if not (ok and bool((p.sum(0) == 1).all()) and bool((p.sum(1) == 1).all())):
                raise ValueError(
                    f"LUMatrix.permutation: expected a {self.size} x {self.size} permutation matrix"
                )

    def factors(self) -> tuple[Tensor, Tensor]:
        """`(L, U)`, each `(size, size)`: L unit lower triangular, U upper triangular."""
        n = self.size
        lower = self.lower_entries.new_zeros(n * n).index_add(0, self.lower_indices, self.lower_entries)
        upper = self.upper_entries.new_zeros(n * n).index_add(0, self.upper_indices, self.upper_entries)
        eye = torch.eye(n, dtype=lower.dtype, device=lower.device)
        diagonal = self.sign * torch.exp(self.log_diagonal)
        return lower.view(n, n) + eye, upper.view(n, n) + torch.diag(diagonal)

    def matrix(self) -> Tensor:
        """`W = P L U`, shape `(size, size)`."""
        lower, upper = self.factors()
        weight = lower @ upper
        return weight if self.permutation is None else self.permutation @ weight

    def inverse_matrix(self) -> Tensor:
        """`W^{-1} = U^{-1} L^{-1} P^T` by two triangular solves, shape `(size, size)`."""
        lower, upper = self.factors()
        right = torch.eye(self.size, dtype=lower.dtype, device=lower.device)
        if self.permutation is not None:
            right = self.permutation.mT
        right = torch.linalg.solve_triangular(lower, right, upper=False, unitriangular=True)
        return torch.linalg.solve_triangular(upper, right, upper=True)

    def solve_rows(self, rows: Tensor) -> Tensor:
        """Solve `x W^T = rows` for `x`, with `rows` of shape `(n, size)`; returns `(n, size)`."""
        lower, upper = self.factors()
        if self.permutation is not None:
            rows = rows @ self.permutation  # W^T = U^T L^T P^T
        t = torch.linalg.solve_triangular(lower.mT, rows, upper=True, left=False, unitriangular=True)
        return torch.linalg.solve_triangular(upper.mT, t, upper=False, left=False)

    def logabsdet(self) -> Tensor:
        """`log |det W| = sum(log_diagonal)`, a 0-d tensor."""
        return self.log_diagonal.sum()


class LULinear(Bijector):
    """An invertible linear map `y = W x + b` with `W = L U` (Durkan et al. 2019, neural spline flows).

    `L` is unit lower triangular and `U` upper triangular with a positive diagonal `exp(log_diagonal)`
    (see `LUMatrix`). Initialised to the identity with zero bias. `ladj = sum(log_diagonal)`, the same
    for every sample (expanded to the batch shape). There is no built-in permutation: pair it with a
    `Permutation` to mix the feature order (as NSF does). Unconditional: the context is ignored.

    The inverse solves two triangular systems (`torch.linalg.solve_triangular`), so it costs
    `O(features^2)` per sample and never forms `W^{-1}`.
    """

    def __init__(self, features: int) -> None:
        super().__init__()
        features = _check_features(features)
        self.features = features
        self.lu = LUMatrix(features)
        self.bias = nn.Parameter(torch.zeros(features))

    def extra_repr(self) -> str:
        return f"features={self.features}"

    @property
    def input_event_shape(self) -> tuple[int, ...]:
        return (self.features,)

    def weight(self) -> Tensor:
        """The matrix `W = L U`, shape `(features, features)`."""
        return self.lu.matrix()

    def forward(self, x: Tensor, context: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        """`x (batch, features) -> (W x + b (batch, features), ladj (batch))`; the context is ignored."""
        self.check_event(x, (self.features,))
        y = F.linear(x, self.lu.matrix(), self.bias)
        return y, self.lu.logabsdet().expand(self.batch_shape(x))

    def inverse(self, y: Tensor, context: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        """`y (batch, features) -> (W^{-1} (y - b) (batch, features), -ladj (batch))`."""
        self.check_event(y, (self.features,))
        batch = self.batch_shape(y)
        x = self.lu.solve_rows((y - self.bias).reshape(-1, self.features))
        return x.reshape(batch + (self.features,)), (-self.lu.logabsdet()).expand(batch)
