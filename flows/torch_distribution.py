"""A `Flow` as a `torch.distributions.Distribution`, for code that expects one (Pyro models, torch's KL and
mixture utilities, probabilistic-programming glue).

`FlowDistribution(flow, context)` has `batch_shape = context.shape[:-1]` (empty without a context) and
`event_shape = flow.event_shape`; `log_prob`, `sample` and `rsample` are the flow's own (the context is
broadcast against the leading dimensions of the value, as `Flow.log_prob` does).
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch import Tensor
from torch.distributions import Distribution, constraints

__all__ = ["FlowDistribution"]


class FlowDistribution(Distribution):
    """`p(x | context)` of a `flows.Flow` with torch's `Distribution` interface (reparameterised samples)."""

    arg_constraints: dict[str, Any] = {}
    has_rsample = True

    def __init__(
        self, flow: Any, context: Optional[Tensor] = None, validate_args: Optional[bool] = None
    ) -> None:
        event_shape = torch.Size(flow.event_shape)
        if context is not None and (not isinstance(context, Tensor) or context.dim() < 1):
            raise ValueError(
                "context must be a tensor of shape batch + (context_features,), got "
                f"{type(context).__name__} {tuple(getattr(context, 'shape', ()))}"
            )
        batch_shape = torch.Size(() if context is None else context.shape[:-1])
        self.flow = flow
        self.context = context
        super().__init__(batch_shape, event_shape, validate_args=validate_args)

    @constraints.dependent_property(is_discrete=False, event_dim=None)
    def support(self) -> constraints.Constraint:
        return constraints.independent(constraints.real, len(self.event_shape))

    def log_prob(self, value: Tensor) -> Tensor:
        """Log density of `value (sample_shape + batch_shape + event_shape)`; returns `sample_shape + batch_shape`."""
        if self._validate_args:
            self._validate_sample(value)
        return self.flow.log_prob(value, self.context)

    def rsample(self, sample_shape: torch.Size = torch.Size()) -> Tensor:  # noqa: B008 - torch's signature
        """Reparameterised samples `sample_shape + batch_shape + event_shape`."""
        return self.flow.rsample(tuple(sample_shape), self.context)

    def sample(self, sample_shape: torch.Size = torch.Size()) -> Tensor:  # noqa: B008 - torch's signature
        """Samples without gradients `sample_shape + batch_shape + event_shape`."""
        return self.flow.sample(tuple(sample_shape), self.context)
