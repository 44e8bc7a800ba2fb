"""How runs write and read their Lightning checkpoints.

- `AtomicCheckpointIO` writes every checkpoint like every other file of a run (`flows.io.atomic_open`: a
  temporary file in the destination directory, fsync, rename), so a kill at any moment leaves the previous
  complete checkpoint in place, whatever filesystem `$TMPDIR` is on (Lightning's own writer stages the file
  through fsspec and then copies it into place). It reads with `read_tensor_file`: tensors and plain data
  only, never code, Lightning's resume and the weights a `ddp_spawn` worker hands back included.
- `RunCheckpoint` keeps `best.ckpt` on the monitored metric and writes `last.ckpt` at every validation and at
  the end of training (Lightning 2.6 writes `last` only when `best` improves); at a validation after which the
  run ends, `last.ckpt` waits for the end of training, which follows at once.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional, Union

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.trainer.states import TrainerFn

from flows.io import atomic_save
from flows.training.safety import read_tensor_file

__all__ = ["AtomicCheckpointIO", "RunCheckpoint"]


def _is_local(path: Union[str, Path]) -> bool:
    return "://" not in str(path)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint IO with atomic local writes and code-free (`weights_only`) reads."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Union[str, Path], storage_options: Optional[Any] = None
    ) -> None:
        if storage_options is not None or not _is_local(path):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        atomic_save(checkpoint, path)

    def load_checkpoint(
        self,
        path: Union[str, Path],
        map_location: Optional[Callable] = lambda storage, loc: storage,
        weights_only: Optional[bool] = None,
    ) -> dict[str, Any]:
        if not _is_local(path):
            return super().load_checkpoint(path, map_location, weights_only=True)
        # Lightning reads two kinds of file here: a run's checkpoint to resume (which `flows fit --resume` has
        # already checked with `read_checkpoint`) and the bare state_dict a `ddp_spawn` worker hands back
        return read_tensor_file(path, map_location if map_location is not None else "cpu")


class RunCheckpoint(ModelCheckpoint):
    """`ModelCheckpoint` whose `last` checkpoint is kept up to date: rewritten at every validation (after the
    best one) and at the end of training, so a kill loses at most the steps since the last validation."""

    def _writes_now(self, trainer: L.Trainer) -> bool:
        return bool(
            self.save_last
            and not trainer.fast_dev_run
            and not trainer.sanity_checking
            and trainer.state.fn == TrainerFn.FITTING
        )

    def _save_last_checkpoint(self, trainer: L.Trainer, monitor_candidates: dict[str, Any]) -> None:
        if _run_ends_after_this_validation(trainer):
            return  # written by `on_train_end` instead, with the loops finished
        super()._save_last_checkpoint(trainer, monitor_candidates)
        self._last_step_of_last = trainer.global_step

    def _last_is_current(self, trainer: L.Trainer) -> bool:
        return getattr(self, "_last_step_of_last", None) == trainer.global_step

    def _keep_last_current(self, trainer: L.Trainer) -> None:
        if self._writes_now(trainer) and not self._last_is_current(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    # Lightning saves after validation, or at the end of the epoch when validation runs once per epoch; `last`
    # follows `best` in the same hook, so that Lightning's own saving is never skipped as "already saved".
    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        if not self._should_save_on_train_epoch_end(trainer):
            self._keep_last_current(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if self._should_save_on_train_epoch_end(trainer):
            self._keep_last_current(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_end(trainer, pl_module)
        self._keep_last_current(trainer)


def _run_ends_after_this_validation(trainer: L.Trainer) -> bool:
    """Whether the validation running now is the run's last: one after the last step (`ValidateLastStep`) or one
    that stops the run early. Its `last` checkpoint would hold the loops inside their last batch, and Lightning
    does not save `should_stop`: resumed from it, a run would train that batch again (or go on past its early
    stop). A kill before training's end then resumes from the previous `last` checkpoint instead."""
    if trainer.min_steps or trainer.min_epochs:  # Lightning may train on past `should_stop`: keep writing
        return False
    return bool(trainer.validating and trainer.should_stop)
