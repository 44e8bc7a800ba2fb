"""Transformer flow presets for images: `TarFlow` (Zhai et al. 2024) and `Jet` (Kolesnikov et al. 2024).

Both cut the image `(C, H, W)` into `patch_size x patch_size` patches (`Patchify`, tokens `(T, D)` with
`T = HW / p^2`, `D = p^2 C`), transform the tokens, and map them back to the image layout at the end
(`Inverse(Patchify)`), so the latent keeps the data's shape and a `StandardNormal` over it scores it.
A context (`context_features > 0`, e.g. a one-hot class) is embedded and added to every token of every
transformer: class-conditional models.

- `TarFlow`: `blocks` affine autoregressive layers over the tokens, each conditioned by a causal
  transformer of `layers_per_block` blocks, with the token order reversed between blocks (alternating
  direction). Sampling inverts each block token by token through the transformer's key-value cache
  (`Autoregressive`, `inverse_method`).
- `Jet`: `couplings` affine coupling layers over the tokens with ViT conditioners of
  `layers_per_coupling` blocks, alternating a random channel split and a checkerboard split of the patches
  (`splits="alternate"`), or channel splits only (`splits="channels"`).
"""

from __future__ import annotations

from typing import Optional

from flows.bijectors.autoregressive import INVERSE_METHODS, Autoregressive
from flows.bijectors.token_coupling import TokenCoupling
from flows.bijectors.tokens import Patchify, ReverseTokens
from flows.core import Bijector, Chain, Inverse
from flows.distributions import StandardNormal
from flows.flow import Flow
from flows.nn import CausalTransformer
from flows.nn._common import check_int
from flows.transformers import Affine

__all__ = ["TarFlow", "Jet"]

_SPLITS = ("alternate", "channels")


def _patchify(shape: object, patch_size: int) -> Patchify:
    check_int("patch_size", patch_size)
    if not isinstance(shape, (tuple, list)) or len(shape) != 3:
        raise ValueError(f"shape must be an image event (C, H, W), got {shape!r}")
    return Patchify(tuple(shape), patch_size)  # type: ignore[arg-type]


class TarFlow(Flow):
    """TarFlow: `blocks` causal-transformer affine autoregressive layers over image patches.

    `shape = (C, H, W)` with `H` and `W` divisible by `patch_size`. Each block's `CausalTransformer` has
    `layers_per_block` pre-norm blocks of `channels` channels and `heads` heads; the affine scale is
    `scale_function` bounded by `scale_bound` (see `flows.transformers.Affine`). `inverse_method` is the
    blocks' inverse (`"auto"`: the key-value-cached sequential loop; `"fixed_point"`: Jacobi decoding, which
    stops when no element changes by more than `inverse_tol`). In float32 the default tolerance (1e-6) is
    at the rounding level of values of a few units, and rounding changes travel one token per pass, so
    Jacobi decoding then often runs all `T` passes; `inverse_tol=1e-4` stopped after 12 of 64 in
    `benchmarks/bench_tarflow_sampling.py`. See the module docstring.
    """

    def __init__(
        self,
        shape: tuple[int, int, int],
        context_features: int = 0,
        patch_size: int = 2,
        blocks: int = 4,
        layers_per_block: int = 2,
        channels: int = 64,
        heads: int = 4,
        mlp_ratio: int = 4,
        scale_function: str = "tanh",
        scale_bound: float = 3.0,
        inverse_method: str = "auto",
        inverse_tol: Optional[float] = None,
    ) -> None:
        patchify = _patchify(shape, patch_size)
        check_int("blocks", blocks)
        check_int("context_features", context_features, 0)
        if inverse_method not in INVERSE_METHODS:
            raise ValueError(f"inverse_method must be one of {INVERSE_METHODS}, got {inverse_method!r}")
        transformer = Affine(scale_function=scale_function, scale_bound=scale_bound)  # type: ignore[arg-type]
        tokens, features = patchify.token_shape
        members: list[Bijector] = [patchify]
        for index in range(blocks):
            if index > 0:
                members.append(ReverseTokens())
            network = CausalTransformer(
                tokens,
                features,
                transformer.num_params,
                context_features,
                channels=channels,
                layers=layers_per_block,
                heads=heads,
                mlp_ratio=mlp_ratio,
            )
            members.append(Autoregressive(network, transformer, inverse_method, inverse_tol))
        members.append(Inverse(Patchify(patchify.image_shape, patch_size)))
        super().__init__(
            Chain(members), StandardNormal(patchify.image_shape), context_features=context_features
        )
        self.patch_size, self.blocks = patch_size, blocks


class Jet(Flow):
    """Jet: `couplings` affine coupling layers over image patches with ViT conditioners.

    `shape = (C, H, W)` with `H` and `W` divisible by `patch_size`. Each ViT has `layers_per_coupling`
    pre-norm blocks of `channels` channels and `heads` heads. `splits="alternate"` alternates a channel
    split (a fresh random half of each token's features per layer) with a checkerboard split of the
    patch grid (alternating parity); `"channels"` uses channel splits only. See the module docstring.
    """

    def __init__(
        self,
        shape: tuple[int, int, int],
        context_features: int = 0,
        patch_size: int = 2,
        couplings: int = 8,
        layers_per_coupling: int = 2,
        channels: int = 64,
        heads: int = 4,
        mlp_ratio: int = 4,
        splits: str = "alternate",
        scale_function: str = "tanh",
        scale_bound: float = 3.0,
    ) -> None:
        patchify = _patchify(shape, patch_size)
        check_int("couplings", couplings)
        check_int("context_features", context_features, 0)
        if splits not in _SPLITS:
            raise ValueError(f"splits must be one of {_SPLITS}, got {splits!r}")
        tokens, features = patchify.token_shape
        members: list[Bijector] = [patchify]
        for index in range(couplings):
            spatial = splits == "alternate" and index % 2 == 1 and tokens >= 2
            members.append(
                TokenCoupling(
                    tokens,
                    features,
                    split="spatial" if spatial else "channels",
                    parity=spatial and index % 4 == 3,
                    seed=index,
                    grid_width=patchify.grid[1],
                    context_features=context_features,
                    channels=channels,
                    layers=layers_per_coupling,
                    heads=heads,
                    mlp_ratio=mlp_ratio,
                    scale_function=scale_function,
                    scale_bound=scale_bound,
                )
            )
        members.append(Inverse(Patchify(patchify.image_shape, patch_size)))
        super().__init__(
            Chain(members), StandardNormal(patchify.image_shape), context_features=context_features
        )
        self.patch_size, self.couplings = patch_size, couplings
