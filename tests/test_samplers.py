"""Importance resampling and independent Metropolis-Hastings: detailed balance on a discrete space,
stationarity and convergence on a known Gaussian."""

from __future__ import annotations

import math

import pytest
import torch

from flows.samplers import importance_resample, independent_metropolis

PI = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)  # target on {0, 1, 2}
Q = torch.tensor([0.2, 0.3, 0.5], dtype=torch.float64)  # proposal


def _discrete_proposal(generator: torch.Generator):
    def propose(n: int):
        states = torch.multinomial(Q, n, replacement=True, generator=generator).double()
        return states[:, None], torch.log(Q[states.long()])

    return propose


def _discrete_target(x: torch.Tensor) -> torch.Tensor:
    return torch.log(7.0 * PI[x[:, 0].long()])  # unnormalised


def test_independent_metropolis_transition_matrix_satisfies_detailed_balance() -> None:
    generator = torch.Generator().manual_seed(0)
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
        result = independent_metropolis(
            _discrete_proposal(generator),
            _discrete_target,
            1,
            n,
            (start, torch.log(Q[start[:, 0].long()])),
            generator,
        )
        empirical = torch.bincount(result.samples[0, :, 0].long(), minlength=3).double() / n
        torch.testing.assert_close(empirical, exact[i], atol=0.01, rtol=0)
    flow_ij = PI[:, None] * exact
    torch.testing.assert_close(flow_ij, flow_ij.T)  # the exact kernel checked above is reversible


def test_chains_started_in_the_target_stay_there_and_bad_starts_converge() -> None:
    generator = torch.Generator().manual_seed(1)
    proposal = torch.distributions.Normal(
        torch.tensor(0.5, dtype=torch.float64), torch.tensor(1.5, dtype=torch.float64)
    )

    def propose(n: int):
        x = proposal.mean + proposal.stddev * torch.randn(n, 1, generator=generator, dtype=torch.float64)
        return x, proposal.log_prob(x[:, 0])

    def log_p(x: torch.Tensor) -> torch.Tensor:
        return 2.0 - 0.5 * x[:, 0] ** 2  # N(0, 1) up to a constant

    n = 20_000
    start = torch.randn(n, 1, generator=generator, dtype=torch.float64)
    result = independent_metropolis(propose, log_p, 10, n, (start, proposal.log_prob(start[:, 0])), generator)
    final = result.samples[-1, :, 0]
    assert abs(float(final.mean())) < 0.03 and abs(float(final.var()) - 1) < 0.04
    assert 0.5 < result.acceptance_rate < 1
    far = torch.full((n, 1), 8.0, dtype=torch.float64)  # a start the target almost never visits
    converged = independent_metropolis(propose, log_p, 30, n, (far, proposal.log_prob(far[:, 0])), generator)
    final = converged.samples[-1, :, 0]
    assert abs(float(final.mean())) < 0.03 and abs(float(final.var()) - 1) < 0.04


def test_importance_resampling_reproduces_the_target() -> None:
    generator = torch.Generator().manual_seed(2)
    x = 0.5 + 1.5 * torch.randn(200_000, 1, generator=generator, dtype=torch.float64)
    log_q = -0.5 * ((x[:, 0] - 0.5) / 1.5) ** 2 - math.log(1.5)
    log_w = -0.5 * x[:, 0] ** 2 - log_q
    log_w[:10] = -math.inf
    resampled = importance_resample(x, log_w, 50_000, generator)
    assert abs(float(resampled.mean())) < 0.02 and abs(float(resampled.var()) - 1) < 0.03
    with pytest.raises(ValueError, match=r"shape \(200000,\)"):
        importance_resample(x, log_w[:5], 3)
    with pytest.raises(ValueError, match="every weight is zero"):
        importance_resample(x[:3], torch.full((3,), -math.inf), 3)
