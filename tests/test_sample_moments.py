"""Samples of the README's Python example keep the data's moments (#14).

With the NSF preset's old spline bound of 3, the learned linear tail slopes (down to the minimum derivative)
sent ~0.3% of the samples hundreds of standard deviations out (|x1| up to 283, variance 3.6 against 0.99)
although the fit's log-likelihood was within 0.03 nats of the entropy. With the bound at 5 the tails hold
~1e-6 of the base's mass. The example decays its learning rate (cosine) over its 200 steps: at a constant
rate the final iterate's variances were up to 16% off at 200 steps (seeds 0-4), within 4% with the decay.
"""

from __future__ import annotations

import math

import pytest
import torch

import flows
from tests.test_readme import python_blocks


def check_moments(flow: flows.Flow, x: torch.Tensor, tolerance: float) -> None:
    """Samples of `flow` have the variance of `x (n, 2)` within `tolerance` (relative), none beyond 10 sd,
    and the fit's log-likelihood is within 0.05 nats of the entropy."""
    entropy = 0.5 * math.log((2 * math.pi * math.e) ** 2 * 0.6**2)  # det of the covariance: 0.6^2
    with torch.no_grad():
        samples = flow.sample(50_000)
        log_likelihood = float(flow.log_prob(x).mean())
    ratio = samples.var(0) / x.var(0)
    spread = ((samples - x.mean(0)) / x.std(0)).abs().max()
    assert float(spread) < 10, float(spread)  # bound 3: 283 standard deviations
    assert log_likelihood > -entropy - 0.05
    assert torch.all((ratio - 1).abs() < tolerance), ratio


@pytest.mark.slow
def test_readme_example_samples_match_the_data_variance() -> None:
    namespace: dict = {}
    exec(compile(python_blocks()[0], "README.md", "exec"), namespace)  # 200 steps, as printed
    flow, x = namespace["flow"], namespace["x"]
    check_moments(
        flow, x, 0.1
    )  # measured: 1.037 and 1.025 times the data's variance (constant lr: 1.16, 1.11)
