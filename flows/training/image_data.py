"""Image runs, part 1: the `image` config section, the data and the models (`tasks.image` trains and samples;
`image_modules` holds the Lightning modules, so that reading an image checkpoint needs no Lightning).

Image runs: `data.dataset: image:<digits|mnist|cifar10|imagenet64>` trained through the same `FlowModule` and configs.

The model is a `DequantizedFlow` (`flows.dequantization`): the flow preset (`model.name`: `glow` ->
`flows.presets_image.Glow`, `realnvp` -> `flows.presets_image.RealNVPImage`), a dequantiser and a
preprocessing. Its `log_prob` of integer images is the discrete log-likelihood bound, so `val_nll` /
`test_nll` are nats per image of the discrete data and `*_bpd = nll / (D ln 2)` (dequantisation noise,
the `-D log K` scaling and the preprocessing Jacobian included).

Image-specific options live in the config's `image` section (`ImageOptions`, validated key by key):

    image:
      dequantization: uniform      # or variational (Flow++): a conditional flow for the noise
      dequantizer: {hidden_channels: 32, steps: 4, transformer: affine}   # variational only
      preprocessing: center        # logit (RealNVP, with logit_alpha), center (Glow: y - 1/2) or none
      logit_alpha: 0.05
      conditional: false           # class-conditional: one-hot labels as the context
      eval_samples: 1              # importance samples of the val/test bound (1 = the variational bound)
      temperatures: [0.0, 0.25, 0.5, 0.75, 1.0]
      grid_size: 64
      reconstructions: 16
      val_size: 5000               # held out of the MNIST / CIFAR-10 training files

`data.root` is the directory of the MNIST / CIFAR-10 files; `data.val_fraction` / `data.test_fraction` split
digits. `data.standardize`, `data.dequantize` and `train.mollification` do not apply to images
(dequantisation is always on and built into the bound). `train.noise_std` is TarFlow's noise augmentation:
Gaussian noise on the flow's input (after the preprocessing) in training only; validation and test report
the clean bound, and samples take one denoising score step (`DequantizedFlow.denoise`).
`image.class_dropout` replaces the label of that fraction of training images by the null context (all
zeros), which classifier-free guidance needs.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Optional, Union

import numpy as np
import torch

from flows.datasets.images import IMAGE_DATASETS, ImageSplits, load_image_dataset
from flows.dequantization import DequantizedFlow, make_dequantizer, make_preprocessing
from flows.flow import Flow
from flows.training.config import (
    Config,
    ConfigError,
    _build,
    parse_config,
    unknown_key_error,
)
from flows.training.images import DEFAULT_TEMPERATURES, one_hot
from flows.training.registry import check_model_options, model_builder

__all__ = [
    "ImageOptions",
    "build_image_model",
    "evaluate_bound",
    "is_image_config",
    "load_image_splits",
    "split_image_options",
]

#: model name -> "module:attribute" of an image preset taking `shape` and `context_features`


@dataclass
class ImageOptions:
    """The `image` config section (see the module docstring)."""

    dequantization: Literal["uniform", "variational"] = "uniform"
    dequantizer: dict = field(default_factory=dict)
    preprocessing: Literal["logit", "center", "none"] = "center"
    logit_alpha: float = 0.05
    conditional: bool = False
    #: fraction of training images whose one-hot label is replaced by zeros (the null class of guidance)
    class_dropout: float = 0.0
    #: classifier-free guidance weight of sample grids and `flows sample` (autoregressive layers only)
    guidance: float = 0.0
    eval_samples: int = 1
    temperatures: list[float] = field(default_factory=lambda: list(DEFAULT_TEMPERATURES))
    grid_size: int = 64
    reconstructions: int = 16
    val_size: int = 5000


# ------------------------------------------------------------------------------------------------ config
def _config_has_image_section() -> bool:
    return "image" in {f.name for f in dataclasses.fields(Config)}


def is_image_config(values: Union[Config, Mapping[str, Any]]) -> bool:
    """True when `data.dataset` names an image dataset (`image:<name>`)."""
    if isinstance(values, Config):
        dataset = values.data.dataset
    else:
        dataset = str((values.get("data") or {}).get("dataset", ""))
    return dataset.startswith("image:")


def parse_image_options(values: Optional[Mapping[str, Any]]) -> ImageOptions:
    """Validate an `image` section into `ImageOptions` (unknown keys and wrong types name the key)."""
    options = _build(ImageOptions, values or {}, "image")
    if options.eval_samples < 1:
        raise ConfigError(
            f"config key 'image.eval_samples': expected a positive int, got {options.eval_samples}"
        )
    if options.grid_size < 1 or options.reconstructions < 0:
        raise ConfigError(
            "config keys 'image.grid_size' (>= 1) and 'image.reconstructions' (>= 0) out of range"
        )
    if not options.temperatures or any(t < 0 for t in options.temperatures):
        raise ConfigError(
            f"config key 'image.temperatures': expected non-negative numbers, got {options.temperatures}"
        )
    if not 0.0 < options.logit_alpha < 0.5:
        raise ConfigError(
            f"config key 'image.logit_alpha': expected a number in (0, 0.5), got {options.logit_alpha}"
        )
    if not 0.0 <= options.class_dropout < 1.0:
        raise ConfigError(
            f"config key 'image.class_dropout': expected a number in [0, 1), got {options.class_dropout}"
        )
    if options.class_dropout and not options.conditional:
        raise ConfigError("config key 'image.class_dropout' applies to image.conditional: true only")
    check_guidance(options.guidance, options)
    allowed = {"hidden_channels", "steps", "transformer"}
    for key in options.dequantizer:
        if key not in allowed:
            raise unknown_key_error(f"image.dequantizer.{key}", sorted(allowed), "image.dequantizer")
    if options.dequantizer and options.dequantization != "variational":
        raise ConfigError("config key 'image.dequantizer' applies to image.dequantization: variational only")
    return options


def check_guidance(guidance: float, options: ImageOptions) -> None:
    """Guidance steers a class-conditional model away from its null class, which it must have learnt."""
    if not math.isfinite(guidance):
        raise ConfigError(f"config key 'image.guidance': expected a finite number, got {guidance}")
    if guidance and not (options.conditional and options.class_dropout > 0):
        raise ConfigError(
            "config key 'image.guidance' needs image.conditional: true and image.class_dropout > 0 (the "
            f"model must learn the null class), got guidance {guidance} with conditional "
            f"{options.conditional} and class_dropout {options.class_dropout}"
        )


def split_image_options(
    values: Union[Config, Mapping[str, Any]],
) -> tuple[Config, ImageOptions, dict[str, Any]]:
    """`(config, image options, the whole config as a plain dict)` from a Config or a nested mapping.

    Works whether or not `Config` has an `image` field: without one, the section is taken out before the
    rest is validated.
    """
    if isinstance(values, Config):
        image = getattr(values, "image", None) or {}
        return values, parse_image_options(image), dict(values.to_dict(), image=dict(image))
    values = dict(values)
    image = dict(values.get("image") or {})
    if not _config_has_image_section():
        values.pop("image", None)
    config = parse_config(values)
    plain = config.to_dict()
    plain["image"] = image
    return config, parse_image_options(image), plain


# -------------------------------------------------------------------------------------------------- data
def load_image_splits(config: Config, options: ImageOptions) -> ImageSplits:
    """The image dataset named by `data.dataset = image:<name>`."""
    kind, _, name = config.data.dataset.partition(":")
    if kind != "image" or name not in IMAGE_DATASETS:
        raise ConfigError(
            f"config key 'data.dataset': expected image:<name> with name one of {sorted(IMAGE_DATASETS)}, "
            f"got {config.data.dataset!r}"
        )
    seed = config.seed if config.data.split_seed is None else config.data.split_seed
    return load_image_dataset(
        name,
        root=config.data.root,
        seed=seed,
        val_size=options.val_size,
        val_fraction=config.data.val_fraction,
        test_fraction=config.data.test_fraction,
    )


# ------------------------------------------------------------------------------------------------ models
def build_image_model(
    model: Mapping[str, Any],
    options: ImageOptions,
    shape: tuple[int, int, int],
    num_levels: int,
    num_classes: int,
    noise_std: float = 0.0,
) -> DequantizedFlow:
    """The `DequantizedFlow` of a `model` section and the `image` options for images of `shape`;
    `noise_std` is `train.noise_std` (the model denoises its samples when it was trained with noise)."""
    kwargs = check_model_options(model, "image")
    context_features = num_classes if options.conditional else 0
    builder = model_builder(model["name"], "image")
    try:
        flow = builder(shape=tuple(shape), context_features=context_features, **kwargs)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"model {model['name']!r} rejected its options {kwargs}: {error}") from error
    if not isinstance(flow, Flow):
        raise TypeError(
            f"image model {model['name']!r} returned {type(flow).__name__}, expected a flows.Flow"
        )
    try:
        dequantizer = make_dequantizer(
            options.dequantization, tuple(shape), num_levels, context_features, **options.dequantizer
        )
    except (TypeError, ValueError) as error:
        raise ConfigError(f"config key 'image.dequantizer': {error}") from error
    preprocessing = make_preprocessing(options.preprocessing, options.logit_alpha)
    return DequantizedFlow(flow, dequantizer, preprocessing, noise_std)


@torch.no_grad()
def evaluate_bound(
    model: DequantizedFlow,
    images: np.ndarray,
    labels: np.ndarray,
    num_classes: int,
    batch_size: int = 512,
    num_samples: int = 1,
    seed: int = 0,
) -> np.ndarray:
    """Per-image lower bound on `log P(x)` (nats, float64 numpy `(N,)`), in batches, seeded noise."""
    reference = next(iter(model.parameters()), None)
    device = reference.device if reference is not None else torch.device("cpu")
    dtype = reference.dtype if reference is not None else torch.float32
    was_training = model.training
    model.eval()
    out = []
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        for start in range(0, images.shape[0], batch_size):
            x = torch.as_tensor(images[start : start + batch_size], device=device)
            context = None
            if num_classes:
                context = one_hot(
                    torch.as_tensor(labels[start : start + batch_size], device=device), num_classes, dtype
                )
            out.append(model.log_prob(x, context, num_samples=num_samples).double().cpu().numpy())
    model.train(was_training)
    return np.concatenate(out) if out else np.zeros(0)
