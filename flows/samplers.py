"""Importance resampling: draws from the self-normalised importance distribution of weighted samples (a
log weight of -inf, zero target density, is never chosen). MCMC kernels are in `flows.mcmc`, and MCMC on
top of a trained flow in `flows.flow_mcmc`.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor

__all__ = ["importance_resample"]


def importance_resample(
    x: Tensor, log_w: Tensor, n: int, generator: Optional[torch.Generator] = None
) -> Tensor:
    """`n` rows `(n, D)` drawn with replacement from `x (N, D)` with probabilities `softmax(log_w)` `(N,)`."""
    if log_w.shape != (x.shape[0],):
        raise ValueError(
            f"log_w must have shape ({x.shape[0]},) to match x {tuple(x.shape)}, got {tuple(log_w.shape)}"
        )
    if not bool(torch.isfinite(log_w).any()):
        raise ValueError("every weight is zero (log_w all -inf or NaN): nothing to resample")
    safe = torch.where(torch.isfinite(log_w), log_w, -math.inf).double()
    probabilities = torch.softmax(safe, 0)
    index = torch.multinomial(probabilities.cpu(), n, replacement=True, generator=generator)
    return x[index.to(x.device)]
