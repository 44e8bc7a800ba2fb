"""`flows.integrations.sbi`: flows presets as sbi 0.27 density estimators (NPE, NLE), against closed forms.

A Gaussian linear simulator x = A theta + s * noise with a N(0, I) prior has the posterior
N(C A^T x / s^2, C) with C = (I + A^T A / s^2)^-1 and the likelihood N(A theta, s^2 I).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn
from torch.distributions import MultivariateNormal

pytest.importorskip("sbi")

from sbi.inference import NLE, NPE  # noqa: E402

from flows.integrations.sbi import FlowsDensityEstimator, flows_estimator  # noqa: E402

A = torch.tensor([[1.0, 0.5], [-0.3, 1.2], [0.8, -0.6]])
NOISE = 0.5
PRIOR = MultivariateNormal(torch.zeros(2), torch.eye(2))


def simulate(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    theta = torch.randn(n, 2, generator=generator)
    return theta, theta @ A.T + NOISE * torch.randn(n, 3, generator=generator)


def test_shapes_follow_sbi_conventions() -> None:
    torch.manual_seed(0)
    theta, x = simulate(64, 0)
    embedding = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 4))
    estimator = flows_estimator("nsf", embedding_net=embedding, transforms=2, hidden_features=(16, 16))(
        theta, x
    )
    assert isinstance(estimator, FlowsDensityEstimator)
    assert estimator.input_shape == (2,) and estimator.condition_shape == (3,)
    assert estimator.embedding_net is estimator.net.embedding
    # log_prob (sample, batch, 2) given (batch, 3) -> (sample, batch), equal to the flow's own per pair
    inputs = torch.randn(5, 4, 2)
    log_prob = estimator.log_prob(inputs, x[:4])
    assert log_prob.shape == (5, 4)
    own = estimator.net.log_prob(inputs.reshape(20, 2), x[:4].repeat(5, 1)).reshape(5, 4)
    torch.testing.assert_close(log_prob, own)
    assert estimator.log_prob(inputs[0], x[:4]).shape == (1, 4)  # (batch, 2): a sample dimension of 1
    torch.testing.assert_close(estimator.loss(inputs[0], x[:4]), -log_prob[0])
    # sample: sample_shape + (batch,) + input_shape; its log_prob agrees with sample_and_log_prob
    assert estimator.sample(torch.Size([7]), x[:3]).shape == (7, 3, 2)
    samples, log_p = estimator.sample_and_log_prob(torch.Size([6]), x[:3])
    assert samples.shape == (6, 3, 2) and log_p.shape == (6, 3)
    torch.testing.assert_close(
        estimator.log_prob(samples.detach(), x[:3]), log_p.detach(), atol=1e-4, rtol=1e-4
    )
    # the input's z-scoring is inside the flow: log_prob is a density in theta's units (the Jacobian counted)
    scale = flows_estimator("maf", z_score_condition="none", transforms=1)(10.0 * theta, x)
    plain = flows_estimator("maf", z_score_input="none", z_score_condition="none", transforms=1)(theta, x)
    scale.net.transform.bijectors[1].load_state_dict(plain.net.transform.state_dict())
    scale.net.base.load_state_dict(plain.net.base.state_dict())
    mean, std = (10.0 * theta).mean(0), (10.0 * theta).std(0)
    z = torch.randn(3, 2)
    torch.testing.assert_close(
        scale.log_prob(mean + std * z, x[:3])[0],
        plain.log_prob(z, x[:3])[0] - std.log().sum(),
        atol=1e-4,
        rtol=1e-4,
    )


def test_wrong_arguments_are_clear_errors() -> None:
    with pytest.raises(ValueError, match="model must be one of"):
        flows_estimator("glow")
    with pytest.raises(ValueError, match="estimate must be"):
        flows_estimator("nsf", estimate="ratio")
    theta, x = simulate(8, 0)
    with pytest.raises(ValueError, match="flatten the inputs"):
        flows_estimator("maf", estimate="likelihood")(theta, x.reshape(8, 3, 1))


@pytest.mark.slow
def test_npe_recovers_the_gaussian_linear_posterior(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # sbi writes its tensorboard logs under ./sbi-logs
    torch.manual_seed(0)
    theta, x = simulate(1500, 1)
    embedding = nn.Sequential(nn.Linear(3, 16), nn.Tanh(), nn.Linear(16, 8))
    builder = flows_estimator("maf", embedding_net=embedding, transforms=3, hidden_features=(32, 32))
    npe = NPE(PRIOR, density_estimator=builder, show_progress_bars=False)
    npe.append_simulations(theta, x).train(max_num_epochs=80, training_batch_size=128, learning_rate=2e-3)
    posterior = npe.build_posterior()
    for x_o in (torch.tensor([[0.7, -0.4, 1.1]]), torch.tensor([[-1.0, 0.5, 0.2]])):
        covariance = torch.linalg.inv(torch.eye(2) + A.T @ A / NOISE**2)
        mean = covariance @ A.T @ x_o[0] / NOISE**2
        samples = posterior.sample((4000,), x=x_o, show_progress_bars=False)
        # posterior sd ~ 0.45 and 0.4; the prior (what an adapter that ignores x gives) is N(0, I)
        assert torch.allclose(samples.mean(0), mean, atol=0.12), (samples.mean(0), mean)
        torch.testing.assert_close(torch.cov(samples.T), covariance, atol=0.05, rtol=0.25)
        # the posterior's density at its samples against the closed form (within a tenth of a nat on average)
        gap = posterior.log_prob(samples[:500], x=x_o) - MultivariateNormal(mean, covariance).log_prob(
            samples[:500]
        )
        assert abs(float(gap.mean())) < 0.15, float(gap.mean())


@pytest.mark.slow
def test_nle_recovers_the_gaussian_linear_likelihood(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # sbi writes its tensorboard logs under ./sbi-logs
    torch.manual_seed(0)
    theta, x = simulate(1500, 2)
    builder = flows_estimator("maf", estimate="likelihood", transforms=3, hidden_features=(32, 32))
    nle = NLE(PRIOR, density_estimator=builder, show_progress_bars=False)
    likelihood = nle.append_simulations(theta, x).train(max_num_epochs=40, training_batch_size=128)
    assert likelihood.input_shape == (3,) and likelihood.condition_shape == (2,)
    test_theta, test_x = simulate(400, 3)
    with torch.no_grad():
        learned = likelihood.log_prob(test_x.unsqueeze(0), test_theta)[0]
    true = MultivariateNormal(test_theta @ A.T, NOISE**2 * torch.eye(3)).log_prob(test_x)
    # a likelihood that ignored theta would be off by several nats per row
    assert float((learned - true).abs().mean()) < 0.3, float((learned - true).abs().mean())
    assert abs(float((learned - true).mean())) < 0.15
