"""MCMC kernels: detailed balance on a discrete space, exact stationarity and reversibility of one step from
the target, long latent-space (NeuTra) chains with a deliberately wrong flow against the closed form, and
acceptance 1 for a perfect proposal."""

from __future__ import annotations

import math

import pytest
import torch

from flows.bijectors.elementwise import Standardize
from flows.diagnostics import autocorrelation_ess
from flows.distributions import StandardNormal
from flows.flow import Flow
from flows.flow_mcmc import flow_mcmc, pulled_back
from flows.mcmc import HMC, MALA, ChainState, Independent, RandomWalk, Repeat, evaluate, run_chains
from flows.presets import NSF

PI = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)  # target on {0, 1, 2}
Q = torch.tensor([0.2, 0.3, 0.5], dtype=torch.float64)  # proposal


class _Discrete:
    def sample(self, shape: tuple[int, ...]) -> torch.Tensor:
        return torch.multinomial(Q, shape[0], replacement=True).double()[:, None]

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        return torch.log(Q[x[:, 0].long()])


def _discrete_target(x: torch.Tensor) -> torch.Tensor:
    return torch.log(7.0 * PI[x[:, 0].long()])  # unnormalised


def test_independent_kernel_transition_matrix_satisfies_detailed_balance() -> None:
    torch.manual_seed(0)
    w = PI / Q
    exact = torch.zeros(3, 3, dtype=torch.float64)
    for i in range(3):
        for j in range(3):
            if i != j:
                exact[i, j] = Q[j] * min(1.0, float(w[j] / w[i]))
        exact[i, i] = 1 - exact[i].sum()
    n = 40_000
    for i in range(3):
        start = torch.full((n, 1), float(i), dtype=torch.float64)
        result = run_chains(_discrete_target, [Independent(_Discrete())], start, 1)
        empirical = torch.bincount(result.samples[0, :, 0].long(), minlength=3).double() / n
        torch.testing.assert_close(empirical, exact[i], atol=0.01, rtol=0)
    flow_ij = PI[:, None] * exact
    torch.testing.assert_close(flow_ij, flow_ij.T)  # the exact kernel checked above is reversible


def test_independent_chains_started_in_the_target_stay_and_bad_starts_converge() -> None:
    torch.manual_seed(1)
    proposal = torch.distributions.Independent(  # any torch distribution can propose
        torch.distributions.Normal(
            torch.tensor([0.5], dtype=torch.float64), torch.tensor([1.5], dtype=torch.float64)
        ),
        1,
    )

    def log_p(x: torch.Tensor) -> torch.Tensor:
        return 2.0 - 0.5 * x[:, 0] ** 2  # N(0, 1) up to a constant

    n = 20_000
    result = run_chains(log_p, [Independent(proposal)], torch.randn(n, 1, dtype=torch.float64), 10)
    final = result.samples[-1, :, 0]
    assert abs(float(final.mean())) < 0.03 and abs(float(final.var()) - 1) < 0.04
    assert 0.5 < result.acceptance_rate < 1
    far = torch.full((n, 1), 8.0, dtype=torch.float64)  # a start the target almost never visits
    final = run_chains(log_p, [Independent(proposal)], far, 30).samples[-1, :, 0]
    assert abs(float(final.mean())) < 0.03 and abs(float(final.var()) - 1) < 0.04


# a skewed 1-D target: 0.7 N(-1, 0.5²) + 0.3 N(2, 1), unnormalised
WEIGHTS = torch.tensor([0.7, 0.3], dtype=torch.float64)
MEANS = torch.tensor([-1.0, 2.0], dtype=torch.float64)
STDS = torch.tensor([0.5, 1.0], dtype=torch.float64)


def _mixture(x: torch.Tensor) -> torch.Tensor:
    components = torch.distributions.Normal(MEANS, STDS).log_prob(x[:, :1]) + WEIGHTS.log()
    return torch.logsumexp(components, 1) + 1.7


def _exact_mixture(n: int) -> torch.Tensor:
    k = torch.multinomial(WEIGHTS, n, replacement=True)
    return (MEANS[k] + STDS[k] * torch.randn(n, dtype=torch.float64))[:, None]


def _z(values: torch.Tensor, expected: float) -> float:
    return abs(float(values.mean()) - expected) / float(values.std() / math.sqrt(values.numel()))


@pytest.mark.parametrize(
    "kernel",
    [RandomWalk(2.0), MALA(1.0), HMC(0.5, 5), Repeat(MALA(0.8), 3)],
    ids=["rwm", "mala", "hmc", "mala-x3"],
)
def test_one_step_from_the_target_keeps_it_and_is_reversible(kernel) -> None:
    """x0 ~ p exactly, x1 = K(x0): x1 has p's moments, and (x0, x1) is exchangeable (detailed balance):
    E[x0 x1²] = E[x0² x1]. Langevin without the Hastings correction fails both by > 60 SE."""
    torch.manual_seed(0)
    n = 200_000
    x0 = _exact_mixture(n)
    state, accept = kernel.step(ChainState(x0, evaluate(_mixture, x0)[0]), _mixture)
    x1, a = state.x[:, 0], x0[:, 0]
    assert 0.2 < float(accept.double().mean()) < 1.0
    assert float((x1 != a).double().mean()) > 0.2  # it moved
    mean, second = float((WEIGHTS * MEANS).sum()), float((WEIGHTS * (MEANS**2 + STDS**2)).sum())
    assert _z(x1, mean) < 5 and _z(x1**2, second) < 5
    assert _z(a * x1**2 - a**2 * x1, 0.0) < 5
    torch.testing.assert_close(state.log_p, evaluate(_mixture, state.x)[0])  # the state stays consistent


D = 3
MU = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
SIGMA = torch.tensor([0.5, 2.0, 1.0], dtype=torch.float64)


def _gaussian(x: torch.Tensor) -> torch.Tensor:
    return (-0.5 * ((x - MU) / SIGMA) ** 2).sum(-1) + 3.0  # N(MU, SIGMA²) up to a constant


def _wrong_affine_flow() -> Flow:
    """q = N((0.5, 0, 0), diag(0.8, 1.5, 0.6)²): wrong mean and scales in every coordinate."""
    mean, std = torch.tensor([0.5, 0.0, 0.0]), torch.tensor([0.8, 1.5, 0.6])
    return Flow(Standardize(mean, std), StandardNormal(D)).double()


@pytest.mark.parametrize(
    "method, local, steps",
    [("independent", "rwm", 300), ("independent", "mala", 300), ("hmc", None, 150)],
)
def test_latent_chains_with_a_wrong_flow_have_the_targets_mean_and_variance(method, local, steps) -> None:
    torch.manual_seed(1)
    flow = _wrong_affine_flow()
    result = flow_mcmc(
        flow, _gaussian, steps, 400, method=method, local=local, local_steps=2, leapfrog_steps=5, warmup=50
    )
    x = result.samples  # (steps, chains, D)
    ess = result.effective_sample_size()
    assert ess.shape == (D,) and bool((ess > 500).all())
    se_mean = SIGMA / ess.sqrt()
    assert bool(((x.mean((0, 1)) - MU).abs() < 5 * se_mean).all())
    squares = (x - MU) ** 2  # the variance's own ESS (an antithetic chain can have ESS(x) >> ESS(x²))
    se_var = SIGMA**2 * math.sqrt(2.0) / autocorrelation_ess(squares).sqrt()
    assert bool(((squares.mean((0, 1)) - SIGMA**2).abs() < 5 * se_var).all())
    for name, rate in result.acceptance.items():
        assert 0.05 < rate < 1.0, name
    assert result.ess_per_second() > 0 and result.seconds > 0


@pytest.mark.slow
def test_latent_chains_with_an_untrained_spline_flow_have_the_targets_mean_and_variance() -> None:
    torch.manual_seed(2)
    flow = NSF(D, transforms=2, hidden_features=(8,)).double().eval()
    result = flow_mcmc(flow, _gaussian, 120, 200, local="mala", warmup=30)
    x, ess = result.samples, result.effective_sample_size()
    assert bool(((x.mean((0, 1)) - MU).abs() < 5 * SIGMA / ess.sqrt()).all())
    squares = (x - MU) ** 2
    se_var = SIGMA**2 * math.sqrt(2.0) / autocorrelation_ess(squares).sqrt()
    assert bool(((squares.mean((0, 1)) - SIGMA**2).abs() < 5 * se_var).all())


def test_a_perfect_proposal_is_always_accepted_and_the_pullback_is_the_base() -> None:
    torch.manual_seed(3)
    flow = NSF(D, transforms=2, hidden_features=(8,)).double().eval()

    def target(x: torch.Tensor) -> torch.Tensor:
        return flow.log_prob(x) + 4.0  # p~ = q up to a constant

    z = torch.randn(50, D, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(pulled_back(flow, target)(z), flow.base.log_prob(z) + 4.0)
    result = flow_mcmc(flow, target, 20, 50)
    assert result.acceptance == {"independent": 1.0}


def test_zero_density_proposals_are_rejected_and_a_zero_density_start_leaves() -> None:
    torch.manual_seed(4)

    def half_line(x: torch.Tensor) -> torch.Tensor:  # N(0, 1) restricted to x > 0; NaN elsewhere
        return torch.where(x[:, 0] > 0, -0.5 * x[:, 0] ** 2, torch.full_like(x[:, 0], math.nan))

    start = torch.full((2000, 1), -1.0, dtype=torch.float64)
    result = run_chains(half_line, [RandomWalk(1.0)], start, 200)
    assert bool((result.samples[-1] > 0).all())
    final = result.samples[-1, :, 0]
    assert abs(float(final.mean()) - math.sqrt(2 / math.pi)) < 0.05


def test_warmup_adapts_the_step_size_toward_the_target_acceptance() -> None:
    torch.manual_seed(5)
    kernel = RandomWalk(0.01)  # far too small: acceptance near 1
    start = torch.randn(500, 5, dtype=torch.float64)
    result = run_chains(lambda x: -0.5 * (x**2).sum(-1), [kernel], start, 50, warmup=200)
    assert result.step_sizes["rwm"] > 0.3
    assert abs(result.acceptance["rwm"] - 0.234) < 0.1


def test_bad_arguments_are_clear_errors() -> None:
    flow = _wrong_affine_flow()
    with pytest.raises(ValueError, match="method"):
        flow_mcmc(flow, _gaussian, 5, method="gibbs")
    with pytest.raises(ValueError, match="local"):
        flow_mcmc(flow, _gaussian, 5, method="hmc", local="mala")
    with pytest.raises(ValueError, match="step_size"):
        flow_mcmc(flow, _gaussian, 5, local="rwm", step_size=-1.0)
    with pytest.raises(ValueError, match=r"shape \(4,\)"):
        run_chains(lambda x: x, [RandomWalk(1.0)], torch.zeros(4, 2), 3)
    with pytest.raises(ValueError, match="differentiable"):
        run_chains(lambda x: (x**2).sum(-1).detach(), [MALA(1.0)], torch.zeros(4, 2), 3)
    with pytest.raises(ValueError, match="n_steps"):
        run_chains(_gaussian, [RandomWalk(1.0)], torch.zeros(4, D), 0)
