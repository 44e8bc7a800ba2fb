"""Bijectors: the building blocks of flows (one family per module)."""

from __future__ import annotations

from flows.bijectors.autoregressive import Autoregressive, MaskedAutoregressive, guided
from flows.bijectors.conv import Invertible1x1Conv
from flows.bijectors.coupling import (
    Coupling,
    ImageCoupling,
    MaskedCoupling,
    alternating_mask,
    channel_mask,
    checkerboard_mask,
    half_mask,
)
from flows.bijectors.elementwise import ElementwiseAffine, Logit, Sigmoid, Standardize, Tanh
from flows.bijectors.linear import LULinear, LUMatrix, Permutation
from flows.bijectors.normalization import ActNorm, BatchNorm
from flows.bijectors.reshape import MultiscaleSplit, Squeeze
from flows.bijectors.support import ColumnSupport
from flows.bijectors.token_coupling import TokenCoupling, token_mask
from flows.bijectors.tokens import Patchify, ReverseTokens

__all__ = [
    "Autoregressive",
    "Patchify",
    "ReverseTokens",
    "TokenCoupling",
    "token_mask",
    "Coupling",
    "ImageCoupling",
    "MaskedAutoregressive",
    "MaskedCoupling",
    "alternating_mask",
    "channel_mask",
    "checkerboard_mask",
    "half_mask",
    "ActNorm",
    "BatchNorm",
    "ColumnSupport",
    "ElementwiseAffine",
    "Invertible1x1Conv",
    "LULinear",
    "LUMatrix",
    "Logit",
    "MultiscaleSplit",
    "Permutation",
    "Sigmoid",
    "Squeeze",
    "Standardize",
    "Tanh",
    "guided",
]
