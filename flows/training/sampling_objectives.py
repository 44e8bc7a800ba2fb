"""Objectives against an unnormalised target `p~` instead of data: reverse KL (reparameterised or path
gradient) and forward KL from the target's exact samples (maximum likelihood, or its path gradient).

Reverse KL: `x, log q(x) = flow.sample_and_log_prob(n)`; loss `mean(log q(x) - log p~(x))` (= KL(q || p) -
log Z). The reparameterised gradient differentiates both terms through the sample and the parameters; the
path gradient ("sticking the landing", Roeder et al. 2017; Vaitl et al. 2022) drops the score term
`E_q[∇_θ log q_θ(x)]` (zero in expectation): the gradient is `(∇_x log q(x) - ∇_x log p~(x))ᵀ ∂x/∂θ`, with
`∇_x log q` carried through the one sampling pass (`flows.path_gradient`, Vaitl et al. 2024) instead of a
second density pass: same expectation, lower variance near the optimum.
Samples where the target is NaN, +inf or -inf have zero density (log weight -inf): they are left out of the
loss (their gradient rows are zeroed) and counted, so a partly undefined target never makes the loss NaN.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import torch
from torch import Tensor

from flows.flow import Flow
from flows.flow_mcmc import pulled_back
from flows.mcmc import evaluate
from flows.path_gradient import sample_with_score
from flows.targets.base import Target, checked_log_prob
from flows.training.objectives import Objective

__all__ = [
    "AnnealedTarget",
    "ForwardKL",
    "forward_kl_path_loss",
    "annealing_beta",
    "ReverseKL",
    "SampledWeights",
    "reverse_kl_loss",
    "sampling_objective",
    "seeded",
    "shard",
    "validation_log_weights",
]

Gradient = Literal["reparam", "path"]


class TargetTrainingModule(Protocol):
    """What the sampling objectives use of the LightningModule (`flows.training.sampling_module`)."""

    flow: Flow
    target: Target
    seed: int

    def progress(self) -> float: ...
    def world_and_rank(self) -> tuple[int, int]: ...
    def log_training(self, loss: Tensor, rows: int) -> None: ...
    def log(self, name: str, value: Any, **kwargs: Any) -> None: ...
    def add_log_weights(self, log_w: Tensor) -> None: ...


@dataclass
class SampledWeights:
    """One reverse-KL batch: the loss (scalar, differentiable), log weights `(n,)` (detached, -inf at zero
    target density) and the number of rows left out of the loss: the target returned NaN, +inf or -inf there
    (or, rarely, the flow's own log density overflowed)."""

    loss: Tensor
    log_w: Tensor
    zero_density: int


def _zero_rows_of_gradient(x: Tensor, rows: Tensor) -> None:
    """Zero the gradient of `x` at `rows` (a target's NaN there must not reach the parameters)."""
    if x.requires_grad and bool(rows.any()):
        x.register_hook(lambda grad: grad.masked_fill(rows[:, None], 0.0))


def shard(rows: Tensor, world: int, rank: int) -> Tensor:
    """Rank `rank`'s rows `rank, rank + world, ...` of a global batch `rows (n * world, ...)` (as the data
    runs' `GlobalBatchSampler` cuts its batches), so that the ranks together hold the one-process batch."""
    return rows if world == 1 else rows[rank::world]


def reverse_kl_loss(
    flow: Flow, target: Target, n: int, gradient: Gradient = "reparam", world: int = 1, rank: int = 0
) -> SampledWeights:
    """The reverse-KL loss of `n` fresh samples from `flow`, with the `"reparam"` or `"path"` gradient.

    With `world > 1` the base draws the global batch of `n * world` rows and this rank pushes its `shard`
    through the flow: under a common seed, `world` ranks sample what one process drawing `n * world` does.
    """
    if gradient not in ("reparam", "path"):
        raise ValueError(f"gradient: expected 'reparam' or 'path', got {gradient!r}")
    z = shard(flow.base.rsample((n * world,)), world, rank)
    if gradient == "reparam":
        x, ladj = flow.transform.inverse(z)
        log_q = flow.base.log_prob(z) - ladj
    else:
        x, log_q, score = sample_with_score(flow, n, z)
    log_p = checked_log_prob(target, x, differentiable=True)
    # rows where the target is undefined (zero density), or where the flow's own density overflowed
    good = torch.isfinite(log_p) & torch.isfinite(log_q)
    _zero_rows_of_gradient(x, ~good)
    count = int(good.sum())
    if gradient == "path":  # value log q - log p~; gradient (∇log q - ∇log p~)ᵀ ∂x/∂θ, ∇log q held fixed
        carried = (torch.where(good[:, None], score, 0.0) * x).sum(-1)
        log_q = log_q + carried - carried.detach()
    difference = torch.where(good, torch.where(good, log_q, 0.0) - torch.where(good, log_p, 0.0), 0.0)
    loss = difference.sum() / max(count, 1)
    log_w = torch.where(good, log_p.detach() - log_q.detach(), -math.inf)
    return SampledWeights(loss, log_w, int(n - count))


@contextlib.contextmanager
def seeded(seed: int, device: torch.device) -> Iterator[None]:
    """Fix the global RNG (CPU, and `device` when it is CUDA) for the block, restoring it after."""
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        if devices:
            torch.cuda.manual_seed(seed)
        yield


@torch.no_grad()
def validation_log_weights(flow: Flow, target: Target, n: int, seed: int) -> Tensor:
    """Log weights `(n,)` of `n` samples from `flow` drawn with a fixed `seed` (-inf at zero density)."""
    reference = next(flow.parameters(), None)
    device = reference.device if reference is not None else torch.device("cpu")
    with seeded(seed, device):
        x, log_q = flow.sample_and_log_prob((n,))
    log_p = checked_log_prob(target, x)
    return torch.where(torch.isfinite(log_p), log_p - log_q, -math.inf)


#: seed offset of the validation samples (batch i uses seed + VALIDATION_SEED + i)
VALIDATION_SEED = 1_000_003


class _TargetObjective(Objective):
    """Validation of every sampling objective: `val_reverse_kl` = mean of `-log w` over fixed-seed samples
    where the target density is positive (= KL(q || p) - log Z); the module logs ESS and log Z from the
    same weights."""

    monitor = "val_reverse_kl"

    def validation_total(
        self, module: TargetTrainingModule, batch: Any, batch_index: int
    ) -> tuple[Tensor, int]:
        n = int(batch)
        log_w = validation_log_weights(
            module.flow, module.target, n, module.seed + VALIDATION_SEED + batch_index
        )
        module.add_log_weights(log_w)
        finite = torch.isfinite(log_w)
        return (-log_w[finite]).sum(), int(finite.sum())


def annealing_beta(progress: float, fraction: float, start: float) -> float:
    """Inverse temperature at training `progress` in [0, 1]: geometric in `beta` from `start` to 1 over the
    first `fraction` of training (1 throughout when `fraction` is 0)."""
    if fraction <= 0 or progress >= fraction:
        return 1.0
    return float(start ** (1.0 - progress / fraction))


class AnnealedTarget:
    """The geometric path `beta log p~(x) + (1 - beta) log N(x; 0, scale² I)` from a wide Gaussian to the
    target (`beta` = 1: the target itself)."""

    def __init__(self, target: Target, beta: float, scale: float = 1.0) -> None:
        self.target, self.beta, self.scale = target, float(beta), float(scale)
        self.features = int(target.features)

    def log_prob(self, x: Tensor) -> Tensor:
        """`(batch, D) -> (batch,)`."""
        d = x.shape[-1]
        base = -0.5 * ((x / self.scale) ** 2).sum(-1) - d * (
            math.log(self.scale) + 0.5 * math.log(2 * math.pi)
        )
        return self.beta * self.target.log_prob(x) + (1.0 - self.beta) * base


class ReverseKL(_TargetObjective):
    """Reverse KL from `batch` samples of the flow per step; `gradient` "reparam" or "path". With
    `anneal_fraction` > 0, the first part of training targets the geometric path `AnnealedTarget` (inverse
    temperature from `anneal_start` to 1, base N(0, `scale`²)) against mode collapse."""

    def __init__(
        self,
        gradient: Gradient = "reparam",
        anneal_fraction: float = 0.0,
        anneal_start: float = 0.01,
        scale: float = 1.0,
    ) -> None:
        if gradient not in ("reparam", "path"):
            raise ValueError(f"gradient: expected 'reparam' or 'path', got {gradient!r}")
        if not 0 <= anneal_fraction <= 1 or not 0 < anneal_start <= 1:
            raise ValueError(
                f"annealing: expected 0 <= fraction <= 1 and 0 < start <= 1, got {anneal_fraction}, {anneal_start}"
            )
        self.gradient = gradient
        self.anneal_fraction, self.anneal_start, self.scale = anneal_fraction, anneal_start, scale

    def training_loss(self, module: TargetTrainingModule, batch: Any) -> Tensor:
        n = int(batch)
        target = module.target
        if self.anneal_fraction > 0:
            beta = annealing_beta(module.progress(), self.anneal_fraction, self.anneal_start)
            module.log("train_beta", beta, batch_size=n)
            if beta < 1:
                target = AnnealedTarget(target, beta, self.scale)
        world, rank = module.world_and_rank()
        result = reverse_kl_loss(module.flow, target, n, self.gradient, world, rank)
        module.log_training(result.loss, n)
        module.log("train_zero_density", float(result.zero_density), reduce_fx="sum", batch_size=n)
        return result.loss


def forward_kl_path_loss(flow: Flow, target: Target, x: Tensor) -> Tensor:
    """Maximum likelihood on target samples `x (n, D)` with the path gradient (Vaitl et al. 2024): the value
    is `mean(-log q(x))`; the gradient drops the score term of `KL(F#p || base)`, `F` the density map:
    `(∇_z log p̃(z) - ∇_z log base(z))ᵀ ∂z/∂θ` at `z = F(x)`, `p̃` the target pulled back to the latent space
    with the parameters held fixed (its score from one sampling-direction pass at `z`)."""
    z, ladj = flow.transform(x)
    log_base = flow.base.log_prob(z)
    log_q = (log_base + ladj).detach()

    def target_log_prob(y: Tensor) -> Tensor:
        return checked_log_prob(target, y, differentiable=True)

    _, score = evaluate(pulled_back(flow, target_log_prob), z, gradient=True)
    assert score is not None
    carried = (score * z).sum(-1) - log_base  # with log_base's own graph: the base's parameters too
    finite = torch.isfinite(log_q)
    rows = torch.where(finite, -log_q + carried - carried.detach(), 0.0)
    return rows.sum() / max(int(finite.sum()), 1)


class ForwardKL(_TargetObjective):
    """Maximum likelihood on `batch` fresh exact samples of the target per step (needs `target.sample`);
    `gradient="path"`: its path-gradient variant (needs a target differentiable in x)."""

    def __init__(self, gradient: Gradient = "reparam") -> None:
        if gradient not in ("reparam", "path"):
            raise ValueError(f"gradient: expected 'reparam' or 'path', got {gradient!r}")
        self.gradient = gradient

    def training_loss(self, module: TargetTrainingModule, batch: Any) -> Tensor:
        n = int(batch)
        sample = getattr(module.target, "sample", None)
        if sample is None:
            raise ValueError(
                f"train.objective maximum_likelihood needs exact samples of the target; {module.target!r} has "
                "no sample(n) (use reverse_kl or reverse_kl_path)"
            )
        reference = next(module.flow.parameters())
        world, rank = module.world_and_rank()
        x = shard(sample(n * world), world, rank).to(device=reference.device, dtype=reference.dtype)
        if self.gradient == "path":
            loss = forward_kl_path_loss(module.flow, module.target, x)
        else:
            loss = -module.flow.log_prob(x).mean()
        module.log_training(loss, n)
        return loss


def sampling_objective(
    name: str, anneal_fraction: float = 0.0, anneal_start: float = 0.01, scale: float = 1.0
) -> Objective:
    """The objective of `train.objective` for a target run (annealing applies to the reverse KLs)."""
    if name in ("reverse_kl", "reverse_kl_path"):
        gradient: Gradient = "path" if name == "reverse_kl_path" else "reparam"
        return ReverseKL(gradient, anneal_fraction, anneal_start, scale)
    if name in ("maximum_likelihood", "maximum_likelihood_path"):
        return ForwardKL("path" if name == "maximum_likelihood_path" else "reparam")
    raise ValueError(
        "train.objective: expected maximum_likelihood, maximum_likelihood_path, reverse_kl or reverse_kl_path, "
        f"got {name!r}"
    )
