"""Element-wise transformers: the scalar maps that coupling and autoregressive layers apply.

A transformer is a small immutable object with `num_params` (raw parameters per element) and a call
`(x, params, inverse) -> (y, ladj)` with shapes `x (..., d)`, `params (..., d, num_params)`,
`y (..., d)`, `ladj (...)` (summed over the last dimension). Raw parameters of zero give the identity
map, so a conditioner whose last layer is zero-initialised starts the flow at the identity.
Layers take a transformer by name through `make_transformer`, which keeps every layer serialisable.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal, Union

import torch
from torch import Tensor

from flows import ops

__all__ = [
    "SPLINE_MINIMUM_FLOOR",
    "TRANSFORMERS",
    "Additive",
    "Affine",
    "Spline",
    "Transformer",
    "make_transformer",
]

#: the smallest `min_bin_width`, `min_bin_height` and `min_derivative` a `Spline` takes. At 1e-6 (8 to 128 bins,
#: bounds 3 and 100) float32 splines stayed finite in value, log-derivative and gradients, forward and inverse,
#: for raw parameters in the hundreds; at 1e-7, 4-25% of such draws gave NaN somewhere, at 0 nearly all (bins
#: of zero width or height, whose slope is 0/0; or a zero derivative).
SPLINE_MINIMUM_FLOOR = 1e-6


class Transformer:
    """Base class of element-wise transformers; see the module docstring for the contract.

    `params_elements_last`: the transformer computes with its parameters transposed to `(d, P, rows)`
    (elements last). Conditioners then store their output feature-major, which makes that a view.
    """

    params_elements_last: ClassVar[bool] = False

    @property
    def num_params(self) -> int:
        raise NotImplementedError

    def __call__(self, x: Tensor, params: Tensor, inverse: bool = False) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def check_params(self, x: Tensor, params: Tensor) -> None:
        if params.shape[-1] != self.num_params:
            raise ValueError(
                f"{type(self).__name__} expected {self.num_params} parameters per element, got {params.shape[-1]}"
            )


@dataclass(frozen=True)
class Affine(Transformer):
    """`y = x * s + t` (RealNVP / Glow) with a stable positive scale; see `flows.ops.log_scale_from_raw`."""

    scale_function: Literal["tanh", "softplus", "sigmoid", "exp"] = "tanh"
    scale_bound: float = 3.0

    def __post_init__(self) -> None:
        if self.scale_function not in ops.SCALE_FUNCTIONS:
            raise ValueError(
                f"scale_function must be one of {ops.SCALE_FUNCTIONS}, got {self.scale_function!r}"
            )
        if not self.scale_bound > 0:
            raise ValueError(f"scale_bound must be > 0, got {self.scale_bound}")

    @property
    def num_params(self) -> int:
        return 2

    def __call__(self, x: Tensor, params: Tensor, inverse: bool = False) -> tuple[Tensor, Tensor]:
        self.check_params(x, params)
        return ops.affine(
            x,
            params[..., 0],
            params[..., 1],
            inverse=inverse,
            scale_function=self.scale_function,
            scale_bound=self.scale_bound,
        )


@dataclass(frozen=True)
class Additive(Transformer):
    """`y = x + t` (NICE): volume preserving, `ladj = 0`."""

    @property
    def num_params(self) -> int:
        return 1

    def __call__(self, x: Tensor, params: Tensor, inverse: bool = False) -> tuple[Tensor, Tensor]:
        self.check_params(x, params)
        shift = params[..., 0]
        y = x - shift if inverse else x + shift
        return y, torch.zeros_like(x).sum(dim=-1)


@dataclass(frozen=True)
class Spline(Transformer):
    """Monotonic rational-quadratic spline on `[-bound, bound]` with `bins` bins (Durkan et al. 2019).

    Outside the interval the map is linear: `tails="linear"` learns the two tail slopes (they equal the
    boundary derivatives, so the map is C1), `tails="identity"` fixes them to 1. The minimum bin sizes and
    derivative are at least `SPLINE_MINIMUM_FLOOR` (1e-6): below it float32 rounds bins and slopes to zero.
    """

    bins: int = 8
    bound: float = 3.0
    tails: Literal["linear", "identity"] = "linear"
    min_bin_width: float = 1e-3
    min_bin_height: float = 1e-3
    min_derivative: float = 1e-3
    params_elements_last: ClassVar[bool] = True

    def __post_init__(self) -> None:
        if not isinstance(self.bins, int) or self.bins < 2:
            raise ValueError(f"bins must be an integer >= 2, got {self.bins!r}")
        if not self.bound > 0:
            raise ValueError(f"bound must be > 0, got {self.bound}")
        if self.tails not in ("linear", "identity"):
            raise ValueError(f"tails must be 'linear' or 'identity', got {self.tails!r}")
        floor = SPLINE_MINIMUM_FLOOR
        why = "smaller values round to bins of zero size or to zero slopes in float32, where values turn NaN"
        for name in ("min_bin_width", "min_bin_height"):
            value = getattr(self, name)
            if not (value >= floor and value * self.bins < 1):
                raise ValueError(
                    f"{name} must be in [{floor:g}, 1/bins) = [{floor:g}, {1 / self.bins:.4g}) ({why}), got {value}"
                )
        if not floor <= self.min_derivative < 1:
            raise ValueError(f"min_derivative must be in [{floor:g}, 1) ({why}), got {self.min_derivative}")

    @property
    def num_params(self) -> int:
        return 3 * self.bins + (1 if self.tails == "linear" else -1)

    def __call__(self, x: Tensor, params: Tensor, inverse: bool = False) -> tuple[Tensor, Tensor]:
        self.check_params(x, params)
        return ops.rational_quadratic_spline_packed(
            x,
            params,
            self.bins,
            inverse=inverse,
            bound=self.bound,
            min_bin_width=self.min_bin_width,
            min_bin_height=self.min_bin_height,
            min_derivative=self.min_derivative,
        )


TRANSFORMERS: dict[str, type[Transformer]] = {"affine": Affine, "additive": Additive, "spline": Spline}


def make_transformer(transformer: Union[str, Transformer] = "affine", **options: object) -> Transformer:
    """A transformer from its name (`"affine"`, `"additive"`, `"spline"`) and options, or passed through."""
    if isinstance(transformer, Transformer):
        if options:
            raise ValueError(
                f"options {sorted(options)} given with an already built transformer {transformer}"
            )
        return transformer
    if transformer not in TRANSFORMERS:
        raise ValueError(f"transformer must be one of {sorted(TRANSFORMERS)}, got {transformer!r}")
    cls = TRANSFORMERS[transformer]
    try:
        return cls(**options)
    except TypeError as error:
        raise TypeError(f"invalid option for transformer {transformer!r}: {error}") from error
