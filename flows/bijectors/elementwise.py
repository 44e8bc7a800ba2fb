"""Fixed element-wise bijectors: `Sigmoid`, `Logit`, `Tanh`, `ElementwiseAffine` and `Standardize`.

None has learnable parameters and all are unconditional (a passed context is ignored). Each takes
`event_dims` (1 for vectors, 3 for `(C, H, W)` images) so the `ladj` sums over the right dims. Logs
use softplus / log1p forms, stable for large inputs.
"""

from __future__ import annotations

import math
from typing import Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from flows.core import Bijector, sum_event

__all__ = ["ElementwiseAffine", "Logit", "Sigmoid", "Standardize", "Tanh"]


def _check_event_dims(event_dims: object) -> int:
    if isinstance(event_dims, bool) or not isinstance(event_dims, int):
        raise TypeError(f"event_dims must be an int, got {type(event_dims).__name__}")
    if event_dims < 1:
        raise ValueError(f"event_dims must be at least 1 (1 for vectors, 3 for images), got {event_dims}")
    return event_dims


def _log_sigmoid_derivative(x: Tensor) -> Tensor:
    """`log sigmoid'(x) = log sigmoid(x) + log sigmoid(-x) = -softplus(-x) - softplus(x)`."""
    return -F.softplus(-x) - F.softplus(x)


class _Elementwise(Bijector):
    def __init__(self, event_dims: int = 1) -> None:
        super().__init__()
        self.event_dims = _check_event_dims(event_dims)

    def extra_repr(self) -> str:
        return f"event_dims={self.event_dims}"

    def _check(self, x: Tensor) -> None:
        if x.dim() < self.event_dims:
            raise ValueError(
                f"{type(self).__name__} expected at least {self.event_dims} event dims, got shape {tuple(x.shape)}"
            )


class Sigmoid(_Elementwise):
    """`y = sigmoid(x)`, reals to `(0, 1)`; `ladj = sum(log sigmoid(x) + log sigmoid(-x))`."""

    def forward(self, x: Tensor, context: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        self._check(x)
        return torch.sigmoid(x), sum_event(_log_sigmoid_derivative(x), self.event_dims)

    def inverse(self, y: Tensor, context: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        self._check(y)
        x = torch.log(y) - torch.log1p(-y)
        return x, -sum_event(torch.log(y) + torch.log1p(-y), self.event_dims)


class Logit(_Elementwise):
    """`y = logit(alpha + (1 - 2 alpha) x)`, `[0, 1]` data to reals (RealNVP's pre-processing).

    `alpha` in `[0, 0.5)` squeezes the input away from 0 and 1 so that boundary values stay finite
    (Dinh et al. 2017 use 0.05); the squeeze's `log(1 - 2 alpha)` is part of the `ladj`. Its inverse maps
    the reals back into `[alpha', 1 - alpha']` of the data range. `alpha = 0` is the plain inverse of `Sigmoid`.
    """

    def __init__(self, alpha: float = 0.0, event_dims: int = 1) -> None:
        super().__init__(event_dims)
        if not 0.0 <= alpha < 0.5:
            raise ValueError(f"alpha must be in [0, 0.5), got {alpha}")
        self.alpha = float(alpha)
        self.log_squeeze = math.log1p(-2.0 * self.alpha)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, event_dims={self.event_dims}"

    def forward(self, x: Tensor, context: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        self._check(x)
        u = self.alpha + (1.0 - 2.0 * self.alpha) * x
        log_u, log_one_minus_u = torch.log(u), torch.log1p(-u)
        elementwise = self.log_squeeze - log_u - log_one_minus_u
        return log_u - log_one_minus_u, sum_event(elementwise, self.event_dims)

    def inverse(self, y: Tensor, context: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        self._check(y)
        x = (torch.sigmoid(y) - self.alpha) / (1.0 - 2.0 * self.alpha)
        elementwise = _log_sigmoid_derivative(y) - self.log_squeeze
        return x, sum_event(elementwise, self.event_dims)


class Tanh(_Elementwise):
    """`y = tanh(x)`, reals to `(-1, 1)`; `ladj = sum(log(1 - tanh(x)^2)) = sum(2 (log 2 - x - softplus(-2x)))`."""

    def forward(self, x: Tensor, context: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        self._check(x)
        elementwise = 2.0 * (math.log(2.0) - x - F.softplus(-2.0 * x))
        return torch.tanh(x), sum_event(elementwise, self.event_dims)

    def inverse(self, y: Tensor, context: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        self._check(y)
        elementwise = -(torch.log1p(-y) + torch.log1p(y))
        return torch.atanh(y), sum_event(elementwise, self.event_dims)


def _as_buffer(value: Union[float, Tensor, list], name: str) -> Tensor:
    tensor = torch.as_tensor(value)
    if not tensor.is_floating_point():
        tensor = tensor.to(torch.get_default_dtype())
    if not bool(torch.isfinite(tensor).all()):
        raise ValueError(f"{name} must be finite, got {tensor}")
    return tensor.detach().clone()


def _check_affine(shift: Tensor, scale: Tensor) -> None:
    """A ValueError unless `scale` is finite and non-zero and `shift` finite: at construction, and for the
    buffers a state loads (a zero or NaN scale would score every row -inf)."""
    if not bool((torch.isfinite(scale) & (scale != 0)).all()):
        raise ValueError(f"scale must be finite and non-zero everywhere, got {scale.flatten()[:10].tolist()}")
    if not bool(torch.isfinite(shift).all()):
        raise ValueError(f"shift must be finite everywhere, got {shift.flatten()[:10].tolist()}")


class ElementwiseAffine(_Elementwise):
    """A fixed affine map `y = scale * x + shift` (buffers, not parameters).

    `shift` and `scale` are floats or tensors that broadcast against the event (at most `event_dims`
    dims: `(features,)` for vectors, `(C, 1, 1)` or `(C, H, W)` for images). `scale` must be non-zero.
    `ladj = sum over the event of log |scale|`, the same for every sample.
    """

    def __init__(
        self, shift: Union[float, Tensor] = 0.0, scale: Union[float, Tensor] = 1.0, event_dims: int = 1
    ) -> None:
        super().__init__(event_dims)
        shift_tensor, scale_tensor = _as_buffer(shift, "shift"), _as_buffer(scale, "scale")
        for name, tensor in (("shift", shift_tensor), ("scale", scale_tensor)):
            if tensor.dim() > self.event_dims:
                raise ValueError(
                    f"{name} must have at most event_dims={self.event_dims} dims, got shape {tuple(tensor.shape)}"
                )
        _check_affine(shift_tensor, scale_tensor)
        self.register_buffer("shift", shift_tensor)
        self.register_buffer("scale", scale_tensor)

    def check_state(self) -> None:
        _check_affine(self.shift, self.scale)

    def _ladj(self, x: Tensor) -> Tensor:
        event = x.shape[x.dim() - self.event_dims :]
        log_scale = torch.log(torch.abs(self.scale)).to(x.dtype).expand(event).sum()
        return log_scale.expand(self.batch_shape(x))

    def forward(self, x: Tensor, context: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        self._check(x)
        return x * self.scale + self.shift, self._ladj(x)

    def inverse(self, y: Tensor, context: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        self._check(y)
        return (y - self.shift) / self.scale, -self._ladj(y)


class Standardize(ElementwiseAffine):
    """`y = (x - mean) / std` with fixed buffers: folds data standardisation into a flow.

    Prepended to a flow's transform, the flow's `log_prob` stays in the user's units (the `ladj`
    `-sum log std` is included). `mean`/`std` broadcast against the event; `std` must be positive.
    """

    def __init__(
        self, mean: Union[float, Tensor] = 0.0, std: Union[float, Tensor] = 1.0, event_dims: int = 1
    ) -> None:
        mean_tensor, std_tensor = _as_buffer(mean, "mean"), _as_buffer(std, "std")
        if bool((std_tensor <= 0).any()):
            raise ValueError("std must be positive everywhere")
        super().__init__(shift=-mean_tensor / std_tensor, scale=1.0 / std_tensor, event_dims=event_dims)
