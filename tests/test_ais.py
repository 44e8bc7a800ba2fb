"""Annealed importance sampling with a flow: one step is importance sampling, a perfect flow gives the
exact log Z for every chain, and a deliberately wrong flow gives an unbiased log Z with a smaller standard
error than importance sampling (Gaussian target, closed-form normaliser)."""

from __future__ import annotations

import math

import pytest
import torch

from flows.ais import annealed_importance_log_weights
from flows.diagnostics import effective_sample_size, log_normalizer
from flows.targets import FunctionTarget
from flows.training.sampling_objectives import validation_log_weights
from tests.test_mcmc import MU, SIGMA, _gaussian, _wrong_affine_flow

#: log of the normaliser of `_gaussian`: 3 + log of (2π)^(D/2) prod(SIGMA)
LOG_Z = 3.0 + 0.5 * MU.numel() * math.log(2 * math.pi) + float(torch.log(SIGMA).sum())


def test_one_step_is_importance_sampling() -> None:
    flow = _wrong_affine_flow()
    torch.manual_seed(5)
    ais = annealed_importance_log_weights(flow, _gaussian, 64, steps=1)
    plain = validation_log_weights(flow, FunctionTarget(_gaussian, 3), 64, 5)
    torch.testing.assert_close(ais, plain.double())


@pytest.mark.parametrize("kernel", ["hmc", "mala", "rwm"])
def test_a_perfect_flow_gives_the_exact_log_z_on_every_chain(kernel: str) -> None:
    flow = _wrong_affine_flow()

    def target(x: torch.Tensor) -> torch.Tensor:
        return flow.log_prob(x) + 1.3  # p~ = e^1.3 q: every increment is 1.3 times its temperature step

    torch.manual_seed(0)
    log_w = annealed_importance_log_weights(flow, target, 50, steps=7, kernel=kernel, step_size=0.5)
    torch.testing.assert_close(log_w, torch.full((50,), 1.3, dtype=torch.float64))


def test_a_wrong_flow_gives_an_unbiased_log_z_with_a_smaller_error_than_importance_sampling() -> None:
    flow = _wrong_affine_flow()
    torch.manual_seed(1)
    ais = annealed_importance_log_weights(flow, _gaussian, 4000, steps=20, step_size=0.4, leapfrog_steps=3)
    plain = validation_log_weights(flow, FunctionTarget(_gaussian, 3), 4000, 2)
    estimate, se = log_normalizer(ais)
    plain_estimate, plain_se = log_normalizer(plain)
    assert abs(estimate - LOG_Z) < 4 * se
    assert se < 0.5 * plain_se  # annealing with HMC moves corrects most of the flow's error
    assert effective_sample_size(ais) > 2 * effective_sample_size(plain)
    assert abs(plain_estimate - LOG_Z) < 4 * plain_se  # the reference itself is right


def test_bad_arguments_are_clear_errors() -> None:
    flow = _wrong_affine_flow()
    with pytest.raises(ValueError, match="kernel"):
        annealed_importance_log_weights(flow, _gaussian, 4, kernel="nuts")
    with pytest.raises(ValueError, match="steps"):
        annealed_importance_log_weights(flow, _gaussian, 4, steps=0)
    with pytest.raises(ValueError, match="step_size"):
        annealed_importance_log_weights(flow, _gaussian, 4, step_size=-1.0)
