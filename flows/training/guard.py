"""Training guards (Lightning callbacks): stop on a non-finite loss or gradient, resumable random state.

- `NonFiniteGuard` checks the loss before every backward pass, the gradients before every optimiser step and
  `val_nll` after every validation. On a non-finite value it raises `TrainingDivergedError` *before* the
  parameters are updated or a checkpoint is written, so the last checkpoint on disk stays the last good one;
  the message names the step and what to try.
- `RandomStateCheckpoint` stores the torch / numpy / Python random states in every checkpoint and restores
  them on resume, so a resumed run draws the same training noise as an uninterrupted one.

The checks that need no Lightning (checkpoint files, columns) live in `flows.training.safety`, so that
commands which only read checkpoints (`flows score`, `flows sample`) do not import Lightning.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from torch import Tensor

from flows.training.safety import TrainingDivergedError

__all__ = ["ADVICE", "NonFiniteGuard", "RandomStateCheckpoint", "gradient_norm", "safety_callbacks"]

#: what to try when training diverges, in the config's terms
ADVICE = (
    "try a lower learning rate (train.lr), gradient clipping (train.gradient_clip, e.g. 1.0), a learning-rate "
    "warm-up (train.warmup_steps), standardised data (data.standardize: true), dequantisation of discrete "
    "columns (data.discrete_columns, data.categorical_columns; data.dequantize: true for all), or dropping "
    "constant columns"
)


def _last_good_checkpoint(trainer: L.Trainer) -> Optional[str]:
    callback = trainer.checkpoint_callback
    paths = []
    if callback is not None:
        paths = [p for p in (getattr(callback, "last_model_path", ""), callback.best_model_path) if p]
    existing = [p for p in paths if Path(p).is_file()]
    return existing[0] if existing else None


def _describe_checkpoint(checkpoint: Optional[str]) -> str:
    if checkpoint is None:
        return "no checkpoint had been written yet (it diverged before the first validation)"
    return (
        f"the last good checkpoint is kept at {checkpoint} (continue from it with `flows fit ... --resume`)"
    )


class NonFiniteGuard(Callback):
    """Stops training with `TrainingDivergedError` at the first non-finite loss, gradient, parameter or `val_nll`.

    The loss and the gradients are checked together before each optimiser step (one device-to-host sync
    per step): the gradients by their total 2-norm, which is finite exactly when every gradient is (or a
    finite one overflows it: also a divergence), and which the module then clips with
    (`FlowModule.configure_gradient_clipping`), so a step measures its gradients once. The parameters
    are copied before the step and checked after it (a finite gradient times an
    infinite learning rate, or an overflowing update, is caught there): on a non-finite value they are put
    back to their values before the step, so the model never holds the diverged state. `val_nll` is checked
    at the end of each validation (before the checkpoint callbacks, which Lightning runs last), so no
    checkpoint on disk ever holds a diverged state either. With a mixed-precision gradient scaler, whose
    scaled gradients overflow by design (it skips those steps itself), the gradients are not checked.
    """

    def __init__(self, monitor: str = "val_nll") -> None:
        self.monitor = monitor
        self._loss: Optional[Tensor] = None  # the last loss of the current optimiser step (no sync)
        self._losses_finite: Optional[Tensor] = None  # all losses since the last step were finite
        self._parameters: list[Tensor] = []  # the parameters the optimiser is about to update
        self._before_step: list[Tensor] = []  # their values before the step
        self._snapshot_of: tuple[tuple, ...] = ()  # ids, dtypes and shapes of the parameters it was built for

    def _fail(self, trainer: L.Trainer, what: str) -> None:
        epoch, step = trainer.current_epoch, trainer.global_step
        checkpoint = _last_good_checkpoint(trainer)
        raise TrainingDivergedError(
            f"training stopped at optimiser step {step} (epoch {epoch}): {what}. {_describe_checkpoint(checkpoint)}; "
            f"{ADVICE}",
            step=step,
            epoch=epoch,
            what=what,
            checkpoint=checkpoint,
        )

    def on_before_backward(self, trainer: L.Trainer, pl_module: L.LightningModule, loss: Tensor) -> None:
        finite = torch.isfinite(loss.detach()).all()
        self._loss = loss.detach()
        self._losses_finite = finite if self._losses_finite is None else self._losses_finite & finite

    def on_before_optimizer_step(
        self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        losses_finite, self._losses_finite = self._losses_finite, None
        scaled = getattr(trainer.precision_plugin, "scaler", None) is not None
        parameters = [p for group in optimizer.param_groups for p in group["params"]]
        self._snapshot(parameters)
        gradients = [p.grad for p in parameters if p.grad is not None]
        # the gradients' total norm (finite iff every gradient is) and the losses' flag, in one sync
        total = gradient_norm(gradients) if gradients and not scaled else None
        checks = [check for check in (total, losses_finite) if check is not None]
        if not checks:
            return
        dtype = total.dtype if total is not None else torch.float32
        values = torch.stack([check.to(checks[0].device, dtype) for check in checks]).tolist()
        norm = values[0] if total is not None else None
        loss_ok = losses_finite is None or values[-1] == 1.0
        if loss_ok and (norm is None or math.isfinite(norm)):
            if norm is not None and hasattr(pl_module, "step_gradient_norm"):
                pl_module.step_gradient_norm = (trainer.global_step, norm)  # for this step's clipping
            return
        self._parameters = []  # nothing to check after a step that will not happen
        if not loss_ok:
            value = float(self._loss.float().mean()) if self._loss is not None else float("nan")
            self._fail(trainer, f"the training loss is {value}")
        bad = _non_finite_names(pl_module, [p for p in parameters if p.grad is not None], lambda p: p.grad)
        if not bad:
            self._fail(
                trainer, f"the gradients' total norm overflows to {norm} although each gradient is finite"
            )
        self._fail(trainer, f"non-finite gradients in {len(bad)} parameters (first: {bad[:3]})")

    def _snapshot(self, parameters: list[Tensor]) -> None:
        # Rebuilt only when the optimiser's parameters change: by identity, dtype or shape (a parameter can be
        # recast or resized in place, and a copy into a stale buffer would cast or broadcast silently). Three
        # C-level tuples: comparing lists of per-parameter tuples in Python cost more than the copy.
        key = (
            tuple(map(id, parameters)),
            tuple(p.dtype for p in parameters),
            tuple(p.shape for p in parameters),
        )
        if key != self._snapshot_of:
            self._before_step = [torch.empty_like(p, memory_format=torch.preserve_format) for p in parameters]
            self._snapshot_of = key
        with torch.no_grad():
            torch._foreach_copy_(self._before_step, parameters)
        self._parameters = parameters

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        parameters, self._parameters = self._parameters, []
        if not parameters or bool(_all_finite(parameters)):
            return
        bad = _non_finite_names(pl_module, parameters, lambda p: p)
        with torch.no_grad():
            torch._foreach_copy_(parameters, self._before_step)
        self._fail(
            trainer,
            f"the optimiser step made {len(bad)} parameters non-finite (first: {bad[:3]}; they were put back to "
            "their values before the step)",
        )

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        value = trainer.callback_metrics.get(self.monitor)
        if value is not None and not math.isfinite(float(value)):
            self._fail(trainer, f"{self.monitor} is {float(value)} on the validation split")


class RandomStateCheckpoint(Callback):
    """Saves the global random states (torch CPU and CUDA, numpy, Python) with each checkpoint; restores them on resume.

    Lightning restores weights, optimiser, scheduler and loop counters but not the random generators that
    draw dequantisation and mollification noise; with this callback a resumed run continues the same stream.
    """

    def state_dict(self) -> dict[str, Any]:
        # Plain types and tensors only: Lightning resumes with torch.load(weights_only=True).
        kind, keys, position, has_gauss, cached = np.random.get_state()
        state: dict[str, Any] = {
            "torch": torch.get_rng_state(),
            "numpy": [
                str(kind),
                torch.from_numpy(keys.astype(np.int64)),
                int(position),
                int(has_gauss),
                float(cached),
            ],
            "python": random.getstate(),
        }
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if "torch" in state_dict:
            torch.set_rng_state(state_dict["torch"])
        if "numpy" in state_dict:
            kind, keys, position, has_gauss, cached = state_dict["numpy"]
            np.random.set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, cached))
        if "python" in state_dict:
            random.setstate(state_dict["python"])
        if "cuda" in state_dict and torch.cuda.is_available():
            states = state_dict["cuda"]
            if len(states) == torch.cuda.device_count():
                torch.cuda.set_rng_state_all(states)


def _all_finite(tensors: list[Tensor]) -> Tensor:
    """A 0-d bool tensor: every element of every tensor is finite (no host sync).

    One fused pass per device: the check that torch.amp's gradient scaler makes, which multiplies every
    value by 1 (leaving it as it is) and flags any NaN or inf; about 10x cheaper on CPUs than max-abs norms,
    and like them it cannot overflow on large finite values. Parameters are passed as they are: the check
    runs under `torch.no_grad`, so no detached views are needed.
    """
    groups: dict[torch.device, list[Tensor]] = {}
    for tensor in tensors:
        if tensor.numel() > 0:
            groups.setdefault(tensor.device, []).append(tensor)
    if not groups:
        return torch.tensor(True)
    flags = [_non_finite_flag(device, group) for device, group in groups.items()]
    if len(flags) == 1:
        return flags[0].eq(0).all()
    first = flags[0].device
    return torch.cat([flag.to(first) for flag in flags]).eq(0).all()


def gradient_norm(gradients: list[Tensor]) -> Tensor:
    """The 2-norm of all `gradients` together (0-d, on the first one's device; no host sync), as
    `torch.nn.utils.clip_grad_norm_` computes it (one `_foreach_norm` per device and dtype) except that
    half-precision gradients are summed in float32, so that finite ones do not overflow float16's range.
    Non-finite exactly when a gradient is, or when finite ones overflow it."""
    groups: dict[tuple[torch.device, torch.dtype], list[Tensor]] = {}
    for gradient in gradients:
        groups.setdefault((gradient.device, gradient.dtype), []).append(gradient)
    first = gradients[0].device
    norms = []
    for (_, dtype), group in groups.items():
        wide = torch.promote_types(dtype, torch.float32)
        try:
            parts = torch._foreach_norm(group, 2, dtype=wide)
        except TypeError:  # a torch whose _foreach_norm takes no dtype
            parts = [torch.linalg.vector_norm(g, dtype=wide) for g in group]
        norms.append(torch.linalg.vector_norm(torch.stack(parts)).to(first))
    return norms[0] if len(norms) == 1 else torch.linalg.vector_norm(torch.stack(norms))


def _non_finite_flag(device: torch.device, group: list[Tensor]) -> Tensor:
    """`(1,)`: 0 where every element of `group` (tensors on `device`) is finite, else nonzero."""
    found = torch.zeros(1, device=device)
    with torch.no_grad():
        try:
            torch._amp_foreach_non_finite_check_and_unscale_(group, found, torch.ones(1, device=device))
        except (AttributeError, NotImplementedError, RuntimeError):  # a torch without this kernel here
            finite = torch.stack([torch.isfinite(norm) for norm in torch._foreach_norm(group, float("inf"))])
            found = (~finite.all()).float().reshape(1)
    return found


def _non_finite_names(
    module: torch.nn.Module, parameters: list[Tensor], value: Callable[[Tensor], Tensor]
) -> list[str]:
    names = {id(p): n for n, p in module.named_parameters()}
    return [names.get(id(p), "?") for p in parameters if not bool(torch.isfinite(value(p)).all())]


def safety_callbacks(monitor: str = "val_nll") -> list[Callback]:
    """The callbacks every flows training run gets: `NonFiniteGuard` (on `monitor`) and `RandomStateCheckpoint`."""
    return [NonFiniteGuard(monitor), RandomStateCheckpoint()]
