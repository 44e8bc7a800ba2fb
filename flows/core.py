"""The bijector contract: `Bijector`, `Chain` and `Inverse`.

Direction convention: `forward` maps data to latent (the density direction used in training) and
`inverse` maps latent to data (the sampling direction). Both return `(output, ladj)` where `ladj`,
the log absolute determinant of the Jacobian of the map that was applied, has exactly the batch shape.

Shapes: any leading batch dimensions, then the event: 1 trailing dimension for vectors (`event_dims=1`),
2 for tokens (`T x D`) or 3 for images (`C x H x W`, `event_dims=3`). A context has shape
`batch + (context_features,)` and broadcasts against the batch of the input.

Declared event shapes: `event_dims` is the rank of the event a bijector takes and `output_event_dims` the
rank it gives (they differ for layers such as `Patchify`); `input_event_shape` is the event shape it takes
(None when any shape of its rank will do), and `forward_event_shape(shape)` / `inverse_event_shape(shape)`
map an event shape through the layer (raising a ValueError for one it does not take). `Chain` runs these
at construction, so mismatched members fail when the chain is built rather than on the first batch.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Optional

import torch
from torch import Tensor, nn

from flows.mixed_precision import wrap_methods

__all__ = ["Bijector", "Chain", "Inverse", "broadcast_context", "fixed_event_shape", "sum_event"]


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
    `(output, ladj)` with `ladj` of exactly the batch shape. `event_dims` is 1 (vectors), 2 (tokens) or 3
    (images); see the module docstring for declared event shapes. `volume_preserving` layers (permutations)
    return a zero `ladj` from every call, which a `Chain` need not add.
    """

    event_dims: int = 1
    volume_preserving: bool = False

    def __init_subclass__(cls, **kwargs: object) -> None:
        # Under autocast a bijector computes in its input's dtype; only its conditioner network (called through
        # flows.mixed_precision.run_conditioner) computes in 16 bits.
        super().__init_subclass__(**kwargs)
        wrap_methods(cls, ("forward", "inverse"))

    @property
    def output_event_dims(self) -> int:
        """The rank of the event this bijector gives (`event_dims` unless it changes the rank)."""
        return self.event_dims

    @property
    def input_event_shape(self) -> Optional[tuple[int, ...]]:
        """The event shape this bijector takes, or None when it takes any of rank `event_dims`.

        By default the `event_shape` attribute of layers that store one (couplings, autoregressive layers).
        """
        shape = self.__dict__.get("event_shape")
        return tuple(shape) if isinstance(shape, (tuple, list, torch.Size)) else None

    @property
    def output_event_shape(self) -> Optional[tuple[int, ...]]:
        """The event shape this bijector gives, or None when its input shape is not declared."""
        shape = self.input_event_shape
        return None if shape is None else self.forward_event_shape(shape)

    def forward_event_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        """The output event shape for an input event `shape`; a ValueError when this layer does not take it.

        The default is a shape-preserving layer: `shape` must have rank `event_dims` and equal the
        declared `input_event_shape`, if any. Layers that change the shape override both directions.
        """
        return _check_declared(self, tuple(shape), self.event_dims, self.input_event_shape, "takes")

    def inverse_event_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        """The input event shape for an output event `shape` (the inverse of `forward_event_shape`)."""
        return _check_declared(self, tuple(shape), self.output_event_dims, self.output_event_shape, "gives")

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

    def check_state(self) -> None:
        """A ValueError when this layer's own structural buffers (indices, masks, signs: what its
        architecture fixes, not what training learns) do not describe a valid layer. Runs after every
        `load_state_dict` of this module, so that a state from an untrusted file cannot turn the flow into a map
        that is not a bijection (a permutation [0, 0] loaded as such integrated to 6.85). Layers without such
        buffers have nothing to check."""

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        load_then_check(self, super()._load_from_state_dict, *args, **kwargs)

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


def load_then_check(module: Any, load: Callable[..., None], *args: Any, **kwargs: Any) -> None:
    """`module._load_from_state_dict` (`load`, with its arguments), then `module.check_state()` unless the load
    reported an error of its own (a size mismatch is load_state_dict's to report)."""
    errors = args[6] if len(args) > 6 else kwargs["error_msgs"]
    reported = len(errors)
    load(*args, **kwargs)
    if len(errors) == reported:
        module.check_state()


def check_permutation(owner: nn.Module, name: str, indices: Tensor, size: int) -> None:
    """A ValueError unless `indices` is a permutation of `0 .. size-1` (a structural buffer of `owner`)."""
    valid = (
        indices.dim() == 1
        and indices.numel() == size
        and not indices.is_floating_point()
        and torch.equal(torch.sort(indices).values, torch.arange(size, device=indices.device))
    )
    if not valid:
        shown = indices.flatten()[:10].tolist()
        raise ValueError(
            f"{type(owner).__name__}.{name}: expected a permutation of 0 .. {size - 1}, got {shown}"
            f"{' ...' if indices.numel() > 10 else ''} (shape {tuple(indices.shape)}, {indices.dtype})"
        )


def _check_declared(
    bijector: Bijector, shape: tuple[int, ...], rank: int, declared: Optional[tuple[int, ...]], verb: str
) -> tuple[int, ...]:
    """`shape` unchanged when it has rank `rank` and equals `declared` (if any); a ValueError otherwise."""
    name = type(bijector).__name__
    if len(shape) != rank:
        raise ValueError(f"{name} {verb} events of rank {rank}, got event shape {shape}")
    if declared is not None and shape != declared:
        raise ValueError(f"{name} {verb} event shape {declared}, got {shape}")
    return shape


def fixed_event_shape(
    bijector: Bijector,
    shape: tuple[int, ...],
    takes: tuple[int, ...],
    gives: tuple[int, ...],
    verb: str = "takes",
) -> tuple[int, ...]:
    """`gives` when `shape == takes`, else a ValueError: the shape map of a layer with fixed shapes."""
    if tuple(shape) != tuple(takes):
        raise ValueError(f"{type(bijector).__name__} {verb} event shape {tuple(takes)}, got {tuple(shape)}")
    return tuple(gives)


class Inverse(Bijector):
    """Swap the directions of a bijector: `Inverse(b).forward == b.inverse`."""

    def __init__(self, bijector: Bijector) -> None:
        super().__init__()
        self.bijector = bijector
        self.event_dims = bijector.output_event_dims

    @property
    def output_event_dims(self) -> int:
        return self.bijector.event_dims

    @property
    def input_event_shape(self) -> Optional[tuple[int, ...]]:
        return self.bijector.output_event_shape

    def forward_event_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        return self.bijector.inverse_event_shape(shape)

    def inverse_event_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        return self.bijector.forward_event_shape(shape)

    @property
    def volume_preserving(self) -> bool:  # type: ignore[override]
        return self.bijector.volume_preserving

    def forward(self, x: Tensor, context: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        return self.bijector.inverse(x, context)

    def inverse(self, y: Tensor, context: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        return self.bijector.forward(y, context)

    @property
    def inv(self) -> Bijector:
        return self.bijector


class Chain(Bijector):
    """Compose bijectors: `forward` applies them first to last, `inverse` last to first.

    Consecutive members must fit: each takes events of the rank the one before gives, and where shapes
    are declared (`input_event_shape`), each takes the shape the one before gives. This is checked at
    construction: `Chain(Coupling(5), Coupling(4))` raises a ValueError naming both members. The log-determinant
    of volume-preserving members is not added, so the one returned may be a member's own tensor (e.g. an
    `LULinear`'s expanded view): add to it out of place.
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
        for index in range(1, len(bijectors)):
            before, member = bijectors[index - 1], bijectors[index]
            if before.output_event_dims != member.event_dims:
                raise ValueError(
                    f"Chain member {index} ({type(member).__name__}) takes events of rank {member.event_dims}, "
                    f"but member {index - 1} ({type(before).__name__}) gives rank {before.output_event_dims}"
                )
        self.event_dims = bijectors[0].event_dims
        self.bijectors = nn.ModuleList(bijectors)
        self._input_shape = self._check_shapes()

    def _check_shapes(self) -> Optional[tuple[int, ...]]:
        """Propagate the first declared event shape through the members; returns the chain's input shape."""
        members = list(self.bijectors)
        first = next((i for i, b in enumerate(members) if b.input_event_shape is not None), None)
        if first is None:
            return None
        shape = members[first].input_event_shape
        for index in range(first, len(members)):
            try:
                shape = members[index].forward_event_shape(shape)
            except ValueError as error:
                raise ValueError(
                    f"Chain member {index} ({type(members[index]).__name__}) does not take the event shape "
                    f"{shape} that member {index - 1} ({type(members[index - 1]).__name__}) gives: {error}"
                ) from error
        shape = members[first].input_event_shape
        for index in reversed(range(first)):
            try:
                shape = members[index].inverse_event_shape(shape)
            except ValueError as error:
                raise ValueError(
                    f"Chain member {index} ({type(members[index]).__name__}) does not give the event shape "
                    f"{shape} that member {index + 1} ({type(members[index + 1]).__name__}) takes: {error}"
                ) from error
        return shape

    @property
    def output_event_dims(self) -> int:
        return self.bijectors[-1].output_event_dims

    @property
    def input_event_shape(self) -> Optional[tuple[int, ...]]:
        return self._input_shape

    def forward_event_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        for bijector in self.bijectors:
            shape = bijector.forward_event_shape(shape)
        return shape

    def inverse_event_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        for bijector in reversed(self.bijectors):
            shape = bijector.inverse_event_shape(shape)
        return shape

    def __len__(self) -> int:
        return len(self.bijectors)

    def __getitem__(self, index: int) -> Bijector:
        return self.bijectors[index]

    @property
    def volume_preserving(self) -> bool:  # type: ignore[override]
        return all(bijector.volume_preserving for bijector in self.bijectors)

    @staticmethod
    def _accumulate(total: Optional[Tensor], zero: bool, ladj: Tensor, bijector: Bijector) -> Tensor:
        """`total + ladj`, without the addition (a node in the backward pass) where either is known to be zero:
        `zero` for a total of volume-preserving members only, and `ladj` of a volume-preserving member."""
        if total is None or (zero and ladj.shape == total.shape):
            return ladj
        if bijector.volume_preserving and ladj.shape == total.shape:
            return total
        return total + ladj

    def forward(self, x: Tensor, context: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        total, zero = None, True
        for bijector in self.bijectors:
            x, ladj = bijector(x, context)
            total, zero = self._accumulate(total, zero, ladj, bijector), zero and bijector.volume_preserving
        return x, total

    def initialize(self, x: Tensor, context: Optional[Tensor] = None) -> bool:
        """Initialise the members first to last, each on the output of the members before it."""
        initialized = False
        for bijector in self.bijectors:
            initialized = bool(bijector.initialize(x, context)) or initialized
            x, _ = bijector(x, context)
        return initialized

    def inverse(self, y: Tensor, context: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        total, zero = None, True
        for bijector in reversed(self.bijectors):
            y, ladj = bijector.inverse(y, context)
            total, zero = self._accumulate(total, zero, ladj, bijector), zero and bijector.volume_preserving
        return y, total
