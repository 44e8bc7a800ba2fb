"""`Flow.distribution()` inside Pyro models (#14): observed sites, plates, and a flow as an SVI guide.

Skipped without `pyro-ppl` (the `interop` extra).
"""

from __future__ import annotations

import pytest
import torch

import flows

pyro = pytest.importorskip("pyro")
import pyro.distributions as dist  # noqa: E402
import pyro.poutine as poutine  # noqa: E402
from pyro.distributions.torch_distribution import TorchDistributionMixin  # noqa: E402
from pyro.infer import SVI, Trace_ELBO  # noqa: E402

from flows.torch_distribution import FlowDistribution  # noqa: E402


class PyroFlow(FlowDistribution, TorchDistributionMixin):
    """Pyro's scoring methods (`score_parts`, ...) on top: what an SVI guide site needs."""


def test_an_observed_site_scores_the_flows_log_prob_under_a_plate() -> None:
    torch.manual_seed(0)
    flow = flows.presets.MAF(features=2, transforms=2, hidden_features=(16, 16)).double()
    data = torch.randn(10, 2, dtype=torch.float64)

    def model() -> None:
        with pyro.plate("rows", 10):
            pyro.sample("x", flow.distribution(), obs=data)

    trace = poutine.trace(model).get_trace()
    trace.compute_log_prob()
    torch.testing.assert_close(trace.nodes["x"]["log_prob"], flow.log_prob(data))
    torch.testing.assert_close(trace.log_prob_sum(), flow.log_prob(data).sum())


def test_a_latent_site_of_a_model_samples_the_flow_and_pyros_plates_expand_it() -> None:
    torch.manual_seed(0)
    flow = flows.presets.NSF(features=2, transforms=2, hidden_features=(16, 16))

    def model() -> torch.Tensor:
        pyro.sample("z", flow.distribution())  # calling the distribution draws the site's value
        with pyro.plate("rows", 7):  # Pyro broadcasts its own distributions over plates (through expand)
            return pyro.sample("w", PyroFlow(flow))

    trace = poutine.trace(model).get_trace()
    z, w = trace.nodes["z"]["value"], trace.nodes["w"]["value"]
    assert z.shape == (2,) and w.shape == (7, 2) and not torch.equal(w[0], w[1])
    trace.compute_log_prob()
    torch.testing.assert_close(trace.nodes["z"]["log_prob"], flow.log_prob(z))
    torch.testing.assert_close(trace.nodes["w"]["log_prob"], flow.log_prob(w))


def test_a_conditional_flow_has_the_contexts_batch_shape_in_a_plate() -> None:
    torch.manual_seed(0)
    flow = flows.presets.NSF(features=2, context_features=3, transforms=2, hidden_features=(16, 16))
    context = torch.randn(5, 3)

    def model() -> torch.Tensor:
        with pyro.plate("contexts", 5):
            return pyro.sample("y", flow.distribution(context))

    trace = poutine.trace(model).get_trace()
    y = trace.nodes["y"]["value"]
    assert y.shape == (5, 2)
    trace.compute_log_prob()
    torch.testing.assert_close(trace.nodes["y"]["log_prob"], flow.log_prob(y, context))


@pytest.mark.slow
def test_a_flow_guide_fits_a_gaussian_posterior_with_svi() -> None:
    """Prior N(0, I), one observation y ~ N(z, 0.5^2 I): the posterior is N(0.8 y, 0.2 I) in closed form."""
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    y = torch.tensor([1.0, -2.0])
    flow = flows.presets.RealNVP(features=2, transforms=4, hidden_features=(16, 16))

    def model() -> None:
        z = pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))
        pyro.sample("y", dist.Normal(z, 0.5).to_event(1), obs=y)

    def guide() -> None:
        pyro.module("flow", flow)
        pyro.sample("z", PyroFlow(flow))

    svi = SVI(
        model, guide, pyro.optim.Adam({"lr": 1e-2}), Trace_ELBO(num_particles=16, vectorize_particles=True)
    )
    for _ in range(600):
        svi.step()
    samples = flow.sample((20_000,))
    torch.testing.assert_close(samples.mean(0), 0.8 * y, atol=0.08, rtol=0)
    torch.testing.assert_close(samples.var(0), torch.full((2,), 0.2), atol=0.05, rtol=0)
