"""Closed-form and behavioural tests of the non-coupling bijectors (normalisation, element-wise,
linear, 1x1 conv, squeeze, multiscale split), beyond the generic registry test."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from flows.bijectors.conv import Invertible1x1Conv
from flows.bijectors.elementwise import ElementwiseAffine, Logit, Sigmoid, Standardize, Tanh
from flows.bijectors.linear import LULinear, LUMatrix, Permutation
from flows.bijectors.normalization import ActNorm, BatchNorm
from flows.bijectors.reshape import MultiscaleSplit, Squeeze
from flows.core import Chain, Inverse
from tests.helpers import jacobian_logdet, randomize

DOUBLE = torch.float64


def per_channel(y: torch.Tensor) -> torch.Tensor:
    """`(N, C, H, W) -> (C, N * H * W)`."""
    return y.movedim(1, 0).reshape(y.shape[1], -1)


# ------------------------------------------------------------------------------------------ ActNorm
def test_actnorm_image_init_standardises_each_channel() -> None:
    torch.manual_seed(0)
    layer = ActNorm(shape=(3, 4, 5)).to(DOUBLE)
    x = torch.randn(16, 3, 4, 5, dtype=DOUBLE) * torch.tensor([0.5, 2.0, 7.0], dtype=DOUBLE)[:, None, None]
    x = x + torch.tensor([-3.0, 0.0, 10.0], dtype=DOUBLE)[:, None, None]
    assert not bool(layer.initialized)
    y0, ladj0 = layer(x)
    torch.testing.assert_close(y0, x)  # identity before init, and forward has no side effect
    assert not bool(layer.initialized)
    torch.testing.assert_close(ladj0, torch.zeros(16, dtype=DOUBLE))
    layer.initialize(x)
    assert bool(layer.initialized)
    y, ladj = layer(x)
    values = per_channel(y)
    torch.testing.assert_close(values.mean(dim=1), torch.zeros(3, dtype=DOUBLE), atol=1e-10, rtol=0)
    torch.testing.assert_close(
        values.var(dim=1, unbiased=False), torch.ones(3, dtype=DOUBLE), atol=1e-5, rtol=0
    )
    # ladj = H * W * sum log scale = -H * W * sum log std
    expected = -20 * torch.log(per_channel(x).std(dim=1, unbiased=False) + layer.eps).sum()
    torch.testing.assert_close(ladj, expected.expand(16), atol=1e-6, rtol=1e-6)


def test_actnorm_vector_init_over_all_batch_dims() -> None:
    torch.manual_seed(1)
    layer = ActNorm(features=4).to(DOUBLE)
    x = torch.randn(6, 5, 4, dtype=DOUBLE) * 3.0 + 2.0
    layer.initialize(x)
    y = layer(x)[0].reshape(-1, 4)
    torch.testing.assert_close(y.mean(0), torch.zeros(4, dtype=DOUBLE), atol=1e-10, rtol=0)
    torch.testing.assert_close(y.var(0, unbiased=False), torch.ones(4, dtype=DOUBLE), atol=1e-5, rtol=0)
    assert "initialized" in layer.state_dict()


def test_actnorm_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="exactly one"):
        ActNorm()
    with pytest.raises(ValueError, match="exactly one"):
        ActNorm(features=3, shape=(3, 2, 2))
    with pytest.raises(ValueError, match="event shape"):
        ActNorm(features=3)(torch.randn(2, 4))
    with pytest.raises(ValueError, match="at least 2"):
        ActNorm(features=3).initialize(torch.randn(1, 3))


def test_chain_initialize_initialises_each_layer_on_its_own_input() -> None:
    torch.manual_seed(2)
    shape = (2, 4, 4)
    chain = Chain(ActNorm(shape=shape), Invertible1x1Conv(2), ActNorm(shape=shape)).to(DOUBLE)
    x = torch.randn(32, *shape, dtype=DOUBLE) * 4.0 + 1.0
    assert chain.initialize(x)
    assert all(bool(layer.initialized) for layer in (chain[0], chain[2]))
    y = chain(x)[0]
    # The last ActNorm was initialised on the conv output: the chain's output is standardised.
    torch.testing.assert_close(per_channel(y).mean(1), torch.zeros(2, dtype=DOUBLE), atol=1e-10, rtol=0)
    torch.testing.assert_close(
        per_channel(y).var(1, unbiased=False), torch.ones(2, dtype=DOUBLE), atol=1e-5, rtol=0
    )


# ---------------------------------------------------------------------------------------- BatchNorm
def test_batchnorm_train_uses_batch_stats_and_updates_running_stats() -> None:
    torch.manual_seed(3)
    layer = BatchNorm(3, momentum=0.25).to(DOUBLE)
    randomize(layer, seed=3)
    x = torch.randn(50, 3, dtype=DOUBLE) * 2.0 + 5.0
    layer.train()
    y, ladj = layer(x)
    gamma, beta = torch.exp(layer.log_gamma.detach()), layer.beta.detach()
    torch.testing.assert_close(y.mean(0), beta, atol=1e-10, rtol=0)
    torch.testing.assert_close(y.std(0, unbiased=False), gamma, atol=1e-4, rtol=1e-4)
    var = x.var(0, unbiased=False)
    torch.testing.assert_close(ladj, (layer.log_gamma - 0.5 * torch.log(var + layer.eps)).sum().expand(50))
    torch.testing.assert_close(layer.running_mean, 0.25 * x.mean(0))
    torch.testing.assert_close(layer.running_var, 0.75 + 0.25 * x.var(0, unbiased=True))


def test_batchnorm_eval_uses_running_stats_and_does_not_update_them() -> None:
    torch.manual_seed(4)
    layer = BatchNorm(3).to(DOUBLE)
    layer.train()
    for _ in range(5):
        layer(torch.randn(40, 3, dtype=DOUBLE) * 3.0 - 1.0)
    layer.eval()
    mean, var = layer.running_mean.clone(), layer.running_var.clone()
    x = torch.randn(10, 3, dtype=DOUBLE)
    y, _ = layer(x)
    torch.testing.assert_close(y, (x - mean) / torch.sqrt(var + layer.eps))
    torch.testing.assert_close(layer.running_mean, mean)
    torch.testing.assert_close(layer.running_var, var)
    x_back, _ = layer.inverse(y)
    torch.testing.assert_close(x_back, x)


def test_batchnorm_train_needs_two_samples() -> None:
    with pytest.raises(ValueError, match="at least 2"):
        BatchNorm(3).train()(torch.randn(1, 3))


# ---------------------------------------------------------------------------------------- element-wise
@pytest.mark.parametrize("alpha", [0.0, 0.05, 0.3])
def test_logit_alpha_ladj_matches_autograd(alpha: float) -> None:
    torch.manual_seed(5)
    layer = Logit(alpha=alpha)
    x = torch.rand(6, dtype=DOUBLE) * 0.98 + 0.01
    y, ladj = layer(x)
    torch.testing.assert_close(ladj, jacobian_logdet(lambda v: layer(v)[0], x, (6,)))
    u = alpha + (1 - 2 * alpha) * x
    torch.testing.assert_close(y, torch.log(u / (1 - u)))
    z = torch.randn(6, dtype=DOUBLE) * 3
    _, ladj_inverse = layer.inverse(z)
    torch.testing.assert_close(ladj_inverse, jacobian_logdet(lambda v: layer.inverse(v)[0], z, (6,)))


def test_logit_alpha_keeps_boundary_values_finite() -> None:
    x = torch.tensor([0.0, 1.0, 0.5])
    y, ladj = Logit(alpha=0.05)(x)
    assert torch.isfinite(y).all() and torch.isfinite(ladj)
    torch.testing.assert_close(y[0], -y[1])
    with pytest.raises(ValueError, match="alpha"):
        Logit(alpha=0.5)


@pytest.mark.parametrize("layer", [Sigmoid(), Tanh()], ids=["Sigmoid", "Tanh"])
def test_bounded_maps_ladj_match_autograd_both_ways(layer: torch.nn.Module) -> None:
    x = torch.linspace(-6.0, 6.0, 7, dtype=DOUBLE)
    y, ladj = layer(x)
    torch.testing.assert_close(ladj, jacobian_logdet(lambda v: layer(v)[0], x, (7,)))
    x_back, ladj_inverse = layer.inverse(y)
    torch.testing.assert_close(x_back, x)
    torch.testing.assert_close(ladj_inverse, -ladj)


def test_sigmoid_ladj_is_stable_for_large_inputs() -> None:
    _, ladj = Sigmoid()(torch.tensor([80.0, -80.0]))
    torch.testing.assert_close(ladj, torch.tensor(-160.0), atol=1e-4, rtol=1e-6)
    _, ladj = Tanh()(torch.tensor([40.0]))
    torch.testing.assert_close(ladj, torch.tensor(2 * math.log(2.0) - 80.0), atol=1e-4, rtol=1e-6)


def test_elementwise_event_dims_sum_over_images() -> None:
    x = torch.randn(2, 3, 4, 4, dtype=DOUBLE)
    _, ladj = Tanh(event_dims=3)(x)
    assert ladj.shape == (2,)
    _, ladj_vector = Tanh()(x)
    torch.testing.assert_close(ladj, ladj_vector.sum(dim=(-2, -1)))


def test_standardize_keeps_user_units() -> None:
    mean = torch.tensor([1.0, -2.0, 3.0], dtype=DOUBLE)
    std = torch.tensor([0.5, 2.0, 10.0], dtype=DOUBLE)
    layer = Standardize(mean, std)
    x = torch.randn(4, 3, dtype=DOUBLE)
    y, ladj = layer(x)
    torch.testing.assert_close(y, (x - mean) / std)
    torch.testing.assert_close(ladj, -torch.log(std).sum().expand(4))
    # log N(x; mean, std) == log N(y; 0, 1) + ladj: the density stays in the user's units.
    expected = torch.distributions.Normal(mean, std).log_prob(x).sum(-1)
    torch.testing.assert_close(torch.distributions.Normal(0.0, 1.0).log_prob(y).sum(-1) + ladj, expected)
    assert set(layer.state_dict()) == {"shift", "scale"} and not list(layer.parameters())


def test_elementwise_affine_image_ladj_and_errors() -> None:
    scale = torch.tensor([2.0, -0.5])[:, None, None]
    layer = ElementwiseAffine(shift=1.0, scale=scale, event_dims=3)
    _, ladj = layer(torch.randn(3, 2, 4, 5))
    torch.testing.assert_close(ladj, torch.full((3,), 20 * (math.log(2.0) + math.log(0.5))))
    with pytest.raises(ValueError, match="non-zero"):
        ElementwiseAffine(scale=torch.tensor([1.0, 0.0]))
    with pytest.raises(ValueError, match="positive"):
        Standardize(std=-1.0)
    with pytest.raises(ValueError, match="at most event_dims"):
        ElementwiseAffine(scale=torch.ones(2, 3))


# ---------------------------------------------------------------------------------------- linear
def test_lulinear_identity_at_init_and_matches_its_matrix() -> None:
    layer = LULinear(4).to(DOUBLE)
    x = torch.randn(3, 4, dtype=DOUBLE)
    y, ladj = layer(x)
    assert torch.equal(y, x) and torch.equal(ladj, torch.zeros(3, dtype=DOUBLE))
    randomize(layer, seed=6)
    y, ladj = layer(x)
    weight = layer.weight()
    torch.testing.assert_close(y, x @ weight.T + layer.bias)
    torch.testing.assert_close(ladj, torch.linalg.slogdet(weight)[1].expand(3))
    lower, upper = layer.lu.factors()
    assert torch.equal(lower.triu(1), torch.zeros_like(lower)) and torch.equal(
        lower.diagonal(), torch.ones(4)
    )
    assert torch.equal(upper.tril(-1), torch.zeros_like(upper))
    # LULinear(1) is a positive scale plus bias.
    single = LULinear(1)
    assert single(torch.ones(2, 1))[0].shape == (2, 1)


def test_lumatrix_reproduces_a_given_matrix_and_its_inverse() -> None:
    torch.manual_seed(7)
    weight = torch.randn(5, 5, dtype=DOUBLE)
    lu = LUMatrix(5, weight).to(DOUBLE)
    torch.testing.assert_close(lu.matrix(), weight, atol=1e-6, rtol=1e-6)  # stored in float32 then cast
    torch.testing.assert_close(lu.inverse_matrix() @ lu.matrix(), torch.eye(5, dtype=DOUBLE))
    torch.testing.assert_close(lu.logabsdet(), torch.linalg.slogdet(lu.matrix())[1])
    with pytest.raises(ValueError, match="singular"):
        LUMatrix(2, torch.zeros(2, 2))


def test_permutation_kinds() -> None:
    x = torch.arange(5.0)
    assert torch.equal(Permutation(5, kind="reverse")(x)[0], torch.tensor([4.0, 3.0, 2.0, 1.0, 0.0]))
    first, second = Permutation(5, seed=1), Permutation(5, seed=1)
    assert torch.equal(first.indices, second.indices)
    assert sorted(first.indices.tolist()) == list(range(5))
    with pytest.raises(ValueError, match="kind"):
        Permutation(5, kind="sorted")


# ---------------------------------------------------------------------------------------- 1x1 conv
@pytest.mark.parametrize("lu", [True, False], ids=["lu", "plain"])
def test_invertible_1x1_conv_matches_conv2d_and_slogdet(lu: bool) -> None:
    torch.manual_seed(8)
    layer = Invertible1x1Conv(3, lu=lu).to(DOUBLE)
    randomize(layer, seed=8)
    x = torch.randn(2, 5, 3, 4, 6, dtype=DOUBLE)
    y, ladj = layer(x)
    weight = layer.matrix()
    expected = F.conv2d(x.reshape(10, 3, 4, 6), weight[:, :, None, None]).reshape(2, 5, 3, 4, 6)
    torch.testing.assert_close(y, expected)
    torch.testing.assert_close(ladj, (24 * torch.linalg.slogdet(weight)[1]).expand(2, 5))


def test_invertible_1x1_conv_starts_as_a_rotation() -> None:
    torch.manual_seed(9)
    weight = Invertible1x1Conv(4).matrix().detach()
    torch.testing.assert_close(weight @ weight.T, torch.eye(4), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match=r"\(4, H, W\)"):
        Invertible1x1Conv(4)(torch.randn(2, 3, 2, 2))


# ---------------------------------------------------------------------------------------- squeeze / split
def test_squeeze_pixel_placement_closed_form() -> None:
    x = torch.randn(2, 3, 4, 6)
    y, ladj = Squeeze((3, 4, 6))(x)
    assert y.shape == (2, 12, 2, 3) and torch.equal(ladj, torch.zeros(2))
    for c in range(3):
        for i in range(2):
            for j in range(2):
                assert torch.equal(y[:, 4 * c + 2 * i + j], x[:, c, i::2, j::2])
    assert torch.equal(Squeeze((3, 4, 6)).inverse(y)[0], x)


def test_squeeze_rejects_odd_sizes_and_wrong_inputs() -> None:
    with pytest.raises(ValueError, match="even"):
        Squeeze((1, 3, 4))
    with pytest.raises(ValueError, match="event shape"):
        Squeeze((1, 4, 4))(torch.randn(2, 1, 4, 6))


def test_multiscale_split_factors_out_half_the_channels() -> None:
    torch.manual_seed(10)
    inner = Chain(ActNorm(shape=(2, 4, 4)), Invertible1x1Conv(2))
    split = MultiscaleSplit((4, 4, 4), inner).to(DOUBLE)
    randomize(split, seed=10)
    x = torch.randn(3, 4, 4, 4, dtype=DOUBLE)
    y, ladj = split(x)
    assert y.shape == x.shape
    assert torch.equal(y[:, 2:], x[:, 2:])
    y_kept, ladj_kept = inner(x[:, :2])
    torch.testing.assert_close(y[:, :2], y_kept)
    torch.testing.assert_close(ladj, ladj_kept)
    split.initialize(x)
    assert bool(inner[0].initialized)


def test_multiscale_split_checks_the_inner_shape_at_construction() -> None:
    with pytest.raises(ValueError, match=r"map event shape \(2, 4, 4\) to itself"):
        MultiscaleSplit((4, 4, 4), Squeeze((2, 4, 4)))
    with pytest.raises(ValueError, match="kept channels"):
        MultiscaleSplit((4, 4, 4), Invertible1x1Conv(3))
    with pytest.raises(ValueError, match="event_dims=3"):
        MultiscaleSplit((4, 4, 4), LULinear(2))


def test_multiscale_split_dry_run_keeps_train_mode_and_parameters() -> None:
    inner = Chain(ActNorm(shape=(2, 4, 4)), Invertible1x1Conv(2))
    before = {name: value.clone() for name, value in inner.state_dict().items()}
    split = MultiscaleSplit((4, 4, 4), inner)
    assert split.training and all(module.training for module in inner.modules())
    for name, value in inner.state_dict().items():
        assert torch.equal(value, before[name]), name


@pytest.mark.slow
def test_image_layers_compile_fullgraph() -> None:
    torch.manual_seed(11)
    shape = (2, 4, 4)
    chain = Chain(
        Logit(0.05, event_dims=3),
        ActNorm(shape=shape),
        Invertible1x1Conv(2),
        Squeeze(shape),
        MultiscaleSplit((8, 2, 2), Invertible1x1Conv(4, lu=False)),
        Inverse(Squeeze(shape)),
    )
    randomize(chain, seed=11)
    x = torch.rand(3, *shape)
    y, ladj = torch.compile(chain, fullgraph=True)(x)
    y_eager, ladj_eager = chain(x)
    torch.testing.assert_close(y, y_eager, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ladj, ladj_eager, atol=1e-4, rtol=1e-5)
    x_back, _ = torch.compile(chain.inverse, fullgraph=True)(y)
    torch.testing.assert_close(x_back, x, atol=1e-4, rtol=1e-4)
