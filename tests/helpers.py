"""Shared test utilities: tolerances per dtype, parameter randomisation and Jacobian log-dets."""

from __future__ import annotations

from collections.abc import Callable
from typing import Optional

import torch
from torch import Tensor, nn

TOLERANCE = {torch.float64: 1e-8, torch.float32: 2e-3}


def randomize(module: nn.Module, scale: float = 0.3, seed: int = 0) -> nn.Module:
    """Add Gaussian noise to every parameter so that zero-initialised layers become non-trivial."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            noise = torch.randn(parameter.shape, generator=generator, dtype=torch.float64)
            parameter.add_(scale * noise.to(parameter.dtype))
    return module


def jacobian_logdet(function: Callable[[Tensor], Tensor], x: Tensor, event_shape: tuple[int, ...]) -> Tensor:
    """`log |det J|` of `function` at one unbatched point `x` (shape `event_shape`), via jacrev."""
    numel = x.numel()

    def flat(v: Tensor) -> Tensor:
        return function(v.reshape(event_shape)).reshape(-1)

    jacobian = torch.func.jacrev(flat)(x.reshape(-1))
    assert jacobian.shape == (numel, numel), f"non-square Jacobian {tuple(jacobian.shape)}"
    return torch.linalg.slogdet(jacobian)[1]


def sample_context(
    batch: tuple[int, ...], features: int, dtype: torch.dtype, seed: int = 1
) -> Optional[Tensor]:
    if features == 0:
        return None
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch + (features,), generator=generator, dtype=torch.float64).to(dtype)
