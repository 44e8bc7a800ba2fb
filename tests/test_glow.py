"""Tests of the image presets `Glow` and `RealNVPImage`: shapes, round trips, the whole chain's
log-determinant against autograd, ActNorm initialisation, conditioning and argument errors."""

from __future__ import annotations

import pytest
import torch

from flows.bijectors.normalization import ActNorm
from flows.flow import Flow
from flows.presets_image import Glow, RealNVPImage
from tests.helpers import jacobian_logdet, randomize

DOUBLE = torch.float64


def small_glow(shape: tuple[int, int, int], **options: object) -> Glow:
    defaults: dict[str, object] = {"levels": 2, "steps": 2, "hidden_channels": 8}
    defaults.update(options)
    return Glow(shape, **defaults)  # type: ignore[arg-type]


@pytest.mark.parametrize("shape", [(1, 8, 8), (3, 8, 8)], ids=str)
def test_glow_shapes_and_round_trip(shape: tuple[int, int, int]) -> None:
    torch.manual_seed(0)
    flow = small_glow(shape).to(DOUBLE)
    randomize(flow, scale=0.1, seed=0)
    x = torch.rand(4, *shape, dtype=DOUBLE)
    flow.initialize(x)
    log_prob = flow.log_prob(x)
    assert isinstance(flow, Flow) and log_prob.shape == (4,) and torch.isfinite(log_prob).all()
    z = flow.encode(x)
    assert z.shape == x.shape
    torch.testing.assert_close(flow.decode(z), x, atol=1e-9, rtol=1e-9)
    assert flow.sample((3,)).shape == (3, *shape)
    # log p(x) = log N(z) + ladj
    _, ladj = flow.transform(x)
    torch.testing.assert_close(log_prob, flow.base.log_prob(z) + ladj)


def test_glow_initialize_sets_every_actnorm() -> None:
    torch.manual_seed(1)
    flow = small_glow((3, 8, 8))
    actnorms = [m for m in flow.modules() if isinstance(m, ActNorm)]
    assert len(actnorms) == 2 * 2  # levels * steps
    assert not any(bool(layer.initialized) for layer in actnorms)
    x = torch.rand(16, 3, 8, 8) * 0.2 + 0.4
    flow.initialize(x)
    assert all(bool(layer.initialized) for layer in actnorms)
    # The first ActNorm sees the squeezed data: its output is standardised per channel.
    squeezed, _ = flow.transform[0](x)
    y, _ = flow.transform[1](squeezed)
    channels = y.movedim(1, 0).reshape(y.shape[1], -1)
    torch.testing.assert_close(channels.mean(1), torch.zeros(12), atol=1e-5, rtol=0)
    torch.testing.assert_close(channels.std(1, unbiased=False), torch.ones(12), atol=1e-3, rtol=0)


@pytest.mark.parametrize("coupling", ["affine", "spline"])
def test_glow_ladj_matches_autograd_jacobian(coupling: str) -> None:
    torch.manual_seed(2)
    shape = (1, 4, 4)
    flow = small_glow(shape, coupling=coupling, bins=4).to(DOUBLE)
    randomize(flow, scale=0.2, seed=2)
    x = torch.rand(8, *shape, dtype=DOUBLE)
    flow.initialize(x)
    for i in range(1):
        _, ladj = flow.transform(x[i])
        expected = jacobian_logdet(lambda v: flow.transform(v)[0], x[i], shape)
        torch.testing.assert_close(ladj, expected, atol=1e-7, rtol=1e-7)
        z = flow.encode(x[i])
        _, ladj_inverse = flow.transform.inverse(z)
        expected_inverse = jacobian_logdet(lambda v: flow.transform.inverse(v)[0], z, shape)
        torch.testing.assert_close(ladj_inverse, expected_inverse, atol=1e-7, rtol=1e-7)
        torch.testing.assert_close(ladj_inverse, -ladj)


def test_realnvp_image_ladj_and_round_trip() -> None:
    torch.manual_seed(3)
    shape = (1, 4, 4)
    flow = RealNVPImage(shape, levels=2, hidden_channels=8).to(DOUBLE)
    randomize(flow, scale=0.2, seed=3)
    x = torch.rand(8, *shape, dtype=DOUBLE)
    flow.initialize(x)
    z, ladj = flow.transform(x)
    assert z.shape == x.shape and ladj.shape == (8,)
    torch.testing.assert_close(flow.decode(z), x, atol=1e-9, rtol=1e-9)
    expected = jacobian_logdet(lambda v: flow.transform(v)[0], x[0], shape)
    torch.testing.assert_close(ladj[0], expected, atol=1e-7, rtol=1e-7)


def test_conditional_glow_uses_and_broadcasts_the_context() -> None:
    torch.manual_seed(4)
    flow = small_glow((2, 4, 4), context_features=3).to(DOUBLE)
    randomize(flow, scale=0.2, seed=4)
    x = torch.rand(5, 2, 4, 4, dtype=DOUBLE)
    context = torch.randn(5, 3, dtype=DOUBLE)
    flow.initialize(x, context)
    log_prob = flow.log_prob(x, context)
    assert log_prob.shape == (5,)
    assert not torch.allclose(log_prob, flow.log_prob(x, context + 1.0))
    torch.testing.assert_close(flow.decode(flow.encode(x, context), context), x, atol=1e-9, rtol=1e-9)
    samples = flow.sample((2,), context=context[:3])
    assert samples.shape == (2, 3, 2, 4, 4)
    # One context broadcasts over a batch of images.
    torch.testing.assert_close(flow.log_prob(x, context[0]), flow.log_prob(x, context[0].expand(5, 3)))


def test_glow_gradients_reach_the_parameters() -> None:
    torch.manual_seed(5)
    flow = small_glow((1, 4, 4))
    x = torch.rand(6, 1, 4, 4)
    flow.initialize(x)
    flow.log_prob(x).mean().backward()
    grads = [p.grad for p in flow.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert sum(float(g.abs().sum()) > 0 for g in grads) >= len(grads) // 2


def test_presets_reject_bad_arguments() -> None:
    with pytest.raises(ValueError, match="divisible by 8"):
        Glow((3, 12, 12), levels=3)
    with pytest.raises(ValueError, match="coupling"):
        Glow((1, 8, 8), levels=2, coupling="glow")
    with pytest.raises(ValueError, match=r"\(C, H, W\)"):
        Glow((8, 8), levels=2)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="steps"):
        Glow((1, 8, 8), levels=2, steps=0)
    with pytest.raises(TypeError):
        Glow((1, 8, 8), depth=3)  # type: ignore[call-arg]
    with pytest.raises(ValueError, match="divisible by 2"):
        RealNVPImage((1, 5, 5), levels=2)
    with pytest.raises(ValueError, match="event shape"):
        small_glow((1, 8, 8)).log_prob(torch.rand(2, 1, 4, 4))
