"""Image runs' Lightning modules: the data module of integer images and labels, and the `FlowModule` of a
`DequantizedFlow` (`tasks.image` builds them; the rest of image runs is in `image_data`, without Lightning)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Optional

import lightning as L
import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, TensorDataset

from flows.datasets.images import ImageSplits
from flows.dequantization import DequantizedFlow, bits_per_dim
from flows.training.data import GlobalBatchSampler, ResumableBatches
from flows.training.images import one_hot
from flows.training.module import FlowModule
from flows.training.objectives import Objective

__all__ = ["ImageDataModule", "ImageFlowModule"]


def _compact(images: np.ndarray) -> Tensor:
    """Integer images as uint8 (levels <= 256) or int16 tensors, to keep large datasets small."""
    dtype = torch.uint8 if images.max(initial=0) < 256 else torch.int16
    return torch.as_tensor(images).to(dtype)


class ImageDataModule(ResumableBatches, L.LightningDataModule):
    """Loaders of `(integer images, labels)` batches; training batches from a `GlobalBatchSampler`."""

    def __init__(
        self, splits: ImageSplits, batch_size: int, eval_batch_size: int, shuffle: bool, seed: int
    ) -> None:
        super().__init__()
        self.tensors = {
            "train": (_compact(splits.train), torch.as_tensor(splits.train_labels)),
            "val": (_compact(splits.val), torch.as_tensor(splits.val_labels)),
            "test": (_compact(splits.test), torch.as_tensor(splits.test_labels)),
        }
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.shuffle = shuffle
        self.seed = seed

    def train_dataloader(self) -> DataLoader:
        trainer = getattr(self, "trainer", None)
        rank, world = (int(trainer.global_rank), int(trainer.world_size)) if trainer is not None else (0, 1)
        images, labels = self.tensors["train"]
        sampler = GlobalBatchSampler(images.shape[0], self.batch_size, self.shuffle, self.seed, rank, world)
        return DataLoader(
            TensorDataset(images, labels), sampler=self._training_sampler(sampler), batch_size=None
        )

    def _eval_loader(self, name: str) -> DataLoader:
        images, labels = self.tensors[name]
        n = images.shape[0]
        batches = [
            list(range(i, min(i + self.eval_batch_size, n))) for i in range(0, n, self.eval_batch_size)
        ]
        return DataLoader(TensorDataset(images, labels), sampler=batches, batch_size=None)

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader("test")


class ImageFlowModule(FlowModule):
    """`FlowModule` for a `DequantizedFlow`: batches are `(integer images, labels)`, losses are the bound.

    Logs `train_nll`, `train_bpd`, `val_nll` (the early-stopping monitor) and `val_bpd`; nats per image and
    bits per dimension of the discrete data. Validation draws its dequantisation noise from a generator
    seeded by `validation_seed` and the batch index, the same at every validation.
    """

    def __init__(
        self,
        model: DequantizedFlow,
        train_config: Any,
        num_classes: int = 0,
        eval_samples: int = 1,
        hparams: Optional[dict[str, Any]] = None,
        validation_seed: int = 0,
        objective: Optional[Objective] = None,
        class_dropout: float = 0.0,
    ) -> None:
        super().__init__(model, train_config, hparams=hparams, objective=objective)
        self.validation_seed = int(validation_seed)
        self.num_classes = int(num_classes)
        self.class_dropout = float(class_dropout)
        self.eval_samples = int(eval_samples)
        self.num_dims = model.num_dims

    def inputs(self, batch: Sequence[Tensor]) -> tuple[Tensor, Optional[Tensor]]:
        """`(integer images, labels)` as `(images, one-hot context or None)`; in training, `class_dropout` of the
        labels become the null context (zeros), chosen by the seeded per-step noise stream."""
        images, labels = batch
        if not self.num_classes:
            return images, None
        context = one_hot(labels, self.num_classes, self.dtype)
        if self.training and self.class_dropout > 0:
            keep = self._noise(context[:, :1], 3, "uniform") >= self.class_dropout
            context = context * keep
        return images, context

    def perturb(self, x: Tensor, progress: float) -> Tensor:
        return x  # the dequantisation noise is part of the model's bound

    def nll(self, x: Tensor, context: Optional[Tensor] = None, num_samples: int = 1) -> Tensor:  # type: ignore[override]
        """Per-image NLL bound `(batch,)`; in training with `train.noise_std`, the noise-augmented objective."""
        noise_std = self.train_config.noise_std if self.training else 0.0
        return -self.log_density(x, context, num_samples=num_samples, noise_std=noise_std)

    def log_training(self, loss: Tensor, rows: int) -> None:
        super().log_training(loss, rows)
        if self.training_log_due():
            self.log("train_bpd", bits_per_dim(loss.detach(), self.num_dims), batch_size=rows)

    def validation_nll(self, x: Tensor, context: Optional[Tensor], batch_index: int) -> Tensor:
        # The same noise at every validation (common random numbers): val_nll changes only with the model.
        devices = [x.device] if x.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(self.validation_seed + batch_index)
            return self.nll(x, context, self.eval_samples)

    def log_validation(self, mean_nll: Tensor) -> None:
        super().log_validation(mean_nll)
        self.log("val_bpd", bits_per_dim(mean_nll, self.num_dims), prog_bar=True, sync_dist=False)
