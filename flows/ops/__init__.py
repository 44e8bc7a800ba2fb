"""Element-wise kernels behind one seam.

Each op has a pure-PyTorch reference (the specification and the test oracle) and may have faster
backends. Layers call the functions here and never import a backend. The backend is chosen per call
or forced with `set_backend` / `use_backend`:

- `"auto"` (default): the fused Triton kernels for CUDA tensors in eager mode when Triton is installed;
  the reference everywhere else - on the CPU, for float64, and while `torch.compile` traces (Inductor
  then fuses the reference into its own kernels).
- `"reference"`: always the reference.
- `"triton"`: always the Triton kernels (float64 still falls back to the reference inside them), also
  under `torch.compile` (they are custom ops). CPU tensors need Triton's interpreter
  (`TRITON_INTERPRET=1` before Triton is first imported).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from types import ModuleType

import torch
from torch import Tensor

from flows.ops.affine_reference import SCALE_FUNCTIONS, affine_reference, log_scale_from_raw
from flows.ops.spline_reference import (
    rational_quadratic_spline_packed_reference,
    rational_quadratic_spline_reference,
    spline_knots,
)

__all__ = [
    "BACKENDS",
    "SCALE_FUNCTIONS",
    "affine",
    "get_backend",
    "log_scale_from_raw",
    "rational_quadratic_spline",
    "rational_quadratic_spline_packed",
    "set_backend",
    "spline_knots",
    "use_backend",
]

BACKENDS = ("auto", "reference", "triton")
_backend = "auto"


def set_backend(name: str) -> None:
    """Choose the kernel backend for every op: `"auto"`, `"reference"` or `"triton"`."""
    global _backend
    if name not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {name!r}")
    _backend = name


def get_backend() -> str:
    """The backend currently selected."""
    return _backend


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Temporarily select a backend: `with use_backend("reference"): ...`."""
    previous = _backend
    set_backend(name)
    try:
        yield
    finally:
        set_backend(previous)


def _triton_ops() -> ModuleType | None:
    try:
        from flows.ops import triton_ops
    except (ImportError, AttributeError):  # no triton, or a torch without torch.library.custom_op
        return None
    return triton_ops if triton_ops.AVAILABLE else None


def _select(op: str, x: Tensor, reference: Callable) -> Callable:
    if _backend == "reference":
        return reference
    if _backend == "triton":
        module = _triton_ops()
        if module is None:
            raise RuntimeError(
                "backend 'triton' was requested but Triton is not installed or not usable "
                "(pip install 'flows[kernels]'), or choose set_backend('auto') / 'reference'"
            )
        return getattr(module, op)
    if x.is_cuda and x.dtype != torch.float64 and not torch.compiler.is_compiling():
        module = _triton_ops()
        if module is not None:
            return getattr(module, op)
    return reference


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
    """Rational-quadratic spline with linear tails; see `rational_quadratic_spline_reference`.

    Shapes: `x (..., d)`, widths/heights `(..., d, K)`, derivatives `(..., d, K + 1)`;
    returns `y (..., d)` and `ladj (...)` summed over the last dimension.
    """
    implementation = _select("rational_quadratic_spline", x, rational_quadratic_spline_reference)
    return implementation(
        x,
        unnormalized_widths,
        unnormalized_heights,
        unnormalized_derivatives,
        inverse=inverse,
        bound=bound,
        min_bin_width=min_bin_width,
        min_bin_height=min_bin_height,
        min_derivative=min_derivative,
    )


def rational_quadratic_spline_packed(
    x: Tensor,
    params: Tensor,
    bins: int,
    inverse: bool = False,
    bound: float = 3.0,
    min_bin_width: float = 1e-3,
    min_bin_height: float = 1e-3,
    min_derivative: float = 1e-3,
) -> tuple[Tensor, Tensor]:
    """The spline with its parameters in one tensor; see `rational_quadratic_spline_packed_reference`.

    Shapes: `x (..., d)`, `params (..., d, 3K + 1)` (linear tails) or `(..., d, 3K - 1)` (identity tails);
    returns `y (..., d)` and `ladj (...)`. Backends that take the three parameter tensors get them split.
    """
    options = {
        "inverse": inverse,
        "bound": bound,
        "min_bin_width": min_bin_width,
        "min_bin_height": min_bin_height,
        "min_derivative": min_derivative,
    }
    implementation = _select("rational_quadratic_spline", x, rational_quadratic_spline_reference)
    if implementation is rational_quadratic_spline_reference:
        return rational_quadratic_spline_packed_reference(x, params, bins, **options)  # type: ignore[arg-type]
    widths, heights, derivatives = params.split((bins, bins, params.shape[-1] - 2 * bins), dim=-1)
    if params.shape[-1] == 3 * bins - 1:
        derivatives = torch.nn.functional.pad(derivatives, (1, 1), value=0.0)  # identity tails: slopes of 1
    return implementation(x, widths, heights, derivatives, **options)


def affine(
    x: Tensor,
    shift: Tensor,
    raw_scale: Tensor,
    inverse: bool = False,
    scale_function: str = "tanh",
    scale_bound: float = 3.0,
) -> tuple[Tensor, Tensor]:
    """Affine map `y = x * s + shift` with its log-det; see `affine_reference`.

    Shapes: `x`, `shift`, `raw_scale` `(..., d)`; returns `y (..., d)` and `ladj (...)`.
    """
    implementation = _select("affine", x, affine_reference)
    return implementation(
        x, shift, raw_scale, inverse=inverse, scale_function=scale_function, scale_bound=scale_bound
    )
