"""Base distributions against closed forms (torch.distributions / scipy.stats) in float64, normalisation by
quadrature, sample distributions (KS tests, moments), dtypes, context shapes and reparameterised gradients."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Optional

import numpy as np
import pytest
import torch
from scipy import integrate, stats
from torch import Tensor

from flows.distributions import (
    ConditionalDiagonalNormal,
    ConditionalGaussianMixture,
    ConditionalStudentT,
    DiagonalNormal,
    Distribution,
    GaussianMixture,
    StandardNormal,
    StudentT,
    make_base,
)
from tests.helpers import randomize

CONTEXT = 2

# name -> builder(features, context_features): each builds a family, conditional when context_features > 0.
BUILDERS: dict[str, Callable[[int, int], Distribution]] = {
    "standard_normal": lambda features, context: StandardNormal(features),
    "diagonal_normal": lambda features, context: DiagonalNormal(features, context_features=context),
    "student_t": lambda features, context: StudentT(features, df=4.0, context_features=context),
    "student_t_fixed_df": lambda features, context: StudentT(
        features, df=3.0, learn_df=False, context_features=context
    ),
    "gaussian_mixture": lambda features, context: GaussianMixture(
        features, components=3, context_features=context
    ),
}
PARAMETRIC = [name for name in BUILDERS if name != "standard_normal"]
CASES = [(name, 0) for name in BUILDERS] + [(name, CONTEXT) for name in PARAMETRIC]
IDS = [f"{name}-{'cond' if context else 'uncond'}" for name, context in CASES]


def build(name: str, features: int, context_features: int, seed: int = 0) -> Distribution:
    """A float64 distribution with randomised parameters, so that it is far from its initial value."""
    torch.manual_seed(seed)
    distribution = BUILDERS[name](features, context_features).double()
    return randomize(distribution, scale=0.4, seed=seed)


def context_for(context_features: int, batch: tuple[int, ...] = (), seed: int = 3) -> Optional[Tensor]:
    if context_features == 0:
        return None
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch + (context_features,), generator=generator, dtype=torch.float64)


def reference(distribution: Distribution, context: Optional[Tensor]) -> torch.distributions.Distribution:
    """The same distribution built from torch.distributions, from the distribution's parameters."""
    if isinstance(distribution, StandardNormal):
        zeros = torch.zeros(distribution.event_shape, dtype=torch.float64)
        return torch.distributions.Independent(torch.distributions.Normal(zeros, 1.0), 1)
    raw = distribution.raw(context if distribution.context_features else None)
    if isinstance(distribution, GaussianMixture):
        components = torch.distributions.Independent(
            torch.distributions.Normal(raw["loc"], raw["log_scale"].exp()), 1
        )
        weights = torch.distributions.Categorical(logits=raw["logits"])
        return torch.distributions.MixtureSameFamily(weights, components)
    if isinstance(distribution, StudentT):
        df = distribution.degrees_of_freedom(context)
        marginal = torch.distributions.StudentT(df, raw["loc"], raw["log_scale"].exp())
        return torch.distributions.Independent(marginal, 1)
    marginal = torch.distributions.Normal(raw["loc"], raw["log_scale"].exp())
    return torch.distributions.Independent(marginal, 1)


def marginal_cdfs(distribution: Distribution, context: Optional[Tensor]) -> list[Callable]:
    """Per-dimension CDFs (scipy) of an unbatched distribution, for KS tests."""
    features = distribution.event_shape[0]
    if isinstance(distribution, StandardNormal):
        return [stats.norm.cdf] * features
    raw = {k: v.detach().numpy() for k, v in distribution.raw(context).items()}
    scale = np.exp(raw["log_scale"])
    if isinstance(distribution, GaussianMixture):
        weights = np.exp(raw["logits"] - np.logaddexp.reduce(raw["logits"]))
        return [
            lambda x, d=d: sum(
                w * stats.norm.cdf(x, raw["loc"][k, d], scale[k, d]) for k, w in enumerate(weights)
            )
            for d in range(features)
        ]
    if isinstance(distribution, StudentT):
        df = distribution.degrees_of_freedom(context).detach().numpy()
        return [lambda x, d=d: stats.t.cdf(x, df[d], raw["loc"][d], scale[d]) for d in range(features)]
    return [lambda x, d=d: stats.norm.cdf(x, raw["loc"][d], scale[d]) for d in range(features)]


@pytest.mark.parametrize(("name", "context_features"), CASES, ids=IDS)
def test_log_prob_matches_closed_form(name: str, context_features: int) -> None:
    distribution = build(name, 3, context_features)
    context = context_for(context_features, (5,))
    z = 2.0 * torch.randn(7, 5, 3, dtype=torch.float64)
    expected = reference(distribution, context).log_prob(z)
    torch.testing.assert_close(distribution.log_prob(z, context), expected, rtol=1e-10, atol=1e-10)


def test_student_t_matches_scipy_with_per_dimension_df() -> None:
    distribution = StudentT(3, df=2.5).double()
    with torch.no_grad():
        distribution.raw.free["raw_df"].copy_(torch.tensor([-1.0, 0.5, 3.0], dtype=torch.float64))
        distribution.raw.free["loc"].copy_(torch.tensor([0.3, -1.0, 2.0], dtype=torch.float64))
        distribution.raw.free["log_scale"].copy_(torch.tensor([0.1, -0.5, 0.7], dtype=torch.float64))
    df = distribution.degrees_of_freedom().detach().numpy()
    assert len(set(df.round(6))) == 3, "df must differ per dimension"
    np.testing.assert_allclose(df, 0.5 + np.log1p(np.exp([-1.0, 0.5, 3.0])), rtol=1e-12)
    z = torch.randn(50, 3, dtype=torch.float64) * 4
    expected = stats.t.logpdf(z.numpy(), df, [0.3, -1.0, 2.0], np.exp([0.1, -0.5, 0.7])).sum(-1)
    np.testing.assert_allclose(distribution.log_prob(z).detach().numpy(), expected, rtol=1e-10)


@pytest.mark.parametrize(("name", "context_features"), CASES, ids=IDS)
def test_density_integrates_to_one_in_1d(name: str, context_features: int) -> None:
    distribution = build(name, 1, context_features)
    context = context_for(context_features)
    bound = 2000.0
    grid = torch.cat(
        [
            -torch.logspace(math.log10(bound), -3, 20001, dtype=torch.float64),
            torch.linspace(-1e-3, 1e-3, 11, dtype=torch.float64)[1:-1],
            torch.logspace(-3, math.log10(bound), 20001, dtype=torch.float64),
        ]
    )
    with torch.no_grad():
        density = distribution.log_prob(grid[:, None], context).exp()
    assert density.shape == grid.shape
    # Heavy tails (small df) leave mass outside any grid: compare with the closed-form mass inside it.
    (cdf,) = marginal_cdfs(distribution, context)
    mass_inside = cdf(bound) - cdf(-bound)
    assert mass_inside > 0.999
    assert torch.trapezoid(density, grid).item() == pytest.approx(mass_inside, abs=1e-6)


@pytest.mark.parametrize("context_features", [0, CONTEXT])
def test_mixture_density_integrates_to_one_in_2d(context_features: int) -> None:
    distribution = build("gaussian_mixture", 2, context_features)
    context = context_for(context_features)
    raw = {k: v.detach() for k, v in distribution.raw(context).items()}
    # A coarse background grid refined around each component (mean +- 8 scales), per axis.
    axes = []
    for dimension in range(2):
        pieces = [torch.linspace(-12.0, 12.0, 481, dtype=torch.float64)]
        for loc, scale in zip(raw["loc"][:, dimension], raw["log_scale"][:, dimension].exp()):
            pieces.append(torch.linspace(-8.0, 8.0, 161, dtype=torch.float64) * scale + loc)
        axes.append(torch.unique(torch.cat(pieces)))
    points = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1)
    with torch.no_grad():
        density = distribution.log_prob(points, context).exp()
    assert density.shape == (len(axes[0]), len(axes[1]))
    # Simpson's rule keeps 4th-order accuracy on the uneven grid (the trapezoid rule drops to 2nd).
    inner = integrate.simpson(density.numpy(), x=axes[1].numpy(), axis=1)
    total = integrate.simpson(inner, x=axes[0].numpy())
    assert total == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize(("name", "context_features"), CASES, ids=IDS)
def test_samples_follow_the_distribution(name: str, context_features: int) -> None:
    """Per-dimension KS test against the closed-form marginal CDF (fixed seed, Bonferroni over dims)."""
    distribution = build(name, 3, context_features)
    context = context_for(context_features)
    torch.manual_seed(12)
    samples = distribution.sample(4000, context).numpy()
    assert samples.shape == (4000, 3)
    for dimension, cdf in enumerate(marginal_cdfs(distribution, context)):
        p_value = stats.kstest(samples[:, dimension], cdf).pvalue
        assert p_value > 1e-3 / 3, f"dimension {dimension}: KS p-value {p_value:.2e}"


@pytest.mark.parametrize("name", ["diagonal_normal", "gaussian_mixture"])
def test_sample_moments_match_parameters(name: str) -> None:
    distribution = build(name, 3, 0)
    count = 20000
    torch.manual_seed(5)
    samples = distribution.sample(count)
    raw = {k: v.detach() for k, v in distribution.raw().items()}
    if name == "gaussian_mixture":
        weights = raw["logits"].softmax(-1)[:, None]
        mean = (weights * raw["loc"]).sum(0)
        variance = (weights * (raw["log_scale"].exp().square() + raw["loc"].square())).sum(0) - mean.square()
    else:
        mean, variance = raw["loc"], raw["log_scale"].exp().square()
    standard_error = (variance / count).sqrt()
    assert ((samples.mean(0) - mean).abs() < 5 * standard_error).all()
    # The sample variance has standard error about variance * sqrt(2 / n) for near-Gaussian data.
    assert ((samples.var(0) - variance).abs() < 6 * variance * math.sqrt(2 / count) * 2).all()


def test_fresh_conditional_equals_unconditional() -> None:
    """The network's last layer starts at the unconditional initial values, whatever the context."""
    torch.manual_seed(0)
    conditional = ConditionalGaussianMixture(3, CONTEXT, components=4).double()
    unconditional = GaussianMixture(3, components=4).double()
    with torch.no_grad():
        unconditional.raw.free["loc"].copy_(conditional.raw.network.network[-1].bias[4:16].view(4, 3))
    z = torch.randn(6, 3, dtype=torch.float64)
    context = torch.randn(6, CONTEXT, dtype=torch.float64)
    torch.testing.assert_close(conditional.log_prob(z, context), unconditional.log_prob(z))
    student = ConditionalStudentT(3, CONTEXT, df=7.0).double()
    expected = StudentT(3, df=7.0).double().log_prob(z)
    torch.testing.assert_close(student.log_prob(z, context), expected)


@pytest.mark.parametrize(("name", "context_features"), CASES, ids=IDS)
def test_dtype_conversion_moves_everything(name: str, context_features: int) -> None:
    distribution = BUILDERS[name](3, context_features)
    for dtype in (torch.float64, torch.float32):
        distribution = distribution.to(dtype)
        tensors = list(distribution.parameters()) + list(distribution.buffers())
        assert tensors and all(t.dtype == dtype for t in tensors)
        context = torch.randn(2, max(context_features, 1), dtype=dtype)
        samples = distribution.sample((4,), context)
        assert samples.dtype == dtype and samples.shape == (4, 2, 3)
        assert distribution.log_prob(samples, context).dtype == dtype
        if context_features == 0:
            assert distribution.sample(4).dtype == dtype


@pytest.mark.parametrize(("name", "context_features"), CASES, ids=IDS)
def test_context_batch_shapes(name: str, context_features: int) -> None:
    distribution = build(name, 3, context_features)
    context = torch.randn(3, context_features or 5, dtype=torch.float64)  # unconditional: any width
    samples = distribution.sample((4,), context)
    assert samples.shape == (4, 3, 3)
    assert distribution.log_prob(samples, context).shape == (4, 3)
    assert distribution.sample(4, context[0]).shape == (4, 3)
    assert distribution.sample((2, 4), context[None]).shape == (2, 4, 1, 3, 3)
    if context_features == 0:
        assert distribution.sample((2, 5)).shape == (2, 5, 3)
        assert distribution.log_prob(samples).shape == (4, 3)
    else:
        with pytest.raises(ValueError, match="context"):
            distribution.log_prob(samples)
        with pytest.raises(ValueError, match=rf"\({context_features},\)"):
            distribution.sample(4, torch.randn(3, context_features + 1, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"event shape \(3,\)"):
        distribution.log_prob(torch.zeros(4, 2, dtype=torch.float64), context)


@pytest.mark.parametrize("name", PARAMETRIC)
def test_image_event_shape(name: str) -> None:
    distribution = randomize(BUILDERS[name]((2, 3, 3), 0).double(), 0.3)
    samples = distribution.sample((5,))
    assert samples.shape == (5, 2, 3, 3)
    flat = randomize(BUILDERS[name](18, 0).double(), 0.3)
    flat.load_state_dict(distribution.state_dict())
    torch.testing.assert_close(distribution.log_prob(samples), flat.log_prob(samples.reshape(5, 18)))


@pytest.mark.parametrize(("name", "context_features"), [c for c in CASES if c[0] != "standard_normal"])
def test_rsample_gradients_reach_parameters(name: str, context_features: int) -> None:
    distribution = build(name, 3, context_features)
    context = context_for(context_features, (4,))
    samples = distribution.rsample((16,), context)
    (samples.square().sum() + samples.sin().sum()).backward()
    if name == "gaussian_mixture" and context_features:
        # The network's last layer outputs the logits too: those rows of it get no pathwise gradient.
        last = distribution.raw.network.network[-1]
        assert last.bias.grad[:3].abs().sum() == 0 and last.bias.grad[3:].abs().sum() > 0
    for parameter_name, parameter in distribution.named_parameters():
        if parameter_name.endswith("logits"):
            # Component choice is not reparameterised (documented): no pathwise gradient to the weights.
            assert parameter.grad is None or parameter.grad.abs().sum() == 0
            continue
        assert parameter.grad is not None, parameter_name
        assert parameter.grad.abs().sum() > 0, parameter_name


def test_student_t_pathwise_df_gradient_matches_quadrature() -> None:
    """d/d raw_df E[f(z)]: the mean of pathwise gradients equals the exact derivative by quadrature."""
    distribution = StudentT(1, df=3.0).double()

    def f(z: Tensor) -> Tensor:
        return z.square() / (1 + z.square())

    grid = torch.linspace(-400, 400, 400001, dtype=torch.float64)
    expectation = torch.trapezoid(f(grid) * distribution.log_prob(grid[:, None]).exp(), grid)
    (exact,) = torch.autograd.grad(expectation, distribution.raw.free["raw_df"])

    torch.manual_seed(7)
    estimates = []
    for _ in range(20):
        estimate = torch.autograd.grad(f(distribution.rsample(20000)).mean(), distribution.raw.free["raw_df"])
        estimates.append(estimate[0])
    estimates = torch.stack(estimates)
    standard_error = estimates.std() / math.sqrt(len(estimates))
    assert exact.abs() > 10 * standard_error, "the test must resolve a non-zero derivative"
    assert (estimates.mean() - exact).abs() < 4 * standard_error


def test_state_dict_round_trip() -> None:
    source = build("student_t", 3, CONTEXT, seed=1)
    target = ConditionalStudentT(3, CONTEXT, df=4.0).double()
    target.load_state_dict(source.state_dict())
    z = torch.randn(5, 3, dtype=torch.float64)
    context = torch.randn(5, CONTEXT, dtype=torch.float64)
    torch.testing.assert_close(target.log_prob(z, context), source.log_prob(z, context))


def test_make_base() -> None:
    assert type(make_base("normal", 3)) is StandardNormal
    assert type(make_base("normal", 3, context_features=2)) is StandardNormal
    assert type(make_base("diagonal_normal", 3)) is DiagonalNormal
    assert make_base("diagonal_normal", 3, context_features=2).context_features == 2
    student = make_base("student_t", (2, 2), df=3.0, learn_df=False)
    assert isinstance(student, StudentT) and student.event_shape == (2, 2)
    torch.testing.assert_close(student.degrees_of_freedom(), torch.full((4,), 3.0))
    mixture = make_base("gaussian_mixture", 3, context_features=4, components=5, hidden_features=(8,))
    assert isinstance(mixture, GaussianMixture) and mixture.components == 5
    assert mixture.log_prob(torch.zeros(2, 3), torch.zeros(2, 4)).shape == (2,)
    with pytest.raises(ValueError, match="must be one of"):
        make_base("laplace", 3)
    with pytest.raises(ValueError, match="components"):
        make_base("student_t", 3, components=4)
    with pytest.raises(ValueError, match="df"):
        make_base("normal", 3, df=2.0)


def test_invalid_arguments() -> None:
    with pytest.raises(ValueError, match="context_features >= 1"):
        ConditionalDiagonalNormal(3, 0)
    with pytest.raises(ValueError, match="df must be > min_df"):
        StudentT(3, df=0.2)
    with pytest.raises(ValueError, match="components"):
        GaussianMixture(3, components=0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize(("name", "context_features"), CASES, ids=IDS)
def test_to_cuda_moves_everything(name: str, context_features: int) -> None:
    distribution = build(name, 3, context_features).cuda()
    assert all(t.is_cuda for t in list(distribution.parameters()) + list(distribution.buffers()))
    context = torch.randn(2, context_features or 1, dtype=torch.float64, device="cuda")
    samples = distribution.rsample((4,), context)
    assert samples.is_cuda and samples.dtype == torch.float64 and samples.shape == (4, 2, 3)
    cpu = build(name, 3, context_features)
    torch.testing.assert_close(
        distribution.log_prob(samples, context).cpu(), cpu.log_prob(samples.cpu(), context.cpu())
    )
