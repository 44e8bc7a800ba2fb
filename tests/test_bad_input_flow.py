"""Untrusted input to `Flow` and the presets (issue #10): empty batches, wrong types, dtypes, devices and
contexts, non-finite and huge values, and NSF's linear tails far outside the spline's bound.

Every bad input must give a `TypeError`/`ValueError` that names what was expected and what came; every
legal input (empty batches, huge magnitudes) a result of the documented shape without NaN.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import Optional

import numpy as np
import pytest
import torch
from torch import Tensor

from flows.core import Bijector
from flows.distributions import StandardNormal
from flows.flow import Flow, _extremes
from flows.presets import MAF, NSF, RealNVP
from flows.presets_image import Glow, RealNVPImage
from flows.training.registry import gaussian
from tests.helpers import randomize

SMALL = {"transforms": 2, "hidden_features": (8, 8)}
VECTOR: dict[str, Callable[[int], Flow]] = {
    "maf": lambda context: MAF(3, context_features=context, **SMALL),
    "nsf": lambda context: NSF(3, context_features=context, bins=4, **SMALL),
    "nsf-autoregressive": lambda context: NSF(
        3, context_features=context, bins=4, autoregressive=True, **SMALL
    ),
    "realnvp": lambda context: RealNVP(3, context_features=context, **SMALL),
}
IMAGE: dict[str, Callable[[int], Flow]] = {
    "glow": lambda context: Glow((2, 4, 4), context_features=context, levels=2, steps=1, hidden_channels=4),
    "glow-spline": lambda context: Glow(
        (2, 4, 4), context_features=context, levels=2, steps=1, hidden_channels=4, coupling="spline", bins=4
    ),
    "realnvp-image": lambda context: RealNVPImage(
        (2, 4, 4), context_features=context, levels=2, hidden_channels=4
    ),
}


def _flow(name: str, context: int = 0) -> Flow:
    torch.manual_seed(0)
    if name == "gaussian":
        flow = gaussian(3)
    else:
        flow = {**VECTOR, **IMAGE}[name](context)
    return randomize(flow, scale=0.2).eval()


CONDITIONAL = [*VECTOR, *IMAGE]
#: (preset, context features) pairs; the gaussian baseline is unconditional only.
CASES = [("gaussian", 0)] + [(name, context) for name in CONDITIONAL for context in (0, 2)]


# -------------------------------------------------------------------------------------- empty batches
@pytest.mark.parametrize(("name", "context"), CASES)
def test_empty_batches_give_empty_results_of_the_documented_shape(name: str, context: int) -> None:
    flow = _flow(name, context)
    event = flow.event_shape
    for batch in [(0,), (2, 0), (0, 3)]:
        x = torch.zeros(batch + event)
        c = torch.zeros(batch + (context,)) if context else None
        assert flow.log_prob(x, c).shape == batch
        assert flow.encode(x, c).shape == batch + event
        assert flow.decode(x, c).shape == batch + event
    c = torch.zeros(4, context) if context else None
    context_batch = (4,) if context else ()
    assert flow.sample(0, c).shape == (0,) + context_batch + event
    assert flow.rsample((2, 0), c).shape == (2, 0) + context_batch + event
    samples, log_prob = flow.sample_and_log_prob(0, c)
    assert samples.shape == (0,) + context_batch + event and log_prob.shape == (0,) + context_batch
    if context:  # an empty context batch
        assert flow.sample(3, torch.zeros(0, context)).shape == (3, 0) + event


# ------------------------------------------------------------------------------------ types and dtypes
BAD_X = {
    "int64": (lambda: torch.ones(4, 3, dtype=torch.int64), "torch.int64"),
    "bool": (lambda: torch.ones(4, 3, dtype=torch.bool), "torch.bool"),
    "complex": (lambda: torch.ones(4, 3, dtype=torch.complex64), "torch.complex64"),
    "numpy": (lambda: np.ones((4, 3), dtype=np.float32), "numpy.ndarray"),
    "list": (lambda: [[0.0, 1.0, 2.0]], "list"),
}


@pytest.mark.parametrize("bad", list(BAD_X))
@pytest.mark.parametrize("name", ["gaussian", *VECTOR])
def test_non_float_tensor_input_is_a_type_error_naming_expected_and_got(name: str, bad: str) -> None:
    flow = _flow(name)
    make, got = BAD_X[bad]
    for method in (flow.log_prob, flow.encode, flow.decode):
        with pytest.raises(TypeError, match=rf"must be a floating-point torch\.Tensor.*got.*{got}"):
            method(make())


def test_a_float_dtype_other_than_the_flows_is_a_type_error_naming_both() -> None:
    flow = _flow("nsf")
    with pytest.raises(TypeError, match=r"x must have the flow's dtype torch\.float32, got torch\.float64"):
        flow.log_prob(torch.zeros(4, 3, dtype=torch.float64))
    conditional = _flow("maf", 2)
    with pytest.raises(
        TypeError, match=r"context must have the flow's dtype torch\.float32, got torch\.float64"
    ):
        conditional.sample(2, torch.zeros(4, 2, dtype=torch.float64))
    double = _flow("nsf").double()  # a float64 flow takes float64 input
    assert double.log_prob(torch.zeros(4, 3, dtype=torch.float64)).dtype == torch.float64


def test_a_tensor_on_another_device_is_a_value_error_naming_both_devices() -> None:
    flow = _flow("realnvp", 2)
    x = torch.zeros(4, 3, device="meta")
    with pytest.raises(ValueError, match=r"x must be on the flow's device cpu, got a tensor on meta"):
        flow.log_prob(x, torch.zeros(4, 2))
    with pytest.raises(ValueError, match=r"context must be on the flow's device cpu, got a tensor on meta"):
        flow.sample(3, torch.zeros(4, 2, device="meta"))


# ------------------------------------------------------------------------------------------- contexts
@pytest.mark.parametrize("name", CONDITIONAL)
def test_context_checks(name: str) -> None:
    conditional = _flow(name, 2)
    x = torch.zeros((5,) + conditional.event_shape)
    with pytest.raises(ValueError, match=r"context must have 2 features \(last dim\), got shape \(5, 3\)"):
        conditional.log_prob(x, torch.zeros(5, 3))
    with pytest.raises(
        ValueError, match=r"conditional: expected a context of shape batch \+ \(2,\), got None"
    ):
        conditional.sample(4)
    with pytest.raises(ValueError, match=r"conditional: expected a context"):
        conditional.encode(x)
    unconditional = _flow(name)
    for call in (
        lambda: unconditional.log_prob(x, torch.zeros(5, 2)),
        lambda: unconditional.sample(4, torch.zeros(5, 2)),
        lambda: unconditional.sample_and_log_prob(4, torch.zeros(5, 2)),
        lambda: unconditional.decode(x, torch.zeros(5, 2)),
    ):
        with pytest.raises(ValueError, match=r"unconditional .* but a context was given.*shape \(5, 2\)"):
            call()


def test_context_width_comes_from_the_layers_and_the_embedding() -> None:
    """A plain `Flow` reads its context width from the layers (or the embedding's `in_features`)."""
    gaussian_flow = _flow("gaussian")
    assert gaussian_flow.context_features == 0
    conditional = _flow("nsf", 2)
    plain = Flow(conditional.transform, conditional.base)
    assert plain.context_features == 2
    with pytest.raises(ValueError, match=r"context must have 2 features"):
        plain.log_prob(torch.zeros(5, 3), torch.zeros(5, 4))
    embedded = Flow(conditional.transform, conditional.base, embedding=torch.nn.Linear(4, 2))
    assert embedded.context_features == 4
    assert embedded.log_prob(torch.zeros(5, 3), torch.zeros(5, 4)).shape == (5,)
    with pytest.raises(ValueError, match=r"context must have 4 features"):
        embedded.log_prob(torch.zeros(5, 3), torch.zeros(5, 2))


def test_a_refused_input_leaves_the_embedding_untouched() -> None:
    """Every check, `log_prob`'s NaN check of `x` included, runs before the embedding sees the context: a
    BatchNorm embedding in training mode counts no batch for a call that is refused."""
    conditional = _flow("nsf", 2)
    embedding = torch.nn.Sequential(torch.nn.BatchNorm1d(4), torch.nn.Linear(4, 2)).train()
    embedded = Flow(conditional.transform, conditional.base, embedding=embedding)
    x = torch.zeros(5, 3)
    x[2, 1] = float("nan")
    for method in (embedded.log_prob, embedded.encode):
        with pytest.raises(ValueError, match=r"x must not contain NaN, got NaN in rows \[2\]"):
            method(x, torch.randn(5, 4))
    assert int(embedding[0].num_batches_tracked) == 0


@pytest.mark.parametrize("shape", [-1, (2, -3), 2.5, (2.0,), True, "3"])
def test_bad_sample_shapes_are_errors_naming_the_shape(shape: object) -> None:
    flow = _flow("maf")
    with pytest.raises((TypeError, ValueError), match=r"a shape must"):
        flow.sample(shape)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------- non-finite and huge
@pytest.mark.parametrize("name", ["gaussian", *VECTOR])
def test_nan_rows_are_named_and_inf_rows_have_zero_density(name: str) -> None:
    flow = _flow(name)
    x = torch.randn(6, 3)
    x[[1, 4], 2] = float("nan")
    for method in (flow.log_prob, flow.encode, flow.decode):
        with pytest.raises(ValueError, match=r"[xz] must not contain NaN, got NaN in rows \[1, 4\]"):
            method(x)
    x = torch.randn(6, 3)
    x[2, 0], x[5, 1] = float("inf"), -float("inf")
    log_prob = flow.log_prob(x)
    assert log_prob[[2, 5]].tolist() == [-float("inf")] * 2
    assert torch.isfinite(log_prob[[0, 1, 3, 4]]).all()
    with pytest.raises(ValueError, match=r"x must be finite, got ±inf in rows \[2, 5\]"):
        flow.encode(x)
    conditional = _flow(name if name != "gaussian" else "maf", 2)
    context = torch.zeros(6, 2)
    context[3, 1] = float("nan")
    with pytest.raises(ValueError, match=r"context must not contain NaN, got NaN in rows \[3\]"):
        conditional.log_prob(torch.zeros(6, 3), context)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64], ids=str)
def test_the_one_reduction_finiteness_check_finds_every_nan_and_inf(dtype: torch.dtype) -> None:
    """`_extremes` (min and max in one reduction) replaces `isfinite(x).all()` in every input check: a NaN or
    ±inf at any position (vectorised bodies and scalar tails, contiguous or strided) must show in them."""
    generator = torch.Generator().manual_seed(0)
    for size in (1, 7, 64, 1001):
        for position in {0, size // 2, size - 1}:
            for bad in (float("nan"), float("inf"), -float("inf")):
                values = torch.randn(size, 2, generator=generator).to(dtype)
                values[position, 1] = bad
                for view in (values, values[:, 1], values.t()):
                    low, high = _extremes(view)
                    assert not (math.isfinite(low) and math.isfinite(high))
                    assert (math.isnan(low) or math.isnan(high)) == bool(torch.isnan(view).any())
            low, high = _extremes(torch.randn(size, generator=generator).to(dtype))
            assert math.isfinite(low) and math.isfinite(high)


class _Clamp(Bijector):
    """Maps ±inf to finite values with a log-determinant of 0 (not a bijection there): in a flow of this layer
    only `log_prob`'s row mask can give an infinite input its density of 0 (the presets' layers carry inf or
    NaN through, which `nan_to_num` turns into -inf anyway)."""

    def forward(self, x: Tensor, context: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        return x.clamp(-10.0, 10.0), x.new_zeros(x.shape[:-1])

    def inverse(self, y: Tensor, context: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        return y, y.new_zeros(y.shape[:-1])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_log_prob_gives_infinite_rows_density_zero_also_when_the_layers_map_them_to_finite_values(
    dtype: torch.dtype,
) -> None:
    flow = Flow(_Clamp(), StandardNormal(3)).to(dtype)
    rows = torch.zeros(1000, 3, dtype=dtype)
    rows[-1, -1] = float("inf")  # the last row of a large batch: density 0, the others finite
    log_prob = flow.log_prob(rows)
    assert log_prob[-1] == -float("inf") and bool(torch.isfinite(log_prob[:-1]).all())
    # a graph traced on finite rows keeps the mask: it must not bake in that its example had no infinity
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        # a Flow's forward is its log_prob
        traced = torch.jit.trace(flow, (torch.zeros(4, 3, dtype=dtype),), check_trace=False)
    traced_log_prob = traced(rows)
    assert traced_log_prob[-1] == -float("inf") and bool(torch.isfinite(traced_log_prob[:-1]).all())


def _trained_like(flow: Flow, seed: int = 0) -> Flow:
    """Every parameter redrawn from N(0, 0.5^2): far from the identity initialisation, like a trained flow."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for parameter in flow.parameters():
            torch.nn.init.normal_(parameter, std=0.5)
    return flow.eval()


HUGE = {
    torch.float32: (1e5, 1e20, 1e30, torch.finfo(torch.float32).max),
    torch.float64: (1e5, 1e30, 1e300, torch.finfo(torch.float64).max),
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("name", ["gaussian", *VECTOR])
def test_huge_magnitudes_give_finite_or_minus_inf_log_prob(name: str, dtype: torch.dtype) -> None:
    flow = _trained_like(_flow(name)).to(dtype)
    for magnitude in HUGE[dtype]:
        x = torch.tensor([[1.0, -1.0, 0.5], [1.0, 1.0, 1.0], [-1.0, 0.0, 1.0]], dtype=dtype) * magnitude
        x = torch.cat([x, torch.randn(2, 3, dtype=dtype)])
        log_prob = flow.log_prob(x)
        assert not torch.isnan(log_prob).any() and not torch.isposinf(log_prob).any(), (magnitude, log_prob)
        assert torch.isfinite(log_prob[3:]).all()
        try:
            z = flow.encode(x)
        except ValueError as error:  # an overflow inside the layers is named, never a NaN result
            assert "encode overflowed" in str(error) and "must be small enough" in str(error)
        else:
            assert not torch.isnan(z).any()
