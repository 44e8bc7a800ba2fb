"""Normalisation bijectors: `ActNorm` (Glow) and flow `BatchNorm` (RealNVP / MAF).

Both are unconditional: they accept a `context` (chains pass it to every member) and ignore it.
`flows.Flow.initialize` runs the data-dependent ActNorm initialisation through a whole transform.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from flows.core import Bijector

__all__ = ["ActNorm", "BatchNorm"]


def _positive_int(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name} must be at least 1, got {value}")
    return value


class ActNorm(Bijector):
    """Per-feature (vectors) or per-channel (images) affine map `y = (x - shift) * exp(log_scale)`.

    Give exactly one of `features` (event `(features,)`, `event_dims=1`) or `shape`, a `(C, H, W)`
    image event (`event_dims=3`; one shift and scale per channel, `ladj = H * W * sum(log_scale)`) or
    a `(features,)` vector event. Starts as the identity; `initialize(x)` sets the shift and scale
    so that the output over the batch `x` has zero mean and unit variance per feature/channel
    (Kingma & Dhariwal 2018) and sets the buffer `initialized`. `forward` never initialises.
    """

    def __init__(
        self, features: Optional[int] = None, shape: Optional[tuple[int, ...]] = None, eps: float = 1e-6
    ) -> None:
        super().__init__()
        if (features is None) == (shape is None):
            raise ValueError(
                f"ActNorm needs exactly one of features= (vectors) or shape= (images), "
                f"got features={features!r}, shape={shape!r}"
            )
        if features is not None:
            shape = (_positive_int(features, "features"),)
        shape = tuple(shape)  # type: ignore[arg-type]
        if len(shape) not in (1, 3):
            raise ValueError(f"ActNorm shape must be (features,) or (C, H, W), got {shape}")
        for size in shape:
            _positive_int(size, "every entry of shape")
        if not eps > 0:
            raise ValueError(f"eps must be positive, got {eps}")
        self.shape = shape
        self.event_dims = len(shape)
        self.eps = float(eps)
        # Parameters broadcast against the event: (features,) or (C, 1, 1).
        parameter_shape = shape if len(shape) == 1 else (shape[0], 1, 1)
        self.spatial = 1 if len(shape) == 1 else shape[1] * shape[2]
        self.shift = nn.Parameter(torch.zeros(parameter_shape))
        self.log_scale = nn.Parameter(torch.zeros(parameter_shape))
        self.register_buffer("initialized", torch.tensor(False))

    def extra_repr(self) -> str:
        return f"shape={self.shape}"

    @property
    def input_event_shape(self) -> tuple[int, ...]:
        return self.shape

    def _ladj(self, x: Tensor) -> Tensor:
        return (self.spatial * self.log_scale.sum()).expand(self.batch_shape(x))

    def forward(self, x: Tensor, context: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        """`x (batch + shape) -> (y (batch + shape), ladj (batch))`; the context is ignored."""
        self.check_event(x, self.shape)
        return (x - self.shift) * torch.exp(self.log_scale), self._ladj(x)

    def inverse(self, y: Tensor, context: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        """`y (batch + shape) -> (x (batch + shape), -ladj (batch))`; the context is ignored."""
        self.check_event(y, self.shape)
        return y * torch.exp(-self.log_scale) + self.shift, -self._ladj(y)

    @torch.no_grad()
    def initialize(self, x: Tensor, context: Optional[Tensor] = None) -> bool:
        """Data-dependent init from a batch `x (batch + shape)`: zero mean, unit variance outputs; True."""
        self.check_event(x, self.shape)
        channels_last = x.movedim(x.dim() - self.event_dims, -1) if self.event_dims == 3 else x
        values = channels_last.reshape(-1, self.shape[0])
        if values.shape[0] < 2:
            raise ValueError(
                f"ActNorm.initialize needs at least 2 values per feature/channel, got a tensor of "
                f"shape {tuple(x.shape)}"
            )
        values = values.to(self.shift.dtype)
        mean = values.mean(dim=0)
        std = values.std(dim=0, unbiased=False)
        self.shift.copy_(mean.reshape(self.shift.shape))
        self.log_scale.copy_((-torch.log(std + self.eps)).reshape(self.log_scale.shape))
        self.initialized.fill_(True)
        return True


class BatchNorm(Bijector):
    """Batch normalisation as a bijector (Dinh et al. 2017; Papamakarios et al. 2017), on vectors.

    `y = exp(log_gamma) * (x - mean) / sqrt(var + eps) + beta`, `ladj = sum(log_gamma - log(var + eps) / 2)`.
    In training mode `forward` uses the batch statistics (over every batch dimension) and updates the
    running statistics with `momentum`; in eval mode it uses the running statistics. `inverse` always
    uses the running statistics, so round trips hold in eval mode. Unconditional: the context is ignored.
    """

    def __init__(self, features: int, momentum: float = 0.1, eps: float = 1e-5) -> None:
        super().__init__()
        features = _positive_int(features, "features")
        if not 0.0 < momentum <= 1.0:
            raise ValueError(f"momentum must be in (0, 1], got {momentum}")
        if not eps > 0:
            raise ValueError(f"eps must be positive, got {eps}")
        self.features = features
        self.momentum = float(momentum)
        self.eps = float(eps)
        self.log_gamma = nn.Parameter(torch.zeros(features))
        self.beta = nn.Parameter(torch.zeros(features))
        self.register_buffer("running_mean", torch.zeros(features))
        self.register_buffer("running_var", torch.ones(features))

    def extra_repr(self) -> str:
        return f"features={self.features}, momentum={self.momentum}, eps={self.eps}"

    def check_state(self) -> None:
        """The running statistics a state loads: a finite mean and a positive finite variance."""
        if not bool(torch.isfinite(self.running_mean).all()) or not bool(
            ((self.running_var > 0) & torch.isfinite(self.running_var)).all()
        ):
            raise ValueError(
                f"{type(self).__name__}: expected a finite running_mean and a positive finite running_var, got "
                f"{self.running_mean.tolist()[:10]} and {self.running_var.tolist()[:10]}"
            )

    @property
    def input_event_shape(self) -> tuple[int, ...]:
        return (self.features,)

    def forward(self, x: Tensor, context: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        """`x (batch, features) -> (y (batch, features), ladj (batch))`; the context is ignored."""
        self.check_event(x, (self.features,))
        if self.training:
            values = x.reshape(-1, self.features)
            if values.shape[0] < 2:
                raise ValueError(
                    f"BatchNorm in training mode needs a batch of at least 2 samples, got shape {tuple(x.shape)}"
                )
            mean = values.mean(dim=0)
            var = values.var(dim=0, unbiased=False)
            with torch.no_grad():
                count = values.shape[0]
                self.running_mean.lerp_(mean.detach(), self.momentum)
                self.running_var.lerp_(var.detach() * count / (count - 1), self.momentum)
        else:
            mean, var = self.running_mean, self.running_var
        y = torch.exp(self.log_gamma) * (x - mean) * torch.rsqrt(var + self.eps) + self.beta
        ladj = (self.log_gamma - 0.5 * torch.log(var + self.eps)).sum()
        return y, ladj.expand(self.batch_shape(x))

    def inverse(self, y: Tensor, context: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        """`y (batch, features) -> (x (batch, features), ladj (batch))` with the running statistics."""
        self.check_event(y, (self.features,))
        var = self.running_var + self.eps
        x = (y - self.beta) * torch.exp(-self.log_gamma) * torch.sqrt(var) + self.running_mean
        ladj = (0.5 * torch.log(var) - self.log_gamma).sum()
        return x, ladj.expand(self.batch_shape(y))
