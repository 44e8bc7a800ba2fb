"""Helpers shared by the conditioner networks: zero initialisation and width checks."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["zero_", "check_int", "check_widths"]


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
