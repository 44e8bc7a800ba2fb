"""`Invertible1x1Conv`: Glow's learned channel mixing (Kingma & Dhariwal 2018).

Event `(C, H, W)` (`event_dims=3`), any leading batch dimensions. Unconditional: a context is ignored.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from flows.bijectors.linear import LUMatrix
from flows.core import Bijector

__all__ = ["Invertible1x1Conv"]


def _random_rotation(channels: int) -> Tensor:
    """A random orthogonal `(channels, channels)` matrix from torch's global generator (QR of a Gaussian)."""
    q, r = torch.linalg.qr(torch.randn(channels, channels, dtype=torch.float64))
    return (q * torch.sign(torch.diagonal(r))).to(torch.get_default_dtype())


def _mix_channels(weight: Tensor, x: Tensor) -> Tensor:
    """`out[..., i, h, w] = sum_j weight[i, j] x[..., j, h, w]` for `x (batch, C, H, W)`."""
    return torch.einsum("ij,...jhw->...ihw", weight, x)


class Invertible1x1Conv(Bijector):
    """A 1x1 convolution `y[:, h, w] = W x[:, h, w]` with an invertible `(C, C)` matrix `W`.

    `W` starts as a random rotation (drawn from torch's global generator, so `torch.manual_seed`
    makes it reproducible). `lu=True` parameterises `W = P L U` (`LUMatrix`; `log |det W|` is a sum of
    learned log-diagonal entries, `O(C)`); `lu=False` learns the full matrix and uses `slogdet`
    (`O(C^3)`). `ladj = H * W * log |det W|`. The inverse applies `W^{-1}`.
    """

    event_dims = 3

    def __init__(self, channels: int, lu: bool = True) -> None:
        super().__init__()
        if isinstance(channels, bool) or not isinstance(channels, int):
            raise TypeError(f"channels must be an int, got {type(channels).__name__}")
        if channels < 1:
            raise ValueError(f"channels must be at least 1, got {channels}")
        self.channels = channels
        self.lu = bool(lu)
        rotation = _random_rotation(channels)
        if self.lu:
            self.lu_matrix = LUMatrix(channels, rotation)
        else:
            self.weight = nn.Parameter(rotation)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, lu={self.lu}"

    def forward_event_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        shape = super().forward_event_shape(shape)
        if shape[0] != self.channels:
            raise ValueError(f"Invertible1x1Conv takes {self.channels} channels, got event shape {shape}")
        return shape

    def inverse_event_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        return self.forward_event_shape(shape)

    def _check(self, x: Tensor) -> None:
        if x.dim() < 3 or x.shape[-3] != self.channels:
            raise ValueError(
                f"Invertible1x1Conv expected input of shape batch + ({self.channels}, H, W), got {tuple(x.shape)}"
            )

    def matrix(self) -> Tensor:
        """The mixing matrix `W`, shape `(C, C)`."""
        return self.lu_matrix.matrix() if self.lu else self.weight

    def logabsdet(self) -> Tensor:
        """`log |det W|`, a 0-d tensor."""
        return self.lu_matrix.logabsdet() if self.lu else torch.linalg.slogdet(self.weight)[1]

    def _ladj(self, x: Tensor) -> Tensor:
        spatial = x.shape[-2] * x.shape[-1]
        return (spatial * self.logabsdet()).expand(self.batch_shape(x))

    def forward(self, x: Tensor, context: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        """`x (batch, C, H, W) -> (W x (batch, C, H, W), ladj (batch))`."""
        self._check(x)
        return _mix_channels(self.matrix(), x), self._ladj(x)

    def inverse(self, y: Tensor, context: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        """`y (batch, C, H, W) -> (W^{-1} y (batch, C, H, W), -ladj (batch))`."""
        self._check(y)
        inverse = self.lu_matrix.inverse_matrix() if self.lu else torch.linalg.inv(self.weight)
        return _mix_channels(inverse, y), -self._ladj(y)
