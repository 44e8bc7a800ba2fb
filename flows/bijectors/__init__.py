"""Bijectors: the building blocks of flows (one family per module)."""

from __future__ import annotations

from flows.bijectors.coupling import (
    Coupling,
    ImageCoupling,
    MaskedCoupling,
    alternating_mask,
    channel_mask,
    checkerboard_mask,
    half_mask,
)
from flows.bijectors.linear import LULinear, Permutation

__all__ = [
    "Coupling",
    "ImageCoupling",
    "MaskedCoupling",
    "alternating_mask",
    "channel_mask",
    "checkerboard_mask",
    "half_mask",
    "LULinear",
    "Permutation",
]
