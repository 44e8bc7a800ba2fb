"""`MaskedLinear` and `MADE` (Germain et al. 2015), the masked autoregressive conditioner."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Optional

import torch
from torch import Tensor, nn

from flows.nn._common import check_widths, linear, zero_
from flows.nn.mlp import _ResidualBlock

__all__ = ["MaskedLinear", "MADE", "made_degrees"]


class MaskedLinear(nn.Linear):
    """A linear layer whose weight is multiplied by a fixed 0/1 `mask (out_features, in_features)`;
    `feature_major` as in `flows.nn._common.linear`."""

    def __init__(self, mask: Tensor, bias: bool = True, feature_major: bool = False) -> None:
        out_features, in_features = mask.shape
        super().__init__(in_features, out_features, bias=bias)
        self.register_buffer("mask", mask.to(self.weight.dtype))
        self.feature_major = feature_major

    def forward(self, x: Tensor) -> Tensor:
        return linear(x, self.weight * self.mask, self.bias, self.feature_major)


def made_degrees(width: int, features: int, with_context: bool) -> Tensor:
    """Degrees of `width` hidden MADE units, cycling over `{low, ..., features - 2}`.

    `low` is -1 with a context: units of degree -1 see no input, only the context, and may feed every
    output, so even the first output in the order depends on the context.
    """
    low = -1 if with_context else 0
    span = max(1, features - 1 - low)
    return low + torch.arange(width) % span


class MADE(nn.Module):
    """Masked autoencoder (Germain et al. 2015): `(..., features) -> (..., features, params_per_feature)`.

    Output `d` depends only on inputs `i` with `order[i] < order[d]`. `order` is a permutation of
    `range(features)` (identity by default). The context enters every unit of the first hidden layer
    unmasked. With `residual_blocks > 0`, the hidden layers are masked residual blocks of width
    `hidden_features[0]` (all widths must then be equal), as in NSF's autoregressive variant.
    `feature_major_output` as in `MLP`.
    """

    def __init__(
        self,
        features: int,
        context_features: int = 0,
        hidden_features: Sequence[int] = (64, 64),
        params_per_feature: int = 2,
        residual_blocks: int = 0,
        order: Optional[Tensor] = None,
        activation: type[nn.Module] = nn.ReLU,
        dropout: float = 0.0,
        feature_major_output: bool = False,
    ) -> None:
        super().__init__()
        widths = check_widths("hidden_features", hidden_features)
        if features < 1 or context_features < 0 or params_per_feature < 1 or residual_blocks < 0:
            raise ValueError(
                "MADE needs features >= 1, context_features >= 0, params_per_feature >= 1 and "
                f"residual_blocks >= 0, got {features}, {context_features}, {params_per_feature}, {residual_blocks}"
            )
        if not widths:
            raise ValueError("hidden_features must contain at least one width, got ()")
        if residual_blocks > 0 and len(set(widths)) != 1:
            raise ValueError(f"residual MADE needs equal hidden widths, got hidden_features={widths}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        order = torch.arange(features) if order is None else torch.as_tensor(order).long()
        if order.shape != (features,) or not torch.equal(order.sort().values, torch.arange(features)):
            raise ValueError(f"order must be a permutation of range({features}), got {order.tolist()}")
        self.features = features
        self.event_shape = (features,)
        self.context_features = context_features
        self.params_per_feature = params_per_feature
        self.register_buffer("order", order)
        with_context = context_features > 0

        degrees = made_degrees(widths[0], features, with_context)
        # With one feature no hidden unit may see the input: the first layer is the context (or zeros).
        self.initial = MaskedLinear((degrees[:, None] >= order[None, :]).float()) if features > 1 else None
        self.first_width = widths[0]
        self.context_layer = nn.Linear(context_features, widths[0]) if with_context else None
        self.activation = activation()
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        layers: list[nn.Module] = []
        if residual_blocks > 0:
            square = (degrees[:, None] >= degrees[None, :]).float()
            layers = [
                _ResidualBlock(widths[0], activation, dropout, False, lambda: MaskedLinear(square))
                for _ in range(residual_blocks)
            ]
        else:
            for width in widths[1:]:
                next_degrees = made_degrees(width, features, with_context)
                layers.append(MaskedLinear((next_degrees[:, None] >= degrees[None, :]).float()))
                degrees = next_degrees
        self.hidden = nn.ModuleList(layers)
        self.residual = residual_blocks > 0
        output_degrees = order.repeat_interleave(params_per_feature)
        self.final = zero_(
            MaskedLinear(
                (output_degrees[:, None] > degrees[None, :]).float(), feature_major=feature_major_output
            )
        )

    def forward(self, x: Tensor, context: Optional[Tensor] = None) -> Tensor:
        """`x (batch + (features,))`, `context (batch + (context_features,))` -> `batch + (features, P)`."""
        if self.initial is not None:
            h = self.initial(x)
        else:
            h = x.new_zeros(x.shape[:-1] + (self.first_width,))
        if self.context_layer is not None:
            if context is None:
                raise ValueError(f"MADE expects a context with {self.context_features} features, got None")
            h = h + self.context_layer(context)
        if self.residual:
            for block in self.hidden:
                h = block(h)
            h = self.activation(h)
        else:
            h = self.dropout(self.activation(h))
            for layer in self.hidden:
                h = self.dropout(self.activation(layer(h)))
        out = self.final(h)
        return out.reshape(out.shape[:-1] + (self.features, self.params_per_feature))
