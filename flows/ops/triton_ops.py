"""Triton backend of the element-wise ops, with the signatures of the references.

`rational_quadratic_spline` and `affine` run fused Triton kernels (forward, inverse, and a fused
backward, registered as `torch.library` custom ops with their autograd formula, so `torch.compile`
keeps them in a full graph; torch >= 2.4) on CUDA tensors. With `TRITON_INTERPRET=1` set before
Triton is first imported (Triton decides per `@triton.jit` at import time, for its own library too),
the same kernels run on CPU tensors under Triton's interpreter: slow, for tests and debugging.

Dtypes: float32 and bfloat16 (and float16) are computed in float32 registers and stored in the input
dtype; `y` and `ladj` come back in `x.dtype`, like the reference. float64 inputs fall back to the
reference, which computes in float64. Gradients are first-order only (no double backward).
Parameters may broadcast against `x` (the references need them expanded); they are expanded and made
contiguous before the kernel (a copy when they really broadcast), and autograd sums their gradients
back to the original shapes.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from flows.ops.affine_reference import SCALE_FUNCTIONS, affine_reference
from flows.ops.spline_reference import rational_quadratic_spline_reference

__all__ = ["AVAILABLE", "INTERPRETED", "affine", "rational_quadratic_spline"]

try:
    import triton
    from triton.runtime.interpreter import InterpretedFunction

    from flows.ops._triton_affine import affine_kernel
    from flows.ops._triton_spline import rational_quadratic_spline_kernel
except ImportError:  # pragma: no cover - exercised only without triton
    AVAILABLE: bool = False
    INTERPRETED: bool = False
else:
    AVAILABLE = True
    #: True when Triton was first imported with `TRITON_INTERPRET=1`: the kernels then run on CPU tensors.
    INTERPRETED = isinstance(triton.language.zeros, InterpretedFunction)

    def _like_triton_library(kernel: Any) -> Any:
        """Rewrap a kernel whose mode differs from Triton's own library (the variable changed after import)."""
        if isinstance(kernel, InterpretedFunction) == INTERPRETED:
            return kernel
        return InterpretedFunction(kernel.fn) if INTERPRETED else triton.runtime.JITFunction(kernel.fn)

    rational_quadratic_spline_kernel = _like_triton_library(rational_quadratic_spline_kernel)
    affine_kernel = _like_triton_library(affine_kernel)

#: Values one program holds per tile: spline tiles hold `PADDED` knot values per element, affine tiles
#: one. Chosen from sm_90 compiles (ptxas, no GPU needed): 512 keeps the fused spline backward at
#: ~120 registers without spills for K <= 16 (2048 spilled 350-1400 bytes of stack); not yet timed.
_SPLINE_TILE_VALUES = 512
_AFFINE_TILE_VALUES = 1024
_MAX_BLOCK_FEATURES = 64
#: Programs wanted on a GPU before the feature dimension is split across programs (partial log-dets).
_TARGET_PROGRAMS = 1024
#: Warps per program (untuned: needs a GPU run of benchmarks/bench_kernels.py).
_NUM_WARPS = 4
_KERNEL_DTYPES = (torch.float32, torch.bfloat16, torch.float16)

_SIGMOID_SHIFT = 2.0
_LOG_SIGMOID_SHIFT = -math.log1p(math.exp(-_SIGMOID_SHIFT))
_MIN_SCALE = 1e-3
_SOFTPLUS_SHIFT = math.log(math.expm1(1.0 - _MIN_SCALE))


def _next_power_of_2(value: int) -> int:
    return 1 << max(value - 1, 0).bit_length()


def _launch_config(rows: int, features: int, values_per_element: int, tile_values: int) -> dict[str, int]:
    """Tile sizes and grid for `(rows, features)` elements holding `values_per_element` values each."""
    elements_per_tile = max(16, tile_values // values_per_element)
    block_features = min(_next_power_of_2(features), _MAX_BLOCK_FEATURES, elements_per_tile)
    block_rows = max(1, elements_per_tile // block_features)
    row_blocks = triton.cdiv(rows, block_rows)
    feature_tiles = triton.cdiv(features, block_features)
    splits = max(1, min(feature_tiles, _TARGET_PROGRAMS // max(row_blocks, 1)))
    split_features = triton.cdiv(feature_tiles, splits) * block_features
    splits = triton.cdiv(features, split_features)
    return {
        "block_rows": block_rows,
        "block_features": block_features,
        "row_blocks": row_blocks,
        "splits": splits,
        "split_features": split_features,
    }


def _check_device(x: Tensor) -> None:
    if x.device.type != "cuda" and not INTERPRETED:
        raise RuntimeError(
            f"the Triton kernels run on CUDA tensors, got a {x.device.type} tensor; to run them on the CPU "
            "under Triton's interpreter set TRITON_INTERPRET=1 before triton is first imported"
        )


def _uses_kernel(x: Tensor) -> bool:
    """float64 keeps its precision in the reference; empty tensors need no launch."""
    return x.dtype in _KERNEL_DTYPES and x.numel() > 0


def _contiguous_empty(tensor: Tensor) -> Tensor:
    return torch.empty(tensor.shape, dtype=tensor.dtype, device=tensor.device)


def _launch_spline(
    x: Tensor,
    widths: Tensor,
    heights: Tensor,
    derivatives: Tensor,
    inverse: bool,
    scalars: tuple[float, ...],
    grad_out: Tensor | None = None,
    grad_ladj: Tensor | None = None,
) -> tuple[Tensor, ...]:
    """Forward `(y, ladj)` or, given the output gradients, backward `(grad_x, grad_widths, ...)`."""
    rows, features = x.shape
    bins = widths.shape[-1]
    padded = _next_power_of_2(bins + 1)
    config = _launch_config(rows, features, padded, _SPLINE_TILE_VALUES)
    backward = grad_out is not None
    if backward:
        grads = tuple(_contiguous_empty(tensor) for tensor in (x, widths, heights, derivatives))
        pointers = (x, x, grad_out, grad_ladj, *grads)  # the two output pointers are unused
    else:
        out = torch.empty_like(x)
        ladj_partial = torch.empty(rows, config["splits"], dtype=torch.float32, device=x.device)
        pointers = (out, ladj_partial, x, x, x, x, x, x)  # the gradient pointers are unused
    grid = (config["row_blocks"], config["splits"])
    rational_quadratic_spline_kernel[grid](
        x, widths, heights, derivatives, *pointers,
        rows, features, config["split_features"], config["splits"],
        *(stride for tensor in (widths, heights, derivatives) for stride in tensor.stride()[:2]), *scalars,
        BINS=bins, PADDED=padded, BLOCK_ROWS=config["block_rows"], BLOCK_FEATURES=config["block_features"],
        INVERSE=inverse, BACKWARD=backward, num_warps=_NUM_WARPS,
    )  # fmt: skip
    if backward:
        return grads
    return out, ladj_partial.sum(dim=-1).to(x.dtype)


def _launch_affine(
    x: Tensor,
    shift: Tensor,
    raw_scale: Tensor,
    inverse: bool,
    scale_function: str,
    scale_bound: float,
    grad_out: Tensor | None = None,
    grad_ladj: Tensor | None = None,
) -> tuple[Tensor, ...]:
    """Forward `(y, ladj)` or, given the output gradients, backward `(grad_x, grad_shift, grad_raw)`."""
    rows, features = x.shape
    config = _launch_config(rows, features, 1, _AFFINE_TILE_VALUES)
    backward = grad_out is not None
    if backward:
        grads = tuple(_contiguous_empty(tensor) for tensor in (x, shift, raw_scale))
        pointers = (x, x, grad_out, grad_ladj, *grads)
    else:
        out = torch.empty_like(x)
        ladj_partial = torch.empty(rows, config["splits"], dtype=torch.float32, device=x.device)
        pointers = (out, ladj_partial, x, x, x, x, x)
    scalars = (float(scale_bound), _SOFTPLUS_SHIFT, _MIN_SCALE, _SIGMOID_SHIFT, _LOG_SIGMOID_SHIFT)
    grid = (config["row_blocks"], config["splits"])
    affine_kernel[grid](
        x, shift, raw_scale, *pointers,
        rows, features, config["split_features"], config["splits"],
        *shift.stride(), *raw_scale.stride(), *scalars,
        SCALE=SCALE_FUNCTIONS.index(scale_function), BLOCK_ROWS=config["block_rows"],
        BLOCK_FEATURES=config["block_features"], INVERSE=inverse, BACKWARD=backward, num_warps=_NUM_WARPS,
    )  # fmt: skip
    if backward:
        return grads
    return out, ladj_partial.sum(dim=-1).to(x.dtype)


# Custom ops, so that `torch.compile` keeps them in its graph as opaque calls (no graph break) and the
# fused backward kernel is the registered gradient. The backward ops have no gradient themselves:
# second derivatives through the Triton backend raise.


def _register_fused_backward(op: Any, backward_op: Any, num_tensors: int) -> None:
    """Make `backward_op(grad_out, grad_ladj, *tensors, *options)` the gradient of `op(*tensors, *options)`.

    `op` returns `(y, ladj)`; its first `num_tensors` inputs are tensors (x first), the rest options
    without gradients. A missing output gradient counts as zero.
    """

    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Any) -> None:
        ctx.save_for_backward(*inputs[:num_tensors])
        ctx.options = inputs[num_tensors:]

    def backward(ctx: Any, grad_out: Tensor | None, grad_ladj: Tensor | None) -> tuple[Tensor | None, ...]:
        x = ctx.saved_tensors[0]
        grad_out = torch.zeros_like(x) if grad_out is None else grad_out
        grad_ladj = x.new_zeros(x.shape[0]) if grad_ladj is None else grad_ladj
        grads = backward_op(grad_out, grad_ladj, *ctx.saved_tensors, *ctx.options)
        return (*grads, *(None for _ in ctx.options))

    op.register_autograd(backward, setup_context=setup_context)


@torch.library.custom_op("flows::rational_quadratic_spline", mutates_args=())
def _spline_op(
    x: Tensor,
    widths: Tensor,
    heights: Tensor,
    derivatives: Tensor,
    inverse: bool,
    bound: float,
    min_bin_width: float,
    min_bin_height: float,
    min_derivative: float,
) -> tuple[Tensor, Tensor]:
    """Fused spline on contiguous `x (rows, features)` and parameters `(rows, features, K[+1])`."""
    shift = math.log(math.expm1(1.0 - min_derivative))
    scalars = (bound, min_bin_width, min_bin_height, min_derivative, shift)
    y, ladj = _launch_spline(x, widths, heights, derivatives, inverse, scalars)
    return y, ladj


@_spline_op.register_fake
def _(x: Tensor, widths: Tensor, *args: object) -> tuple[Tensor, Tensor]:
    return torch.empty_like(x), x.new_empty(x.shape[0])


@torch.library.custom_op("flows::rational_quadratic_spline_backward", mutates_args=())
def _spline_backward_op(
    grad_out: Tensor,
    grad_ladj: Tensor,
    x: Tensor,
    widths: Tensor,
    heights: Tensor,
    derivatives: Tensor,
    inverse: bool,
    bound: float,
    min_bin_width: float,
    min_bin_height: float,
    min_derivative: float,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    shift = math.log(math.expm1(1.0 - min_derivative))
    scalars = (bound, min_bin_width, min_bin_height, min_derivative, shift)
    grad_x, grad_widths, grad_heights, grad_derivatives = _launch_spline(
        x, widths, heights, derivatives, inverse, scalars, grad_out.contiguous(), grad_ladj.contiguous()
    )
    return grad_x, grad_widths, grad_heights, grad_derivatives


@_spline_backward_op.register_fake
def _(grad_out: Tensor, grad_ladj: Tensor, *args: Any) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    return tuple(_contiguous_empty(tensor) for tensor in args[:4])  # type: ignore[return-value]


_register_fused_backward(_spline_op, _spline_backward_op, num_tensors=4)


@torch.library.custom_op("flows::affine", mutates_args=())
def _affine_op(
    x: Tensor, shift: Tensor, raw_scale: Tensor, inverse: bool, scale_function: str, scale_bound: float
) -> tuple[Tensor, Tensor]:
    """Fused affine map on contiguous `x`, `shift`, `raw_scale` of shape `(rows, features)`."""
    y, ladj = _launch_affine(x, shift, raw_scale, inverse, scale_function, scale_bound)
    return y, ladj


@_affine_op.register_fake
def _(x: Tensor, *args: object) -> tuple[Tensor, Tensor]:
    return torch.empty_like(x), x.new_empty(x.shape[0])


@torch.library.custom_op("flows::affine_backward", mutates_args=())
def _affine_backward_op(
    grad_out: Tensor,
    grad_ladj: Tensor,
    x: Tensor,
    shift: Tensor,
    raw_scale: Tensor,
    inverse: bool,
    scale_function: str,
    scale_bound: float,
) -> tuple[Tensor, Tensor, Tensor]:
    grad_x, grad_shift, grad_raw_scale = _launch_affine(
        x,
        shift,
        raw_scale,
        inverse,
        scale_function,
        scale_bound,
        grad_out.contiguous(),
        grad_ladj.contiguous(),
    )
    return grad_x, grad_shift, grad_raw_scale


@_affine_backward_op.register_fake
def _(grad_out: Tensor, grad_ladj: Tensor, *args: Any) -> tuple[Tensor, Tensor, Tensor]:
    return tuple(_contiguous_empty(tensor) for tensor in args[:3])  # type: ignore[return-value]


_register_fused_backward(_affine_op, _affine_backward_op, num_tensors=3)


def rational_quadratic_spline(
    x: Tensor,
    unnormalized_widths: Tensor,
    unnormalized_heights: Tensor,
    unnormalized_derivatives: Tensor,
    inverse: bool = False,
    bound: float = 3.0,
    min_bin_width: float = 1e-3,
    min_bin_height: float = 1e-3,
    min_derivative: float = 1e-3,
) -> tuple[Tensor, Tensor]:
    """Fused rational-quadratic spline; same contract as `rational_quadratic_spline_reference`.

    Shapes: `x (..., d)`; widths and heights `(..., d, K)`; derivatives `(..., d, K + 1)`. Returns
    `y (..., d)` and `ladj (...)` in `x.dtype`. float64 (and empty inputs) use the reference.
    """
    if not AVAILABLE:
        raise RuntimeError("the Triton backend needs `triton` (pip install 'flows[kernels]')")
    bins = unnormalized_widths.shape[-1]
    if unnormalized_heights.shape[-1] != bins or unnormalized_derivatives.shape[-1] != bins + 1:
        raise ValueError(
            f"expected K bins for widths and heights and K + 1 derivatives, got {unnormalized_widths.shape[-1]}, "
            f"{unnormalized_heights.shape[-1]} and {unnormalized_derivatives.shape[-1]}"
        )
    if min_bin_width * bins >= 1.0 or min_bin_height * bins >= 1.0:
        raise ValueError(
            f"min_bin_width and min_bin_height must be < 1/bins = {1.0 / bins:.4g}, "
            f"got {min_bin_width} and {min_bin_height}"
        )
    batch = torch.broadcast_shapes(
        x.shape,
        unnormalized_widths.shape[:-1],
        unnormalized_heights.shape[:-1],
        unnormalized_derivatives.shape[:-1],
    )
    x = x.expand(batch)
    widths, heights, derivatives = (
        parameters.expand(batch + parameters.shape[-1:])
        for parameters in (unnormalized_widths, unnormalized_heights, unnormalized_derivatives)
    )
    if not _uses_kernel(x) or len(batch) == 0:
        return rational_quadratic_spline_reference(
            x, widths, heights, derivatives, inverse=inverse, bound=bound, min_bin_width=min_bin_width,
            min_bin_height=min_bin_height, min_derivative=min_derivative,
        )  # fmt: skip
    _check_device(x)
    features = batch[-1]
    rows = math.prod(batch[:-1])
    x_flat = x.reshape(rows, features).contiguous()
    # Views where possible (the kernel takes row and feature strides); a copy only for a bin stride != 1.
    widths, heights, derivatives = (
        parameters.reshape(rows, features, -1) for parameters in (widths, heights, derivatives)
    )
    widths, heights, derivatives = (
        parameters if parameters.stride(-1) == 1 else parameters.contiguous()
        for parameters in (widths, heights, derivatives)
    )
    y, ladj = _spline_op(
        x_flat, widths, heights, derivatives, bool(inverse),
        float(bound), float(min_bin_width), float(min_bin_height), float(min_derivative),
    )  # fmt: skip
    return y.reshape(batch), ladj.reshape(batch[:-1])


def affine(
    x: Tensor,
    shift: Tensor,
    raw_scale: Tensor,
    inverse: bool = False,
    scale_function: str = "tanh",
    scale_bound: float = 3.0,
) -> tuple[Tensor, Tensor]:
    """Fused affine map `y = x * s + shift`; same contract as `affine_reference`.

    Shapes: `x`, `shift`, `raw_scale` `(..., d)` (broadcastable); returns `y (..., d)` and
    `ladj (...)` in `x.dtype`. float64 (and empty inputs) use the reference.
    """
    if not AVAILABLE:
        raise RuntimeError("the Triton backend needs `triton` (pip install 'flows[kernels]')")
    if scale_function not in SCALE_FUNCTIONS:
        raise ValueError(f"scale_function must be one of {SCALE_FUNCTIONS}, got {scale_function!r}")
    batch = torch.broadcast_shapes(x.shape, shift.shape, raw_scale.shape)
    # Expanded first: the reference's log-det would otherwise take raw_scale's batch shape.
    x, shift, raw_scale = (tensor.expand(batch) for tensor in (x, shift, raw_scale))
    if not _uses_kernel(x) or len(batch) == 0:
        return affine_reference(
            x, shift, raw_scale, inverse=inverse, scale_function=scale_function, scale_bound=scale_bound
        )
    _check_device(x)
    features = batch[-1]
    rows = math.prod(batch[:-1])
    # x contiguous; shift and raw_scale as views where possible (the kernel takes their strides).
    x_flat, shift_flat, raw_flat = (tensor.reshape(rows, features) for tensor in (x, shift, raw_scale))
    x_flat = x_flat.contiguous()
    y, ladj = _affine_op(x_flat, shift_flat, raw_flat, bool(inverse), scale_function, float(scale_bound))
    return y.reshape(batch), ladj.reshape(batch[:-1])
