"""Coupling over tokens with a `ViT` conditioner (Jet, Kolesnikov et al. 2024), as a `MaskedCoupling`.

The event is `(T, D)`. A `"channels"` split conditions on a fixed random half of the features of every
token (a new draw per layer, from `seed`); a `"spatial"` split conditions on half of the tokens, in a
checkerboard over the patch grid (`grid_width` tokens per row). The ViT sees all `T` tokens with the
transformed elements zeroed (the split is fixed per layer, so the positional embedding tells it which) and
returns `D * P` raw parameters per token, of which the transformed elements are gathered: one mechanism
for both splits, as `ImageConditioner` does for the checkerboard images.
"""

from __future__ import annotations

from typing import Any, Literal, Optional

import torch
from torch import Tensor, nn

from flows.bijectors.coupling import MaskedCoupling, build_transformer
from flows.nn import ViT

__all__ = ["TokenCoupling", "token_mask"]

SPLITS = ("channels", "spatial")


def token_mask(
    tokens: int,
    features: int,
    split: Literal["channels", "spatial"],
    parity: bool = False,
    seed: int = 0,
    grid_width: Optional[int] = None,
) -> Tensor:
    """`(tokens, features)` bool mask, True on the conditioning elements.

    `"channels"`: the same random `ceil(features / 2)` features of every token (drawn with `seed`).
    `"spatial"`: tokens at `(row + column)` even on a grid of `grid_width` columns (default `tokens`:
    alternate tokens). `parity=True` swaps the roles.
    """
    if split == "channels":
        if features < 2:
            raise ValueError(f"a channels split needs at least 2 features per token, got {features}")
        chosen = torch.randperm(features, generator=torch.Generator().manual_seed(seed))[
            : (features + 1) // 2
        ]
        row = torch.zeros(features, dtype=torch.bool)
        row[chosen] = True
        mask = row.expand(tokens, features).clone()
    elif split == "spatial":
        if tokens < 2:
            raise ValueError(f"a spatial split needs at least 2 tokens, got {tokens}")
        width = tokens if grid_width is None else grid_width
        if isinstance(width, bool) or not isinstance(width, int) or width < 1 or tokens % width:
            raise ValueError(f"grid_width must be a positive divisor of tokens={tokens}, got {grid_width!r}")
        index = torch.arange(tokens)
        board = (index // width + index % width) % 2 == 0
        mask = board[:, None].expand(tokens, features).clone()
    else:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return ~mask if parity else mask


class TokenConditioner(nn.Module):
    """`x_cond (batch + (n_cond,))` -> raw parameters `batch + (n_transformed, P)` through a `ViT`."""

    def __init__(self, mask: Tensor, num_params: int, vit: ViT) -> None:
        super().__init__()
        flat = mask.reshape(-1)
        self.shape = tuple(mask.shape)
        self.num_params = num_params
        self.vit = vit
        self.register_buffer("transformed_index", torch.nonzero(~flat).reshape(-1))
        permutation = torch.cat([torch.nonzero(flat).reshape(-1), self.transformed_index])
        self.register_buffer("merge_index", torch.argsort(permutation))

    def forward(self, x_cond: Tensor, context: Optional[Tensor]) -> Tensor:
        batch = x_cond.shape[:-1]
        zeros = x_cond.new_zeros(batch + self.transformed_index.shape)
        tokens = torch.cat([x_cond, zeros], dim=-1).index_select(-1, self.merge_index)
        out = self.vit(tokens.reshape(batch + self.shape), context)
        out = out.reshape(batch + (self.shape[0] * self.shape[1], self.num_params))
        return out.index_select(-2, self.transformed_index)


class TokenCoupling(MaskedCoupling):
    """Coupling over a `(tokens, features)` event with a ViT conditioner (see the module docstring).

    `split` is `"channels"` or `"spatial"`; `parity` swaps the halves; `seed` draws the channels split;
    `grid_width` is the patch grid's width for the spatial checkerboard. `channels`, `layers`, `heads` and
    `mlp_ratio` size the ViT. Transformer options as in `Coupling` (keyword or `transformer_options`).
    """

    def __init__(
        self,
        tokens: int,
        features: int,
        split: Literal["channels", "spatial"] = "channels",
        parity: bool = False,
        seed: int = 0,
        grid_width: Optional[int] = None,
        transformer: str = "affine",
        context_features: int = 0,
        channels: int = 64,
        layers: int = 2,
        heads: int = 4,
        mlp_ratio: int = 4,
        scale_function: Optional[str] = None,
        scale_bound: Optional[float] = None,
        transformer_options: Optional[dict[str, Any]] = None,
    ) -> None:
        for name, value in (("tokens", tokens), ("features", features)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if (
            isinstance(context_features, bool)
            or not isinstance(context_features, int)
            or context_features < 0
        ):
            raise ValueError(f"context_features must be an int >= 0, got {context_features!r}")
        built = build_transformer(
            transformer, transformer_options, scale_function=scale_function, scale_bound=scale_bound
        )
        mask = token_mask(tokens, features, split, parity, seed, grid_width)
        vit = ViT(
            tokens,
            features,
            features * built.num_params,
            context_features,
            channels=channels,
            layers=layers,
            heads=heads,
            mlp_ratio=mlp_ratio,
        )
        super().__init__(mask, TokenConditioner(mask, built.num_params, vit), built, context_features)
        self.split_kind = split
