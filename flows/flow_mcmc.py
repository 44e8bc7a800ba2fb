"""MCMC on top of a trained flow, run in the flow's latent space (NeuTra, Hoffman et al. 2019).

With `x = T(z)` the flow's sampling map, the target pulled back to the latent space is
`log π(z) = log p~(T(z)) + log|det ∂T/∂z|`: where the flow is good, `π` is close to the base `N(0, I)`, so
local kernels with one step size mix well there. Every kernel runs on `π` (one state, one density):
`independent` (proposals from the base distribution: the acceptance ratio `π(z')/N(z') / (π(z)/N(z))` equals
`w(x')/w(x)` with `w = p~/q`, i.e. neural-transport independent Metropolis-Hastings), optionally followed by
`local_steps` random-walk (`rwm`) or Langevin (`mala`) moves, or `hmc` alone. Chains are mapped back to `x`.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor

from flows.flow import Flow
from flows.mcmc import (
    HMC,
    MALA,
    ChainResult,
    Independent,
    Kernel,
    LogDensity,
    RandomWalk,
    Repeat,
    run_chains,
)

__all__ = ["METHODS", "LOCAL_MOVES", "flow_kernels", "flow_mcmc", "pulled_back"]

METHODS = ("independent", "hmc")
LOCAL_MOVES = ("rwm", "mala")


def pulled_back(flow: Flow, log_p: LogDensity) -> LogDensity:
    """`z (n, D) -> log p~(T(z)) + log|det ∂T/∂z| (n,)`: the target in the flow's latent space."""

    def log_density(z: Tensor) -> Tensor:
        x, ladj = flow.transform.inverse(z)
        return log_p(x) + ladj

    return log_density


def _default_step(kind: str, features: int) -> float:
    """Step sizes that suit a standard normal in `features` dimensions (Roberts & Rosenthal scalings)."""
    if kind == "rwm":
        return 2.38 / math.sqrt(features)
    if kind == "mala":
        return 1.65 * features ** (-1 / 6)
    return 0.5 * features ** (-1 / 4)


def flow_kernels(
    flow: Flow,
    method: str = "independent",
    local: Optional[str] = None,
    local_steps: int = 1,
    step_size: Optional[float] = None,
    leapfrog_steps: int = 10,
) -> list[Kernel]:
    """The kernels of one latent-space MCMC step (see the module docstring)."""
    if method not in METHODS:
        raise ValueError(f"method: expected one of {', '.join(METHODS)}, got {method!r}")
    if local is not None and local not in LOCAL_MOVES:
        raise ValueError(f"local: expected None or one of {', '.join(LOCAL_MOVES)}, got {local!r}")
    if method == "hmc" and local is not None:
        raise ValueError(f"local moves interleave with method='independent', not with 'hmc' (got {local!r})")
    if isinstance(local_steps, bool) or not isinstance(local_steps, int) or local_steps < 1:
        raise ValueError(f"local_steps must be an int >= 1, got {local_steps!r}")
    if step_size is not None and not (math.isfinite(step_size) and step_size > 0):
        raise ValueError(f"step_size must be a positive finite number or None, got {step_size!r}")
    if isinstance(leapfrog_steps, bool) or not isinstance(leapfrog_steps, int) or leapfrog_steps < 1:
        raise ValueError(f"leapfrog_steps must be an int >= 1, got {leapfrog_steps!r}")
    features = math.prod(flow.event_shape)
    if method == "hmc":
        return [HMC(step_size or _default_step("hmc", features), leapfrog_steps)]
    kernels: list[Kernel] = [Independent(flow.base)]  # type: ignore[arg-type]
    if local is not None:
        size = step_size or _default_step(local, features)
        move = RandomWalk if local == "rwm" else MALA
        kernels.append(Repeat(move(size), local_steps) if local_steps > 1 else move(size))
    return kernels


def flow_mcmc(
    flow: Flow,
    log_p: LogDensity,
    n_steps: int,
    n_chains: int = 1,
    method: str = "independent",
    local: Optional[str] = None,
    local_steps: int = 1,
    step_size: Optional[float] = None,
    leapfrog_steps: int = 10,
    warmup: int = 0,
    decode_batch: int = 65_536,
) -> ChainResult:
    """Latent-space MCMC for the target `log_p` with `flow`: chains `(n_steps, n_chains, D)` in data space,
    started from flow samples; `warmup` adaptation steps (local step sizes) are run first and left out."""
    if len(flow.event_shape) != 1:
        raise ValueError(f"flow MCMC takes a flow over vectors, got event shape {flow.event_shape}")
    if isinstance(n_chains, bool) or not isinstance(n_chains, int) or n_chains < 1:
        raise ValueError(f"n_chains must be an int >= 1, got {n_chains!r}")
    kernels = flow_kernels(flow, method, local, local_steps, step_size, leapfrog_steps)
    with torch.no_grad():
        initial = flow.base.sample((n_chains,))
    result = run_chains(pulled_back(flow, log_p), kernels, initial, n_steps, warmup)
    with torch.no_grad():
        z = result.samples.reshape(-1, result.samples.shape[-1])
        x = torch.cat([flow.transform.inverse(chunk)[0] for chunk in z.split(decode_batch)])
    result.samples = x.reshape(result.samples.shape)
    return result
