"""`FullGaussianMixture` against float64 closed forms (scipy's multivariate normal, scikit-learn's
GaussianMixture), its reduction to `StandardNormal` at one component, sample moments, gradients and errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats

import flows
from flows.distributions import StandardNormal, make_base
from flows.full_mixture import FullGaussianMixture


def random_mixture(components: int, features: int, seed: int = 0) -> tuple[np.ndarray, ...]:
    """Weights `(K,)`, means `(K, D)` and well-conditioned random covariances `(K, D, D)`, float64."""
    rng = np.random.default_rng(seed)
    weights = rng.uniform(0.2, 1.0, components)
    weights /= weights.sum()
    means = rng.normal(0, 2, (components, features))
    factors = rng.normal(0, 0.6, (components, features, features))
    covariances = factors @ factors.transpose(0, 2, 1) + 0.3 * np.eye(features)
    return weights, means, covariances


def closed_form(z: np.ndarray, weights: np.ndarray, means: np.ndarray, covariances: np.ndarray) -> np.ndarray:
    densities = [w * stats.multivariate_normal(m, c).pdf(z) for w, m, c in zip(weights, means, covariances)]
    return np.log(np.sum(densities, axis=0))


@pytest.mark.parametrize("components,features", [(1, 1), (1, 3), (3, 2), (4, 5)])
def test_log_prob_matches_the_closed_form_in_float64(components: int, features: int) -> None:
    weights, means, covariances = random_mixture(components, features)
    mixture = FullGaussianMixture(features, components).double()
    mixture.set_parameters(torch.as_tensor(weights), torch.as_tensor(means), torch.as_tensor(covariances))
    z = np.random.default_rng(1).normal(0, 2.5, (50, features))
    got = mixture.log_prob(torch.as_tensor(z)).detach().numpy()
    np.testing.assert_allclose(got, closed_form(z, weights, means, covariances), rtol=1e-10, atol=1e-10)
    scale = mixture.scale_tril().detach()
    np.testing.assert_allclose((scale @ scale.transpose(-1, -2)).numpy(), covariances, rtol=1e-12, atol=1e-12)


def test_log_prob_handles_any_batch_shape() -> None:
    weights, means, covariances = random_mixture(2, 3)
    mixture = FullGaussianMixture(3, 2).double()
    mixture.set_parameters(torch.as_tensor(weights), torch.as_tensor(means), torch.as_tensor(covariances))
    z = torch.randn(4, 5, 3, dtype=torch.float64)
    flat = mixture.log_prob(z.reshape(20, 3))
    assert mixture.log_prob(z).shape == (4, 5)
    torch.testing.assert_close(mixture.log_prob(z).reshape(20), flat)
    assert mixture.log_prob(z[0, 0]).shape == ()


def test_a_fitted_scikit_learn_mixture_scores_the_same() -> None:
    sklearn_mixture = pytest.importorskip("sklearn.mixture")
    weights, means, covariances = random_mixture(3, 4, seed=2)
    rng = np.random.default_rng(3)
    counts = rng.multinomial(600, weights)
    x = np.concatenate([rng.multivariate_normal(m, c, n) for m, c, n in zip(means, covariances, counts)])
    fitted = sklearn_mixture.GaussianMixture(3, covariance_type="full", random_state=0).fit(x)
    mixture = FullGaussianMixture(4, 3).double()
    mixture.set_parameters(
        torch.as_tensor(fitted.weights_), torch.as_tensor(fitted.means_), torch.as_tensor(fitted.covariances_)
    )
    got = mixture.log_prob(torch.as_tensor(x)).detach().numpy()
    np.testing.assert_allclose(got, fitted.score_samples(x), rtol=1e-9, atol=1e-9)


def test_one_fresh_component_is_the_standard_normal() -> None:
    mixture, normal = FullGaussianMixture(3, 1), StandardNormal(3)
    z = torch.randn(100, 3)
    torch.testing.assert_close(mixture.log_prob(z), normal.log_prob(z), rtol=0, atol=1e-6)
    torch.manual_seed(5)
    drawn = mixture.sample((7, 2))
    torch.manual_seed(5)
    assert torch.equal(drawn, normal.sample((7, 2)))
    assert isinstance(make_base("gmm", 3), FullGaussianMixture)
    assert make_base("gmm", 3, components=4).components == 4


def test_sample_moments_match_the_mixture() -> None:
    weights, means, covariances = random_mixture(3, 2, seed=4)
    mixture = FullGaussianMixture(2, 3).double()
    mixture.set_parameters(torch.as_tensor(weights), torch.as_tensor(means), torch.as_tensor(covariances))
    torch.manual_seed(0)
    samples = mixture.sample(200_000).numpy()
    mean = weights @ means
    second = np.einsum("k,kij->ij", weights, covariances + np.einsum("ki,kj->kij", means, means))
    np.testing.assert_allclose(samples.mean(0), mean, atol=0.03)
    np.testing.assert_allclose(np.cov(samples.T), second - np.outer(mean, mean), rtol=0.03, atol=0.03)


def test_context_batch_enters_the_sample_shape_and_gradients_reach_every_parameter() -> None:
    mixture = FullGaussianMixture(2, 3)
    context = torch.randn(4, 5)
    assert mixture.sample(6, context).shape == (6, 4, 2)
    z = mixture.rsample(64)
    (mixture.log_prob(z.detach()).sum() + z.square().sum()).backward()
    for name, parameter in mixture.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name


def test_bad_parameters_are_errors_naming_them() -> None:
    mixture = FullGaussianMixture(2, 2)
    weights, means = torch.ones(2), torch.zeros(2, 2)
    with pytest.raises(ValueError, match="covariances must have shape"):
        mixture.set_parameters(weights, means, torch.eye(2))
    with pytest.raises(ValueError, match="not positive definite"):
        mixture.set_parameters(weights, means, torch.stack([torch.eye(2), -torch.eye(2)]))
    with pytest.raises(ValueError, match="weights must be positive"):
        mixture.set_parameters(torch.tensor([1.0, 0.0]), means, torch.eye(2).expand(2, 2, 2))
    with pytest.raises(ValueError, match="components"):
        FullGaussianMixture(2, 0)
    with pytest.raises(ValueError, match="vectors"):
        FullGaussianMixture((2, 3), 1)


def test_a_preset_with_the_mixture_base_round_trips_its_state_dict() -> None:
    flow = flows.presets.NSF(features=3, transforms=2, hidden_features=(8,), base="gmm", components=2)
    weights, means, covariances = random_mixture(2, 3)
    flow.base.set_parameters(torch.as_tensor(weights), torch.as_tensor(means), torch.as_tensor(covariances))
    copy = flows.presets.NSF(features=3, transforms=2, hidden_features=(8,), base="gmm", components=2)
    copy.load_state_dict(flow.state_dict())
    x = torch.randn(10, 3)
    torch.testing.assert_close(copy.log_prob(x), flow.log_prob(x))
    with pytest.raises(ValueError, match="components"):
        flows.presets.NSF(features=3, components=2)  # a normal base takes no components
