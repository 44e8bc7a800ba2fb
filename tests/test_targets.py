"""Built-in targets: densities against direct formulas, exact log-normalisers, the registry's errors."""

from __future__ import annotations

import math
import sys
import types

import pytest
import torch
from scipy import integrate, special, stats

from flows.targets import (
    DoubleWell,
    Funnel,
    GaussianMixture,
    ManyWell,
    PhiFour,
    checked_log_prob,
    make_target,
    quartic_log_normalizer,
)


def test_funnel_density_matches_scipy_and_its_samples() -> None:
    target = Funnel(features=10)
    x = target.sample(50, torch.Generator().manual_seed(0))
    expected = stats.norm(0, 3).logpdf(x[:, 0].numpy()) + stats.norm.logpdf(
        x[:, 1:].numpy(), scale=torch.exp(x[:, :1] / 2).numpy()
    ).sum(1)
    torch.testing.assert_close(target.log_prob(x), torch.as_tensor(expected), rtol=1e-10, atol=1e-10)
    assert target.log_normalizer == 0.0
    big = target.sample(20000, torch.Generator().manual_seed(1))
    assert abs(float(big[:, 0].std()) - 3.0) < 0.1


def test_funnel_integrates_to_one_in_two_dimensions() -> None:
    # x = e^{v/2} u on a grid of u: dx = e^{v/2} du, so the integrand is smooth on a fixed grid
    target = Funnel(features=2)
    v = torch.linspace(-30, 30, 3001, dtype=torch.float64)
    u = torch.linspace(-12, 12, 2401, dtype=torch.float64)
    vv, uu = torch.meshgrid(v, u, indexing="ij")
    xx = torch.exp(vv / 2) * uu
    density = torch.exp(target.log_prob(torch.stack([vv.flatten(), xx.flatten()], 1))).reshape(vv.shape)
    mass = torch.trapezoid(torch.trapezoid(density * torch.exp(vv / 2), u, dim=1), v)
    assert abs(float(mass) - 1.0) < 1e-9


def test_gmm40_means_are_fab_seeded_uniform_and_density_is_a_mixture() -> None:
    target = GaussianMixture()
    torch.manual_seed(0)  # FAB's PyTorch GMM: torch.manual_seed(seed); (torch.rand(40, 2) - 0.5) * 2 * 40
    expected_locs = ((torch.rand(40, 2) - 0.5) * 2 * 40).double()
    torch.testing.assert_close(target.locs, expected_locs)
    assert target.locs.abs().max() <= 40
    x = target.sample(30, torch.Generator().manual_seed(0))
    components = torch.stack(
        [torch.as_tensor(stats.multivariate_normal(m.numpy(), 1.0).logpdf(x.numpy())) for m in target.locs], 1
    )
    torch.testing.assert_close(target.log_prob(x), torch.logsumexp(components, 1) - math.log(40))
    # normalised: a grid integral over [-50, 50]^2 is 1
    grid = torch.linspace(-50, 50, 1001, dtype=torch.float64)
    xx, yy = torch.meshgrid(grid, grid, indexing="ij")
    mass = torch.exp(target.log_prob(torch.stack([xx.flatten(), yy.flatten()], 1))).sum() * 0.1**2
    assert abs(float(mass) - 1.0) < 1e-6


def test_quartic_quadrature_matches_closed_form_and_scipy() -> None:
    # ∫ exp(-x^4) dx = 2 Γ(5/4)
    assert abs(quartic_log_normalizer(1.0, 0.0, 0.0) - math.log(2 * special.gamma(1.25))) < 1e-12
    value, _ = integrate.quad(lambda x: math.exp(-(x**4 - 6 * x**2 - 0.5 * x)), -np_inf(), np_inf())
    assert abs(quartic_log_normalizer(1.0, -6.0, -0.5) - math.log(value)) < 1e-9


def np_inf() -> float:
    return math.inf


def test_double_and_many_well_normalisers_and_densities() -> None:
    well = DoubleWell()
    x = torch.tensor([[1.0, 2.0], [-1.5, 0.3]], dtype=torch.float64)
    expected = -(x[:, 0] ** 4 - 6 * x[:, 0] ** 2 - 0.5 * x[:, 0]) - 0.5 * x[:, 1] ** 2
    torch.testing.assert_close(well.log_prob(x), expected)
    # the 2-D normaliser by scipy's dblquad
    value, _ = integrate.dblquad(
        lambda y, x0: math.exp(float(well.log_prob(torch.tensor([[x0, y]], dtype=torch.float64)))),
        -8,
        8,
        -12,
        12,
        epsabs=1e-6,
    )
    assert abs(well.log_normalizer - math.log(value)) < 1e-6
    # exact samples: the mass of the left well against the quadrature
    grid = torch.linspace(-20, 0, 200_001, dtype=torch.float64)
    left = torch.trapezoid(torch.exp(-(grid**4 - 6 * grid**2 - 0.5 * grid)), grid)
    left = float(left) / math.exp(quartic_log_normalizer(1.0, -6.0, -0.5))
    samples = well.sample(200_000, torch.Generator().manual_seed(0))
    assert abs(float((samples[:, 0] < 0).double().mean()) - left) < 0.003
    assert abs(float(samples[:, 1].std()) - 1.0) < 0.01
    many = ManyWell(32)
    assert many.log_normalizer == pytest.approx(16 * well.log_normalizer, rel=1e-12)
    z = torch.randn(5, 32, dtype=torch.float64)
    torch.testing.assert_close(
        many.log_prob(z), sum(well.log_prob(z[:, 2 * i : 2 * i + 2]) for i in range(16))
    )
    drawn = many.sample(20_000, torch.Generator().manual_seed(1))  # every even coordinate is a well's x0
    assert drawn.shape == (20_000, 32)
    assert abs(float((drawn[:, 0::2] < 0).double().mean()) - left) < 0.003
    assert abs(float(drawn[:, 1::2].std()) - 1.0) < 0.01


def _adjacency(size: int) -> torch.Tensor:
    n = size * size
    a = torch.zeros(n, n, dtype=torch.float64)
    for i in range(size):
        for j in range(size):
            for di, dj in ((1, 0), (0, 1)):
                s, t = i * size + j, ((i + di) % size) * size + (j + dj) % size
                a[s, t] += 1
                a[t, s] += 1
    return a


def test_phi4_action_matches_a_loop_and_the_gaussian_case_is_exact() -> None:
    target = PhiFour(size=3, kappa=0.2, lam=0.5)
    phi = torch.randn(4, 9, dtype=torch.float64)
    expected = []
    for row in phi:
        f = row.reshape(3, 3)
        s = 0.0
        for i in range(3):
            for j in range(3):
                s += -2 * 0.2 * f[i, j] * (f[(i + 1) % 3, j] + f[i, (j + 1) % 3])
                s += (1 - 2 * 0.5) * f[i, j] ** 2 + 0.5 * f[i, j] ** 4
        expected.append(-s)
    torch.testing.assert_close(target.log_prob(phi), torch.stack(expected))
    assert target.log_normalizer is None
    # lambda = 0: -S = -phi^T (I - kappa A) phi, a Gaussian with precision 2 (I - kappa A)
    gaussian = PhiFour(size=4, kappa=0.1, lam=0.0)
    precision = 2 * (torch.eye(16, dtype=torch.float64) - 0.1 * _adjacency(4))
    phi = torch.randn(6, 16, dtype=torch.float64)
    torch.testing.assert_close(
        gaussian.log_prob(phi), -0.5 * torch.einsum("bi,ij,bj->b", phi, precision, phi)
    )


def test_registry_builds_by_name_and_imports_module_attr_only_when_named() -> None:
    assert isinstance(make_target("funnel", features=10), Funnel)
    assert make_target("many_well", features=8).log_normalizer == pytest.approx(
        4 * DoubleWell().log_normalizer
    )
    assert make_target("gmm40", seed=1).locs.shape == (40, 2)
    with pytest.raises(ValueError, match="unknown target 'funel'.*funnel"):
        make_target("funel")
    with pytest.raises(ValueError, match="module:attr"):
        make_target("os.system:")
    with pytest.raises(ValueError, match="module:attr"):
        make_target("a:b:c")
    with pytest.raises(ValueError, match="has 2 features, the config asks for 3"):
        make_target("double_well", features=3)
    module = types.ModuleType("user_targets_for_test")
    module.log_p = lambda x, shift=0.0: -0.5 * ((x - shift) ** 2).sum(1)
    sys.modules["user_targets_for_test"] = module
    try:
        target = make_target("user_targets_for_test:log_p", features=3, shift=1.0)
        assert target.features == 3
        torch.testing.assert_close(target.log_prob(torch.ones(2, 3)), torch.zeros(2))
        with pytest.raises(ValueError, match="give its dimension as features"):
            make_target("user_targets_for_test:log_p")
        with pytest.raises(ValueError, match="no attribute 'missing'"):
            make_target("user_targets_for_test:missing")
    finally:
        del sys.modules["user_targets_for_test"]


def test_checked_log_prob_refuses_wrong_shapes_and_non_differentiable_targets() -> None:
    x = torch.randn(4, 2, requires_grad=True)
    bad_shape = make_target("double_well")
    bad_shape.log_prob = lambda x: x.sum(1, keepdim=True)  # (batch, 1)
    with pytest.raises(ValueError, match=r"shape \(4,\).*got \(4, 1\)"):
        checked_log_prob(bad_shape, x)
    detached = make_target("double_well")
    detached.log_prob = lambda x: x.detach().sum(1)
    with pytest.raises(ValueError, match="not differentiable"):
        checked_log_prob(detached, x, differentiable=True)
