"""Training one model with Lightning: the part of the pipeline that `DensityEstimator` shares with runs.

`train(task, config, data, run_dir)` builds the task's model, makes the Trainer, initialises data-dependent
layers, fits (or resumes), and restores the best validation weights.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Optional

import lightning as L
import torch

from flows.training.best_weights import BestWeights
from flows.training.config import Config, check_machine_limits
from flows.training.safety import read_checkpoint
from flows.training.tasks.base import Fitted, Task
from flows.training.threads import resolve_threads
from flows.training.trainer import make_trainer, quiet_fit_warnings
from flows.training.trainer_options import default_dtype, training_dtype

__all__ = ["Fitted", "train"]


def train(
    task: Task,
    config: Config,
    data: Any,
    run_dir: Optional[Path],
    resume_from: Optional[Path] = None,
    quiet: bool = False,
) -> Fitted:
    """Build the task's model for `data`, train it with Lightning into `run_dir`, restore the best weights.

    `run_dir=None`: an in-memory fit (no checkpoint files; the best weights are kept in memory).

    Returns on every rank; only rank 0 should evaluate and write outputs. `quiet` drops the per-validation
    lines printed when the progress bar is off. `resume_from`: a checkpoint to continue training from.
    Sets the run's thread count (`train.num_threads`) once the model is built; callers run it inside
    `torch_threads(config.train.num_threads)`, which restores theirs.
    """
    check_machine_limits(config)  # before any worker process or thread is started
    seed = config.seed
    L.seed_everything(seed, workers=True, verbose=False)
    data = task.prepare_data(config, data)
    torch.manual_seed(seed)
    # A 64-bit `trainer.precision` builds, initialises and fits the base in float64 from the start: a model
    # built in float32 and converted by Lightning would keep statistics rounded to float32 (a mean of 1e12
    # off by up to 32,768).
    dtype = training_dtype(config.trainer)
    with default_dtype(dtype):
        model, record = task.build(config, data)
    threads = resolve_threads(config.train.num_threads, model, config.train.batch_size)
    if threads is not None:  # the callers' `torch_threads` restores the previous count
        torch.set_num_threads(threads)
    objective = task.objective(config)
    in_memory = run_dir is None
    trainer = make_trainer(
        config,
        Path.cwd() if run_dir is None else run_dir,
        objective.monitor,
        None if quiet else task.progress_printer(),
        resume_from,
        checkpoints=not in_memory,
    )
    # Data-dependent initialisation on the first global batch: the same rows on every rank, before DDP
    # wraps the model (so all ranks start from identical parameters).
    with default_dtype(dtype):
        if config.train.actnorm_init:
            task.initialize(model, data, config, config.train.batch_size * trainer.world_size)
        start_score = task.fit_base(model, data, config, record)  # e.g. a Gaussian mixture fitted as the base
    start_state = (
        None if start_score is None else {k: v.detach().clone() for k, v in model.state_dict().items()}
    )
    module = task.module(model, config, data, record, objective)
    datamodule = task.datamodule(data, config)
    fit_start = time.perf_counter()
    try:
        with quiet_fit_warnings():
            trainer.fit(module, datamodule=datamodule, ckpt_path=resume_from, weights_only=True)
    finally:
        module.stop_counting()  # (`train.compile: auto` counts one step's ATen calls)
    fit_seconds = time.perf_counter() - fit_start

    best_path, best_score, last = None, None, None
    if in_memory:  # no files: the best validation weights were kept in memory
        best = next(c for c in trainer.callbacks if isinstance(c, BestWeights))
        best.restore(module)
        best_score = best.best_score
    else:
        checkpoint = trainer.checkpoint_callback
        best_path = Path(checkpoint.best_model_path) if checkpoint.best_model_path else None
        last = run_dir / "checkpoints" / "last.ckpt"  # (ddp_spawn leaves last_model_path unset here)
        if best_path is None and last.is_file():  # no validation ran: the final weights
            best_path = last
        if checkpoint.best_model_score is not None:
            best_score = float(checkpoint.best_model_score)
        if best_path is not None and best_path.is_file():
            module.load_state_dict(read_checkpoint(best_path, map_location=module.device)["state_dict"])
    if start_state is not None and best_score is not None and start_score <= best_score:
        model.load_state_dict(start_state)  # training never beat the fitted start on validation: keep it
        best_score = start_score
        if best_path is not None and best_path != last:  # best.ckpt holds what the run evaluates
            trainer.save_checkpoint(best_path)
    model.eval()
    epochs, steps = int(trainer.current_epoch), int(trainer.global_step)
    if steps == 0 and last is not None and last.is_file():  # ddp_spawn: the counters stayed in the workers
        saved = read_checkpoint(last)
        epochs, steps = int(saved.get("epoch", 0)), int(saved.get("global_step", 0))
    info = {
        "epochs": epochs,
        "steps": steps,
        "world_size": int(trainer.world_size),
        "fit_seconds": fit_seconds,
        "threads": torch.get_num_threads(),
        "compile": module.compile_policy.summary(),
        "data": data,
    }
    return Fitted(model, module, trainer, best_path, best_score, record, info)
