"""`ColumnSupport`: per-column bounds of a table, mapped onto the reals with exact log-Jacobians.

Each column `j` of a vector `x (batch, D)` is unbounded (`low = -inf, high = inf`: identity), half-bounded
or an interval; `forward` maps the open support `(low, high)` onto the reals, `inverse` maps the reals back
into it, so a flow built on top scores a density on the support and its samples never leave it:

- lower bound: `u = s * softplus^-1((x - low) / s)`, inverse `x = low + s * softplus(u / s)`;
- upper bound: `u = -s * softplus^-1((high - x) / s)`, inverse `x = high - s * softplus(-u / s)`;
- interval: `u = logit((x - low) / (high - low))`, inverse `x = low + (high - low) * sigmoid(u)`.

Softplus rather than exp for half-bounded columns: softplus is the identity (plus a constant) far from the
bound, so a column whose values sit far from its bound (a price in the thousands with bound 0) is modelled as
it was, and the base's tails stay linear in the data (an exp would turn a heavy latent tail into samples that
overflow to inf). Near the bound it behaves like a log. `s > 0` (one per column, a buffer) sets where one
regime turns into the other; `flows.training` sets it to the mean distance of the training data from the
bound, so the map does not depend on the data's units.

Values outside the open support map to NaN (so `Flow.log_prob` scores them `-inf`); `contains` tells which
rows are inside. Samples in float32 may reach a bound exactly when the latent is far out (`sigmoid`,
`softplus` saturate), never beyond it.
"""

from __future__ import annotations

import math
from typing import Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from flows.core import Bijector

__all__ = ["ColumnSupport"]

_NONE, _LOWER, _UPPER, _INTERVAL = 0, 1, 2, 3


def _vector(value: Union[float, Tensor, list], name: str) -> Tensor:
    tensor = torch.as_tensor(value)
    if not tensor.is_floating_point():
        tensor = tensor.to(torch.get_default_dtype())
    if tensor.dim() != 1:
        raise ValueError(f"{name} must be a vector (features,), got shape {tuple(tensor.shape)}")
    if bool(torch.isnan(tensor).any()):
        raise ValueError(f"{name} must not hold NaN (use -inf / inf for no bound), got {tensor.tolist()}")
    return tensor.detach().clone()


def _log_one_minus_exp(t: Tensor) -> Tensor:
    """`log(1 - exp(-t))` for `t > 0` (NaN for `t < 0`, -inf at 0), stable for small and large `t`."""
    return torch.where(t < math.log(2.0), torch.log(-torch.expm1(-t)), torch.log1p(-torch.exp(-t)))


def _check_support(low: Tensor, high: Tensor, scale: Tensor) -> None:
    """A ValueError unless every column has `low < high` (either may be infinite on its own side) and a positive
    finite softplus `scale`: at construction, and for the buffers a state loads."""
    if bool((low >= high).any()) or bool((low == math.inf).any()) or bool((high == -math.inf).any()):
        raise ValueError(f"every column needs low < high, got low {low.tolist()} and high {high.tolist()}")
    if not bool(((scale > 0) & torch.isfinite(scale)).all()):
        raise ValueError(f"scale must be positive and finite, got {scale.tolist()}")


class ColumnSupport(Bijector):
    """Maps each column's open support `(low, high)` onto the reals (see the module docstring).

    `low`, `high`: `(features,)`, `-inf` / `inf` where a column has no bound; `low < high`. `scale`:
    `(features,)` positive softplus scales of the half-bounded columns (default 1; ignored for the others).
    """

    event_dims = 1

    def __init__(
        self,
        low: Union[Tensor, list],
        high: Union[Tensor, list],
        scale: Optional[Union[Tensor, list]] = None,
    ) -> None:
        super().__init__()
        low_t, high_t = _vector(low, "low"), _vector(high, "high")
        scale_t = torch.ones_like(low_t) if scale is None else _vector(scale, "scale")
        if not low_t.shape == high_t.shape == scale_t.shape:
            raise ValueError(
                f"low, high and scale must have the same shape (features,), got {tuple(low_t.shape)}, "
                f"{tuple(high_t.shape)} and {tuple(scale_t.shape)}"
            )
        _check_support(low_t, high_t, scale_t)
        self.register_buffer("low", low_t)
        self.register_buffer("high", high_t)
        self.register_buffer("scale", scale_t.to(low_t.dtype))

    def check_state(self) -> None:
        _check_support(self.low, self.high, self.scale)

    @property
    def features(self) -> int:
        return int(self.low.shape[0])

    def extra_repr(self) -> str:
        return f"low={self.low.tolist()}, high={self.high.tolist()}"

    def _parts(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
        """Per-column kind masks and finite stand-ins for the bounds (so that masked branches stay finite)."""
        self.check_event(x, (self.features,))
        low, high, scale = (b.to(x.dtype) for b in (self.low, self.high, self.scale))
        has_low, has_high = torch.isfinite(low), torch.isfinite(high)
        interval = has_low & has_high
        lower, upper = has_low & ~has_high, has_high & ~has_low
        low_safe = torch.where(has_low, low, torch.zeros_like(low))
        high_safe = torch.where(has_high, high, torch.ones_like(high))
        return lower, upper, interval, low_safe, high_safe, scale

    def contains(self, x: Tensor) -> Tensor:
        """`(batch,)` True where every column of `x (batch, D)` lies strictly inside its bounds."""
        self.check_event(x, (self.features,))
        low, high = self.low.to(x.dtype), self.high.to(x.dtype)
        return ((x > low) & (x < high)).all(dim=-1)

    def forward(self, x: Tensor, context: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        lower, upper, interval, low, high, scale = self._parts(x)
        one = torch.ones_like(x)
        # half-bounded: t > 0 is the distance from the bound in units of s
        t = torch.where(lower, (x - low) / scale, torch.where(upper, (high - x) / scale, one))
        log_one_minus = _log_one_minus_exp(t)
        half = scale * (t + log_one_minus)  # s * softplus^-1(t)
        # interval: p in (0, 1)
        width = high - low
        p = torch.where(interval, (x - low) / width, 0.5 * one)
        log_p, log_q = torch.log(p), torch.log1p(-p)
        u = torch.where(lower, half, torch.where(upper, -half, torch.where(interval, log_p - log_q, x)))
        ladj = torch.where(
            lower | upper,
            -log_one_minus,
            torch.where(interval, -torch.log(width) - log_p - log_q, torch.zeros_like(x)),
        )
        return u, ladj.sum(dim=-1)

    def inverse(self, y: Tensor, context: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        lower, upper, interval, low, high, scale = self._parts(y)
        zero = torch.zeros_like(y)
        v = torch.where(lower, y / scale, torch.where(upper, -y / scale, zero))
        half = scale * F.softplus(v)
        half_ladj = F.logsigmoid(v)  # d softplus(v) / dv = sigmoid(v)
        width = high - low
        w = torch.where(interval, y, zero)
        x = torch.where(
            lower,
            low + half,
            torch.where(upper, high - half, torch.where(interval, low + width * torch.sigmoid(w), y)),
        )
        ladj = torch.where(
            lower | upper,
            half_ladj,
            torch.where(interval, torch.log(width) + F.logsigmoid(w) + F.logsigmoid(-w), zero),
        )
        x = torch.clamp(x, min=self.low.to(y.dtype), max=self.high.to(y.dtype))  # rounding: never beyond
        return x, ladj.sum(dim=-1)
