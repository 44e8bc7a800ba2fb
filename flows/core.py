"""The bijector contract: `Bijector`, `Chain` and `Inverse`.

Direction convention: `forward` maps data to latent (the density direction used in training) and
`inverse` maps latent to data (the sampling direction). Both return `(output, ladj)` where `ladj`,
the log absolute determinant of the Jacobian of the map that was applied, has exactly the batch shape.

Shapes: any leading batch dimensions, then the event: 1 trailing dimension for vectors (`event_dims=1`)
or 3 for images (`C x H x W`, `event_dims=3`). A context has shape `batch + (context_features,)` and
broadcasts against the batch of the input.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

__all__ = ["Bijector", "Chain", "Inverse", "broadcast_context", "sum_event"]


def sum_event(values: Tensor, event_dims: int) -> Tensor:
    """Sum over the trailing `event_dims` dimensions: `batch + event -> batch`."""
    if event_dims == 0:
        return values
    return values.sum(dim=tuple(range(-event_dims, 0)))


def broadcast_context(
    x: Tensor, context: Optional[Tensor], event_dims: int
) -> tuple[Tensor, Optional[Tensor]]:
    """Broadcast `x` (`batch_x + event`) and `context` (`batch_c + (C,)`) to a common batch shape.

    Returns `x` with shape `batch + event` and `context` with shape `batch + (C,)`, where
    `batch = broadcast_shapes(batch_x, batch_c)`. Without a context, `x` is returned unchanged.
    """
    if context is None:
        return x, None
    if context.dim() < 1:
        raise ValueError("context must have shape batch + (context_features,), got a 0-d tensor")
    event_shape = x.shape[x.dim() - event_dims :]
    batch_x = x.shape[: x.dim() - event_dims]
    batch_c = context.shape[:-1]
    try:
        batch = torch.broadcast_shapes(batch_x, batch_c)
    except RuntimeError as error:
        raise ValueError(
            f"expected a context batch shape that broadcasts with the input batch shape {tuple(batch_x)}, "
            f"got {tuple(batch_c)}"
        ) from error
    if batch != batch_x:
        x = x.expand(batch + event_shape)
    if batch != batch_c:
        context = context.expand(batch + context.shape[-1:])
    return x, context


class Bijector(nn.Module):
    """An invertible map with a tractable log-determinant.

    Subclasses implement `forward(x, context)` and `inverse(y, context)`, each returning
    `(output, ladj)` with `ladj` of exactly the batch shape. `event_dims` is 1 (vectors) or 3 (images).
    """

    event_dims: int = 1

    def forward(self, x: Tensor, context: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        """Data to latent: `x (batch + event) -> (y (batch + event'), ladj (batch))`."""
        raise NotImplementedError

    def inverse(self, y: Tensor, context: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        """Latent to data: `y (batch + event') -> (x (batch + event), ladj (batch))`."""
        raise NotImplementedError

    @property
    def inv(self) -> Bijector:
        """The inverse bijector, sharing parameters with this one."""
        return Inverse(self)

    def initialize(self, x: Tensor, context: Optional[Tensor] = None) -> bool:
        """Data-dependent initialisation from the batch `x (batch + event)` that reaches this layer.

        Returns True when a layer was initialised. Most layers have nothing to initialise (False); `ActNorm`
        sets its shift and scale from `x`; `Chain` and `MultiscaleSplit` pass the batch on, each member
        seeing its own input. `flows.Flow.initialize` is the entry point.
        """
        return False

    def batch_shape(self, x: Tensor) -> torch.Size:
        """The batch shape of `x` for this bijector's event dims."""
        return x.shape[: x.dim() - self.event_dims]

    def zero_ladj(self, x: Tensor) -> Tensor:
        """A zero log-determinant of the batch shape of `x`."""
        return x.new_zeros(self.batch_shape(x))

    def check_event(self, x: Tensor, expected: tuple[int, ...], name: str = "input") -> None:
        """Raise a ValueError when the trailing dims of `x` are not `expected`."""
        if x.dim() < len(expected) or tuple(x.shape[x.dim() - len(expected) :]) != tuple(expected):
            raise ValueError(
                f"{type(self).__name__} expected {name} with event shape {tuple(expected)}, "
                f"got a tensor of shape {tuple(x.shape)}"
            )


class Inverse(Bijector):
    """Swap the directions of a bijector: `Inverse(b).forward == b.inverse`."""

    def __init__(self, bijector: Bijector) -> None:
        super().__init__()
        self.bijector = bijector
        self.event_dims = bijector.event_dims

    def forward(self, x: Tensor, context: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        return self.bijector.inverse(x, context)

    def inverse(self, y: Tensor, context: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        return self.bijector.forward(y, context)

    @property
    def inv(self) -> Bijector:
        return self.bijector


class Chain(Bijector):
    """Compose bijectors: `forward` applies them first to last, `inverse` last to first.

    All members must share the same `event_dims`; this is checked at construction.
    """

    def __init__(self, *bijectors: Bijector) -> None:
        super().__init__()
        if len(bijectors) == 1 and isinstance(bijectors[0], (list, tuple)):
            bijectors = tuple(bijectors[0])
        if not bijectors:
            raise ValueError("Chain needs at least one bijector, got none")
        for index, bijector in enumerate(bijectors):
            if not isinstance(bijector, Bijector):
                raise TypeError(
                    f"Chain member {index} must be a flows Bijector, got {type(bijector).__name__}"
                )
        event_dims = {b.event_dims for b in bijectors}
        if len(event_dims) != 1:
            listing = ", ".join(f"{type(b).__name__}={b.event_dims}" for b in bijectors)
            raise ValueError(f"Chain members must share event_dims, got {listing}")
        self.event_dims = bijectors[0].event_dims
        self.bijectors = nn.ModuleList(bijectors)

    def __len__(self) -> int:
        return len(self.bijectors)

    def __getitem__(self, index: int) -> Bijector:
        return self.bijectors[index]

    def forward(self, x: Tensor, context: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        total = None
        for bijector in self.bijectors:
            x, ladj = bijector(x, context)
            total = ladj if total is None else total + ladj
        return x, total

    def initialize(self, x: Tensor, context: Optional[Tensor] = None) -> bool:
        """Initialise the members first to last, each on the output of the members before it."""
        initialized = False
        for bijector in self.bijectors:
            initialized = bool(bijector.initialize(x, context)) or initialized
            x, _ = bijector(x, context)
        return initialized

    def inverse(self, y: Tensor, context: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        total = None
        for bijector in reversed(self.bijectors):
            y, ladj = bijector.inverse(y, context)
            total = ladj if total is None else total + ladj
        return y, total
