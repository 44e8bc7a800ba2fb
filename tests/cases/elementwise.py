"""Generic-test cases for the fixed element-wise bijectors.

They have no parameters, so each is chained after a learnable map (the generic gradient test needs a
parameter); fixed buffers are drawn from torch's global generator so that two seeded builds differ.
The test also inverts standard normal draws, so a map onto a bounded range (`Sigmoid`, `Tanh`) is
followed by an affine map onto the exact domain of `Logit(alpha)`'s inverse image and a `Logit`,
which makes the composition a bijection of the reals; `tests/test_image_bijectors.py` checks each
map alone against autograd.
"""

from __future__ import annotations

import torch

from flows.bijectors.conv import Invertible1x1Conv
from flows.bijectors.elementwise import ElementwiseAffine, Logit, Sigmoid, Standardize, Tanh
from flows.bijectors.linear import LULinear
from flows.bijectors.support import ColumnSupport
from flows.core import Bijector, Chain, Inverse
from tests.registry import Case, register

IMAGE = (2, 3, 3)
ALPHA = 0.05


def _vector(*bijectors: Bijector) -> Chain:
    return Chain(LULinear(5), *bijectors)


def _image(*bijectors: Bijector) -> Chain:
    return Chain(Invertible1x1Conv(IMAGE[0]), *bijectors)


def _to_reals(low: float, high: float, event_dims: int = 1) -> list[Bijector]:
    """Affine `(low, high) -> (-c, 1 + c)` then `Logit(ALPHA)`: `(low, high)` onto the reals."""
    c = ALPHA / (1.0 - 2.0 * ALPHA)
    scale = (1.0 + 2.0 * c) / (high - low)
    return [ElementwiseAffine(-c - scale * low, scale, event_dims), Logit(ALPHA, event_dims)]


register(Case("Sigmoid+Logit", lambda: _vector(Sigmoid(), *_to_reals(0.0, 1.0)), (5,)))
register(Case("Tanh+Logit", lambda: _vector(Tanh(), *_to_reals(-1.0, 1.0)), (5,)))
register(
    Case(
        "ElementwiseAffine",
        lambda: _vector(ElementwiseAffine(shift=torch.randn(5), scale=torch.randn(5))),
        (5,),
    )
)
register(
    Case("Standardize", lambda: _vector(Standardize(mean=torch.randn(5), std=torch.rand(5) + 0.5)), (5,))
)
register(Case("Sigmoid+Logit-image", lambda: _image(Sigmoid(event_dims=3), *_to_reals(0.0, 1.0, 3)), IMAGE))
register(Case("Tanh+Logit-image", lambda: _image(Tanh(event_dims=3), *_to_reals(-1.0, 1.0, 3)), IMAGE))
register(
    Case(
        "Standardize-image",
        lambda: _image(Standardize(torch.randn(2, 1, 1), torch.rand(2, 1, 1) + 0.5, event_dims=3)),
        IMAGE,
    )
)


def _column_support(scale: torch.Tensor) -> ColumnSupport:
    """Columns: unbounded, lower bound, upper bound, interval, interval (random bounds)."""
    inf = float("inf")
    low = torch.tensor([-inf, torch.randn(()).item(), -inf, -1.0 - torch.rand(()).item(), 0.0])
    high = torch.tensor([inf, inf, torch.randn(()).item(), 1.0 + torch.rand(()).item(), 100.0])
    return ColumnSupport(low, high, scale)


def _support_pair() -> Chain:
    """Reals -> the support (one scale) -> reals (another scale): a non-trivial bijection of the reals."""
    first = _column_support(torch.rand(5) + 0.5)
    second = ColumnSupport(first.low, first.high, torch.rand(5) + 0.5)
    return _vector(Inverse(first), second)


register(Case("ColumnSupport", _support_pair, (5,)))
