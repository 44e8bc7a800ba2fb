"""`SamplingModule` and `SamplingDataModule`: training a flow against an unnormalised target (no dataset).

Each training "batch" is the number of flow samples of one step; each validation batch the number of
fixed-seed samples of one chunk. Validation logs the objective's `val_reverse_kl` and, from the same log
weights, `val_ess` (Kish, normalised; in the progress bar), `val_log_z` and `val_zero_density`.
"""

from __future__ import annotations

from typing import Any, Optional

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import DataLoader

from flows.diagnostics import effective_sample_size, log_normalizer
from flows.flow import Flow
from flows.targets.base import Target
from flows.training.config import TrainConfig
from flows.training.module import FlowModule
from flows.training.objectives import Objective
from flows.training.sampling_objectives import seeded

__all__ = ["SamplingDataModule", "SamplingModule"]

#: the stream of the flow's training samples in the (seed, step, stream) seeding (FlowModule._noise uses 0-2)
SAMPLE_STREAM = 3


class SamplingModule(FlowModule):
    """Trains `flow` to sample `target` with a sampling objective (`flows.training.sampling_objectives`).

    The target is held as a plain attribute (never part of the state dict).
    """

    def __init__(
        self,
        flow: Flow,
        train_config: TrainConfig,
        target: Target,
        hparams: Optional[dict[str, Any]] = None,
        seed: int = 0,
        objective: Optional[Objective] = None,
    ) -> None:
        super().__init__(
            flow, train_config, dequantize=False, hparams=hparams, seed=seed, objective=objective
        )
        object.__setattr__(self, "target", target)  # not a submodule, even when the target is an nn.Module
        self._log_weights: list[Tensor] = []

    def training_step(self, batch: Any, batch_index: int) -> Tensor:
        """One step with the global RNG seeded by (seed, step): the flow's samples of a step do not depend
        on what ran before it, so a resumed run draws what the uninterrupted one drew (bit-identical on CPU).
        Every rank draws the same global batch of `batch_size * world` base samples and keeps its rows
        (`sampling_objectives.shard`), as the data runs do with their rows: `W` processes of batch `B` take
        the steps of one process of batch `B * W` (DDP averages the ranks' gradients)."""
        step_seed = (self.seed * 1_000_003 + self.global_step) * 8 + SAMPLE_STREAM
        with seeded(step_seed, self.device):
            return super().training_step(batch, batch_index)

    def world_and_rank(self) -> tuple[int, int]:
        """`(number of processes, this process's rank)`; `(1, 0)` outside a trainer."""
        return self._world_and_rank()

    def log_training(self, loss: Tensor, rows: int) -> None:
        """Log a training step's loss as `train_loss` on the steps that are written (`training_log_due`)."""
        if self.training_log_due():
            self.log("train_loss", loss, prog_bar=True, batch_size=rows)

    def add_log_weights(self, log_w: Tensor) -> None:
        """Keep a validation chunk's log weights `(n,)` for the ESS and log Z of the whole validation."""
        self._log_weights.append(log_w.detach().double().cpu())

    def on_validation_epoch_start(self) -> None:
        super().on_validation_epoch_start()
        self._log_weights = []

    def on_validation_epoch_end(self) -> None:
        super().on_validation_epoch_end()
        if not self._log_weights:
            return
        log_w = torch.cat(self._log_weights)
        self._log_weights = []
        estimate, _ = log_normalizer(log_w)
        self.log("val_ess", effective_sample_size(log_w), prog_bar=True, sync_dist=False)
        self.log("val_log_z", estimate, sync_dist=False)
        self.log("val_zero_density", float((~torch.isfinite(log_w)).sum()), sync_dist=False)


class SamplingDataModule(L.LightningDataModule):
    """`steps_per_epoch` training batches of `batch_size` (a sample count each) and the validation sample
    counts (`validation_samples` cut into chunks of `eval_batch_size`)."""

    def __init__(
        self, steps_per_epoch: int, batch_size: int, validation_samples: int, eval_batch_size: int
    ) -> None:
        super().__init__()
        self.steps_per_epoch = int(steps_per_epoch)
        self.batch_size = int(batch_size)
        self.chunks = [
            min(eval_batch_size, validation_samples - start)
            for start in range(0, validation_samples, eval_batch_size)
        ]

    def train_dataloader(self) -> DataLoader:
        return DataLoader([torch.tensor(self.batch_size)] * self.steps_per_epoch, batch_size=None)

    def val_dataloader(self) -> DataLoader:
        return DataLoader([torch.tensor(c) for c in self.chunks], batch_size=None)
