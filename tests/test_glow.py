"""Tests of the image presets `Glow` and `RealNVPImage`: shapes, round trips, the whole chain's
log-determinant against autograd, ActNorm initialisation, conditioning, Glow's learned split prior and
argument errors."""

from __future__ import annotations

import pytest
import torch

from flows.bijectors.coupling import ImageCoupling, channel_mask
from flows.bijectors.normalization import ActNorm
from flows.bijectors.reshape import MultiscaleSplit
from flows.core import Chain
from flows.flow import Flow
from flows.presets_image import Glow, RealNVPImage, split_prior_coupling
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


def split_priors(flow: Flow) -> list[tuple[MultiscaleSplit, ImageCoupling]]:
    """Every (MultiscaleSplit, the member right after it) pair in the flow's nested chains."""
    pairs = []
    for module in flow.modules():
        if isinstance(module, Chain):
            members = list(module)
            for split, after in zip(members, members[1:]):
                if isinstance(split, MultiscaleSplit):
                    pairs.append((split, after))
    return pairs


@pytest.mark.parametrize("split_prior", [True, False], ids=["prior", "no-prior"])
@pytest.mark.parametrize("coupling", ["affine", "spline"])
def test_glow_ladj_matches_autograd_jacobian(coupling: str, split_prior: bool) -> None:
    torch.manual_seed(2)
    shape = (1, 4, 4)
    flow = small_glow(shape, coupling=coupling, bins=4, split_prior=split_prior).to(DOUBLE)
    assert len(split_priors(flow)) == 1
    assert isinstance(split_priors(flow)[0][1], ImageCoupling) == split_prior
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


@pytest.mark.parametrize("levels", [2, 3])
def test_a_split_prior_follows_every_split(levels: int) -> None:
    flow = small_glow((1, 16, 16), levels=levels)
    pairs = split_priors(flow)
    assert len(pairs) == levels - 1
    for split, prior in pairs:
        assert isinstance(prior, ImageCoupling) and prior.event_shape == split.shape
        # The prior's conv net sees exactly the kept channels (the context is not used here).
        assert prior.conditioner.network.network[0].in_channels == split.kept_shape[0]
    assert all(isinstance(p, ImageCoupling) for _, p in split_priors(RealNVPImage((1, 8, 8), levels=3)))
    assert not any(
        isinstance(p, ImageCoupling) for _, p in split_priors(small_glow((1, 16, 16), split_prior=False))
    )
    assert not any(
        isinstance(p, ImageCoupling)
        for _, p in split_priors(RealNVPImage((1, 8, 8), levels=3, split_prior=False))
    )


@pytest.mark.parametrize("channels", [2, 3, 4, 5, 7, 8])
def test_split_prior_mask_lines_up_with_the_multiscale_split(channels: int) -> None:
    shape = (channels, 2, 2)
    kept = MultiscaleSplit(shape, ActNorm(shape=(channels - channels // 2, 2, 2))).kept_shape[0]
    expected = torch.zeros(shape, dtype=torch.bool)
    expected[:kept] = True  # conditioning = the kept channels, transformed = the factored-out ones
    prior = split_prior_coupling(shape, hidden_channels=4)
    assert torch.equal(prior.mask, expected)
    assert torch.equal(channel_mask(shape), expected)


@pytest.mark.parametrize("context_features", [0, 3])
def test_fresh_split_prior_is_the_standard_normal(context_features: int) -> None:
    torch.manual_seed(6)
    shape = (3, 8, 8)
    with_prior = small_glow(shape, context_features=context_features).to(DOUBLE)
    x = torch.rand(4, *shape, dtype=DOUBLE)
    context = torch.randn(4, context_features, dtype=DOUBLE) if context_features else None
    # Fresh, Glow with the prior maps the standard normal to a rotation of itself: zero-initialised
    # couplings and prior, identity ActNorms, orthogonal 1x1 convs (up to their float32 LU init).
    torch.testing.assert_close(
        with_prior.log_prob(x, context), with_prior.base.log_prob(x), atol=1e-6, rtol=1e-7
    )
    # With every other layer trained (randomised), a fresh prior is still the identity map with zero
    # log-determinant: the same latent and log-density as the flow without the prior.
    without = small_glow(shape, context_features=context_features, split_prior=False).to(DOUBLE)
    randomize(without, scale=0.1, seed=6)
    missing, unexpected = with_prior.load_state_dict(without.state_dict(), strict=False)
    prior_names = {
        f"{name}.{key}"
        for name, module in with_prior.named_modules()
        if any(module is prior for _, prior in split_priors(with_prior))
        for key in module.state_dict()
    }
    assert not unexpected and prior_names and set(missing) == prior_names
    torch.testing.assert_close(with_prior.encode(x, context), without.encode(x, context), atol=0, rtol=0)
    torch.testing.assert_close(with_prior.log_prob(x, context), without.log_prob(x, context), atol=0, rtol=0)
    for _, prior in split_priors(with_prior):
        y = torch.randn(4, *prior.event_shape, dtype=DOUBLE)
        out, ladj = prior(y, context)
        torch.testing.assert_close(out, y, atol=0, rtol=0)
        torch.testing.assert_close(ladj, torch.zeros(4, dtype=DOUBLE), atol=0, rtol=0)


def test_split_prior_conditions_the_factored_channels_on_the_kept_ones() -> None:
    torch.manual_seed(7)
    shape = (4, 2, 2)
    kept = shape[0] - shape[0] // 2
    prior = split_prior_coupling(shape, context_features=2, hidden_channels=8).to(DOUBLE)
    randomize(prior, scale=0.3, seed=7)
    x = torch.randn(3, *shape, dtype=DOUBLE)
    context = torch.randn(3, 2, dtype=DOUBLE)
    y, ladj = prior(x, context)
    # Kept channels pass through; the factored ones are standardised by mu(h), sigma(h).
    torch.testing.assert_close(y[:, :kept], x[:, :kept], atol=0, rtol=0)
    nudged = x.clone()
    nudged[:, :kept] += 0.5
    y_nudged, ladj_nudged = prior(nudged, context)
    assert (y_nudged[:, kept:] - y[:, kept:]).abs().amin(dim=(1, 2, 3)).gt(0).all()
    assert (ladj_nudged - ladj).abs().gt(1e-6).all()
    # The context also moves mu and sigma.
    assert (prior(x, context + 1.0)[0][:, kept:] - y[:, kept:]).abs().gt(0).any()

    # Autograd Jacobian: block lower-triangular, identity on the kept half, diagonal on the factored half.
    def flat(v: torch.Tensor) -> torch.Tensor:
        return prior(v.reshape(shape), context[0])[0].reshape(-1)

    jacobian = torch.func.jacrev(flat)(x[0].reshape(-1))
    n_kept = kept * shape[1] * shape[2]
    torch.testing.assert_close(jacobian[:n_kept, :n_kept], torch.eye(n_kept, dtype=DOUBLE), atol=0, rtol=0)
    assert jacobian[:n_kept, n_kept:].abs().max() == 0
    assert jacobian[n_kept:, :n_kept].abs().amax(dim=1).gt(0).all()  # every factored output depends on h
    factored_block = jacobian[n_kept:, n_kept:]
    torch.testing.assert_close(factored_block, torch.diag(torch.diagonal(factored_block)), atol=0, rtol=0)
    torch.testing.assert_close(ladj[0], torch.linalg.slogdet(jacobian)[1], atol=1e-10, rtol=1e-10)


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
    with pytest.raises(TypeError, match="split_prior"):
        Glow((1, 8, 8), levels=2, split_prior=1)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="split_prior"):
        RealNVPImage((1, 8, 8), levels=2, split_prior="yes")  # type: ignore[arg-type]
