"""`KeepEarlyStop`: a run that early stopping ended stays ended when it is resumed.

Lightning does not save `trainer.should_stop`. A run stopped early writes its `last.ckpt` at the end of
training with its loops finished but short of `max_epochs` / `max_steps`, so `flows fit --resume` on it (a kill
after the stop, before the run's outputs were written; or a resume with a larger `max_epochs`) trained on until
the next validation, where the restored early stopping fired again, or, had that validation improved, reset
its patience and trained on past the stop: the resumed run's results were no longer the finished run's.
`EarlyStopping` saves why it stopped (and how many validations it has waited); this callback reads that back
and stops again before the first step. To train on, resume with `train.early_stopping_patience: null`
(Lightning restores the saved patience, so a larger one does not reopen the run).
"""

from __future__ import annotations

import logging

import lightning as L
from lightning.pytorch.callbacks import Callback, EarlyStopping
from lightning.pytorch.callbacks.early_stopping import EarlyStoppingReason

__all__ = ["KeepEarlyStop"]

log = logging.getLogger(__name__)


def _has_stopped(callback: EarlyStopping) -> bool:
    """Whether `callback` (its state restored from a checkpoint) had ended the run: its saved reason, or, for a
    checkpoint without one, patience spent (`wait_count` counts validations without improvement)."""
    return callback.stopping_reason != EarlyStoppingReason.NOT_STOPPED or callback.wait_count >= max(
        callback.patience, 1
    )


class KeepEarlyStop(Callback):
    """Sets `trainer.should_stop` at the start of a resumed run whose early stopping had already fired."""

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.ckpt_path is None:
            return
        stopped = [callback for callback in trainer.early_stopping_callbacks if _has_stopped(callback)]
        if stopped:
            # (Lightning still trains on to `min_epochs` / `min_steps` if they are set, as the first run did)
            trainer.should_stop = True
            message = stopped[0].stopping_reason_message or f"{stopped[0].monitor} stopped improving"
            log.warning(
                "the resumed run had been stopped early (%s): it trains no further; resume with "
                "train.early_stopping_patience: null to train on",
                message,
            )
