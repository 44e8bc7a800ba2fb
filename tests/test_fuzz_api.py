"""Property-based fuzzing of the public `Flow` API (issue #10): whatever comes in, the result has the
documented shape and no NaN (log_prob: no +inf either), or the call raises a `TypeError`/`ValueError` whose
message says what was expected ("expected"/"must") and names what came.

Drawn: a preset (MAF, NSF, autoregressive NSF, RealNVP, the gaussian baseline; conditional or not) in
float32 or float64 on every available device, a method (log_prob, encode, decode, sample, rsample,
sample_and_log_prob), the input's kind (float tensors of either dtype, int, bool, complex, numpy arrays,
lists), batch shape (0-3 dims, empty, up to 2,000 rows), event shape, device, values (normal, NaN, ±inf,
magnitudes up to 1e300 / float32 max), the context (none, right, wrong width, wrong dtype, numpy, NaN,
a batch that does not broadcast) and the sample shape. The oracle lists every defect of a draw and
the words that name it; a draw without defects must succeed.
"""

from __future__ import annotations

import copy
import functools
import math
from dataclasses import dataclass, field

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flows.flow import Flow
from flows.presets import MAF, NSF, RealNVP
from flows.training.registry import gaussian
from tests.helpers import randomize

FEATURES, CONTEXT = 3, 2
SMALL = {"transforms": 2, "hidden_features": (8, 8)}
BUILDERS = {
    "maf": lambda c: MAF(FEATURES, context_features=c, **SMALL),
    "nsf": lambda c: NSF(FEATURES, context_features=c, bins=4, **SMALL),
    "nsf-autoregressive": lambda c: NSF(FEATURES, context_features=c, bins=4, autoregressive=True, **SMALL),
    "realnvp": lambda c: RealNVP(FEATURES, context_features=c, **SMALL),
    "gaussian": lambda c: gaussian(FEATURES, c),
}
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
METHODS = ["log_prob", "encode", "decode", "sample", "rsample", "sample_and_log_prob"]
KINDS = ["same", "same", "same", "other_float", "int64", "bool", "complex64", "numpy", "list"]
CONTEXTS = ["right", "right", "none", "wrong_width", "int64", "numpy", "nan", "no_broadcast", "no_broadcast"]


@functools.cache
def _flow(name: str, conditional: bool, dtype: torch.dtype, device: str) -> Flow:
    """Each preset is built once per module (randomised, eval mode) and converted per dtype and device."""
    torch.manual_seed(0)
    flow = randomize(BUILDERS[name](CONTEXT if conditional else 0), scale=0.3).eval()
    return copy.deepcopy(flow).to(dtype=dtype, device=device)


@dataclass
class Case:
    """One draw and the fragments that name each of its defects (empty: the call must succeed)."""

    name: str
    conditional: bool
    dtype: torch.dtype
    device: str
    method: str
    x: object = None
    context: object = None
    sample_shape: object = ()
    huge: bool = False
    defects: dict[str, list[str]] = field(default_factory=dict)


def _other(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float32 else torch.float32


@st.composite
def cases(draw: st.DrawFn) -> Case:
    name = draw(st.sampled_from(sorted(BUILDERS)))
    conditional = name != "gaussian" and draw(st.booleans())
    dtype = draw(st.sampled_from([torch.float32, torch.float64]))
    device = draw(st.sampled_from(DEVICES))
    case = Case(name, conditional, dtype, device, draw(st.sampled_from(METHODS)))
    big = draw(st.booleans())
    batch = (draw(st.integers(1, 2000)),) if big else tuple(draw(st.lists(st.integers(0, 5), max_size=3)))

    if case.method in ("log_prob", "encode", "decode"):
        event = draw(st.sampled_from([(FEATURES,)] * 4 + [(FEATURES - 1,), (FEATURES, 1), ()]))
        generator = torch.Generator().manual_seed(draw(st.integers(0, 2**32 - 1)))
        values = torch.randn(batch + event, dtype=torch.float64, generator=generator)
        flat = values.view(-1)
        special = draw(st.sampled_from(["normal", "normal", "nan", "inf", "huge"]))
        if special == "huge":
            # randn * 10**36 stays below float32's max (3.4e38), which is drawn on its own.
            exponent = draw(st.integers(0, 300 if dtype == torch.float64 else 36))
            values = values * 10.0**exponent
            at_max = draw(st.booleans()) and values.numel() > 0
            if at_max:
                values.view(-1)[0] = torch.finfo(dtype).max
            case.huge = exponent > 3 or at_max
        elif special != "normal" and flat.numel():
            index = draw(st.integers(0, flat.numel() - 1))
            flat[index] = math.nan if special == "nan" else draw(st.sampled_from([math.inf, -math.inf]))
            if special == "nan" or case.method != "log_prob":
                case.defects["values"] = ["NaN" if special == "nan" else "inf"]
        if event != (FEATURES,):
            case.defects["event"] = [str(tuple(batch + event))]
        kind = draw(st.sampled_from(KINDS))
        to_device = draw(st.sampled_from([device] * 5 + ["meta"]))
        if kind in ("same", "other_float"):
            x_dtype = dtype if kind == "same" else _other(dtype)
            case.x = values.to(x_dtype).to(to_device)
            if kind == "other_float":
                case.defects["dtype"] = [str(x_dtype)]
            if to_device != device:
                case.defects["device"] = [to_device]
        elif kind in ("int64", "bool", "complex64"):
            case.x = values.nan_to_num().clamp(-1e9, 1e9).to(getattr(torch, kind))
            case.defects["type"] = [f"torch.{kind}"]
        elif kind == "numpy":
            case.x, case.defects["type"] = values.numpy(), ["numpy.ndarray"]
        else:
            case.x = values.tolist()  # a float for a 0-d tensor
            case.defects["type"] = [type(case.x).__name__]
        x_batch = batch
    else:
        case.sample_shape = draw(
            st.one_of(
                st.integers(0, 4),
                st.lists(st.integers(0, 3), max_size=2).map(tuple),
                st.sampled_from([-1, 2.5, (2, -1), "3"]),
            )
        )
        if case.sample_shape in (-1, 2.5, (2, -1), "3"):
            case.defects["sample_shape"] = ["a shape must"]
        x_batch = ()

    kind = draw(st.sampled_from(CONTEXTS))
    context_batch = x_batch if case.method in ("log_prob", "encode", "decode") else batch[:2]
    if kind == "none":
        if conditional:
            case.defects["context"] = ["got None"]
        return case
    width = CONTEXT if kind != "wrong_width" else CONTEXT + 1
    # A context batch that cannot broadcast against the input's (a size of 1 broadcasts with any).
    clash = kind == "no_broadcast" and len(x_batch) > 0 and x_batch[-1] != 1
    if clash:
        context_batch = x_batch[:-1] + (x_batch[-1] + 2,)
    generator = torch.Generator().manual_seed(draw(st.integers(0, 2**32 - 1)))
    context = torch.randn(context_batch + (width,), dtype=torch.float64, generator=generator).to(dtype)
    if kind == "nan" and context.numel():
        context.view(-1)[0] = math.nan
    if kind == "int64":
        context = context.to(torch.int64)
    case.context = context.numpy() if kind == "numpy" else context.to(device)
    if not conditional:
        case.defects["context"] = ["unconditional"]
    elif kind == "wrong_width":
        case.defects["context"] = [str(tuple(context.shape))]
    elif kind in ("int64", "numpy"):
        case.defects["context"] = ["torch.int64" if kind == "int64" else "numpy.ndarray"]
    elif kind == "nan" and context.numel():
        case.defects["context"] = ["NaN"]
    elif clash:
        case.defects["broadcast"] = [str(context_batch)]
    return case


def _expected_shapes(case: Case, flow: Flow) -> tuple[tuple[int, ...], ...]:
    """The documented result shapes: `(batch)` for log densities, `batch + event` for points."""
    event = flow.event_shape
    context_batch = tuple(case.context.shape[:-1]) if isinstance(case.context, torch.Tensor) else ()
    if case.method in ("log_prob", "encode", "decode"):
        x_batch = tuple(case.x.shape[: case.x.dim() - len(event)])
        batch = tuple(torch.broadcast_shapes(x_batch, context_batch))
        return (batch,) if case.method == "log_prob" else (batch + event,)
    sample = case.sample_shape if isinstance(case.sample_shape, tuple) else (case.sample_shape,)
    points = sample + context_batch + event
    return (points, sample + context_batch) if case.method == "sample_and_log_prob" else (points,)


def _call(case: Case, flow: Flow) -> tuple[torch.Tensor, ...]:
    method = getattr(flow, case.method)
    if case.method in ("log_prob", "encode", "decode"):
        result = method(case.x, case.context)
    else:
        result = method(case.sample_shape, case.context)
    return result if isinstance(result, tuple) else (result,)


@settings(
    max_examples=400,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(cases())
def test_flow_api_returns_documented_shapes_or_names_the_defect(case: Case) -> None:
    flow = _flow(case.name, case.conditional, case.dtype, case.device)
    try:
        results = _call(case, flow)
    except (TypeError, ValueError) as error:
        message = str(error)
        assert "expected" in message or "must" in message, message
        overflow = case.huge and case.method in ("encode", "decode") and "overflowed" in message
        assert case.defects or overflow, f"a valid call raised: {message!r}"
        fragments = [f for named in case.defects.values() for f in named] + (
            ["overflowed"] if overflow else []
        )
        assert any(fragment in message for fragment in fragments), (message, case.defects)
        return
    assert not case.defects, f"defects {case.defects} were not reported"
    assert tuple(tuple(r.shape) for r in results) == _expected_shapes(case, flow)
    for result in results:
        assert result.dtype == case.dtype and result.device.type == case.device
        assert not torch.isnan(result).any(), case.method
    if case.method == "log_prob":
        assert not torch.isposinf(results[0]).any()


def test_the_fuzzer_reaches_every_kind_of_defect() -> None:
    """The strategy is not vacuous: it draws valid calls and each kind of defect."""
    seen: set[str] = set()
    valid = 0

    @settings(max_examples=400, deadline=None, derandomize=True, database=None)
    @given(cases())
    def collect(case: Case) -> None:
        nonlocal valid
        seen.update(case.defects)
        valid += not case.defects

    collect()
    assert valid > 40
    expected = {"values", "event", "dtype", "device", "type", "context", "broadcast", "sample_shape"}
    assert expected <= seen, expected - seen


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_every_preset_builds_for_the_fuzzer(name: str) -> None:
    flow = _flow(name, False, torch.float32, "cpu")
    assert flow.log_prob(torch.zeros(2, FEATURES)).shape == (2,)
