"""Coupling layers in the generic bijector test (tiny conditioners keep the suite fast)."""

from __future__ import annotations

from flows.bijectors.coupling import Coupling, ImageCoupling
from tests.registry import Case, register

HIDDEN = (8, 8)

# (transformer, options, the unconditional (mask, parity) variants, with a context + ResidualNet variant)
for transformer, options, variants, with_context in [
    ("affine", {}, [("alternating", False), ("half", True)], True),
    ("additive", {}, [("alternating", False)], False),
    ("spline", {"bins": 4, "tails": "linear"}, [("alternating", False)], True),
    ("spline", {"bins": 3, "tails": "identity", "bound": 2.0}, [("half", True)], True),
]:
    name = transformer if not options else f"{transformer}-{options['tails']}"
    for mask, parity in variants:
        register(
            Case(
                id=f"coupling-{name}-{mask}-{int(parity)}",
                build=lambda t=transformer, o=options, m=mask, p=parity: Coupling(
                    5, t, mask=m, parity=p, hidden_features=HIDDEN, transformer_options=o
                ),
                event_shape=(5,),
            )
        )
    if not with_context:
        continue
    register(
        Case(
            id=f"coupling-{name}-context-residual",
            build=lambda t=transformer, o=options: Coupling(
                4, t, parity=True, context_features=3, hidden_features=HIDDEN, residual_blocks=1, **o
            ),
            event_shape=(4,),
            context_features=3,
        )
    )

register(
    Case(
        id="coupling-affine-softplus-context-mlp",
        build=lambda: Coupling(
            3, "affine", context_features=2, hidden_features=(8,), scale_function="softplus"
        ),
        event_shape=(3,),
        context_features=2,
    )
)

for shape, mask, parity, context, transformer in [
    ((2, 4, 4), "checkerboard", False, 0, "affine"),
    ((2, 4, 4), "checkerboard", True, 2, "spline"),
    ((3, 2, 2), "channel", True, 2, "affine"),
    ((4, 2, 2), "channel", False, 3, "spline"),
]:
    register(
        Case(
            id=f"image-coupling-{transformer}-{mask}-{int(parity)}-c{context}",
            build=lambda s=shape, m=mask, p=parity, c=context, t=transformer: ImageCoupling(
                s,
                t,
                mask=m,
                parity=p,
                context_features=c,
                hidden_channels=4,
                **({"bins": 3} if t == "spline" else {}),
            ),
            event_shape=shape,
            context_features=context,
        )
    )
