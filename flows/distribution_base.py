"""The contract of base distributions: `Distribution` (an `nn.Module` over an event of shape `event_shape`) and
`as_shape`; the families are in `flows.distributions` (and `flows.full_mixture`), which re-exports these.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Optional, Union

import torch
from torch import Tensor, nn

from flows.mixed_precision import wrap_methods

__all__ = ["LOG_SQRT_2PI", "Distribution", "Shape", "as_shape"]

Shape = Union[int, Sequence[int], torch.Size]

LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


def as_shape(shape: Shape) -> tuple[int, ...]:
    """An int or a sequence of ints (each >= 0) as a tuple of ints; anything else is a TypeError/ValueError."""
    sizes = (shape,) if isinstance(shape, numbers.Integral) else shape
    if isinstance(sizes, (str, bytes, Tensor)) or not isinstance(sizes, Sequence):
        raise TypeError(f"a shape must be an int or a sequence of ints, got {type(shape).__name__} {shape!r}")
    if any(isinstance(s, bool) or not isinstance(s, numbers.Integral) for s in sizes):
        raise TypeError(f"a shape must be an int or a sequence of ints, got {shape!r}")
    if any(s < 0 for s in sizes):
        raise ValueError(f"a shape must have sizes >= 0, got {tuple(int(s) for s in sizes)}")
    return tuple(int(s) for s in sizes)


class Distribution(nn.Module):
    """Base class of base distributions over an event of shape `event_shape`."""

    def __init_subclass__(cls, **kwargs: object) -> None:
        # Under autocast a base density computes in float32; a parameter network runs through run_conditioner.
        super().__init_subclass__(**kwargs)
        wrap_methods(cls, ("log_prob", "rsample", "sample", "rsample_and_log_prob"))

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

    def _check_event(self, z: Tensor) -> None:
        """Raise a ValueError when the trailing dims of `z` are not `event_shape`."""
        event = tuple(self.event_shape)
        if z.dim() < len(event) or tuple(z.shape[z.dim() - len(event) :]) != event:
            raise ValueError(
                f"{type(self).__name__} expected a tensor with event shape {event}, "
                f"got a tensor of shape {tuple(z.shape)}"
            )
