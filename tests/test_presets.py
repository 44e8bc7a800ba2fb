"""Vector presets: build from `features` alone, shapes, densities, typed signatures, argument errors."""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable

import pytest
import torch

from flows.bijectors.linear import LULinear, Permutation
from flows.bijectors.normalization import ActNorm, BatchNorm
from flows.distributions import make_base
from flows.flow import Flow
from flows.presets import MAF, NSF, RealNVP
from tests.helpers import randomize

SMALL = {"transforms": 2, "hidden_features": (8, 8)}
PRESETS: dict[str, Callable[..., Flow]] = {
    "maf": lambda **kw: MAF(**kw),
    "maf-residual-randperm-bn": lambda **kw: MAF(residual_blocks=1, randperm=True, batch_norm=True, **kw),
    "nsf": lambda **kw: NSF(**kw),
    "nsf-autoregressive": lambda **kw: NSF(autoregressive=True, bins=4, **kw),
    "nsf-mlp-reverse-nolu": lambda **kw: NSF(residual_blocks=0, randperm=False, lu_linear=False, **kw),
    "realnvp": lambda **kw: RealNVP(**kw),
    "realnvp-actnorm-residual": lambda **kw: RealNVP(normalization="actnorm", residual_blocks=1, **kw),
}


@pytest.mark.parametrize("preset", [MAF, NSF, RealNVP], ids=lambda p: p.__name__)
def test_builds_from_features_alone_and_starts_at_the_standard_normal(preset: type[Flow]) -> None:
    torch.manual_seed(0)
    flow = preset(3)
    x = torch.randn(10, 3)
    # Zero-initialised conditioners and identity linear layers: the fresh flow is N(0, I).
    expected = -0.5 * x.square().sum(-1) - 1.5 * math.log(2 * math.pi)
    torch.testing.assert_close(flow.log_prob(x), expected)
    assert flow.sample((4,)).shape == (4, 3)


@pytest.mark.parametrize("context_features", [0, 2])
@pytest.mark.parametrize("name", list(PRESETS))
def test_random_weights_shapes_density_and_round_trip(name: str, context_features: int) -> None:
    torch.manual_seed(0)
    flow = PRESETS[name](features=4, context_features=context_features, **SMALL).double()
    randomize(flow, seed=1)
    x = torch.randn(6, 4, dtype=torch.float64)
    context = torch.randn(6, context_features, dtype=torch.float64) if context_features else None
    flow.initialize(x, context)
    flow.eval()
    log_prob = flow.log_prob(x, context)
    assert log_prob.shape == (6,) and torch.isfinite(log_prob).all()
    torch.testing.assert_close(flow.decode(flow.encode(x, context), context), x)
    samples = flow.sample((5,), context)
    assert samples.shape == ((5, 6, 4) if context_features else (5, 4))
    samples, sample_log_prob = flow.sample_and_log_prob((3,), context)
    torch.testing.assert_close(sample_log_prob, flow.log_prob(samples, context))


def test_base_option_builds_the_named_conditional_base() -> None:
    # Heavy-tailed samples pushed through random weights reach 1e7, too far for a tight round trip,
    # so this checks the wiring: the base is the named family, conditional on the context.
    flow = randomize(NSF(4, context_features=2, base="student_t", **SMALL))
    assert type(flow.base) is type(make_base("student_t", 4, 2))
    x, context = torch.randn(6, 4), torch.randn(6, 2)
    log_prob = flow.log_prob(x, context)
    assert log_prob.shape == (6,) and torch.isfinite(log_prob).all()
    z, ladj = flow.transform(x, context)
    torch.testing.assert_close(log_prob, flow.base.log_prob(z, context) + ladj)
    assert not torch.allclose(log_prob, flow.log_prob(x, context + 1.0))


def test_one_dimensional_autoregressive_presets() -> None:
    for flow in [
        MAF(1, context_features=2, **SMALL),
        NSF(1, context_features=2, autoregressive=True, **SMALL),
    ]:
        randomize(flow)
        context = torch.randn(5, 2)
        assert flow.log_prob(torch.randn(5, 1), context).shape == (5,)
        assert flow.sample((), context).shape == (5, 1)


def test_conditional_one_dimensional_nsf_integrates_to_one() -> None:
    # The marginal over a grid: a conditional 1-D NSF density must integrate to 1 (quadrature).
    torch.manual_seed(0)
    flow = randomize(NSF(1, context_features=1, autoregressive=True, bins=4, **SMALL), scale=0.5).double()
    grid = torch.linspace(-12, 12, 6001, dtype=torch.float64)[:, None]
    density = flow.log_prob(grid, torch.full((6001, 1), 0.7, dtype=torch.float64)).exp()
    mass = torch.trapezoid(density, grid[:, 0])
    torch.testing.assert_close(mass, torch.tensor(1.0, dtype=torch.float64), atol=1e-4, rtol=0)


def test_layer_structure_follows_the_papers() -> None:
    nsf = NSF(4, transforms=3)
    kinds = [type(layer).__name__ for layer in nsf.transform]
    assert kinds == ["Permutation", "LULinear", "Coupling"] * 3
    assert isinstance(nsf.transform[0], Permutation) and isinstance(nsf.transform[1], LULinear)
    assert len(MAF(4, transforms=3).transform) == 5  # permutations between the layers only
    assert any(isinstance(layer, ActNorm) for layer in RealNVP(4, normalization="actnorm").transform)
    assert any(isinstance(layer, BatchNorm) for layer in MAF(4, batch_norm=True).transform)


@pytest.mark.parametrize("features", [3, 4, 5])
def test_nsf_coupling_with_reverse_permutations_transforms_every_feature(features: int) -> None:
    # Follow where each feature goes through the permutations: every one must be transformed within two
    # steps, whatever the parity of `features` (random permutations and LULinear give no such guarantee).
    flow = NSF(features, transforms=2, lu_linear=False, randperm=False)
    position_of = torch.arange(features)  # current position -> original feature
    transformed: set[int] = set()
    for layer in flow.transform:
        if isinstance(layer, Permutation):
            position_of = layer(position_of.double()[None])[0][0].long()
        else:
            transformed |= {int(position_of[i]) for i in layer.transformed_index}
    assert transformed == set(range(features))


@pytest.mark.parametrize("preset", [MAF, NSF, RealNVP], ids=lambda p: p.__name__)
def test_signatures_are_explicit_and_typed(preset: type[Flow]) -> None:
    parameters = list(inspect.signature(preset.__init__).parameters.values())[1:]
    kinds = {p.kind for p in parameters}
    assert inspect.Parameter.VAR_KEYWORD not in kinds and inspect.Parameter.VAR_POSITIONAL not in kinds
    assert all(p.annotation is not inspect.Parameter.empty for p in parameters)
    names = [p.name for p in parameters]
    assert names[:3] == ["features", "context_features", "transforms"] and "hidden_features" in names
    with pytest.raises(TypeError):
        preset(4, hidden_feature=(8,))  # a misspelt key is an error


@pytest.mark.parametrize(("preset", "transformed"), [(MAF, 2), (RealNVP, 1)])
def test_scale_bound_bounds_each_log_scale(preset: type[Flow], transformed: int) -> None:
    """Saturated conditioners drive the affine log-scales to +-`scale_bound`: one layer's |log det| reaches
    past what the default bound 3 allows with `scale_bound=8`, and never past `transformed * scale_bound`."""
    x = torch.randn(512, 2)
    for bound in (3.0, 8.0):
        options = {} if bound == 3.0 else {"scale_bound": bound}
        flow = randomize(preset(2, transforms=1, hidden_features=(8,), **options), scale=50.0, seed=1)
        _, ladj = flow.transform(x)
        largest = ladj.abs().max().item()
        assert bound - 0.5 < largest <= transformed * bound + 1e-4


@pytest.mark.parametrize(
    "build, argument",
    [
        (lambda: RealNVP(0), "features"),
        (lambda: NSF(0), "features"),
        (lambda: MAF(0), "features"),
        (lambda: MAF(3, transforms=0), "transforms"),
        (lambda: MAF(3, context_features=-1), "context_features"),
        (lambda: MAF(3, hidden_features=()), "hidden_features"),
        (lambda: MAF(3, hidden_features=(8, 4), residual_blocks=1), "hidden_features"),
        (lambda: NSF(3, bins=1), "bins"),
        (lambda: NSF(3, bound=0.0), "bound"),
        (lambda: NSF(3, tails="quadratic"), "tails"),
        (lambda: NSF(3, dropout=1.0), "dropout"),
        (lambda: RealNVP(3, normalization="layernorm"), "normalization"),
        (lambda: RealNVP(3, scale_function="relu"), "scale_function"),
        (lambda: MAF(3, base="uniform"), "base"),
        (lambda: MAF(3, scale_bound=0.0), "scale_bound"),
        (lambda: RealNVP(3, scale_bound=-1.0), "scale_bound"),
    ],
)
def test_bad_arguments_raise_value_error_naming_the_argument(
    build: Callable[[], Flow], argument: str
) -> None:
    with pytest.raises(ValueError, match=argument):
        build()


def test_every_preset_lives_in_one_namespace() -> None:
    """The image presets are importable from `flows.presets` (as the README says), and still from
    `flows.presets_image` and `flows`."""
    import flows
    import flows.presets as presets
    import flows.presets_image as presets_image
    from flows.presets import Glow  # noqa: F401 - the import itself is the check

    assert presets_image.__all__
    for name in presets_image.__all__:
        assert getattr(presets, name) is getattr(presets_image, name), name
        assert name in dir(presets)
    assert presets.Glow is flows.Glow and presets.RealNVPImage is flows.RealNVPImage
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        presets.Nope  # noqa: B018
