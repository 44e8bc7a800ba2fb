"""Pre-norm transformer blocks shared by `CausalTransformer` and `ViT`.

Tokens are `(N, L, C)` (one flat batch dimension `N`, `L` tokens of `C` channels). Attention is
`torch.nn.functional.scaled_dot_product_attention`, so the fused kernels of the running device are used.
`Block.step` runs one new token against a key-value cache for incremental (autoregressive) decoding.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn
from torch.nn.functional import scaled_dot_product_attention

from flows.nn._common import check_int

__all__ = ["Block", "KeyValues", "check_heads"]

#: Keys and values of the tokens seen so far, each `(N, heads, L, C / heads)`.
KeyValues = tuple[Tensor, Tensor]


def check_heads(channels: int, heads: int, layers: int, mlp_ratio: int) -> None:
    """Raise a ValueError unless the transformer sizes are positive and `channels % heads == 0`."""
    for name, value in (("channels", channels), ("heads", heads), ("mlp_ratio", mlp_ratio)):
        check_int(name, value)
    check_int("layers", layers, 0)
    if channels % heads:
        raise ValueError(f"channels must be divisible by heads, got channels={channels}, heads={heads}")


class Block(nn.Module):
    """`h + attn(norm(h))`, then `h + mlp(norm(h))`: one pre-norm transformer block over `(N, L, C)`."""

    def __init__(self, channels: int, heads: int, mlp_ratio: int = 4, dropout: float = 0.0) -> None:
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(channels)
        self.qkv = nn.Linear(channels, 3 * channels)
        self.projection = nn.Linear(channels, channels)
        self.norm2 = nn.LayerNorm(channels)
        self.mlp = nn.Sequential(
            nn.Linear(channels, mlp_ratio * channels),
            nn.GELU(),
            nn.Dropout(dropout) if dropout > 0 else nn.Identity(),
            nn.Linear(mlp_ratio * channels, channels),
        )

    def _qkv(self, h: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """`(N, L, C)` -> queries, keys, values, each `(N, heads, L, C / heads)`."""
        n, length, channels = h.shape
        qkv = self.qkv(self.norm1(h)).reshape(n, length, 3, self.heads, channels // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        return q, k, v

    def _finish(self, h: Tensor, attended: Tensor) -> Tensor:
        """Merge the heads of `attended (N, heads, L, C / heads)`, add both residual branches to `h`."""
        n, _, length, _ = attended.shape
        channels = h.shape[-1]  # named, not -1, which is ambiguous with n = 0 rows
        h = h + self.projection(attended.transpose(1, 2).reshape(n, length, channels))
        return h + self.mlp(self.norm2(h))

    def forward(self, h: Tensor, causal: bool = False) -> Tensor:
        """`(N, L, C) -> (N, L, C)`; with `causal`, token `t` attends to tokens `<= t` only."""
        q, k, v = self._qkv(h)
        return self._finish(h, scaled_dot_product_attention(q, k, v, is_causal=causal))

    def step(self, h: Tensor, cache: Optional[KeyValues]) -> tuple[Tensor, KeyValues]:
        """One new token `h (N, 1, C)` attending to the cached tokens and itself; returns `(h, cache')`.

        The cache grows by concatenation (no in-place writes), so gradients flow through decoding.
        """
        q, k, v = self._qkv(h)
        if cache is not None:
            k = torch.cat([cache[0], k], dim=2)
            v = torch.cat([cache[1], v], dim=2)
        return self._finish(h, scaled_dot_product_attention(q, k, v)), (k, v)
