"""`ValidateLastStep`: the last optimiser step of every run is a validation step.

A run that validates every `train.val_every_n_steps` steps ends where its step or epoch limit says, which is
seldom a multiple of the interval: the steps after the last validation were then never compared with the best
weights, and restoring the best weights threw them away (with a cosine decay those are the steps that settle
the fit), and a run shorter than one interval (`DensityEstimator(max_steps=20)`, validation every 50 steps)
never validated at all, so it had no best validation score. Lightning validates after any step at which
`trainer.should_stop` is set, so this callback sets it on the step that ends the run anyway.

`RunCheckpoint` does not write `last.ckpt` at a validation after which the run ends (its loops would be
inside the last batch, and Lightning does not save `should_stop`, so a resume would train that batch again):
it writes it when training ends, with the loops finished.
"""

from __future__ import annotations

from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback

__all__ = ["ValidateLastStep", "is_last_step"]


def is_last_step(trainer: L.Trainer, batch_idx: int) -> bool:
    """Whether the training batch `batch_idx` that just ran ends the run: `max_steps` optimiser steps done,
    or the last batch of the last epoch (`max_epochs`)."""
    if trainer.max_steps is not None and 0 <= trainer.max_steps <= trainer.global_step:
        return True
    max_epochs = trainer.max_epochs
    if max_epochs is None or max_epochs < 0 or trainer.current_epoch + 1 < max_epochs:
        return False
    return batch_idx + 1 >= trainer.num_training_batches  # (inf for loaders without a length: never)


class ValidateLastStep(Callback):
    """Makes Lightning validate after the run's last training step (once: it is never validated twice)."""

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if not trainer.sanity_checking and is_last_step(trainer, batch_idx):
            trainer.should_stop = True
