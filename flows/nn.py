"""Conditioner networks: `MLP`, `ResidualNet`, `MaskedLinear`, `MADE` and `ConvNet`.

Every network's last layer is zero-initialised, so a fresh coupling or autoregressive layer outputs
zero raw parameters, which every `flows.transformers` transformer maps to the identity. All networks
accept any leading batch dimensions.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Optional

import torch
from torch import Tensor, nn

__all__ = ["MLP", "ResidualNet", "MaskedLinear", "MADE", "ConvNet", "made_degrees"]


def _zero_(layer: nn.Module) -> nn.Module:
    """Zero the weight and bias of a linear or convolutional layer in place."""
    with torch.no_grad():
        layer.weight.zero_()
        if layer.bias is not None:
            layer.bias.zero_()
    return layer


def _check_widths(name: str, widths: Sequence[int]) -> tuple[int, ...]:
    try:
        widths = tuple(int(w) for w in widths)
    except TypeError as error:
        raise TypeError(f"{name} must be a sequence of ints, got {widths!r}") from error
    if any(w < 1 for w in widths):
        raise ValueError(f"{name} must contain positive ints, got {widths}")
    return widths


class MLP(nn.Module):
    """A multi-layer perceptron `(..., in_features) -> (..., out_features)` with a zero last layer."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        hidden_features: Sequence[int] = (64, 64),
        activation: type[nn.Module] = nn.ReLU,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        widths = _check_widths("hidden_features", hidden_features)
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        layers: list[nn.Module] = []
        previous = in_features
        for width in widths:
            layers += [nn.Linear(previous, width), activation()]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            previous = width
        layers.append(_zero_(nn.Linear(previous, out_features)))
        self.network = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.network(x)


class _BatchNorm(nn.BatchNorm1d):
    """`BatchNorm1d` over any leading batch dimensions `(..., features)`."""

    def forward(self, x: Tensor) -> Tensor:
        shape = x.shape
        return super().forward(x.reshape(-1, shape[-1])).reshape(shape)


class _ResidualBlock(nn.Module):
    """Pre-activation residual block `x + W2 act(W1 act(x))` (NSF); the second layer starts at zero."""

    def __init__(
        self, features: int, activation: type[nn.Module], dropout: float, batch_norm: bool, linear: type
    ) -> None:
        super().__init__()
        self.norm1 = _BatchNorm(features) if batch_norm else nn.Identity()
        self.norm2 = _BatchNorm(features) if batch_norm else nn.Identity()
        self.activation = activation()
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.linear1 = linear()
        self.linear2 = _zero_(linear())

    def forward(self, x: Tensor) -> Tensor:
        h = self.linear1(self.activation(self.norm1(x)))
        h = self.linear2(self.dropout(self.activation(self.norm2(h))))
        return x + h


class ResidualNet(nn.Module):
    """NSF-style residual network `(..., in_features) -> (..., out_features)` with a zero last layer."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        hidden_features: int = 64,
        residual_blocks: int = 2,
        activation: type[nn.Module] = nn.ReLU,
        dropout: float = 0.0,
        batch_norm: bool = False,
    ) -> None:
        super().__init__()
        if hidden_features < 1 or residual_blocks < 0:
            raise ValueError(
                f"hidden_features must be >= 1 and residual_blocks >= 0, got {hidden_features}, {residual_blocks}"
            )
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.initial = nn.Linear(in_features, hidden_features)
        self.blocks = nn.ModuleList(
            _ResidualBlock(
                hidden_features,
                activation,
                dropout,
                batch_norm,
                lambda: nn.Linear(hidden_features, hidden_features),
            )
            for _ in range(residual_blocks)
        )
        self.activation = activation()
        self.final = _zero_(nn.Linear(hidden_features, out_features))

    def forward(self, x: Tensor) -> Tensor:
        h = self.initial(x)
        for block in self.blocks:
            h = block(h)
        return self.final(self.activation(h))


class MaskedLinear(nn.Linear):
    """A linear layer whose weight is multiplied by a fixed 0/1 `mask (out_features, in_features)`."""

    def __init__(self, mask: Tensor, bias: bool = True) -> None:
        out_features, in_features = mask.shape
        super().__init__(in_features, out_features, bias=bias)
        self.register_buffer("mask", mask.to(self.weight.dtype))

    def forward(self, x: Tensor) -> Tensor:
        return nn.functional.linear(x, self.weight * self.mask, self.bias)


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
    ) -> None:
        super().__init__()
        widths = _check_widths("hidden_features", hidden_features)
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
        self.final = _zero_(MaskedLinear((output_degrees[:, None] > degrees[None, :]).float()))

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


class ConvNet(nn.Module):
    """Image conditioner `(..., C_in, H, W) -> (..., C_out, H, W)`: 3x3, 1x1, 3x3 convolutions (Glow).

    The last convolution is zero-initialised. A context `(..., context_features)` is appended as
    constant extra input channels.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        hidden_channels: int = 64,
        context_features: int = 0,
        activation: type[nn.Module] = nn.ReLU,
    ) -> None:
        super().__init__()
        if min(in_channels, out_channels, hidden_channels) < 1 or context_features < 0:
            raise ValueError(
                "ConvNet needs positive channel counts and context_features >= 0, got "
                f"in={in_channels}, out={out_channels}, hidden={hidden_channels}, context={context_features}"
            )
        self.context_features = context_features
        self.network = nn.Sequential(
            nn.Conv2d(in_channels + context_features, hidden_channels, 3, padding=1),
            activation(),
            nn.Conv2d(hidden_channels, hidden_channels, 1),
            activation(),
            _zero_(nn.Conv2d(hidden_channels, out_channels, 3, padding=1)),
        )

    def forward(self, x: Tensor, context: Optional[Tensor] = None) -> Tensor:
        batch = x.shape[:-3]
        h = x.reshape((-1,) + x.shape[-3:])
        if self.context_features:
            if context is None:
                raise ValueError(f"ConvNet expects a context with {self.context_features} features, got None")
            c = context.expand(batch + context.shape[-1:]).reshape(-1, self.context_features)
            c = c[:, :, None, None].expand(-1, -1, h.shape[-2], h.shape[-1])
            h = torch.cat([h, c], dim=1)
        out = self.network(h)
        return out.reshape(batch + out.shape[1:])
