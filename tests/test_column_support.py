"""`ColumnSupport` alone: closed forms, autograd Jacobians on the support, values outside it, samples inside."""

from __future__ import annotations

import math

import pytest
import torch

from flows import Chain, ColumnSupport, Flow, StandardNormal
from tests.helpers import jacobian_logdet

INF = math.inf
LOW = [-INF, 0.0, -INF, 0.0, -2.0]
HIGH = [INF, INF, 5.0, 100.0, -1.0]


def _support() -> ColumnSupport:
    return ColumnSupport(
        torch.tensor(LOW), torch.tensor(HIGH), torch.tensor([1.0, 0.5, 2.0, 1.0, 1.0])
    ).double()


def _inside(n: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    u = torch.rand(n, 5, generator=generator, dtype=torch.float64)
    return torch.stack(
        [
            10 * u[:, 0] - 5,
            3 * u[:, 1] + 1e-3,
            5 - 4 * u[:, 2] - 1e-3,
            98 * u[:, 3] + 1,
            -2 + u[:, 4].clamp(0.01, 0.99),
        ],
        dim=1,
    )


def test_closed_forms_in_float64() -> None:
    x = _inside(6)
    u, _ = _support()(x)
    torch.testing.assert_close(u[:, 0], x[:, 0])
    torch.testing.assert_close(u[:, 1], 0.5 * torch.log(torch.expm1(x[:, 1] / 0.5)))
    torch.testing.assert_close(u[:, 2], -2.0 * torch.log(torch.expm1((5.0 - x[:, 2]) / 2.0)))
    torch.testing.assert_close(u[:, 3], torch.logit(x[:, 3] / 100.0))
    torch.testing.assert_close(u[:, 4], torch.logit(x[:, 4] + 2.0))


def test_ladj_matches_autograd_on_the_support_both_ways() -> None:
    support = _support()
    x = _inside(4)
    u, ladj = support(x)
    x_back, ladj_inverse = support.inverse(u)
    torch.testing.assert_close(x_back, x, atol=1e-9, rtol=1e-9)
    for i in range(x.shape[0]):
        expected = jacobian_logdet(lambda v: support(v)[0], x[i], (5,))
        torch.testing.assert_close(ladj[i], expected, atol=1e-9, rtol=1e-9)
        expected_inverse = jacobian_logdet(lambda v: support.inverse(v)[0], u[i], (5,))
        torch.testing.assert_close(ladj_inverse[i], expected_inverse, atol=1e-9, rtol=1e-9)


def test_far_latents_stay_inside_and_outside_values_score_minus_inf() -> None:
    flow = Flow(Chain(ColumnSupport(torch.tensor(LOW), torch.tensor(HIGH))), StandardNormal((5,)))
    samples = flow.sample((2000,)) * 1.0
    far = flow.decode(50.0 * torch.randn(2000, 5))  # float32 latents far out: saturate at a bound at worst
    for values in (samples, far):
        assert torch.isfinite(values).all()
        assert bool((values >= torch.tensor(LOW)).all() and (values <= torch.tensor(HIGH)).all())
    assert bool(flow.transform[0].contains(samples).all())
    outside = torch.tensor(
        [[0.0, -0.1, 1.0, 50.0, -1.5], [0.0, 1.0, 6.0, 50.0, -1.5], [0.0, 1.0, 1.0, 50.0, -1.0]]
    )
    assert not bool(flow.transform[0].contains(outside).any())
    assert torch.equal(flow.log_prob(outside), torch.full((3,), -INF))


def test_density_integrates_to_one_on_the_support() -> None:
    """A standard normal pushed onto (0, inf) and onto (0, 100): quadrature of exp(log_prob) in user units."""
    for low, high, upper in ((0.0, INF, 60.0), (0.0, 100.0, 100.0)):
        flow = Flow(
            ColumnSupport(torch.tensor([low]), torch.tensor([high]), torch.tensor([3.0])),
            StandardNormal((1,)),
        )
        flow = flow.double()
        grid = torch.linspace(1e-9, upper - 1e-9, 400_001, dtype=torch.float64)
        density = flow.log_prob(grid[:, None]).exp()
        assert float(torch.trapezoid(density, grid)) == pytest.approx(1.0, abs=1e-4)


def test_bad_bounds_are_refused() -> None:
    with pytest.raises(ValueError, match="low < high"):
        ColumnSupport(torch.tensor([1.0]), torch.tensor([0.0]))
    with pytest.raises(ValueError, match="scale must be positive"):
        ColumnSupport(torch.tensor([0.0]), torch.tensor([INF]), torch.tensor([0.0]))
    with pytest.raises(ValueError, match="same shape"):
        ColumnSupport(torch.tensor([0.0]), torch.tensor([INF, INF]))
