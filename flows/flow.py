"""`Flow`: a bijector (data to latent) and a base distribution, with the sampling API."""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from flows.core import Bijector
from flows.distributions import Distribution, Shape, as_shape

__all__ = ["Flow"]


class Flow(nn.Module):
    """A normalizing flow `p(x | c) = p_base(T(x; c') | c') |det dT/dx|` with `c' = embedding(c)`.

    `transform` maps data to latent (its `forward` is the density direction). `base` is a
    `flows.distributions.Distribution` over the latent. `embedding` optionally maps the raw context to
    the features that the transform and base see.
    """

    def __init__(
        self, transform: Bijector, base: Distribution, embedding: Optional[nn.Module] = None
    ) -> None:
        super().__init__()
        if not isinstance(transform, Bijector):
            raise TypeError(f"transform must be a flows Bijector, got {type(transform).__name__}")
        if not isinstance(base, Distribution):
            raise TypeError(f"base must be a flows Distribution, got {type(base).__name__}")
        self.transform = transform
        self.base = base
        self.embedding = embedding

    @property
    def event_shape(self) -> tuple[int, ...]:
        return tuple(self.base.event_shape)

    def _context(self, context: Optional[Tensor]) -> Optional[Tensor]:
        if context is None or self.embedding is None:
            return context
        return self.embedding(context)

    def _check_input(self, x: Tensor) -> None:
        event = self.event_shape
        if x.dim() < len(event) or tuple(x.shape[x.dim() - len(event) :]) != event:
            raise ValueError(
                f"expected input with event shape {event}, got a tensor of shape {tuple(x.shape)}"
            )

    def log_prob(self, x: Tensor, context: Optional[Tensor] = None) -> Tensor:
        """Log density of `x (batch + event)`; returns `(batch)`."""
        self._check_input(x)
        context = self._context(context)
        z, ladj = self.transform(x, context)
        return self.base.log_prob(z, context) + ladj

    def encode(self, x: Tensor, context: Optional[Tensor] = None) -> Tensor:
        """Data to latent: `x (batch + event) -> z (batch + event)`."""
        self._check_input(x)
        z, _ = self.transform(x, self._context(context))
        return z

    def decode(self, z: Tensor, context: Optional[Tensor] = None) -> Tensor:
        """Latent to data: `z (batch + event) -> x (batch + event)`."""
        self._check_input(z)
        x, _ = self.transform.inverse(z, self._context(context))
        return x

    def rsample(self, sample_shape: Shape = (), context: Optional[Tensor] = None) -> Tensor:
        """Reparameterised samples: shape `sample_shape + context_batch + event`."""
        context = self._context(context)
        z = self.base.rsample(as_shape(sample_shape), context)
        x, _ = self.transform.inverse(z, context)
        return x

    def sample(self, sample_shape: Shape = (), context: Optional[Tensor] = None) -> Tensor:
        """Samples without gradients: shape `sample_shape + context_batch + event`."""
        with torch.no_grad():
            return self.rsample(sample_shape, context)

    def sample_and_log_prob(
        self, sample_shape: Shape = (), context: Optional[Tensor] = None
    ) -> tuple[Tensor, Tensor]:
        """Reparameterised samples and their log densities in one inverse pass (gradients flow)."""
        context = self._context(context)
        z, log_prob_z = self.base.rsample_and_log_prob(as_shape(sample_shape), context)
        x, ladj_inverse = self.transform.inverse(z, context)
        return x, log_prob_z - ladj_inverse

    def forward(self, x: Tensor, context: Optional[Tensor] = None) -> Tensor:
        """Same as `log_prob`, so that a Flow can be called like any module."""
        return self.log_prob(x, context)
