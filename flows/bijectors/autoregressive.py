"""Masked autoregressive layer (MAF, Papamakarios et al. 2017); its `.inv` is an IAF (Kingma et al. 2016).

`forward` (data to latent, the density direction) is one MADE pass: `y_d = f(x_d; theta_d(x_<d, c))`.
`inverse` (sampling) is sequential: `features` MADE passes, one per position in the order.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Optional

import torch
from torch import Tensor

from flows.bijectors.coupling import apply_transformer, build_transformer
from flows.core import Bijector, broadcast_context
from flows.nn import MADE

__all__ = ["MaskedAutoregressive"]


class MaskedAutoregressive(Bijector):
    """Autoregressive transform of `features` with a MADE conditioner and any transformer.

    `order` is a permutation of `range(features)` (identity by default): `y_d` depends on `x_i` with
    `order[i] < order[d]`. Transformer options (`bins`, `bound`, `tails`, `scale_function`,
    `scale_bound`) are keyword args (None = default) or a `transformer_options` dict.
    """

    def __init__(
        self,
        features: int,
        transformer: str = "affine",
        context_features: int = 0,
        hidden_features: Sequence[int] = (128, 128),
        residual_blocks: int = 0,
        order: Optional[Tensor] = None,
        dropout: float = 0.0,
        bins: Optional[int] = None,
        bound: Optional[float] = None,
        tails: Optional[str] = None,
        scale_function: Optional[str] = None,
        scale_bound: Optional[float] = None,
        transformer_options: Optional[dict[str, Any]] = None,
    ) -> None:
        super().__init__()
        if not isinstance(features, int) or features < 1:
            raise ValueError(f"features must be an int >= 1, got {features!r}")
        if not isinstance(context_features, int) or context_features < 0:
            raise ValueError(f"context_features must be an int >= 0, got {context_features!r}")
        if not isinstance(residual_blocks, int) or residual_blocks < 0:
            raise ValueError(f"residual_blocks must be an int >= 0, got {residual_blocks!r}")
        self.features = features
        self.context_features = context_features
        self.transformer = build_transformer(
            transformer,
            transformer_options,
            bins=bins,
            bound=bound,
            tails=tails,
            scale_function=scale_function,
            scale_bound=scale_bound,
        )
        self.made = MADE(
            features,
            context_features,
            hidden_features,
            self.transformer.num_params,
            residual_blocks=residual_blocks,
            order=order,
            dropout=dropout,
        )
        # Positions sorted by their rank in the order: the sequence the inverse fills in.
        self.register_buffer("inverse_steps", torch.argsort(self.made.order))

    def _prepare(self, x: Tensor, context: Optional[Tensor]) -> tuple[Tensor, Optional[Tensor]]:
        self.check_event(x, (self.features,))
        if self.context_features and context is None:
            raise ValueError(
                f"MaskedAutoregressive expects a context with {self.context_features} features, got None"
            )
        return broadcast_context(x, context if self.context_features else None, 1)

    def forward(self, x: Tensor, context: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        """One MADE pass: `x (batch + (features,)) -> (y, ladj (batch))`."""
        x, context = self._prepare(x, context)
        return apply_transformer(self.transformer, x, self.made(x, context), inverse=False)

    def inverse(self, y: Tensor, context: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        """Sequential inverse: `y (batch + (features,)) -> (x, ladj (batch))` in `features` MADE passes."""
        y, context = self._prepare(y, context)
        return self._inverse_sequential(y, context)

    def _inverse_sequential(self, y: Tensor, context: Optional[Tensor]) -> tuple[Tensor, Tensor]:
        """The reference inverse: fill `x` one position at a time in the order, then one full pass.

        Step `k` runs MADE on the partially filled `x` and inverts only the position of rank `k`
        (its parameters depend only on positions already filled). After `features - 1` steps, the
        last MADE pass gives the final parameters of every position, and one transformer call yields
        `x` and the log-determinant.
        """
        x = torch.zeros_like(y)
        for step in range(self.features - 1):
            position = self.inverse_steps[step : step + 1]
            params = self.made(x, context).index_select(-2, position)
            x_position, _ = self.transformer(y.index_select(-1, position), params, inverse=True)
            x = x.index_copy(-1, position, x_position)
        return apply_transformer(self.transformer, y, self.made(x, context), inverse=True)
