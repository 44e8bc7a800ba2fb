"""Mixed precision for flows: under autocast only the conditioner networks compute in 16 bits.

A flow's log-density is a sum of log-determinants, and its inverse must undo its forward pass exactly: both
break when the element-wise transforms compute in bfloat16 or float16 (8 and 11 significant bits). Under CPU
bfloat16 autocast, 17 of the registry's 54 bijectors returned 16-bit outputs (16 of them gave latents that a
flow's own `decode` refused), and an NSF's `sample_and_log_prob` disagreed with its `log_prob` by up to 19 nats.

The policy, in two pieces:

- `in_full_precision`: every `Bijector`'s `forward` and `inverse`, every base `Distribution`'s methods and
  every `Flow` method run with autocast off, in the input's dtype (float32); `Bijector` and `Distribution`
  wrap their subclasses' methods in it, so a user's own layers follow the policy too;
- `run_conditioner(network, x, ...)`: bijectors call their conditioner networks (and a flow its context
  embedding, a conditional base its parameter network) through this, which turns the caller's autocast back
  on for the network (its matrix products in 16 bits, where mixed precision pays) and returns the result in
  the input's dtype. An autoregressive layer's inverse then runs full conditioner passes rather than its
  decoder's cached steps, whose 16-bit rounding differs from the full pass's.

A flow under autocast is then an exact bijection of its own (its parameters computed in 16 bits): round trips
and log-determinants are as precise as in float32, and differ from the float32 flow's only through the
conditioners' rounding. The suspended autocast is kept per thread, as autocast itself is.
"""

from __future__ import annotations

import contextlib
import functools
import threading
from collections.abc import Callable, Iterator
from typing import Any, Optional, TypeVar

import torch
from torch import Tensor

__all__ = ["conditioners_in_mixed_precision", "full_precision", "in_full_precision", "run_conditioner"]


class _State(threading.local):
    #: the autocast `full_precision` turned off in this thread, `(device_type, dtype)`; conditioners run under it
    suspended: Optional[tuple[str, torch.dtype]] = None


_state = _State()


#: whether autocast is on for any device, in one call into torch (a torch without it: always "maybe")
_any_autocast: Callable[[], bool] = getattr(torch._C, "_is_any_autocast_enabled", lambda: True)


def _autocast_on(device_type: str) -> bool:
    return torch.amp.is_autocast_available(device_type) and torch.is_autocast_enabled(device_type)


@contextlib.contextmanager
def full_precision(device_type: str) -> Iterator[None]:
    """A context with `device_type`'s autocast off, in which `run_conditioner` computes under the autocast it
    turned off. Does nothing when that autocast is off (the usual case, and inside an outer call)."""
    if not _autocast_on(device_type):
        yield
        return
    previous = _state.suspended
    _state.suspended = (device_type, torch.get_autocast_dtype(device_type))
    try:
        with torch.autocast(device_type, enabled=False):
            yield
    finally:
        _state.suspended = previous


_Method = TypeVar("_Method", bound=Callable[..., Any])


def _device_type(module: Any, args: tuple, kwargs: dict) -> Optional[str]:
    """The device of a method's first tensor argument, else of the module's first parameter or buffer."""
    for value in args:
        if isinstance(value, Tensor):
            return value.device.type
    for value in kwargs.values():
        if isinstance(value, Tensor):
            return value.device.type
    for tensor in module.parameters():
        return tensor.device.type
    for tensor in module.buffers():
        return tensor.device.type
    return None


def in_full_precision(method: _Method) -> _Method:
    """A module method run in `full_precision` on its device (see `_device_type`); idempotent."""
    if getattr(method, "_in_full_precision", False):
        return method

    @functools.wraps(method)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        if not _any_autocast() and not torch.compiler.is_compiling():  # the usual case, in 0.2 us
            return method(self, *args, **kwargs)
        device_type = _device_type(self, args, kwargs)
        if device_type is None:
            return method(self, *args, **kwargs)
        with full_precision(device_type):  # itself a no-op when this device's autocast is off
            return method(self, *args, **kwargs)

    wrapper._in_full_precision = True  # type: ignore[attr-defined]
    return wrapper  # type: ignore[return-value]


def wrap_methods(cls: type, names: tuple[str, ...]) -> None:
    """Wrap the methods `names` that `cls` itself defines in `in_full_precision` (from `__init_subclass__`)."""
    for name in names:
        method = cls.__dict__.get(name)
        if callable(method):
            setattr(cls, name, in_full_precision(method))


def conditioners_in_mixed_precision() -> bool:
    """Whether conditioners now compute under an autocast that `full_precision` suspended."""
    return _state.suspended is not None


def run_conditioner(
    network: Callable[..., Tensor], x: Tensor, *args: Any, dtype: Optional[torch.dtype] = None
) -> Tensor:
    """`network(x, *args)` under the autocast that `full_precision` suspended (if any), cast to `dtype` (by
    default `x`'s, when floating-point; an integer `x`, e.g. class labels, leaves the result as it is)."""
    suspended = _state.suspended
    if suspended is None:
        return network(x, *args)
    with torch.autocast(suspended[0], dtype=suspended[1]):
        out = network(x, *args)
    if dtype is None:
        dtype = x.dtype if x.is_floating_point() else None
    return out if dtype is None else out.to(dtype)
