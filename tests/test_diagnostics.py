"""Importance-sampling diagnostics on cases with known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from flows.diagnostics import (
    effective_sample_size,
    fit_generalized_pareto,
    log_normalizer,
    pareto_k,
    weight_summary,
)


def test_gaussian_proposal_for_a_wider_gaussian_target_has_the_exact_ess_and_log_z() -> None:
    # q = N(0, 1), p~ = Z N(0, s^2) with log Z = 1.3, s^2 = 1.5 (< 2: finite variance)
    # E_q[w²]/E_q[w]² = 1 / (s sqrt(2 - 1/s²)) ... computed in closed form below
    s2, log_z, n = 1.5, 1.3, 400_000
    x = torch.randn(n, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    log_q = -0.5 * x**2 - 0.5 * math.log(2 * math.pi)
    log_p = log_z - 0.5 * x**2 / s2 - 0.5 * math.log(2 * math.pi * s2)
    lw = log_p - log_q
    second_moment = 1.0 / (s2 * math.sqrt(2 / s2 - 1))  # E_q[(p/q)²] for normalised p
    assert effective_sample_size(lw) == pytest.approx(1 / second_moment, rel=5e-3)
    estimate, error = log_normalizer(lw)
    assert error == pytest.approx(math.sqrt((second_moment - 1) / n), rel=0.02)
    assert abs(estimate - log_z) < 4 * error


def test_equal_weights_and_zero_weights() -> None:
    lw = torch.full((100,), 2.0, dtype=torch.float64)
    assert effective_sample_size(lw) == pytest.approx(1.0)
    assert log_normalizer(lw) == pytest.approx((2.0, 0.0))
    half = torch.cat([torch.zeros(50), torch.full((50,), -math.inf)])
    assert effective_sample_size(half) == pytest.approx(0.5)
    assert log_normalizer(half)[0] == pytest.approx(math.log(0.5))
    assert weight_summary(half)["zero_weight_fraction"] == 0.5
    assert effective_sample_size(torch.full((3,), -math.inf)) == 0.0
    with pytest.raises(ValueError, match="NaN or \\+inf"):
        effective_sample_size(torch.tensor([0.0, math.nan]))


@pytest.mark.parametrize("k", [0.2, 0.5, 0.9])
def test_generalized_pareto_fit_recovers_the_shape(k: float) -> None:
    rng = np.random.default_rng(int(10 * k))
    sigma = 2.0
    x = sigma * (rng.uniform(size=20_000) ** (-k) - 1) / k  # inverse CDF of GPD(k, sigma)
    k_hat, sigma_hat = fit_generalized_pareto(x)
    assert abs(k_hat - k) < 0.04
    assert abs(sigma_hat / sigma - 1) < 0.05


def test_pareto_k_of_pareto_weights_and_of_light_tailed_weights() -> None:
    rng = np.random.default_rng(0)
    alpha = 1.25  # Pareto(alpha) weights: tail shape k = 1 / alpha = 0.8
    w = rng.pareto(alpha, size=100_000) + 1
    assert abs(pareto_k(np.log(w)) - 0.8) < 0.08
    light = rng.normal(size=100_000) * 0.1  # log-normal weights with a tiny spread: k well below 0.5
    assert pareto_k(light) < 0.3
    assert math.isnan(pareto_k(np.zeros(10)))


def test_autocorrelation_ess_of_ar1_chains_matches_the_integrated_time() -> None:
    from flows.diagnostics import autocorrelation_ess

    rho, steps, chains = 0.9, 4000, 40
    generator = torch.Generator().manual_seed(0)
    x = torch.empty(steps, chains, 2, dtype=torch.float64)
    x[0] = torch.randn(chains, 2, generator=generator, dtype=torch.float64)  # stationary start
    noise = torch.randn(steps, chains, 2, generator=generator, dtype=torch.float64) * math.sqrt(1 - rho**2)
    for t in range(1, steps):
        x[t] = rho * x[t - 1] + noise[t]
    x[..., 1] = torch.randn(steps, chains, generator=generator, dtype=torch.float64)  # independent draws
    ess = autocorrelation_ess(x)
    tau = (1 + rho) / (1 - rho)  # 19
    assert ess[0] == pytest.approx(steps * chains / tau, rel=0.12)
    assert ess[1] == pytest.approx(steps * chains, rel=0.1)
