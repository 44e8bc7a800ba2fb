"""Generic-test cases for the image bijectors: `Invertible1x1Conv`, `Squeeze`, `MultiscaleSplit`.

`Squeeze` has no parameters, so it is registered between two learnable convolutions (the generic
gradient test needs a parameter); its output event differs from its input event.
"""

from __future__ import annotations

from flows.bijectors.conv import Invertible1x1Conv
from flows.bijectors.reshape import MultiscaleSplit, Squeeze
from flows.core import Chain, Inverse
from tests.registry import Case, register

register(Case("Invertible1x1Conv-lu", lambda: Invertible1x1Conv(3, lu=True), (3, 2, 2)))
register(Case("Invertible1x1Conv-plain", lambda: Invertible1x1Conv(3, lu=False), (3, 2, 2)))
register(
    Case(
        "Squeeze",
        lambda: Chain(Invertible1x1Conv(2), Squeeze((2, 4, 4)), Invertible1x1Conv(8)),
        (2, 4, 4),
    )
)


def _split() -> MultiscaleSplit:
    inner = Chain(Squeeze((2, 2, 2)), Invertible1x1Conv(8), Inverse(Squeeze((2, 2, 2))))
    return MultiscaleSplit((4, 2, 2), inner)


def _split_odd() -> MultiscaleSplit:
    return MultiscaleSplit((3, 2, 2), Invertible1x1Conv(2, lu=False))


register(Case("MultiscaleSplit", lambda: Chain(Invertible1x1Conv(4), _split()), (4, 2, 2)))
register(Case("MultiscaleSplit-odd-channels", lambda: Chain(Invertible1x1Conv(3), _split_odd()), (3, 2, 2)))
