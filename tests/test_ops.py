"""The reference ops (the specification of every backend) and the backend seam.

float64 `gradcheck` of the spline and of every affine scale parameterisation, closed forms for the
spline's edge cases (identity at zero parameters, linear tails, values at knots and far outside), and
the dispatch rules of `set_backend` / `use_backend`.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from flows import ops
from flows.ops.affine_reference import SCALE_FUNCTIONS, affine_reference, log_scale_from_raw
from flows.ops.spline_reference import (
    rational_quadratic_spline_packed_reference,
    rational_quadratic_spline_reference,
    spline_knots,
)

BOUND = 3.0


def _spline_params(shape: tuple[int, ...], bins: int, seed: int = 0, scale: float = 1.0) -> list[Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [
        scale * torch.randn(shape + (size,), generator=generator, dtype=torch.float64)
        for size in (bins, bins, bins + 1)
    ]


@pytest.mark.parametrize("inverse", [False, True], ids=["forward", "inverse"])
def test_spline_gradcheck(inverse: bool) -> None:
    generator = torch.Generator().manual_seed(1)
    x = torch.empty(3, 4, dtype=torch.float64).uniform_(-4.0, 4.0, generator=generator)  # inside and tails
    inputs = [tensor.requires_grad_() for tensor in [x, *_spline_params((3, 4), 5)]]

    def spline(*tensors: Tensor) -> tuple[Tensor, Tensor]:
        return rational_quadratic_spline_reference(*tensors, inverse=inverse, bound=BOUND)

    assert torch.autograd.gradcheck(spline, inputs, fast_mode=True)


@pytest.mark.parametrize("inverse", [False, True], ids=["forward", "inverse"])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_spline_second_derivatives(inverse: bool, seed: int) -> None:
    """Hessians are exact too (score matching, Laplace approximations). The inverse takes Newton steps from a
    gradient-free root: one step gives the implicit first derivatives, the second step the second
    derivatives (with one step this fails)."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.empty(3, 2, dtype=torch.float64).uniform_(-2.9, 2.9, generator=generator)
    inputs = [tensor.requires_grad_() for tensor in [x, *_spline_params((3, 2), 4, seed=seed)]]

    def spline(*tensors: Tensor) -> tuple[Tensor, Tensor]:
        return rational_quadratic_spline_reference(*tensors, inverse=inverse, bound=BOUND)

    assert torch.autograd.gradgradcheck(spline, inputs)


@pytest.mark.parametrize("scale_function", SCALE_FUNCTIONS)
@pytest.mark.parametrize("inverse", [False, True], ids=["forward", "inverse"])
def test_affine_gradcheck(scale_function: str, inverse: bool) -> None:
    generator = torch.Generator().manual_seed(2)
    inputs = [torch.randn(3, 4, generator=generator, dtype=torch.float64).requires_grad_() for _ in range(3)]

    def affine(*tensors: Tensor) -> tuple[Tensor, Tensor]:
        return affine_reference(*tensors, inverse=inverse, scale_function=scale_function, scale_bound=2.0)

    assert torch.autograd.gradcheck(affine, inputs, fast_mode=True)


@pytest.mark.parametrize("scale_function", SCALE_FUNCTIONS)
def test_affine_closed_form(scale_function: str) -> None:
    """`y = x * s + t`, the inverse undoes it, and `ladj = sum log s` with `s = 1` at raw 0."""
    generator = torch.Generator().manual_seed(3)
    x, shift, raw = (torch.randn(5, 3, generator=generator, dtype=torch.float64) for _ in range(3))
    log_scale = log_scale_from_raw(raw, scale_function, 2.0)
    y, ladj = affine_reference(x, shift, raw, scale_function=scale_function, scale_bound=2.0)
    torch.testing.assert_close(y, x * log_scale.exp() + shift)
    torch.testing.assert_close(ladj, log_scale.sum(-1))
    x_back, ladj_back = affine_reference(
        y, shift, raw, inverse=True, scale_function=scale_function, scale_bound=2.0
    )
    torch.testing.assert_close(x_back, x)
    torch.testing.assert_close(ladj_back, -ladj)
    zero = log_scale_from_raw(torch.zeros(3, dtype=torch.float64), scale_function, 2.0)
    torch.testing.assert_close(zero, torch.zeros(3, dtype=torch.float64), atol=1e-12, rtol=0)


def test_spline_log_derivative_matches_autograd() -> None:
    """With one feature per row `exp(ladj)` is dy/dx; in both directions, inside and in the tails."""
    generator = torch.Generator().manual_seed(4)
    x = torch.empty(40, 1, dtype=torch.float64).uniform_(-5.0, 5.0, generator=generator).requires_grad_()
    params = _spline_params((40, 1), 8, seed=4, scale=2.0)
    for inverse in (False, True):
        y, ladj = rational_quadratic_spline_reference(x, *params, inverse=inverse, bound=BOUND)
        (derivative,) = torch.autograd.grad(y.sum(), x)
        torch.testing.assert_close(ladj, derivative.squeeze(-1).log())


def test_spline_identity_at_zero_parameters() -> None:
    x = torch.linspace(-10.0, 10.0, 41, dtype=torch.float64).reshape(-1, 1)
    zeros = [torch.zeros(41, 1, size, dtype=torch.float64) for size in (6, 6, 7)]
    for inverse in (False, True):
        y, ladj = rational_quadratic_spline_reference(x, *zeros, inverse=inverse, bound=BOUND)
        torch.testing.assert_close(y, x, atol=1e-9, rtol=0)
        torch.testing.assert_close(ladj, torch.zeros(41, dtype=torch.float64), atol=1e-9, rtol=0)


def test_spline_linear_tails_and_far_values() -> None:
    """Outside the bound the map is linear with the boundary derivatives as slopes, even at 1e6."""
    x = torch.tensor([[-1e6, -7.0, 3.5, 1e6]], dtype=torch.float64).requires_grad_()
    widths, heights, derivatives = [tensor.requires_grad_() for tensor in _spline_params((1, 4), 5, seed=5)]
    _, _, slopes = spline_knots(widths, heights, derivatives, BOUND, 1e-3, 1e-3, 1e-3)
    slope = torch.where(x < 0, slopes[..., 0], slopes[..., -1])
    edge = torch.where(x < 0, -BOUND, BOUND)
    y, ladj = rational_quadratic_spline_reference(x, widths, heights, derivatives, bound=BOUND)
    torch.testing.assert_close(y, edge + (x - edge) * slope)
    torch.testing.assert_close(ladj, slope.log().sum(-1))
    x_back, _ = rational_quadratic_spline_reference(
        y, widths, heights, derivatives, inverse=True, bound=BOUND
    )
    torch.testing.assert_close(x_back, x)
    (y.sum() + ladj.sum()).backward()
    for tensor in (x, widths, heights, derivatives):
        assert torch.isfinite(tensor.grad).all()
    torch.testing.assert_close(x.grad, slope.detach())


@pytest.mark.parametrize("inverse", [False, True], ids=["forward", "inverse"])
def test_spline_at_knots_bound_and_tiny_values(inverse: bool) -> None:
    """Knots, +-bound and 1e-12: finite values and gradients, and a round trip inside the bound."""
    widths, heights, derivatives = _spline_params((1, 1), 6, seed=6, scale=1.5)
    knot_x, knot_y, _ = spline_knots(widths, heights, derivatives, BOUND, 1e-3, 1e-3, 1e-3)
    knots = (knot_y if inverse else knot_x).reshape(-1)
    points = torch.cat([knots, torch.tensor([1e-12, -1e-12, 0.0], dtype=torch.float64)]).reshape(-1, 1)
    params = [
        tensor.expand(points.shape[0], 1, -1).clone().requires_grad_()
        for tensor in (widths, heights, derivatives)
    ]
    points.requires_grad_()
    y, ladj = rational_quadratic_spline_reference(points, *params, inverse=inverse, bound=BOUND)
    assert torch.isfinite(y).all() and torch.isfinite(ladj).all()
    (y.sum() + ladj.sum()).backward()
    for tensor in (points, *params):
        assert torch.isfinite(tensor.grad).all()
    back, ladj_back = rational_quadratic_spline_reference(y, *params, inverse=not inverse, bound=BOUND)
    torch.testing.assert_close(back, points, atol=1e-10, rtol=0)
    torch.testing.assert_close(ladj_back, -ladj, atol=1e-8, rtol=0)
    if not inverse:  # knots map to knots
        torch.testing.assert_close(y.detach().reshape(-1)[:7], knot_y.reshape(-1))


def test_spline_is_monotonic_and_maps_the_bound_onto_itself() -> None:
    x = torch.linspace(-4.0, 4.0, 801, dtype=torch.float64).reshape(-1, 1)
    params = [tensor.expand(801, 1, -1) for tensor in _spline_params((1, 1), 16, seed=7, scale=2.0)]
    y, _ = rational_quadratic_spline_reference(x, *params, bound=BOUND)
    assert (y.diff(dim=0) > 0).all()
    ends, _ = rational_quadratic_spline_reference(
        torch.tensor([[-BOUND], [BOUND]], dtype=torch.float64), *[p[:2] for p in params], bound=BOUND
    )
    torch.testing.assert_close(ends.reshape(-1), torch.tensor([-BOUND, BOUND], dtype=torch.float64))


def test_spline_knots_equal_the_cumulative_bin_sizes_and_survive_inference_mode() -> None:
    """The knots come from cached affine constants: they equal -bound + 2 bound cumsum(bin sizes) with the
    ends exact, and constants first built under `torch.inference_mode` still serve a later backward pass."""
    bins, bound, minimum = 6, 2.5, 0.01
    raw = torch.randn(4, 3, bins, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        spline_knots(raw.float(), raw.float(), torch.zeros(4, 3, bins + 1), bound, minimum, minimum, 1e-3)
    sizes = minimum + (1.0 - minimum * bins) * torch.softmax(raw, dim=-1)
    expected = torch.cat(
        [torch.full((4, 3, 1), -bound, dtype=torch.float64), -bound + 2.0 * bound * sizes.cumsum(-1)], -1
    )
    knot_x, knot_y, _ = spline_knots(
        raw, raw, torch.zeros(4, 3, bins + 1, dtype=torch.float64), bound, minimum, minimum, 1e-3
    )
    torch.testing.assert_close(knot_x, expected, rtol=0.0, atol=1e-12)
    assert (knot_y[..., 0] == -bound).all() and (knot_y[..., -1] == bound).all()
    raw32 = raw.float().requires_grad_()
    widths_knots = spline_knots(raw32, raw32, torch.zeros(4, 3, bins + 1), bound, minimum, minimum, 1e-3)[0]
    (widths_knots * torch.arange(bins + 1.0)).sum().backward()  # the constant cached under inference mode
    assert raw32.grad is not None and torch.isfinite(raw32.grad).all() and raw32.grad.abs().sum() > 0


def test_spline_knots_keep_the_input_shape_and_float32_under_autocast() -> None:
    """`(..., K) -> (..., K + 1)` for any batch shape, a 1-D input included; under autocast the knots stay in
    float32 (the matrix product of the cumulative sums would otherwise be rounded to bfloat16, which moves the
    knots of narrow bins by ~1e-2)."""
    generator = torch.Generator().manual_seed(5)
    for batch in [(), (3,), (2, 3)]:
        raw = torch.randn(batch + (8,), generator=generator)
        knot_x, knot_y, derivatives = spline_knots(raw, raw, torch.zeros(batch + (9,)), 5.0, 1e-3, 1e-3, 1e-3)
        assert knot_x.shape == knot_y.shape == derivatives.shape == batch + (9,)
    raw = 4.0 * torch.randn(64, 16, generator=generator)
    expected, _, _ = spline_knots(raw, raw, torch.zeros(64, 17), 5.0, 1e-3, 1e-3, 1e-3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got, _, _ = spline_knots(raw, raw, torch.zeros(64, 17), 5.0, 1e-3, 1e-3, 1e-3)
        x = torch.rand(64, 3, generator=generator) * 8.0 - 4.0
        params = 4.0 * torch.randn(64, 3, 3 * 16 + 1, generator=generator)
        y, ladj = rational_quadratic_spline_packed_reference(x, params, 16, bound=5.0)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, expected, rtol=0.0, atol=1e-5)
    y_plain, ladj_plain = rational_quadratic_spline_packed_reference(x, params, 16, bound=5.0)
    torch.testing.assert_close(y, y_plain, rtol=0.0, atol=1e-5)
    torch.testing.assert_close(ladj, ladj_plain, rtol=1e-5, atol=1e-5)


def test_spline_rejects_bad_parameters() -> None:
    x = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="K \\+ 1 derivatives"):
        rational_quadratic_spline_reference(
            x, torch.zeros(2, 3, 4), torch.zeros(2, 3, 4), torch.zeros(2, 3, 4)
        )
    with pytest.raises(ValueError, match="min_bin_width"):
        rational_quadratic_spline_reference(
            x, torch.zeros(2, 3, 4), torch.zeros(2, 3, 4), torch.zeros(2, 3, 5), min_bin_width=0.3
        )


@pytest.mark.parametrize("tails", ["linear", "identity"])
@pytest.mark.parametrize("inverse", [False, True], ids=["forward", "inverse"])
@pytest.mark.parametrize("batch", [(), (5,), (2, 3), (0,)], ids=["no-batch", "rows", "grid", "empty"])
def test_packed_spline_equals_the_three_tensor_spline(
    tails: str, inverse: bool, batch: tuple[int, ...]
) -> None:
    """One parameter tensor per element (as a conditioner returns it; identity tails leave out the two
    boundary derivatives) gives the values and gradients of the three-tensor spline, also when the
    parameters are not contiguous."""
    bins, features = 5, 3
    count = 3 * bins + 1 if tails == "linear" else 3 * bins - 1
    generator = torch.Generator().manual_seed(11)
    x = torch.empty(batch + (features,), dtype=torch.float64).uniform_(-4.0, 4.0, generator=generator)
    # built transposed: a view whose last dimension is not contiguous
    params = torch.randn(batch + (count, features), generator=generator, dtype=torch.float64).transpose(
        -1, -2
    )
    weights = torch.randn(batch + (features,), generator=generator, dtype=torch.float64)

    def outputs(packed: bool) -> list[Tensor]:
        inputs = [x.clone().requires_grad_(), params.clone().requires_grad_()]
        options = {"inverse": inverse, "bound": BOUND, "min_bin_width": 0.02, "min_bin_height": 0.05}
        if packed:
            y, ladj = rational_quadratic_spline_packed_reference(*inputs, bins, **options)
        else:
            widths, heights, derivatives = inputs[1].split((bins, bins, count - 2 * bins), dim=-1)
            if tails == "identity":
                derivatives = torch.nn.functional.pad(derivatives, (1, 1))
            y, ladj = rational_quadratic_spline_reference(inputs[0], widths, heights, derivatives, **options)
        assert y.shape == x.shape and ladj.shape == x.shape[:-1]
        gradients = torch.autograd.grad((weights * y).sum() + ladj.sum(), inputs, allow_unused=True)
        return [y, ladj, *(torch.zeros(()) if g is None else g for g in gradients)]

    for packed, separate in zip(outputs(True), outputs(False)):
        torch.testing.assert_close(packed, separate, rtol=1e-12, atol=1e-12)
    if tails == "identity" and batch == (5,):  # far outside the bound the identity tails are the identity
        far = torch.full((5, features), 40.0, dtype=torch.float64)
        y, ladj = rational_quadratic_spline_packed_reference(far, params, bins, bound=BOUND)
        torch.testing.assert_close(y, far)
        torch.testing.assert_close(ladj, torch.zeros(5, dtype=torch.float64))


def test_spline_with_different_minimum_widths_and_heights_passes_through_its_knots() -> None:
    """Widths and heights share one knot computation with a map per minimum bin size: at each knot x
    (computed separately by `spline_knots`) the spline is the knot y with the knot's derivative, and the
    bins respect their own minimum sizes."""
    bins, min_width, min_height = 4, 0.1, 0.02
    widths, heights, derivatives = _spline_params((3, 2), bins, seed=5, scale=3.0)
    knot_x, knot_y, knot_derivatives = spline_knots(
        widths, heights, derivatives, BOUND, min_width, min_height, 1e-3
    )
    assert (knot_x.diff(dim=-1) >= 2 * BOUND * min_width - 1e-12).all()
    assert (knot_y.diff(dim=-1) >= 2 * BOUND * min_height - 1e-12).all()
    assert (knot_y.diff(dim=-1) < 2 * BOUND * min_width).any()  # the heights' own, smaller minimum is used
    at_knots = [tensor.unsqueeze(-2).expand(3, 2, bins + 1, -1) for tensor in (widths, heights, derivatives)]
    x = knot_x.clone().requires_grad_()
    y, _ = rational_quadratic_spline_reference(
        x, *at_knots, bound=BOUND, min_bin_width=min_width, min_bin_height=min_height
    )
    torch.testing.assert_close(y, knot_y, rtol=0.0, atol=1e-12)
    (slopes,) = torch.autograd.grad(y.sum(), x)
    torch.testing.assert_close(slopes, knot_derivatives, rtol=1e-9, atol=1e-12)


def test_spline_rejects_mismatched_shapes_and_parameter_counts() -> None:
    x = torch.zeros(2, 3)
    with pytest.raises(
        ValueError, match=r"must have shape x.shape \+ \(P,\) = \(2, 3\) \+ \(P,\) or broadcast"
    ):
        rational_quadratic_spline_reference(
            x, torch.zeros(3, 3, 4), torch.zeros(2, 3, 4), torch.zeros(2, 3, 5)
        )
    with pytest.raises(ValueError, match=r"3K \+ 1 \(linear tails\) or 3K - 1 \(identity tails\) = 13 or 11"):
        rational_quadratic_spline_packed_reference(x, torch.zeros(2, 3, 12), 4)
    with pytest.raises(ValueError, match=r"got \[\(3, 2, 13\)\]"):
        rational_quadratic_spline_packed_reference(x, torch.zeros(3, 2, 13), 4)


def test_spline_broadcasts_shared_parameters_and_takes_a_scalar_input() -> None:
    """Parameters shared across the batch (and an input shared across parameter sets) broadcast like the fused
    kernels do, with the results of the expanded tensors; a 0-d input is one element without a feature dimension."""
    bins = 4
    generator = torch.Generator().manual_seed(13)
    params = torch.randn(1, 3, 3 * bins + 1, generator=generator, dtype=torch.float64)
    x = torch.randn(5, 3, generator=generator, dtype=torch.float64)
    shared = rational_quadratic_spline_packed_reference(x, params, bins, bound=BOUND)
    expanded = rational_quadratic_spline_packed_reference(x, params.expand(5, 3, -1), bins, bound=BOUND)
    for a, b in zip(shared, expanded):
        torch.testing.assert_close(a, b, rtol=0.0, atol=0.0)
    one_input = rational_quadratic_spline_packed_reference(x[0], params.expand(5, 3, -1), bins, bound=BOUND)
    torch.testing.assert_close(
        one_input[0],
        rational_quadratic_spline_packed_reference(x[:1].expand(5, 3), params, bins, bound=BOUND)[0],
    )
    y, ladj = rational_quadratic_spline_packed_reference(x[0, 0], params[0, 0], bins, bound=BOUND)
    y1, ladj1 = rational_quadratic_spline_packed_reference(x[0, :1], params[0, :1], bins, bound=BOUND)
    assert y.shape == () and ladj.shape == ()
    torch.testing.assert_close((y, ladj), (y1[0], ladj1))
    widths, heights, derivatives = params[0, 0].split((bins, bins, bins + 1))
    torch.testing.assert_close(
        rational_quadratic_spline_reference(x[0, 0], widths, heights, derivatives, bound=BOUND), (y, ladj)
    )


@pytest.mark.parametrize("tails", ["linear", "identity"])
@pytest.mark.parametrize("inverse", [False, True], ids=["forward", "inverse"])
def test_spline_gradients_at_infinite_inputs_are_the_tail_slopes(tails: str, inverse: bool) -> None:
    """The spline branch never sees an infinite input: the gradients wrt x are finite, d(y + ladj)/dx of a far
    (finite) input is the tail's slope (1 for the identity tails), and the parameters get finite gradients
    (with linear tails, except the slope of an infinite input's tail: 0 * inf there)."""
    bins = 4
    count = 3 * bins + 1 if tails == "linear" else 3 * bins - 1
    generator = torch.Generator().manual_seed(17)
    params = torch.randn(2, 2, count, generator=generator, dtype=torch.float64).requires_grad_()
    x = torch.tensor([[math.inf, 0.5], [-math.inf, 1e20]], dtype=torch.float64, requires_grad=True)
    y, ladj = rational_quadratic_spline_packed_reference(x, params, bins, inverse=inverse, bound=BOUND)
    grad_x, grad_params = torch.autograd.grad(y[torch.isfinite(y)].sum() + ladj.sum(), (x, params))
    assert torch.isfinite(grad_x).all()
    finite_inputs = torch.isfinite(x.detach())
    assert torch.isfinite(grad_params[finite_inputs]).all()
    assert torch.isfinite(grad_params[~finite_inputs][:, : 2 * bins]).all()  # no NaN from the spline branch
    if tails == "identity":
        assert torch.isfinite(grad_params).all()
        torch.testing.assert_close(grad_x[:, 0], torch.zeros(2, dtype=torch.float64))  # y = +-inf is left out
        assert grad_x[1, 1] == 1.0
    else:
        _, _, knot_derivatives = spline_knots(
            *params.detach().split((bins, bins, bins + 1), -1), BOUND, 1e-3, 1e-3, 1e-3
        )
        slope = knot_derivatives[1, 1, -1]
        torch.testing.assert_close(grad_x[1, 1], 1.0 / slope if inverse else slope)


@pytest.fixture()
def restore_backend() -> None:
    previous = ops.get_backend()
    yield
    ops.set_backend(previous)


def test_set_and_use_backend(restore_backend: None) -> None:
    assert ops.get_backend() == "auto"
    ops.set_backend("reference")
    assert ops.get_backend() == "reference"
    with ops.use_backend("auto"):
        assert ops.get_backend() == "auto"
    assert ops.get_backend() == "reference"
    with pytest.raises(RuntimeError), ops.use_backend("auto"):
        raise RuntimeError("the previous backend comes back after an error")
    assert ops.get_backend() == "reference"


@pytest.mark.parametrize("name", ["cuda", "Triton", "", "compiled"])
def test_invalid_backend_names(name: str, restore_backend: None) -> None:
    with pytest.raises(ValueError, match="backend must be one of"):
        ops.set_backend(name)
    with pytest.raises(ValueError, match="backend must be one of"), ops.use_backend(name):
        pass
    assert ops.get_backend() == "auto"


def test_auto_on_cpu_uses_the_reference(restore_backend: None) -> None:
    x = torch.randn(4, 3)
    params = [tensor.float() for tensor in _spline_params((4, 3), 4)]
    for backend in ("auto", "reference"):
        ops.set_backend(backend)
        assert ops._select("affine", x, affine_reference) is affine_reference
        for ours, theirs in zip(
            ops.rational_quadratic_spline(x, *params), rational_quadratic_spline_reference(x, *params)
        ):
            assert torch.equal(ours, theirs)
        for ours, theirs in zip(ops.affine(x, x, x), affine_reference(x, x, x)):
            assert torch.equal(ours, theirs)


def test_triton_backend_without_triton_is_a_clear_error(
    restore_backend: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ops, "_triton_ops", lambda: None)  # as if Triton were not installed
    x = torch.randn(2, 3)
    with ops.use_backend("triton"), pytest.raises(RuntimeError, match="Triton is not installed"):
        ops.affine(x, x, x)
    # "auto" quietly keeps the reference, on any device.
    assert ops._select("affine", x, affine_reference) is affine_reference


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_auto_on_cuda_uses_triton_in_eager_and_the_reference_when_compiled(restore_backend: None) -> None:
    pytest.importorskip("triton")
    from flows.ops import triton_ops

    x = torch.randn(8, 3, device="cuda")
    assert ops._select("affine", x, affine_reference) is triton_ops.affine
    assert ops._select("affine", x.double(), affine_reference) is affine_reference
    compiled = torch.compile(lambda x: ops.affine(x, x, x), fullgraph=True)
    for ours, theirs in zip(compiled(x), affine_reference(x, x, x)):
        torch.testing.assert_close(ours, theirs)
    assert math.isfinite(float(compiled(x)[1].sum()))


def test_seam_compiles_without_graph_breaks(restore_backend: None) -> None:
    """The dispatch itself must not break `torch.compile(fullgraph=True)` graphs of the layers."""
    x = torch.randn(4, 3)
    params = [tensor.float() for tensor in _spline_params((4, 3), 4)]

    def both(x: Tensor) -> tuple[Tensor, Tensor]:
        y, ladj = ops.rational_quadratic_spline(x, *params)
        z, ladj_affine = ops.affine(y, x, x, scale_function="softplus")
        return z, ladj + ladj_affine

    compiled = torch.compile(both, fullgraph=True, backend="eager")
    for ours, theirs in zip(compiled(x), both(x)):
        torch.testing.assert_close(ours, theirs)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("inverse", [False, True])
def test_spline_gradient_at_the_bound_and_knots_equals_the_reported_jacobian(
    inverse: bool, dtype: torch.dtype
) -> None:
    # At y = +-bound and at knots rounding may put the bin coordinate just outside [0, 1]; the clamp must
    # not zero the derivative there (with a plain clamp, dx/dy was 0 at about 1 in 30 such points), and the
    # inverse's derivative must be the implicit one (the closed-form root's autograd was 10% off in float32).
    # float32 keeps 1e-2: at a flat bin end one ulp of y moves xi enough to change dy/dx by ~0.5%.
    mismatches = 0
    for seed in range(60):
        generator = torch.Generator().manual_seed(seed)
        widths, heights, derivatives = (
            2.0 * torch.randn(1, size, generator=generator, dtype=torch.float64).to(dtype)
            for size in (8, 8, 9)
        )
        knot_x, knot_y, _ = ops.spline_knots(widths, heights, derivatives, 3.0, 1e-3, 1e-3, 1e-3)
        points = (knot_y if inverse else knot_x).reshape(-1, 1).detach().clone().requires_grad_(True)
        params = [p.expand(points.shape[0], 1, -1) for p in (widths, heights, derivatives)]
        out, ladj = ops.rational_quadratic_spline(points, *params, inverse=inverse)
        (gradient,) = torch.autograd.grad(out.sum(), points)
        tolerance = (1e-2 if dtype == torch.float32 else 1e-9) * ladj.exp()
        mismatches += int(((gradient.reshape(-1) - ladj.exp()).abs() > tolerance).sum())
    assert mismatches == 0, f"{mismatches} knots where autograd disagrees with the reported Jacobian"


def test_spline_tails_give_the_knots_no_gradient_and_use_the_boundary_derivatives() -> None:
    """Outside the bound the map is `edge + (x - edge) * slope`: in float32, with steep boundary slopes and far
    inputs, widths and heights get exactly zero gradient (a branch-free formulation leaked rounding there,
    scaled by (x - bound) slope^2), and with a degenerate end bin (min_bin_width 0, its softmax weight
    underflowing, so a knot sits on the bound) the tails still take derivatives[0] and [-1]."""
    x = torch.tensor([[-1e4, -4.0, 4.0, 1e4]]).requires_grad_()
    widths = torch.randn(1, 4, 8, generator=torch.Generator().manual_seed(9)).requires_grad_()
    heights = torch.randn(1, 4, 8, generator=torch.Generator().manual_seed(10)).requires_grad_()
    derivatives = torch.full((1, 4, 9), 9.0).requires_grad_()  # boundary slopes of about 9
    y, ladj = rational_quadratic_spline_reference(x, widths, heights, derivatives, bound=BOUND)
    (y.sum() + ladj.sum()).backward()
    assert widths.grad is not None and heights.grad is not None
    assert torch.equal(widths.grad, torch.zeros_like(widths)) and torch.equal(
        heights.grad, torch.zeros_like(heights)
    )

    degenerate = torch.zeros(1, 1, 4, dtype=torch.float64)
    degenerate[..., 0] = -1e4  # the first bin's weight underflows to 0: knot 1 is exactly -bound
    raw_derivatives = torch.tensor([[[1.0, -2.0, 0.0, 0.0, 0.0]]], dtype=torch.float64)
    _, _, slopes = spline_knots(degenerate, degenerate, raw_derivatives, BOUND, 0.0, 0.0, 1e-3)
    below = torch.tensor([[-5.0]], dtype=torch.float64)
    y, ladj = rational_quadratic_spline_reference(
        below, degenerate, degenerate, raw_derivatives, bound=BOUND, min_bin_width=0.0, min_bin_height=0.0
    )
    torch.testing.assert_close(y, -BOUND + (below + BOUND) * slopes[..., 0])
    torch.testing.assert_close(ladj, slopes[..., 0].log().reshape(1))
