"""Annealed importance sampling (Neal 2001) with a flow as the initial distribution, the evaluation of flow
annealed importance sampling bootstrap (FAB; Midgley et al. 2023).

It runs in the flow's latent space, where the flow's density is its base `π_0(z)` and the target pulled back
through the sampling map `x = T(z)` is `π_1(z) = p~(T(z)) |det ∂T/∂z|` (`flows.flow_mcmc.pulled_back`), so
`π_1 / π_0 = p~(x) / q(x)`, the importance weight. Along the geometric path `π_β ∝ π_0^(1-β) π_1^β` with
`0 = β_0 < ... < β_K = 1`, each chain starts at `z ~ π_0` and alternates

    log w += (β_k - β_(k-1)) (log π_1(z) - log π_0(z)),    z <- a kernel step that leaves π_(β_k) invariant,

(no step after the last increment). `mean w` is an unbiased estimate of `Z` for any kernels that leave their
intermediate density invariant; `K = 1` is plain importance sampling with the flow. The kernels
(`flows.mcmc`) use fixed step sizes: an adaptation from the chains' acceptance would make the transitions
depend on the other chains.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from flows.flow import Flow
from flows.flow_mcmc import pulled_back
from flows.mcmc import HMC, MALA, ChainState, Kernel, RandomWalk, evaluate

__all__ = ["AIS_KERNELS", "annealed_importance_log_weights"]

#: local kernels for the annealing transitions
AIS_KERNELS = ("hmc", "mala", "rwm")

LogDensity = Callable[[Tensor], Tensor]


def _kernel(kind: str, step_size: float, leapfrog_steps: int) -> Kernel:
    if kind == "hmc":
        return HMC(step_size, leapfrog_steps)
    if kind == "mala":
        return MALA(step_size)
    if kind == "rwm":
        return RandomWalk(step_size)
    raise ValueError(f"kernel: expected one of {', '.join(AIS_KERNELS)}, got {kind!r}")


def _geometric(base: LogDensity, target: LogDensity, beta: float) -> LogDensity:
    def log_density(z: Tensor) -> Tensor:
        return (1.0 - beta) * base(z) + beta * target(z)

    return log_density


def annealed_importance_log_weights(
    flow: Flow,
    log_p: LogDensity,
    n: int,
    steps: int = 10,
    kernel: str = "hmc",
    step_size: float = 0.3,
    leapfrog_steps: int = 5,
    moves_per_step: int = 1,
) -> Tensor:
    """AIS log weights `(n,)` (detached, -inf at zero target density) from `n` chains started at the flow's
    base, `steps` equally spaced inverse temperatures and `moves_per_step` `kernel` moves (`"hmc"`, `"mala"`
    or `"rwm"`, latent space, fixed `step_size`) at each intermediate one. `log_p`: `(n, D) -> (n,)`."""
    for name, value, least in (("n", n, 1), ("steps", steps, 1), ("leapfrog_steps", leapfrog_steps, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise ValueError(f"{name} must be an int >= {least}, got {value!r}")
    if isinstance(moves_per_step, bool) or not isinstance(moves_per_step, int) or moves_per_step < 0:
        raise ValueError(f"moves_per_step must be an int >= 0, got {moves_per_step!r}")
    if not (isinstance(step_size, (int, float)) and math.isfinite(step_size) and step_size > 0):
        raise ValueError(f"step_size must be a positive finite number, got {step_size!r}")
    if len(flow.event_shape) != 1 or flow.context_features:
        raise ValueError("AIS takes an unconditional flow over vectors")
    move = _kernel(kernel, float(step_size), leapfrog_steps)
    base, target = flow.base.log_prob, pulled_back(flow, log_p)
    with torch.no_grad():
        z = flow.base.sample((n,))
    log_w = torch.zeros(n, dtype=torch.float64, device=z.device)
    betas = torch.linspace(0.0, 1.0, steps + 1, dtype=torch.float64).tolist()
    for k in range(1, steps + 1):
        log_base, _ = evaluate(base, z)
        log_target, _ = evaluate(target, z)
        log_w = log_w + (betas[k] - betas[k - 1]) * (log_target - log_base).double()
        if k == steps:
            break
        beta = betas[k]
        intermediate = _geometric(base, target, beta)
        state = ChainState(z, (1.0 - beta) * log_base + beta * log_target)
        for _ in range(moves_per_step):
            state, _ = move.step(state, intermediate)
        z = state.x
    return torch.where(torch.isnan(log_w), -math.inf, log_w)
