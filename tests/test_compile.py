"""Every preset compiles with `torch.compile(fullgraph=True)`: no graph breaks in `log_prob`, in sampling,
or in a training step's loss, and the compiled results equal the eager ones.

`fullgraph=True` raises on the first graph break, so a passing compile is the assertion. The fast test
traces `log_prob` (the training loss's forward) and `decode` (the sampling inverse) with dynamo's `eager`
backend (tracing only: that is where graph breaks happen). The slow tests compile `sample` and the loss
with its gradient, a full AdamW training step with `aot_eager` (which also traces the backward), and one
real `inductor` compilation.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import Tensor

from flows.flow import Flow

FEATURES = 4
IMAGE = (2, 4, 4)


def _vector_presets() -> dict[str, Callable[[], Flow]]:
    from flows import presets

    small = {"transforms": 2, "hidden_features": (8, 8)}
    return {
        "maf": lambda: presets.MAF(FEATURES, **small),
        "nsf-coupling": lambda: presets.NSF(FEATURES, bins=4, **small),
        "nsf-autoregressive": lambda: presets.NSF(FEATURES, autoregressive=True, bins=4, **small),
        "realnvp": lambda: presets.RealNVP(FEATURES, **small),
    }


def _glow() -> Flow:
    from flows.presets_image import Glow

    return Glow(IMAGE, levels=2, steps=1, hidden_channels=8)


def _transformer_flows() -> dict[str, Callable[[], Flow]]:
    from flows.presets_transformer import Jet, TarFlow

    small = {"patch_size": 2, "channels": 8, "heads": 2}
    return {
        "tarflow": lambda: TarFlow(IMAGE, blocks=2, layers_per_block=1, **small),
        "jet": lambda: Jet(IMAGE, couplings=2, layers_per_coupling=1, **small),
    }


BASIC = ["maf", "nsf-coupling", "nsf-autoregressive", "realnvp", "glow"]
# The transformer flows (TarFlow, Jet) take 10 to 40 s each to trace on a CPU: their cases are slow, and
# the training-step test (whose gradients the sample-and-loss test already compares) leaves them out.
PRESETS = BASIC + [pytest.param(name, marks=pytest.mark.slow) for name in ("tarflow", "jet")]


def build(name: str) -> tuple[Flow, Tensor]:
    """A tiny preset with non-trivial parameters and a data batch for it."""
    torch.manual_seed(0)
    if name == "glow":
        flow, x = _glow(), torch.randn(3, *IMAGE)
        flow.initialize(x)
    elif name in ("tarflow", "jet"):
        flow, x = _transformer_flows()[name](), torch.randn(3, *IMAGE)
    else:
        flow, x = _vector_presets()[name](), torch.randn(3, FEATURES)
    with torch.no_grad():  # leave the identity initialisation so that every path is exercised
        for parameter in flow.parameters():
            parameter.add_(0.1 * torch.randn_like(parameter))
    return flow.eval(), x


def negative_log_likelihood(flow: Flow, x: Tensor) -> Tensor:
    return -flow.log_prob(x).mean()


def compiled(function: Callable, backend: str) -> Callable:
    torch._dynamo.reset()
    return torch.compile(function, fullgraph=True, backend=backend, dynamic=False)


@pytest.fixture(autouse=True)
def _reset_dynamo():
    yield
    torch._dynamo.reset()


@pytest.mark.parametrize("name", PRESETS)
def test_log_prob_and_inverse_have_no_graph_breaks(name: str) -> None:
    flow, x = build(name)
    log_prob = compiled(flow.log_prob, "eager")(x)
    torch.testing.assert_close(log_prob, flow.log_prob(x))

    z = flow.encode(x).detach()
    decoded = compiled(flow.decode, "eager")(z)
    torch.testing.assert_close(decoded, flow.decode(z))
    torch.testing.assert_close(decoded, x, atol=1e-4, rtol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("name", PRESETS)
def test_sample_and_loss_have_no_graph_breaks(name: str) -> None:
    flow, x = build(name)
    sample = compiled(lambda: flow.sample((4,)), "eager")
    torch.manual_seed(1)
    drawn = sample()
    torch.manual_seed(1)
    torch.testing.assert_close(drawn, flow.sample((4,)))
    assert drawn.shape == (4,) + tuple(x.shape[1:])

    loss = compiled(negative_log_likelihood, "eager")(flow, x)
    loss.backward()
    gradients = [p.grad.clone() for p in flow.parameters()]
    flow.zero_grad()
    negative_log_likelihood(flow, x).backward()
    for compiled_grad, parameter in zip(gradients, flow.parameters()):
        torch.testing.assert_close(compiled_grad, parameter.grad)


@pytest.mark.slow
@pytest.mark.parametrize("name", BASIC)
def test_training_step_compiles_with_backward(name: str) -> None:
    """`aot_eager` traces forward and backward into graphs: a full AdamW step equals the eager one."""
    flow, x = build(name)
    reference, _ = build(name)
    loss_function = compiled(negative_log_likelihood, "aot_eager")
    optimizers = [torch.optim.AdamW(m.parameters(), lr=1e-2) for m in (flow, reference)]
    for _ in range(2):
        for model, optimizer, function in zip(
            (flow, reference), optimizers, (loss_function, negative_log_likelihood)
        ):
            optimizer.zero_grad()
            function(model, x).backward()
            optimizer.step()
    for compiled_parameter, eager_parameter in zip(flow.parameters(), reference.parameters()):
        torch.testing.assert_close(compiled_parameter, eager_parameter, atol=1e-5, rtol=1e-4)


@pytest.mark.slow
def test_inductor_compiles_maf_log_prob_and_sampling() -> None:
    """One real inductor compilation (C++ codegen on the CPU) of a MAF: log_prob, its gradient, inverse."""
    flow, x = build("maf")
    log_prob = torch.compile(flow.log_prob, fullgraph=True, dynamic=False)
    expected = flow.log_prob(x)
    torch.testing.assert_close(log_prob(x), expected, atol=1e-5, rtol=1e-5)
    z = flow.encode(x).detach()
    decode = torch.compile(flow.decode, fullgraph=True, dynamic=False)
    torch.testing.assert_close(decode(z), x, atol=1e-4, rtol=1e-4)
