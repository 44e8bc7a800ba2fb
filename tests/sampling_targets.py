"""User-style targets (`module:attr`) for the sampling tests."""

from __future__ import annotations

import math

import torch
from torch import Tensor

#: the shifted, scaled Gaussian target below: mean, std and the constant added to its log density
MEAN, STD, LOG_Z = torch.tensor([1.0, -2.0]), torch.tensor([0.5, 2.0]), 3.0


def shifted_gaussian(x: Tensor) -> Tensor:
    """`(batch, 2) -> (batch,)`: `LOG_Z + log N(x; MEAN, diag(STD^2))` (an unnormalised density)."""
    mean, std = MEAN.to(x), STD.to(x)
    z = (x - mean) / std
    return LOG_Z - 0.5 * (z**2).sum(1) - torch.log(std).sum() - math.log(2 * math.pi)
