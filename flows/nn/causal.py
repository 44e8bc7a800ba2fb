"""`CausalTransformer`: the autoregressive conditioner over tokens (TarFlow, Zhai et al. 2024).

Input tokens `x (..., T, D)` are projected to `channels`, shifted right by one behind a learned start
token, given a learned positional embedding and the embedded context (added to every token), and run
through pre-norm causal blocks. The output for token `t` is `D * params_per_feature` raw transformer
parameters that depend only on the tokens `< t` and the context; token 0's come from the start token and
the context alone. The output layer is zero-initialised, so a fresh autoregressive layer is the identity.

`decoder(...)` returns a `CausalDecoder` that produces the same parameters one token at a time with a
key-value cache (each step attends to the cached prefix instead of recomputing it).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from flows.nn._common import check_int, zero_
from flows.nn.attention import Block, KeyValues, check_heads

__all__ = ["CausalTransformer", "CausalDecoder"]


class CausalTransformer(nn.Module):
    """`x (..., T, D)`, `context (..., context_features)` -> raw parameters `(..., T, D, params_per_feature)`.

    Output token `t` depends on `x[..., :t, :]` and the context only (see the module docstring).
    """

    def __init__(
        self,
        tokens: int,
        features: int,
        params_per_feature: int = 2,
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
            ("features", features, 1),
            ("params_per_feature", params_per_feature, 1),
            ("context_features", context_features, 0),
        ):
            check_int(name, value, minimum)
        self.event_shape = (tokens, features)
        self.context_features = context_features
        self.params_per_feature = params_per_feature
        # Tokens are filled in their natural order; a reversal between layers alternates the direction.
        self.register_buffer("order", torch.arange(tokens))
        # With one token nothing is ever embedded: its parameters come from the start token alone.
        self.embed = nn.Linear(features, channels) if tokens > 1 else None
        self.start = nn.Parameter(0.02 * torch.randn(channels))
        self.position = nn.Parameter(0.02 * torch.randn(tokens, channels))
        self.context_layer = nn.Linear(context_features, channels) if context_features else None
        self.blocks = nn.ModuleList(Block(channels, heads, mlp_ratio, dropout) for _ in range(layers))
        self.norm = nn.LayerNorm(channels)
        self.head = zero_(nn.Linear(channels, features * params_per_feature))

    def _context(self, context: Optional[Tensor], n: int) -> Optional[Tensor]:
        """The embedded context `(n, 1, channels)`, or None for an unconditional network."""
        if self.context_layer is None:
            return None
        if context is None:
            raise ValueError(
                f"CausalTransformer expects a context with {self.context_features} features, got None"
            )
        return self.context_layer(context.reshape(n, self.context_features))[:, None, :]

    def _output(self, h: Tensor, batch: torch.Size) -> Tensor:
        """`h (N, L, channels)` -> raw parameters `batch + (L, D, P)`."""
        out = self.head(self.norm(h))
        return out.reshape(batch + (h.shape[1], self.event_shape[1], self.params_per_feature))

    def forward(self, x: Tensor, context: Optional[Tensor] = None) -> Tensor:
        """`x (batch + (T, D))`, `context (batch + (context_features,))` -> `batch + (T, D, P)`."""
        tokens, features = self.event_shape
        batch = x.shape[:-2]
        flat = x.reshape((-1, tokens, features))
        n = flat.shape[0]
        h = self.start.expand(n, 1, -1)
        if self.embed is not None:
            h = torch.cat([h, self.embed(flat[:, :-1])], dim=1)
        h = h + self.position
        embedded = self._context(context, n)
        if embedded is not None:
            h = h + embedded
        for block in self.blocks:
            h = block(h, causal=True)
        return self._output(h, batch)

    def decoder(self, context: Optional[Tensor], batch: torch.Size) -> CausalDecoder:
        """A `CausalDecoder` for a batch of shape `batch` (`context` already broadcast to it, or None)."""
        return CausalDecoder(self, context, batch)


class CausalDecoder:
    """Incremental decoding of a `CausalTransformer` with a key-value cache.

    `step(previous)` takes the token just filled in, `previous (batch + (D,))` (None on the first call),
    and returns the raw parameters of the next token, `batch + (D, P)`: equal (to rounding) to the
    network's full output at that token, at the cost of one token per step instead of the whole prefix.
    """

    def __init__(self, network: CausalTransformer, context: Optional[Tensor], batch: torch.Size) -> None:
        self.network = network
        self.batch = batch
        self.n = 1
        for size in batch:
            self.n *= size
        self.context = network._context(context, self.n)
        self.caches: list[Optional[KeyValues]] = [None] * len(network.blocks)
        self.position = 0

    def step(self, previous: Optional[Tensor]) -> Tensor:
        network = self.network
        tokens, features = network.event_shape
        if self.position >= tokens:
            raise RuntimeError(f"CausalDecoder has already produced all {tokens} tokens")
        if previous is None:
            if self.position != 0:
                raise ValueError("CausalDecoder.step needs the previous token after the first step")
            h = network.start.expand(self.n, 1, -1)
        else:
            assert network.embed is not None  # a second step exists only with two or more tokens
            h = network.embed(previous.reshape(self.n, 1, features))
        h = h + network.position[self.position]
        if self.context is not None:
            h = h + self.context
        for index, block in enumerate(network.blocks):
            h, self.caches[index] = block.step(h, self.caches[index])
        self.position += 1
        return network._output(h, self.batch)[..., 0, :, :]
