"""Pure-PyTorch rational-quadratic spline (Durkan et al. 2019): the specification and test oracle.

The spline is monotonic on `[-bound, bound]` with `K` bins and is continued outside by linear tails
whose slopes are the boundary derivatives (with boundary derivatives of 1 the tails are the identity).
The code avoids host syncs and data-dependent branches so that it compiles with `fullgraph=True`.
"""

from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "rational_quadratic_spline_packed_reference",
    "rational_quadratic_spline_reference",
    "spline_knots",
]


def _softplus_inverse(value: float) -> float:
    return math.log(math.expm1(value))


_KNOT_MAPS: dict[tuple, tuple[Tensor, Tensor]] = {}


def _knot_map(
    bins: int, bound: float, minimums: tuple[float, ...], dtype: torch.dtype, device: torch.device
) -> tuple[Tensor, Tensor]:
    """`(matrix, offset)` with knots = offset + matrix @ (normalised bin sizes): for each minimum bin size m,
    knot_j = -bound + 2 bound (m j + (1 - m K) (p_0 + ... + p_{j-1})) for the interior knots, and exactly -bound
    and bound at the ends (zero rows). Shapes: `matrix (K + 1, K)` and `offset (K + 1, 1)` for one minimum, else
    `(len(minimums), K + 1, K)` and `(len(minimums), K + 1, 1)`. Cached per arguments outside `torch.compile`
    (no tensors to build per call); built afresh while tracing."""
    key = (bins, bound, minimums, dtype, device)
    cached = None if torch.compiler.is_compiling() else _KNOT_MAPS.get(key)
    if cached is not None:
        return cached
    with torch.inference_mode(False):  # a cached inference tensor could not be saved for a later backward
        minimum = torch.tensor(minimums, dtype=torch.float64)[:, None, None]
        knots = torch.arange(bins + 1, dtype=torch.float64)[:, None]
        offset = -bound + 2.0 * bound * minimum * knots  # (m, K + 1, 1)
        offset[:, -1] = bound
        # row j sums the bins before knot j; the end rows are zero, so the ends are exactly -bound and bound
        below = (torch.arange(bins, dtype=torch.float64) < knots).to(torch.float64)  # (K + 1, K)
        below[0] = below[-1] = 0.0
        matrix = 2.0 * bound * (1.0 - minimum * bins) * below  # (m, K + 1, K)
        if len(minimums) == 1:
            matrix, offset = matrix[0], offset[0]
        built = (matrix.to(dtype=dtype, device=device), offset.to(dtype=dtype, device=device))
    if not torch.compiler.is_compiling():
        _KNOT_MAPS[key] = built
    return built


def _check_minimum_sizes(bins: int, min_bin_width: float, min_bin_height: float) -> None:
    if min_bin_width * bins >= 1.0 or min_bin_height * bins >= 1.0:
        raise ValueError(
            f"min_bin_width and min_bin_height must be < 1/bins = {1.0 / bins:.4g}, "
            f"got {min_bin_width} and {min_bin_height}"
        )


def _cumulative_knots(
    unnormalized: Tensor, bins_last: bool, bound: float, minimums: tuple[float, ...]
) -> Tensor:
    """Knot positions (`K + 1`, from `-bound` to `bound` exactly) from raw bin sizes (`K`), along the last
    dimension (`bins_last`, `(..., K)`) or the one before it (`(..., K, N)`, the elements-last layout).

    `minimums` holds one minimum bin size or, elements-last, one per index of the dimension before the bins
    (widths and heights stacked there, with their own minimums).
    """
    dim = -1 if bins_last else -2
    # Elements-last, the softmax runs along the long rows (one fused kernel forward and one backward).
    probabilities = torch.softmax(unnormalized, dim=dim)
    matrix, offset = _knot_map(
        unnormalized.shape[dim], bound, minimums, probabilities.dtype, probabilities.device
    )
    # The cumulative sums as one small matrix product: its backward is one more, where torch.cumsum's is a
    # flip, a cumulative sum and a flip, and the leading zero needs no padding. Not under autocast: matmul is on
    # its 16-bit list, and 16-bit knots would quantise narrow bins (exp, sum and cumsum, which the product
    # replaced, run in float32 under autocast).
    with _autocast_off(probabilities.device):
        if bins_last:
            return torch.matmul(probabilities, matrix.mT) + offset[..., 0]
        return torch.matmul(matrix, probabilities) + offset


_AUTOCAST_DEVICES = ("cpu", "cuda", "xpu", "mps")


def _autocast_off(device: torch.device) -> contextlib.AbstractContextManager:
    """A context with autocast off on `device` where it is on, else one that does nothing."""
    if device.type in _AUTOCAST_DEVICES and torch.is_autocast_enabled(device.type):
        return torch.autocast(device.type, enabled=False)
    return contextlib.nullcontext()


def _positive_derivatives(unnormalized: Tensor, min_derivative: float) -> Tensor:
    """`min_derivative + softplus(raw + shift)`, shifted so that a raw value of 0 is a derivative of 1."""
    return min_derivative + F.softplus(unnormalized + _softplus_inverse(1.0 - min_derivative))


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
    _check_minimum_sizes(unnormalized_widths.shape[-1], min_bin_width, min_bin_height)
    knot_x = _cumulative_knots(unnormalized_widths, True, bound, (min_bin_width,))
    knot_y = _cumulative_knots(unnormalized_heights, True, bound, (min_bin_height,))
    return knot_x, knot_y, _positive_derivatives(unnormalized_derivatives, min_derivative)


def _clamp_unit(xi: Tensor) -> Tensor:
    """Clamp the bin coordinate to [0, 1] against rounding, keeping the gradient of the unclamped value.

    A plain clamp would zero the derivative when rounding puts an input at a knot or at the bound just
    outside the bin (e.g. dx/dy = 0 at y = bound instead of the spline's slope there).
    """
    value = xi.detach()  # the correction is computed without autograd nodes
    return xi + (value.clamp(0.0, 1.0) - value)


def _elements_last(tensor: Tensor, event_dims: int) -> Tensor:
    """`batch + event` -> contiguous `event + (rows,)`, with `rows` the batch's size and `event` the last
    `event_dims` dimensions: one 2-D transposed copy (a blocked copy on CPUs).

    In this layout every reduction over the bins and every element-wise op runs along contiguous rows of
    `rows` values. In the batch-first layout the bin dimension is innermost, so the knots' reductions,
    cumulative sums and broadcasts ran along rows of K or K + 1 values, several times slower per value on CPUs.
    """
    event = tuple(tensor.shape[tensor.dim() - event_dims :])
    rows = math.prod(tensor.shape[: tensor.dim() - event_dims])
    return tensor.reshape(rows, math.prod(event)).t().contiguous().view(event + (rows,))


def _batch_first(tensor: Tensor, batch: tuple[int, ...]) -> Tensor:
    """Inverse of `_elements_last` for `(d, rows)`: `batch + (d,)` (a transposed view when `batch` is one dim)."""
    return tensor.t().reshape(batch + tensor.shape[:1])


def _spline_elements_last(
    x: Tensor,
    knot_params: Tensor,
    derivative_params: Tensor,
    inverse: bool,
    bound: float,
    min_bin_width: float,
    min_bin_height: float,
    min_derivative: float,
) -> tuple[Tensor, Tensor]:
    """The spline in the elements-last layout of `_elements_last`.

    Shapes: `x (d, N)`; `knot_params (d, 2, K, N)`, the raw bin widths then the raw bin heights;
    `derivative_params (d, K + 1, N)`, or `(d, K - 1, N)` for identity tails (the interior derivatives only;
    the boundary derivatives are 1). Returns `y (d, N)` and `log |dy/dx| (d, N)` of the map applied.
    """
    bins = knot_params.shape[2]
    _check_minimum_sizes(bins, min_bin_width, min_bin_height)
    identity_tails = derivative_params.shape[1] == bins - 1
    minimums = (min_bin_width,) if min_bin_width == min_bin_height else (min_bin_width, min_bin_height)
    # Widths and heights in one block: one softmax and one matrix product (the cumulative sums) for both.
    knots = _cumulative_knots(knot_params, False, bound, minimums).to(x.dtype)  # (d, 2, K + 1, N): x, then y
    derivatives = _positive_derivatives(derivative_params, min_derivative).to(x.dtype)
    if identity_tails:
        derivatives = F.pad(derivatives, (0, 0, 1, 1), value=1.0)
    # (d, K + 1, N) from here on

    # Element-wise: bins for inputs inside, clamped inputs keep the unused branch finite. The masks and the bin
    # index carry no gradient: computed from detached tensors they add no nodes to the autograd graph.
    # Squares are written t * t, and y_k + n / d is not fused into addcdiv: their backward passes cost about
    # half of PowBackward's and AddcdivBackward's on CPUs.
    x_value = x.detach()
    inside = x_value.abs() <= bound
    clamped_value = x_value.clamp(-bound, bound)
    # The spline branch reads x inside the bound and the (constant) bound outside, where its result is unused:
    # no gradient reaches x from there, even from infinite inputs. The tails' anchor is a constant too.
    clamped = torch.where(inside, x, clamped_value)
    source_knots = knots.detach()[:, 1 if inverse else 0, 1:-1]
    index = (clamped_value.unsqueeze(1) >= source_knots).sum(dim=1)  # (d, N)
    # One index pair, two gathers: the x and y knots of the bin from the knot block, then its derivatives.
    pair = torch.stack((index, index + 1), dim=1)  # (d, 2, N)
    bin_knots = torch.gather(knots, 2, pair.unsqueeze(1).expand(-1, 2, -1, -1))  # (d, 2, 2, N)
    x_k, x_k1, y_k, y_k1 = bin_knots.flatten(1, 2).unbind(1)
    d_k, d_k1 = torch.gather(derivatives, 1, pair).unbind(1)
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
            xi_square, one_minus = xi * xi, 1.0 - xi
            xi_1m = xi * one_minus
            denominator = slope + curvature * xi_1m
            residual = height * (slope * xi_square + d_k * xi_1m) / denominator - offset
            dy_dxi = (
                height
                * slope
                * (d_k1 * xi_square + 2.0 * slope * xi_1m + d_k * (one_minus * one_minus))
                / (denominator * denominator)
            )
            return xi - residual / dy_dxi

        xi = _clamp_unit(newton_step(newton_step(xi_root)))
        spline_out = torch.addcmul(x_k, xi, width)
        xi_square = xi * xi
        xi_1m = xi - xi_square  # xi (1 - xi)
        denominator = torch.addcmul(slope, curvature, xi_1m)
    else:
        xi = _clamp_unit((clamped - x_k) / width)
        xi_square = xi * xi
        xi_1m = xi - xi_square  # xi (1 - xi)
        denominator = torch.addcmul(slope, curvature, xi_1m)
        numerator = height * torch.addcmul(slope * xi_square, d_k, xi_1m)
        spline_out = y_k + numerator / denominator

    # log dy/dxi / width = log[slope^2 (d_k1 xi^2 + 2 slope xi (1 - xi) + d_k (1 - xi)^2) / denominator^2]
    one_minus = 1.0 - xi
    derivative_numerator = torch.addcmul(
        torch.addcmul(d_k1 * xi_square, slope, xi_1m, value=2.0), d_k, one_minus * one_minus
    )
    ratio = slope / denominator
    log_derivative = torch.log(derivative_numerator * (ratio * ratio))

    if identity_tails:
        y = torch.where(inside, spline_out, x)
        log_derivative = torch.where(inside, log_derivative, 0.0)
    else:
        # one slice for both boundary derivatives: its backward fills one zero tensor, two selects' fill two
        ends = derivatives[:, :: derivatives.shape[1] - 1]  # (d, 2, N)
        tail_slope = torch.where(x_value < -bound, ends[:, 0], ends[:, 1])
        # anchored at the clamped input: -bound below the interval and bound above it
        if inverse:
            tail_out = torch.addcdiv(clamped_value, x - clamped_value, tail_slope)
        else:
            tail_out = torch.addcmul(clamped_value, x - clamped_value, tail_slope)
        y = torch.where(inside, spline_out, tail_out)
        log_derivative = torch.where(inside, log_derivative, torch.log(tail_slope))
    return y, -log_derivative if inverse else log_derivative


def _broadcast_elements(x: Tensor, *params: Tensor) -> tuple[Tensor, tuple[Tensor, ...]]:
    """`x (..., d)` and parameters `(..., d, P)` expanded to one batch shape (views; unchanged when equal).

    Parameters shared across the batch (e.g. `(1, d, P)`) broadcast, as in the fused kernels.
    """
    if all(tensor.shape[:-1] == x.shape for tensor in params):  # the usual case: no broadcast_shapes (~40 us)
        return x, params
    try:
        shape = torch.broadcast_shapes(x.shape, *(tensor.shape[:-1] for tensor in params))
    except RuntimeError as error:
        raise ValueError(
            f"spline parameters must have shape x.shape + (P,) = {tuple(x.shape)} + (P,) or broadcast to it, "
            f"got {[tuple(tensor.shape) for tensor in params]}"
        ) from error
    if x.shape != shape:
        x = x.expand(shape)
    return x, tuple(
        tensor if tensor.shape[:-1] == shape else tensor.expand(shape + tensor.shape[-1:])
        for tensor in params
    )


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
    bins = unnormalized_widths.shape[-1]
    if unnormalized_heights.shape[-1] != bins or unnormalized_derivatives.shape[-1] != bins + 1:
        raise ValueError(
            "expected K heights and K + 1 derivatives for K bins, got "
            f"{unnormalized_heights.shape[-1]} heights, {unnormalized_derivatives.shape[-1]} derivatives "
            f"and {bins} bins"
        )
    x, parts = _broadcast_elements(x, unnormalized_widths, unnormalized_heights, unnormalized_derivatives)
    # One concatenation: the packed layout with linear tails (3K + 1 parameters), which the packed entry moves to
    # the elements-last layout in one transposed copy.
    return rational_quadratic_spline_packed_reference(
        x,
        torch.cat(parts, dim=-1),
        bins,
        inverse=inverse,
        bound=bound,
        min_bin_width=min_bin_width,
        min_bin_height=min_bin_height,
        min_derivative=min_derivative,
    )


def rational_quadratic_spline_packed_reference(
    x: Tensor,
    params: Tensor,
    bins: int,
    inverse: bool = False,
    bound: float = 3.0,
    min_bin_width: float = 1e-3,
    min_bin_height: float = 1e-3,
    min_derivative: float = 1e-3,
) -> tuple[Tensor, Tensor]:
    """`rational_quadratic_spline_reference` with the parameters in one tensor, as a conditioner returns them.

    Shapes: `x (..., d)`, `params (..., d, P)`: K raw widths, K raw heights, then `K + 1` raw derivatives
    (`P = 3K + 1`: linear tails with the first and last as their slopes) or the `K - 1` interior ones
    (`P = 3K - 1`: identity tails, boundary derivatives of exactly 1). Returns `y (..., d)`, `ladj (...)`.
    A contiguous `params` (a network's output) goes to the elements-last layout in one transposed copy.
    A 0-d `x` is one element without a feature dimension; parameters broadcast against `x`.
    """
    count = params.shape[-1]
    if count not in (3 * bins - 1, 3 * bins + 1):
        raise ValueError(
            f"expected 3K + 1 (linear tails) or 3K - 1 (identity tails) = {3 * bins + 1} or {3 * bins - 1} "
            f"parameters per element for K = {bins} bins, got {count}"
        )
    scalar = x.dim() == 0  # one element and no feature dimension: a single feature, squeezed back at the end
    if scalar:
        x, params = x.unsqueeze(0), params.unsqueeze(-2)
    x, (params,) = _broadcast_elements(x, params)
    knot_params, derivative_params = _elements_last(params, 2).split((2 * bins, count - 2 * bins), dim=1)
    y, log_derivative = _spline_elements_last(
        _elements_last(x, 1),
        knot_params.unflatten(1, (2, bins)),
        derivative_params,
        inverse,
        bound,
        min_bin_width,
        min_bin_height,
        min_derivative,
    )
    y = _batch_first(y, tuple(x.shape[:-1]))
    return y.squeeze(-1) if scalar else y, log_derivative.sum(dim=0).reshape(x.shape[:-1])
