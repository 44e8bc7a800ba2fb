"""`KeepEarlyStop`: a run that early stopping ended stays ended when it is resumed.

Lightning does not save `trainer.should_stop`. A run stopped early writes its `last.ckpt` at the end of
training with its loops finished but short of `max_epochs` / `max_steps`, so `flows fit --resume` on it (or a
kill after the stop, before the run's outputs were written) trained on until the next validation, where the
restored early stopping fired again, or, had that validation improved, reset its patience and trained on
past the stop: the resumed run's results were no longer the finished run's. `EarlyStopping` does save why it
stopped; this callback reads that back and stops again before the first step.
"""

from __future__ import annotations

import lightning as L
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.callbacks.early_stopping import EarlyStoppingReason

__all__ = ["KeepEarlyStop"]


class KeepEarlyStop(Callback):
    """Sets `trainer.should_stop` at the start of a resumed run whose early stopping had already fired."""

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        stopped = [
            callback
            for callback in trainer.early_stopping_callbacks
            if callback.stopping_reason != EarlyStoppingReason.NOT_STOPPED
        ]
        if trainer.ckpt_path is not None and stopped:
            trainer.should_stop = True  # (Lightning still trains on to `min_epochs` / `min_steps` if set)
