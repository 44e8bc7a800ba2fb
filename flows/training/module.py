"""`FlowModule`: the LightningModule that trains any `flows.Flow` by maximum likelihood.

Loss: the mean negative log-likelihood of the batch. Optimiser: AdamW with linear warm-up and cosine decay
(stepped every optimiser step). Regularisers applied to training batches only, in standardised units:
uniform dequantisation noise, Gaussian data mollification annealed to zero (Tran et al. 2023, "One-Line-of-Code
Data Mollification Improves Optimization of Likelihood-based Generative Models"), constant noise augmentation.
Validation logs `val_nll`, the mean NLL over the whole validation split (every rank sees all of it, so
early stopping decides the same on every rank).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Optional, Union

import lightning as L
import numpy as np
import torch
from lightning.pytorch.plugins.precision import Precision
from lightning.pytorch.strategies import DDPStrategy, SingleDeviceStrategy
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from flows.column_dequantization import ColumnDequantizedFlow
from flows.dequantization import dequantize
from flows.flow import Flow
from flows.training.compile_policy import AtenCallCounter, CompilePolicy
from flows.training.config import MollificationConfig, TrainConfig
from flows.training.data import GlobalBatchSampler, ResumableBatches
from flows.training.models import preprocessing_of
from flows.training.objectives import MaximumLikelihood, Objective

__all__ = ["FlowModule", "TableDataModule", "mollification_sigma", "warmup_cosine_factor"]


def warmup_cosine_factor(
    step: int, warmup_steps: int, total_steps: int, final_fraction: float = 0.0
) -> float:
    """Learning-rate multiplier at optimiser step `step` (0-based).

    Linear warm-up `(step + 1) / warmup_steps` for the first `warmup_steps` steps, then a cosine from 1 down
    to `final_fraction` at `total_steps`; constant `final_fraction` afterwards.
    """
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    decay_steps = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    return final_fraction + (1.0 - final_fraction) * 0.5 * (1.0 + math.cos(math.pi * progress))


def mollification_sigma(progress: float, config: MollificationConfig) -> float:
    """Noise std of Gaussian mollification at training progress `progress` in [0, 1].

    The mollification time `t = max(0, 1 - progress / fraction)` goes from 1 to 0 over the first `fraction`
    of training; `sigma_t^2 = sigma^2 * s(t)` with `s(t) = t` ("linear") or `(1 - cos(pi t)) / 2`
    ("cosine"). Zero when `fraction == 0` or `progress >= fraction`.
    """
    if config.fraction <= 0.0:
        return 0.0
    t = max(0.0, 1.0 - progress / config.fraction)
    shape = t if config.schedule == "linear" else 0.5 * (1.0 - math.cos(math.pi * t))
    return config.sigma * math.sqrt(shape)


class FlowModule(L.LightningModule):
    """Trains `flow` (a `flows.Flow` whose `log_prob` takes rows in data units).

    The training noise is added in the units of the column bounds and standardisation folded into the flow
    (`flows.training.models.preprocessing_of`; data units without them), so noisy rows stay on the support.
    `dequantize` adds U[0, 1) noise (data units) to training batches: to every column (True) or to the
    columns flagged in a `(D,)` sequence of bools. `hparams` carries what `flows.training.checkpoints` needs to rebuild
    the model. `seed` seeds the training noise, which depends only on (seed, step, row position in the
    global batch). Checkpoints of earlier versions, which also held the standardisation as `data_mean` and
    `data_std`, load unchanged (`_drop_standardization_buffers`).
    """

    def __init__(
        self,
        flow: Flow,
        train_config: TrainConfig,
        dequantize: Union[bool, Sequence[bool]] = False,
        hparams: Optional[dict[str, Any]] = None,
        seed: int = 0,
        objective: Optional[Objective] = None,
    ) -> None:
        super().__init__()
        self.flow = flow
        self.objective = objective if objective is not None else MaximumLikelihood()
        self.seed = int(seed)
        self.train_config = train_config
        self.dequantize = dequantize if isinstance(dequantize, bool) else [bool(v) for v in dequantize]
        self.register_load_state_dict_pre_hook(_drop_standardization_buffers)
        self.record: dict[str, Any] = dict(hparams or {})
        self._val_sum: Optional[Tensor] = None
        self._val_count = 0
        #: eager or compiled log density (`train.compile`; compiled code is not saved)
        self.compile_policy = CompilePolicy(train_config.compile)
        self._call_counter: Optional[AtenCallCounter] = None
        #: `(optimiser step, total 2-norm of its gradients)`, measured by `NonFiniteGuard` before clipping
        self.step_gradient_norm: Optional[tuple[int, float]] = None

    def log_density(self, x: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        """`flow.log_prob(x, ...)`, through `torch.compile` where `train.compile` (`CompilePolicy`) says so."""
        return self.compile_policy.log_density(self.flow.log_prob, x, *args, **kwargs)

    def on_train_batch_start(self, batch: Any, batch_index: int) -> None:
        """Time the step for `train.compile: auto` (and count its ATen calls once, in a warm-up step)."""
        if not self.compile_policy.timing:
            return
        if self.compile_policy.counting_due():
            self._call_counter = AtenCallCounter().__enter__()
        self.compile_policy.step_started()

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_index: int) -> None:
        policy = self.compile_policy
        calls = self.stop_counting()
        if calls is not None:
            policy.record_calls(calls)
        if not policy.timing:  # (the planned steps left are needed only while `auto` times)
            return
        chose = policy.step_ended(max(0, self._total_steps() - self.global_step), self.device)
        if chose and self._world_and_rank()[0] > 1:  # every rank takes rank 0's choice (timings differ)
            policy.state = self.trainer.strategy.broadcast(policy.state, src=0)

    def on_train_start(self) -> None:
        self.step_gradient_norm = None  # a norm left by an interrupted fit is not this fit's

    def on_train_end(self) -> None:
        self.stop_counting()

    def stop_counting(self) -> Optional[int]:
        """Leave the ATen call counter if a step entered it (also after a step that raised); its count."""
        counter, self._call_counter = self._call_counter, None
        if counter is None:
            return None
        counter.__exit__(None, None, None)
        return counter.calls

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Store the model record (config, features, columns) so that the checkpoint rebuilds the flow."""
        checkpoint["hyper_parameters"] = self.record

    # ---------------------------------------------------------------- loss and noise

    def progress(self) -> float:
        """Fraction of the planned optimiser steps done, in [0, 1]."""
        total = self._total_steps()
        return min(1.0, self.global_step / total) if total > 0 else 1.0

    def _total_steps(self) -> int:
        try:
            return int(self.trainer.estimated_stepping_batches)
        except (RuntimeError, AttributeError, OverflowError):  # (OverflowError: a Trainer without a limit)
            return 0

    def _noise(self, x: Tensor, stream: int, kind: str) -> Tensor:
        """Noise like `x (b, D)` that is a function of (seed, step, position in the global batch) only.

        Rank `r` of `W` holds rows `r, r + W, ...` of the global batch (see `GlobalBatchSampler`), so the
        noise is drawn on the CPU for the whole configured global batch from a generator seeded by
        (seed, step, stream), and each rank takes its rows: the training noise, like the batches, does not
        depend on the number of devices.
        """
        world, rank = self._world_and_rank()
        global_rows = max(self.train_config.batch_size * world, rank + world * (x.shape[0] - 1) + 1)
        generator = torch.Generator().manual_seed((self.seed * 1_000_003 + self.global_step) * 8 + stream)
        shape = (global_rows,) + tuple(x.shape[1:])
        if kind == "uniform":
            noise = torch.rand(shape, generator=generator, dtype=torch.float32)
        else:
            noise = torch.randn(shape, generator=generator, dtype=torch.float32)
        return noise[rank : rank + world * x.shape[0] : world].to(device=x.device, dtype=x.dtype)

    def _world_and_rank(self) -> tuple[int, int]:
        trainer = self._trainer
        if trainer is None:
            return 1, 0
        return int(trainer.world_size), int(trainer.global_rank)

    def perturb(self, x: Tensor, progress: float) -> Tensor:
        """Training-time noise: dequantisation, then mollification and noise augmentation (standardised units)."""
        if self.dequantize is True:
            x = dequantize(x, self._noise(x, 0, "uniform"))
        elif self.dequantize and any(self.dequantize):
            mask = torch.as_tensor(self.dequantize, dtype=x.dtype, device=x.device)
            x = dequantize(x, self._noise(x, 0, "uniform") * mask)
        config = self.train_config
        sigma = mollification_sigma(progress, config.mollification)
        if sigma > 0.0 or config.noise_std > 0.0:
            standardizer = preprocessing_of(self.flow)
            z = x if standardizer is None else standardizer(x)[0]
            if sigma > 0.0:
                z = math.sqrt(1.0 - sigma**2) * z + sigma * self._noise(z, 1, "normal")
            if config.noise_std > 0.0:
                z = z + config.noise_std * self._noise(z, 2, "normal")
            x = z if standardizer is None else standardizer.inverse(z)[0]
        return x

    def inputs(self, batch: Sequence[Tensor]) -> tuple[Tensor, Optional[Tensor]]:
        """A batch as `(x (b, D), context (b, C) or None)`: tables yield `(x,)` or `(x, context)`."""
        return batch[0], (batch[1] if len(batch) > 1 else None)

    def nll(self, x: Tensor, context: Optional[Tensor] = None) -> Tensor:
        """Per-row negative log-likelihood `(batch,)` in data units."""
        return -self.log_density(x, context)

    def validation_nll(self, x: Tensor, context: Optional[Tensor], batch_index: int) -> Tensor:
        """Per-row NLL `(batch,)` of a validation batch (tables: exact, no noise). A flow that draws noise in
        `log_prob` (learned dequantisation) gets the same draws for a batch at every validation (torch's
        generator forked and seeded by the seed and the batch index), so early stopping compares like with
        like."""
        if not isinstance(self.flow, ColumnDequantizedFlow):
            return self.nll(x, context)
        with torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []):
            torch.manual_seed(self.seed * 1_000_003 + batch_index)
            return self.nll(x, context)

    def training_log_due(self) -> bool:
        """Whether this training step's metrics reach a logger or the progress bar. Lightning writes step metrics
        every `trainer.log_every_n_steps` steps (and the progress bar shows the latest), so the other steps skip
        `self.log`, which costs milliseconds (a small flow's whole step); so do runs with neither."""
        trainer = self._trainer
        if trainer is None:
            return True
        if not trainer.loggers and trainer.progress_bar_callback is None:
            return False
        return bool(trainer._logger_connector.should_update_logs)

    def log_training(self, loss: Tensor, rows: int) -> None:
        """Log a training batch's loss as `train_nll` on the steps that are written (`training_log_due`)."""
        if self.training_log_due():
            self.log("train_nll", loss, prog_bar=True, batch_size=rows)

    def training_step(self, batch: Sequence[Tensor], batch_index: int) -> Tensor:
        return self.objective.training_loss(self, batch)

    def on_validation_epoch_start(self) -> None:
        self._val_sum = None
        self._val_count = 0

    def validation_step(self, batch: Sequence[Tensor], batch_index: int) -> None:
        self.add_validation(*self.objective.validation_total(self, batch, batch_index))

    def add_validation(self, total_nll: Tensor, rows: int) -> None:
        """Accumulate one validation batch: the sum of its per-row NLLs and its row count."""
        self._val_sum = total_nll if self._val_sum is None else self._val_sum + total_nll
        self._val_count += rows

    def on_validation_epoch_end(self) -> None:
        if self._val_sum is None or self._val_count == 0:
            return
        self.log_validation(self._val_sum / self._val_count)

    def log_validation(self, mean_value: Tensor) -> None:
        """Log the validation's mean as the objective's monitor (the early-stopping and checkpoint metric)."""
        self.log(self.objective.monitor, mean_value, prog_bar=True, sync_dist=False)

    # ---------------------------------------------------------------- optimisation

    def configure_gradient_clipping(
        self,
        optimizer: torch.optim.Optimizer,
        gradient_clip_val: Optional[Union[int, float]] = None,
        gradient_clip_algorithm: Optional[str] = None,
    ) -> None:
        """Clip by norm with the norm `NonFiniteGuard` measured for this very step (one pass over the
        gradients, not two) where Lightning would clip all of this process's gradients with
        `torch.nn.utils.clip_grad_norm_` (one device or DDP, a precision plugin without its own clipping);
        anything else is Lightning's clipping. The same coefficient, `max / (norm + 1e-6)` where below 1; for
        half-precision gradients the norm is summed in float32, where `clip_grad_norm_` sums in their own
        dtype (float16 overflows to inf there, zeroing the step)."""
        measured, self.step_gradient_norm = self.step_gradient_norm, None
        norm = measured[1] if measured is not None and measured[0] == self.trainer.global_step else None
        if (
            norm is None
            or not gradient_clip_val
            or gradient_clip_algorithm != "norm"
            or not self._plain_clipping()
        ):
            self.clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)
            return
        coefficient = float(gradient_clip_val) / (norm + 1e-6)  # clip_grad_norm_'s coefficient
        if coefficient < 1.0:
            gradients = [
                p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None
            ]
            torch._foreach_mul_(gradients, coefficient)

    def _plain_clipping(self) -> bool:
        """Whether the trainer clips as `torch.nn.utils.clip_grad_norm_` over this process's full gradients."""
        trainer = self.trainer
        return (
            type(trainer.strategy) in (SingleDeviceStrategy, DDPStrategy)
            and type(trainer.precision_plugin).clip_grad_by_norm is Precision.clip_grad_by_norm
        )

    def configure_optimizers(self) -> dict[str, Any]:
        config = self.train_config
        parameters = list(self.flow.parameters())
        optimizer = torch.optim.AdamW(
            parameters,
            lr=config.lr,
            weight_decay=config.weight_decay,
            betas=tuple(config.betas),
            fused=fused_optimizer_supported(parameters),
        )
        total = max(1, self._total_steps())
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer,
            lambda step: warmup_cosine_factor(step, config.warmup_steps, total, config.final_lr_fraction),
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def fused_optimizer_supported(parameters: Sequence[Tensor]) -> bool:
    """Whether AdamW's fused implementation (one kernel over all parameters) applies: floating parameters on
    the CPU or CUDA. Per-parameter AdamW costs ~100 small ops per tensor each step; an NSF of 64 tensors
    spent 7.6 ms of a ~40 ms CPU step in it, fused 0.4 ms (same arithmetic, another summation order)."""
    return bool(parameters) and all(
        p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in parameters
    )


def _drop_standardization_buffers(
    module: nn.Module, state_dict: dict[str, Tensor], prefix: str, *args: object
) -> None:
    """Load-state-dict pre-hook: drop the `data_mean`/`data_std` buffers of older checkpoints (the flow's
    standardising bijector holds the same statistics)."""
    for name in ("data_mean", "data_std"):
        state_dict.pop(prefix + name, None)


class TableDataModule(ResumableBatches, L.LightningDataModule):
    """Loaders over float tensors of the three splits (data units).

    Training batches come from a `GlobalBatchSampler` (one shared permutation, cut per rank), so results do
    not depend on how many devices share a global batch. Validation and test loaders are not distributed.
    """

    def __init__(
        self,
        train: np.ndarray,
        val: np.ndarray,
        test: np.ndarray,
        batch_size: int,
        eval_batch_size: int,
        shuffle: bool,
        seed: int,
        num_workers: int = 0,
        context: Optional[dict[str, np.ndarray]] = None,
    ) -> None:
        super().__init__()
        self.tensors = {
            name: torch.as_tensor(array, dtype=torch.float32)
            for name, array in (("train", train), ("val", val), ("test", test))
        }
        #: conditional data: the context tables `(n, k)` of "train", "val" and "test"; batches are (x, context)
        self.context_tensors = (
            None
            if context is None
            else {k: torch.as_tensor(v, dtype=torch.float32) for k, v in context.items()}
        )
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.num_workers = num_workers

    def _rank_and_world(self) -> tuple[int, int]:
        trainer = getattr(self, "trainer", None)
        if trainer is None:
            return 0, 1
        return int(trainer.global_rank), int(trainer.world_size)

    def train_dataloader(self) -> DataLoader:
        rank, world = self._rank_and_world()
        sampler = GlobalBatchSampler(
            self.tensors["train"].shape[0],
            self.batch_size,
            self.shuffle,
            self.seed,
            rank=rank,
            world_size=world,
        )
        return DataLoader(
            self._dataset("train"),
            sampler=self._training_sampler(sampler),
            batch_size=None,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def _eval_loader(self, name: str) -> DataLoader:
        tensor = self.tensors[name]
        batches = [
            list(range(i, min(i + self.eval_batch_size, tensor.shape[0])))
            for i in range(0, tensor.shape[0], self.eval_batch_size)
        ]
        return DataLoader(self._dataset(name), sampler=batches, batch_size=None, num_workers=0)

    def _dataset(self, name: str) -> TensorDataset:
        """Rows `(x,)` of split `name`, or `(x, context)` with a context."""
        if self.context_tensors is None:
            return TensorDataset(self.tensors[name])
        return TensorDataset(self.tensors[name], self.context_tensors[name])

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader("test")
