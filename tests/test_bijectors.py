"""The generic bijector test: every case in `tests/registry.py` against autograd and itself."""

from __future__ import annotations

import pytest
import torch

from tests.helpers import TOLERANCE, jacobian_logdet, randomize, sample_context
from tests.registry import CASES, Case

DTYPES = [torch.float64, torch.float32]
BATCHES = [(), (7,), (2, 3)]


def build(case: Case, dtype: torch.dtype, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    bijector = case.build().to(dtype)
    randomize(bijector, seed=seed)
    if case.needs_init:
        x = torch.randn((64,) + case.event_shape, dtype=dtype) * 1.5 + 0.3
        context = sample_context((64,), case.context_features, dtype)
        bijector.initialize(x, context) if case.context_features else bijector.initialize(x)
    return bijector.eval()


def inputs(
    case: Case, batch: tuple[int, ...], dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor | None]:
    generator = torch.Generator().manual_seed(123)
    x = torch.randn(batch + case.event_shape, generator=generator, dtype=torch.float64).to(dtype)
    return x, sample_context(batch, case.context_features, dtype)


def ids(cases: list[Case]) -> list[str]:
    return [case.id for case in cases]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("batch", BATCHES, ids=str)
@pytest.mark.parametrize("case", CASES, ids=ids(CASES))
def test_shapes_round_trip_and_ladj(case: Case, batch: tuple[int, ...], dtype: torch.dtype) -> None:
    bijector = build(case, dtype)
    x, context = inputs(case, batch, dtype)
    with torch.no_grad():
        y, ladj = bijector(x, context)
        assert ladj.shape == batch, f"ladj shape {tuple(ladj.shape)} != batch {batch}"
        assert ladj.dtype == dtype and y.dtype == dtype
        assert y.shape[: len(batch)] == batch
        x_back, ladj_inverse = bijector.inverse(y, context)
    tol = TOLERANCE[dtype]
    assert x_back.shape == x.shape
    torch.testing.assert_close(x_back, x, atol=tol * 10, rtol=tol * 10)
    torch.testing.assert_close(ladj + ladj_inverse, torch.zeros_like(ladj), atol=tol * 10, rtol=0)
    assert torch.isfinite(y).all() and torch.isfinite(ladj).all()


@pytest.mark.parametrize("case", CASES, ids=ids(CASES))
def test_ladj_matches_autograd_jacobian(case: Case) -> None:
    dtype = torch.float64
    bijector = build(case, dtype)
    x, context = inputs(case, (3,), dtype)
    for i in range(3):
        ctx = None if context is None else context[i]
        _, ladj = bijector(x[i], ctx)
        expected = jacobian_logdet(lambda v, ctx=ctx: bijector(v, ctx)[0], x[i], case.event_shape)
        torch.testing.assert_close(ladj, expected, atol=1e-7, rtol=1e-7)
        y, _ = bijector(x[i], ctx)
        _, ladj_inverse = bijector.inverse(y, ctx)
        output_shape = tuple(y.shape)
        expected_inverse = jacobian_logdet(lambda v, ctx=ctx: bijector.inverse(v, ctx)[0], y, output_shape)
        torch.testing.assert_close(ladj_inverse, expected_inverse, atol=1e-7, rtol=1e-7)


@pytest.mark.parametrize(
    "case", [c for c in CASES if c.context_features], ids=ids([c for c in CASES if c.context_features])
)
def test_context_broadcasts_over_batch(case: Case) -> None:
    dtype = torch.float64
    bijector = build(case, dtype)
    x, _ = inputs(case, (2, 3), dtype)
    context = sample_context((3,), case.context_features, dtype)
    y, ladj = bijector(x, context)
    y_expanded, ladj_expanded = bijector(x, context.expand(2, 3, -1))
    torch.testing.assert_close(y, y_expanded)
    torch.testing.assert_close(ladj, ladj_expanded)
    # The context matters: another context changes the output.
    y_other, _ = bijector(x, context + 1.0)
    assert not torch.allclose(y, y_other)
    # An unbatched input broadcasts against a batched context.
    y_single, ladj_single = bijector(x[0, 0], context)
    assert ladj_single.shape == (3,)
    torch.testing.assert_close(y_single[0], y[0, 0])


def has_parameters(case: Case) -> bool:
    return any(True for _ in case.build().parameters())


PARAMETRIC = [case for case in CASES if has_parameters(case)]


@pytest.mark.parametrize("case", PARAMETRIC, ids=ids(PARAMETRIC))
def test_gradients_reach_every_parameter(case: Case) -> None:
    dtype = torch.float64
    bijector = build(case, dtype).train()
    x, context = inputs(case, (16,), dtype)
    y, ladj = bijector(x, context)
    x_back, ladj_inverse = bijector.inverse(torch.randn_like(y), context)
    loss = y.square().sum() + ladj.sum() + x_back.square().sum() + ladj_inverse.sum()
    loss.backward()
    for name, parameter in bijector.named_parameters():
        assert parameter.grad is not None, f"no gradient reached {name}"
        assert torch.isfinite(parameter.grad).all(), f"non-finite gradient in {name}"
        assert parameter.grad.abs().sum() > 0, f"zero gradient in {name}"


@pytest.mark.parametrize("case", PARAMETRIC, ids=ids(PARAMETRIC))
def test_state_dict_round_trip(case: Case) -> None:
    dtype = torch.float64
    source = build(case, dtype, seed=0)
    target = build(case, dtype, seed=1)
    x, context = inputs(case, (5,), dtype)
    y_source, ladj_source = source(x, context)
    y_target, _ = target(x, context)
    assert not torch.allclose(y_source, y_target), "two builds with different seeds should differ"
    target.load_state_dict(source.state_dict())
    y_loaded, ladj_loaded = target(x, context)
    torch.testing.assert_close(y_loaded, y_source)
    torch.testing.assert_close(ladj_loaded, ladj_source)


def test_volume_preserving_layers_return_exactly_zero_log_determinants() -> None:
    """A `Chain` adds nothing for members that declare `volume_preserving`, so their ladj must be exactly zero
    (no registered case is volume-preserving as a whole: each chains a permutation after a learnable layer)."""
    from flows.bijectors.linear import LULinear, Permutation
    from flows.bijectors.tokens import ReverseTokens
    from flows.core import Chain, Inverse

    vectors, tokens = torch.randn(3, 5), torch.randn(3, 4, 5)
    declared = [
        (Permutation(5, kind="random", seed=1), vectors),
        (Permutation(5, kind="reverse"), vectors),
        (Inverse(Permutation(5, kind="random", seed=2)), vectors),
        (Chain(Permutation(5, kind="reverse"), Permutation(5, kind="random", seed=3)), vectors),
        (ReverseTokens(), tokens),
    ]
    for bijector, x in declared:
        assert bijector.volume_preserving, bijector
        y, ladj = bijector(x)
        _, ladj_inverse = bijector.inverse(y)
        assert ladj.shape == ladj_inverse.shape == (3,)
        assert (ladj == 0).all() and (ladj_inverse == 0).all()
    for bijector in (LULinear(5), Chain(Permutation(5), LULinear(5)), Inverse(LULinear(5))):
        assert not bijector.volume_preserving, bijector
