"""The `Target` protocol: an unnormalised log density `log p~(x)` to sample, and a checked call of it.

A target is any object with `features` (the dimension D) and `log_prob(x: (batch, D)) -> (batch,)`,
differentiable in `x`; optionally `log_normalizer` (the exact `log Z` of `p~`, or None when unknown) and
`sample(n) -> (n, D)` (exact samples, for forward-KL training and forward diagnostics).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Optional, Protocol, runtime_checkable

from torch import Tensor

__all__ = ["FunctionTarget", "Target", "TargetBase", "checked_log_prob"]


@runtime_checkable
class Target(Protocol):
    """An unnormalised density on R^D."""

    features: int

    def log_prob(self, x: Tensor) -> Tensor:
        """`log p~(x)` of shape `(batch,)` for `x` of shape `(batch, D)`."""
        ...


class TargetBase:
    """Base of the built-in targets: `features`, `log_normalizer` (None = unknown), no samples by default."""

    features: int = 0
    #: exact log Z of the unnormalised density (None when unknown)
    log_normalizer: Optional[float] = None

    def log_prob(self, x: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def __call__(self, x: Tensor) -> Tensor:
        return self.log_prob(x)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(features={self.features})"


class FunctionTarget(TargetBase):
    """A user's callable `log_prob(x: (batch, D)) -> (batch,)` as a target of `features` dimensions."""

    def __init__(
        self, function: Callable[[Tensor], Tensor], features: int, log_normalizer: Optional[float] = None
    ) -> None:
        if not callable(function):
            raise TypeError(f"a target's log_prob must be callable, got {type(function).__name__}")
        if not isinstance(features, int) or isinstance(features, bool) or features < 1:
            raise ValueError(f"features: expected a positive int (the dimension D), got {features!r}")
        self.function = function
        self.features = features
        self.log_normalizer = log_normalizer

    def log_prob(self, x: Tensor) -> Tensor:
        return self.function(x)

    def __repr__(self) -> str:
        name = getattr(self.function, "__qualname__", type(self.function).__name__)
        return f"FunctionTarget({name}, features={self.features})"


def checked_log_prob(target: Target, x: Tensor, differentiable: bool = False) -> Tensor:
    """`target.log_prob(x)` checked: a tensor of shape `(batch,)`; with `differentiable`, a function of `x`.

    NaN and +inf are left in place (callers treat them as zero density); a wrong shape, a non-tensor, or
    (with `differentiable`, when `x` requires grad) an output with no gradient path to `x` raise ValueError.
    """
    value = target.log_prob(x)
    if not isinstance(value, Tensor):
        raise ValueError(
            f"the target's log_prob must return a tensor of shape ({x.shape[0]},), got {type(value).__name__}"
        )
    if value.shape != (x.shape[0],):
        raise ValueError(
            f"the target's log_prob must return shape ({x.shape[0]},) for x of shape {tuple(x.shape)}, "
            f"got {tuple(value.shape)}"
        )
    if not value.is_floating_point():
        raise ValueError(f"the target's log_prob must return floats, got dtype {value.dtype}")
    if differentiable and x.requires_grad and not value.requires_grad:
        raise ValueError(
            "the target's log_prob is not differentiable in x (its output has no gradient path to the "
            "input: computed through numpy, .detach() or torch.no_grad?); reverse-KL training needs "
            "grad_x log p(x)"
        )
    return value
