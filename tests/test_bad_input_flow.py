"""Untrusted input to `Flow` and the presets (issue #10): empty batches, wrong types, dtypes, devices and
contexts, non-finite and huge values, and NSF's linear tails far outside the spline's bound.

Every bad input must give a `TypeError`/`ValueError` that names what was expected and what came; every
legal input (empty batches, huge magnitudes) a result of the documented shape without NaN.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from flows.flow import Flow
from flows.presets import MAF, NSF, RealNVP
from flows.presets_image import Glow, RealNVPImage
from flows.training.models import gaussian
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
