"""`run(config) -> RunResult`: data, model, Lightning training, best-checkpoint restore, test, samples, plots.

This is the single Python entry point behind `flows fit` and the experiments runner. `fit_flow` is the
part shared with `DensityEstimator` (training on given splits).
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import json
import os
import sys
import time
import typing
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional, Union

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback, EarlyStopping

from flows.io import atomic_open, atomic_write_text
from flows.training.checkpoint_io import AtomicCheckpointIO, RunCheckpoint
from flows.training.checkpoints import model_record
from flows.training.config import (
    Config,
    ConfigError,
    check_value,
    parse_config,
    unknown_key_error,
    write_yaml_atomic,
)
from flows.training.context import context_stats, sample_at_contexts, with_context
from flows.training.data import DataSplits, GlobalBatchSampler, dequantize_fixed, load_splits, standard_error
from flows.training.loggers import make_loggers
from flows.training.models import (
    build_flow,
    check_model_options,
    initialize_flow,
    resolve_model,
    standardization_of,
)
from flows.training.module import FlowModule, TableDataModule
from flows.training.rundir import finished_metrics, remove_stale_temporaries, run_lock
from flows.training.safety import read_checkpoint, resume_checkpoint, safety_callbacks, warn_about_columns

__all__ = ["FitOutcome", "RunResult", "evaluate_log_prob", "fit_flow", "run", "trainer_arguments", "validate"]

#: environment variable through which Lightning-launched DDP workers find rank 0's run directory
RUN_DIR_ENV = "FLOWS_RUN_DIR"

#: Trainer arguments that other config sections own.
RESERVED_TRAINER_KEYS = {
    "max_epochs": "train.max_epochs",
    "max_steps": "train.max_steps",
    "gradient_clip_val": "train.gradient_clip",
    "val_check_interval": "train.val_every_n_steps",
    "check_val_every_n_epoch": "train.val_every_n_steps",
    "callbacks": "(built by flows)",
    "logger": "output.logger",
    "default_root_dir": "output.dir",
    "enable_checkpointing": "(always on)",
    "enable_progress_bar": "output.progress_bar",
    "use_distributed_sampler": "(flows shards batches itself)",
}


@dataclass
class RunResult:
    """What a run produced. `metrics` is also written to `run_dir/metrics.json` (rank 0 only)."""

    metrics: dict[str, Any]
    run_dir: Optional[Path]
    checkpoint: Optional[Path]
    flow: Optional[torch.nn.Module] = None
    config: Optional[Config] = None
    is_global_zero: bool = True


@dataclass
class FitOutcome:
    """The trained flow (best validation weights restored) and facts about its training."""

    flow: torch.nn.Module
    module: FlowModule
    trainer: L.Trainer
    best_checkpoint: Optional[Path]
    best_val_nll: Optional[float]
    record: dict[str, Any]
    info: dict[str, Any] = field(default_factory=dict)


# ----------------------------------------------------------------------------------------------------------
# Trainer construction


def trainer_arguments(trainer_config: dict[str, Any]) -> dict[str, Any]:
    """Check the `trainer` section against `lightning.Trainer`'s signature; returns the keyword arguments."""
    parameters = inspect.signature(L.Trainer.__init__).parameters
    try:
        hints = typing.get_type_hints(L.Trainer.__init__)
    except Exception:
        hints = {}
    valid = [name for name in parameters if name != "self" and name not in RESERVED_TRAINER_KEYS]
    out: dict[str, Any] = {}
    for key, value in trainer_config.items():
        if key in RESERVED_TRAINER_KEYS:
            raise ConfigError(
                f"config key 'trainer.{key}' is set by flows; use {RESERVED_TRAINER_KEYS[key]} instead"
            )
        if key not in parameters or key == "self":
            raise unknown_key_error(f"trainer.{key}", valid, "trainer (lightning.Trainer arguments)")
        out[key] = check_value(f"trainer.{key}", value, hints.get(key, Any))
    return out


def _is_cpu_run(trainer_kwargs: dict[str, Any]) -> bool:
    accelerator = trainer_kwargs.get("accelerator", "auto")
    if accelerator == "cpu":
        return True
    return (
        accelerator == "auto"
        and not torch.cuda.is_available()
        and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available())
    )


def _launched_worker() -> bool:
    """True in a non-zero DDP rank started by Lightning's launcher or torchrun."""
    for variable in ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID"):
        value = os.environ.get(variable)
        if value not in (None, "", "0"):
            return True
    return False


def default_run_name(config: Config) -> str:
    dataset = config.data.dataset.replace("file:", "").replace(":", "-").replace("/", "_").replace(".", "_")
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    return f"{config.model['name']}-{dataset[-40:]}-{stamp}"


def resolve_run_dir(config: Config) -> Path:
    """`output.dir / output.name` (a fresh name when null); DDP workers reuse rank 0's directory."""
    inherited = os.environ.get(RUN_DIR_ENV)
    if inherited and _launched_worker():
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
def claim_run_dir(config: Config, model: dict[str, Any], resume: bool, verbose: bool) -> Iterator[RunStart]:
    """Resolve and lock the run directory for the block (rank 0; DDP workers share its lock).

    With `resume`, finds `last.ckpt` (checked to hold the same `model` section) or, for a run that already
    finished (it wrote `metrics.json`), its metrics: the caller then does nothing. Without `resume`, a
    `metrics.json` of an earlier run in the same directory is removed, so it can never pass for this run's.
    Temporary files left by a killed writer are removed.
    """
    if resume and not config.output.name:
        raise ConfigError("resuming needs a fixed run directory: set output.name (the run to continue)")
    run_dir = resolve_run_dir(config)
    worker = _launched_worker()
    with contextlib.nullcontext() if worker else run_lock(run_dir):
        resume_from = resume_checkpoint(run_dir, model) if resume else None
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


def finished_result(start: RunStart, config: Config) -> RunResult:
    """The `RunResult` of a run that had already finished (its saved metrics; no model is loaded)."""
    metrics = dict(start.finished or {})
    checkpoint = metrics.get("checkpoint")
    return RunResult(metrics, start.run_dir, Path(checkpoint) if checkpoint else None, None, config)


class _PrintValidation(Callback):
    """A one-line validation summary when the progress bar is off."""

    def on_validation_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        value = trainer.callback_metrics.get("val_nll")
        if trainer.is_global_zero and value is not None and not trainer.sanity_checking:
            print(
                f"epoch {trainer.current_epoch} step {trainer.global_step}: val_nll {float(value):.4f}",
                flush=True,
            )


# ----------------------------------------------------------------------------------------------------------
# Training on given splits


def _prepare(splits: DataSplits, config: Config, seed: int) -> tuple[DataSplits, bool]:
    dequantize = config.data.dequantize
    if dequantize is None:
        dequantize = splits.discrete or bool(np.all(splits.train == np.round(splits.train)))
        if dequantize:
            warnings.warn(
                f"every training value of {splits.name} is an integer: adding U[0, 1) dequantisation noise "
                "(set data.dequantize: false to fit the values as they are)",
                stacklevel=2,
            )
    if dequantize:
        splits = dataclasses.replace(
            splits,
            val=dequantize_fixed(splits.val, seed + 1),
            test=dequantize_fixed(splits.test, seed + 2),
            info=dict(splits.info, dequantized=True),
        )
    return splits, bool(dequantize)


@contextlib.contextmanager
def quiet_fit_warnings() -> Iterator[None]:
    """Silence Lightning's warnings that do not apply to our runs during `trainer.fit`: tensor datasets need
    no workers, metrics are logged as we intend, and our datamodules do resume mid-epoch (`ResumableBatches`),
    which Lightning's check of the loader itself cannot see."""
    with warnings.catch_warnings():
        for message in (
            ".*does not have many workers.*",
            ".*sync_dist=True.*",
            ".*smaller than the logging interval.*",
            ".*could not find the monitored key.*",
            ".*isinstance\\(treespec, LeafSpec\\).*",
            ".*resuming from a checkpoint that ended before the epoch ended.*",
        ):
            warnings.filterwarnings("ignore", message=message)
        yield


def make_trainer(
    config: Config,
    run_dir: Path,
    print_callback: Optional[Callback] = None,
    resume: Optional[Path] = None,
) -> L.Trainer:
    """The Lightning Trainer of a run (tabular or image).

    Best and last checkpoints on `val_nll` in `run_dir/checkpoints`, the non-finite guard, early stopping,
    the loggers, the validation interval, and the config's `trainer` arguments (deterministic by default on
    CPU). `print_callback` reports validations when the progress bar is off. `resume`: the checkpoint the run
    continues from (the CSV log keeps its rows up to that checkpoint's step).
    """
    train = config.train
    trainer_kwargs = trainer_arguments(config.trainer)
    if "deterministic" not in trainer_kwargs and _is_cpu_run(trainer_kwargs):
        trainer_kwargs["deterministic"] = True
    trainer_kwargs.setdefault("log_every_n_steps", 10)
    trainer_kwargs.setdefault("enable_model_summary", False)
    trainer_kwargs.setdefault("num_sanity_val_steps", 0)
    monitor = "val_nll"
    checkpoint = RunCheckpoint(
        dirpath=str(run_dir / "checkpoints"),
        filename="best",
        monitor=monitor,
        mode="min",
        save_top_k=1,
        save_last=True,
        enable_version_counter=False,
    )
    callbacks: list[Callback] = [checkpoint, *safety_callbacks()]
    if train.early_stopping_patience is not None:
        callbacks.append(
            EarlyStopping(
                monitor=monitor,
                mode="min",
                patience=train.early_stopping_patience,
                check_finite=True,
                check_on_train_epoch_end=False,  # decide after validations only
            )
        )
    if not config.output.progress_bar and print_callback is not None:
        callbacks.append(print_callback)
    validation = (
        {"val_check_interval": train.val_every_n_steps, "check_val_every_n_epoch": None}
        if train.val_every_n_steps is not None
        else {"check_val_every_n_epoch": 1}
    )
    loggers: Any = False
    if config.output.logger != "none":
        resume_step = int(read_checkpoint(resume)["global_step"]) if resume is not None else None
        loggers = make_loggers(run_dir, config.output.logger, resume_step)
    plugins = trainer_kwargs.pop("plugins", None) or []
    plugins = [*(plugins if isinstance(plugins, list) else [plugins]), AtomicCheckpointIO()]
    return L.Trainer(
        max_epochs=train.max_epochs,
        max_steps=train.max_steps,
        gradient_clip_val=train.gradient_clip,
        gradient_clip_algorithm="norm",
        callbacks=callbacks,
        logger=loggers,
        default_root_dir=str(run_dir),
        enable_progress_bar=config.output.progress_bar,
        use_distributed_sampler=False,
        plugins=plugins,
        **validation,
        **trainer_kwargs,
    )


def fit_flow(
    config: Config, splits: DataSplits, run_dir: Path, quiet: bool = False, resume: Optional[Path] = None
) -> FitOutcome:
    """Build the flow for `splits`, train it with Lightning into `run_dir`, restore the best weights.

    Returns on every rank; only rank 0 should evaluate and write outputs. `quiet` drops the per-validation
    lines printed when the progress bar is off. `resume`: a checkpoint to continue training from.
    """
    config = resolve_model(config)
    with torch_threads(config.train.num_threads):
        return _fit_flow(config, splits, run_dir, quiet, resume)


@contextlib.contextmanager
def torch_threads(threads: Optional[int]) -> Iterator[None]:
    """Run with `torch.set_num_threads(threads)` (no change when None), restoring the previous count."""
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _fit_flow(
    config: Config, splits: DataSplits, run_dir: Path, quiet: bool, resume: Optional[Path] = None
) -> FitOutcome:
    seed = config.seed
    L.seed_everything(seed, workers=True, verbose=False)
    splits, dequantize = _prepare(splits, config, seed)
    warn_about_columns(splits.train, splits.columns, dequantized=dequantize)
    features = splits.features
    mean = std = None
    if config.data.standardize:
        stats_source = dequantize_fixed(splits.train, seed) if dequantize else splits.train
        mean, std = standardization_of(stats_source, splits.columns)

    context = context_stats(splits, config.data.standardize)

    torch.manual_seed(seed)
    flow = build_flow(config.model, features, mean, std, context=context)
    record = model_record(config, features, splits.columns, standardized=mean is not None, context=context)

    train = config.train
    trainer = make_trainer(config, run_dir, None if quiet else _PrintValidation(), resume)
    checkpoint = trainer.checkpoint_callback

    # Data-dependent initialisation on the first global batch: the same rows on every rank, before DDP
    # wraps the model (so all ranks start from identical parameters).
    if train.actnorm_init:
        global_batch = train.batch_size * trainer.world_size
        first = next(iter(GlobalBatchSampler(splits.train.shape[0], global_batch, train.shuffle, seed)))
        first_rows = splits.train[first]
        if dequantize:
            first_rows = dequantize_fixed(first_rows, seed + 3)
        first_context = None if splits.train_context is None else splits.train_context[first]
        initialize_flow(
            flow,
            torch.as_tensor(first_rows, dtype=torch.get_default_dtype()),
            None
            if first_context is None
            else torch.as_tensor(first_context, dtype=torch.get_default_dtype()),
        )

    module = FlowModule(flow, train, mean, std, dequantize=dequantize, hparams=record, seed=seed)
    datamodule = TableDataModule(
        splits.train,
        splits.val,
        splits.test,
        batch_size=train.batch_size,
        eval_batch_size=train.eval_batch_size,
        shuffle=train.shuffle,
        seed=seed,
        num_workers=config.data.num_workers,
        context=None
        if context is None
        else {"train": splits.train_context, "val": splits.val_context, "test": splits.test_context},
    )
    with quiet_fit_warnings():
        trainer.fit(module, datamodule=datamodule, ckpt_path=resume, weights_only=True)

    best_path = Path(checkpoint.best_model_path) if checkpoint.best_model_path else None
    last = run_dir / "checkpoints" / "last.ckpt"  # (ddp_spawn leaves last_model_path unset in this process)
    if best_path is None and last.is_file():  # no validation ran: the final weights
        best_path = last
    best_score = float(checkpoint.best_model_score) if checkpoint.best_model_score is not None else None
    if best_path is not None and best_path.is_file():
        state = read_checkpoint(best_path, map_location=module.device)["state_dict"]
        module.load_state_dict(state)
    flow.eval()
    if best_score is None and splits.val.shape[0] > 0:  # training ended before any validation ran
        best_score = float(
            -np.mean(evaluate_log_prob(flow, splits.val, train.eval_batch_size, context=splits.val_context))
        )
    epochs, steps = int(trainer.current_epoch), int(trainer.global_step)
    if steps == 0 and last.is_file():  # ddp_spawn: the counters stayed in the workers
        saved = read_checkpoint(last)
        epochs, steps = int(saved.get("epoch", 0)), int(saved.get("global_step", 0))
    info = {
        "epochs": epochs,
        "steps": steps,
        "dequantized": dequantize,
        "world_size": int(trainer.world_size),
        "splits": splits,
    }
    return FitOutcome(flow, module, trainer, best_path, best_score, record, info)


@torch.no_grad()
def evaluate_log_prob(
    flow: torch.nn.Module, x: np.ndarray, batch_size: int = 4096, context: Optional[np.ndarray] = None
) -> np.ndarray:
    """Per-row log density `(n,)` (float64 numpy) of rows `x (n, D)` in data units, in batches; with
    `context (n, k)`, the log density of each row given its context row."""
    parameter = next(iter(flow.parameters()), None)
    buffer = next(iter(flow.buffers()), None)
    reference = parameter if parameter is not None else buffer
    device = reference.device if reference is not None else torch.device("cpu")
    dtype = reference.dtype if reference is not None else torch.float32
    was_training = flow.training
    flow.eval()
    out = []
    for start in range(0, x.shape[0], batch_size):
        rows = torch.as_tensor(x[start : start + batch_size], dtype=dtype, device=device)
        if context is None:
            out.append(flow.log_prob(rows).double().cpu().numpy())
        else:
            given = torch.as_tensor(context[start : start + batch_size], dtype=dtype, device=device)
            out.append(flow.log_prob(rows, given).double().cpu().numpy())
    flow.train(was_training)
    return np.concatenate(out) if out else np.zeros(0)


@torch.no_grad()
def draw_samples(
    flow: torch.nn.Module,
    n: int,
    seed: Optional[int] = None,
    batch_size: int = 10_000,
    context: Optional[np.ndarray] = None,
) -> np.ndarray:
    """`n` samples `(n, D)` float64 in data units (seeded with `seed` when given); with `context (m, k)`,
    `n` samples per context row, `(n, m, D)`."""
    reference = next(iter(flow.parameters()), None)
    device = reference.device if reference is not None else torch.device("cpu")
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices, enabled=seed is not None):
        if seed is not None:
            torch.manual_seed(seed)
        given = None
        if context is not None:
            dtype = reference.dtype if reference is not None else torch.get_default_dtype()
            given = torch.as_tensor(context, dtype=dtype, device=device)
            batch_size = max(1, batch_size // max(1, given.shape[0]))
        chunks = [
            flow.sample((min(batch_size, n - start),), given).double().cpu().numpy()
            for start in range(0, n, batch_size)
        ]
    return np.concatenate(chunks) if chunks else np.zeros((0, 0))


def log_likelihood_metrics(log_prob: np.ndarray, prefix: str = "test") -> dict[str, Any]:
    """Mean log-likelihood, its standard error (1 std / sqrt(N)) and the NSF-paper error bar (2 std / sqrt(N))."""
    se = standard_error(log_prob)
    return {
        f"{prefix}_log_likelihood": float(np.mean(log_prob)),
        f"{prefix}_log_likelihood_se": se,
        f"{prefix}_log_likelihood_2se": 2.0 * se,
        f"{prefix}_rows": int(log_prob.shape[0]),
        f"{prefix}_nonfinite_rows": int(np.sum(~np.isfinite(log_prob))),
    }


def entropy_metrics(splits: DataSplits, test_log_likelihood: float) -> dict[str, Any]:
    if splits.entropy is None:
        return {}
    return {
        "entropy": float(splits.entropy),
        "entropy_se": None if splits.entropy_se is None else float(splits.entropy_se),
        "gap": float(-test_log_likelihood - splits.entropy),
    }


def write_samples(path: Path, samples: np.ndarray, columns: list[str]) -> Path:
    """Samples as CSV (header = column names) or NPY, chosen by the suffix; written atomically."""
    if path.suffix == ".npy":
        with atomic_open(path, "wb") as handle:
            np.save(handle, samples)
    elif path.suffix in (".csv", ".tsv"):
        delimiter = "," if path.suffix == ".csv" else "\t"
        with atomic_open(path, "w") as handle:
            np.savetxt(
                handle, samples, delimiter=delimiter, header=delimiter.join(columns), comments="", fmt="%.8g"
            )
    else:
        raise ValueError(f"output file must end in .csv, .tsv or .npy, got {path}")
    return path


def write_json_atomic(values: dict[str, Any], path: Path) -> Path:
    return atomic_write_text(path, json.dumps(values, indent=2, default=str) + "\n")


def count_parameters(flow: torch.nn.Module) -> int:
    return int(sum(p.numel() for p in flow.parameters() if p.requires_grad))


def _plots(run_dir: Path, flow: torch.nn.Module, splits: DataSplits, samples: np.ndarray) -> list[str]:
    try:
        from flows.training.plots import write_plots
    except ImportError as error:
        print(f"plots skipped: {error}", file=sys.stderr)
        return []
    try:
        if splits.context_columns:
            from flows.training.conditional_plots import write_conditional_plots

            written = write_conditional_plots(run_dir, flow, splits)
        else:
            written = write_plots(run_dir, flow, {"train": splits.train, "test": splits.test}, samples)
    except ImportError as error:
        print(f"plots skipped: {error}", file=sys.stderr)
        return []
    except Exception as error:  # a plotting failure must not lose a finished training run
        warnings.warn(f"writing plots failed: {type(error).__name__}: {error}", stacklevel=2)
        return []
    return [str(p) for p in written]


def format_summary(metrics: dict[str, Any]) -> str:
    lines = [
        f"test log-likelihood: {metrics['test_log_likelihood']:.4f} +- {metrics['test_log_likelihood_2se']:.4f} nats "
        f"(2 standard errors, {metrics['test_rows']} rows)"
    ]
    if "entropy" in metrics:
        lines.append(
            f"true entropy: {metrics['entropy']:.4f} nats; gap (test NLL - entropy): {metrics['gap']:.4f} nats"
        )
    lines.append(
        f"parameters: {metrics['n_params']}; epochs: {metrics['epochs']}; steps: {metrics['steps']}; "
        f"wall time: {metrics['wall_time']:.1f} s; run dir: {metrics['run_dir']}"
    )
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------
# The entry point


def run(config: Union[Config, dict[str, Any]], verbose: bool = True, resume: bool = False) -> RunResult:
    """Train and evaluate one config; returns metrics (rank 0) and writes the run directory.

    The run directory holds `config.yaml` (the resolved config), `checkpoints/best.ckpt` and `last.ckpt`,
    `metrics.csv` (the training log), `metrics.json` (the final metrics), `samples.csv` and `plots/`.
    Metrics: `test_log_likelihood` (mean over the test rows, nats, data units), `test_log_likelihood_se`
    (std / sqrt(N)), `test_log_likelihood_2se` (2 std / sqrt(N), the NSF paper's error bar),
    `best_val_nll`, `entropy` / `entropy_se` / `gap` (test NLL - entropy) when the true density is known,
    `n_params`, `epochs`, `steps`, `wall_time` (s), `run_dir`.
    `resume=True` continues from `run_dir/checkpoints/last.ckpt` when it exists (needs `output.name`).
    """
    config = parse_config(config)
    if config.data.dataset.startswith("image:"):
        try:
            from flows.training.image_run import run_image
        except ImportError as error:
            raise ConfigError(
                f"image datasets need flows.training.image_run, which failed to import: {error}"
            ) from error
        with torch_threads(config.train.num_threads):
            return run_image(config, verbose=verbose, resume=resume)
    with torch_threads(config.train.num_threads):
        return _run(config, verbose, resume)


def validate(config: Config) -> None:
    """Check what parse_config cannot: the model options against the model's signature and the trainer keys
    against lightning.Trainer (image models are checked by flows.training.image_data)."""
    if not config.data.dataset.startswith("image:"):
        check_model_options(config.model)
    trainer_arguments(config.trainer)


def _run(config: Config, verbose: bool, resume: bool = False) -> RunResult:
    start = time.perf_counter()
    validate(config)
    config = resolve_model(config)
    with claim_run_dir(config, config.model, resume, verbose) as started:
        if started.finished is not None:
            return finished_result(started, config)
        return _train_and_evaluate(config, started, verbose, start)


def _train_and_evaluate(config: Config, started: RunStart, verbose: bool, start: float) -> RunResult:
    run_dir, resume_from, worker = started.run_dir, started.resume_from, started.worker
    if not worker:
        write_yaml_atomic(config.to_dict(), run_dir / "config.yaml")
    splits = with_context(load_splits(config.data, config.seed), config.data.context_columns)
    previous = os.environ.get(RUN_DIR_ENV)
    os.environ[RUN_DIR_ENV] = str(run_dir.resolve())
    try:
        outcome = fit_flow(config, splits, run_dir, resume=resume_from)
    finally:
        if not worker:
            if previous is None:
                os.environ.pop(RUN_DIR_ENV, None)
            else:
                os.environ[RUN_DIR_ENV] = previous
    if not outcome.trainer.is_global_zero:
        return RunResult({}, run_dir, outcome.best_checkpoint, outcome.flow, config, is_global_zero=False)

    flow = outcome.flow
    splits = outcome.info["splits"]
    log_prob = evaluate_log_prob(flow, splits.test, config.train.eval_batch_size, context=splits.test_context)
    metrics: dict[str, Any] = {"dataset": config.data.dataset, "model": config.model["name"]}
    metrics.update(log_likelihood_metrics(log_prob))
    metrics.update(entropy_metrics(splits, metrics["test_log_likelihood"]))
    metrics.update(
        {
            "best_val_nll": outcome.best_val_nll,
            "n_params": count_parameters(flow),
            "features": splits.features,
            "train_rows": int(splits.train.shape[0]),
            "epochs": outcome.info["epochs"],
            "steps": outcome.info["steps"],
            "world_size": outcome.info["world_size"],
            "dequantized": outcome.info["dequantized"],
            "seed": config.seed,
        }
    )
    if splits.context_columns:
        metrics["context_columns"] = list(splits.context_columns)
        metrics["context_features"] = splits.context_features
    samples = None
    if config.output.samples > 0 and splits.context_columns:  # one sample at each of the first test contexts
        samples = sample_at_contexts(
            flow, splits, config.output.samples, config.seed, run_dir / "samples.csv"
        )
        metrics["samples_nonfinite_rows"] = int(np.sum(~np.isfinite(samples).all(axis=1)))
    elif config.output.samples > 0:
        samples = draw_samples(flow, config.output.samples, seed=config.seed)
        write_samples(run_dir / "samples.csv", samples, splits.columns)
        metrics["samples_nonfinite_rows"] = int(np.sum(~np.isfinite(samples).all(axis=1)))
    if config.output.plots and samples is not None:
        metrics["plots"] = _plots(run_dir, flow, splits, samples)
    metrics["wall_time"] = time.perf_counter() - start
    metrics["run_dir"] = str(run_dir)
    metrics["checkpoint"] = None if outcome.best_checkpoint is None else str(outcome.best_checkpoint)
    write_json_atomic(metrics, run_dir / "metrics.json")
    if verbose:
        print(format_summary(metrics), flush=True)
    return RunResult(metrics, run_dir, outcome.best_checkpoint, flow, config)


def evaluate_checkpoint(config: Config, checkpoint: Union[str, Path], verbose: bool = True) -> dict[str, Any]:
    """Evaluate a checkpoint on the test split of `config`'s data (`flows test`)."""
    from flows.training.checkpoints import load_model

    loaded = load_model(checkpoint)
    splits = with_context(load_splits(config.data, config.seed), config.data.context_columns)
    splits, _ = _prepare(splits, config, config.seed)
    if splits.features != loaded.features:
        raise ValueError(f"the checkpoint models {loaded.features} features, the data has {splits.features}")
    if splits.context_columns != loaded.context_columns:
        raise ValueError(
            f"the checkpoint conditions on the columns {loaded.context_columns}, the data's "
            f"data.context_columns give {splits.context_columns}"
        )
    log_prob = evaluate_log_prob(
        loaded.flow, splits.test, config.train.eval_batch_size, context=splits.test_context
    )
    metrics: dict[str, Any] = {"dataset": config.data.dataset, "checkpoint": str(checkpoint)}
    metrics.update(log_likelihood_metrics(log_prob))
    metrics.update(entropy_metrics(splits, metrics["test_log_likelihood"]))
    if verbose:
        line = (
            f"test log-likelihood: {metrics['test_log_likelihood']:.4f} +- {metrics['test_log_likelihood_2se']:.4f} "
            f"nats (2 standard errors, {metrics['test_rows']} rows)"
        )
        if "gap" in metrics:
            line += f"\ntrue entropy: {metrics['entropy']:.4f} nats; gap: {metrics['gap']:.4f} nats"
        print(line, flush=True)
    return metrics
