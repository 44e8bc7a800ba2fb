"""Image flow presets: `Glow` (Kingma & Dhariwal 2018) and `RealNVPImage` (Dinh et al. 2017).

Both map an image event `(C, H, W)` to a latent of the same shape, scored by a `StandardNormal`. The
multiscale architecture is built from `Squeeze` and `MultiscaleSplit`: at every level but the last, half
of the channels are factored out to the latent, and the level ends by un-squeezing, so the latent keeps
the data's layout. With `split_prior=True` (the default) each split is followed by Glow's learned prior
for the factored-out half (see `split_prior_coupling`). Call `initialize(x)` on a first batch before
training (ActNorm data-dependent init).
"""

from __future__ import annotations

from flows.bijectors.conv import Invertible1x1Conv
from flows.bijectors.coupling import ImageCoupling
from flows.bijectors.normalization import ActNorm
from flows.bijectors.reshape import MultiscaleSplit, Squeeze
from flows.core import Bijector, Chain, Inverse
from flows.distributions import StandardNormal
from flows.flow import Flow

__all__ = ["Glow", "RealNVPImage", "split_prior_coupling"]

_COUPLINGS = ("affine", "additive", "spline")


def _check_shape(shape: object, halvings: int) -> tuple[int, int, int]:
    if not isinstance(shape, (tuple, list)) or len(shape) != 3:
        raise ValueError(f"shape must be an image event (C, H, W), got {shape!r}")
    for size in shape:
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"shape must hold positive ints (C, H, W), got {shape!r}")
    factor = 2**halvings
    if shape[1] % factor or shape[2] % factor:
        raise ValueError(
            f"the levels halve the height and width {halvings} times, so both must be divisible by "
            f"{factor}, got shape {tuple(shape)}"
        )
    return (shape[0], shape[1], shape[2])


def _check_positive(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


def _check_coupling(coupling: str) -> str:
    if coupling not in _COUPLINGS:
        raise ValueError(f"coupling must be one of {_COUPLINGS}, got {coupling!r}")
    return coupling


def _kept(shape: tuple[int, int, int]) -> tuple[int, int, int]:
    """The shape `MultiscaleSplit` passes on to the next level."""
    return (shape[0] - shape[0] // 2, shape[1], shape[2])


def _check_bool(value: object, name: str) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__} {value!r}")
    return value


def split_prior_coupling(
    shape: tuple[int, int, int], context_features: int = 0, hidden_channels: int = 128
) -> ImageCoupling:
    """Glow's learned split prior over an event `shape = (C, H, W)`, as an affine channel coupling.

    Placed after a `MultiscaleSplit(shape, ...)`, whose first `C - C // 2` channels are the kept half `h`
    (already mapped by the inner transform) and whose last `C // 2` channels are the factored-out `z_f`.
    The coupling conditions on its first `ceil(C / 2) = C - C // 2` channels (`h`) and maps the rest to
    `(z_f - mu(h)) / sigma(h)`, whose standard-normal density is `N(z_f; mu(h), sigma(h))` once the
    log-determinant `-sum log sigma(h)` is added: exactly Glow's conditional Gaussian prior. The conv
    net's last layer is zero-initialised, so a fresh prior is the standard normal (the identity map).
    """
    return ImageCoupling(
        shape,
        transformer="affine",
        mask="channel",
        parity=False,
        context_features=context_features,
        hidden_channels=hidden_channels,
    )


class Glow(Flow):
    """Glow: `levels` levels of (Squeeze, `steps` x (ActNorm, LU 1x1 conv, channel coupling), split).

    Event `shape = (C, H, W)`, with `H` and `W` divisible by `2 ** levels`. Every level but the last
    ends with a `MultiscaleSplit` that factors out half of the channels. `coupling` picks the coupling
    transformer (`"affine"` as in the paper, `"additive"`, or a rational-quadratic `"spline"` with
    `bins` bins); `hidden_channels` sizes the coupling conv nets: the paper uses 512, the default 128
    keeps CPU training practical. `context_features > 0` conditions every coupling on a context.
    `split_prior=True` (default) adds Glow's learned prior after every split: the factored-out half is
    `N(mu(h), sigma(h))` given the kept half `h` (and the context), predicted by a zero-initialised conv
    net of `hidden_channels` (`split_prior_coupling`); `split_prior=False` scores the factored-out
    channels with the standard normal base directly (the behaviour before this option existed).
    """

    def __init__(
        self,
        shape: tuple[int, int, int],
        context_features: int = 0,
        levels: int = 3,
        steps: int = 8,
        hidden_channels: int = 128,
        coupling: str = "affine",
        bins: int = 8,
        split_prior: bool = True,
    ) -> None:
        _check_positive(levels, "levels")
        shape = _check_shape(shape, levels)
        _check_bool(split_prior, "split_prior")
        _check_positive(steps, "steps")
        _check_positive(hidden_channels, "hidden_channels")
        _check_positive(bins, "bins")
        coupling = _check_coupling(coupling)
        if (
            isinstance(context_features, bool)
            or not isinstance(context_features, int)
            or context_features < 0
        ):
            raise ValueError(f"context_features must be a non-negative int, got {context_features!r}")

        def step(squeezed: tuple[int, int, int], index: int) -> list[Bijector]:
            return [
                ActNorm(shape=squeezed),
                Invertible1x1Conv(squeezed[0], lu=True),
                ImageCoupling(
                    squeezed,
                    transformer=coupling,
                    mask="channel",
                    parity=index % 2 == 1,
                    context_features=context_features,
                    hidden_channels=hidden_channels,
                    bins=bins if coupling == "spline" else None,
                ),
            ]

        def level(level_shape: tuple[int, int, int], index: int) -> Chain:
            squeeze = Squeeze(level_shape)
            squeezed = squeeze.output_shape
            members: list[Bijector] = [squeeze]
            for k in range(steps):
                members += step(squeezed, k)
            if index < levels - 1:
                inner = level(_kept(squeezed), index + 1)
                members.append(MultiscaleSplit(squeezed, inner, context_features=context_features))
                if split_prior:
                    members.append(split_prior_coupling(squeezed, context_features, hidden_channels))
            members.append(Inverse(Squeeze(level_shape)))
            return Chain(members)

        super().__init__(level(shape, 0), StandardNormal(shape), context_features=context_features)
        self.levels, self.steps, self.coupling = levels, steps, coupling
        self.split_prior = split_prior


class RealNVPImage(Flow):
    """Multiscale RealNVP (Dinh et al. 2017) on images `shape = (C, H, W)`.

    Each of the first `levels - 1` scales applies 3 checkerboard couplings (alternating parity),
    squeezes, applies 3 channel couplings, and factors out half of the channels; the last scale applies
    4 checkerboard couplings. Every coupling is preceded by an ActNorm (the paper used batch
    normalisation; ActNorm has no train/eval asymmetry). `H` and `W` must be divisible by
    `2 ** (levels - 1)`. `coupling`, `bins`, `hidden_channels`, `context_features` and `split_prior`
    (default True; False = the previous standard-normal prior on the factored-out channels) as in `Glow`.
    """

    def __init__(
        self,
        shape: tuple[int, int, int],
        context_features: int = 0,
        levels: int = 2,
        hidden_channels: int = 64,
        coupling: str = "affine",
        bins: int = 8,
        split_prior: bool = True,
    ) -> None:
        _check_positive(levels, "levels")
        shape = _check_shape(shape, levels - 1)
        _check_bool(split_prior, "split_prior")
        _check_positive(hidden_channels, "hidden_channels")
        _check_positive(bins, "bins")
        coupling = _check_coupling(coupling)
        if (
            isinstance(context_features, bool)
            or not isinstance(context_features, int)
            or context_features < 0
        ):
            raise ValueError(f"context_features must be a non-negative int, got {context_features!r}")

        def couplings(layer_shape: tuple[int, int, int], mask: str, count: int) -> list[Bijector]:
            members: list[Bijector] = []
            for k in range(count):
                members.append(ActNorm(shape=layer_shape))
                members.append(
                    ImageCoupling(
                        layer_shape,
                        transformer=coupling,
                        mask=mask,
                        parity=k % 2 == 1,
                        context_features=context_features,
                        hidden_channels=hidden_channels,
                        bins=bins if coupling == "spline" else None,
                    )
                )
            return members

        def scale(scale_shape: tuple[int, int, int], index: int) -> Chain:
            if index == levels - 1:
                return Chain(couplings(scale_shape, "checkerboard", 4))
            squeeze = Squeeze(scale_shape)
            squeezed = squeeze.output_shape
            members = couplings(scale_shape, "checkerboard", 3) + [squeeze]
            members += couplings(squeezed, "channel", 3)
            inner = scale(_kept(squeezed), index + 1)
            members.append(MultiscaleSplit(squeezed, inner, context_features=context_features))
            if split_prior:
                members.append(split_prior_coupling(squeezed, context_features, hidden_channels))
            members.append(Inverse(Squeeze(scale_shape)))
            return Chain(members)

        super().__init__(scale(shape, 0), StandardNormal(shape), context_features=context_features)
        self.levels, self.coupling = levels, coupling
        self.split_prior = split_prior
