"""The sampling task: a flow trained to sample an unnormalised target (`target:` section, no data).

The objective is `train.objective` (reverse_kl, reverse_kl_path, or maximum_likelihood on the target's exact
samples); evaluation draws `target.evaluation_samples` fixed-seed flow samples and reports the normalised
ESS, the log-normaliser estimate with its standard error (and its error against the exact log Z where the
target knows it), the Pareto k-hat of the weights and the fraction of zero-density samples.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

import numpy as np
import torch

from flows.diagnostics import weight_summary
from flows.flow import Flow
from flows.targets.base import Target
from flows.targets.registry import make_target
from flows.training.checkpoints import model_record
from flows.training.config import Config, ConfigError, parse_config
from flows.training.evaluation import write_samples
from flows.training.fitting import Fitted
from flows.training.models import build_flow, resolve_model
from flows.training.objectives import Objective
from flows.training.registry import check_model_options
from flows.training.sampling_module import SamplingDataModule, SamplingModule
from flows.training.sampling_objectives import sampling_objective, seeded, validation_log_weights
from flows.training.tasks.base import Task, guarded_plots
from flows.training.trainer_options import trainer_arguments

__all__ = ["SamplingData", "SamplingTask", "evaluate_sampler", "is_sampling_config"]

#: training steps per "epoch" when train.max_steps is unlimited
STEPS_PER_EPOCH = 1000
#: flow samples drawn for the figures
PLOT_SAMPLES = 5000
#: seed offset of the final evaluation samples
EVALUATION_SEED = 2_000_029


def is_sampling_config(values: Union[Config, Mapping[str, Any]]) -> bool:
    """Whether a config trains against a target (`target.name` set)."""
    if isinstance(values, Config):
        return bool(values.target.name)
    section = values.get("target") if isinstance(values, Mapping) else None
    return isinstance(section, Mapping) and bool(section.get("name"))


@dataclass
class SamplingData:
    """The target of a sampling run (its "data")."""

    target: Target

    @property
    def features(self) -> int:
        return int(self.target.features)


def evaluate_sampler(flow: Flow, target: Target, n: int, seed: int, batch: int = 8192) -> dict[str, Any]:
    """ESS, log Z ± SE (and its error against the target's exact log Z), Pareto k-hat from `n` flow samples."""
    was_training = flow.training
    flow.eval()
    chunks = [
        validation_log_weights(flow, target, min(batch, n - start), seed + i)
        for i, start in enumerate(range(0, n, batch))
    ]
    flow.train(was_training)
    metrics: dict[str, Any] = weight_summary(torch.cat(chunks))
    truth = getattr(target, "log_normalizer", None)
    if truth is not None:
        metrics["log_z_true"] = float(truth)
        metrics["log_z_error"] = metrics["log_z"] - float(truth)
        se = metrics["log_z_se"]
        metrics["log_z_error_in_se"] = abs(metrics["log_z_error"]) / se if se > 0 else math.inf
    return metrics


def _plots(run_dir: Path, flow: Flow, target: Target, x: torch.Tensor, seed: int) -> list[str]:
    def write() -> list[Path]:
        from flows.training.target_plots import write_target_plots

        return write_target_plots(run_dir, flow, target, x.cpu(), seed)

    return guarded_plots(write)


class SamplingTask(Task):
    """Targets: a `flows.Flow` of the target's dimension, trained by a sampling objective."""

    def resolve(self, values: Union[Config, Mapping[str, Any]]) -> Config:
        config = parse_config(values)
        if not config.target.name:
            raise ConfigError("a sampling run needs target.name (a built-in target or 'module:attr')")
        if config.image:
            raise ConfigError("config key 'image': the image section applies to image datasets only")
        check_model_options(config.model)
        trainer_arguments(config.trainer)
        return resolve_model(config)

    def load_data(self, config: Config) -> SamplingData:
        section = config.target
        try:
            target = make_target(section.name, section.features, **section.options)
        except ValueError as error:
            raise ConfigError(f"config section 'target': {error}") from error
        return SamplingData(target)

    def build(self, config: Config, data: SamplingData) -> tuple[Flow, dict[str, Any]]:
        features = data.features
        torch.manual_seed(config.seed)
        scale = config.target.scale
        standardized = scale != 1.0
        if standardized:  # x = scale * (flow output): a fixed first bijector, stored with the weights
            flow = build_flow(config.model, features, np.zeros(features), np.full(features, scale))
        else:
            flow = build_flow(config.model, features)
        record = model_record(config, features, [f"x{i}" for i in range(features)], standardized=standardized)
        return flow, record

    def objective(self, config: Config) -> Objective:
        section = config.target
        return sampling_objective(
            config.train.objective, section.anneal_fraction, section.anneal_start, section.scale
        )

    def initialize(self, model: Flow, data: SamplingData, config: Config, global_batch: int) -> None:
        """No data-dependent initialisation: the flow starts from its base distribution."""

    def module(
        self, model: Flow, config: Config, data: SamplingData, record: dict[str, Any], objective: Objective
    ) -> SamplingModule:
        return SamplingModule(
            model, config.train, data.target, hparams=record, seed=config.seed, objective=objective
        )

    def datamodule(self, data: SamplingData, config: Config) -> SamplingDataModule:
        train = config.train
        steps = train.max_steps if train.max_steps > 0 else STEPS_PER_EPOCH
        return SamplingDataModule(
            steps, train.batch_size, config.target.validation_samples, train.eval_batch_size
        )

    def evaluate(self, fitted: Fitted, config: Config) -> dict[str, Any]:
        data: SamplingData = fitted.info["data"]
        metrics = {"dataset": f"target:{config.target.name}", "target": config.target.name}
        metrics.update(
            evaluate_sampler(
                fitted.model, data.target, config.target.evaluation_samples, config.seed + EVALUATION_SEED
            )
        )
        metrics.update(
            {
                "best_val_reverse_kl": fitted.best_val,
                "features": data.features,
                "objective": config.train.objective,
            }
        )
        return metrics

    def write_outputs(self, fitted: Fitted, config: Config, run_dir: Path) -> dict[str, Any]:
        """`samples.csv`: `output.samples` flow samples and their log importance weights; with `output.plots`,
        the figures of `flows.training.target_plots` (a 2-D target's density beside the learned one)."""
        data: SamplingData = fitted.info["data"]
        n = config.output.samples
        drawn = max(n, PLOT_SAMPLES if config.output.plots else 0)
        if drawn <= 0:
            return {}
        fitted.model.eval()
        with torch.no_grad(), seeded(config.seed, torch.device("cpu")):
            x, log_q = fitted.model.sample_and_log_prob((drawn,))
            log_p = data.target.log_prob(x)
        outputs: dict[str, Any] = {}
        if n > 0:
            log_w = torch.where(torch.isfinite(log_p), log_p - log_q, -math.inf)
            table = torch.cat([x[:n], log_w[:n, None]], 1).double().cpu().numpy()
            columns = [f"x{i}" for i in range(data.features)] + ["log_weight"]
            write_samples(run_dir / "samples.csv", table, columns)
            outputs["samples_file"] = str(run_dir / "samples.csv")
        if config.output.plots:
            outputs["plots"] = _plots(run_dir, fitted.model, data.target, x, config.seed)
        return outputs

    def summary(self, metrics: Mapping[str, Any]) -> str:
        lines = [
            f"target {metrics['target']}: ESS {metrics['ess']:.4f} (normalised, {metrics['samples']} samples); "
            f"log Z {metrics['log_z']:.4f} +- {metrics['log_z_se']:.4f}; Pareto k {metrics['pareto_k']:.3f}"
        ]
        if "log_z_true" in metrics:
            lines.append(
                f"exact log Z {metrics['log_z_true']:.4f}: error {metrics['log_z_error']:+.4f} "
                f"({metrics['log_z_error_in_se']:.1f} standard errors)"
            )
        lines.append(
            f"parameters: {metrics['n_params']}; steps: {metrics['steps']}; wall time: {metrics['wall_time']:.1f} s; "
            f"run dir: {metrics['run_dir']}"
        )
        return "\n".join(lines)
