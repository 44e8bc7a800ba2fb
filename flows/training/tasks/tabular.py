"""The tabular task: a flow fitted to the rows of a table (nats per row), with samples and plots.

Also what `DensityEstimator` shares with it: `fit_flow` (training on given splits, without a run directory of
its own). The rows are prepared by `flows.training.table_splits`, which `flows test`
(`flows.training.checkpoint_evaluation`) uses too, without Lightning.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Optional, Union

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback

from flows.flow import Flow
from flows.training.checkpoints import model_record
from flows.training.columns import ColumnPlan
from flows.training.config import Config, ConfigError, parse_config
from flows.training.context import context_stats, sample_at_contexts, with_context
from flows.training.data import DataSplits, dequantize_fixed, load_splits
from flows.training.evaluation import (
    dequantized_log_prob,
    draw_samples,
    entropy_metrics,
    evaluate_log_prob,
    log_likelihood_metrics,
    write_samples,
)
from flows.training.fitting import Fitted, train
from flows.training.mixture_base import fit_mixture_base, uses_mixture_base
from flows.training.models import build_flow, resolve_model, standardization_of
from flows.training.module import FlowModule, TableDataModule
from flows.training.objectives import Objective
from flows.training.registry import check_model_options
from flows.training.safety import warn_about_columns
from flows.training.standardization import check_table_resolution
from flows.training.table_splits import prepare_splits
from flows.training.tasks.base import Task, guarded_plots
from flows.training.trainer import torch_threads
from flows.training.trainer_options import trainer_arguments, training_dtype

__all__ = ["TabularTask", "fit_flow", "format_summary"]


class _PrintValidation(Callback):
    """A one-line validation summary when the progress bar is off."""

    def on_validation_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        value = trainer.callback_metrics.get("val_nll")
        if trainer.is_global_zero and value is not None and not trainer.sanity_checking:
            print(
                f"epoch {trainer.current_epoch} step {trainer.global_step}: val_nll {float(value):.4f}",
                flush=True,
            )


def _check_learned_noise(plan: ColumnPlan, config: Config) -> None:
    """A ConfigError for training noise on the data (mollification, noise_std) with learned dequantisation:
    that noise is added to the table's columns, categorical codes included."""
    train = config.train
    if any(plan.learned) and (train.mollification.fraction > 0 or train.noise_std > 0):
        raise ConfigError(
            "train.mollification and train.noise_std add noise to every column of the table, which argmax "
            "(categorical_columns) and variational (data.dequantization: variational) dequantisation do not "
            "allow; drop them, or the categorical columns"
        )


def _plan(data: DataSplits) -> ColumnPlan:
    """The column plan of prepared splits (a plan with nothing declared for splits prepared without one)."""
    plan = data.info.get("columns_plan")
    return plan if plan is not None else ColumnPlan.from_record(None, data.features)


def _check_resolution(rows: np.ndarray, columns: list[str], data: DataSplits, config: Config) -> None:
    """A ValueError naming the modelled and context columns that the training dtype cannot resolve."""
    dtype = training_dtype(config.trainer)
    check_table_resolution(rows, columns, dtype)
    if data.train_context is not None:
        check_table_resolution(data.train_context, list(data.context_columns), dtype, "context columns")


class TabularTask(Task):
    """Tables: `DataSplits` of float64 rows, a `flows.Flow` with the standardisation folded in, nats per row."""

    def resolve(self, values: Union[Config, Mapping[str, Any]]) -> Config:
        config = parse_config(values)
        if config.image:
            raise ConfigError(
                "config key 'image': the image section applies to image datasets only (data.dataset: "
                f"image:<name>), got data.dataset {config.data.dataset!r}"
            )
        check_model_options(config.model)
        trainer_arguments(config.trainer)
        return resolve_model(config)

    def load_data(self, config: Config) -> DataSplits:
        return with_context(load_splits(config.data, config.seed), config.data.context_columns)

    def prepare_data(self, config: Config, data: DataSplits) -> DataSplits:
        return prepare_splits(data, config, config.seed)

    def build(self, config: Config, data: DataSplits) -> tuple[Flow, dict[str, Any]]:
        plan = _plan(data)
        warn_about_columns(data.train, data.columns, dequantized=plan.discrete)
        _check_learned_noise(plan, config)
        support = plan.support()
        mean = std = None
        rows = dequantize_fixed(data.train, config.seed, plan.discrete) if plan.dequantized else data.train
        _check_resolution(rows[:, plan.kept], [data.columns[j] for j in plan.kept], data, config)
        if config.data.standardize:
            stats_source = plan.model_rows(rows)
            if support is not None:  # standardise what the support maps the rows to
                with torch.no_grad():
                    stats_source = support.double()(torch.as_tensor(stats_source))[0].numpy()
                support = support.to(torch.get_default_dtype())
            kept = len(plan.kept)  # argmax coordinates: already standard (q starts near N(0, 1))
            mean, std = standardization_of(stats_source[:, :kept], [data.columns[j] for j in plan.kept])
            extra = plan.model_features - kept
            mean, std = np.concatenate([mean, np.zeros(extra)]), np.concatenate([std, np.ones(extra)])
        context = context_stats(data, config.data.standardize)
        torch.manual_seed(config.seed)
        flow = build_flow(config.model, plan.model_features, mean, std, context=context, support=support)
        kept_rows = rows[:, plan.kept]
        flow = plan.wrap(flow, kept_rows.mean(axis=0), np.maximum(kept_rows.std(axis=0), 1e-12))
        record = model_record(
            config, data.features, data.columns, standardized=mean is not None, context=context, plan=plan
        )
        return flow, record

    def initialize(self, model: Flow, data: DataSplits, config: Config, global_batch: int) -> None:
        first = self.first_global_batch(data.train.shape[0], global_batch, config)
        rows = data.train[first]
        plan = _plan(data)
        if plan.dequantized:
            rows = dequantize_fixed(rows, config.seed + 3, plan.mask)
        dtype = torch.get_default_dtype()
        context = (
            None if data.train_context is None else torch.as_tensor(data.train_context[first], dtype=dtype)
        )
        model.initialize(torch.as_tensor(rows, dtype=dtype), context)

    def fit_base(
        self, model: Flow, data: DataSplits, config: Config, record: dict[str, Any]
    ) -> Optional[float]:
        """`model.base: gmm`: the mixture fitted to the training rows' latents (`fit_mixture_base`), its
        number of components written into `record`; returns the validation NLL of the fitted start."""
        if not uses_mixture_base(config.model):
            return None
        plan = _plan(data)
        if any(plan.learned):
            raise ConfigError(
                "model.base: expected a base other than 'gmm' with learned dequantisation (argmax categorical "
                "columns or data.dequantization: variational): the mixture is fitted to fixed training rows, "
                "and these rows are drawn by a q that trains with the flow; got base 'gmm'"
            )
        rows = dequantize_fixed(data.train, config.seed, plan.mask) if plan.dequantized else data.train
        components = fit_mixture_base(
            model, rows, config.seed, config.model.get("components"), context=data.train_context
        )
        record["config"]["model"]["components"] = components
        if data.val.shape[0] == 0:
            return None
        model.eval()
        log_prob = evaluate_log_prob(model, data.val, config.train.eval_batch_size, context=data.val_context)
        model.train()
        return float(-np.mean(log_prob))

    def module(
        self,
        model: Flow,
        config: Config,
        data: DataSplits,
        record: dict[str, Any],
        objective: Objective,
    ) -> FlowModule:
        return FlowModule(
            model,
            config.train,
            dequantize=[bool(v) for v in _plan(data).mask],
            hparams=record,
            seed=config.seed,
            objective=objective,
        )

    def datamodule(self, data: DataSplits, config: Config) -> TableDataModule:
        train = config.train
        return TableDataModule(
            data.train,
            data.val,
            data.test,
            batch_size=train.batch_size,
            eval_batch_size=train.eval_batch_size,
            shuffle=train.shuffle,
            seed=config.seed,
            num_workers=config.data.num_workers,
            context=None
            if data.train_context is None
            else {"train": data.train_context, "val": data.val_context, "test": data.test_context},
        )

    def progress_printer(self) -> Callback:
        return _PrintValidation()

    def evaluate(self, fitted: Fitted, config: Config) -> dict[str, Any]:
        splits: DataSplits = fitted.info["data"]
        batch = config.train.eval_batch_size
        if any(_plan(splits).learned):  # learned dequantisation: the importance-weighted bound, as scored
            no_noise = np.zeros(splits.features)  # (the uniform columns' fixed noise is on the split already)
            log_prob = dequantized_log_prob(fitted.model, splits.test, no_noise, context=splits.test_context)
        else:
            log_prob = evaluate_log_prob(fitted.model, splits.test, batch, context=splits.test_context)
        metrics = log_likelihood_metrics(log_prob)
        metrics.update(entropy_metrics(splits, metrics["test_log_likelihood"]))
        best = fitted.best_val
        if best is None and splits.val.shape[0] > 0:  # training ended before any validation ran
            best = float(
                -np.mean(evaluate_log_prob(fitted.model, splits.val, batch, context=splits.val_context))
            )
        metrics.update(
            {
                "best_val_nll": best,
                "features": splits.features,
                "train_rows": int(splits.train.shape[0]),
                "dequantized": bool(splits.info.get("dequantized")),
            }
        )
        if splits.context_columns:
            metrics["context_columns"] = list(splits.context_columns)
            metrics["context_features"] = splits.context_features
        return metrics

    def write_outputs(self, fitted: Fitted, config: Config, run_dir: Path) -> dict[str, Any]:
        splits: DataSplits = fitted.info["data"]
        metrics: dict[str, Any] = {}
        if config.output.samples <= 0:
            return metrics
        if splits.context_columns:  # one sample at each of the first test contexts
            path = run_dir / "samples.csv"
            samples = sample_at_contexts(fitted.model, splits, config.output.samples, config.seed, path)
        else:
            samples = _plan(splits).decode(
                draw_samples(fitted.model, config.output.samples, seed=config.seed)
            )
            write_samples(run_dir / "samples.csv", samples, splits.columns, _plan(splits).labels)
        metrics["samples_nonfinite_rows"] = int(np.sum(~np.isfinite(samples).all(axis=1)))
        if config.output.plots:
            metrics["plots"] = _plots(run_dir, fitted.model, splits, samples)
        return metrics

    def summary(self, metrics: Mapping[str, Any]) -> str:
        return format_summary(metrics)


def _plots(run_dir: Path, flow: torch.nn.Module, splits: DataSplits, samples: np.ndarray) -> list[str]:
    def write() -> list[Path]:
        from flows.training.plots import write_plots

        if splits.context_columns:
            from flows.training.conditional_plots import write_conditional_plots

            return write_conditional_plots(run_dir, flow, splits)
        plan = _plan(splits)  # the data as the samples show it: integers, category values
        shown = {"train": plan.decode(splits.train), "test": plan.decode(splits.test)}
        return write_plots(run_dir, flow, shown, samples, columns=splits.columns)

    return guarded_plots(write)


def format_summary(metrics: Mapping[str, Any]) -> str:
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


def fit_flow(
    config: Config,
    splits: DataSplits,
    run_dir: Optional[Path],
    quiet: bool = False,
    resume: Optional[Path] = None,
) -> Fitted:
    """Train a table flow on given splits into `run_dir` (no lock, no outputs): `DensityEstimator`'s fit.
    `run_dir=None` writes no files at all (the best weights are kept in memory).

    Returns on every rank, the best validation weights restored.
    """
    task = TabularTask()
    config = resolve_model(config)
    with torch_threads(config.train.num_threads):
        return train(task, config, splits, run_dir, resume, quiet=quiet)
