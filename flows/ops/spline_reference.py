"""Pure-PyTorch rational-quadratic spline (Durkan et al. 2019): the specification and test oracle.

The spline is monotonic on `[-bound, bound]` with `K` bins and is continued outside by linear tails
whose slopes are the boundary derivatives (with boundary derivatives of 1 the tails are the identity).
The code avoids host syncs and data-dependent branches so that it compiles with `fullgraph=True`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["rational_quadratic_spline_reference", "spline_knots"]


def _softplus_inverse(value: float) -> float:
    return math.log(math.expm1(value))


_KNOT_MAPS: dict[tuple, tuple[Tensor, Tensor]] = {}


def _knot_map(
    bins: int, bound: float, minimum: float, dtype: torch.dtype, device: torch.device
) -> tuple[Tensor, Tensor]:
    """`(offset, scale)`, each `(K + 1,)`: knot_j = offset_j + scale_j * (p_0 + ... + p_{j-1}) for the interior
    knots, and exactly -bound and bound at the ends (scale 0). Cached per (bins, bound, minimum, dtype,
    device) outside `torch.compile` (two fewer tensors to build per call); built afresh while tracing."""
    key = (bins, bound, minimum, dtype, device)
    cached = None if torch.compiler.is_compiling() else _KNOT_MAPS.get(key)
    if cached is not None:
        return cached
    with torch.inference_mode(False):  # a cached inference tensor could not be saved for a later backward
        positions = torch.arange(bins + 1, dtype=torch.float64)
        offset = -bound + 2.0 * bound * minimum * positions
        offset[-1] = bound
        scale = torch.full((bins + 1,), 2.0 * bound * (1.0 - minimum * bins), dtype=torch.float64)
        scale[0] = scale[-1] = 0.0
        built = (offset.to(dtype=dtype, device=device), scale.to(dtype=dtype, device=device))
    if not torch.compiler.is_compiling():
        _KNOT_MAPS[key] = built
    return built


def spline_knots(
    unnormalized_widths: Tensor,
    unnormalized_heights: Tensor,
    unnormalized_derivatives: Tensor,
    bound: float,
    min_bin_width: float,
    min_bin_height: float,
    min_derivative: float,
) -> tuple[Tensor, Tensor, Tensor]:
    """Knot positions and derivatives from unconstrained parameters.

    Shapes: widths and heights `(..., K)`, derivatives `(..., K + 1)`. Returns knot x positions
    `(..., K + 1)`, knot y positions `(..., K + 1)` (both from `-bound` to `bound` exactly) and
    positive derivatives `(..., K + 1)`. Raw parameters of zero give the identity map.
    """
    bins = unnormalized_widths.shape[-1]
    if min_bin_width * bins >= 1.0 or min_bin_height * bins >= 1.0:
        raise ValueError(
            f"min_bin_width and min_bin_height must be < 1/bins = {1.0 / bins:.4g}, "
            f"got {min_bin_width} and {min_bin_height}"
        )

    def knots(unnormalized: Tensor, minimum: float) -> Tensor:
        # The softmax is written out: over a short last dimension torch.softmax is several times slower
        # on CPUs than these element-wise ops. The shift is detached (the softmax does not depend on it), so
        # the backward pass has no max to differentiate.
        exponentials = torch.exp(unnormalized - unnormalized.detach().amax(dim=-1, keepdim=True))
        probabilities = exponentials / exponentials.sum(dim=-1, keepdim=True)
        # knot_j = -bound + 2 bound sum_{i<j} (minimum + (1 - minimum K) p_i): an affine map of the cumulative
        # probabilities, with both ends pinned exactly (zero scale there) so that the tails join without a gap.
        cumulative = F.pad(torch.cumsum(probabilities, dim=-1), (1, 0))  # the last (about 1) gets scale 0
        offset, scale = _knot_map(bins, bound, minimum, cumulative.dtype, cumulative.device)
        return torch.addcmul(offset, scale, cumulative)

    knot_x = knots(unnormalized_widths, min_bin_width)
    knot_y = knots(unnormalized_heights, min_bin_height)
    shift = _softplus_inverse(1.0 - min_derivative)
    derivatives = min_derivative + F.softplus(unnormalized_derivatives + shift)
    return knot_x, knot_y, derivatives


def _clamp_unit(xi: Tensor) -> Tensor:
    """Clamp the bin coordinate to [0, 1] against rounding, keeping the gradient of the unclamped value.

    A plain clamp would zero the derivative when rounding puts an input at a knot or at the bound just
    outside the bin (e.g. dx/dy = 0 at y = bound instead of the spline's slope there).
    """
    return xi + (xi.clamp(0.0, 1.0) - xi).detach()


def _gather_bins(knot_x: Tensor, knot_y: Tensor, derivatives: Tensor, index: Tensor) -> list[Tensor]:
    """`[x_k, x_k1, y_k, y_k1, d_k, d_k1]`: the knot values `(..., K + 1)` at `index` and `index + 1`.

    One index pair for three gathers: stacking the three knot tensors for a single gather would copy all
    `3 (K + 1)` values per element, which costs more than the two extra gathers on large batches.
    """
    pair = torch.stack((index, index + 1), dim=-1)
    return [
        value
        for values in (knot_x, knot_y, derivatives)
        for value in torch.gather(values, -1, pair).unbind(-1)
    ]


def rational_quadratic_spline_reference(
    x: Tensor,
    unnormalized_widths: Tensor,
    unnormalized_heights: Tensor,
    unnormalized_derivatives: Tensor,
    inverse: bool = False,
    bound: float = 3.0,
    min_bin_width: float = 1e-3,
    min_bin_height: float = 1e-3,
    min_derivative: float = 1e-3,
) -> tuple[Tensor, Tensor]:
    """Apply the spline element-wise and sum the log-derivatives over the last dimension.

    Shapes: `x (..., d)`; widths and heights `(..., d, K)`; derivatives `(..., d, K + 1)` (the first
    and last are the slopes of the left and right linear tails). Returns `y (..., d)` and
    `ladj (...)`, the sum over the last dimension of `log |dy/dx|` (of the map applied: for
    `inverse=True` that is the inverse map).
    """
    if unnormalized_derivatives.shape[-1] != unnormalized_widths.shape[-1] + 1:
        raise ValueError(
            "expected K + 1 derivatives for K bins, got "
            f"{unnormalized_derivatives.shape[-1]} derivatives and {unnormalized_widths.shape[-1]} bins"
        )
    knot_x, knot_y, derivatives = spline_knots(
        unnormalized_widths,
        unnormalized_heights,
        unnormalized_derivatives,
        bound,
        min_bin_width,
        min_bin_height,
        min_derivative,
    )
    knot_x = knot_x.to(x.dtype)
    knot_y = knot_y.to(x.dtype)
    derivatives = derivatives.to(x.dtype)
    source_knots = knot_y if inverse else knot_x

    # Element-wise: bins for inputs inside, clamped inputs keep the unused branch finite.
    inside = x.abs() <= bound
    clamped = x.clamp(-bound, bound)
    index = (clamped.unsqueeze(-1) >= source_knots[..., 1:-1]).sum(dim=-1)
    x_k, x_k1, y_k, y_k1, d_k, d_k1 = _gather_bins(knot_x, knot_y, derivatives, index)
    width = x_k1 - x_k
    height = y_k1 - y_k
    slope = height / width
    curvature = torch.add(d_k1 + d_k, slope, alpha=-2.0)  # d_k1 + d_k - 2 slope

    if inverse:
        offset = clamped - y_k
        # The root xi in [0, 1] of y(xi) = offset, computed without gradient: the closed-form root is exact in
        # value but its autograd derivative is ill-conditioned in float32 (off by 10% in tall narrow bins).
        h, s, d0, k, o = (t.detach() for t in (height, slope, d_k, curvature, offset))
        a = h * (s - d0) + o * k
        b = h * d0 - o * k
        c = -s * o
        # Clamped away from 0: rounding can make the discriminant slightly negative at the top knot.
        root = (b.square() - 4.0 * a * c).clamp_min(torch.finfo(b.dtype).tiny).sqrt()
        # Without cancellation: 2c / (-b - sqrt(D)) when b >= 0, (-b + sqrt(D)) / 2a when b < 0 (then a > 0).
        # The unused formula gets a harmless denominator so that it stays finite.
        b_nonnegative = b >= 0
        xi_b_nonnegative = (2.0 * c) / torch.where(b_nonnegative, -b - root, -torch.ones_like(b))
        xi_b_negative = (root - b) / torch.where(b_nonnegative, torch.ones_like(a), 2.0 * a)
        xi_root = torch.where(b_nonnegative, xi_b_nonnegative, xi_b_negative).clamp(0.0, 1.0)

        # Newton steps on y(xi) - offset = 0 with gradients flowing: at the root the value is unchanged (or
        # refined); after the first step the gradients are the exact implicit derivatives (dx/dy = 1 / (dy/dx),
        # and likewise for the parameters), after the second the second derivatives are exact too.
        def newton_step(xi: Tensor) -> Tensor:
            xi_1m = xi * (1.0 - xi)
            denominator = slope + curvature * xi_1m
            residual = height * (slope * xi.square() + d_k * xi_1m) / denominator - offset
            dy_dxi = (
                height
                * slope
                * (d_k1 * xi.square() + 2.0 * slope * xi_1m + d_k * (1.0 - xi).square())
                / denominator.square()
            )
            return xi - residual / dy_dxi

        xi = _clamp_unit(newton_step(newton_step(xi_root)))
        spline_out = torch.addcmul(x_k, xi, width)
        xi_square = xi.square()
        xi_1m = xi - xi_square  # xi (1 - xi)
        denominator = torch.addcmul(slope, curvature, xi_1m)
    else:
        xi = _clamp_unit((clamped - x_k) / width)
        xi_square = xi.square()
        xi_1m = xi - xi_square  # xi (1 - xi)
        denominator = torch.addcmul(slope, curvature, xi_1m)
        numerator = height * torch.addcmul(slope * xi_square, d_k, xi_1m)
        spline_out = torch.addcdiv(y_k, numerator, denominator)

    # log dy/dxi / width = log[slope^2 (d_k1 xi^2 + 2 slope xi (1 - xi) + d_k (1 - xi)^2) / denominator^2]
    derivative_numerator = torch.addcmul(
        torch.addcmul(d_k1 * xi_square, slope, xi_1m, value=2.0), d_k, (1.0 - xi).square()
    )
    log_derivative = torch.log(derivative_numerator * (slope / denominator).square())

    below = x < -bound
    tail_slope = torch.where(below, derivatives[..., 0], derivatives[..., -1])
    # anchored at the clamped input: -bound below the interval and bound above it
    if inverse:
        tail_out = torch.addcdiv(clamped, x - clamped, tail_slope)
    else:
        tail_out = torch.addcmul(clamped, x - clamped, tail_slope)

    y = torch.where(inside, spline_out, tail_out)
    log_derivative = torch.where(inside, log_derivative, torch.log(tail_slope))
    if inverse:
        log_derivative = -log_derivative
    return y, log_derivative.sum(dim=-1)
