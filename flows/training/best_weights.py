"""`BestWeights`: the best validation weights of a fit kept in memory, for fits that write no checkpoints.

`DensityEstimator` fits without `output_dir` need the best weights only, not files: copying the state_dict
at each improvement replaces `best.ckpt` and `last.ckpt` written to a temporary directory (about 0.1 s per
write for a small flow, at every validation).
"""

from __future__ import annotations

import math
from typing import Any, Optional

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

__all__ = ["BestWeights"]


class BestWeights(Callback):
    """Copies the module's state_dict whenever `monitor` (minimised) improves at a validation."""

    def __init__(self, monitor: str = "val_nll") -> None:
        self.monitor = monitor
        self.best_score: Optional[float] = None
        self.best_state: Optional[dict[str, Any]] = None

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        value = trainer.callback_metrics.get(self.monitor)
        if value is None:
            return
        score = float(value)
        if not math.isfinite(score) or (self.best_score is not None and score >= self.best_score):
            return
        self.best_score = score
        self.best_state = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}

    def restore(self, module: torch.nn.Module) -> bool:
        """Load the best weights into `module`; False when no validation ran (it keeps its final weights)."""
        if self.best_state is None:
            return False
        module.load_state_dict(self.best_state)
        return True
