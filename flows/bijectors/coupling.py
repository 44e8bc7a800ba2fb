"""Coupling layers: one generic mechanism (`MaskedCoupling`) and thin constructors for vectors and images.

A boolean mask over the event splits it into conditioning elements (`True`, passed through) and
transformed elements (`False`). The conditioner sees the conditioning elements (and the context) and
returns the raw transformer parameters of the transformed elements. Splitting and merging use index
buffers (`index_select` and `torch.cat` with a precomputed inverse permutation): no boolean indexing and
no scatter at run time, so the layer compiles with `torch.compile(fullgraph=True)`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal, Optional, Union

import torch
from torch import Tensor, nn

from flows.core import Bijector, broadcast_context
from flows.mixed_precision import run_conditioner
from flows.nn import MLP, ConvNet, ResidualNet
from flows.transformers import Transformer, make_transformer

__all__ = [
    "MaskedCoupling",
    "Coupling",
    "ImageCoupling",
    "alternating_mask",
    "half_mask",
    "checkerboard_mask",
    "channel_mask",
    "build_transformer",
    "apply_transformer",
]


# ---------------------------------------------------------------------------------------------- masks
def alternating_mask(features: int, parity: bool = False) -> Tensor:
    """`(features,)` bool mask, True (conditioning) on even indices; `parity=True` flips it."""
    mask = torch.arange(features) % 2 == 0
    return ~mask if parity else mask


def half_mask(features: int, parity: bool = False) -> Tensor:
    """`(features,)` bool mask, True (conditioning) on the first `ceil(features / 2)` indices."""
    mask = torch.arange(features) < (features + 1) // 2
    return ~mask if parity else mask


def checkerboard_mask(shape: tuple[int, int, int], parity: bool = False) -> Tensor:
    """`(C, H, W)` bool mask, True (conditioning) where `h + w` is even, on every channel."""
    channels, height, width = shape
    board = (torch.arange(height)[:, None] + torch.arange(width)[None, :]) % 2 == 0
    mask = board.expand(channels, height, width).clone()
    return ~mask if parity else mask


def channel_mask(shape: tuple[int, int, int], parity: bool = False) -> Tensor:
    """`(C, H, W)` bool mask, True (conditioning) on the first `ceil(C / 2)` channels."""
    channels, height, width = shape
    mask = half_mask(channels)[:, None, None].expand(channels, height, width).clone()
    return ~mask if parity else mask


# ------------------------------------------------------------------------------- shared transformer use
def build_transformer(
    transformer: Union[str, Transformer],
    transformer_options: Optional[dict[str, Any]] = None,
    **explicit: Any,
) -> Transformer:
    """A transformer from its name, explicit keyword options (None = transformer default) and a dict.

    An option given both explicitly and in `transformer_options` is an error.
    """
    options = dict(transformer_options or {})
    for name, value in explicit.items():
        if value is None:
            continue
        if name in options:
            raise ValueError(f"transformer option {name!r} given both as keyword and in transformer_options")
        options[name] = value
    return make_transformer(transformer, **options)


def apply_transformer(
    transformer: Transformer, x: Tensor, params: Tensor, inverse: bool
) -> tuple[Tensor, Tensor]:
    """`x (..., n)`, `params (..., n, P)` -> `(y (..., n), ladj (...))`, with a shape check on params."""
    if params.shape[-2:] != (x.shape[-1], transformer.num_params):
        raise ValueError(
            f"conditioner returned params of shape {tuple(params.shape)}, expected trailing dims "
            f"({x.shape[-1]}, {transformer.num_params})"
        )
    return transformer(x, params, inverse=inverse)


# ----------------------------------------------------------------------------------- generic mechanism
class MaskedCoupling(Bijector):
    """Generic coupling: `y[~mask] = transformer(x[~mask]; conditioner(x[mask], context))`, `y[mask] = x[mask]`.

    `mask` is a bool tensor of the event shape (True = conditioning): `(features,)`, `(T, D)` tokens or
    `(C, H, W)` images. `conditioner(x_cond, context)`
    takes `x_cond (batch + (n_cond,))` and `context (batch + (context_features,))` or None and returns
    raw parameters `batch + (n_transformed, transformer.num_params)`.
    """

    def __init__(
        self, mask: Tensor, conditioner: nn.Module, transformer: Transformer, context_features: int = 0
    ) -> None:
        super().__init__()
        mask = torch.as_tensor(mask, dtype=torch.bool)
        if mask.dim() < 1:
            raise ValueError(
                f"mask must have the event shape (1-D vectors, 2-D tokens, 3-D images), got shape {tuple(mask.shape)}"
            )
        flat = mask.reshape(-1)
        n_cond = int(flat.sum())
        if n_cond == 0 or n_cond == flat.numel():
            raise ValueError(
                f"mask must have both conditioning and transformed elements, got {n_cond} of {flat.numel()}"
            )
        self.event_dims = mask.dim()
        self.event_shape = tuple(mask.shape)
        self.context_features = context_features
        self.conditioner = conditioner
        self.transformer = transformer
        identity_index = torch.nonzero(flat).reshape(-1)
        transformed_index = torch.nonzero(~flat).reshape(-1)
        permutation = torch.cat([identity_index, transformed_index])
        self.register_buffer("mask", mask)
        self.register_buffer("identity_index", identity_index)
        self.register_buffer("transformed_index", transformed_index)
        self.register_buffer("merge_index", torch.argsort(permutation))

    def check_state(self) -> None:
        """The index buffers must be those of `mask` (conditioning, transformed, and the merge's inverse)."""
        flat = self.mask.reshape(-1)
        if self.mask.dtype != torch.bool or tuple(self.mask.shape) != self.event_shape:
            raise ValueError(
                f"{type(self).__name__}.mask: expected a bool mask of shape {self.event_shape}, got "
                f"{self.mask.dtype} of shape {tuple(self.mask.shape)}"
            )
        identity, transformed = torch.nonzero(flat).reshape(-1), torch.nonzero(~flat).reshape(-1)
        if not (
            torch.equal(self.identity_index, identity)
            and torch.equal(self.transformed_index, transformed)
            and torch.equal(self.merge_index, torch.argsort(torch.cat([identity, transformed])))
        ):
            raise ValueError(
                f"{type(self).__name__}: expected identity_index, transformed_index and merge_index derived from "
                "its mask, got other indices"
            )

    def split(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """`batch + event -> (batch + (n_cond,), batch + (n_transformed,))`."""
        # The event size is explicit: a `-1` is ambiguous for an empty batch.
        flat = x.reshape(x.shape[: x.dim() - self.event_dims] + (self.mask.numel(),))
        return flat.index_select(-1, self.identity_index), flat.index_select(-1, self.transformed_index)

    def merge(self, x_cond: Tensor, x_transformed: Tensor) -> Tensor:
        """Inverse of `split`: `(batch + (n_cond,), batch + (n_transformed,)) -> batch + event`."""
        flat = torch.cat([x_cond, x_transformed], dim=-1).index_select(-1, self.merge_index)
        return flat.reshape(flat.shape[:-1] + self.event_shape)

    def _couple(self, x: Tensor, context: Optional[Tensor], inverse: bool) -> tuple[Tensor, Tensor]:
        self.check_event(x, self.event_shape)
        if self.context_features and context is None:
            raise ValueError(
                f"{type(self).__name__} expects a context with {self.context_features} features, got None"
            )
        if not self.context_features:
            context = None
        x, context = broadcast_context(x, context, self.event_dims)
        x_cond, x_transformed = self.split(x)
        params = run_conditioner(self.conditioner, x_cond, context)
        y_transformed, ladj = apply_transformer(self.transformer, x_transformed, params, inverse)
        return self.merge(x_cond, y_transformed), ladj

    def forward(self, x: Tensor, context: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        return self._couple(x, context, inverse=False)

    def inverse(self, y: Tensor, context: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        return self._couple(y, context, inverse=True)


# -------------------------------------------------------------------------------------- conditioners
class VectorConditioner(nn.Module):
    """Wraps a network `(..., n_cond + context_features) -> (..., n_transformed * P)`; reshapes its output."""

    def __init__(self, network: nn.Module, n_transformed: int, num_params: int) -> None:
        super().__init__()
        self.network = network
        self.n_transformed = n_transformed
        self.num_params = num_params

    def forward(self, x_cond: Tensor, context: Optional[Tensor]) -> Tensor:
        h = x_cond if context is None else torch.cat([x_cond, context], dim=-1)
        out = self.network(h)
        return out.reshape(out.shape[:-1] + (self.n_transformed, self.num_params))


class ImageConditioner(nn.Module):
    """A `ConvNet` conditioner for image coupling.

    `"checkerboard"`: the CNN sees the image with transformed pixels zeroed (`x * mask`) and returns `P`
    channels per image channel, of which the transformed positions are gathered. `"channel"`: the CNN
    sees only the conditioning channels and returns `P` channels per transformed channel.
    """

    def __init__(
        self,
        coupling_mask: Tensor,
        kind: Literal["checkerboard", "channel"],
        num_params: int,
        hidden_channels: int,
        context_features: int,
    ) -> None:
        super().__init__()
        channels, height, width = coupling_mask.shape
        self.kind = kind
        self.num_params = num_params
        self.shape = (channels, height, width)
        flat = coupling_mask.reshape(-1)
        self.register_buffer("transformed_index", torch.nonzero(~flat).reshape(-1))
        permutation = torch.cat([torch.nonzero(flat).reshape(-1), self.transformed_index])
        self.register_buffer("merge_index", torch.argsort(permutation))
        if kind == "checkerboard":
            in_channels, out_channels = channels, channels * num_params
        else:
            n_cond = int(coupling_mask[:, 0, 0].sum())
            in_channels, out_channels = n_cond, (channels - n_cond) * num_params
        self.network = ConvNet(in_channels, out_channels, hidden_channels, context_features)

    def forward(self, x_cond: Tensor, context: Optional[Tensor]) -> Tensor:
        batch = x_cond.shape[:-1]
        channels, height, width = self.shape
        if self.kind == "checkerboard":
            zeros = x_cond.new_zeros(batch + self.transformed_index.shape)
            image = torch.cat([x_cond, zeros], dim=-1).index_select(-1, self.merge_index)
            out = self.network(image.reshape(batch + self.shape), context)
            # (..., C * P, H, W) -> (..., C * H * W, P), then the transformed positions.
            out = out.reshape(batch + (channels, self.num_params, height * width)).transpose(-1, -2)
            out = out.reshape(batch + (channels * height * width, self.num_params))
            return out.index_select(-2, self.transformed_index)
        # Explicit channel counts: a `-1` is ambiguous for an empty batch.
        n_transformed = self.transformed_index.numel()
        image = x_cond.reshape(batch + (channels - n_transformed // (height * width), height, width))
        out = self.network(image, context)
        # Transformed channels are contiguous, so their flattened order is (channel, h, w).
        out = out.reshape(batch + (n_transformed // (height * width), self.num_params, height * width))
        return out.transpose(-1, -2).reshape(batch + (n_transformed, self.num_params))


# ---------------------------------------------------------------------------------- thin constructors
_VECTOR_MASKS = {"alternating": alternating_mask, "half": half_mask}
_IMAGE_MASKS = {"checkerboard": checkerboard_mask, "channel": channel_mask}


def _check_context_features(context_features: int) -> None:
    if not isinstance(context_features, int) or context_features < 0:
        raise ValueError(f"context_features must be an int >= 0, got {context_features!r}")


class Coupling(MaskedCoupling):
    """Vector coupling layer (RealNVP / NSF) over `features`, with an MLP or ResidualNet conditioner.

    `mask`: `"alternating"` (even indices condition) or `"half"` (first half conditions); `parity`
    swaps the roles. `residual_blocks=None` uses an `MLP` with `hidden_features` widths; an int uses a
    `ResidualNet` of width `hidden_features[0]` with that many blocks. Transformer options (`bins`,
    `bound`, `tails`, `scale_function`, `scale_bound`) are keyword args (None = default) or a dict.
    """

    def __init__(
        self,
        features: int,
        transformer: str = "affine",
        mask: str = "alternating",
        parity: bool = False,
        context_features: int = 0,
        hidden_features: Sequence[int] = (128, 128),
        residual_blocks: Optional[int] = None,
        dropout: float = 0.0,
        bins: Optional[int] = None,
        bound: Optional[float] = None,
        tails: Optional[str] = None,
        scale_function: Optional[str] = None,
        scale_bound: Optional[float] = None,
        transformer_options: Optional[dict[str, Any]] = None,
    ) -> None:
        if not isinstance(features, int) or features < 2:
            raise ValueError(f"features must be an int >= 2 for a coupling layer, got {features!r}")
        if mask not in _VECTOR_MASKS:
            raise ValueError(f"mask must be one of {sorted(_VECTOR_MASKS)}, got {mask!r}")
        _check_context_features(context_features)
        hidden = tuple(hidden_features)
        if residual_blocks is not None and (not hidden or len(set(hidden)) != 1):
            raise ValueError(
                f"a ResidualNet conditioner needs equal hidden widths, got hidden_features={hidden}"
            )
        built = build_transformer(
            transformer,
            transformer_options,
            bins=bins,
            bound=bound,
            tails=tails,
            scale_function=scale_function,
            scale_bound=scale_bound,
        )
        coupling_mask = _VECTOR_MASKS[mask](features, parity)
        n_cond = int(coupling_mask.sum())
        n_transformed = features - n_cond
        in_features = n_cond + context_features
        out_features = n_transformed * built.num_params
        layout = {"feature_major_output": built.params_elements_last}
        if residual_blocks is None:
            network: nn.Module = MLP(in_features, out_features, hidden, dropout=dropout, **layout)
        else:
            network = ResidualNet(
                in_features, out_features, hidden[0], residual_blocks, dropout=dropout, **layout
            )
        conditioner = VectorConditioner(network, n_transformed, built.num_params)
        super().__init__(coupling_mask, conditioner, built, context_features)


class ImageCoupling(MaskedCoupling):
    """Image coupling layer (RealNVP / Glow) over events `shape = (C, H, W)` with a `ConvNet` conditioner.

    `mask`: `"checkerboard"` (needs `H * W >= 2`) or `"channel"` (needs `C >= 2`); `parity` swaps roles.
    """

    def __init__(
        self,
        shape: tuple[int, int, int],
        transformer: str = "affine",
        mask: str = "checkerboard",
        parity: bool = False,
        context_features: int = 0,
        hidden_channels: int = 64,
        bins: Optional[int] = None,
        bound: Optional[float] = None,
        tails: Optional[str] = None,
        scale_function: Optional[str] = None,
        scale_bound: Optional[float] = None,
        transformer_options: Optional[dict[str, Any]] = None,
    ) -> None:
        shape = tuple(shape)
        if len(shape) != 3 or any(not isinstance(s, int) or s < 1 for s in shape):
            raise ValueError(f"shape must be (C, H, W) of positive ints, got {shape!r}")
        if mask not in _IMAGE_MASKS:
            raise ValueError(f"mask must be one of {sorted(_IMAGE_MASKS)}, got {mask!r}")
        if mask == "channel" and shape[0] < 2:
            raise ValueError(f"a channel mask needs at least 2 channels, got shape {shape}")
        if mask == "checkerboard" and shape[1] * shape[2] < 2:
            raise ValueError(f"a checkerboard mask needs at least 2 pixels, got shape {shape}")
        _check_context_features(context_features)
        built = build_transformer(
            transformer,
            transformer_options,
            bins=bins,
            bound=bound,
            tails=tails,
            scale_function=scale_function,
            scale_bound=scale_bound,
        )
        coupling_mask = _IMAGE_MASKS[mask](shape, parity)
        conditioner = ImageConditioner(
            coupling_mask, mask, built.num_params, hidden_channels, context_features
        )
        super().__init__(coupling_mask, conditioner, built, context_features)
