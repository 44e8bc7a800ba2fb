"""Token layers: `Patchify` (image `C x H x W` <-> tokens `T x D`) and `ReverseTokens` (token order reversal).

`Patchify` changes the event rank (3 -> 2): it cuts an image into `p x p` patches, read row by row, each
patch a token of `D = p * p * C` features ordered `(row in patch, column in patch, channel)`. It is a
permutation of the elements, so `ladj = 0`; `Inverse(Patchify(...))` maps tokens back to the image.
`ReverseTokens` flips the token order of a `(T, D)` event so that consecutive autoregressive layers run in
alternating directions (TarFlow).
"""

from __future__ import annotations

from typing import Optional

from torch import Tensor

from flows.core import Bijector, fixed_event_shape

__all__ = ["Patchify", "ReverseTokens"]


class Patchify(Bijector):
    """`(C, H, W) -> (H/p * W/p, p * p * C)`: non-overlapping `p x p` patches as tokens; `ladj = 0`.

    Token `t = i * (W/p) + j` is the patch at row `i`, column `j`; its feature `(a * p + b) * C + c` is
    `x[c, i * p + a, j * p + b]`. `H` and `W` must be divisible by `patch_size`. The context is ignored.
    """

    event_dims = 3

    def __init__(self, shape: tuple[int, int, int], patch_size: int) -> None:
        super().__init__()
        if not isinstance(shape, (tuple, list)) or len(shape) != 3:
            raise ValueError(f"shape must be an image event (C, H, W), got {shape!r}")
        if any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in shape):
            raise ValueError(f"shape must hold positive ints (C, H, W), got {shape!r}")
        if isinstance(patch_size, bool) or not isinstance(patch_size, int) or patch_size < 1:
            raise ValueError(f"patch_size must be a positive int, got {patch_size!r}")
        channels, height, width = shape
        if height % patch_size or width % patch_size:
            raise ValueError(
                f"Patchify needs a height and width divisible by patch_size={patch_size}, got shape {tuple(shape)}"
            )
        self.patch_size = patch_size
        self.grid = (height // patch_size, width // patch_size)
        self.image_shape = (channels, height, width)
        self.token_shape = (self.grid[0] * self.grid[1], patch_size * patch_size * channels)

    def extra_repr(self) -> str:
        return f"{self.image_shape} -> {self.token_shape}, patch_size={self.patch_size}"

    @property
    def output_event_dims(self) -> int:
        return 2

    @property
    def input_event_shape(self) -> tuple[int, int, int]:
        return self.image_shape

    def forward_event_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        return fixed_event_shape(self, shape, self.image_shape, self.token_shape)

    def inverse_event_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        return fixed_event_shape(self, shape, self.token_shape, self.image_shape, "gives")

    def forward(self, x: Tensor, context: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        """`x (batch + (C, H, W)) -> (tokens (batch + (T, D)), zeros(batch))`."""
        self.check_event(x, self.image_shape)
        batch = x.shape[:-3]
        n, p, (rows, columns), channels = len(batch), self.patch_size, self.grid, self.image_shape[0]
        patches = x.reshape(batch + (channels, rows, p, columns, p))
        # (C, rows, a, columns, b) -> (rows, columns, a, b, C)
        patches = patches.permute(*range(n), n + 1, n + 3, n + 2, n + 4, n)
        return patches.reshape(batch + self.token_shape), x.new_zeros(batch)

    def inverse(self, y: Tensor, context: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        """`tokens (batch + (T, D)) -> (x (batch + (C, H, W)), zeros(batch))`."""
        self.check_event(y, self.token_shape, name="tokens")
        batch = y.shape[:-2]
        n, p, (rows, columns), channels = len(batch), self.patch_size, self.grid, self.image_shape[0]
        patches = y.reshape(batch + (rows, columns, p, p, channels))
        # (rows, columns, a, b, C) -> (C, rows, a, columns, b)
        patches = patches.permute(*range(n), n + 4, n, n + 2, n + 1, n + 3)
        return patches.reshape(batch + self.image_shape), y.new_zeros(batch)


class ReverseTokens(Bijector):
    """Reverse the token order of a `(T, D)` event: `y[..., t, :] = x[..., T - 1 - t, :]`; `ladj = 0`.

    Its own inverse. Any token event shape; the context is ignored.
    """

    event_dims = 2
    volume_preserving = True

    def forward(self, x: Tensor, context: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        """`x (batch + (T, D)) -> (x reversed along T, zeros(batch))`."""
        if x.dim() < 2:
            raise ValueError(f"ReverseTokens expected tokens (batch + (T, D)), got shape {tuple(x.shape)}")
        return x.flip(-2), self.zero_ladj(x)

    def inverse(self, y: Tensor, context: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        return self.forward(y, context)
