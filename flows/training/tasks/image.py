"""The image task: a `DequantizedFlow` on integer images (bits/dim), with sample grids and reconstructions.

`ImageTask` runs through the one pipeline (see `flows.training.image_data` for the `image` config section,
the data and the models, `flows.training.image_modules` for their Lightning modules); `flows test` and
`flows sample` read image checkpoints with `flows.training.image_checkpoints`, without Lightning.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Union

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback

from flows.bijectors.autoregressive import guided
from flows.datasets.images import ImageSplits
from flows.dequantization import bits_per_dim
from flows.flow import Flow
from flows.training.config import (
    Config,
    ConfigError,
)
from flows.training.fitting import Fitted
from flows.training.image_data import (
    ImageOptions,
    build_image_model,
    evaluate_bound,
    is_image_config,
    load_image_splits,
    split_image_options,
)
from flows.training.image_modules import ImageDataModule, ImageFlowModule
from flows.training.images import one_hot, write_reconstructions, write_sample_grids
from flows.training.objectives import Objective
from flows.training.registry import check_model_options, with_model_defaults
from flows.training.tasks.base import Task
from flows.training.trainer_options import trainer_arguments

__all__ = [
    "format_image_summary",
    "ImageTask",
    "is_image_config",
]


# -------------------------------------------------------------------------------------------------- runs
def _record(plain_config: dict[str, Any], splits: ImageSplits, num_classes: int) -> dict[str, Any]:
    return {
        "config": plain_config,
        "image": {
            "shape": list(splits.shape),
            "num_levels": int(splits.num_levels),
            "num_classes": int(num_classes),
            "dataset": splits.name,
        },
        # Keys the tabular loader reads; an image checkpoint is loaded with `load_image_model`.
        "features": int(splits.num_dims),
        "columns": [],
        "standardized": False,
    }


class ImageTask(Task):
    """Integer images: `ImageSplits`, a `DequantizedFlow` whose `log_prob` is the discrete bound, bits/dim."""

    def __init__(self) -> None:
        self.options = ImageOptions()
        self.plain: dict[str, Any] = {}
        self.num_classes = 0

    def resolve(self, values: Union[Config, Mapping[str, Any]]) -> Config:
        config, options, plain = split_image_options(values)
        _check_tabular_keys_unset(config)
        check_model_options(config.model, "image")
        trainer_arguments(config.trainer)
        # Saved configs and checkpoints carry every model option, defaults included.
        model = with_model_defaults(config.model, "image")
        self.options, self.plain = options, dict(plain, model=model)
        return dataclasses.replace(config, model=model)

    def plain_config(self, config: Config) -> dict[str, Any]:
        return self.plain

    def load_data(self, config: Config) -> ImageSplits:
        splits = load_image_splits(config, self.options)
        self.num_classes = splits.num_classes if self.options.conditional else 0
        return splits

    def build(self, config: Config, data: ImageSplits) -> tuple[Flow, dict[str, Any]]:
        model = build_image_model(
            config.model, self.options, data.shape, data.num_levels, data.num_classes, config.train.noise_std
        )
        return model, _record(self.plain, data, self.num_classes)

    def initialize(self, model: Flow, data: ImageSplits, config: Config, global_batch: int) -> None:
        first = self.first_global_batch(data.train.shape[0], global_batch, config)
        labels = torch.as_tensor(data.train_labels[first])
        context = one_hot(labels, self.num_classes) if self.num_classes else None
        model.initialize(torch.as_tensor(data.train[first]), context)

    def module(
        self,
        model: Flow,
        config: Config,
        data: ImageSplits,
        record: dict[str, Any],
        objective: Objective,
    ) -> ImageFlowModule:
        return ImageFlowModule(
            model,  # type: ignore[arg-type]
            config.train,
            self.num_classes,
            self.options.eval_samples,
            hparams=record,
            validation_seed=config.seed + 7,
            objective=objective,
            class_dropout=self.options.class_dropout,
        )

    def datamodule(self, data: ImageSplits, config: Config) -> ImageDataModule:
        train = config.train
        return ImageDataModule(data, train.batch_size, train.eval_batch_size, train.shuffle, config.seed)

    def progress_printer(self) -> Callback:
        return _PrintBitsPerDim()

    def evaluate(self, fitted: Fitted, config: Config) -> dict[str, Any]:
        splits: ImageSplits = fitted.info["data"]
        options, model, seed = self.options, fitted.model, config.seed
        metrics: dict[str, Any] = {
            "dequantization": options.dequantization,
            "preprocessing": options.preprocessing,
            "conditional": options.conditional,
            "shape": list(splits.shape),
            "num_levels": splits.num_levels,
        }
        for split in ("val", "test"):
            images, labels = getattr(splits, split), getattr(splits, f"{split}_labels")
            log_p = evaluate_bound(
                model,
                images,
                labels,
                self.num_classes,
                config.train.eval_batch_size,
                options.eval_samples,
                seed + 1,
            )
            nll = -log_p
            se = float(np.std(nll, ddof=1) / math.sqrt(nll.shape[0])) if nll.shape[0] > 1 else float("nan")
            metrics.update(
                {
                    f"{split}_nll": float(nll.mean()),
                    f"{split}_nll_se": se,
                    f"{split}_bpd": float(bits_per_dim(float(nll.mean()), splits.num_dims)),
                    f"{split}_bpd_se": float(bits_per_dim(se, splits.num_dims)),
                    f"{split}_rows": int(nll.shape[0]),
                }
            )
        # The tabular results' column names, for the experiments runner: log-likelihood in nats per image.
        metrics["test_log_likelihood"] = -metrics["test_nll"]
        metrics["test_log_likelihood_se"] = metrics["test_nll_se"]
        metrics["test_log_likelihood_2se"] = 2 * metrics["test_nll_se"]
        metrics["eval_samples"] = options.eval_samples
        if fitted.best_val is not None:
            metrics["best_val_nll"] = float(fitted.best_val)
            metrics["best_val_bpd"] = float(bits_per_dim(float(fitted.best_val), splits.num_dims))
        metrics["train_rows"] = int(splits.train.shape[0])
        metrics["train_seconds"] = fitted.info["fit_seconds"]
        return metrics

    def write_outputs(self, fitted: Fitted, config: Config, run_dir: Path) -> dict[str, Any]:
        splits: ImageSplits = fitted.info["data"]
        options, model = self.options, fitted.model
        with guided(model, options.guidance):
            grids = write_sample_grids(  # type: ignore[arg-type]
                model,
                run_dir / "samples",
                options.temperatures,
                options.grid_size,
                self.num_classes,
                config.seed,
            )
        metrics: dict[str, Any] = {"sample_grids": [str(p) for p in grids]}
        if options.reconstructions > 0:
            count = min(options.reconstructions, splits.test.shape[0])
            context = None
            if self.num_classes:
                context = one_hot(torch.as_tensor(splits.test_labels[:count]), self.num_classes)
            metrics["reconstruction_error"] = write_reconstructions(  # type: ignore[arg-type]
                model, torch.as_tensor(splits.test[:count]), run_dir / "reconstructions.png", context
            )
        return metrics

    def summary(self, metrics: Mapping[str, Any]) -> str:
        return format_image_summary(metrics)


#: keys of table runs that have no meaning for images, with their defaults
_TABULAR_ONLY = {
    "train.mollification.fraction": lambda c: c.train.mollification.fraction,
}  # (the `data` keys are checked for every kind of dataset by DataConfig.check_keys_apply)


def _check_tabular_keys_unset(config: Config) -> None:
    """Image runs refuse the table-only keys (set to anything but their defaults) instead of ignoring them."""
    defaults = Config()
    for key, get in _TABULAR_ONLY.items():
        if get(config) != get(defaults):
            raise ConfigError(
                f"config key {key!r} applies to table datasets only; image runs dequantise inside the model's "
                f"bound (image.dequantization), got {key} = {get(config)!r} for {config.data.dataset!r}"
            )


def format_image_summary(metrics: Mapping[str, Any]) -> str:
    return (
        f"test bits/dim: {metrics['test_bpd']:.4f} +- {2 * metrics['test_bpd_se']:.4f} (2 standard errors, "
        f"{metrics['test_rows']} images; {metrics['dequantization']} dequantisation, "
        f"{metrics['eval_samples']} noise sample(s) per image)\n"
        f"test NLL: {metrics['test_nll']:.3f} nats per image; val bits/dim: {metrics['val_bpd']:.4f}\n"
        f"parameters: {metrics['n_params']}; epochs: {metrics['epochs']}; steps: {metrics['steps']}; "
        f"wall time: {metrics['wall_time']:.1f} s; run dir: {metrics['run_dir']}"
    )


class _PrintBitsPerDim(Callback):
    """A one-line validation summary (nats and bits/dim) when the progress bar is off."""

    def on_validation_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        nll, bpd = trainer.callback_metrics.get("val_nll"), trainer.callback_metrics.get("val_bpd")
        if trainer.is_global_zero and nll is not None and bpd is not None and not trainer.sanity_checking:
            print(
                f"epoch {trainer.current_epoch} step {trainer.global_step}: val_nll {float(nll):.3f} "
                f"val_bpd {float(bpd):.4f}",
                flush=True,
            )


# --------------------------------------------------------------------------------------------- sampling
