"""Masked autoregressive layers (MAF) and their inverses (IAF) in the generic bijector test."""

from __future__ import annotations

import torch

from flows.bijectors.autoregressive import MaskedAutoregressive
from flows.core import Inverse
from tests.registry import Case, register

HIDDEN = (8, 8)
REVERSED = torch.tensor([3, 1, 0, 2])

for transformer in ["affine", "additive"]:
    register(
        Case(
            id=f"maf-{transformer}",
            build=lambda t=transformer: MaskedAutoregressive(4, t, hidden_features=HIDDEN),
            event_shape=(4,),
        )
    )

for transformer, options, with_iaf in [
    ("affine", {}, True),
    ("spline", {"bins": 4, "tails": "linear"}, True),
    ("spline", {"bins": 3, "tails": "identity", "bound": 2.0}, False),
]:
    name = transformer if not options else f"{transformer}-{options['tails']}"
    register(
        Case(
            id=f"maf-{name}-context-residual-order",
            build=lambda t=transformer, o=options: MaskedAutoregressive(
                4, t, context_features=2, hidden_features=HIDDEN, residual_blocks=1, order=REVERSED, **o
            ),
            event_shape=(4,),
            context_features=2,
        )
    )
    if not with_iaf:
        continue
    register(
        Case(
            id=f"iaf-{name}-context",
            build=lambda t=transformer, o=options: Inverse(
                MaskedAutoregressive(4, t, context_features=3, hidden_features=(8, 6), transformer_options=o)
            ),
            event_shape=(4,),
            context_features=3,
        )
    )

register(
    Case(
        id="maf-affine-1d-context",
        build=lambda: MaskedAutoregressive(1, context_features=2, hidden_features=(8,)),
        event_shape=(1,),
        context_features=2,
    )
)
