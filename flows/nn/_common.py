"""Helpers shared by the conditioner networks: zero initialisation, width checks and the output layer."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

__all__ = ["zero_", "check_int", "check_widths", "linear", "OutputLinear", "FEATURE_MAJOR_MIN_ELEMENTS"]


def check_int(name: str, value: object, minimum: int = 1) -> int:
    """`value` if it is an int (not a bool) `>= minimum`, else a ValueError naming `name` and what came."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return value


def zero_(layer: nn.Module) -> nn.Module:
    """Zero the weight and bias of a linear or convolutional layer in place."""
    with torch.no_grad():
        layer.weight.zero_()
        if layer.bias is not None:
            layer.bias.zero_()
    return layer


def check_widths(name: str, widths: Sequence[int]) -> tuple[int, ...]:
    try:
        widths = tuple(int(w) for w in widths)
    except TypeError as error:
        raise TypeError(f"{name} must be a sequence of ints, got {widths!r}") from error
    if any(w < 1 for w in widths):
        raise ValueError(f"{name} must contain positive ints, got {widths}")
    return widths


#: outputs smaller than this (rows x features) stay batch-first: below it, the transposed copy that the
#: feature-major layout saves costs less than the extra views' autograd nodes (measured: 1.01-1.03x slower steps
#: at 64-256 rows x 50 outputs, neutral at 512 x 49, 1.02x faster at 512 x 92).
FEATURE_MAJOR_MIN_ELEMENTS = 16384


def linear(x: Tensor, weight: Tensor, bias: Tensor | None, feature_major: bool = False) -> Tensor:
    """`F.linear`: `x (..., in) -> (..., out)`. With `feature_major` on CPUs (and at least
    `FEATURE_MAJOR_MIN_ELEMENTS` outputs), the same values are stored feature-major (the result is a transposed
    view): a transformer that computes elements-last (the spline) then reads it without a transposed copy,
    forward or backward, and the product costs the same."""
    if (
        not feature_major
        or x.device.type != "cpu"
        or x.dim() < 2
        or x.shape[:-1].numel() * weight.shape[0] < FEATURE_MAJOR_MIN_ELEMENTS
    ):
        return nn.functional.linear(x, weight, bias)
    rows = x.reshape(-1, x.shape[-1]).t()  # (in, rows)
    out = torch.mm(weight, rows) if bias is None else torch.addmm(bias.unsqueeze(-1), weight, rows)
    return out.t().reshape(x.shape[:-1] + (weight.shape[0],))


class OutputLinear(nn.Linear):
    """A conditioner's output layer: `nn.Linear` (same parameters and values), whose result is stored
    feature-major when `feature_major` is set (see `linear`)."""

    def __init__(self, in_features: int, out_features: int, feature_major: bool = False) -> None:
        super().__init__(in_features, out_features)
        self.feature_major = feature_major

    def forward(self, x: Tensor) -> Tensor:
        return linear(x, self.weight, self.bias, self.feature_major)
