"""The spline's analytic backend (closed-form backward in plain PyTorch) against the reference.

Values must be identical (the forward is the reference's code); first derivatives must match autograd
through the float64 reference, second derivatives must pass `gradgradcheck`, and `torch.func` transforms
must work, at knots, at and beyond the bound, with saturated parameters, broadcast parameters and
empty tensors.
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from flows import ops
from flows.ops.spline_analytic import rational_quadratic_spline_analytic
from flows.ops.spline_reference import rational_quadratic_spline_reference, spline_knots

BOUND = 3.0


def _inputs(
    shape: tuple[int, ...], bins: int, scale: float = 1.5, seed: int = 0, dtype=torch.float64
) -> list[Tensor]:
    """`x` inside and outside the bound (with +-bound, +-1e6, 0 and 1e-12), and raw parameters."""
    generator = torch.Generator().manual_seed(seed)
    x = 8.0 * torch.rand(shape, generator=generator, dtype=torch.float64) - 4.0
    special = torch.tensor([BOUND, -BOUND, 1e6, -1e6, 0.0, 1e-12], dtype=torch.float64)
    flat = x.reshape(-1)
    flat[: min(special.numel(), flat.numel())] = special[: flat.numel()]
    params = [
        scale * torch.randn(shape + (size,), generator=generator, dtype=torch.float64)
        for size in (bins, bins, bins + 1)
    ]
    return [t.to(dtype) for t in (x, *params)]


def _outputs_and_gradients(
    function, inputs: list[Tensor], inverse: bool, seed: int = 1, **options
) -> list[Tensor]:
    inputs = [t.detach().clone().requires_grad_() for t in inputs]
    y, ladj = function(*inputs, inverse=inverse, bound=BOUND, **options)
    generator = torch.Generator().manual_seed(seed)
    grad_y = torch.randn(y.shape, generator=generator, dtype=torch.float64).to(y.dtype)
    grad_ladj = torch.randn(ladj.shape, generator=generator, dtype=torch.float64).to(ladj.dtype)
    torch.autograd.backward((y, ladj), (grad_y, grad_ladj))
    return [y.detach(), ladj.detach()] + [t.grad for t in inputs]


NAMES = ["y", "ladj", "x", "widths", "heights", "derivatives"]


@pytest.mark.parametrize("bins", [2, 8, 16])
@pytest.mark.parametrize("inverse", [False, True], ids=["forward", "inverse"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_values_and_gradients_match_the_reference(bins: int, inverse: bool, dtype: torch.dtype) -> None:
    inputs = _inputs((7, 5), bins, dtype=dtype)
    if inverse:  # map the test points through the spline so that both directions see the same spread
        with torch.no_grad():
            inputs[0] = rational_quadratic_spline_reference(*inputs, bound=BOUND)[0]
    ours = _outputs_and_gradients(rational_quadratic_spline_analytic, inputs, inverse)
    same_precision = _outputs_and_gradients(rational_quadratic_spline_reference, inputs, inverse)
    exact = _outputs_and_gradients(rational_quadratic_spline_reference, [t.double() for t in inputs], inverse)
    for name, value, reference, exact_value in zip(NAMES, ours, same_precision, exact):
        assert value.dtype == dtype and torch.isfinite(value).all(), name
        if name in ("y", "ladj"):
            torch.testing.assert_close(value, reference, rtol=0, atol=0, msg=f"{name} differs")  # same code
        elif dtype == torch.float64:
            torch.testing.assert_close(
                value, exact_value, rtol=1e-10, atol=1e-10, msg=lambda m, n=name: f"{n}: {m}"
            )
        else:  # float32: as close to the float64 gradients as autograd through the float32 reference is
            error = (value.double() - exact_value).abs()
            reference_error = (reference.double() - exact_value).abs()
            allowed = 2.0 * reference_error.max() + 1e-5 * (1.0 + exact_value.abs().max())
            assert error.max() <= allowed, f"{name}: {error.max()} vs the reference's {reference_error.max()}"


@pytest.mark.parametrize("inverse", [False, True], ids=["forward", "inverse"])
def test_saturated_parameters_and_other_options(inverse: bool) -> None:
    inputs = _inputs((4, 6), 8, scale=5.0, seed=4)
    options = {"min_bin_width": 0.05, "min_bin_height": 0.02, "min_derivative": 0.1}
    for extra in ({}, options):
        ours = _outputs_and_gradients(rational_quadratic_spline_analytic, inputs, inverse, **extra)
        theirs = _outputs_and_gradients(rational_quadratic_spline_reference, inputs, inverse, **extra)
        for name, a, b in zip(NAMES, ours, theirs):
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9, msg=lambda m, n=name: f"{n}: {m}")


@pytest.mark.parametrize("inverse", [False, True], ids=["forward", "inverse"])
def test_inputs_on_knots_take_the_reference_bins(inverse: bool) -> None:
    """On a knot the bin choice is the reference's (the same search), so even one-sided gradients agree."""
    bins = 6
    _, widths, heights, derivatives = _inputs((12, 1), bins, seed=3)
    knot_x, knot_y, _ = spline_knots(widths, heights, derivatives, BOUND, 1e-3, 1e-3, 1e-3)
    knots = knot_y if inverse else knot_x
    x = knots[torch.arange(12), 0, torch.arange(12) % (bins + 1)].reshape(12, 1)
    inputs = [x, widths, heights, derivatives]
    ours = _outputs_and_gradients(rational_quadratic_spline_analytic, inputs, inverse)
    theirs = _outputs_and_gradients(rational_quadratic_spline_reference, inputs, inverse)
    for name, a, b in zip(NAMES, ours, theirs):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9, msg=lambda m, n=name: f"{n}: {m}")


@pytest.mark.parametrize("inverse", [False, True], ids=["forward", "inverse"])
def test_second_derivatives_are_exact(inverse: bool) -> None:
    inputs = [t.requires_grad_() for t in _inputs((3, 2), 4, scale=1.0, seed=6)]
    inputs[0] = (
        inputs[0].detach().clamp(-2.9, 2.9).requires_grad_()
    )  # finite differences across +-1e6 are moot
    assert torch.autograd.gradgradcheck(
        lambda *t: rational_quadratic_spline_analytic(*t, inverse=inverse, bound=BOUND), inputs
    )


def test_reference_inverse_has_exact_second_derivatives() -> None:
    """The reference's inverse takes two Newton steps from a gradient-free root: one gives the implicit
    first derivatives, the second makes the second derivatives exact (with one step this check fails)."""
    inputs = [t.requires_grad_() for t in _inputs((3, 2), 4, scale=1.0, seed=7)]
    inputs[0] = inputs[0].detach().clamp(-2.9, 2.9).requires_grad_()
    assert torch.autograd.gradgradcheck(
        lambda *t: rational_quadratic_spline_reference(*t, inverse=True, bound=BOUND), inputs
    )


def test_torch_func_jacobian_and_vmap() -> None:
    x, widths, heights, derivatives = _inputs((5,), 8, seed=8)
    x = x.clamp(-4.0, 4.0)

    def spline(function, v: Tensor) -> Tensor:
        return function(v, widths, heights, derivatives, bound=BOUND)[0]

    jacobian = torch.func.jacrev(lambda v: spline(rational_quadratic_spline_analytic, v))(x)
    expected = torch.func.jacrev(lambda v: spline(rational_quadratic_spline_reference, v))(x)
    torch.testing.assert_close(jacobian, expected, rtol=1e-10, atol=1e-12)
    batch = torch.stack([x, 0.5 * x, -x])
    ladj = torch.func.vmap(lambda v: rational_quadratic_spline_analytic(v, widths, heights, derivatives)[1])(
        batch
    )
    expanded = [p.expand(3, -1, -1) for p in (widths, heights, derivatives)]
    torch.testing.assert_close(ladj, rational_quadratic_spline_reference(batch, *expanded)[1])


def test_broadcast_parameters_and_empty_inputs() -> None:
    x, widths, heights, derivatives = _inputs((4, 3), 5, seed=9)
    shared = [p[:1] for p in (widths, heights, derivatives)]  # (1, 3, K): one spline per feature
    ours = _outputs_and_gradients(rational_quadratic_spline_analytic, [x, *shared], False)
    theirs = _outputs_and_gradients(
        lambda x, *p, **o: rational_quadratic_spline_reference(x, *(q.expand(4, 3, -1) for q in p), **o),
        [x, *shared],
        False,
    )
    for name, a, b in zip(NAMES, ours, theirs):
        assert a.shape == b.shape, name
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    for shape in [(0, 3), (2, 0)]:
        y, ladj = rational_quadratic_spline_analytic(*_inputs(shape, 4))
        assert y.shape == shape and ladj.shape == shape[:1]
    with pytest.raises(ValueError, match="K \\+ 1 derivatives"):
        rational_quadratic_spline_analytic(x, widths, heights, derivatives[..., :-1])


def test_seam_uses_the_analytic_backward_on_cpu_in_eager_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    import flows.ops as seam

    def spy(name: str, function):
        def wrapped(*args, **kwargs):
            calls.append(name)
            return function(*args, **kwargs)

        return wrapped

    monkeypatch.setattr(
        seam, "rational_quadratic_spline_analytic", spy("analytic", rational_quadratic_spline_analytic)
    )
    monkeypatch.setattr(
        seam, "rational_quadratic_spline_reference", spy("reference", rational_quadratic_spline_reference)
    )
    inputs = _inputs((2, 3), 4, dtype=torch.float32)
    ops.rational_quadratic_spline(*inputs)
    with ops.use_backend("reference"):
        ops.rational_quadratic_spline(*inputs)
    with ops.use_backend("analytic"):
        ops.rational_quadratic_spline(*inputs)
        ops.affine(inputs[0], inputs[0], inputs[0])  # no analytic affine: the reference
    assert calls == ["analytic", "reference", "analytic"]
