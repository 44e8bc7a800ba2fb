"""Generic-test cases for the linear bijectors (`Permutation`, `LULinear`).

The generic gradient test needs at least one parameter that reaches the loss, so parameter-free maps
are registered chained after a learnable `LULinear`.
"""

from __future__ import annotations

from flows.bijectors.linear import LULinear, Permutation
from flows.core import Chain
from tests.registry import Case, register

register(
    Case(
        "LULinear+Permutation-random", lambda: Chain(LULinear(5), Permutation(5, kind="random", seed=3)), (5,)
    )
)
register(
    Case("LULinear+Permutation-reverse", lambda: Chain(LULinear(5), Permutation(5, kind="reverse")), (5,))
)
# Chains skip the zero log-determinants of permutations: leading ones (the total starts at the next
# member's) and permutations only (the total is a permutation's zeros).
register(
    Case(
        "Permutations+LULinear+Permutation",
        lambda: Chain(
            Permutation(5, kind="reverse"),
            Permutation(5, kind="random", seed=4),
            LULinear(5),
            Permutation(5, kind="random", seed=5),
        ),
        (5,),
    )
)
register(
    Case(
        "LULinear+Chain-of-permutations",
        lambda: Chain(
            LULinear(5), Chain(Permutation(5, kind="random", seed=6), Permutation(5, kind="reverse"))
        ),
        (5,),
    )
)
register(Case("LULinear", lambda: LULinear(5), (5,)))
register(Case("LULinear-2", lambda: LULinear(2), (2,)))
