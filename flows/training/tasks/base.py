"""The `Task` interface: what differs between kinds of run (tables, images) around the one pipeline.

A task resolves and validates its config once, loads the splits, builds the model from the data's shape,
initialises data-dependent layers, wraps the model in its LightningModule and the data in a datamodule,
evaluates the trained model and writes its outputs. `flows.training.pipeline` calls these in order.
"""

from __future__ import annotations

import sys
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import lightning as L
from lightning.pytorch.callbacks import Callback

from flows.flow import Flow
from flows.training.config import Config
from flows.training.data import GlobalBatchSampler
from flows.training.objectives import MaximumLikelihood, Objective

__all__ = ["Fitted", "Task"]


@dataclass
class Fitted:
    """A trained model (best validation weights restored) and facts about its training (`info["data"]`: the
    splits it was trained on, as the task prepared them)."""

    model: Flow
    module: L.LightningModule
    trainer: L.Trainer
    best_checkpoint: Optional[Path]
    best_val: Optional[float]
    record: dict[str, Any]
    info: dict[str, Any] = field(default_factory=dict)


class Task(ABC):
    """One kind of run. Data objects are the task's own (e.g. `DataSplits`, `ImageSplits`)."""

    @abstractmethod
    def resolve(self, values: Union[Config, Mapping[str, Any]]) -> Config:
        """Parse and validate the whole config for this task (every section and key, once); fill defaults."""

    def plain_config(self, config: Config) -> dict[str, Any]:
        """The resolved config as written to `config.yaml` and stored in checkpoints."""
        return config.to_dict()

    @abstractmethod
    def load_data(self, config: Config) -> Any:
        """The train / validation / test splits."""

    def prepare_data(self, config: Config, data: Any) -> Any:
        """Last changes to the splits before training (e.g. fixed dequantisation of val/test); default none."""
        return data

    @abstractmethod
    def build(self, config: Config, data: Any) -> tuple[Flow, dict[str, Any]]:
        """The untrained model for the data's shape and the record that rebuilds it from a checkpoint."""

    def objective(self, config: Config) -> Objective:
        """What training minimises (maximum likelihood unless the task says otherwise)."""
        return MaximumLikelihood()

    @abstractmethod
    def initialize(self, model: Flow, data: Any, config: Config, global_batch: int) -> None:
        """Data-dependent initialisation (ActNorm) on the first global training batch."""

    def fit_base(self, model: Flow, data: Any, config: Config, record: dict[str, Any]) -> Optional[float]:
        """Fit a data-dependent base distribution once the model is initialised (the tables' `base: gmm`),
        completing `record` so that it rebuilds it; returns the starting model's validation score: the fit
        ends with the starting weights if no validation during training beats it (None: nothing fitted)."""
        return None

    @staticmethod
    def first_global_batch(rows: int, global_batch: int, config: Config) -> Any:
        """Row indices of the first global training batch of `rows` rows: the same rows on every rank."""
        return next(iter(GlobalBatchSampler(rows, global_batch, config.train.shuffle, config.seed)))

    @abstractmethod
    def module(
        self, model: Flow, config: Config, data: Any, record: dict[str, Any], objective: Objective
    ) -> L.LightningModule:
        """The LightningModule that trains `model` with `objective`."""

    @abstractmethod
    def datamodule(self, data: Any, config: Config) -> L.LightningDataModule:
        """The loaders of the three splits."""

    def progress_printer(self) -> Optional[Callback]:
        """A callback printing one line per validation when the progress bar is off."""
        return None

    @abstractmethod
    def evaluate(self, fitted: Fitted, config: Config) -> dict[str, Any]:
        """Metrics of the trained model (test split, best validation value, ...)."""

    @abstractmethod
    def write_outputs(self, fitted: Fitted, config: Config, run_dir: Path) -> dict[str, Any]:
        """Samples, plots or image grids in `run_dir`; returns metrics about them."""

    @abstractmethod
    def summary(self, metrics: Mapping[str, Any]) -> str:
        """What `flows fit` prints at the end."""


def guarded_plots(write: Callable[[], Iterable[Union[str, Path]]]) -> list[str]:
    """Run a task's plot writer and return the paths it wrote: a missing plotting dependency skips the plots
    (a line on stderr), any other failure is a warning, so a plotting failure never loses a finished run."""
    try:
        written = write()
    except ImportError as error:
        print(f"plots skipped: {error}", file=sys.stderr)
        return []
    except Exception as error:  # a plotting failure must not lose a finished training run
        warnings.warn(f"writing plots failed: {type(error).__name__}: {error}", stacklevel=2)
        return []
    return [str(p) for p in written]
