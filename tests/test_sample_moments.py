"""Samples of the README's Python example keep the data's moments (#14).

With the NSF preset's old spline bound of 3, the learned linear tail slopes (down to the minimum derivative)
sent ~0.3% of the samples hundreds of standard deviations out (|x1| up to 283, variance 3.6 against 0.99)
although the fit's log-likelihood was within 0.03 nats of the entropy. With the bound at 5 the tails hold
~1e-6 of the base's mass.
"""

from __future__ import annotations

import math

import pytest
import torch

import flows


@pytest.mark.slow
def test_readme_example_samples_match_the_data_variance() -> None:
    torch.manual_seed(0)
    x = torch.randn(4096, 2) @ torch.tensor([[1.0, 0.8], [0.0, 0.6]]) + torch.tensor([1.0, -2.0])
    flow = flows.presets.NSF(features=2, transforms=3, hidden_features=(32, 32), bins=8)
    optimizer = torch.optim.AdamW(flow.parameters(), lr=3e-3)
    entropy = 0.5 * math.log((2 * math.pi * math.e) ** 2 * 0.6**2)  # det of the covariance: 0.6^2
    for step in range(400):
        loss = -flow.log_prob(x[torch.randint(len(x), (256,))]).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step + 1 in (200, 400):
            with torch.no_grad():
                samples = flow.sample(50_000)
                log_likelihood = float(flow.log_prob(x).mean())
            ratio = samples.var(0) / x.var(0)
            spread = ((samples - x.mean(0)) / x.std(0)).abs().max()
            assert float(spread) < 10, float(spread)  # bound 3: 283 standard deviations
            assert log_likelihood > -entropy - 0.05  # the fit itself is close to the best possible
            # the README's 200 steps: within 20% (1.15 and 1.10 measured); 400 steps: within 10%
            tolerance = 0.2 if step + 1 == 200 else 0.1
            assert torch.all((ratio - 1).abs() < tolerance), ratio
