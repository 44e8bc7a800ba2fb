"""Generic-test cases for `ActNorm` (vectors and images) and `BatchNorm` (eval mode)."""

from __future__ import annotations

from flows.bijectors.normalization import ActNorm, BatchNorm
from tests.registry import Case, register

register(Case("ActNorm-vector", lambda: ActNorm(features=5), (5,), needs_init=True))
register(Case("ActNorm-image", lambda: ActNorm(shape=(2, 4, 4)), (2, 4, 4), needs_init=True))
register(Case("BatchNorm", lambda: BatchNorm(5), (5,)))
