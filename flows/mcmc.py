"""Markov chain Monte Carlo kernels for an unnormalised log density, and one runner that cycles them.

A kernel moves a batch of independent chains `(n_chains, D)` and leaves `p ∝ exp(log_p)` invariant:
`Independent` (Metropolis-Hastings with a fixed proposal `q`: accept with `min(1, w(x') / w(x))`,
`w = p / q`; with a flow as `q` this is neural-transport MCMC), `RandomWalk` (Gaussian random-walk MH),
`MALA` (Metropolis-adjusted Langevin) and `HMC` (Hamiltonian Monte Carlo, leapfrog with a unit mass).
`run_chains` applies a list of kernels in turn per step (an independent move interleaved with local moves,
say), optionally adapting the local kernels' step sizes during a discarded warm-up, and records the state
after each step. A non-finite `log_p` is zero density: such a proposal is never accepted, and a chain
started there leaves at its first finite proposal. All randomness comes from torch's global generator.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Optional, Protocol

import torch
from torch import Tensor

from flows.diagnostics import autocorrelation_ess

__all__ = [
    "HMC",
    "MALA",
    "ChainResult",
    "ChainState",
    "Independent",
    "Kernel",
    "RandomWalk",
    "Repeat",
    "evaluate",
    "run_chains",
]

#: `log_p(x (n, D)) -> (n,)`, unnormalised
LogDensity = Callable[[Tensor], Tensor]


class Proposal(Protocol):
    """A distribution to propose from: `sample((n,)) -> (n, D)` and `log_prob((n, D)) -> (n,)`."""

    def sample(self, sample_shape: tuple[int, ...]) -> Tensor: ...
    def log_prob(self, x: Tensor) -> Tensor: ...


@dataclass
class ChainState:
    """Chains `x (n, D)`, `log_p (n,)` (-inf at zero density), `grad = ∇ log_p (n, D)` when computed, and
    the independent proposal's `log_q (n,)` at `x` when known (None: recompute)."""

    x: Tensor
    log_p: Tensor
    grad: Optional[Tensor] = None
    log_q: Optional[Tensor] = None


def evaluate(log_p: LogDensity, x: Tensor, gradient: bool = False) -> tuple[Tensor, Optional[Tensor]]:
    """`(log_p(x) (n,), ∇ log_p(x) (n, D) or None)`, detached; non-finite values become -inf (zero density)
    and their gradient rows 0. A wrong output shape, or no gradient path to `x`, is a ValueError."""
    with torch.enable_grad() if gradient else torch.no_grad():
        x_in = x.detach().requires_grad_(gradient)
        value = log_p(x_in)
        if not isinstance(value, Tensor) or value.shape != (x.shape[0],):
            shape = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
            raise ValueError(f"log_p must return a tensor of shape ({x.shape[0]},), got {shape}")
        finite = torch.isfinite(value)
        grad = None
        if gradient:
            if not value.requires_grad:
                raise ValueError(
                    "MALA and HMC need a log_p differentiable in x; its output has no gradient path to x"
                )
            (grad,) = torch.autograd.grad(torch.where(finite, value, 0.0).sum(), x_in)
            grad = torch.where(finite[:, None] & torch.isfinite(grad), grad, 0.0)
    value = torch.where(finite, value.detach(), -math.inf)
    return value, grad


def _accept(log_ratio: Tensor) -> Tensor:
    """Bool `(n,)`: accept with probability `min(1, exp(log_ratio))` (NaN: never)."""
    u = torch.rand(log_ratio.shape, dtype=torch.float64, device=log_ratio.device)
    return torch.log(u) < log_ratio.double()  # NaN compares False


def _log_ratio(new: Tensor, old: Tensor) -> Tensor:
    """`new - old` of log densities, with a zero-density state `old = -inf` left for any finite `new`."""
    return torch.where(torch.isfinite(old), new - old, torch.where(torch.isfinite(new), math.inf, -math.inf))


def _select(accept: Tensor, new: Tensor, old: Tensor) -> Tensor:
    return torch.where(accept.reshape(accept.shape + (1,) * (new.dim() - 1)), new, old)


def _moved(state: ChainState, accept: Tensor, x: Tensor, log_p: Tensor, grad: Optional[Tensor]) -> ChainState:
    """The state after a local move: `log_q` is stale where a chain moved, `grad` merged when both known."""
    merged = None if grad is None or state.grad is None else _select(accept, grad, state.grad)
    return ChainState(_select(accept, x, state.x), _select(accept, log_p, state.log_p), merged, None)


class Kernel(Protocol):
    """One Markov transition of every chain that leaves `exp(log_p)` invariant."""

    name: str

    def step(self, state: ChainState, log_p: LogDensity) -> tuple[ChainState, Tensor]:
        """`(new state, accepted (n,))`: bool, or the accepted fraction of a repeated kernel."""
        ...


@dataclass
class Independent:
    """Independent Metropolis-Hastings with proposals from `proposal` (neural transport MCMC with a flow)."""

    proposal: Proposal
    name: str = "independent"

    def step(self, state: ChainState, log_p: LogDensity) -> tuple[ChainState, Tensor]:
        n = state.x.shape[0]
        x = self.proposal.sample((n,)).to(state.x)
        log_q = self.proposal.log_prob(x).to(state.log_p)
        old_log_q = state.log_q if state.log_q is not None else self.proposal.log_prob(state.x)
        value, _ = evaluate(log_p, x)
        accept = _accept(_log_ratio(value - log_q, state.log_p - old_log_q))
        grad = state.grad if not bool(accept.any()) else None  # recomputed by a gradient kernel if needed
        new = ChainState(_select(accept, x, state.x), _select(accept, value, state.log_p), grad, None)
        new.log_q = _select(accept, log_q, old_log_q)
        return new, accept


@dataclass
class RandomWalk:
    """Gaussian random-walk Metropolis: `x' = x + step_size ε`, `ε ~ N(0, I)`."""

    step_size: float
    name: str = "rwm"
    target_acceptance: float = 0.234

    def step(self, state: ChainState, log_p: LogDensity) -> tuple[ChainState, Tensor]:
        x = state.x + self.step_size * torch.randn_like(state.x)
        value, _ = evaluate(log_p, x)
        accept = _accept(_log_ratio(value, state.log_p))
        return _moved(state, accept, x, value, None), accept


@dataclass
class MALA:
    """Metropolis-adjusted Langevin: `x' = x + (h²/2) ∇log p(x) + h ε`, with the Hastings correction."""

    step_size: float
    name: str = "mala"
    target_acceptance: float = 0.574

    def step(self, state: ChainState, log_p: LogDensity) -> tuple[ChainState, Tensor]:
        h = self.step_size
        if state.grad is None:
            state = replace(state, grad=evaluate(log_p, state.x, gradient=True)[1])
        assert state.grad is not None
        x = state.x + 0.5 * h**2 * state.grad + h * torch.randn_like(state.x)
        value, grad = evaluate(log_p, x, gradient=True)
        assert grad is not None

        def log_kernel(to: Tensor, frm: Tensor, grad_frm: Tensor) -> Tensor:
            return -((to - frm - 0.5 * h**2 * grad_frm) ** 2).sum(-1) / (2 * h**2)

        correction = log_kernel(state.x, x, grad) - log_kernel(x, state.x, state.grad)
        accept = _accept(_log_ratio(value, state.log_p) + correction)
        return _moved(state, accept, x, value, grad), accept


@dataclass
class HMC:
    """Hamiltonian Monte Carlo: `leapfrog_steps` leapfrog steps of size `step_size`, unit mass matrix."""

    step_size: float
    leapfrog_steps: int = 10
    name: str = "hmc"
    target_acceptance: float = 0.65

    def step(self, state: ChainState, log_p: LogDensity) -> tuple[ChainState, Tensor]:
        h = self.step_size
        if state.grad is None:
            state = replace(state, grad=evaluate(log_p, state.x, gradient=True)[1])
        assert state.grad is not None
        momentum = torch.randn_like(state.x)
        x, p, grad = state.x, momentum + 0.5 * h * state.grad, state.grad
        value = state.log_p
        for i in range(self.leapfrog_steps):
            x = x + h * p
            value, grad = evaluate(log_p, x, gradient=True)
            assert grad is not None
            p = p + (h if i < self.leapfrog_steps - 1 else 0.5 * h) * grad
        log_ratio = _log_ratio(value, state.log_p) - 0.5 * (p**2).sum(-1) + 0.5 * (momentum**2).sum(-1)
        accept = _accept(log_ratio)
        return _moved(state, accept, x, value, grad), accept


class Repeat:
    """`kernel` applied `times` times in a row as one kernel: its accepted fraction `(n,)` is the mean over
    the repeats; `step_size` (adapted during warm-up) is the inner kernel's."""

    def __init__(self, kernel: Kernel, times: int) -> None:
        if times < 1:
            raise ValueError(f"times must be >= 1, got {times}")
        self.kernel, self.times = kernel, int(times)
        self.name = kernel.name
        self.target_acceptance = getattr(kernel, "target_acceptance", None)

    @property
    def step_size(self) -> float:
        return float(self.kernel.step_size)  # type: ignore[attr-defined]

    @step_size.setter
    def step_size(self, value: float) -> None:
        self.kernel.step_size = value  # type: ignore[attr-defined]

    def step(self, state: ChainState, log_p: LogDensity) -> tuple[ChainState, Tensor]:
        accepted = torch.zeros(state.x.shape[0], dtype=torch.float64, device=state.x.device)
        for _ in range(self.times):
            state, accept = self.kernel.step(state, log_p)
            accepted += accept.double()
        return state, accepted / self.times


@dataclass
class ChainResult:
    """Chains `samples (n_steps, n_chains, D)` (the state after each step, warm-up left out), each kernel's
    acceptance rate, the final `log_p (n_chains,)`, the step sizes used and the seconds the run took."""

    samples: Tensor
    acceptance: dict[str, float]
    log_p: Tensor
    seconds: float
    step_sizes: dict[str, float] = field(default_factory=dict)

    @property
    def acceptance_rate(self) -> float:
        """The mean of the kernels' acceptance rates (one kernel: its rate)."""
        return sum(self.acceptance.values()) / len(self.acceptance)

    def effective_sample_size(self) -> Tensor:
        """Autocorrelation ESS per coordinate `(D,)` (Geyer's initial positive sequence)."""
        return autocorrelation_ess(self.samples)

    def ess_per_second(self) -> float:
        """The worst coordinate's autocorrelation ESS per second of sampling."""
        return float(self.effective_sample_size().min()) / max(self.seconds, 1e-9)


def _adapt(kernel: Kernel, rate: float, iteration: int) -> None:
    """Robbins-Monro on the log step size toward the kernel's target acceptance (warm-up only)."""
    target = getattr(kernel, "target_acceptance", None)
    if target is not None:
        gain = 1.0 / (iteration + 1) ** 0.6
        kernel.step_size = float(kernel.step_size * math.exp(2.0 * gain * (rate - target)))  # type: ignore[attr-defined]


@torch.no_grad()
def run_chains(
    log_p: LogDensity,
    kernels: Sequence[Kernel],
    initial: Tensor,
    n_steps: int,
    warmup: int = 0,
) -> ChainResult:
    """Run chains from `initial (n_chains, D)`: each step applies every kernel in order; `warmup` steps
    before the recorded `n_steps` adapt the step sizes (then fixed, so the recorded chain is Markov)."""
    if n_steps < 1 or warmup < 0:
        raise ValueError(f"n_steps must be >= 1 and warmup >= 0, got {n_steps} and {warmup}")
    if not kernels:
        raise ValueError("expected at least one kernel, got none")
    if initial.dim() != 2 or initial.shape[0] < 1:
        raise ValueError(f"initial must have shape (n_chains >= 1, D), got {tuple(initial.shape)}")
    names = [kernel.name for kernel in kernels]
    if len(set(names)) != len(names):
        raise ValueError(f"kernel names must differ (they key the acceptance rates), got {names}")
    state = ChainState(initial, evaluate(log_p, initial)[0])
    accepted = {name: 0.0 for name in names}
    start = time.perf_counter()
    states = []
    for iteration in range(warmup + n_steps):
        for kernel in kernels:
            state, accept = kernel.step(state, log_p)
            rate = float(accept.double().mean())
            if iteration < warmup:
                _adapt(kernel, rate, iteration)
            else:
                accepted[kernel.name] += rate
        if iteration == warmup - 1:
            start = time.perf_counter()  # ESS per second counts the recorded steps only
        if iteration >= warmup:
            states.append(state.x)
    seconds = time.perf_counter() - start
    sizes = {k.name: float(k.step_size) for k in kernels if hasattr(k, "step_size")}  # type: ignore[attr-defined]
    rates = {name: value / n_steps for name, value in accepted.items()}
    return ChainResult(torch.stack(states), rates, state.log_p, seconds, sizes)
