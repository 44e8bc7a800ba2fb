"""Dense conditioners: `MLP` and the NSF-style `ResidualNet`; `_ResidualBlock` is shared with `MADE`."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from flows.nn._common import OutputLinear, check_widths, zero_

__all__ = ["MLP", "ResidualNet"]


class MLP(nn.Module):
    """A multi-layer perceptron `(..., in_features) -> (..., out_features)` with a zero last layer.

    `feature_major_output`: the output is stored feature-major (a transposed view, same values), for
    transformers that compute elements-last (see `Transformer.params_elements_last`).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        hidden_features: Sequence[int] = (64, 64),
        activation: type[nn.Module] = nn.ReLU,
        dropout: float = 0.0,
        feature_major_output: bool = False,
    ) -> None:
        super().__init__()
        widths = check_widths("hidden_features", hidden_features)
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        layers: list[nn.Module] = []
        previous = in_features
        for width in widths:
            layers += [nn.Linear(previous, width), activation()]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            previous = width
        layers.append(zero_(OutputLinear(previous, out_features, feature_major_output)))
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
        self.linear2 = zero_(linear())

    def forward(self, x: Tensor) -> Tensor:
        h = self.linear1(self.activation(self.norm1(x)))
        h = self.linear2(self.dropout(self.activation(self.norm2(h))))
        return x + h


class ResidualNet(nn.Module):
    """NSF-style residual network `(..., in_features) -> (..., out_features)` with a zero last layer.

    `feature_major_output` as in `MLP`.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        hidden_features: int = 64,
        residual_blocks: int = 2,
        activation: type[nn.Module] = nn.ReLU,
        dropout: float = 0.0,
        batch_norm: bool = False,
        feature_major_output: bool = False,
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
        self.final = zero_(OutputLinear(hidden_features, out_features, feature_major_output))

    def forward(self, x: Tensor) -> Tensor:
        h = self.initial(x)
        for block in self.blocks:
            h = block(h)
        return self.final(self.activation(h))
