"""The path gradient from one sampling pass (`flows.path_gradient`): the carried score against autograd on
`log q`, the same gradient as the two-pass estimator, and the forward-KL path gradient (zero at q = p,
unbiased against the closed-form Gaussian KL)."""

from __future__ import annotations

import copy

import pytest
import torch

from flows.bijectors.elementwise import Standardize
from flows.core import Chain
from flows.distributions import DiagonalNormal
from flows.flow import Flow
from flows.path_gradient import sample_with_score
from flows.presets import MAF, NSF, RealNVP
from flows.targets import FunctionTarget
from flows.targets.base import checked_log_prob
from flows.training.registry import gaussian
from flows.training.sampling_objectives import forward_kl_path_loss, reverse_kl_loss

D = 4


def _scaled_nsf() -> Flow:
    inner = NSF(D, transforms=2, hidden_features=(8,), bins=4)
    return Flow(Chain(Standardize(torch.zeros(D), torch.full((D,), 3.0)), inner.transform), inner.base)


def _learned_base() -> Flow:
    return Flow(RealNVP(D, transforms=2, hidden_features=(8,)).transform, DiagonalNormal(D))


FLOWS = {
    "nsf": lambda: NSF(D, transforms=2, hidden_features=(8,), bins=4),
    "nsf-autoregressive": lambda: NSF(D, transforms=2, hidden_features=(8,), autoregressive=True),
    "realnvp": lambda: RealNVP(D, transforms=3, hidden_features=(8,)),
    "maf": lambda: MAF(D, transforms=2, hidden_features=(8,)),
    "nsf-scaled": _scaled_nsf,
    "learned-base": _learned_base,
}


def _perturbed(make) -> Flow:
    torch.manual_seed(0)
    flow = make().double()
    with torch.no_grad():  # away from the identity, so that every layer matters
        for p in flow.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return flow


def _gradient(flow: Flow, loss: torch.Tensor) -> torch.Tensor:
    grads = torch.autograd.grad(loss, list(flow.parameters()), allow_unused=True)
    return torch.cat(
        [
            torch.zeros_like(p).flatten() if g is None else g.flatten()
            for p, g in zip(flow.parameters(), grads)
        ]
    )


@pytest.mark.parametrize("name", list(FLOWS))
def test_the_carried_score_is_the_gradient_of_log_q(name: str) -> None:
    flow = _perturbed(FLOWS[name])
    torch.manual_seed(1)
    x, log_q, score = sample_with_score(flow, 32)
    leaf = x.detach().requires_grad_(True)
    exact = flow.log_prob(leaf)
    (expected,) = torch.autograd.grad(exact.sum(), leaf)
    torch.testing.assert_close(log_q, exact.detach(), atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(score, expected, atol=1e-9, rtol=1e-9)
    assert x.requires_grad and not score.requires_grad


@pytest.mark.parametrize("name", list(FLOWS))
def test_the_one_pass_path_gradient_equals_the_two_pass_one(name: str) -> None:
    flow = _perturbed(FLOWS[name])
    target = FunctionTarget(lambda x: -0.5 * ((x - 0.3) ** 2).sum(1) - 0.1 * (x**4).sum(1), D)
    torch.manual_seed(2)
    fast = reverse_kl_loss(flow, target, 64, "path")
    torch.manual_seed(2)
    x = flow.rsample((64,))
    detached = {k: p.detach() for k, p in flow.named_parameters()}
    log_q = torch.func.functional_call(flow, detached, (x,))
    two_pass = (log_q - checked_log_prob(target, x, differentiable=True)).mean()
    torch.testing.assert_close(fast.loss, two_pass.detach(), atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(_gradient(flow, fast.loss), _gradient(flow, two_pass), atol=1e-9, rtol=1e-8)


class _Sampled:
    """A Gaussian target N(mean, cov) + log_z with exact samples."""

    def __init__(self, mean: torch.Tensor, cov: torch.Tensor, log_z: float) -> None:
        self.normal = torch.distributions.MultivariateNormal(mean, cov)
        self.features, self.log_z = mean.numel(), log_z

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        return self.normal.log_prob(x) + self.log_z

    def sample(self, n: int) -> torch.Tensor:
        return self.normal.sample((n,))


def test_forward_kl_path_gradient_vanishes_at_the_optimum() -> None:
    flow = _perturbed(FLOWS["nsf"])
    frozen = copy.deepcopy(flow).requires_grad_(False)
    target = FunctionTarget(lambda x: frozen.log_prob(x) + 0.7, D)
    with torch.no_grad():
        x = frozen.sample((256,))
    path = forward_kl_path_loss(flow, target, x)
    torch.testing.assert_close(path, -frozen.log_prob(x).mean())
    assert _gradient(flow, path).abs().max() < 1e-9
    assert _gradient(flow, -flow.log_prob(x).mean()).abs().max() > 1e-3  # maximum likelihood: noise


def test_forward_kl_path_gradient_is_unbiased_for_a_gaussian_target() -> None:
    torch.manual_seed(3)
    flow = gaussian(2).double()
    with torch.no_grad():
        for p in flow.parameters():
            p.add_(0.2 * torch.randn_like(p))
    mean = torch.tensor([1.0, -0.5], dtype=torch.float64)
    cov = torch.tensor([[2.0, 0.6], [0.6, 1.0]], dtype=torch.float64)
    target = _Sampled(mean, cov, 0.4)
    points = torch.cat([torch.zeros(1, 2, dtype=torch.float64), torch.eye(2, dtype=torch.float64)])
    images = flow.transform.inverse(points)[0]
    mu, a = images[0], (images[1:] - images[0]).T
    sigma = a @ a.T
    precision = torch.linalg.inv(sigma)
    kl = 0.5 * (  # KL(p || q), q = N(mu, A A^T)
        torch.trace(precision @ cov)
        + (mu - mean) @ precision @ (mu - mean)
        - 2
        + torch.logdet(sigma)
        - torch.logdet(cov)
    )
    exact = _gradient(flow, kl)
    torch.manual_seed(4)
    estimate = _gradient(flow, forward_kl_path_loss(flow, target, target.sample(200_000)))
    assert torch.linalg.norm(estimate - exact) < 0.03 * torch.linalg.norm(exact) + 1e-3
