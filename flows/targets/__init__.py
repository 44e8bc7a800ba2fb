"""Unnormalised target densities to sample with a flow (reverse-KL training, importance weights).

`Target` is the protocol (`features`, `log_prob(x: (batch, D)) -> (batch,)`, optional `log_normalizer` and
`sample(n)`); `make_target(name, **options)` builds a built-in one or imports a user's `module:attr`.
"""

from flows.targets.base import FunctionTarget, Target, TargetBase, checked_log_prob
from flows.targets.funnel import Funnel
from flows.targets.lattice import PhiFour
from flows.targets.mixture import GaussianMixture
from flows.targets.registry import TARGETS, make_target
from flows.targets.wells import DoubleWell, ManyWell, quartic_log_normalizer

__all__ = [
    "TARGETS",
    "DoubleWell",
    "FunctionTarget",
    "Funnel",
    "GaussianMixture",
    "ManyWell",
    "PhiFour",
    "Target",
    "TargetBase",
    "checked_log_prob",
    "make_target",
    "quartic_log_normalizer",
]
