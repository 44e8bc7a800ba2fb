"""Every vector preset works for one feature: a normalised density (quadrature), exact inverse, trainable.

With one feature a coupling layer has nothing to condition on, so NSF and RealNVP use element-wise transforms
whose parameters are learned constants (or functions of the context).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

import flows
from flows.training.registry import gaussian

PRESETS: dict[str, Any] = {
    "nsf": lambda c: flows.presets.NSF(features=1, context_features=c, transforms=2, hidden_features=(16,)),
    "nsf-ar": lambda c: flows.presets.NSF(
        features=1, context_features=c, transforms=2, hidden_features=(16,), autoregressive=True
    ),
    "maf": lambda c: flows.presets.MAF(features=1, context_features=c, transforms=2, hidden_features=(16,)),
    "realnvp": lambda c: flows.presets.RealNVP(
        features=1, context_features=c, transforms=2, hidden_features=(16,)
    ),
}


def _perturbed(flow: flows.Flow) -> flows.Flow:
    torch.manual_seed(1)
    with torch.no_grad():  # away from the identity initialisation, so the check is not trivially passed
        for parameter in flow.parameters():
            parameter.add_(0.1 * torch.randn_like(parameter))
    return flow.double()


@pytest.mark.parametrize("name", list(PRESETS))
@pytest.mark.parametrize("context_features", [0, 2])
def test_one_feature_presets_are_normalised_densities(name: str, context_features: int) -> None:
    flow = _perturbed(PRESETS[name](context_features))
    grid = torch.linspace(-40.0, 40.0, 80_001, dtype=torch.float64)[:, None]
    contexts = (
        [None]
        if not context_features
        else [torch.tensor([0.3, -1.2], dtype=torch.float64), torch.tensor([-2.0, 0.5], dtype=torch.float64)]
    )
    masses = []
    for context in contexts:
        given = None if context is None else context.expand(grid.shape[0], -1)
        with torch.no_grad():
            density = flow.log_prob(grid, given).exp()
        masses.append(float(torch.trapezoid(density, grid[:, 0])))
    assert masses == pytest.approx([1.0] * len(masses), abs=2e-3)
    if context_features:  # the context changes the density
        with torch.no_grad():
            a = flow.log_prob(grid[::1000], contexts[0].expand(81, -1))
            b = flow.log_prob(grid[::1000], contexts[1].expand(81, -1))
        assert not torch.allclose(a, b)


@pytest.mark.parametrize("name", list(PRESETS))
def test_one_feature_presets_invert_and_train(name: str) -> None:
    flow = _perturbed(PRESETS[name](0))
    x = torch.randn(64, 1, dtype=torch.float64) * 2 + 1
    torch.testing.assert_close(flow.decode(flow.encode(x)), x, rtol=1e-6, atol=1e-6)
    samples = flow.sample(5)
    assert samples.shape == (5, 1)
    (-flow.log_prob(x).mean()).backward()
    trained = [p for p in flow.parameters() if p.grad is not None and bool(p.grad.abs().sum() > 0)]
    assert len(trained) >= 2  # the element-wise layers' parameters learn, not only the base


def test_the_gaussian_baseline_works_for_one_feature() -> None:
    flow = _perturbed(gaussian(1))
    grid = torch.linspace(-60.0, 60.0, 60_001, dtype=torch.float64)[:, None]
    with torch.no_grad():
        mass = float(torch.trapezoid(flow.log_prob(grid).exp(), grid[:, 0]))
    assert mass == pytest.approx(1.0, abs=1e-3)


@pytest.mark.slow
def test_the_estimator_fits_one_column_with_the_default_model() -> None:
    """`DensityEstimator().fit(x[:, None])` (the default NSF) fits a 1-D normal: its mean log density on
    fresh rows is near the entropy of N(2, 0.5^2), 0.5 log(2 pi e 0.25) = 0.726 nats."""
    rng = np.random.default_rng(0)
    x = rng.normal(2.0, 0.5, size=(2000, 1))
    estimator = flows.DensityEstimator(transforms=2, hidden_features=[16, 16], max_epochs=10, num_threads=1)
    estimator.fit(x)
    score = float(np.mean(estimator.score_samples(rng.normal(2.0, 0.5, size=(4000, 1)))))
    assert score == pytest.approx(-0.726, abs=0.08)
    assert estimator.sample(7, random_state=0).shape == (7, 1)
