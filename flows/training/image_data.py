"""Image runs: `data.dataset: image:<digits|mnist|cifar10>` trained through the same `FlowModule` and configs.

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
digits. `data.standardize`, `data.dequantize`, `train.noise_std` and `train.mollification` do not apply to
images (dequantisation is always on and built into the bound).
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import os
import time
import typing
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, Union

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from torch import Tensor
from torch.utils.data import DataLoader, TensorDataset

from flows.datasets.images import IMAGE_DATASETS, ImageSplits, load_image_dataset
from flows.dequantization import DequantizedFlow, bits_per_dim, make_dequantizer, make_preprocessing
from flows.flow import Flow
from flows.training.config import (
    Config,
    ConfigError,
    _build,
    check_value,
    parse_config,
    unknown_key_error,
    write_yaml_atomic,
)
from flows.training.data import GlobalBatchSampler
from flows.training.images import DEFAULT_TEMPERATURES, one_hot, write_reconstructions, write_sample_grids
from flows.training.models import with_model_defaults
from flows.training.module import FlowModule
from flows.training.safety import read_checkpoint

__all__ = [
    "IMAGE_MODELS",
    "ImageDataModule",
    "ImageFlowModule",
    "ImageOptions",
    "LoadedImageModel",
    "build_image_model",
    "evaluate_bound",
    "evaluate_image_checkpoint",
    "is_image_checkpoint",
    "is_image_config",
    "load_image_model",
    "load_image_splits",
    "run_image",
    "sample_images",
    "split_image_options",
]

#: model name -> "module:attribute" of an image preset taking `shape` and `context_features`
IMAGE_MODELS: dict[str, str] = {
    "glow": "flows.presets_image:Glow",
    "realnvp": "flows.presets_image:RealNVPImage",
}


@dataclass
class ImageOptions:
    """The `image` config section (see the module docstring)."""

    dequantization: Literal["uniform", "variational"] = "uniform"
    dequantizer: dict = field(default_factory=dict)
    preprocessing: Literal["logit", "center", "none"] = "center"
    logit_alpha: float = 0.05
    conditional: bool = False
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
    allowed = {"hidden_channels", "steps", "transformer"}
    for key in options.dequantizer:
        if key not in allowed:
            raise unknown_key_error(f"image.dequantizer.{key}", sorted(allowed), "image.dequantizer")
    if options.dequantizer and options.dequantization != "variational":
        raise ConfigError("config key 'image.dequantizer' applies to image.dequantization: variational only")
    return options


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


def _compact(images: np.ndarray) -> Tensor:
    """Integer images as uint8 (levels <= 256) or int16 tensors, to keep large datasets small."""
    dtype = torch.uint8 if images.max(initial=0) < 256 else torch.int16
    return torch.as_tensor(images).to(dtype)


class ImageDataModule(L.LightningDataModule):
    """Loaders of `(integer images, labels)` batches; training batches from a `GlobalBatchSampler`."""

    def __init__(
        self, splits: ImageSplits, batch_size: int, eval_batch_size: int, shuffle: bool, seed: int
    ) -> None:
        super().__init__()
        self.tensors = {
            "train": (_compact(splits.train), torch.as_tensor(splits.train_labels)),
            "val": (_compact(splits.val), torch.as_tensor(splits.val_labels)),
            "test": (_compact(splits.test), torch.as_tensor(splits.test_labels)),
        }
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.shuffle = shuffle
        self.seed = seed

    def train_dataloader(self) -> DataLoader:
        trainer = getattr(self, "trainer", None)
        rank, world = (int(trainer.global_rank), int(trainer.world_size)) if trainer is not None else (0, 1)
        images, labels = self.tensors["train"]
        sampler = GlobalBatchSampler(images.shape[0], self.batch_size, self.shuffle, self.seed, rank, world)
        return DataLoader(TensorDataset(images, labels), sampler=sampler, batch_size=None)

    def _eval_loader(self, name: str) -> DataLoader:
        images, labels = self.tensors[name]
        n = images.shape[0]
        batches = [
            list(range(i, min(i + self.eval_batch_size, n))) for i in range(0, n, self.eval_batch_size)
        ]
        return DataLoader(TensorDataset(images, labels), sampler=batches, batch_size=None)

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader("test")


# ------------------------------------------------------------------------------------------------ models
def _image_builder(name: str) -> Any:
    if name not in IMAGE_MODELS:
        raise ConfigError(f"config key 'model.name': image models are {sorted(IMAGE_MODELS)}, got {name!r}")
    import importlib

    module_name, attribute = IMAGE_MODELS[name].split(":")
    return getattr(importlib.import_module(module_name), attribute)


_IMAGE_DATA_ARGUMENTS = ("shape", "context_features")


def _image_model_parameters(name: str) -> dict[str, inspect.Parameter]:
    """The configurable keyword parameters of image model `name` (data-given ones excluded)."""
    signature = inspect.signature(_image_builder(name))
    return {
        key: parameter
        for key, parameter in signature.parameters.items()
        if key not in _IMAGE_DATA_ARGUMENTS and key != "self"
    }


def _check_image_model_options(model: Mapping[str, Any]) -> dict[str, Any]:
    name = model.get("name")
    if not isinstance(name, str):
        raise ConfigError(f"config key 'model.name' is required; expected one of {sorted(IMAGE_MODELS)}")
    builder = _image_builder(name)
    try:
        hints = typing.get_type_hints(builder.__init__ if inspect.isclass(builder) else builder)
    except Exception:
        hints = {}
    given = _IMAGE_DATA_ARGUMENTS
    valid = list(_image_model_parameters(name))
    options: dict[str, Any] = {}
    for key, value in model.items():
        if key == "name":
            continue
        if key in given:
            raise ConfigError(
                f"config key 'model.{key}' is set from the data and cannot be configured; remove it"
            )
        if key not in valid:
            raise unknown_key_error(f"model.{key}", valid, f"model ({name})")
        options[key] = check_value(f"model.{key}", value, hints.get(key, Any))
    return options


def build_image_model(
    model: Mapping[str, Any],
    options: ImageOptions,
    shape: tuple[int, int, int],
    num_levels: int,
    num_classes: int,
) -> DequantizedFlow:
    """The `DequantizedFlow` of a `model` section and the `image` options for images of `shape`."""
    kwargs = _check_image_model_options(model)
    context_features = num_classes if options.conditional else 0
    builder = _image_builder(model["name"])
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
    return DequantizedFlow(flow, dequantizer, preprocessing)


@torch.no_grad()
def initialize_image_model(model: DequantizedFlow, images: Tensor, context: Optional[Tensor]) -> bool:
    """ActNorm data-dependent initialisation on a first batch of integer images; True when one ran."""
    initialize = getattr(model.flow, "initialize", None)
    if initialize is None:
        return False
    y, _ = model.dequantizer(images, context)
    z = y if model.preprocessing is None else model.preprocessing(y)[0]
    initialize(z, context)
    return True


class ImageFlowModule(FlowModule):
    """`FlowModule` for a `DequantizedFlow`: batches are `(integer images, labels)`, losses are the bound.

    Logs `train_nll`, `train_bpd`, `val_nll` (the early-stopping monitor) and `val_bpd`; nats per image and
    bits per dimension of the discrete data. Validation draws its dequantisation noise from a generator
    seeded by `validation_seed` and the batch index, the same at every validation.
    """

    def __init__(
        self,
        model: DequantizedFlow,
        train_config: Any,
        num_classes: int = 0,
        eval_samples: int = 1,
        hparams: Optional[dict[str, Any]] = None,
        validation_seed: int = 0,
    ) -> None:
        super().__init__(model, train_config, hparams=hparams)
        self.validation_seed = int(validation_seed)
        self.num_classes = int(num_classes)
        self.eval_samples = int(eval_samples)
        self.num_dims = model.num_dims

    def context(self, labels: Tensor) -> Optional[Tensor]:
        if not self.num_classes:
            return None
        return one_hot(labels, self.num_classes, self.data_mean.dtype)

    def nll(self, x: Tensor, labels: Optional[Tensor] = None, num_samples: int = 1) -> Tensor:  # type: ignore[override]
        context = None if labels is None else self.context(labels)
        return -self.flow.log_prob(x, context, num_samples=num_samples)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_index: int) -> Tensor:
        images, labels = batch
        loss = self.nll(images, labels).mean()
        self.log("train_nll", loss, prog_bar=True, batch_size=images.shape[0])
        self.log("train_bpd", bits_per_dim(loss.detach(), self.num_dims), batch_size=images.shape[0])
        return loss

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_index: int) -> None:
        images, labels = batch
        # The same noise at every validation (common random numbers): val_nll changes only with the model.
        devices = [images.device] if images.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(self.validation_seed + batch_index)
            total = self.nll(images, labels, self.eval_samples).sum()
        self._val_sum = total if self._val_sum is None else self._val_sum + total
        self._val_count += images.shape[0]

    def on_validation_epoch_end(self) -> None:
        if self._val_sum is None or self._val_count == 0:
            return
        value = self._val_sum / self._val_count
        self.log("val_nll", value, prog_bar=True, sync_dist=False)
        self.log("val_bpd", bits_per_dim(value, self.num_dims), prog_bar=True, sync_dist=False)


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


def run_image(values: Union[Config, Mapping[str, Any]], verbose: bool = True) -> Any:
    """Train and evaluate an image config; returns a `flows.training.run.RunResult`.

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
    run_dir = tabular.resolve_run_dir(config)
    worker = tabular._launched_worker()
    if not worker:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_yaml_atomic(plain, run_dir / "config.yaml")
    splits = load_image_splits(config, options)
    num_classes = splits.num_classes if options.conditional else 0

    seed = config.seed
    L.seed_everything(seed, workers=True, verbose=False)
    model = build_image_model(config.model, options, splits.shape, splits.num_levels, splits.num_classes)
    record = _record(plain, splits, num_classes)
    train = config.train

    trainer = tabular.make_trainer(config, run_dir, _PrintBitsPerDim())
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
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*does not have many workers.*")
            warnings.filterwarnings("ignore", message=".*sync_dist=True.*")
            trainer.fit(module, datamodule=datamodule)
    finally:
        if not worker:
            if previous is None:
                os.environ.pop(tabular.RUN_DIR_ENV, None)
            else:
                os.environ[tabular.RUN_DIR_ENV] = previous
    best_path = Path(checkpoint.best_model_path) if checkpoint.best_model_path else None
    if best_path is not None and best_path.is_file():
        state = torch.load(best_path, map_location=module.device, weights_only=False)["state_dict"]
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
    payload_config = torch.load(Path(checkpoint), map_location="cpu", weights_only=False)["hyper_parameters"][
        "config"
    ]
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
