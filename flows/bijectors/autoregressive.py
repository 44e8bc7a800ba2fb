"""Autoregressive layers: the generic `Autoregressive(conditioner, transformer)` and its MADE constructor
`MaskedAutoregressive` (MAF, Papamakarios et al. 2017; its `.inv` is an IAF, Kingma et al. 2016).

The event's first dimension is the sequence of *units* that the inverse fills in: the features of a
vector (MADE, event `(features,)`), or the tokens of a token event (`CausalTransformer`, event `(T, D)`,
each unit a whole token of `D` features). A conditioner is an `nn.Module` with
`event_shape`, `context_features`, an `order` buffer (`order[i]` is the rank of unit `i`) and a call
`conditioner(x, context) -> params (batch + event_shape + (P,))`, where the parameters of unit `i` depend
only on the units of lower rank (and the context). It may also offer `decoder(context, batch)` returning
an object whose `step(previous_unit)` gives the next unit's parameters incrementally (a key-value cache).

`forward` (data to latent, the density direction) is one conditioner pass: `y_i = f(x_i; theta_i(x_<i, c))`.
`inverse` (sampling) solves `y = f(x; theta(x))` for `x`. The fixed-point (Jacobi) iteration
`x_{k+1} = f^{-1}(y; theta(x_k, c))` from `x_0 = 0` runs one conditioner pass over all units at once per
step. After `k` steps the units of rank `< k` are exact (each depends only on lower ranks), so `units`
steps give the exact inverse, as many passes as the sequential loop; the iteration stops as soon as no
element changes by more than `inverse_tol`, typically after far fewer steps (about 7 to 15 for 43 features
in our MAF measurements). The sequential loop fills one unit per step: with a decoder (and `use_cache`,
the default) each step costs one unit, otherwise each step recomputes the whole pass (the naive loop, kept
as the test reference for MADE). `inverse_method="auto"` (the default) takes the cached sequential loop when
the conditioner has a decoder, else the fixed point from 12 units on and the sequential loop below: with
few units the iteration needs nearly as many steps as the loop, and each of its steps transforms every unit
instead of one (measured 0.8x the speed of the loop at 8 features, 4.8x at 43 for an affine MAF).

Trade-offs of the fixed-point path: each convergence check reads one boolean back to the host. On a CPU
that costs microseconds and is done every step; on a GPU it waits for the queued kernels, so the check
runs every `inverse_check_every` steps (default 4 on CUDA), at most `inverse_check_every - 1` extra steps.
Under `torch.compile` there is no data-dependent exit (it would break the graph): the compiled loop runs
all `units` steps and is exact. Gradients flow through the iterations (reparameterised sampling): they
converge with the values, as the derivative of the iteration contracts like the iteration itself.
With `inverse_tol > 0` the error is about `inverse_tol` times `|(I - J)^-1|`, `J` the strictly triangular
sensitivity of `f^{-1}` to earlier positions; `inverse_tol=0.0` stops only at an exact fixed point, which is
the exact inverse.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Optional

import torch
from torch import Tensor, nn

from flows.bijectors.coupling import apply_transformer, build_transformer
from flows.core import Bijector, broadcast_context, check_permutation
from flows.mixed_precision import conditioners_in_mixed_precision, run_conditioner
from flows.nn import MADE
from flows.transformers import Transformer

__all__ = ["Autoregressive", "MaskedAutoregressive", "INVERSE_METHODS", "guided"]

#: Ways to invert an `Autoregressive` layer (see the module docstring).
INVERSE_METHODS = ("auto", "fixed_point", "sequential")

# With "auto" and no decoder, the fixed point is used from this many units on (see the module docstring).
_FIXED_POINT_MIN_FEATURES = 12

# Default `inverse_tol` per dtype: a few units in the last place at unit scale.
_DEFAULT_TOLERANCE = {torch.float64: 1e-12, torch.float32: 1e-6, torch.float16: 1e-3, torch.bfloat16: 1e-2}


def _check_inverse_options(method: object, tol: object, check_every: object) -> None:
    if method not in INVERSE_METHODS:
        raise ValueError(f"inverse_method must be one of {INVERSE_METHODS}, got {method!r}")
    if tol is not None and not (isinstance(tol, (int, float)) and tol >= 0):
        raise ValueError(f"inverse_tol must be a float >= 0 or None, got {tol!r}")
    if check_every is not None and (
        isinstance(check_every, bool) or not isinstance(check_every, int) or check_every < 1
    ):
        raise ValueError(f"inverse_check_every must be an int >= 1 or None, got {check_every!r}")


class Autoregressive(Bijector):
    """Generic autoregressive layer: `y_i = transformer(x_i; conditioner(x, c)_i)` over the event's units.

    `conditioner` follows the contract of the module docstring (e.g. `flows.nn.MADE` over vectors,
    `flows.nn.CausalTransformer` over tokens); `transformer` is a `flows.transformers.Transformer` whose
    `num_params` the conditioner returns per element. `inverse_method` is `"auto"`, `"fixed_point"` or
    `"sequential"`; `inverse_tol` the fixed-point stopping tolerance on the largest change of any element
    (None: 1e-6 in float32, 1e-12 in float64), `inverse_check_every` how many steps pass between
    convergence checks (None: 1 on a CPU, 4 on CUDA); `use_cache=False` makes the sequential loop recompute
    the whole pass at every step even when the conditioner has a decoder (the naive loop). All four are
    plain attributes and may be changed after construction; `compile_fixed_point_step` compiles one step.
    """

    def __init__(
        self,
        conditioner: nn.Module,
        transformer: Transformer,
        inverse_method: str = "auto",
        inverse_tol: Optional[float] = None,
        inverse_check_every: Optional[int] = None,
        use_cache: bool = True,
    ) -> None:
        super().__init__()
        _check_inverse_options(inverse_method, inverse_tol, inverse_check_every)
        if not isinstance(transformer, Transformer):
            raise TypeError(f"transformer must be a flows Transformer, got {type(transformer).__name__}")
        event_shape = tuple(getattr(conditioner, "event_shape", ()))
        order = getattr(conditioner, "order", None)
        if not event_shape or not isinstance(order, Tensor) or order.shape != event_shape[:1]:
            raise ValueError(
                "the conditioner must declare event_shape (a non-empty tuple) and an order of shape "
                f"(event_shape[0],), got event_shape={event_shape!r} and order={order!r}"
            )
        self.conditioner = conditioner
        self.transformer = transformer
        self.event_shape = event_shape
        self.event_dims = len(event_shape)
        self.context_features = int(getattr(conditioner, "context_features", 0))
        self.inverse_method = inverse_method
        self.inverse_tol = None if inverse_tol is None else float(inverse_tol)
        self.inverse_check_every = inverse_check_every
        self.use_cache = bool(use_cache)
        #: classifier-free guidance weight of the inverse (sampling); see `guided`
        self.guidance = 0.0
        self._compiled_step: Optional[Callable[..., tuple[Tensor, Tensor, Tensor]]] = None
        if hasattr(conditioner, "decoder") and not torch.equal(order, torch.arange(event_shape[0])):
            raise ValueError("a conditioner with a decoder must fill its units in their natural order")
        # Units sorted by their rank in the order: the sequence the inverse fills in.
        self.register_buffer("inverse_steps", torch.argsort(order))

    def check_state(self) -> None:
        check_permutation(self, "inverse_steps", self.inverse_steps, self.event_shape[0])

    @property
    def units(self) -> int:
        """How many units the inverse fills in one after the other (the event's first dimension)."""
        return self.event_shape[0]

    def _prepare(self, x: Tensor, context: Optional[Tensor]) -> tuple[Tensor, Optional[Tensor]]:
        self.check_event(x, self.event_shape)
        if self.context_features and context is None:
            raise ValueError(
                f"{type(self).__name__} expects a context with {self.context_features} features, got None"
            )
        return broadcast_context(x, context if self.context_features else None, self.event_dims)

    def _transform(self, x: Tensor, params: Tensor, inverse: bool) -> tuple[Tensor, Tensor]:
        """The transformer over the whole event: `x (batch + event)`, `params (batch + event + (P,))`."""
        batch = x.shape[: x.dim() - self.event_dims]
        size = math.prod(self.event_shape)
        flat_params = params.reshape(
            params.shape[: params.dim() - self.event_dims - 1] + (size, params.shape[-1])
        )
        y, ladj = apply_transformer(self.transformer, x.reshape(batch + (size,)), flat_params, inverse)
        return y.reshape(x.shape), ladj

    def forward(self, x: Tensor, context: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        """One conditioner pass: `x (batch + event) -> (y, ladj (batch))`."""
        x, context = self._prepare(x, context)
        return self._transform(x, run_conditioner(self.conditioner, x, context), inverse=False)

    def inverse(self, y: Tensor, context: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        """`y (batch + event) -> (x, ladj (batch))` by `inverse_method` (see the module docstring)."""
        y, context = self._prepare(y, context)
        method = self.inverse_method
        # Under mixed precision the cache's 16-bit steps round differently from the full pass that log_prob
        # runs, so the inverse would not undo the forward map: full passes then (see flows.mixed_precision).
        cached = (
            self.use_cache and hasattr(self.conditioner, "decoder") and not conditioners_in_mixed_precision()
        )
        if method == "auto":
            method = "sequential" if cached or self.units < _FIXED_POINT_MIN_FEATURES else "fixed_point"
        if method == "sequential":
            if cached:
                return self._inverse_cached(y, context)
            return self._inverse_sequential(y, context)
        x, ladj, _ = self._inverse_fixed_point(y, context)
        return x, ladj

    def _inverse_fixed_point(self, y: Tensor, context: Optional[Tensor]) -> tuple[Tensor, Tensor, int]:
        """Jacobi iteration `x <- f^{-1}(y; theta(x, c))` until converged; returns `(x, ladj, steps)`.

        `y (batch + event)` and `context` already broadcast (see `_prepare`). At most `units` steps;
        `steps` is how many ran (always `units` under `torch.compile`, which has no early exit).
        """
        tolerance = self.inverse_tol
        if tolerance is None:
            tolerance = _DEFAULT_TOLERANCE.get(y.dtype, 1e-6)
        check_every = self.inverse_check_every or (4 if y.is_cuda else 1)
        may_stop = not torch.compiler.is_compiling()
        step = self._compiled_step if self._compiled_step is not None else self._fixed_point_step
        x = torch.zeros_like(y)
        ladj = y.new_zeros(y.shape[: y.dim() - self.event_dims])
        steps = 0
        while steps < self.units:
            x, ladj, converged = step(x, y, context, tolerance)
            steps += 1
            # One host read per check (`bool`); `all` of an empty batch is True, NaNs never converge.
            if may_stop and steps % check_every == 0 and steps < self.units and bool(converged):
                break
        return x, ladj, steps

    def _fixed_point_step(
        self, x: Tensor, y: Tensor, context: Optional[Tensor], tolerance: float
    ) -> tuple[Tensor, Tensor, Tensor]:
        """One Jacobi step: `(x_next, ladj, converged)`, `converged` a 0-d bool tensor, true when no element
        of `x_next` differs from `x` by more than `tolerance`."""
        # Not-yet-valid units of an iterate may overflow (unbounded scales); masked or causal conditioners
        # multiply them by zero, and `0 * inf = nan` would spread, so they are zeroed before the pass.
        params = self._inverse_params(x.nan_to_num(0.0, 0.0, 0.0), context)
        x_next, ladj = self._transform(y, params, inverse=True)
        return x_next, ladj, ((x_next - x).abs() <= tolerance).all()

    def compile_fixed_point_step(self, **options: Any) -> None:
        """Compile one fixed-point step (a conditioner pass, the transformer and the convergence test) with
        `torch.compile(fullgraph=True, **options)`; the loop stays in Python and keeps its early exit.

        Compiling the whole inverse instead has no early exit (all `units` steps run), so for
        sampling this is the faster way to use the compiler. The compiled step is not saved in the
        `state_dict`; `compile_fixed_point_step(backend=None)` removes it.
        """
        if options.get("backend", "inductor") is None:
            self._compiled_step = None
            return
        self._compiled_step = torch.compile(self._fixed_point_step, fullgraph=True, **options)

    def _inverse_sequential(self, y: Tensor, context: Optional[Tensor]) -> tuple[Tensor, Tensor]:
        """The naive reference inverse: fill `x` one unit at a time in the order, then one full pass.

        Step `k` runs the conditioner on the partially filled `x` (the whole event: no cache) and inverts
        only the unit of rank `k` (its parameters depend only on units already filled). After `units - 1`
        steps, the last pass gives the final parameters of every unit, and one transformer call yields `x`
        and the log-determinant.
        """
        axis = y.dim() - self.event_dims
        x = torch.zeros_like(y)
        for step in range(self.units - 1):
            position = self.inverse_steps[step : step + 1]
            params = self._inverse_params(x, context).index_select(axis, position)
            x_position, _ = self.transformer(y.index_select(axis, position), params, inverse=True)
            x = x.index_copy(axis, position, x_position)
        return self._transform(y, self._inverse_params(x, context), inverse=True)

    def _inverse_params(self, x: Tensor, context: Optional[Tensor]) -> Tensor:
        """Conditioner parameters for the inverse: with `guidance = g` and a context, classifier-free guidance
        `p(c) + g (p(c) - p(0))` against the null context (zeros), else `p(c)`."""
        params = run_conditioner(self.conditioner, x, context)
        if self.guidance and context is not None:
            unconditional = run_conditioner(self.conditioner, x, torch.zeros_like(context))
            params = params + self.guidance * (params - unconditional)
        return params

    def _inverse_cached(self, y: Tensor, context: Optional[Tensor]) -> tuple[Tensor, Tensor]:
        """The sequential inverse through the conditioner's decoder: one unit per step, in natural order.

        Each step gets the next unit's parameters from the decoder (which caches the prefix), inverts that
        unit and adds its log-determinant; no full pass is run.
        """
        axis = y.dim() - self.event_dims
        decoder = self.conditioner.decoder(context, y.shape[:axis])
        if self.guidance and context is not None:
            decoder = _GuidedDecoder(
                decoder, self.conditioner.decoder(torch.zeros_like(context), y.shape[:axis]), self.guidance
            )
        unit_size = math.prod(self.event_shape[1:])
        batch = y.shape[:axis]
        units: list[Tensor] = []
        ladj = y.new_zeros(batch)
        previous: Optional[Tensor] = None
        for step in range(self.units):
            params = decoder.step(previous)
            target = y.select(axis, step)
            x_unit, ladj_unit = self.transformer(
                target.reshape(batch + (unit_size,)),
                params.reshape(batch + (unit_size, params.shape[-1])),
                inverse=True,
            )
            previous = x_unit.reshape(target.shape)
            units.append(previous)
            ladj = ladj + ladj_unit
        return torch.stack(units, dim=axis), ladj


class _GuidedDecoder:
    """Two decoders, conditional and null-context, stepped together: `p(c) + g (p(c) - p(0))` per unit."""

    def __init__(self, conditional: Any, unconditional: Any, guidance: float) -> None:
        self.conditional, self.unconditional, self.guidance = conditional, unconditional, guidance

    def step(self, previous: Optional[Tensor]) -> Tensor:
        params = self.conditional.step(previous)
        return params + self.guidance * (params - self.unconditional.step(previous))


@contextmanager
def guided(module: nn.Module, guidance: float) -> Iterator[nn.Module]:
    """Classifier-free guidance for sampling: within the block, every `Autoregressive` layer of `module`
    inverts with `params(c) + guidance * (params(c) - params(null))`, the null context being zeros (the
    label of `image.class_dropout`). `guidance = 0` is plain sampling. Guided samples no longer follow the
    model's density; `log_prob` (the forward direction) is unchanged.
    """
    if isinstance(guidance, bool) or not isinstance(guidance, (int, float)) or not math.isfinite(guidance):
        raise ValueError(f"guidance must be a finite number, got {guidance!r}")
    layers = [layer for layer in module.modules() if isinstance(layer, Autoregressive)]
    if guidance and not layers:
        raise ValueError(f"guidance needs autoregressive layers; {type(module).__name__} has none")
    saved = [layer.guidance for layer in layers]
    for layer in layers:
        layer.guidance = float(guidance)
    try:
        yield module
    finally:
        for layer, value in zip(layers, saved):
            layer.guidance = value


class MaskedAutoregressive(Autoregressive):
    """Autoregressive transform of `features` with a MADE conditioner and any transformer.

    `order` is a permutation of `range(features)` (identity by default): `y_d` depends on `x_i` with
    `order[i] < order[d]`. Transformer options (`bins`, `bound`, `tails`, `scale_function`,
    `scale_bound`) are keyword args (None = default) or a `transformer_options` dict. The inverse options
    are those of `Autoregressive` (MADE has no decoder, so `"auto"` is the fixed point from 12 features on).
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
        inverse_method: str = "auto",
        inverse_tol: Optional[float] = None,
        inverse_check_every: Optional[int] = None,
    ) -> None:
        _check_inverse_options(inverse_method, inverse_tol, inverse_check_every)
        if not isinstance(features, int) or features < 1:
            raise ValueError(f"features must be an int >= 1, got {features!r}")
        if not isinstance(context_features, int) or context_features < 0:
            raise ValueError(f"context_features must be an int >= 0, got {context_features!r}")
        if not isinstance(residual_blocks, int) or residual_blocks < 0:
            raise ValueError(f"residual_blocks must be an int >= 0, got {residual_blocks!r}")
        built = build_transformer(
            transformer,
            transformer_options,
            bins=bins,
            bound=bound,
            tails=tails,
            scale_function=scale_function,
            scale_bound=scale_bound,
        )
        made = MADE(
            features,
            context_features,
            hidden_features,
            built.num_params,
            residual_blocks=residual_blocks,
            order=order,
            dropout=dropout,
            feature_major_output=built.params_elements_last,
        )
        super().__init__(made, built, inverse_method, inverse_tol, inverse_check_every)
        self.features = features
        # Checkpoints from before `Autoregressive` stored the MADE under `made.`; they still load.
        self._register_load_state_dict_pre_hook(_rename_made)

    @property
    def made(self) -> MADE:
        """The MADE conditioner (`self.conditioner`)."""
        return self.conditioner


def _rename_made(state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
    """Load hook: rename the keys `prefix + "made."` of old checkpoints to `prefix + "conditioner."`."""
    old = prefix + "made."
    for key in [k for k in state_dict if k.startswith(old)]:
        state_dict[prefix + "conditioner." + key[len(old) :]] = state_dict.pop(key)
