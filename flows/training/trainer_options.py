"""The config's `trainer` section: keyword arguments of `lightning.Trainer`, checked against its signature.

Separate from `trainer.py` so that building a `DensityEstimator` (or loading one to score rows) with an empty
section does not import Lightning."""

from __future__ import annotations

import contextlib
import inspect
import typing
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from flows.training.config import ConfigError, check_value, unknown_key_error

if TYPE_CHECKING:
    import torch

__all__ = [
    "RESERVED_TRAINER_KEYS",
    "SIXTEEN_BIT_PRECISIONS",
    "check_precision",
    "default_dtype",
    "trainer_arguments",
    "training_dtype",
]

#: Trainer arguments that other config sections own.
RESERVED_TRAINER_KEYS = {
    "max_epochs": "train.max_epochs",
    "max_steps": "train.max_steps",
    "gradient_clip_val": "train.gradient_clip",
    "val_check_interval": "train.val_every_n_steps",
    "check_val_every_n_epoch": "train.val_every_n_steps",
    "callbacks": "(built by flows)",
    "logger": "output.logger",
    "default_root_dir": "output.dir",
    "enable_checkpointing": "(always on)",
    "enable_progress_bar": "output.progress_bar",
    "use_distributed_sampler": "(flows shards batches itself)",
}


def trainer_arguments(trainer_config: dict[str, Any]) -> dict[str, Any]:
    """Check the `trainer` section against `lightning.Trainer`'s signature; returns the keyword arguments.

    Lightning is imported only to check a non-empty section."""
    if not trainer_config:
        return {}
    import lightning as L

    parameters = inspect.signature(L.Trainer.__init__).parameters
    try:
        hints = typing.get_type_hints(L.Trainer.__init__)
    except Exception:
        hints = {}
    valid = [name for name in parameters if name != "self" and name not in RESERVED_TRAINER_KEYS]
    out: dict[str, Any] = {}
    for key, value in trainer_config.items():
        if key in RESERVED_TRAINER_KEYS:
            raise ConfigError(
                f"config key 'trainer.{key}' is set by flows; use {RESERVED_TRAINER_KEYS[key]} instead"
            )
        if key not in parameters or key == "self":
            raise unknown_key_error(f"trainer.{key}", valid, "trainer (lightning.Trainer arguments)")
        out[key] = check_value(f"trainer.{key}", value, hints.get(key, Any))
    if "precision" in out:
        check_precision(out["precision"])
    return out


#: Lightning's precisions that compute the whole model in 16 bits (parameters, inputs and every operation)
SIXTEEN_BIT_PRECISIONS = ("16-true", "bf16-true", "transformer-engine", "transformer-engine-float16")


def check_precision(precision: Any) -> None:
    """Refuse `trainer.precision` settings that would compute a flow's transforms in 16 bits.

    Mixed precision (`16-mixed`, `bf16-mixed`) is fine: a flow then runs only its conditioner networks in 16
    bits and keeps its transforms, log-determinants and base density in float32 (`flows.mixed_precision`)."""
    if str(precision).lower() in SIXTEEN_BIT_PRECISIONS:
        raise ConfigError(
            f"config key 'trainer.precision': expected 32-true, 64-true, 16-mixed or bf16-mixed, got {precision!r}, "
            "which computes the whole flow in 16 bits (8 or 11 significant bits): its log-determinants and "
            "inverse too, so log-densities would be off by nats. Use bf16-mixed or 16-mixed: the conditioner "
            "networks compute in 16 bits, the transforms and log-determinants in float32"
        )


#: Lightning's precisions that compute the whole model in float64
SIXTY_FOUR_BIT_PRECISIONS = ("64", "64-true", "double")


def training_dtype(trainer_config: Mapping[str, Any]) -> torch.dtype:
    """The float dtype a model trains in under the `trainer` section: float64 for a 64-bit `precision`, else
    torch's default dtype (float32; mixed precision keeps the model's parameters in it)."""
    import torch

    precision = str((trainer_config or {}).get("precision", "32")).lower()
    return torch.float64 if precision in SIXTY_FOUR_BIT_PRECISIONS else torch.get_default_dtype()


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype) -> Iterator[None]:
    """torch's default dtype set to `dtype` inside the block, the caller's restored after it."""
    import torch

    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)
