"""The fixed-point (Jacobi) inverse of `MaskedAutoregressive` against the sequential reference.

The fixed-point inverse is the default sampling path of MAF and autoregressive NSF from 12 features on
(`inverse_method="auto"`; the sequential loop below). It must agree with
the `features`-pass sequential loop to its tolerance, in float64 and float32, for affine and spline
transformers, with contexts, custom orders and residual MADEs, and never take more than `features`
iterations. The iteration counts are printed (`pytest -s`) and recorded as test properties.
"""

from __future__ import annotations

from typing import Optional

import pytest
import torch
from torch import Tensor

from flows.bijectors.autoregressive import MaskedAutoregressive
from tests.helpers import randomize

# Parameter noise: large enough that every feature depends strongly on the earlier ones.
NOISE = 0.3
AGREEMENT = {torch.float64: 1e-9, torch.float32: 2e-4}


def make_layer(
    features: int,
    transformer: str,
    dtype: torch.dtype,
    context_features: int = 0,
    residual_blocks: int = 0,
    order: Optional[Tensor] = None,
    seed: int = 0,
    **options: object,
) -> MaskedAutoregressive:
    torch.manual_seed(seed)
    layer = MaskedAutoregressive(
        features,
        transformer,
        context_features=context_features,
        hidden_features=(32, 32),
        residual_blocks=residual_blocks,
        order=order,
        **options,
    )
    return randomize(layer, scale=NOISE / 32**0.5 * 4, seed=seed).to(dtype).eval()


def latent(batch: int, features: int, dtype: torch.dtype, seed: int = 1) -> Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, features, generator=generator, dtype=torch.float64).to(dtype)


CASES = [
    pytest.param(features, transformer, dtype, id=f"{transformer}-D{features}-{str(dtype)[6:]}")
    for features in (7, 43)
    for transformer in ("affine", "spline")
    for dtype in (torch.float64, torch.float32)
]


@pytest.mark.parametrize(("features", "transformer", "dtype"), CASES)
def test_fixed_point_equals_sequential(
    features: int, transformer: str, dtype: torch.dtype, record_property
) -> None:
    layer = make_layer(features, transformer, dtype)
    y = latent(64, features, dtype)
    with torch.no_grad():
        x_fixed, ladj_fixed, iterations = layer._inverse_fixed_point(y, None)
        x_sequential, ladj_sequential = layer._inverse_sequential(y, None)
        x_default, ladj_default = layer.inverse(y)
        y_back, ladj_forward = layer(x_fixed)
    tolerance = AGREEMENT[dtype]
    torch.testing.assert_close(x_fixed, x_sequential, atol=tolerance, rtol=0)
    torch.testing.assert_close(ladj_fixed, ladj_sequential, atol=tolerance * features, rtol=tolerance)
    # The default ("auto") takes the fixed point from 12 features on, the sequential loop below.
    expected_x, expected_ladj = (x_fixed, ladj_fixed) if features >= 12 else (x_sequential, ladj_sequential)
    torch.testing.assert_close(x_default, expected_x, atol=0, rtol=0)
    torch.testing.assert_close(ladj_default, expected_ladj, atol=0, rtol=0)
    torch.testing.assert_close(y_back, y, atol=tolerance, rtol=0)
    torch.testing.assert_close(ladj_forward, -ladj_fixed, atol=tolerance * features, rtol=tolerance)
    assert 1 <= iterations <= features
    record_property("iterations", iterations)
    print(
        f"\n{transformer} D={features} {dtype}: {iterations} fixed-point iterations (sequential: {features})"
    )


@pytest.mark.parametrize("transformer", ["affine", "spline"])
def test_context_order_and_residual_made(transformer: str) -> None:
    features = 9
    order = torch.randperm(features, generator=torch.Generator().manual_seed(3))
    layer = make_layer(
        features, transformer, torch.float64, context_features=3, residual_blocks=1, order=order
    )
    y = latent(16, features, torch.float64)
    context = latent(16, 3, torch.float64, seed=5)
    with torch.no_grad():
        x_fixed, ladj_fixed, iterations = layer._inverse_fixed_point(y, context)
        x_sequential, ladj_sequential = layer._inverse_sequential(y, context)
    torch.testing.assert_close(x_fixed, x_sequential, atol=1e-9, rtol=0)
    torch.testing.assert_close(ladj_fixed, ladj_sequential, atol=1e-8, rtol=0)
    assert iterations <= features


def test_strong_coupling_converges_within_features_iterations() -> None:
    """With large weights the iteration needs (nearly) all of its `features` steps, and is then exact."""
    features = 12
    torch.manual_seed(0)
    layer = MaskedAutoregressive(features, "affine", hidden_features=(64,), scale_bound=3.0)
    randomize(layer, scale=1.5, seed=2)
    layer = layer.double()
    y = latent(32, features, torch.float64)
    with torch.no_grad():
        x_fixed, ladj_fixed, iterations = layer._inverse_fixed_point(y, None)
        x_sequential, ladj_sequential = layer._inverse_sequential(y, None)
    assert torch.isfinite(x_sequential).all()
    assert features // 2 < iterations <= features
    torch.testing.assert_close(x_fixed, x_sequential, atol=1e-8, rtol=1e-10)
    torch.testing.assert_close(ladj_fixed, ladj_sequential, atol=1e-8, rtol=1e-10)


def test_zero_tolerance_gives_the_sequential_result() -> None:
    layer = make_layer(10, "spline", torch.float64, inverse_tol=0.0)
    y = latent(8, 10, torch.float64)
    with torch.no_grad():
        x_fixed, _, iterations = layer._inverse_fixed_point(y, None)
        x_sequential, _ = layer._inverse_sequential(y, None)
    assert iterations <= 10
    torch.testing.assert_close(x_fixed, x_sequential, atol=1e-14, rtol=0)


def test_gradients_through_the_fixed_point_match_sequential() -> None:
    """Reparameterised sampling differentiates through the iterations: same gradients as the reference."""
    layer = make_layer(6, "spline", torch.float64)
    y = latent(5, 6, torch.float64).requires_grad_(True)
    gradients = []
    for method in (layer._inverse_sequential, lambda y_, c: layer._inverse_fixed_point(y_, c)[:2]):
        layer.zero_grad()
        y.grad = None
        x, ladj = method(y, None)
        (x.square().sum() + ladj.sum()).backward()
        gradients.append([y.grad.clone()] + [p.grad.clone() for p in layer.parameters()])
    for sequential, fixed in zip(*gradients):
        torch.testing.assert_close(fixed, sequential, atol=1e-8, rtol=1e-6)


def test_method_option_and_validation() -> None:
    layer = make_layer(5, "affine", torch.float64, inverse_method="sequential")
    y = latent(4, 5, torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(layer.inverse(y)[0], layer._inverse_sequential(y, None)[0], atol=0, rtol=0)
    with pytest.raises(ValueError, match="inverse_method"):
        MaskedAutoregressive(5, inverse_method="newton")
    with pytest.raises(ValueError, match="inverse_tol"):
        MaskedAutoregressive(5, inverse_tol=-1.0)
    with pytest.raises(ValueError, match="inverse_check_every"):
        MaskedAutoregressive(5, inverse_check_every=0)


def test_check_every_only_changes_the_iteration_count() -> None:
    layer = make_layer(20, "affine", torch.float64)
    y = latent(8, 20, torch.float64)
    with torch.no_grad():
        x_each, _, iterations_each = layer._inverse_fixed_point(y, None)
        layer.inverse_check_every = 4
        x_four, _, iterations_four = layer._inverse_fixed_point(y, None)
    assert iterations_four % 4 == 0 or iterations_four == 20
    assert iterations_each <= iterations_four < iterations_each + 4
    torch.testing.assert_close(x_four, x_each, atol=1e-9, rtol=0)


def test_empty_batch() -> None:
    layer = make_layer(5, "spline", torch.float32)
    x, ladj = layer.inverse(torch.zeros(0, 5))
    assert x.shape == (0, 5) and ladj.shape == (0,)


@pytest.mark.parametrize("autoregressive_preset", ["maf", "nsf"])
def test_flow_samples_equal_with_either_method(autoregressive_preset: str) -> None:
    from flows import presets

    features = 16
    torch.manual_seed(0)
    if autoregressive_preset == "maf":
        flow = presets.MAF(features, transforms=2, hidden_features=(16, 16))
    else:
        flow = presets.NSF(features, transforms=2, hidden_features=(16, 16), autoregressive=True, bins=4)
    randomize(flow, scale=0.1, seed=4)
    flow = flow.double()
    layers = [m for m in flow.modules() if isinstance(m, MaskedAutoregressive)]
    assert layers and all(m.inverse_method == "auto" for m in layers)
    samples = {}
    for method in ("auto", "fixed_point", "sequential"):
        for layer in layers:
            layer.inverse_method = method
        torch.manual_seed(7)
        samples[method] = flow.sample((32,))
    torch.testing.assert_close(samples["auto"], samples["fixed_point"], atol=0, rtol=0)
    torch.testing.assert_close(samples["fixed_point"], samples["sequential"], atol=1e-9, rtol=0)


def test_compiled_step_keeps_the_early_exit() -> None:
    """`compile_fixed_point_step` compiles one step (fullgraph); the Python loop still stops early."""
    layer = make_layer(20, "spline", torch.float32)
    y = latent(16, 20, torch.float32)
    with torch.no_grad():
        x_eager, ladj_eager, steps_eager = layer._inverse_fixed_point(y, None)
        layer.compile_fixed_point_step(backend="eager", dynamic=False)
        try:
            x_compiled, ladj_compiled, steps_compiled = layer._inverse_fixed_point(y, None)
        finally:
            layer.compile_fixed_point_step(backend=None)
            torch._dynamo.reset()
    assert steps_compiled == steps_eager < 20
    torch.testing.assert_close(x_compiled, x_eager, atol=0, rtol=0)
    torch.testing.assert_close(ladj_compiled, ladj_eager, atol=0, rtol=0)
    assert layer._compiled_step is None


def test_whole_inverse_compiles_without_graph_breaks_and_runs_every_step() -> None:
    """Under torch.compile the loop has no data-dependent exit: it traces in one graph, runs all
    `features` steps and so equals the sequential inverse."""
    layer = make_layer(12, "affine", torch.float64, inverse_method="fixed_point")
    y = latent(8, 12, torch.float64)
    torch._dynamo.reset()
    try:
        with torch.no_grad():
            x_compiled, ladj_compiled = torch.compile(layer.inverse, fullgraph=True, backend="eager")(y)
            x_sequential, ladj_sequential = layer._inverse_sequential(y, None)
    finally:
        torch._dynamo.reset()
    torch.testing.assert_close(x_compiled, x_sequential, atol=1e-12, rtol=0)
    torch.testing.assert_close(ladj_compiled, ladj_sequential, atol=1e-11, rtol=0)
