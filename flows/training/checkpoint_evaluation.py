"""`flows test` for tables: a checkpoint's test log-likelihood on the test split of a config's data.

Needs no Lightning (only the checkpoint, the data and the flow), so the command starts in a few seconds.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Union

from flows.training.config import Config, ConfigError
from flows.training.context import with_context
from flows.training.data import load_splits
from flows.training.evaluation import entropy_metrics, evaluate_log_prob, log_likelihood_metrics
from flows.training.table_splits import prepare_splits

__all__ = ["evaluate_checkpoint"]


def evaluate_checkpoint(config: Config, checkpoint: Union[str, Path], verbose: bool = True) -> dict[str, Any]:
    """Evaluate a checkpoint on the test split of `config`'s data (`flows test`)."""
    from flows.training.checkpoints import load_model

    loaded = load_model(checkpoint)
    if loaded.config.target.name:  # (its config's data section is the unused default, toy:moons)
        raise ConfigError(
            f"flows test evaluates a model of data on its test split; {checkpoint} is a sampler of the target "
            f"{loaded.config.target.name!r}, trained on no data: its metrics are in the run's metrics.json, and "
            "flows sample --method importance draws weighted samples"
        )
    splits = with_context(load_splits(config.data, config.seed), config.data.context_columns)
    splits = prepare_splits(splits, config, config.seed)
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
