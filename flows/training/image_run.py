"""Image runs, part 2: training and evaluating an image config, and using its checkpoints.

`run_image` trains through the same `FlowModule`, Trainer and checkpoints as tabular runs (see
`flows.training.image_data` for the `image` config section, the data and the models);
`evaluate_image_checkpoint` and `sample_images` serve `flows test` and `flows sample`.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback

from flows.datasets.images import ImageSplits
from flows.dequantization import DequantizedFlow, bits_per_dim
from flows.training.config import (
    Config,
    write_yaml_atomic,
)
from flows.training.data import GlobalBatchSampler
from flows.training.image_data import (
    ImageDataModule,
    ImageFlowModule,
    ImageOptions,
    _check_image_model_options,
    _image_model_parameters,
    build_image_model,
    evaluate_bound,
    initialize_image_model,
    load_image_splits,
    split_image_options,
)
from flows.training.images import one_hot, write_reconstructions, write_sample_grids
from flows.training.models import with_model_defaults
from flows.training.safety import read_checkpoint

__all__ = [
    "LoadedImageModel",
    "evaluate_image_checkpoint",
    "format_image_summary",
    "is_image_checkpoint",
    "load_image_model",
    "run_image",
    "sample_images",
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


def run_image(values: Union[Config, Mapping[str, Any]], verbose: bool = True, resume: bool = False) -> Any:
    """Train and evaluate an image config; returns a `flows.training.run.RunResult`.

    `resume=True` continues from `run_dir/checkpoints/last.ckpt` when it exists (needs `output.name`).

    Writes into the run directory: `config.yaml`, `checkpoints/`, `metrics.csv` (with `val_bpd`),
    `metrics.json` (`test_bpd`, `test_bpd_se`, `test_nll`, `best_val_bpd`, `reconstruction_error`, ...),
    `samples/samples_t<T>.png` per temperature and `samples/samples_temperatures.png`, `reconstructions.png`.
    """
    import importlib

    tabular = importlib.import_module("flows.training.run")

    start = time.perf_counter()
    config, options, plain = split_image_options(values)
    _check_image_model_options(config.model)
    # Saved configs and checkpoints carry every model option, defaults included.
    model = with_model_defaults(config.model, _image_model_parameters(config.model["name"]))
    config, plain = dataclasses.replace(config, model=model), dict(plain, model=model)
    with tabular.claim_run_dir(config, model, resume, verbose) as started:
        if started.finished is not None:
            return tabular.finished_result(started, config)
        return _train_and_evaluate(config, options, plain, started, verbose, start)


def _train_and_evaluate(
    config: Config, options: ImageOptions, plain: dict[str, Any], started: Any, verbose: bool, start: float
) -> Any:
    import importlib

    tabular = importlib.import_module("flows.training.run")
    run_dir, resume_from, worker = started.run_dir, started.resume_from, started.worker
    if not worker:
        write_yaml_atomic(plain, run_dir / "config.yaml")
    splits = load_image_splits(config, options)
    num_classes = splits.num_classes if options.conditional else 0

    seed = config.seed
    L.seed_everything(seed, workers=True, verbose=False)
    model = build_image_model(config.model, options, splits.shape, splits.num_levels, splits.num_classes)
    record = _record(plain, splits, num_classes)
    train = config.train

    trainer = tabular.make_trainer(config, run_dir, _PrintBitsPerDim(), resume_from)
    checkpoint = trainer.checkpoint_callback
    datamodule = ImageDataModule(splits, train.batch_size, train.eval_batch_size, train.shuffle, seed)
    if train.actnorm_init:
        global_batch = train.batch_size * trainer.world_size
        first = next(iter(GlobalBatchSampler(splits.train.shape[0], global_batch, train.shuffle, seed)))
        labels = torch.as_tensor(splits.train_labels[first])
        context = one_hot(labels, num_classes) if num_classes else None
        initialize_image_model(model, torch.as_tensor(splits.train[first]), context)
    module = ImageFlowModule(
        model, train, num_classes, options.eval_samples, hparams=record, validation_seed=seed + 7
    )
    # DDP workers started by Lightning find rank 0's run directory through this variable.
    previous = os.environ.get(tabular.RUN_DIR_ENV)
    os.environ[tabular.RUN_DIR_ENV] = str(run_dir.resolve())
    try:
        with tabular.quiet_fit_warnings():
            trainer.fit(module, datamodule=datamodule, ckpt_path=resume_from, weights_only=True)
    finally:
        if not worker:
            if previous is None:
                os.environ.pop(tabular.RUN_DIR_ENV, None)
            else:
                os.environ[tabular.RUN_DIR_ENV] = previous
    best_path = Path(checkpoint.best_model_path) if checkpoint.best_model_path else None
    if best_path is not None and best_path.is_file():
        state = read_checkpoint(best_path, map_location=module.device)["state_dict"]
        module.load_state_dict(state)
    if not trainer.is_global_zero:
        return tabular.RunResult({}, run_dir, best_path, model, config, is_global_zero=False)
    model.eval()
    train_seconds = time.perf_counter() - start

    metrics: dict[str, Any] = {
        "dataset": config.data.dataset,
        "model": config.model["name"],
        "dequantization": options.dequantization,
        "preprocessing": options.preprocessing,
        "conditional": options.conditional,
        "shape": list(splits.shape),
        "num_levels": splits.num_levels,
    }
    for split in ("val", "test"):
        images, labels = getattr(splits, split), getattr(splits, f"{split}_labels")
        log_p = evaluate_bound(
            model, images, labels, num_classes, train.eval_batch_size, options.eval_samples, seed + 1
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
    if checkpoint.best_model_score is not None:
        metrics["best_val_nll"] = float(checkpoint.best_model_score)
        metrics["best_val_bpd"] = float(bits_per_dim(float(checkpoint.best_model_score), splits.num_dims))

    pictures = run_dir / "samples"
    grids = write_sample_grids(model, pictures, options.temperatures, options.grid_size, num_classes, seed)
    metrics["sample_grids"] = [str(p) for p in grids]
    if options.reconstructions > 0:
        count = min(options.reconstructions, splits.test.shape[0])
        context = None
        if num_classes:
            context = one_hot(torch.as_tensor(splits.test_labels[:count]), num_classes)
        metrics["reconstruction_error"] = write_reconstructions(
            model, torch.as_tensor(splits.test[:count]), run_dir / "reconstructions.png", context
        )
    metrics.update(
        {
            "n_params": int(sum(p.numel() for p in model.parameters() if p.requires_grad)),
            "train_rows": int(splits.train.shape[0]),
            "epochs": int(trainer.current_epoch),
            "steps": int(trainer.global_step),
            "seed": seed,
            "train_seconds": train_seconds,
            "wall_time": time.perf_counter() - start,
            "run_dir": str(run_dir),
            "checkpoint": None if best_path is None else str(best_path),
        }
    )
    tabular.write_json_atomic(metrics, run_dir / "metrics.json")
    if verbose:
        print(format_image_summary(metrics), flush=True)
    return tabular.RunResult(metrics, run_dir, best_path, model, config)


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
@dataclass
class LoadedImageModel:
    """A trained `DequantizedFlow` in evaluation mode and what it was trained on."""

    model: DequantizedFlow
    config: Config
    options: ImageOptions
    shape: tuple[int, int, int]
    num_levels: int
    num_classes: int


def is_image_checkpoint(payload: Mapping[str, Any]) -> bool:
    record = payload.get("hyper_parameters") or {}
    return isinstance(record, Mapping) and "image" in record


def load_image_model(
    path: Union[str, Path], map_location: Union[str, torch.device] = "cpu"
) -> LoadedImageModel:
    """Rebuild an image model from a checkpoint written by an image run."""
    path = Path(path)
    payload = read_checkpoint(path, map_location)  # clear errors for missing, truncated or foreign files
    if not is_image_checkpoint(payload):
        raise ValueError(
            f"{path} is not a checkpoint of an image run (no image record in its hyper-parameters)"
        )
    record = payload["hyper_parameters"]
    config, options, _ = split_image_options(record["config"])
    info = record["image"]
    shape = tuple(int(s) for s in info["shape"])
    num_classes = int(info["num_classes"])
    model = build_image_model(config.model, options, shape, int(info["num_levels"]), num_classes)
    state = {k[len("flow.") :]: v for k, v in payload["state_dict"].items() if k.startswith("flow.")}
    model.load_state_dict(state)
    model.eval()
    return LoadedImageModel(model, config, options, shape, int(info["num_levels"]), num_classes)  # type: ignore[arg-type]


def evaluate_image_checkpoint(
    checkpoint: Union[str, Path], values: Optional[Mapping[str, Any]] = None, verbose: bool = True
) -> dict[str, Any]:
    """`flows test` for image checkpoints: test bits/dim of the checkpoint on its dataset's test split.

    `values` (a nested mapping, e.g. `{"data": {"root": ...}, "image": {"eval_samples": 16}}`) is merged
    over the checkpoint's own config.
    """
    from flows.training.config import merge

    loaded = load_image_model(checkpoint)
    payload_config = read_checkpoint(checkpoint)["hyper_parameters"]["config"]
    config, options, _ = split_image_options(merge(payload_config, dict(values or {})))
    splits = load_image_splits(config, options)
    if splits.shape != loaded.shape or splits.num_levels != loaded.num_levels:
        raise ValueError(
            f"the checkpoint models {loaded.shape} images with {loaded.num_levels} levels, the data has "
            f"{splits.shape} with {splits.num_levels}"
        )
    log_p = evaluate_bound(
        loaded.model,
        splits.test,
        splits.test_labels,
        loaded.num_classes,
        config.train.eval_batch_size,
        options.eval_samples,
        config.seed + 1,
    )
    nll = -log_p
    se = float(np.std(nll, ddof=1) / math.sqrt(nll.shape[0])) if nll.shape[0] > 1 else float("nan")
    metrics = {
        "dataset": config.data.dataset,
        "checkpoint": str(checkpoint),
        "test_nll": float(nll.mean()),
        "test_nll_se": se,
        "test_bpd": float(bits_per_dim(float(nll.mean()), splits.num_dims)),
        "test_bpd_se": float(bits_per_dim(se, splits.num_dims)),
        "test_rows": int(nll.shape[0]),
        "eval_samples": options.eval_samples,
    }
    if verbose:
        print(
            f"test bits/dim: {metrics['test_bpd']:.4f} +- {2 * metrics['test_bpd_se']:.4f} (2 standard errors, "
            f"{metrics['test_rows']} images, {options.eval_samples} noise sample(s) per image)",
            flush=True,
        )
    return metrics


def sample_images(
    checkpoint: Union[str, Path],
    out: Union[str, Path],
    count: int = 64,
    temperature: float = 1.0,
    label: Optional[int] = None,
    seed: Optional[int] = None,
) -> Path:
    """`flows sample` for image models: a PNG grid (`.png`) or an `.npy` array `(N, C, H, W)` of integer levels.

    Class-conditional models draw `count` images of class `label`, or of every class in turn without one.
    """
    from flows.training.images import image_grid, write_png

    loaded = load_image_model(checkpoint)
    if count < 1:
        raise ValueError(f"count must be a positive int, got {count}")
    context = None
    if loaded.num_classes:
        if label is None:
            labels = torch.arange(count) % loaded.num_classes
        elif not 0 <= label < loaded.num_classes:
            raise ValueError(f"label must be in [0, {loaded.num_classes}), got {label}")
        else:
            labels = torch.full((count,), label)
        context = one_hot(labels, loaded.num_classes)
    elif label is not None:
        raise ValueError("label is only for class-conditional models; this model is unconditional")
    with torch.random.fork_rng(enabled=seed is not None):
        if seed is not None:
            torch.manual_seed(seed)
        shape = () if context is not None else (count,)
        levels = loaded.model.sample_levels(shape, context, temperature)
    out = Path(out)
    if out.suffix == ".npy":
        out.parent.mkdir(parents=True, exist_ok=True)
        temporary = out.with_name(f".{out.name}.tmp")
        with temporary.open("wb") as handle:
            np.save(handle, levels.numpy())
        temporary.replace(out)
        return out
    if out.suffix != ".png":
        raise ValueError(f"image samples are written as .png or .npy, got {out}")
    columns = loaded.num_classes if (loaded.num_classes and label is None) else None
    return write_png(out, image_grid(levels.double() / (loaded.num_levels - 1), columns))
