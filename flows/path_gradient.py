"""Flow samples with the score `∇_x log q(x)` carried along the sampling pass (Vaitl et al., "Fast and
Unified Path Gradient Estimators for Normalizing Flows", ICLR 2024).

The path gradient of the reverse KL is `E[(∇_x log q(x) - ∇_x log p~(x))ᵀ ∂x/∂θ]`, the score term dropped.
The plain way gets `∇_x log q` from a second (density) pass through the flow with the parameters detached.
Here it is carried layer by layer through the one sampling pass: with `x' = S(x)` a layer's sampling map and
`F = S⁻¹` its density map, `log q'(x') = log q(F(x')) + log|det ∂F/∂x'|`, so

    ∇ log q'(x') = J_F(x')ᵀ ∇ log q(x) + ∇_x' log|det ∂F/∂x'|,

a vector-Jacobian product of `x' -> (F(x'), ladj_F(x'))` with cotangents `(∇ log q(x), 1)`. For a coupling
layer, `F(x')` keeps the conditioning half and transforms the other with the parameters `c(x_A)` that the
sampling pass has already computed: the step is an element-wise re-evaluation of the transformer and one
input-VJP through the conditioner's recorded graph, never a second forward pass of the network. Other
layers (permutations, LU-linear, ActNorm, affine, masked autoregressive) take the VJP of their density map
with detached parameters, which for them costs no more than the sampling step itself (for an autoregressive
layer, one network pass against the sampling direction's D).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from flows.bijectors.coupling import MaskedCoupling, apply_transformer
from flows.core import Bijector, Chain
from flows.flow import Flow
from flows.mixed_precision import full_precision, run_conditioner

__all__ = ["sample_with_score"]


def _detached_vjp(layer: Bijector, y: Tensor, score: Tensor) -> Tensor:
    """`J_F(y)ᵀ score + ∇_y ladj_F(y)` for the layer's density map `F = layer.forward`, parameters fixed."""
    y_leaf = y.detach().requires_grad_(True)
    with torch.enable_grad():  # a gradient w.r.t. y only: autograd leaves the parameters' branch alone
        x, ladj = layer(y_leaf)
        (grad,) = torch.autograd.grad((x * score).sum() + ladj.sum(), y_leaf)
    return grad


def _coupling_step(layer: MaskedCoupling, x: Tensor, score: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """One coupling layer in the sampling direction: `(x', ladj of the sampling map, ∇ log q'(x'))`. Its
    transformer runs outside the layer's own methods, so in `full_precision` here (`flows.mixed_precision`)."""
    with full_precision(x.device.type):
        x_cond, x_transformed = layer.split(x)
        params = run_conditioner(layer.conditioner, x_cond, None)
        y_transformed, ladj = apply_transformer(layer.transformer, x_transformed, params, inverse=True)
        score_cond, score_transformed = layer.split(score)
        y_leaf = y_transformed.detach().requires_grad_(True)
        params_leaf = params.detach().requires_grad_(True)
        with torch.enable_grad():
            back, ladj_forward = apply_transformer(layer.transformer, y_leaf, params_leaf, inverse=False)
            grad_transformed, grad_params = torch.autograd.grad(
                (back * score_transformed).sum() + ladj_forward.sum(), (y_leaf, params_leaf)
            )
            (grad_cond,) = torch.autograd.grad(params, x_cond, grad_params, retain_graph=True)
    return layer.merge(x_cond, y_transformed), ladj, layer.merge(score_cond + grad_cond, grad_transformed)


def _inverse_with_score(bijector: Bijector, x: Tensor, score: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """`bijector.inverse(x)` and the score of its output's density, given the score of `x`'s."""
    if isinstance(bijector, Chain):
        total: Optional[Tensor] = None
        for member in reversed(bijector.bijectors):
            x, ladj, score = _inverse_with_score(member, x, score)
            total = ladj if total is None else total + ladj
        assert total is not None
        return x, total, score
    if isinstance(bijector, MaskedCoupling) and not bijector.context_features and x.requires_grad:
        return _coupling_step(bijector, x, score)
    y, ladj = bijector.inverse(x)
    return y, ladj, _detached_vjp(bijector, y, score)


def sample_with_score(flow: Flow, n: int, z: Optional[Tensor] = None) -> tuple[Tensor, Tensor, Tensor]:
    """`n` reparameterised samples `x (n, D)` of an unconditional `flow` (differentiable in its parameters),
    their `log q(x) (n,)` and the score `∇_x log q(x) (n, D)` (detached) from the one sampling pass.
    `z (n, D)`: base samples to push through instead of fresh draws (`n` is then `z.shape[0]`)."""
    if flow.context_features:
        raise ValueError(
            "sample_with_score takes an unconditional flow (the sampling objectives have no context)"
        )
    if z is None:
        z = flow.base.rsample((n,))
    if not z.requires_grad:  # a fixed base: make z a leaf that needs grad (the conditioners' inputs must)
        z.requires_grad_(True)
    z_leaf = z.detach().requires_grad_(True)
    with torch.enable_grad():
        log_base = flow.base.log_prob(z_leaf)
        (score,) = torch.autograd.grad(log_base.sum(), z_leaf)
    x, ladj, score = _inverse_with_score(flow.transform, z, score)
    return x, (log_base - ladj).detach(), score
