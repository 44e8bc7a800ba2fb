"""`ViT`: a non-causal transformer conditioner over tokens (Jet, Kolesnikov et al. 2024).

Input tokens `(..., L, D_in)` are projected to `channels`, given a learned positional embedding and the
embedded context (added to every token), run through pre-norm blocks with full attention, and projected
by a zero-initialised head to `(..., L, D_out)`.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from flows.nn._common import check_int, zero_
from flows.nn.attention import Block, check_heads

__all__ = ["ViT"]


class ViT(nn.Module):
    """`x (..., tokens, in_features)`, `context (..., context_features)` -> `(..., tokens, out_features)`."""

    def __init__(
        self,
        tokens: int,
        in_features: int,
        out_features: int,
        context_features: int = 0,
        channels: int = 64,
        layers: int = 2,
        heads: int = 4,
        mlp_ratio: int = 4,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        check_heads(channels, heads, layers, mlp_ratio)
        for name, value, minimum in (
            ("tokens", tokens, 1),
            ("in_features", in_features, 1),
            ("out_features", out_features, 1),
            ("context_features", context_features, 0),
        ):
            check_int(name, value, minimum)
        self.tokens, self.in_features, self.out_features = tokens, in_features, out_features
        self.context_features = context_features
        self.embed = nn.Linear(in_features, channels)
        self.position = nn.Parameter(0.02 * torch.randn(tokens, channels))
        self.context_layer = nn.Linear(context_features, channels) if context_features else None
        self.blocks = nn.ModuleList(Block(channels, heads, mlp_ratio, dropout) for _ in range(layers))
        self.norm = nn.LayerNorm(channels)
        self.head = zero_(nn.Linear(channels, out_features))

    def forward(self, x: Tensor, context: Optional[Tensor] = None) -> Tensor:
        """`x (batch + (tokens, in_features))`, `context (batch + (context_features,))` -> `batch + (tokens, out)`."""
        batch = x.shape[:-2]
        h = self.embed(x.reshape((-1, self.tokens, self.in_features))) + self.position
        if self.context_layer is not None:
            if context is None:
                raise ValueError(f"ViT expects a context with {self.context_features} features, got None")
            h = h + self.context_layer(context.reshape(-1, self.context_features))[:, None, :]
        for block in self.blocks:
            h = block(h)
        return self.head(self.norm(h)).reshape(batch + (self.tokens, self.out_features))
