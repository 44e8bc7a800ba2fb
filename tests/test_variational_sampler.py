"""`flows.VariationalSampler`: fit, importance weights, ESS, log Z, save/load."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

import flows
from tests.sampling_targets import LOG_Z, MEAN, STD, shifted_gaussian


@pytest.fixture(scope="module")
def fitted() -> flows.VariationalSampler:
    return flows.VariationalSampler(
        shifted_gaussian,
        features=2,
        model="gaussian",
        steps=300,
        batch_size=128,
        lr=0.03,
        gradient="path",
        gradient_clip=None,
    ).fit()


def test_a_gaussian_flow_fits_a_gaussian_target_and_its_estimates_are_exact(fitted) -> None:
    x, log_w = fitted.sample(20000, return_log_weights=True, seed=0)
    assert x.shape == (20000, 2) and log_w.shape == (20000,)
    torch.testing.assert_close(x.double().mean(0), MEAN.double(), atol=0.05, rtol=0)
    torch.testing.assert_close(x.double().std(0), STD.double(), atol=0.05, rtol=0.02)
    assert fitted.effective_sample_size(20000, seed=1) > 0.98
    estimate, error = fitted.log_normalizer(20000, seed=1)
    assert abs(estimate - LOG_Z) < max(3 * error, 0.005)
    assert error < 0.01
    summary = fitted.diagnostics(20000, seed=2)
    assert summary["pareto_k"] < 0.5 and summary["zero_weight_fraction"] == 0
    same = fitted.sample(5, seed=3)
    assert torch.equal(same, fitted.sample(5, seed=3))


def test_annealed_importance_log_normalizer(fitted) -> None:
    """`method="ais"` estimates the same log Z (within 4 SE); one annealing step is plain IS on the same seed."""
    estimate, error = fitted.log_normalizer(4000, seed=1, method="ais", steps=5, step_size=0.5)
    assert abs(estimate - LOG_Z) < max(4 * error, 0.005) and error < 0.01
    assert fitted.log_normalizer(500, seed=4, method="ais", steps=1, moves_per_step=0) == pytest.approx(
        fitted.log_normalizer(500, seed=4), rel=1e-6
    )
    with pytest.raises(ValueError, match="method"):
        fitted.log_normalizer(10, method="smc")
    with pytest.raises(ValueError, match="ais"):
        fitted.log_normalizer(10, steps=3)


def test_metropolis_and_resampling_with_the_fitted_flow(fitted) -> None:
    chains, acceptance = fitted.metropolis(20, n_chains=2000, seed=0)
    assert chains.shape == (20, 2000, 2)
    assert acceptance > 0.9  # q is nearly p: almost every proposal is accepted
    final = chains[-1].double()
    torch.testing.assert_close(final.mean(0), MEAN.double(), atol=0.1, rtol=0)
    chains, acceptance = fitted.metropolis(10, n_chains=500, local="mala", seed=0)
    assert chains.shape == (10, 500, 2) and acceptance > 0.9
    torch.testing.assert_close(chains.double().mean((0, 1)), MEAN.double(), atol=0.15, rtol=0)
    result = fitted.hmc(10, n_chains=200, leapfrog_steps=3, seed=0)
    assert result.samples.shape == (10, 200, 2) and result.acceptance["hmc"] > 0.8  # π ≈ N(0, I)
    torch.testing.assert_close(result.samples.double().mean((0, 1)), MEAN.double(), atol=0.2, rtol=0)
    assert result.ess_per_second() > 0
    resampled = fitted.resample(5000, proposals=20000, seed=1).double()
    torch.testing.assert_close(resampled.std(0), STD.double(), atol=0.05, rtol=0.03)


def test_save_and_load_give_the_same_flow(fitted, tmp_path: Path) -> None:
    path = fitted.save(tmp_path / "sampler.pt")
    loaded = flows.VariationalSampler.load(path, shifted_gaussian)
    x, log_w = fitted.sample(100, return_log_weights=True, seed=4)
    y, log_v = loaded.sample(100, return_log_weights=True, seed=4)
    torch.testing.assert_close(x, y)
    torch.testing.assert_close(log_w, log_v)


def test_options_are_checked_before_training() -> None:
    with pytest.raises(ValueError, match="needs features=D"):
        flows.VariationalSampler(shifted_gaussian)
    with pytest.raises(
        ValueError, match="gradient: expected one of path, reparam, forward, forward_path, got 'score'"
    ):
        flows.VariationalSampler(shifted_gaussian, features=2, gradient="score")
    with pytest.raises(ValueError, match="hidden_featurs"):
        flows.VariationalSampler(shifted_gaussian, features=2, hidden_featurs=[8])
    with pytest.raises(RuntimeError, match="not fitted"):
        flows.VariationalSampler("funnel").sample(3)


@pytest.mark.parametrize("gradient", ["forward", "forward_path"])
def test_forward_kl_from_the_targets_exact_samples(gradient: str) -> None:
    sampler = flows.VariationalSampler(
        "double_well",
        model="nsf",
        steps=60,
        batch_size=256,
        lr=3e-3,
        gradient=gradient,
        transforms=2,
        hidden_features=[16],
        validation_samples=512,
    ).fit()
    assert math.isfinite(sampler.best_val_reverse_kl_)
    # a short fit already puts the right mass in the lighter left well (x0 < -1: 0.1546 of the target)
    x = sampler.sample(4000, seed=0)
    assert abs(float((x[:, 0] < -1).float().mean()) - 0.1546) < 0.03
