"""Flow presets: the vector ones `MAF`, `NSF` and `RealNVP` as `Flow` subclasses with explicit typed arguments;
the image presets of `flows.presets_image` (`Glow`, `RealNVPImage`, ...) are importable from here too.

Every argument is a plain keyword with a type and a default (no `**kwargs`), so that a YAML config
(LightningCLI, `jsonargparse`) can build a preset and a misspelt key is an error naming the key.
Keyword names follow zuko where they overlap (`features`, `context_features`, `transforms`,
`hidden_features`, `bins`, `randperm`). The base distribution is `make_base(base, features, context_features, components)`:
`"normal"` (the default) is `StandardNormal(features)`; the other families become conditional with a context,
except `"gmm"` (a full-covariance `FullGaussianMixture` of `components` Gaussians, which `flows fit` and
`DensityEstimator` fit to the training data before the flow trains; `flows.training.mixture_base`).
`components` applies to the mixture bases only.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Optional

from flows.bijectors.autoregressive import MaskedAutoregressive
from flows.bijectors.coupling import Coupling
from flows.bijectors.linear import LULinear, Permutation
from flows.bijectors.normalization import ActNorm, BatchNorm
from flows.core import Bijector, Chain
from flows.distributions import make_base
from flows.flow import Flow
from flows.ops import SCALE_FUNCTIONS
from flows.presets_transformer import Jet, TarFlow

__all__ = ["MAF", "NSF", "RealNVP", "TarFlow", "Jet"]


# --------------------------------------------------------------------------------------- validation
def _int(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def _widths(hidden_features: Sequence[int]) -> tuple[int, ...]:
    if isinstance(hidden_features, int) or not isinstance(hidden_features, Sequence):
        raise TypeError(
            f"hidden_features must be a sequence of ints such as (128, 128), got {hidden_features!r}"
        )
    widths = tuple(hidden_features)
    if not widths or any(isinstance(w, bool) or not isinstance(w, int) or w < 1 for w in widths):
        raise ValueError(f"hidden_features must be a non-empty sequence of positive ints, got {widths}")
    return widths


def _dropout(dropout: float) -> float:
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")
    return float(dropout)


def _choice(name: str, value: object, choices: Sequence[str]) -> str:
    if value not in choices:
        raise ValueError(f"{name} must be one of {tuple(choices)}, got {value!r}")
    return value  # type: ignore[return-value]


def _check_common(
    features: object,
    minimum_features: int,
    context_features: object,
    transforms: object,
    hidden_features: Sequence[int],
    residual_blocks: object,
    dropout: float,
) -> tuple[int, int, int, tuple[int, ...], int, float]:
    """Validate the arguments every vector preset shares; returns them normalised:
    `(features, context_features, transforms, hidden widths, residual_blocks, dropout)`."""
    features = _int("features", features, minimum_features)
    context_features = _int("context_features", context_features, 0)
    transforms = _int("transforms", transforms, 1)
    residual_blocks = _int("residual_blocks", residual_blocks, 0)
    widths = _widths(hidden_features)
    if residual_blocks and len(set(widths)) != 1:
        raise ValueError(f"hidden_features must have equal widths with residual_blocks > 0, got {widths}")
    return features, context_features, transforms, widths, residual_blocks, _dropout(dropout)


def _permutation(features: int, randperm: bool, seed: int, step: int) -> Permutation:
    if randperm:
        return Permutation(features, kind="random", seed=seed + step)
    return Permutation(features, kind="reverse")


class MAF(Flow):
    """Masked autoregressive flow (Papamakarios et al. 2017): affine MADE layers and permutations.

    `transforms` `MaskedAutoregressive` layers with `hidden_features` MADE widths (`residual_blocks > 0`
    uses masked residual blocks of equal width), separated by reverse permutations or, with
    `randperm=True`, random ones (seeded by `seed + step`). `batch_norm=True` adds a `BatchNorm` after
    each autoregressive layer, as in the MAF paper. `scale_bound` bounds the log-scale of `tanh` scales to
    `(-scale_bound, scale_bound)` (see `flows.ops.log_scale_from_raw`); a target whose scale varies over
    many e-folds (Neal's funnel: `exp(x0 / 2)`, `x0` in [-9, 9]) needs a wider bound than the default 3.
    """

    def __init__(
        self,
        features: int,
        context_features: int = 0,
        transforms: int = 5,
        hidden_features: Sequence[int] = (128, 128),
        residual_blocks: int = 0,
        randperm: bool = False,
        scale_function: str = "tanh",
        scale_bound: float = 3.0,
        batch_norm: bool = False,
        dropout: float = 0.0,
        seed: int = 0,
        base: str = "normal",
        components: Optional[int] = None,
    ) -> None:
        features, context_features, transforms, widths, residual_blocks, dropout = _check_common(
            features, 1, context_features, transforms, hidden_features, residual_blocks, dropout
        )
        _choice("scale_function", scale_function, SCALE_FUNCTIONS)
        layers: list[Bijector] = []
        for step in range(transforms):
            if step > 0:
                layers.append(_permutation(features, randperm, seed, step))
            layers.append(
                MaskedAutoregressive(
                    features,
                    "affine",
                    context_features=context_features,
                    hidden_features=widths,
                    residual_blocks=residual_blocks,
                    dropout=dropout,
                    scale_function=scale_function,
                    scale_bound=scale_bound,
                )
            )
            if batch_norm:
                layers.append(BatchNorm(features))
        super().__init__(
            Chain(layers),
            make_base(base, features, context_features, components=components),
            context_features=context_features,
        )


class NSF(Flow):
    """Neural spline flow (Durkan et al. 2019) with the paper's defaults.

    Each of the `transforms` steps is a permutation (random by default, seeded by `seed + step`;
    reverse with `randperm=False`), an `LULinear` (unless `lu_linear=False`) and a rational-quadratic
    spline transform with `bins` bins on `[-bound, bound]` and `tails` outside: a coupling layer with
    alternating masks (default) or, with `autoregressive=True`, a masked autoregressive layer. The
    conditioners are residual networks with `residual_blocks` blocks of width `hidden_features[0]`
    (`residual_blocks=0`: plain MLPs / MADEs with `hidden_features` widths). With `features=1` there is
    nothing to couple on: each step is an element-wise spline whose parameters are learned constants (or
    functions of the context), a one-feature masked autoregressive layer.

    `bound` defaults to 5 (the paper used 3): on standardised data the learned linear tails then carry a
    mass of about 1e-6 of the base, so samples keep the data's moments (with 3, tail slopes learned near the
    minimum derivative sent 0.3% of the samples hundreds of standard deviations out).
    """

    def __init__(
        self,
        features: int,
        context_features: int = 0,
        transforms: int = 5,
        hidden_features: Sequence[int] = (128, 128),
        bins: int = 8,
        bound: float = 5.0,
        tails: str = "linear",
        autoregressive: bool = False,
        residual_blocks: int = 2,
        dropout: float = 0.0,
        lu_linear: bool = True,
        randperm: bool = True,
        seed: int = 0,
        base: str = "normal",
        components: Optional[int] = None,
    ) -> None:
        features, context_features, transforms, widths, residual_blocks, dropout = _check_common(
            features,
            1,
            context_features,
            transforms,
            hidden_features,
            residual_blocks,
            dropout,
        )
        bins = _int("bins", bins, 2)
        if not bound > 0:
            raise ValueError(f"bound must be > 0, got {bound}")
        _choice("tails", tails, ("linear", "identity"))
        layers: list[Bijector] = []
        for step in range(transforms):
            layers.append(_permutation(features, randperm, seed, step))
            if lu_linear:
                layers.append(LULinear(features))
            if autoregressive or features == 1:  # one feature: nothing to couple on
                layers.append(
                    MaskedAutoregressive(
                        features,
                        "spline",
                        context_features=context_features,
                        hidden_features=widths,
                        residual_blocks=residual_blocks,
                        dropout=dropout,
                        bins=bins,
                        bound=float(bound),
                        tails=tails,
                    )
                )
            else:
                # A reverse permutation of an even number of features already swaps the parity of every
                # index, so alternating the mask too would transform the same features at every step.
                parity = step % 2 == 1 and (randperm or features % 2 == 1)
                layers.append(
                    Coupling(
                        features,
                        "spline",
                        mask="alternating",
                        parity=parity,
                        context_features=context_features,
                        hidden_features=widths,
                        residual_blocks=residual_blocks if residual_blocks else None,
                        dropout=dropout,
                        bins=bins,
                        bound=float(bound),
                        tails=tails,
                    )
                )
        super().__init__(
            Chain(layers),
            make_base(base, features, context_features, components=components),
            context_features=context_features,
        )


class RealNVP(Flow):
    """Real NVP (Dinh et al. 2017) for vectors: affine coupling layers with alternating masks.

    `normalization`: `"none"`, `"actnorm"` (before each coupling; call
    `flow.initialize(x)` on a first batch) or `"batchnorm"` (after
    each coupling, as in the paper). `residual_blocks=0` uses MLP conditioners with `hidden_features`
    widths; more uses residual networks of width `hidden_features[0]`. With `features=1` each coupling
    becomes an element-wise affine map with learned (or context-dependent) shift and scale. `scale_bound`
    bounds the log-scale of `tanh` scales to `(-scale_bound, scale_bound)`.
    """

    def __init__(
        self,
        features: int,
        context_features: int = 0,
        transforms: int = 5,
        hidden_features: Sequence[int] = (128, 128),
        scale_function: str = "tanh",
        scale_bound: float = 3.0,
        normalization: str = "none",
        residual_blocks: int = 0,
        dropout: float = 0.0,
        base: str = "normal",
        components: Optional[int] = None,
    ) -> None:
        features, context_features, transforms, widths, residual_blocks, dropout = _check_common(
            features, 1, context_features, transforms, hidden_features, residual_blocks, dropout
        )
        _choice("scale_function", scale_function, SCALE_FUNCTIONS)
        _choice("normalization", normalization, ("none", "actnorm", "batchnorm"))
        layers: list[Bijector] = []
        for step in range(transforms):
            if normalization == "actnorm":
                layers.append(ActNorm(features))
            if features == 1:  # one feature: nothing to couple on
                layers.append(
                    MaskedAutoregressive(
                        1,
                        "affine",
                        context_features=context_features,
                        hidden_features=widths,
                        residual_blocks=residual_blocks,
                        dropout=dropout,
                        scale_function=scale_function,
                        scale_bound=scale_bound,
                    )
                )
            else:
                layers.append(
                    Coupling(
                        features,
                        "affine",
                        mask="alternating",
                        parity=step % 2 == 1,
                        context_features=context_features,
                        hidden_features=widths,
                        residual_blocks=residual_blocks if residual_blocks else None,
                        dropout=dropout,
                        scale_function=scale_function,
                        scale_bound=scale_bound,
                    )
                )
            if normalization == "batchnorm":
                layers.append(BatchNorm(features))
        super().__init__(
            Chain(layers),
            make_base(base, features, context_features, components=components),
            context_features=context_features,
        )


# ------------------------------------------------------------------------ one namespace for every preset
def __getattr__(name: str) -> object:
    """The image presets (`Glow`, `RealNVPImage`, ... : `flows.presets_image.__all__`) from this module too, so
    `flows.presets` is the one place for every preset; imported on first access (they need no more than this
    module, but vector users need not load them)."""
    import flows.presets_image as image

    if name in image.__all__:
        return getattr(image, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    import flows.presets_image as image

    return sorted(set(globals()) | set(image.__all__))
