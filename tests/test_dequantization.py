"""Dequantisation: the discrete log-likelihood bound against exact bin probabilities, the learnt noise density
against autograd Jacobians, logit preprocessing, bits/dim, temperature sampling."""

from __future__ import annotations

import math
from typing import Optional

import pytest
import torch
from scipy import integrate, stats
from torch import Tensor

from flows.bijectors.elementwise import ElementwiseAffine
from flows.core import Bijector
from flows.dequantization import (
    CenterPreprocessing,
    DequantizedFlow,
    LogitPreprocessing,
    UniformDequantization,
    VariationalDequantization,
    bits_per_dim,
    discrete_log_likelihood_bound,
    make_dequantizer,
    make_preprocessing,
    quantize,
    sample_base,
)
from flows.distributions import DiagonalNormal, Distribution, StandardNormal
from flows.flow import Flow


class Identity(Bijector):
    def __init__(self, event_dims: int) -> None:
        super().__init__()
        self.event_dims = event_dims

    def forward(self, x: Tensor, context: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        return x, self.zero_ladj(x)

    def inverse(self, y: Tensor, context: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        return y, self.zero_ladj(y)


class PiecewiseConstant(Distribution):
    """Density `K * probs[k]` on bin `k = floor(y K)` of `[0, 1]`, independently per dimension."""

    def __init__(self, event_shape: tuple[int, ...], probs: Tensor) -> None:
        super().__init__()
        self.event_shape = event_shape
        self.register_buffer("probs", probs)

    def log_prob(self, z: Tensor, context: Optional[Tensor] = None) -> Tensor:
        levels = self.probs.shape[0]
        index = torch.clamp(torch.floor(z * levels), 0, levels - 1).long()
        log_density = torch.log(levels * self.probs[index])
        return log_density.sum(dim=tuple(range(-len(self.event_shape), 0)))


def gaussian_flow(event_shape: tuple[int, ...], scale: float = 3.0) -> Flow:
    """`z = scale * y - scale / 2`, `z ~ N(0, I)`: a known density on y whose bins are not uniform inside."""
    event_dims = len(event_shape)
    transform = ElementwiseAffine(shift=-scale / 2, scale=scale, event_dims=event_dims)
    return Flow(transform, StandardNormal(event_shape)).double()


def exact_gaussian_log_p(x: Tensor, levels: int, scale: float = 3.0) -> Tensor:
    """Exact `log P(x)` of the bins of `gaussian_flow`, summed over the event (float64)."""
    lower = stats.norm.cdf(scale * x.numpy() / levels - scale / 2)
    upper = stats.norm.cdf(scale * (x.numpy() + 1) / levels - scale / 2)
    log_p = torch.as_tensor(upper - lower).log()
    return log_p.reshape(x.shape[0], -1).sum(-1)


# ------------------------------------------------------------------------------------------------- bound
def test_uniform_bound_is_exact_for_a_density_constant_within_bins() -> None:
    torch.manual_seed(0)
    levels = 5
    probs = torch.tensor([0.1, 0.4, 0.2, 0.25, 0.05], dtype=torch.float64)
    flow = Flow(Identity(1), PiecewiseConstant((3,), probs))
    x = torch.randint(0, levels, (64, 3))
    bound = discrete_log_likelihood_bound(flow, x, UniformDequantization(levels, event_dims=1).double())
    exact = torch.log(probs[x]).sum(-1)
    torch.testing.assert_close(bound, exact)


def test_bits_per_dim_of_a_uniform_8_bit_model_is_8() -> None:
    levels = 256
    flow = Flow(
        Identity(3), PiecewiseConstant((3, 4, 4), torch.full((levels,), 1 / levels, dtype=torch.float64))
    )
    x = torch.randint(0, levels, (10, 3, 4, 4))
    bound = discrete_log_likelihood_bound(flow, x, UniformDequantization(levels).double())
    torch.testing.assert_close(bits_per_dim(-bound, 48), torch.full((10,), 8.0, dtype=torch.float64))
    # The same number by hand: the density is 1 on [0, 1]^D, so only -D log K remains.
    torch.testing.assert_close(-bound, torch.full((10,), 48 * math.log(256), dtype=torch.float64))
    assert bits_per_dim(48 * math.log(2.0), 48) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="num_dims"):
        bits_per_dim(1.0, 0)


@pytest.mark.parametrize("value", [0, 1, 2, 3])
def test_uniform_bound_matches_quadrature_and_lies_below_the_exact_bin_probability(value: int) -> None:
    torch.manual_seed(1)
    levels, scale = 4, 3.0
    flow = gaussian_flow((1,), scale)
    x = torch.full((20000, 1), value)
    bound = discrete_log_likelihood_bound(flow, x, UniformDequantization(levels, event_dims=1).double())

    def integrand(u: float) -> float:
        y = (value + u) / levels
        return stats.norm.logpdf(scale * y - scale / 2) + math.log(scale) - math.log(levels)

    expected, _ = integrate.quad(integrand, 0.0, 1.0)
    exact = float(exact_gaussian_log_p(x[:1], levels, scale)[0])
    standard_error = float(bound.std() / math.sqrt(bound.numel()))
    assert abs(float(bound.mean()) - expected) < 5 * standard_error + 1e-9
    assert expected < exact  # Jensen: strictly below for a density that varies within the bin
    # The importance-weighted bound tightens towards the exact value from below.
    iw = discrete_log_likelihood_bound(
        flow, x[:200], UniformDequantization(levels, event_dims=1).double(), num_samples=256
    )
    assert float(iw.mean()) > expected
    assert float(iw.mean()) <= exact + 1e-3
    assert abs(float(iw.mean()) - exact) < 0.25 * abs(exact - expected) + 1e-4


@pytest.fixture
def one_thread():
    """Small convolutions run far faster on one thread than on two contended ones."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_variational_bound_stays_below_the_exact_value_and_beats_uniform_after_training(
    one_thread: None,
) -> None:
    torch.manual_seed(2)
    levels, scale, shape = 4, 8.0, (1, 1, 2)
    flow = gaussian_flow(shape, scale)
    dequantizer = VariationalDequantization(shape, levels, hidden_channels=16, steps=2).double()
    optimizer = torch.optim.Adam(dequantizer.parameters(), lr=1e-2)
    data = torch.randint(0, levels, (64,) + shape)
    for _ in range(40):
        optimizer.zero_grad()
        loss = -discrete_log_likelihood_bound(flow, data, dequantizer).mean()
        loss.backward()
        optimizer.step()
    x = torch.randint(0, levels, (64,) + shape)
    exact = exact_gaussian_log_p(x, levels, scale)
    with torch.no_grad():
        repeated = x.expand((200,) + x.shape)
        draws = discrete_log_likelihood_bound(flow, repeated, dequantizer)
        uniform = discrete_log_likelihood_bound(flow, repeated, UniformDequantization(levels).double())
    variational_gap = exact - draws.mean(0)
    uniform_gap = exact - uniform.mean(0)
    standard_error = draws.std(0) / math.sqrt(draws.shape[0])
    assert bool((variational_gap > -5 * standard_error - 1e-6).all())  # a bound, per example
    assert float(variational_gap.mean()) < 0.5 * float(uniform_gap.mean())


def test_variational_noise_density_matches_the_autograd_jacobian() -> None:
    torch.manual_seed(3)
    shape, levels = (2, 2, 2), 8
    dequantizer = VariationalDequantization(
        shape, levels, context_features=3, hidden_channels=8, steps=3
    ).double()
    with torch.no_grad():  # move away from the zero-initialised identity
        for parameter in dequantizer.parameters():
            parameter.add_(0.3 * torch.randn_like(parameter))
    x = torch.randint(0, levels, shape)
    context = torch.randn(3, dtype=torch.float64)
    conditioning = dequantizer._conditioning(x.double(), context)
    eps = torch.randn(shape, dtype=torch.float64)

    def noise(e: Tensor) -> Tensor:
        h, _ = dequantizer.transform.inverse(e.reshape(shape), conditioning)
        return torch.sigmoid(h).reshape(-1)

    jacobian = torch.autograd.functional.jacobian(noise, eps.reshape(-1))
    expected = StandardNormal(shape).double().log_prob(eps) - torch.linalg.slogdet(jacobian)[1]
    u = noise(eps.reshape(-1)).reshape(shape)
    torch.testing.assert_close(dequantizer.log_prob(u, x, context), expected)
    # forward draws y = (x + u) / K with u in (0, 1) and reports the same density of its noise
    with torch.no_grad():
        for parameter in dequantizer.parameters():
            parameter.mul_(0.2)
    y, log_q = dequantizer(x.expand((5,) + shape), context)
    noise_drawn = y * levels - x
    assert bool(((noise_drawn > 0) & (noise_drawn < 1)).all())
    torch.testing.assert_close(log_q, dequantizer.log_prob(noise_drawn, x.expand((5,) + shape), context))


def test_conditional_dequantizer_needs_and_broadcasts_a_context() -> None:
    dequantizer = VariationalDequantization((1, 2, 2), 4, context_features=2, hidden_channels=4, steps=2)
    x = torch.randint(0, 4, (3, 1, 2, 2))
    with pytest.raises(ValueError, match="conditional"):
        dequantizer(x)
    y, log_q = dequantizer(x, torch.randn(2))
    assert y.shape == (3, 1, 2, 2) and log_q.shape == (3,)
    with pytest.raises(ValueError, match="event shape"):
        dequantizer(torch.zeros(3, 1, 3, 3), torch.randn(2))


# -------------------------------------------------------------------------------------------- preprocessing
def test_logit_preprocessing_ladj_matches_autograd_and_inverts() -> None:
    torch.manual_seed(4)
    preprocessing = LogitPreprocessing(alpha=0.05)
    y = torch.rand(4, 2, 3, 3, dtype=torch.float64).requires_grad_(True)
    z, ladj = preprocessing(y)
    (derivative,) = torch.autograd.grad(z.sum(), y)  # element-wise map: the Jacobian is diagonal
    torch.testing.assert_close(ladj, derivative.abs().log().sum(dim=(-3, -2, -1)))
    back, ladj_inverse = preprocessing.inverse(z)
    torch.testing.assert_close(back, y)
    torch.testing.assert_close(ladj_inverse, -ladj)
    with pytest.raises(ValueError, match="alpha"):
        LogitPreprocessing(alpha=0.0)


def test_preprocessing_jacobian_enters_the_bound() -> None:
    """A flow on logit space equals the pushed-forward flow on [0, 1]: the bound must be the same."""
    torch.manual_seed(5)
    levels, shape = 17, (1, 2, 2)
    preprocessing = LogitPreprocessing(alpha=0.05)
    flow_on_logits = Flow(Identity(3), StandardNormal(shape)).double()
    flow_on_unit = Flow(preprocessing, StandardNormal(shape)).double()
    x = torch.randint(0, levels, (32,) + shape)
    torch.manual_seed(6)
    a = discrete_log_likelihood_bound(
        flow_on_logits, x, UniformDequantization(levels).double(), preprocessing
    )
    torch.manual_seed(6)
    b = discrete_log_likelihood_bound(flow_on_unit, x, UniformDequantization(levels).double())
    torch.testing.assert_close(a, b)
    centered = CenterPreprocessing()
    assert centered(torch.full(shape, 0.75))[0].eq(0.25).all()
    assert make_preprocessing("none") is None
    with pytest.raises(ValueError, match="preprocessing"):
        make_preprocessing("sqrt")


# ---------------------------------------------------------------------------------------- sampling, misc
def test_temperature_scales_the_base_standard_deviation() -> None:
    torch.manual_seed(7)
    base = StandardNormal((1, 4, 4))
    samples = sample_base(base, 20000, temperature=0.5)
    assert abs(float(samples.std()) - 0.5) < 0.01
    assert sample_base(base, 3, temperature=0.0).eq(0).all()
    diagonal = DiagonalNormal((1, 2, 2))
    with torch.no_grad():
        diagonal.raw.free["loc"].fill_(2.0)
        diagonal.raw.free["log_scale"].fill_(math.log(3.0))
    drawn = sample_base(diagonal, 20000, temperature=0.5)
    assert abs(float(drawn.mean()) - 2.0) < 0.05 and abs(float(drawn.std()) - 1.5) < 0.03
    with pytest.raises(ValueError, match="temperature"):
        sample_base(base, 2, temperature=-1.0)


def test_dequantized_flow_samples_levels_and_reconstructs() -> None:
    torch.manual_seed(8)
    shape, levels = (1, 3, 3), 17
    flow = Flow(ElementwiseAffine(shift=0.3, scale=2.0, event_dims=3), StandardNormal(shape))
    model = DequantizedFlow(
        flow, make_dequantizer("uniform", shape, levels), make_preprocessing("logit", 0.05)
    )
    samples = model.sample_levels(6, temperature=0.7)
    assert samples.shape == (6,) + shape and samples.dtype == torch.int64
    assert int(samples.min()) >= 0 and int(samples.max()) < levels
    mean_image = model.sample(2, temperature=0.0)
    assert torch.equal(mean_image[0], mean_image[1])
    y = torch.rand((4,) + shape) * 0.9 + 0.05
    torch.testing.assert_close(model.decode(model.encode(y)), y, atol=1e-5, rtol=1e-5)
    assert model.log_prob(torch.randint(0, levels, (4,) + shape)).shape == (4,)
    assert torch.equal(quantize(torch.tensor([0.0, 0.5, 0.999, 1.0, -0.1]), 4), torch.tensor([0, 2, 3, 3, 0]))
    with pytest.raises(ValueError, match="uniform' or 'variational"):
        make_dequantizer("gaussian", shape, levels)
    with pytest.raises(ValueError, match="num_samples"):
        discrete_log_likelihood_bound(
            flow, torch.zeros((1,) + shape), UniformDequantization(levels), num_samples=0
        )
