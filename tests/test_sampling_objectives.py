"""Reverse-KL objectives: exact values at q = p, unbiased path and reparameterised gradients against the
closed-form Gaussian KL, zero-density samples, and errors for bad targets."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from flows.presets import NSF
from flows.targets import FunctionTarget
from flows.training.registry import gaussian
from flows.training.sampling_objectives import reverse_kl_loss, validation_log_weights


def _gradient(flow: torch.nn.Module, loss: torch.Tensor) -> torch.Tensor:
    grads = torch.autograd.grad(loss, [p for p in flow.parameters()], allow_unused=True)
    return torch.cat(
        [
            torch.zeros_like(p).flatten() if g is None else g.flatten()
            for p, g in zip(flow.parameters(), grads)
        ]
    )


def _tiny_nsf() -> torch.nn.Module:
    torch.manual_seed(0)
    flow = NSF(2, transforms=2, hidden_features=(8,), bins=4).double()
    with torch.no_grad():  # move away from the identity so that the flow is not a standard normal
        for p in flow.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return flow


@pytest.mark.parametrize("make_flow", [lambda: gaussian(2).double(), _tiny_nsf])
def test_at_the_optimum_the_path_gradient_vanishes_and_the_loss_is_minus_log_z(make_flow) -> None:
    flow = make_flow()
    frozen = copy.deepcopy(flow).requires_grad_(False)
    target = FunctionTarget(lambda x: frozen.log_prob(x) + 1.7, 2)  # p~ = e^1.7 q exactly
    torch.manual_seed(1)
    path = reverse_kl_loss(flow, target, 256, "path")
    assert path.loss.item() == pytest.approx(-1.7, abs=1e-9)
    assert torch.allclose(path.log_w, torch.full((256,), 1.7, dtype=torch.float64), atol=1e-9)
    assert _gradient(flow, path.loss).abs().max() < 1e-9
    torch.manual_seed(1)
    reparam = reverse_kl_loss(flow, target, 256, "reparam")
    assert reparam.loss.item() == pytest.approx(-1.7, abs=1e-9)
    assert _gradient(flow, reparam.loss).abs().max() > 1e-4  # the score term: zero mean, not zero


def _closed_form_loss(
    flow: torch.nn.Module, mean: torch.Tensor, cov: torch.Tensor, log_z: float
) -> torch.Tensor:
    """KL(q || N(mean, cov)) - log Z for the affine flow q = N(mu, A A^T), as a function of its parameters."""
    d = mean.numel()
    points = torch.cat([torch.zeros(1, d, dtype=torch.float64), torch.eye(d, dtype=torch.float64)])
    images = flow.transform.inverse(points)[0]
    mu, a = images[0], (images[1:] - images[0]).T
    precision = torch.linalg.inv(cov)
    kl = 0.5 * (
        torch.trace(precision @ a @ a.T)
        + (mean - mu) @ precision @ (mean - mu)
        - d
        + torch.logdet(cov)
        - torch.logdet(a @ a.T)
    )
    return kl - log_z


@pytest.mark.parametrize("gradient", ["reparam", "path"])
def test_reverse_kl_gradients_are_unbiased_for_a_gaussian_target(gradient: str) -> None:
    torch.manual_seed(3)
    flow = gaussian(2).double()
    with torch.no_grad():
        for p in flow.parameters():
            p.add_(0.2 * torch.randn_like(p))
    mean = torch.tensor([1.0, -0.5], dtype=torch.float64)
    cov = torch.tensor([[2.0, 0.6], [0.6, 1.0]], dtype=torch.float64)
    normal = torch.distributions.MultivariateNormal(mean, cov)
    target = FunctionTarget(lambda x: normal.log_prob(x) + 0.4, 2)
    exact = _gradient(flow, _closed_form_loss(flow, mean, cov, 0.4))
    torch.manual_seed(4)
    loss = reverse_kl_loss(flow, target, 200_000, gradient)
    assert loss.loss.item() == pytest.approx(_closed_form_loss(flow, mean, cov, 0.4).item(), abs=0.02)
    estimate = _gradient(flow, loss.loss)
    assert torch.linalg.norm(estimate - exact) < 0.03 * torch.linalg.norm(exact) + 1e-3


def test_nan_and_infinite_target_values_are_zero_density_and_never_nan() -> None:
    flow = gaussian(2).double()
    normal = torch.distributions.MultivariateNormal(
        torch.zeros(2, dtype=torch.float64), torch.eye(2, dtype=torch.float64)
    )

    def partly_undefined(x: torch.Tensor) -> torch.Tensor:
        value = normal.log_prob(x)
        value = torch.where(
            x[:, 0] > 0.5, torch.sqrt(-torch.ones_like(value)), value
        )  # NaN with a NaN gradient
        return torch.where(x[:, 1] > 1.5, torch.full_like(value, math.inf), value)

    target = FunctionTarget(partly_undefined, 2)
    for gradient in ("reparam", "path"):
        torch.manual_seed(0)
        result = reverse_kl_loss(flow, target, 1000, gradient)
        torch.manual_seed(0)
        x = flow.rsample((1000,))
        expected_bad = int(((x[:, 0] > 0.5) | (x[:, 1] > 1.5)).sum())
        assert result.zero_density == expected_bad > 100
        assert torch.isfinite(result.loss)
        assert int(torch.isinf(result.log_w).sum()) == expected_bad
        assert torch.isfinite(_gradient(flow, result.loss)).all()


def test_bad_targets_are_clear_errors() -> None:
    flow = gaussian(2)
    with pytest.raises(ValueError, match=r"shape \(8,\).*got \(8, 2\)"):
        reverse_kl_loss(flow, FunctionTarget(lambda x: x, 2), 8)
    with pytest.raises(ValueError, match="not differentiable"):
        reverse_kl_loss(flow, FunctionTarget(lambda x: x.detach().sum(1), 2), 8, "path")
    with pytest.raises(ValueError, match="'reparam' or 'path', got 'score'"):
        reverse_kl_loss(flow, FunctionTarget(lambda x: x.sum(1), 2), 8, "score")


def test_validation_weights_are_reproducible_and_leave_the_global_rng_alone() -> None:
    flow = gaussian(2)
    target = FunctionTarget(lambda x: -0.5 * (x**2).sum(1), 2)
    torch.manual_seed(0)
    before = torch.rand(1)
    torch.manual_seed(0)
    first = validation_log_weights(flow, target, 64, seed=5)
    assert torch.equal(torch.rand(1), before)
    assert torch.equal(first, validation_log_weights(flow, target, 64, seed=5))
    assert not torch.equal(first, validation_log_weights(flow, target, 64, seed=6))


def test_annealing_schedule_and_path_endpoints() -> None:
    from flows.training.sampling_objectives import AnnealedTarget, annealing_beta

    assert annealing_beta(0.0, 0.5, 0.01) == pytest.approx(0.01)
    assert annealing_beta(0.25, 0.5, 0.01) == pytest.approx(0.1)  # geometric: sqrt(0.01)
    assert annealing_beta(0.5, 0.5, 0.01) == 1.0 and annealing_beta(0.3, 0.0, 0.01) == 1.0
    target = FunctionTarget(lambda x: -(x**4).sum(1), 2)
    x = torch.randn(7, 2, dtype=torch.float64)
    base = torch.distributions.Normal(0.0, 3.0).log_prob(x).sum(1)
    torch.testing.assert_close(AnnealedTarget(target, 0.0, 3.0).log_prob(x), base)
    torch.testing.assert_close(AnnealedTarget(target, 1.0, 3.0).log_prob(x), target.log_prob(x))
    torch.testing.assert_close(
        AnnealedTarget(target, 0.3, 3.0).log_prob(x), 0.3 * target.log_prob(x) + 0.7 * base
    )


@pytest.mark.parametrize("gradient", ["reparam", "path"])
def test_ranks_shards_average_to_the_one_process_gradient(gradient: str) -> None:
    """Under one seed, the mean of `world` ranks' gradients on their shards equals one process's gradient
    on the global batch (what DDP's averaging needs), and the ranks' samples are disjoint rows of it."""
    flow = _tiny_nsf()
    target = FunctionTarget(lambda x: -0.5 * (x**2).sum(-1) - x[:, 0] ** 4, 2)
    torch.manual_seed(3)
    single = reverse_kl_loss(flow, target, 96, gradient)
    expected = _gradient(flow, single.loss)
    shards = []
    for rank in range(3):
        torch.manual_seed(3)
        shards.append(reverse_kl_loss(flow, target, 32, gradient, world=3, rank=rank))
    averaged = sum(_gradient(flow, s.loss) for s in shards) / 3
    torch.testing.assert_close(averaged, expected, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(torch.cat([s.log_w for s in shards]).sort().values, single.log_w.sort().values)
    assert not torch.equal(shards[0].log_w, shards[1].log_w)
