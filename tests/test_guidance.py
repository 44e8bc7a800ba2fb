"""Classifier-free guidance of autoregressive layers (`flows.guided`): the guided inverse solves
`y = f(x; p(x, c) + g (p(x, c) - p(x, 0)))`, checked directly against the conditioner and transformer, the
same through every inverse method (fixed point, naive loop, key-value cache), and restored on exit."""

from __future__ import annotations

import pytest
import torch

from flows.bijectors.autoregressive import Autoregressive, MaskedAutoregressive, guided
from flows.nn import CausalTransformer
from flows.presets_transformer import TarFlow
from flows.transformers import Affine


@torch.no_grad()
def _guided_residual(
    layer: Autoregressive, x: torch.Tensor, y: torch.Tensor, context: torch.Tensor, g: float
):
    """`f(x; guided params(x)) - y`: zero exactly when `x` is the guided inverse of `y`."""
    conditional = layer.conditioner(x, context)
    null = layer.conditioner(x, torch.zeros_like(context))
    params = conditional + g * (conditional - null)
    forward, _ = layer._transform(x, params, inverse=False)
    return forward - y


def _randomise(module: torch.nn.Module) -> None:
    """Non-zero weights everywhere (the output layers start at zero, which would make guidance a no-op)."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.copy_(0.3 * torch.randn(parameter.shape, generator=generator, dtype=parameter.dtype))


@pytest.mark.parametrize("method", ["fixed_point", "sequential"])
def test_guided_inverse_of_a_made_layer_solves_the_guided_equation(method: str) -> None:
    torch.manual_seed(0)
    layer = MaskedAutoregressive(
        5, "affine", context_features=3, hidden_features=(16,), inverse_method=method
    )
    layer = layer.double()
    _randomise(layer)
    y, context = torch.randn(7, 5, dtype=torch.float64), torch.randn(7, 3, dtype=torch.float64)
    plain = layer.inverse(y, context)[0].detach()
    with guided(layer, 1.5):
        x = layer.inverse(y, context)[0].detach()
    assert layer.guidance == 0.0
    assert float(_guided_residual(layer, x, y, context, 1.5).abs().max()) < 1e-9
    assert float((x - plain).abs().max()) > 1e-3  # guidance changed the samples
    # Guidance 0 is the plain inverse.
    with guided(layer, 0.0):
        torch.testing.assert_close(layer.inverse(y, context)[0], plain)


def test_guided_cached_naive_and_fixed_point_inverses_agree_for_a_causal_transformer() -> None:
    torch.manual_seed(1)
    network = CausalTransformer(6, 3, Affine().num_params, 4, channels=16, layers=2, heads=2)
    layer = Autoregressive(network, Affine()).double()
    _randomise(layer)
    y, context = torch.randn(5, 6, 3, dtype=torch.float64), torch.randn(5, 4, dtype=torch.float64)
    results = {}
    for method, cache in [("sequential", True), ("sequential", False), ("fixed_point", False)]:
        layer.inverse_method, layer.use_cache = method, cache
        with guided(layer, 2.0):
            results[(method, cache)] = layer.inverse(y, context)[0]
    reference = results[("sequential", False)]
    assert float(_guided_residual(layer, reference, y, context, 2.0).abs().max()) < 1e-9
    for x in results.values():
        torch.testing.assert_close(x, reference, rtol=1e-8, atol=1e-8)


def test_guided_sampling_of_a_class_conditional_tarflow_keeps_its_density() -> None:
    torch.manual_seed(2)
    flow = TarFlow((1, 4, 4), 3, patch_size=2, blocks=2, layers_per_block=1, channels=8, heads=2).double()
    _randomise(flow)
    context = torch.eye(3, dtype=torch.float64)
    x = torch.randn(3, 1, 4, 4, dtype=torch.float64)
    log_p = flow.log_prob(x, context)
    torch.manual_seed(3)
    plain = flow.sample((), context)
    with guided(flow, 3.0):
        torch.testing.assert_close(flow.log_prob(x, context), log_p)  # the density is not guided
        torch.manual_seed(3)
        steered = flow.sample((), context)
    assert steered.shape == plain.shape and float((steered - plain).abs().max()) > 1e-3
    with pytest.raises(ValueError, match="guidance must be a finite number"), guided(flow, float("nan")):
        pass
    with pytest.raises(ValueError, match="needs autoregressive layers"), guided(torch.nn.Linear(2, 2), 1.0):
        pass
