"""Training options that adapt to the size of a table: what `DensityEstimator`'s `"auto"` values resolve to.

A fixed batch of 256 gives a table of 250 training rows one optimiser step per epoch, and early stopping
after 10 epochs then ends the fit after 10-30 steps. Here the batch shrinks with the table (so every epoch
has about 8 steps or more), the length is counted in steps (at least `MIN_STEPS`, else 100 epochs), and
validation (hence early stopping, whose patience counts validations) runs every `MIN_VALIDATION_STEPS`
steps or once per epoch, whichever is longer, so that its patience means as many steps on small tables as
on large ones. Tables of more than `MAX_BATCH * ROWS_PER_BATCH_STEP` rows train as before (batch 256,
100 epochs, one validation per epoch).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Optional, Union

__all__ = ["AUTO", "MAX_BATCH", "MIN_BATCH", "auto_batch_size", "table_train_options"]

AUTO = "auto"
MAX_BATCH = 256
MIN_BATCH = 32
#: the batch is about the training rows / this (within [MIN_BATCH, MAX_BATCH]): ~8 steps per epoch
ROWS_PER_BATCH_STEP = 8
MIN_STEPS = 2000
EPOCHS = 100
MIN_VALIDATION_STEPS = 50


def auto_batch_size(rows: int) -> int:
    """The batch size for `rows` training rows: a power of two near rows / 8, within [32, 256]."""
    target = max(1, rows // ROWS_PER_BATCH_STEP)
    return int(min(MAX_BATCH, max(MIN_BATCH, 2 ** round(math.log2(target)))))


def table_train_options(
    rows: Optional[int],
    batch_size: Union[int, str],
    max_epochs: Union[int, str, None],
    given: Mapping[str, Any],
) -> dict[str, Any]:
    """The `train` options for `rows` training rows (None: not known yet, the options of a large table).

    `batch_size` / `max_epochs` as the user gave them (`"auto"` or a value); `given` holds the user's
    other train options, which are kept as given (an explicit `max_steps` or `val_every_n_steps` wins).
    """
    rows = rows if rows is not None else MAX_BATCH * ROWS_PER_BATCH_STEP * 100
    batch = auto_batch_size(rows) if batch_size == AUTO else batch_size
    options: dict[str, Any] = {"batch_size": batch}
    steps_per_epoch = math.ceil(rows / batch) if isinstance(batch, int) and batch > 0 else 1
    if max_epochs == AUTO:
        options["max_epochs"] = None
        if "max_steps" not in given:
            options["max_steps"] = max(MIN_STEPS, EPOCHS * steps_per_epoch)
    else:
        options["max_epochs"] = max_epochs
    if AUTO in (batch_size, max_epochs) and "val_every_n_steps" not in given:
        options["val_every_n_steps"] = max(MIN_VALIDATION_STEPS, steps_per_epoch)
    return {**options, **given}
