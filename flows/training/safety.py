"""Training safety: stop on a non-finite loss or gradient, resumable random state, checks of data and checkpoints.

- `NonFiniteGuard` (a Lightning callback) checks the loss before every backward pass, the gradients before
  every optimiser step and `val_nll` after every validation. On a non-finite value it raises
  `TrainingDivergedError` *before* the parameters are updated or a checkpoint is written, so the last
  checkpoint on disk stays the last good one; the message names the step and what to try.
- `RandomStateCheckpoint` stores the torch / numpy / Python random states in every checkpoint and restores
  them on resume, so a resumed run draws the same training noise as an uninterrupted one.
- `column_warnings` finds constant and discrete (heavily repeated) columns before training.
- `read_checkpoint` loads a checkpoint file with a clear error for a missing, truncated or foreign file;
  `resume_checkpoint` finds and checks the checkpoint that `flows fit --resume` continues from.
"""

from __future__ import annotations

import math
import pickle
import random
import re
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Optional, Union

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from torch import Tensor

__all__ = [
    "NonFiniteGuard",
    "RandomStateCheckpoint",
    "TrainingDivergedError",
    "column_warnings",
    "read_checkpoint",
    "resume_checkpoint",
    "safety_callbacks",
    "warn_about_columns",
]

#: what to try when training diverges, in the config's terms
ADVICE = (
    "try a lower learning rate (train.lr), gradient clipping (train.gradient_clip, e.g. 1.0), a learning-rate "
    "warm-up (train.warmup_steps), standardised data (data.standardize: true), dequantisation of discrete "
    "columns (data.discrete_columns, data.categorical_columns; data.dequantize: true for all), or dropping "
    "constant columns"
)


class TrainingDivergedError(RuntimeError):
    """Training produced a non-finite loss, gradient or validation NLL; the message says where and what to try.

    Attributes: `step` and `epoch` where it stopped, `what` went non-finite, and `checkpoint`, the path of
    the last good checkpoint on disk (None if none had been written).
    """

    def __init__(
        self,
        message: str,
        step: Optional[int] = None,
        epoch: Optional[int] = None,
        what: str = "",
        checkpoint: Optional[str] = None,
    ) -> None:
        super().__init__(message)
        self.step = step
        self.epoch = epoch
        self.what = what
        self.checkpoint = checkpoint


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
    per step). The parameters are copied before the step and checked after it (a finite gradient times an
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
        checks = [] if losses_finite is None else [losses_finite]
        if gradients and not scaled:  # a NaN or inf anywhere makes the norm of the norms non-finite
            checks.append(_all_finite(gradients))
        if not checks or bool(torch.stack(checks).all()):
            return
        self._parameters = []  # nothing to check after a step that will not happen
        if losses_finite is not None and not bool(losses_finite):
            value = float(self._loss.float().mean()) if self._loss is not None else float("nan")
            self._fail(trainer, f"the training loss is {value}")
        bad = _non_finite_names(pl_module, [p for p in parameters if p.grad is not None], lambda p: p.grad)
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


# ----------------------------------------------------------------------------------------------------------
# Data checks


def column_warnings(
    train: np.ndarray,
    columns: Sequence[str],
    dequantized: Union[bool, Sequence[bool]],
    repeated_fraction: float = 0.5,
) -> list[str]:
    """Warnings about columns of `train (n, D)` that make the likelihood unbounded.

    A constant column has zero variance: a continuous density can concentrate on it without limit. A column
    of integers, or one whose most frequent value covers at least `repeated_fraction` of the rows, is
    (partly) discrete: without dequantisation the same happens on its repeated values. `dequantized`: True
    when every column is dequantised, or a `(D,)` flag per column (flagged columns are not warned about).
    """
    messages: list[str] = []
    train = train[:100_000]  # the training split is shuffled: its first rows are a fair sample
    rows = train.shape[0]
    flags = (
        [dequantized] * train.shape[1] if isinstance(dequantized, bool) else [bool(v) for v in dequantized]
    )
    constant = [str(columns[j]) for j in range(train.shape[1]) if np.all(train[:, j] == train[0, j])]
    if constant:
        messages.append(
            f"constant columns {constant} (zero variance): their log-likelihood grows without bound as training "
            "proceeds; drop them (a constant carries no density information)"
        )
    if all(flags) or rows < 2:
        return messages
    discrete = []
    for j in range(train.shape[1]):
        column = train[:, j]
        if str(columns[j]) in constant or flags[j]:
            continue
        _, counts = np.unique(column, return_counts=True)
        if np.all(column == np.round(column)) or counts.max() >= repeated_fraction * rows:
            discrete.append(f"{columns[j]} ({counts.size} distinct values)")
    if discrete:
        messages.append(
            f"discrete or heavily repeated columns {discrete}: a continuous density can put unbounded mass on "
            "repeated values; declare integer columns discrete (discrete_columns=[...], data.discrete_columns; "
            "dequantization='variational' / data.dequantization: variational learns their noise, a tighter "
            "bound) and category codes or labels categorical (categorical_columns=[...], "
            "data.categorical_columns: argmax dequantisation, no order among the categories) to dequantise "
            "them, or dequantize=True (data.dequantize: true) for every column"
        )
    return messages


def warn_about_columns(
    train: np.ndarray, columns: Sequence[str], dequantized: Union[bool, Sequence[bool]]
) -> list[str]:
    """Emit `column_warnings` as `UserWarning`s; returns them."""
    messages = column_warnings(train, columns, dequantized)
    for message in messages:
        warnings.warn(message, UserWarning, stacklevel=3)
    return messages


# ----------------------------------------------------------------------------------------------------------
# Checkpoint files


def read_checkpoint(path: Union[str, Path], map_location: Union[str, torch.device] = "cpu") -> dict[str, Any]:
    """Load a checkpoint file as a mapping; ValueError for a truncated, corrupt or non-checkpoint file.

    The file must hold a mapping with a `state_dict` (a Lightning checkpoint or a `DensityEstimator` file).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if not path.is_file():
        raise ValueError(f"checkpoint path {path} is not a file")
    size = path.stat().st_size
    try:
        # Tensors and plain data only: unpickling anything else could run code from the file.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's note about the pickle protocol of foreign files
            payload = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        text = str(error)
        found = re.search(r"Unsupported global: GLOBAL (\S+)", text)
        if found:
            raise ValueError(
                f"refusing to load {path}: expected a flows checkpoint of tensors and plain data, got a file that "
                f"needs other objects (it asks for {found.group(1)}); it may be unsafe, and nothing in it was run"
            ) from None
        tail = text.split("WeightsUnpickler error:", 1)[-1]
        detail = next((line.strip() for line in tail.splitlines() if line.strip()), "no detail")
        raise ValueError(
            f"{path} ({size} bytes) is not a readable checkpoint: truncated or corrupted, or not a torch file "
            f"({detail[:200]}); nothing in it was run"
        ) from None
    except Exception as error:  # truncated zip, not a torch file at all
        raise ValueError(
            f"{path} ({size} bytes) is not a readable checkpoint: truncated or corrupted "
            f"({type(error).__name__}: {str(error).splitlines()[0][:200] if str(error) else 'no detail'})"
        ) from error
    if not isinstance(payload, Mapping) or "state_dict" not in payload:
        kind = type(payload).__name__
        raise ValueError(
            f"{path} is not a flows checkpoint: expected a mapping with a state_dict, got {kind}"
        )
    return dict(payload)


def resume_checkpoint(run_dir: Path, model: Mapping[str, Any]) -> Optional[Path]:
    """`run_dir/checkpoints/last.ckpt` when it exists, checked to hold the same `model` section; else None."""
    path = Path(run_dir) / "checkpoints" / "last.ckpt"
    if not path.exists():
        return None
    payload = read_checkpoint(path)
    record = payload.get("hyper_parameters") or {}
    saved = (record.get("config") or {}).get("model") if isinstance(record, Mapping) else None
    if saved is None:
        raise ValueError(f"{path} was not written by `flows fit` (no model record); cannot resume from it")
    if dict(saved) != dict(model):
        raise ValueError(
            f"cannot resume from {path}: it was trained with model {dict(saved)}, the config has {dict(model)}"
        )
    return path
