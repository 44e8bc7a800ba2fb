"""Mixed precision for flows: under autocast only the conditioner networks compute in 16 bits.

A flow's log-density is a sum of log-determinants, and its inverse must undo its forward pass exactly: both
break when the element-wise transforms compute in bfloat16 or float16 (8 and 11 significant bits). Under CPU
bfloat16 autocast, 17 of the registry's 54 bijectors gave 16-bit latents that the flow's own `decode` refused,
round trips through a flow were off by up to 0.13 and log-densities by up to 3 nats beyond what the
conditioners' rounding explains.

The policy, in two pieces:

- `full_precision(device_type)`: every `Flow` method (and `Chain`) runs its transforms, log-determinants and
  base distribution with autocast off, in the input's dtype (float32);
- `run_conditioner(conditioner, x, ...)`: each bijector calls its conditioner network through this, which
  turns the caller's autocast back on for the network (its matrix products in 16 bits, where mixed precision
  pays) and returns the parameters in `x`'s dtype. An autoregressive layer's inverse then runs full
  conditioner passes rather than its decoder's cached steps, whose 16-bit rounding differs from the full pass's.

A flow under autocast is then an exact bijection of its own (its parameters computed in 16 bits): round trips
and log-determinants are as precise as in float32, and differ from the float32 flow's only through the
conditioners' rounding.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any, Optional

import torch
from torch import Tensor, nn

__all__ = ["conditioners_in_mixed_precision", "full_precision", "run_conditioner"]

#: the autocast `full_precision` turned off, `(device_type, dtype)`; the conditioners run under it
_suspended: Optional[tuple[str, torch.dtype]] = None


@contextlib.contextmanager
def full_precision(device_type: str) -> Iterator[None]:
    """A context with `device_type`'s autocast off, in which `run_conditioner` computes under the autocast it
    turned off. Does nothing when that autocast is off (the usual case, and inside an outer call)."""
    global _suspended
    if not torch.amp.is_autocast_available(device_type) or not torch.is_autocast_enabled(device_type):
        yield
        return
    previous, _suspended = _suspended, (device_type, torch.get_autocast_dtype(device_type))
    try:
        with torch.autocast(device_type, enabled=False):
            yield
    finally:
        _suspended = previous


def conditioners_in_mixed_precision() -> bool:
    """Whether conditioners now compute under an autocast that `full_precision` suspended."""
    return _suspended is not None


def run_conditioner(conditioner: nn.Module, x: Tensor, *args: Any) -> Tensor:
    """`conditioner(x, *args)` under the autocast that `full_precision` suspended (if any), in `x`'s dtype."""
    if _suspended is None:
        return conditioner(x, *args)
    device_type, dtype = _suspended
    with torch.autocast(device_type, dtype=dtype):
        params = conditioner(x, *args)
    return params.to(x.dtype)
