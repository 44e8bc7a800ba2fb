"""Image checkpoints: rebuilding the model (`load_image_model`), and `flows test` / `flows sample` for image runs
(`evaluate_image_checkpoint`, `sample_images`). Needs no Lightning."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import torch

from flows.bijectors.autoregressive import guided
from flows.dequantization import DequantizedFlow, bits_per_dim
from flows.training.config import Config
from flows.training.image_data import (
    ImageOptions,
    build_image_model,
    check_guidance,
    evaluate_bound,
    load_image_splits,
    split_image_options,
)
from flows.training.images import one_hot
from flows.training.safety import read_checkpoint

__all__ = [
    "LoadedImageModel",
    "evaluate_image_checkpoint",
    "is_image_checkpoint",
    "load_image_model",
    "sample_images",
]


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
    model = build_image_model(
        config.model, options, shape, int(info["num_levels"]), num_classes, config.train.noise_std
    )
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
    guidance: Optional[float] = None,
) -> Path:
    """`flows sample` for image models: a PNG grid (`.png`) or an `.npy` array `(N, C, H, W)` of integer levels.

    Class-conditional models draw `count` images of class `label`, or of every class in turn without one;
    `guidance` (default: the run's `image.guidance`) is the classifier-free guidance weight.
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
        if guidance is None:
            guidance = loaded.options.guidance
        else:
            check_guidance(guidance, loaded.options)
        with guided(loaded.model, guidance):
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
