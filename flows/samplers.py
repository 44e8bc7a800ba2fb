"""Samplers built on a proposal `q` with exact log density (a trained flow) and an unnormalised target `p~`.

`importance_resample`: draws from the self-normalised importance distribution of weighted samples.
`independent_metropolis`: independent Metropolis-Hastings (neural transport MCMC) with `q` as the proposal:
accept `x' ~ q` with probability `min(1, w(x') / w(x))`, `w = p~ / q`, which leaves `p` invariant
(Hastings 1970). Both treat a log weight of -inf (zero target density) as never chosen / never accepted.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

__all__ = ["MetropolisResult", "importance_resample", "independent_metropolis"]

#: `propose(n) -> (x (n, D), log q(x) (n,))`
Proposal = Callable[[int], tuple[Tensor, Tensor]]


def importance_resample(
    x: Tensor, log_w: Tensor, n: int, generator: Optional[torch.Generator] = None
) -> Tensor:
    """`n` rows `(n, D)` drawn with replacement from `x (N, D)` with probabilities `softmax(log_w)` `(N,)`."""
    if log_w.shape != (x.shape[0],):
        raise ValueError(
            f"log_w must have shape ({x.shape[0]},) to match x {tuple(x.shape)}, got {tuple(log_w.shape)}"
        )
    if not bool(torch.isfinite(log_w).any()):
        raise ValueError("every weight is zero (log_w all -inf or NaN): nothing to resample")
    safe = torch.where(torch.isfinite(log_w), log_w, -math.inf).double()
    probabilities = torch.softmax(safe, 0)
    index = torch.multinomial(probabilities.cpu(), n, replacement=True, generator=generator)
    return x[index.to(x.device)]


@dataclass
class MetropolisResult:
    """Chains `(n_steps, n_chains, D)` (the state after each step), the acceptance rate over all steps and
    chains, the final log weights `(n_chains,)` and the wall time of the run in seconds."""

    samples: Tensor
    acceptance_rate: float
    log_w: Tensor
    seconds: float = 0.0


def _log_weights(log_p: Callable[[Tensor], Tensor], x: Tensor, log_q: Tensor) -> Tensor:
    value = log_p(x)
    if value.shape != log_q.shape:
        raise ValueError(
            f"the target's log_prob must return shape {tuple(log_q.shape)}, got {tuple(value.shape)}"
        )
    return torch.where(torch.isfinite(value), value - log_q, -math.inf)


@torch.no_grad()
def independent_metropolis(
    propose: Proposal,
    log_p: Callable[[Tensor], Tensor],
    n_steps: int,
    n_chains: int = 1,
    initial: Optional[tuple[Tensor, Tensor]] = None,
    generator: Optional[torch.Generator] = None,
) -> MetropolisResult:
    """Run `n_chains` independent Metropolis-Hastings chains for `n_steps` steps with proposals from
    `propose`. `initial`: `(x (n_chains, D), log q(x) (n_chains,))` start states (default: one proposal)."""
    if n_steps < 1 or n_chains < 1:
        raise ValueError(f"n_steps and n_chains must be >= 1, got {n_steps} and {n_chains}")
    start = time.perf_counter()
    x, log_q = propose(n_chains) if initial is None else initial
    log_w = _log_weights(log_p, x, log_q)
    states, accepted = [], 0
    for _ in range(n_steps):
        x_new, log_q_new = propose(n_chains)
        log_w_new = _log_weights(log_p, x_new, log_q_new)
        u = torch.rand(n_chains, generator=generator, dtype=torch.float64).to(x.device)
        ratio = torch.where(torch.isfinite(log_w), log_w_new - log_w, math.inf)  # leave a zero-density start
        accept = (torch.log(u) < ratio) & torch.isfinite(log_w_new)
        x = torch.where(accept[:, None], x_new, x)
        log_w = torch.where(accept, log_w_new, log_w)
        accepted += int(accept.sum())
        states.append(x)
    seconds = time.perf_counter() - start
    return MetropolisResult(torch.stack(states), accepted / (n_steps * n_chains), log_w, seconds)
