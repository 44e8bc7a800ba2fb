"""The Lightning Trainer of a run: its arguments from the config, checkpoints, safety callbacks, loggers.

`make_trainer` is the one place where a run's Trainer is built (tabular and image runs, the estimator);
`flows.training.trainer_options.trainer_arguments` checks the config's `trainer` section against
`lightning.Trainer`'s signature.
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Optional, Union

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, EarlyStopping, TQDMProgressBar

from flows.training.best_weights import BestWeights
from flows.training.checkpoint_io import AtomicCheckpointIO, RunCheckpoint
from flows.training.config import Config
from flows.training.guard import safety_callbacks
from flows.training.last_validation import ValidateLastStep
from flows.training.loggers import make_loggers
from flows.training.resumed_stop import KeepEarlyStop
from flows.training.safety import read_checkpoint
from flows.training.trainer_options import trainer_arguments

__all__ = [
    "launched_worker",
    "make_trainer",
    "quiet_fit_warnings",
    "quiet_lightning_logs",
    "torch_threads",
]


class _NoAdvertisement(logging.Filter):
    """Drops Lightning's "Tip: ... try installing litlogger" line, printed by every Trainer without a LitLogger:
    an advertisement for a hosted service, not a fact about the run, and noise at the top of every CLI run.
    Installed when this module is first imported, so it holds for every Trainer in the process after that."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "litlogger" not in str(record.msg)


logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_NoAdvertisement())


def _is_cpu_run(trainer_kwargs: dict[str, Any]) -> bool:
    accelerator = trainer_kwargs.get("accelerator", "auto")
    if accelerator == "cpu":
        return True
    return (
        accelerator == "auto"
        and not torch.cuda.is_available()
        and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available())
    )


def launched_worker() -> bool:
    """True in a non-zero DDP rank started by Lightning's launcher or torchrun."""
    for variable in ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID"):
        value = os.environ.get(variable)
        if value not in (None, "", "0"):
            return True
    return False


@contextlib.contextmanager
def quiet_fit_warnings() -> Iterator[None]:
    """Silence Lightning's warnings that do not apply to our runs during `trainer.fit`: tensor datasets need
    no workers, metrics are logged as we intend, our datamodules do resume mid-epoch (`ResumableBatches`),
    which Lightning's check of the loader itself cannot see, and a streamed table's length is exact."""
    with warnings.catch_warnings():
        for message in (
            ".*does not have many workers.*",
            ".*sync_dist=True.*",
            ".*smaller than the logging interval.*",
            ".*could not find the monitored key.*",
            ".*isinstance\\(treespec, LeafSpec\\).*",
            ".*resuming from a checkpoint that ended before the epoch ended.*",
            # streamed tables (flows.training.streaming): each worker reads its own shards, len is exact
            ".*`IterableDataset` has `__len__` defined.*",
            # torch's own Inductor lowering calls its deprecated helper when train.compile compiles (torch 2.13)
            ".*`torch._prims_common.check` is deprecated.*",
        ):
            warnings.filterwarnings("ignore", message=message)
        yield


def make_trainer(
    config: Config,
    run_dir: Path,
    monitor: str = "val_nll",
    print_callback: Optional[Callback] = None,
    resume: Optional[Path] = None,
    checkpoints: bool = True,
) -> L.Trainer:
    """The Lightning Trainer of a run (every task and objective).

    Best and last checkpoints on `monitor` (the objective's metric, minimised) in `run_dir/checkpoints`,
    the non-finite guard on it, early stopping on it (still stopped when resumed: `KeepEarlyStop`), the
    loggers, the validation interval (and a validation after the last step, `ValidateLastStep`), and the
    config's `trainer` arguments (deterministic by default on CPU). `print_callback` reports validations when
    the progress bar is off. `resume`: the checkpoint the run continues from (the CSV log keeps its rows up to
    that checkpoint's step). `checkpoints=False` (in-memory estimator fits): no checkpoint files, the best
    weights kept in memory by a `BestWeights` callback instead.
    """
    train = config.train
    trainer_kwargs = trainer_arguments(config.trainer)
    if "deterministic" not in trainer_kwargs and _is_cpu_run(trainer_kwargs):
        trainer_kwargs["deterministic"] = True
    trainer_kwargs.setdefault("log_every_n_steps", 10)
    trainer_kwargs.setdefault("enable_model_summary", False)
    trainer_kwargs.setdefault("num_sanity_val_steps", 0)
    best: Callback = BestWeights(monitor)
    if checkpoints:
        best = RunCheckpoint(
            dirpath=str(run_dir / "checkpoints"),
            filename="best",
            monitor=monitor,
            mode="min",
            save_top_k=1,
            save_last=True,
            enable_version_counter=False,
        )
    callbacks: list[Callback] = [best, *safety_callbacks(monitor), ValidateLastStep()]
    if train.early_stopping_patience is not None:
        callbacks.append(
            EarlyStopping(
                monitor=monitor,
                mode="min",
                patience=train.early_stopping_patience,
                check_finite=True,
                check_on_train_epoch_end=False,  # decide after validations only
            )
        )
        callbacks.append(KeepEarlyStop())
    if config.output.progress_bar:
        # Redrawn every `log_every_n_steps` steps, when the loss it shows is logged (FlowModule.training_log_due):
        # a redraw each step costs a millisecond, a sizeable part of a small flow's step.
        callbacks.append(TQDMProgressBar(refresh_rate=max(1, int(trainer_kwargs["log_every_n_steps"]))))
    elif print_callback is not None:
        callbacks.append(print_callback)
    validation = (
        {"val_check_interval": train.val_every_n_steps, "check_val_every_n_epoch": None}
        if train.val_every_n_steps is not None
        else {"check_val_every_n_epoch": 1}
    )
    loggers: Any = False
    if config.output.logger != "none":
        resume_step = int(read_checkpoint(resume)["global_step"]) if resume is not None else None
        loggers = make_loggers(run_dir, config.output.logger, resume_step)
    plugins = trainer_kwargs.pop("plugins", None) or []
    plugins = [*(plugins if isinstance(plugins, list) else [plugins]), AtomicCheckpointIO()]
    return L.Trainer(
        max_epochs=train.max_epochs,
        max_steps=train.max_steps,
        gradient_clip_val=train.gradient_clip,
        gradient_clip_algorithm="norm",
        callbacks=callbacks,
        logger=loggers,
        default_root_dir=str(run_dir),
        enable_progress_bar=config.output.progress_bar,
        use_distributed_sampler=False,
        plugins=plugins,
        enable_checkpointing=checkpoints,
        **validation,
        **trainer_kwargs,
    )


@contextlib.contextmanager
def torch_threads(threads: Union[int, str, None]) -> Iterator[None]:
    """Run with `torch.set_num_threads(threads)` (no change when None or "auto", which `train` resolves once
    the model is built), restoring the previous count on exit whatever was set inside."""
    previous = torch.get_num_threads()
    if threads is not None and threads != "auto":
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@contextlib.contextmanager
def quiet_lightning_logs(enabled: bool) -> Iterator[None]:
    """Silence Lightning's informational log lines (GPU available, ...) while fitting."""
    if not enabled:
        yield
        return
    loggers = [logging.getLogger(name) for name in ("lightning.pytorch", "lightning.fabric", "lightning")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)
