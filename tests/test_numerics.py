"""Numerical safety of the element-wise kernels and of deep flows.

- Property-based (hypothesis): for random spline / affine parameters and inputs (inside, at the bound, far
  outside), values, log-derivatives and gradients are finite in float32 and float64, the log-derivative
  matches autograd's dy/dx, and the inverse undoes the forward map.
- Edge cases: inputs exactly at the knots and at +-bound, the inverse at the knot heights.
- Deep flows (10+ layers) in float32: the round-trip error, measured and printed (`pytest -s`), bounded.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import Tensor

from flows.ops import affine, rational_quadratic_spline, spline_knots
from flows.presets import MAF, NSF, RealNVP
from flows.transformers import SPLINE_MINIMUM_FLOOR, Spline
from tests.helpers import randomize
from tests.registry import CASES

DTYPES = (torch.float32, torch.float64)
BOUND = 3.0
#: absolute tolerance of values compared at the knots
ROUND_TRIP = {torch.float32: 2e-3, torch.float64: 1e-9}

PROPERTY = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])

raw_parameter = st.floats(min_value=-12.0, max_value=12.0, allow_nan=False, allow_infinity=False)
inside = st.floats(min_value=-BOUND, max_value=BOUND, allow_nan=False)
anywhere = st.one_of(
    inside,
    st.floats(min_value=-1e4, max_value=1e4, allow_nan=False),
    st.sampled_from(
        [-BOUND, BOUND, 0.0, -1e8, 1e8, math.nextafter(BOUND, 4.0), math.nextafter(-BOUND, -4.0)]
    ),
)


def _spline_parameters(
    data: st.DataObject, bins: int, features: int, dtype: torch.dtype
) -> tuple[Tensor, Tensor, Tensor]:
    """Raw widths/heights `(features, bins)` and derivatives `(features, bins + 1)` drawn by hypothesis."""

    def draw(*shape: int) -> Tensor:
        values = data.draw(st.lists(raw_parameter, min_size=math.prod(shape), max_size=math.prod(shape)))
        return torch.tensor(values, dtype=dtype).reshape(shape)

    return draw(features, bins), draw(features, bins), draw(features, bins + 1)


def _finite(*tensors: Tensor) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in tensors)


@PROPERTY
@given(data=st.data(), bins=st.integers(2, 10), dtype=st.sampled_from(DTYPES))
def test_spline_is_finite_invertible_and_its_log_derivative_matches_autograd(
    data: st.DataObject, bins: int, dtype: torch.dtype
) -> None:
    features = 4
    widths, heights, derivatives = _spline_parameters(data, bins, features, dtype)
    x_values = data.draw(st.lists(anywhere, min_size=features, max_size=features))
    x = torch.tensor(x_values, dtype=dtype).requires_grad_(True)
    params = [p.requires_grad_(True) for p in (widths, heights, derivatives)]

    y, ladj = rational_quadratic_spline(x, *params, bound=BOUND)
    assert _finite(y, ladj)
    gradients = torch.autograd.grad(y.sum() + ladj, [x, *params])
    assert _finite(*gradients)

    # The summed log-derivative equals log dy_i/dx_i from autograd (the map is element-wise).
    x64 = x.detach().double().requires_grad_(True)
    params64 = [p.detach().double() for p in params]
    y64, ladj64 = rational_quadratic_spline(x64, *params64, bound=BOUND)
    (dy_dx,) = torch.autograd.grad(y64.sum(), x64)
    assert torch.allclose(ladj64, dy_dx.log().sum(), rtol=1e-6, atol=1e-6)

    # Inverse: finite, with finite gradients, and it undoes the forward map.
    x_back, ladj_back = rational_quadratic_spline(y.detach(), *params, inverse=True, bound=BOUND)
    assert _finite(x_back, ladj_back)
    assert _finite(*torch.autograd.grad(x_back.sum() + ladj_back, params))
    # The round trip is as accurate as the conditioning allows: a rounding error of y (relative eps) moves
    # x by eps * |y| / (dy/dx); flat bins (slopes down to ~1e-3) amplify it up to ~1e3 times.
    eps = torch.finfo(dtype).eps
    y64_abs = y64.detach().abs().clamp_min(1.0)
    tolerance = 256 * eps * (y64_abs / dy_dx + x64.detach().abs().clamp_min(1.0))
    error = (x_back.detach().double() - x64.detach()).abs()
    assert bool((error <= tolerance).all()), (x, x_back, tolerance)


@PROPERTY
@given(data=st.data(), dtype=st.sampled_from(DTYPES))
def test_spline_inverse_is_finite_for_any_finite_output(data: st.DataObject, dtype: torch.dtype) -> None:
    # Not only outputs of the forward map: any finite y, including the knot heights and +-bound.
    widths, heights, derivatives = _spline_parameters(data, 5, 3, dtype)
    knot_y = spline_knots(widths, heights, derivatives, BOUND, 1e-3, 1e-3, 1e-3)[1]
    y = torch.tensor(data.draw(st.lists(anywhere, min_size=3, max_size=3)), dtype=dtype)
    y = torch.where(torch.tensor(data.draw(st.lists(st.booleans(), min_size=3, max_size=3))), knot_y[:, 2], y)
    y.requires_grad_(True)
    x, ladj = rational_quadratic_spline(y, widths, heights, derivatives, inverse=True, bound=BOUND)
    assert _finite(x, ladj, *torch.autograd.grad(x.sum() + ladj, y))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("inverse", [False, True])
def test_spline_at_every_knot_and_at_the_bound_has_finite_values_and_gradients(
    dtype: torch.dtype, inverse: bool
) -> None:
    generator = torch.Generator().manual_seed(0)
    bins, features = 8, 6
    widths = 3.0 * torch.randn(features, bins, generator=generator, dtype=dtype)
    heights = 3.0 * torch.randn(features, bins, generator=generator, dtype=dtype)
    derivatives = 3.0 * torch.randn(features, bins + 1, generator=generator, dtype=dtype)
    knot_x, knot_y, _ = spline_knots(widths, heights, derivatives, BOUND, 1e-3, 1e-3, 1e-3)
    knots = (knot_y if inverse else knot_x).T.contiguous()  # (bins + 1, features): row k = knot k per feature
    tiny = torch.finfo(dtype).eps * BOUND
    points = torch.cat(
        [knots, knots + tiny, knots - tiny, torch.full((2, features), BOUND) * torch.tensor([[1.0], [-1.0]])]
    )
    points = points.to(dtype).requires_grad_(True)
    rows = points.shape[0]
    out, ladj = rational_quadratic_spline(
        points,
        *(p.expand(rows, -1, -1) for p in (widths, heights, derivatives)),
        inverse=inverse,
        bound=BOUND,
    )
    assert _finite(out, ladj)
    assert _finite(*torch.autograd.grad(out.sum() + ladj.sum(), points))
    # Knots map to knots: x_k <-> y_k (the spline interpolates its knots).
    target = (knot_x if inverse else knot_y).T
    assert torch.allclose(out[: bins + 1], target, atol=ROUND_TRIP[dtype] * 10)


@pytest.mark.parametrize("dtype", DTYPES)
def test_spline_far_outside_the_bound_is_the_linear_tail(dtype: torch.dtype) -> None:
    # x (rows 2, features 2); parameters (2, 2, bins 4) with tail slopes softplus-mapped from +2 and -1.
    widths, heights = torch.zeros(2, 2, 4, dtype=dtype), torch.zeros(2, 2, 4, dtype=dtype)
    derivatives = torch.tensor([[[2.0, 0, 0, 0, -1.0]] * 2] * 2, dtype=dtype)
    knots_derivatives = spline_knots(widths, heights, derivatives, BOUND, 1e-3, 1e-3, 1e-3)[2]
    left, right = knots_derivatives[0, 0, 0], knots_derivatives[0, 0, -1]
    x = torch.tensor([[-1e30, 1e30], [-1e6, 1e6]], dtype=dtype)
    y, ladj = rational_quadratic_spline(x, widths, heights, derivatives, bound=BOUND)
    expected = torch.stack([-BOUND + (x[:, 0] + BOUND) * left, BOUND + (x[:, 1] - BOUND) * right], dim=-1)
    assert _finite(y, ladj)
    assert torch.allclose(y, expected, rtol=1e-5)
    assert torch.allclose(ladj, (left.log() + right.log()).expand(2))


@pytest.mark.parametrize("dtype", DTYPES)
def test_inverse_gradients_in_the_tail_with_a_tiny_boundary_derivative_are_finite(dtype: torch.dtype) -> None:
    # Regression: for outputs just above the bound the unused spline branch is evaluated at y = bound,
    # where rounding made the discriminant slightly negative; clamped to 0, sqrt's infinite gradient
    # times the zero gradient of the unselected branch gave NaN parameter gradients (float32).
    generator = torch.Generator().manual_seed(0)
    for bins in (2, 3, 5, 8):
        widths = 4.0 * torch.randn(256, bins, generator=generator, dtype=dtype)
        heights = 4.0 * torch.randn(256, bins, generator=generator, dtype=dtype)
        derivatives = 4.0 * torch.randn(256, bins + 1, generator=generator, dtype=dtype)
        derivatives[:, -1] = -20.0  # right boundary slope ~ min_derivative
        y = BOUND + 0.1 * torch.rand(256, generator=generator, dtype=dtype)
        params = [p.requires_grad_(True) for p in (widths, heights, derivatives)]
        x, ladj = rational_quadratic_spline(
            y[:, None], *(p[:, None] for p in params), inverse=True, bound=BOUND
        )
        assert _finite(x, ladj, *torch.autograd.grad(x.sum() + ladj.sum(), params))


def test_inverse_uses_the_cancellation_free_root_when_b_is_negative() -> None:
    # A flat first bin (height ~ 6e-3 over width 3) ending in a steep knot (derivative ~ 12.5): near the top
    # of the bin b = h (2 s - d_{k+1}) < 0, where 2c / (-b - sqrt(D)) subtracts nearly equal numbers. The
    # float32 inverse must match the float64 inverse of the same float32 outputs (it was 5.5e-4 off).
    widths, heights = torch.tensor([[0.0, 0.0]]), torch.tensor([[-8.0, 0.0]])
    derivatives = torch.tensor([[0.0, 12.0, 0.0]])
    knot_y = spline_knots(widths, heights, derivatives, BOUND, 1e-3, 1e-3, 1e-3)[1].double()
    y = (
        knot_y[0, 0] + torch.linspace(0.05, 0.999, 50, dtype=torch.float64) * (knot_y[0, 1] - knot_y[0, 0])
    ).float()

    def inverse(values: Tensor, dtype: torch.dtype) -> Tensor:
        params = (p.to(dtype).expand(values.shape[0], 1, -1) for p in (widths, heights, derivatives))
        return rational_quadratic_spline(values.to(dtype)[:, None], *params, inverse=True, bound=BOUND)[0]

    error = (inverse(y, torch.float32).double() - inverse(y, torch.float64)).abs().max()
    assert float(error) < 2e-5


def test_inverse_tail_gradients_with_huge_raw_parameters_are_finite() -> None:
    # Regression (found through the IAF case above, inputs x1000): conditioner outputs of ~1e5 saturate the
    # softmax and softplus; for outputs far in the tail the unused spline branch at y = bound divided by
    # -b - sqrt(D) = 0 (cancellation with b < 0), and its zero gradient became NaN.
    widths = torch.tensor([[598682.75, -356572.91, -321866.81, 604053.12]])
    heights = torch.tensor([[260939.67, -276019.34, 621961.69, 589184.94]])
    derivatives = torch.tensor([[222756.23, -719554.62, 8272.77, -324249.25, 337389.59]])
    y = torch.tensor([2430.18], requires_grad=True)
    params = [p.clone().requires_grad_(True) for p in (widths, heights, derivatives)]
    x, ladj = rational_quadratic_spline(y, *params, inverse=True, bound=BOUND)
    assert _finite(x, ladj, *torch.autograd.grad(x.sum() + ladj.sum(), [y, *params]))


@pytest.mark.parametrize("name", ["min_bin_width", "min_bin_height", "min_derivative"])
def test_spline_refuses_minimums_below_the_float32_floor(name: str) -> None:
    for value in (0.0, 1e-7, -1e-3):
        with pytest.raises(ValueError, match=rf"{name} must be in \[1e-06, .*float32.*got {value}"):
            Spline(**{name: value})
    assert getattr(Spline(**{name: SPLINE_MINIMUM_FLOOR}), name) == SPLINE_MINIMUM_FLOOR


@pytest.mark.parametrize(("bins", "bound", "tails"), [(8, 3.0, "linear"), (64, 100.0, "identity")])
def test_spline_at_the_minimum_floor_is_finite_for_extreme_parameters(
    bins: int, bound: float, tails: str
) -> None:
    """At the smallest minimums a `Spline` takes, float32 values, log-derivatives and gradients stay finite,
    forward and inverse, for raw parameters in the hundreds (softmax weights and softplus slopes that underflow),
    at the knots' extremes, at the bound and far outside it."""
    floor = SPLINE_MINIMUM_FLOOR
    spline = Spline(
        bins=bins, bound=bound, tails=tails, min_bin_width=floor, min_bin_height=floor, min_derivative=floor
    )
    generator = torch.Generator().manual_seed(bins)
    inputs = torch.cat(
        [torch.linspace(-bound, bound, 41), torch.tensor([-1e4, -bound * 1.01, bound * 1.01, 1e4])]
    )
    for _ in range(40):
        raw = 300.0 * torch.randn(1, 1, spline.num_params, generator=generator)
        params = raw.expand(inputs.shape[0], 1, -1).clone().requires_grad_(True)
        x = inputs[:, None].clone().requires_grad_(True)
        for inverse in (False, True):
            y, ladj = spline(x, params, inverse=inverse)
            gradients = torch.autograd.grad(y.sum() + ladj.sum(), [x, params])
            assert _finite(y, ladj, *gradients), (inverse, raw)


@PROPERTY
@given(
    shift=st.floats(-1e3, 1e3),
    raw=st.floats(-1e4, 1e4),
    x=st.floats(-1e6, 1e6),
    scale_function=st.sampled_from(["tanh", "softplus", "sigmoid"]),
    dtype=st.sampled_from(DTYPES),
)
def test_bounded_affine_scales_are_finite_and_invertible(
    shift: float, raw: float, x: float, scale_function: str, dtype: torch.dtype
) -> None:
    if scale_function == "sigmoid":
        # Glow's sigmoid scale has no floor: below raw ~ -85 it underflows float32 and the inverse overflows.
        raw = max(raw, -80.0)
    x_t = torch.tensor([x], dtype=dtype, requires_grad=True)
    shift_t = torch.tensor([shift], dtype=dtype, requires_grad=True)
    raw_t = torch.tensor([raw], dtype=dtype, requires_grad=True)
    y, ladj = affine(x_t, shift_t, raw_t, scale_function=scale_function)
    assert _finite(y, ladj, *torch.autograd.grad(y.sum() + ladj.sum(), [x_t, shift_t, raw_t]))
    back, ladj_back = affine(y.detach(), shift_t, raw_t, inverse=True, scale_function=scale_function)
    assert _finite(back, ladj_back)
    # x = (y - shift) / s: rounding errors of y and shift (relative eps, and absolute `tiny` where y is
    # subnormal) reach x divided by the scale s.
    scale = math.exp(float(ladj.detach()))
    info = torch.finfo(dtype)
    tolerance = (
        8 * info.eps * (abs(x) + (abs(float(y.detach())) + abs(shift)) / scale) + 8 * info.tiny / scale
    )
    assert abs(float(back.detach()) - float(x_t.detach())) <= tolerance
    assert float((ladj + ladj_back).detach()) == pytest.approx(0.0, abs=1e-6)


# ----------------------------------------------------------------------------------------------------------
# Whole bijectors: random parameters and inputs over every registered vector bijector

#: Bijectors of R^D. Left out: the `...+Logit` chains, whose middle space is the open interval (0, 1), which
#: float32 cannot resolve near its ends (sigmoid(x) rounds to exactly 1 for x > ~17, and logit(1) = inf).
#: |f(f^-1(y)) - y| / max(1, |y|)
BACKWARD_STABLE = {torch.float32: 1e-3, torch.float64: 1e-9}
#: maps through a bounded range (Sigmoid/Tanh + Logit, ColumnSupport pairs) saturate at the bound for large float32
#: inputs by nature; they are checked on their own ranges in tests/test_image_bijectors.py and test_column_support.py
BOUNDED_RANGE = ("Logit", "ColumnSupport")
VECTOR_CASES = [
    case for case in CASES if len(case.event_shape) == 1 and not any(k in case.id for k in BOUNDED_RANGE)
]


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    index=st.integers(0, len(VECTOR_CASES) - 1),
    seed=st.integers(0, 2**16),
    parameter_scale=st.sampled_from([0.0, 0.1, 0.5, 1.0]),
    input_scale=st.sampled_from([1e-3, 1.0, 10.0, 1e3]),
    dtype=st.sampled_from(DTYPES),
)
def test_registered_bijectors_are_finite_and_invertible_for_random_parameters_and_inputs(
    index: int, seed: int, parameter_scale: float, input_scale: float, dtype: torch.dtype
) -> None:
    case = VECTOR_CASES[index]
    torch.manual_seed(seed)
    bijector = randomize(case.build(), scale=parameter_scale, seed=seed).to(dtype)
    generator = torch.Generator().manual_seed(seed)
    x = input_scale * torch.randn((16, *case.event_shape), generator=generator, dtype=torch.float64).to(dtype)
    context = None
    if case.context_features:
        context = torch.randn(16, case.context_features, generator=generator, dtype=torch.float64).to(dtype)
    if case.needs_init:
        bijector.initialize(x, context)
    bijector.eval()
    x.requires_grad_(True)
    y, ladj = bijector(x, context)
    parameters = [p for p in bijector.parameters() if p.requires_grad]
    gradients = torch.autograd.grad(y.square().mean() + ladj.mean(), [x, *parameters], allow_unused=True)
    assert _finite(y, ladj, *(g for g in gradients if g is not None)), case.id
    x_back, ladj_back = bijector.inverse(y.detach(), context)
    assert _finite(x_back, ladj_back), case.id
    # Backward stability: the recovered x maps back onto y. (|x_back - x| itself can be large for a random
    # layer that is nearly flat somewhere, dy/dx ~ 1e-11: that is the conditioning, not the inverse.)
    with torch.no_grad():
        y_again, _ = bijector(x_back, context)
    scale = y.detach().abs().clamp_min(1.0)
    assert bool(((y_again - y.detach()).abs() <= BACKWARD_STABLE[dtype] * scale).all()), case.id


# ----------------------------------------------------------------------------------------------------------
# Deep flows in float32


DEEP_FLOWS = {
    "nsf-coupling-12": lambda: NSF(6, transforms=12, hidden_features=(32, 32), residual_blocks=1),
    "nsf-autoregressive-10": lambda: NSF(
        6, transforms=10, hidden_features=(32, 32), residual_blocks=0, autoregressive=True
    ),
    "maf-10": lambda: MAF(6, transforms=10, hidden_features=(32, 32)),
    "realnvp-16": lambda: RealNVP(6, transforms=16, hidden_features=(32, 32)),
}


def round_trip_errors(name: str, dtype: torch.dtype, seed: int = 0) -> dict[str, float]:
    """Max absolute / relative round-trip error `|x - inverse(forward(x))|` and the ladj mismatch of a deep flow.

    The flow's parameters get N(0, 0.05^2) noise so that no layer is the identity (larger noise makes 10+
    random layers nearly singular: ladj of -77 nats and float32 overflow at 0.2, unlike a trained flow);
    inputs are 2048 standard-normal rows scaled by 2 (so some lie outside the spline bound).
    """
    torch.manual_seed(seed)
    flow = randomize(DEEP_FLOWS[name](), scale=0.05, seed=seed).to(dtype).eval()
    x = 2.0 * torch.randn(2048, 6, generator=torch.Generator().manual_seed(seed + 1), dtype=dtype)
    with torch.no_grad():
        z, ladj = flow.transform(x)
        x_back, ladj_back = flow.transform.inverse(z)
    error = (x_back - x).abs()
    return {
        "max_abs": float(error.max()),
        "median_abs": float(error.median()),
        "max_rel": float((error / x.abs().clamp_min(1.0)).max()),
        "ladj_mismatch": float((ladj + ladj_back).abs().max()),
        "finite": bool(torch.isfinite(z).all() and torch.isfinite(ladj).all()),
    }


@pytest.mark.parametrize("name", list(DEEP_FLOWS))
def test_deep_float32_flows_round_trip(name: str) -> None:
    errors = round_trip_errors(name, torch.float32)
    reference = round_trip_errors(name, torch.float64)
    print(
        f"\nround trip {name} float32: max abs {errors['max_abs']:.2e}, median abs {errors['median_abs']:.2e}, "
        f"max rel {errors['max_rel']:.2e}, ladj mismatch {errors['ladj_mismatch']:.2e}; "
        f"float64: max abs {reference['max_abs']:.2e}"
    )
    assert errors["finite"] and reference["finite"]
    # float64 shows the maps are exact inverses; float32 keeps the error at the rounding level of 10+ layers.
    assert reference["max_abs"] < 1e-9
    assert errors["max_rel"] < 5e-3
    assert errors["ladj_mismatch"] < 1e-2
