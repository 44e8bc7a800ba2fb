"""Shape-changing image bijectors: `Squeeze` (space to depth) and `MultiscaleSplit` (RealNVP / Glow).

Event `(C, H, W)` (`event_dims=3`), any leading batch dimensions.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from flows.core import Bijector, fixed_event_shape

__all__ = ["MultiscaleSplit", "Squeeze"]


def _image_shape(shape: object, name: str = "shape") -> tuple[int, int, int]:
    if not isinstance(shape, (tuple, list, torch.Size)) or len(shape) != 3:
        raise ValueError(f"{name} must be an image event (C, H, W), got {shape!r}")
    for size in shape:
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"{name} must hold positive ints (C, H, W), got {shape!r}")
    return (shape[0], shape[1], shape[2])


class Squeeze(Bijector):
    """Space to depth: `(C, H, W) -> (4C, H/2, W/2)`, `ladj = 0` (Dinh et al. 2017).

    Each 2x2 spatial block becomes 4 channels: `y[..., 4c + 2i + j, h, w] = x[..., c, 2h + i, 2w + j]`.
    `H` and `W` must be even. Unconditional: the context is ignored.
    """

    event_dims = 3

    def __init__(self, shape: tuple[int, int, int]) -> None:
        super().__init__()
        channels, height, width = _image_shape(shape)
        if height % 2 or width % 2:
            raise ValueError(f"Squeeze needs an even height and width, got shape {(channels, height, width)}")
        self.input_shape = (channels, height, width)
        self.output_shape = (4 * channels, height // 2, width // 2)

    def extra_repr(self) -> str:
        return f"{self.input_shape} -> {self.output_shape}"

    @property
    def input_event_shape(self) -> tuple[int, int, int]:
        return self.input_shape

    def forward_event_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        return fixed_event_shape(self, shape, self.input_shape, self.output_shape)

    def inverse_event_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        return fixed_event_shape(self, shape, self.output_shape, self.input_shape, "gives")

    def forward(self, x: Tensor, context: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        """`x (batch, C, H, W) -> (y (batch, 4C, H/2, W/2), zeros(batch))`."""
        self.check_event(x, self.input_shape)
        batch = self.batch_shape(x)
        c, h, w = self.output_shape
        blocks = x.reshape(batch + (c // 4, h, 2, w, 2))
        n = len(batch)
        blocks = blocks.permute(*range(n), n, n + 2, n + 4, n + 1, n + 3)
        return blocks.reshape(batch + self.output_shape), x.new_zeros(batch)

    def inverse(self, y: Tensor, context: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        """`y (batch, 4C, H/2, W/2) -> (x (batch, C, H, W), zeros(batch))`."""
        self.check_event(y, self.output_shape, name="latent")
        batch = y.shape[: y.dim() - 3]
        c, h, w = self.output_shape
        blocks = y.reshape(batch + (c // 4, 2, 2, h, w))
        n = len(batch)
        blocks = blocks.permute(*range(n), n, n + 3, n + 1, n + 4, n + 2)
        return blocks.reshape(batch + self.input_shape), y.new_zeros(batch)


class MultiscaleSplit(Bijector):
    """The multiscale architecture of RealNVP / Glow inside the bijector contract.

    The input `(C, H, W)` is split along channels: the first `C - C // 2` channels are mapped by
    `transform` (which must map that shape to itself, e.g. the next scale's squeeze/steps/unsqueeze
    chain) and the remaining `C // 2` channels are factored out: they pass to the latent unchanged.
    The output has the input's event shape, so the base distribution over the full event (a
    `StandardNormal`) scores the factored-out half directly. Glow's learned prior for the factored-out
    half is a separate layer placed after the split (`flows.presets_image.split_prior_coupling`, on by
    default in `Glow` and `RealNVPImage`).

    The inner transform is checked at construction by a dry run on zeros of the kept shape (in eval
    mode, without gradients); pass `context_features` when the inner transform needs a context.
    """

    event_dims = 3

    def __init__(self, shape: tuple[int, int, int], transform: Bijector, context_features: int = 0) -> None:
        super().__init__()
        channels, height, width = _image_shape(shape)
        if channels < 2:
            raise ValueError(f"MultiscaleSplit needs at least 2 channels to split, got shape {shape}")
        if not isinstance(transform, Bijector):
            raise TypeError(f"transform must be a flows Bijector, got {type(transform).__name__}")
        if transform.event_dims != 3:
            raise ValueError(
                f"transform must act on images (event_dims=3), got event_dims={transform.event_dims}"
            )
        self.shape = (channels, height, width)
        self.kept_shape = (channels - channels // 2, height, width)
        self.transform = transform
        self._check_transform(context_features)

    def extra_repr(self) -> str:
        return f"shape={self.shape}, kept_shape={self.kept_shape}"

    @property
    def input_event_shape(self) -> tuple[int, int, int]:
        return self.shape

    @torch.no_grad()
    def _check_transform(self, context_features: int) -> None:
        parameter = next(self.transform.parameters(), None)
        dtype = parameter.dtype if parameter is not None else torch.get_default_dtype()
        x = torch.zeros((1,) + self.kept_shape, dtype=dtype)
        context = torch.zeros(1, context_features, dtype=dtype) if context_features else None
        modes = {module: module.training for module in self.transform.modules()}
        self.transform.eval()
        try:
            y, _ = self.transform(x, context)
        except (ValueError, RuntimeError) as error:
            raise ValueError(
                f"MultiscaleSplit's transform must accept the kept channels, event shape {self.kept_shape}, "
                f"but failed on it: {error}"
            ) from error
        finally:
            for module, training in modes.items():
                module.training = training
        if tuple(y.shape[1:]) != self.kept_shape:
            raise ValueError(
                f"MultiscaleSplit's transform must map event shape {self.kept_shape} to itself, "
                f"got output event shape {tuple(y.shape[1:])}"
            )

    def _split(self, x: Tensor) -> tuple[Tensor, Tensor]:
        kept = self.kept_shape[0]
        return x[..., :kept, :, :], x[..., kept:, :, :]

    def _merge(self, kept: Tensor, factored: Tensor) -> Tensor:
        factored = factored.expand(kept.shape[:-3] + factored.shape[-3:])
        return torch.cat([kept, factored], dim=-3)

    def forward(self, x: Tensor, context: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        """`x (batch, C, H, W) -> (y (batch, C, H, W), ladj (batch))`; the factored half is unchanged."""
        self.check_event(x, self.shape)
        kept, factored = self._split(x)
        kept, ladj = self.transform(kept, context)
        return self._merge(kept, factored), ladj

    def inverse(self, y: Tensor, context: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        """`y (batch, C, H, W) -> (x (batch, C, H, W), ladj (batch))`."""
        self.check_event(y, self.shape, name="latent")
        kept, factored = self._split(y)
        kept, ladj = self.transform.inverse(kept, context)
        return self._merge(kept, factored), ladj

    def initialize(self, x: Tensor, context: Optional[Tensor] = None) -> bool:
        """Initialise the data-dependent layers of the inner transform on the kept channels of `x`."""
        self.check_event(x, self.shape)
        return self.transform.initialize(self._split(x)[0], context)
