"""`Flow`: a bijector (data to latent) and a base distribution, with the sampling API.

Every public method checks its input through one validator (`Flow._validated`) before any layer sees it:
`x` and `context` must be floating-point `torch.Tensor`s of the flow's dtype and device, `x` must end in
the event shape, a context must come exactly when the flow is conditional and have `context_features`
features. A bad input is a `TypeError`/`ValueError` that names what was expected and what came.
"""

from __future__ import annotations

import itertools
import math
from typing import Optional

import torch
from torch import Tensor, nn

from flows.core import Bijector
from flows.distributions import Distribution, Shape, as_shape
from flows.mixed_precision import in_full_precision, run_conditioner
from flows.torch_distribution import FlowDistribution

__all__ = ["Flow"]

#: How many offending batch indices an error message lists.
_LISTED_ROWS = 10


def _type_name(value: object) -> str:
    """What came, for error messages: `numpy.ndarray`, `list`, or a tensor's dtype and shape."""
    if isinstance(value, Tensor):
        return f"a torch.Tensor of dtype {value.dtype} and shape {tuple(value.shape)}"
    cls = type(value)
    return cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"


def _rows(bad: Tensor) -> str:
    """The batch indices where the bool tensor `bad (batch)` is True, the first few of them."""
    indices = torch.nonzero(bad.reshape(bad.shape or (1,)))
    listed = [tuple(index) if len(index) > 1 else index[0] for index in indices[:_LISTED_ROWS].tolist()]
    more = f" and {len(indices) - _LISTED_ROWS} more" if len(indices) > _LISTED_ROWS else ""
    return f"{listed}{more}"


def _extremes(value: Tensor) -> tuple[float, float]:
    """`(min, max)` of a non-empty floating-point tensor (what `_check_tensor` admits) in one reduction and one
    host sync; NaN when any value is NaN.

    So the values are all finite exactly when both are, and some is NaN exactly when either is. On CPUs this is
    4-13x faster than a `torch.isfinite` mask reduced with `.all()` (3.9 against 49 us at 512 x 43, 93 us
    against 1.2 ms at 256 x 3 x 32 x 32), which builds its mask through several kernels.
    """
    low, high = torch.stack(torch.aminmax(value)).tolist()
    return low, high


def _declared_context_features(
    transform: Bijector, base: Distribution, embedding: Optional[nn.Module]
) -> Optional[int]:
    """The raw context width that the layers declare: 0 when none takes a context, None when unknown.

    The library's layers that take a context store `context_features`; a layer of a user's own class that
    does not, several different widths, or an embedding without an int `in_features` leave it unknown.
    """
    if embedding is not None:
        width = getattr(embedding, "in_features", None)
        return width if isinstance(width, int) and not isinstance(width, bool) else None
    widths = set()
    for module in itertools.chain(transform.modules(), base.modules()):
        declared = getattr(module, "context_features", None)
        if isinstance(declared, int) and not isinstance(declared, bool):
            if declared > 0:
                widths.add(declared)
        elif isinstance(module, (Bijector, Distribution)) and not type(module).__module__.startswith(
            "flows."
        ):
            return None
    if len(widths) > 1:
        return None
    return widths.pop() if widths else 0


def _check_event_shapes(transform: Bijector, base: Distribution) -> None:
    """A transform that declares its event shapes must take and give the base's event shape (the data and
    the latent share it); a ValueError naming both otherwise. Undeclared transforms are not checked."""
    takes, gives = transform.input_event_shape, transform.output_event_shape
    event = tuple(base.event_shape)
    if takes is not None and (tuple(takes) != event or tuple(gives) != event):  # type: ignore[arg-type]
        raise ValueError(
            f"the transform takes event shape {tuple(takes)} and gives {tuple(gives)}, but the base "  # type: ignore[arg-type]
            f"distribution's event shape is {event}; a Flow's data and latent share the base's event shape"
        )


class Flow(nn.Module):
    """A normalizing flow `p(x | c) = p_base(T(x; c') | c') |det dT/dx|` with `c' = embedding(c)`.

    `transform` maps data to latent (its `forward` is the density direction). `base` is a
    `flows.distributions.Distribution` over the latent. `embedding` optionally maps the raw context to
    the features that the transform and base see. `context_features` is the width of the raw context
    (0: unconditional); by default it is read from the layers (`context_features` of the library's
    conditional layers, `in_features` of the embedding); `None` after that means unknown: a context is then
    passed on without checking its presence or width.
    """

    def __init__(
        self,
        transform: Bijector,
        base: Distribution,
        embedding: Optional[nn.Module] = None,
        context_features: Optional[int] = None,
    ) -> None:
        super().__init__()
        if not isinstance(transform, Bijector):
            raise TypeError(f"transform must be a flows Bijector, got {type(transform).__name__}")
        if not isinstance(base, Distribution):
            raise TypeError(f"base must be a flows Distribution, got {type(base).__name__}")
        if context_features is not None and (
            isinstance(context_features, bool)
            or not isinstance(context_features, int)
            or context_features < 0
        ):
            raise ValueError(f"context_features must be an int >= 0 or None, got {context_features!r}")
        _check_event_shapes(transform, base)
        self.transform = transform
        self.base = base
        self.embedding = embedding
        if context_features is None:
            context_features = _declared_context_features(transform, base, embedding)
        self.context_features: Optional[int] = context_features

    @property
    def event_shape(self) -> tuple[int, ...]:
        return tuple(self.base.event_shape)

    def _reference(self) -> Optional[Tensor]:
        """A floating-point parameter or buffer: the flow's dtype and device (None for a flow without any)."""
        for tensor in itertools.chain(self.parameters(), self.buffers()):
            if tensor.is_floating_point():
                return tensor
        return None

    def _check_tensor(self, name: str, value: object, reference: Optional[Tensor]) -> Tensor:
        """`value` is a floating-point tensor of the flow's dtype and device."""
        if not isinstance(value, Tensor) or not value.is_floating_point():
            expected = "a floating-point torch.Tensor" + (
                f" of dtype {reference.dtype}" if reference is not None else ""
            )
            raise TypeError(f"{name} must be {expected}, got {_type_name(value)}")
        if reference is not None and value.dtype != reference.dtype:
            raise TypeError(
                f"{name} must have the flow's dtype {reference.dtype}, got {value.dtype} (convert it with "
                f"{name}.to({reference.dtype}), or the flow with flow.to({value.dtype}))"
            )
        if reference is not None and value.device != reference.device:
            raise ValueError(
                f"{name} must be on the flow's device {reference.device}, got a tensor on {value.device}"
            )
        return value

    def _validate(
        self, x: object, context: object, name: str = "x"
    ) -> tuple[Optional[Tensor], Optional[Tensor]]:
        """The input check of every method; returns `(x, context)` with the embedding applied to the context.

        `x (batch + event)` or None (sampling); `context (batch_c + (context_features,))` or None.
        NaN or ±inf in `x` is a ValueError naming the rows.
        """
        x, context, _ = self._validated(x, context, name, infinite=False)
        return x, context

    def _validated(
        self, x: object, context: object, name: str, infinite: bool
    ) -> tuple[Optional[Tensor], Optional[Tensor], bool]:
        """`_validate`, with ±inf in `x` allowed when `infinite` (log_prob: density 0 there); the third value says
        whether every value of `x` is finite (False when that is unknown: while compiling or tracing). Every
        check runs before the embedding or any layer sees the inputs."""
        reference = self._reference()
        if x is not None:
            x = self._check_tensor(name, x, reference)
            event = self.event_shape
            if x.dim() < len(event) or tuple(x.shape[x.dim() - len(event) :]) != event:
                raise ValueError(
                    f"expected {name} with event shape {event}, got a tensor of shape {tuple(x.shape)}"
                )
        if self.context_features == 0 and context is not None:
            raise ValueError(
                "this flow is unconditional (context_features=0) but a context was given: expected "
                f"context=None, got {_type_name(context)}"
            )
        if self.context_features and context is None:
            raise ValueError(
                f"this flow is conditional: expected a context of shape batch + ({self.context_features},), "
                "got None"
            )
        if context is not None:
            if self.embedding is None:
                context = self._check_tensor("context", context, reference)
            elif not isinstance(context, Tensor):
                raise TypeError(f"context must be a torch.Tensor, got {_type_name(context)}")
            if self.context_features and (context.dim() < 1 or context.shape[-1] != self.context_features):
                raise ValueError(
                    f"context must have {self.context_features} features (last dim), "
                    f"got shape {tuple(context.shape)}"
                )
        all_finite = False
        if not torch.compiler.is_compiling():  # data-dependent checks: one host sync each
            if x is not None:
                # a traced graph must not keep what this example input happened to be
                all_finite = self._check_finite(name, x, infinite) and not torch.jit.is_tracing()
            if context is not None and self.embedding is None:
                self._check_finite("context", context, infinite=False)
        return x, self._embed(context), all_finite

    def _check_finite(self, name: str, value: Tensor, infinite: bool) -> bool:
        """NaN (and ±inf unless `infinite`) in `value` is a ValueError naming the batch rows; returns whether
        every value is finite (False only for ±inf, where `infinite` allows it)."""
        if value.numel() == 0 or all(map(math.isfinite, _extremes(value))):
            return True
        finite = torch.isfinite(value)
        event_dims = len(self.event_shape) if name != "context" else 1
        dims = tuple(range(-event_dims, 0))
        nan_rows = torch.isnan(value).any(dim=dims)
        if bool(nan_rows.any()):
            raise ValueError(f"{name} must not contain NaN, got NaN in rows {_rows(nan_rows)}")
        if not infinite:
            raise ValueError(
                f"{name} must be finite, got ±inf in rows {_rows(~finite.all(dim=dims))} "
                "(log_prob accepts ±inf: its density there is 0)"
            )
        return False

    def _embed(self, context: Optional[Tensor]) -> Optional[Tensor]:
        if context is None or self.embedding is None:
            return context
        reference = self._reference()
        return run_conditioner(self.embedding, context, dtype=None if reference is None else reference.dtype)

    def _check_output(self, name: str, method: str, value: Tensor, x: Tensor) -> Tensor:
        """A NaN in a result of finite input means an overflow inside the flow: a ValueError naming the rows."""
        if torch.compiler.is_compiling() or value.numel() == 0 or not any(map(math.isnan, _extremes(value))):
            return value
        nan = torch.isnan(value)
        if bool(nan.any()):
            dims = tuple(range(-len(self.event_shape), 0))
            largest = x.abs().max().item()
            raise ValueError(
                f"{method} overflowed in {value.dtype} at rows {_rows(nan.any(dim=dims))}: {name} must be small "
                f"enough for this flow's layers, got |{name}| up to {largest:.3g}"
            )
        return value

    @in_full_precision
    @torch.no_grad()
    def initialize(self, x: Tensor, context: Optional[Tensor] = None) -> bool:
        """Data-dependent initialisation (ActNorm) from a first batch `x (batch + event)`.

        Runs `x` through the transform layer by layer; each layer that has one initialises itself on the
        values it sees (see `Bijector.initialize`). Returns True when a layer was initialised.
        """
        x, context = self._validate(x, context)
        return self.transform.initialize(x, context)

    @in_full_precision
    def log_prob(self, x: Tensor, context: Optional[Tensor] = None) -> Tensor:
        """Log density of `x (batch + event)`; returns `(batch)`.

        Rows with ±inf, and rows whose computation overflows (NaN or +inf), have log density -inf.
        """
        x, context, all_finite = self._validated(x, context, "x", infinite=True)
        z, ladj = self.transform(x, context)
        log_prob = self.base.log_prob(z, context) + ladj
        if not all_finite:  # some rows are ±inf (or it is not known): their density is 0
            finite_rows = torch.isfinite(x).flatten(x.dim() - len(self.event_shape)).all(dim=-1)
            log_prob = torch.where(finite_rows, log_prob, -math.inf)
        return log_prob.nan_to_num(nan=-math.inf, posinf=-math.inf, neginf=-math.inf)

    @in_full_precision
    def encode(self, x: Tensor, context: Optional[Tensor] = None) -> Tensor:
        """Data to latent: `x (batch + event) -> z (batch + event)`."""
        x, context = self._validate(x, context)
        z, _ = self.transform(x, context)
        return self._check_output("x", "encode", z, x)

    @in_full_precision
    def decode(self, z: Tensor, context: Optional[Tensor] = None) -> Tensor:
        """Latent to data: `z (batch + event) -> x (batch + event)`."""
        z, context = self._validate(z, context, name="z")
        x, _ = self.transform.inverse(z, context)
        return self._check_output("z", "decode", x, z)

    @in_full_precision
    def rsample(self, sample_shape: Shape = (), context: Optional[Tensor] = None) -> Tensor:
        """Reparameterised samples: shape `sample_shape + context_batch + event`."""
        _, context = self._validate(None, context)
        z = self.base.rsample(as_shape(sample_shape), context)
        x, _ = self.transform.inverse(z, context)
        return x

    def sample(self, sample_shape: Shape = (), context: Optional[Tensor] = None) -> Tensor:
        """Samples without gradients: shape `sample_shape + context_batch + event`."""
        with torch.no_grad():
            return self.rsample(sample_shape, context)

    @in_full_precision
    def sample_and_log_prob(
        self, sample_shape: Shape = (), context: Optional[Tensor] = None
    ) -> tuple[Tensor, Tensor]:
        """Reparameterised samples and their log densities in one inverse pass (gradients flow)."""
        _, context = self._validate(None, context)
        z, log_prob_z = self.base.rsample_and_log_prob(as_shape(sample_shape), context)
        x, ladj_inverse = self.transform.inverse(z, context)
        return x, log_prob_z - ladj_inverse

    def distribution(self, context: Optional[Tensor] = None) -> FlowDistribution:
        """This flow as a `torch.distributions.Distribution` (given `context (batch + (C,))`, if conditional)."""
        return FlowDistribution(self, context)

    def forward(self, x: Tensor, context: Optional[Tensor] = None) -> Tensor:
        """Same as `log_prob`, so that a Flow can be called like any module."""
        return self.log_prob(x, context)
