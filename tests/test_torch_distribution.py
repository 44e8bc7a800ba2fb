"""`Flow.distribution()`: a flow as a `torch.distributions.Distribution`, checked against a closed form."""

from __future__ import annotations

import pytest
import torch
from torch.distributions import MultivariateNormal

import flows
from flows.torch_distribution import FlowDistribution
from flows.training.registry import gaussian

Tensor = torch.Tensor


def _affine_gaussian() -> tuple[flows.Flow, Tensor, Tensor]:
    """A full-covariance Gaussian flow (one LU affine map to N(0, I)) and its mean and covariance."""
    torch.manual_seed(0)
    flow = gaussian(3).double()
    with torch.no_grad():
        for parameter in flow.parameters():
            parameter.add_(0.4 * torch.randn_like(parameter))
        zero = flow.encode(torch.zeros(1, 3, dtype=torch.float64))[0]
        weight = torch.stack(
            [flow.encode(torch.eye(3, dtype=torch.float64)[i : i + 1])[0] - zero for i in range(3)], 1
        )
    inverse = torch.linalg.inv(weight)  # z = W x + b  ->  x = W^-1 (z - b) ~ N(-W^-1 b, W^-1 W^-T)
    return flow, -inverse @ zero, inverse @ inverse.T


def test_the_distribution_of_an_affine_flow_is_its_gaussian() -> None:
    flow, mean, covariance = _affine_gaussian()
    distribution = flow.distribution()
    assert isinstance(distribution, torch.distributions.Distribution)
    assert distribution.batch_shape == () and distribution.event_shape == (3,)
    exact = MultivariateNormal(mean, covariance)
    x = exact.sample((100,))
    torch.testing.assert_close(distribution.log_prob(x), exact.log_prob(x))
    torch.manual_seed(1)
    samples = distribution.sample((200_000,))
    torch.testing.assert_close(samples.mean(0), mean, atol=0.02, rtol=0.0)
    torch.testing.assert_close(torch.cov(samples.T), covariance, atol=0.03, rtol=0.03)


def test_rsample_is_reparameterised_and_the_context_sets_the_batch_shape() -> None:
    torch.manual_seed(0)
    flow = flows.presets.NSF(features=2, context_features=3, transforms=1, hidden_features=(8,))
    context = torch.randn(4, 3)
    distribution = flow.distribution(context)
    assert distribution.batch_shape == (4,) and distribution.event_shape == (2,)
    x = distribution.rsample((5,))
    assert x.shape == (5, 4, 2)
    torch.testing.assert_close(distribution.log_prob(x), flow.log_prob(x, context))
    x.sum().backward()
    assert any(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in flow.parameters())
    with pytest.raises(ValueError, match="context must be a tensor"):
        FlowDistribution(flow, torch.tensor(1.0))


def test_validate_args_checks_the_event_shape() -> None:
    distribution = flows.presets.MAF(features=2, transforms=1, hidden_features=(8,)).distribution()
    distribution._validate_args = True
    with pytest.raises(ValueError):
        distribution.log_prob(torch.zeros(5, 3))
