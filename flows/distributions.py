"""Base distributions as `nn.Module`s whose parameters and constants are buffers or parameters, so they
follow `.to(device)` and `.double()`.

Contract: `log_prob(z, context=None) -> (batch)` for `z (batch + event)`;
`rsample(sample_shape, context=None) -> sample_shape + context_batch + event` (reparameterised);
`sample` is `rsample` under `no_grad`. Unconditional distributions ignore a context only when it is None.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Optional, Union

import torch
from torch import Tensor, nn

__all__ = ["Distribution", "StandardNormal", "as_shape"]

Shape = Union[int, Sequence[int], torch.Size]


def as_shape(shape: Shape) -> tuple[int, ...]:
    """An int or a sequence of ints as a tuple of ints."""
    if isinstance(shape, int):
        return (shape,)
    return tuple(int(s) for s in shape)


class Distribution(nn.Module):
    """Base class of base distributions over an event of shape `event_shape`."""

    event_shape: tuple[int, ...]
    context_features: int = 0

    def log_prob(self, z: Tensor, context: Optional[Tensor] = None) -> Tensor:
        """`z (batch + event) -> (batch)`."""
        raise NotImplementedError

    def rsample(self, sample_shape: Shape = (), context: Optional[Tensor] = None) -> Tensor:
        """Reparameterised samples of shape `sample_shape + context_batch + event`."""
        raise NotImplementedError

    def sample(self, sample_shape: Shape = (), context: Optional[Tensor] = None) -> Tensor:
        with torch.no_grad():
            return self.rsample(sample_shape, context)

    def rsample_and_log_prob(
        self, sample_shape: Shape = (), context: Optional[Tensor] = None
    ) -> tuple[Tensor, Tensor]:
        z = self.rsample(sample_shape, context)
        return z, self.log_prob(z, context)

    def _batch_shape(self, context: Optional[Tensor]) -> tuple[int, ...]:
        return () if context is None else tuple(context.shape[:-1])

    def _reference(self) -> Tensor:
        """A tensor that carries this distribution's device and dtype."""
        for tensor in self.buffers():
            return tensor
        for tensor in self.parameters():
            return tensor
        raise RuntimeError(
            f"{type(self).__name__} has no buffer or parameter to take a device and dtype from"
        )


class StandardNormal(Distribution):
    """`N(0, I)` over an event of shape `event_shape` (an int for vectors, `(C, H, W)` for images)."""

    def __init__(self, event_shape: Shape) -> None:
        super().__init__()
        self.event_shape = as_shape(event_shape)
        self.register_buffer("_dtype_device", torch.zeros(()))

    def log_prob(self, z: Tensor, context: Optional[Tensor] = None) -> Tensor:
        event_dims = len(self.event_shape)
        log_density = -0.5 * z.square() - 0.5 * math.log(2 * math.pi)
        return log_density.sum(dim=tuple(range(-event_dims, 0)))

    def rsample(self, sample_shape: Shape = (), context: Optional[Tensor] = None) -> Tensor:
        reference = self._dtype_device
        shape = as_shape(sample_shape) + self._batch_shape(context) + self.event_shape
        return torch.randn(shape, dtype=reference.dtype, device=reference.device)
