"""How many CPU threads a run's torch ops use: `train.num_threads: auto` (the default) or a fixed count.

`auto` picks the count from the work of one training step (parameters x batch rows) and the cores this
process may run on (`os.sched_getaffinity`). Small flows lose most of their time to thread synchronisation:
measured on 2 shared cores (docs/speed.md), 2 threads were 4.6-6.1x *slower* than 1 for NSF
steps from 9e4 parameters x 256 rows to 6.7e6 parameters x 1,024 rows. So `auto` keeps one thread up to
`WORK_PER_THREAD` (parameters x rows) and adds one thread per further multiple of it, up to the cores.
The choice depends only on the model, the batch and the machine (not on its momentary load), so a resumed
run chooses what the interrupted one chose.
"""

from __future__ import annotations

import os
from typing import Optional, Union

import torch

__all__ = ["WORK_PER_THREAD", "auto_threads", "available_cores", "resolve_threads"]

#: parameters x batch rows of one training step that one thread handles before a second one pays
WORK_PER_THREAD = 1e10


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity; `os.cpu_count()` where that is unknown)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def auto_threads(model: torch.nn.Module, batch_size: int, cores: Optional[int] = None) -> int:
    """The thread count `auto` chooses for training `model` on batches of `batch_size` rows: in 1..cores."""
    cores = available_cores() if cores is None else max(1, int(cores))
    parameters = sum(p.numel() for p in model.parameters() if p.requires_grad)
    wanted = int(parameters * batch_size // WORK_PER_THREAD)
    return max(1, min(cores, wanted))


def resolve_threads(setting: Union[int, str, None], model: torch.nn.Module, batch_size: int) -> Optional[int]:
    """The count to set for a run's `train.num_threads`: the int itself, `auto`'s choice, None (torch's)."""
    if setting == "auto":
        return auto_threads(model, batch_size)
    return None if setting is None else int(setting)
