"""The one training pipeline: `run(config) -> RunResult` for every kind of run.

A run's steps are the same whatever it trains (a table, images, or a target density to sample): claim and lock the run directory, write the resolved config,
load the data, build the model, make the Lightning Trainer, initialise data-dependent layers, fit (or
resume), restore the best weights, evaluate, write outputs and `metrics.json`. What differs between kinds of
run lives in a `Task` (`flows.training.tasks`: tabular and image); what is minimised, and which metric the
checkpoints and early stopping follow, in an `Objective` (`flows.training.objectives`).
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional, Union

import torch

from flows.io import atomic_write_text
from flows.training.config import Config, ConfigError, check_machine_limits, write_yaml_atomic
from flows.training.fitting import Fitted, train
from flows.training.rundir import finished_metrics, remove_stale_temporaries, run_lock
from flows.training.safety import resume_checkpoint
from flows.training.tasks.base import Task
from flows.training.tasks.image import ImageTask, is_image_config
from flows.training.tasks.sampling import SamplingTask, is_sampling_config
from flows.training.tasks.streaming import StreamingTableTask, is_streaming_config
from flows.training.tasks.tabular import TabularTask
from flows.training.trainer import launched_worker, torch_threads

__all__ = [
    "RUN_DIR_ENV",
    "Fitted",
    "RunResult",
    "RunStart",
    "claim_run_dir",
    "count_parameters",
    "resolve_run_dir",
    "run",
    "task_for",
    "validate",
    "train",
    "write_json_atomic",
]

#: environment variable through which Lightning-launched DDP workers find rank 0's run directory
RUN_DIR_ENV = "FLOWS_RUN_DIR"


@dataclass
class RunResult:
    """What a run produced. `metrics` is also written to `run_dir/metrics.json` (rank 0 only)."""

    metrics: dict[str, Any]
    run_dir: Optional[Path]
    checkpoint: Optional[Path]
    flow: Optional[torch.nn.Module] = None
    config: Optional[Config] = None
    is_global_zero: bool = True


# ----------------------------------------------------------------------------------------------------------
# The run directory


def write_json_atomic(values: dict[str, Any], path: Path) -> Path:
    return atomic_write_text(path, json.dumps(values, indent=2, default=str) + "\n")


def count_parameters(model: torch.nn.Module) -> int:
    return int(sum(p.numel() for p in model.parameters() if p.requires_grad))


def default_run_name(config: Config) -> str:
    dataset = f"target:{config.target.name}" if config.target.name else config.data.dataset
    dataset = dataset.replace("file:", "").replace(":", "-").replace("/", "_").replace(".", "_")
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    return f"{config.model['name']}-{dataset[-40:]}-{stamp}"


def resolve_run_dir(config: Config) -> Path:
    """`output.dir / output.name` (a fresh name when null); DDP workers reuse rank 0's directory."""
    inherited = os.environ.get(RUN_DIR_ENV)
    if inherited and launched_worker():
        return Path(inherited)
    parent = Path(config.output.dir).expanduser()
    if config.output.name:
        return parent / config.output.name
    name = default_run_name(config)
    candidate, suffix = parent / name, 1
    while candidate.exists():  # two runs started within the same second
        suffix += 1
        candidate = parent / f"{name}-{suffix}"
    return candidate


@dataclass
class RunStart:
    """The run directory that a run owns, the checkpoint it resumes from, and the metrics of a finished run."""

    run_dir: Path
    resume_from: Optional[Path]
    finished: Optional[dict[str, Any]]
    worker: bool


@contextlib.contextmanager
def claim_run_dir(config: Config, resume: bool, verbose: bool) -> Iterator[RunStart]:
    """Resolve and lock the run directory for the block (rank 0; DDP workers share its lock).

    With `resume`, finds `last.ckpt` (checked to hold the same model, data, target and seed) or, for a run that already
    finished (it wrote `metrics.json`), its metrics: the caller then does nothing. Without `resume`, a
    `metrics.json` of an earlier run in the same directory is removed, so it can never pass for this run's.
    Temporary files left by a killed writer are removed.
    """
    if resume and not config.output.name:
        raise ConfigError("resuming needs a fixed run directory: set output.name (the run to continue)")
    run_dir = resolve_run_dir(config)
    worker = launched_worker()
    with contextlib.nullcontext() if worker else run_lock(run_dir):
        resume_from = resume_checkpoint(run_dir, config.to_dict()) if resume else None
        finished = finished_metrics(run_dir) if resume and not worker else None
        if not worker:
            remove_stale_temporaries(run_dir)
            if not resume:
                (run_dir / "metrics.json").unlink(missing_ok=True)
        if verbose and finished is not None:
            print(
                f"run {run_dir} has finished (metrics.json); nothing to resume, nothing changed. Evaluate it "
                "again with `flows test --ckpt <run>/checkpoints/best.ckpt`",
                flush=True,
            )
        elif verbose and resume and resume_from is None:
            print(
                f"no checkpoint in {run_dir / 'checkpoints'} to resume from; starting from scratch",
                flush=True,
            )
        yield RunStart(run_dir, resume_from, finished, worker)


@contextlib.contextmanager
def _run_dir_for_workers(run_dir: Path, worker: bool) -> Iterator[None]:
    """Tell DDP workers started by Lightning (through `RUN_DIR_ENV`) which directory rank 0 owns."""
    previous = os.environ.get(RUN_DIR_ENV)
    os.environ[RUN_DIR_ENV] = str(run_dir.resolve())
    try:
        yield
    finally:
        if not worker:
            if previous is None:
                os.environ.pop(RUN_DIR_ENV, None)
            else:
                os.environ[RUN_DIR_ENV] = previous


# ----------------------------------------------------------------------------------------------------------
# The entry point


def task_for(values: Union[Config, Mapping[str, Any]]) -> Task:
    """The task of a config: a target for `target.name`, images for `data.dataset: image:<name>`, a streamed
    table for a `file:` dataset to stream (`data.streaming`), tables held in memory otherwise."""
    if is_sampling_config(values):
        return SamplingTask()
    if is_streaming_config(values):
        return StreamingTableTask()
    return ImageTask() if is_image_config(values) else TabularTask()


def run(config: Union[Config, Mapping[str, Any]], verbose: bool = True, resume: bool = False) -> RunResult:
    """Train and evaluate one config; returns metrics (rank 0) and writes the run directory.

    The run directory holds `config.yaml` (the resolved config), `checkpoints/best.ckpt` and `last.ckpt`,
    `logs/metrics.csv` (the training log), `metrics.json` (the final metrics) and the task's outputs
    (samples and plots, or image grids). `resume=True` continues from `run_dir/checkpoints/last.ckpt` when it
    exists (needs `output.name`); a finished run is left as it is.
    """
    start = time.perf_counter()
    task = task_for(config)
    resolved = task.resolve(config)
    check_machine_limits(resolved)  # (before torch_threads sets the thread count)
    with torch_threads(resolved.train.num_threads), claim_run_dir(resolved, resume, verbose) as started:
        if started.finished is not None:
            metrics = dict(started.finished)
            checkpoint = metrics.get("checkpoint")
            return RunResult(
                metrics, started.run_dir, Path(checkpoint) if checkpoint else None, None, resolved
            )
        return _train_and_evaluate(task, resolved, started, verbose, start)


def validate(config: Union[Config, Mapping[str, Any]]) -> Config:
    """Validate a whole config for its task (every section and key, the model options, the trainer keys)."""
    return task_for(config).resolve(config)


def _train_and_evaluate(
    task: Task, config: Config, started: RunStart, verbose: bool, start: float
) -> RunResult:
    run_dir = started.run_dir
    if not started.worker:
        write_yaml_atomic(task.plain_config(config), run_dir / "config.yaml")
    data = task.load_data(config)
    with _run_dir_for_workers(run_dir, started.worker):
        fitted = train(task, config, data, run_dir, started.resume_from)
    if not fitted.trainer.is_global_zero:
        return RunResult({}, run_dir, fitted.best_checkpoint, fitted.model, config, is_global_zero=False)

    metrics: dict[str, Any] = {"dataset": config.data.dataset, "model": config.model["name"]}
    metrics.update(task.evaluate(fitted, config))
    metrics.update(
        {
            "n_params": count_parameters(fitted.model),
            "epochs": fitted.info["epochs"],
            "steps": fitted.info["steps"],
            "world_size": fitted.info["world_size"],
            "compile": fitted.info["compile"],
            "seed": config.seed,
        }
    )
    metrics.update(task.write_outputs(fitted, config, run_dir))
    metrics["wall_time"] = time.perf_counter() - start
    metrics["run_dir"] = str(run_dir)
    metrics["checkpoint"] = None if fitted.best_checkpoint is None else str(fitted.best_checkpoint)
    write_json_atomic(metrics, run_dir / "metrics.json")
    if verbose:
        print(task.summary(metrics), flush=True)
        if metrics["compile"]:  # what `train.compile: auto` chose
            print(metrics["compile"], flush=True)
    return RunResult(metrics, run_dir, fitted.best_checkpoint, fitted.model, config)
