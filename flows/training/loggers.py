"""The run's loggers: Lightning's CSV logger (kept across `--resume`) and TensorBoard when installed."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any, Optional

from lightning.pytorch.loggers import CSVLogger

from flows.io import atomic_open

__all__ = ["ResumableCSVLogger", "make_loggers"]


class ResumableCSVLogger(CSVLogger):
    """`CSVLogger` writing `save_dir/logs/metrics.csv` that, when a run resumes from a checkpoint taken at
    optimiser step `resume_step`, keeps the rows logged up to that step instead of starting a new file.

    Lightning's logger deletes an existing `metrics.csv` when it starts. Rows logged after the checkpoint
    by the interrupted run are dropped: the resumed run logs those steps again, so the file ends as it
    would have without the interruption.
    """

    def __init__(self, save_dir: str, resume_step: Optional[int] = None) -> None:
        super().__init__(save_dir=save_dir, name="logs", version="")
        self.resume_step = resume_step

    @property
    def experiment(self) -> Any:
        if self._experiment is not None:
            return self._experiment
        path = Path(self.log_dir) / "metrics.csv"
        header: list[str] = []
        rows: list[dict[str, str]] = []
        if self.resume_step is not None and path.is_file():
            with open(path, newline="") as file:
                reader = csv.DictReader(file)
                header = list(reader.fieldnames or [])
                rows = [row for row in reader if _step(row) is not None and _step(row) <= self.resume_step]
        experiment = CSVLogger.experiment.fget(self)  # type: ignore[attr-defined]  # deletes the old file
        if header and hasattr(experiment, "metrics_keys"):  # rank 0 (other ranks get a dummy)
            with atomic_open(path, "w", newline="") as file:
                writer = csv.DictWriter(file, fieldnames=header)
                writer.writeheader()
                writer.writerows(rows)
            experiment.metrics_keys = sorted(header)
        return experiment

    def after_save_checkpoint(self, checkpoint_callback: Any) -> None:
        """Flush the rows logged so far whenever a checkpoint is written: a run killed later loses none
        of the rows up to its last checkpoint (Lightning's logger flushes every 100 steps otherwise)."""
        super().after_save_checkpoint(checkpoint_callback)
        self.save()


def _step(row: dict[str, str]) -> Optional[int]:
    try:
        return int(float(row.get("step") or ""))
    except ValueError:
        return None


def make_loggers(run_dir: Path, kind: str, resume_step: Optional[int] = None) -> list[Any]:
    """The loggers of `output.logger` (`auto`, `csv`, `tensorboard`) writing under `run_dir`."""
    loggers: list[Any] = []
    if kind in ("auto", "csv"):
        loggers.append(ResumableCSVLogger(str(run_dir), resume_step))
    if kind in ("auto", "tensorboard"):
        try:
            import tensorboard  # noqa: F401
            from lightning.pytorch.loggers import TensorBoardLogger
        except ImportError:
            if kind == "tensorboard":
                raise ImportError("output.logger = tensorboard needs the tensorboard package") from None
        else:
            loggers.append(TensorBoardLogger(save_dir=str(run_dir), name="tensorboard", version=""))
    return loggers
