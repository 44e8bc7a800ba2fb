"""A `Flow` as a `torch.distributions.Distribution`, for code that expects one (Pyro models, torch's KL and
mixture utilities, probabilistic-programming glue).

`FlowDistribution(flow, context)` has `batch_shape = context.shape[:-1]` (empty without a context) and
`event_shape = flow.event_shape`; `log_prob`, `sample` and `rsample` are the flow's own (the context is
broadcast against the leading dimensions of the value, as `Flow.log_prob` does). `expand(batch_shape)` gives
independent copies over a batch (Pyro's plates and vectorised particles use it), and calling the distribution
draws a reparameterised sample (Pyro's convention for a `pyro.sample` site without an observation). An SVI
guide needs Pyro's scoring methods as well: use `class PyroFlow(FlowDistribution, TorchDistributionMixin)`
(`pyro.distributions.torch_distribution`), see tests/test_pyro.py.
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
        self,
        flow: Any,
        context: Optional[Tensor] = None,
        validate_args: Optional[bool] = None,
        batch_shape: Optional[torch.Size] = None,
    ) -> None:
        event_shape = torch.Size(flow.event_shape)
        if context is not None and (not isinstance(context, Tensor) or context.dim() < 1):
            raise ValueError(
                "context must be a tensor of shape batch + (context_features,), got "
                f"{type(context).__name__} {tuple(getattr(context, 'shape', ()))}"
            )
        if batch_shape is None:
            batch_shape = torch.Size(() if context is None else context.shape[:-1])
        elif context is not None and torch.Size(batch_shape) != context.shape[:-1]:
            raise ValueError(
                f"batch_shape {tuple(batch_shape)} must be the context's batch shape {tuple(context.shape[:-1])}"
            )
        self.flow = flow
        self.context = context
        super().__init__(torch.Size(batch_shape), event_shape, validate_args=validate_args)

    def expand(self, batch_shape: torch.Size, _instance: Any = None) -> FlowDistribution:
        """Independent copies over `batch_shape` (the context, if any, is expanded to it)."""
        batch_shape = torch.Size(batch_shape)
        context = self.context
        if context is not None:
            context = context.expand(batch_shape + context.shape[-1:])
        new = self._get_checked_instance(FlowDistribution, _instance)
        FlowDistribution.__init__(new, self.flow, context, validate_args=False, batch_shape=batch_shape)
        new._validate_args = self._validate_args
        return new

    def __call__(self, sample_shape: torch.Size = torch.Size()) -> Tensor:  # noqa: B008 - torch's signature
        """A reparameterised sample (what Pyro draws at a `pyro.sample` site without an observation)."""
        return self.rsample(sample_shape)

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
        if self.context is None:  # an expanded unconditional flow: independent draws over the batch
            return self.flow.rsample(tuple(sample_shape) + tuple(self.batch_shape))
        return self.flow.rsample(tuple(sample_shape), self.context)

    def sample(self, sample_shape: torch.Size = torch.Size()) -> Tensor:  # noqa: B008 - torch's signature
        """Samples without gradients `sample_shape + batch_shape + event_shape`."""
        with torch.no_grad():
            return self.rsample(sample_shape)
