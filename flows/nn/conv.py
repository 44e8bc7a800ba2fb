"""`ConvNet`: the Glow-style image conditioner."""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from flows.nn._common import zero_

__all__ = ["ConvNet"]


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
            zero_(nn.Conv2d(hidden_channels, out_channels, 3, padding=1)),
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
