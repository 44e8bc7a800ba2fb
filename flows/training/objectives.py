"""Objectives: what a run minimises, and the validation metric that checkpoints and early stopping follow.

An `Objective` computes the training loss of a batch and the validation total of a batch through the
LightningModule's task-specific pieces (`inputs`, `perturb`, `nll`, `validation_nll`); the pipeline reads its
`monitor` to build the checkpoints, the early stopping and the non-finite guard. Maximum likelihood is the
first objective; another (e.g. reverse KL against an unnormalised target, which samples from the flow instead
of reading a batch) is one new class here, with no change to the pipeline.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Optional, Protocol

from torch import Tensor

__all__ = ["MaximumLikelihood", "Objective", "TrainingModule"]


class TrainingModule(Protocol):
    """What an objective uses of the LightningModule (`flows.training.module.FlowModule` and subclasses)."""

    def inputs(self, batch: Any) -> tuple[Tensor, Optional[Tensor]]: ...
    def perturb(self, x: Tensor, progress: float) -> Tensor: ...
    def progress(self) -> float: ...
    def nll(self, x: Tensor, context: Optional[Tensor] = None) -> Tensor: ...
    def validation_nll(self, x: Tensor, context: Optional[Tensor], batch_index: int) -> Tensor: ...
    def log_training(self, loss: Tensor, rows: int) -> None: ...


class Objective(ABC):
    """The loss of a training batch and the per-batch validation total whose mean is logged as `monitor`."""

    #: the validation metric (minimised) that checkpoints, early stopping and the non-finite guard follow
    monitor: str = "val_nll"

    @abstractmethod
    def training_loss(self, module: TrainingModule, batch: Any) -> Tensor:
        """The scalar loss of one training batch (logged by the objective)."""

    @abstractmethod
    def validation_total(self, module: TrainingModule, batch: Any, batch_index: int) -> tuple[Tensor, int]:
        """`(sum of the per-row validation metric, number of rows)` of one validation batch."""


class MaximumLikelihood(Objective):
    """Mean negative log-likelihood of the (perturbed) training batch; `val_nll` on clean validation rows.

    The task's module supplies the rest: for tables, dequantisation and noise augmentation in `perturb`; for
    images, the dequantisation bound inside the model's `log_prob` and `nll` per image.
    """

    monitor = "val_nll"

    def training_loss(self, module: TrainingModule, batch: Any) -> Tensor:
        x, context = module.inputs(batch)
        loss = module.nll(module.perturb(x, module.progress()), context).mean()
        module.log_training(loss, int(x.shape[0]))
        return loss

    def validation_total(self, module: TrainingModule, batch: Any, batch_index: int) -> tuple[Tensor, int]:
        x, context = module.inputs(batch)
        return module.validation_nll(x, context, batch_index).sum(), int(x.shape[0])
