"""Image outputs of image flows: sample grids at several temperatures, reconstructions, PNG files.

- `image_grid` tiles `(N, C, H, W)` images with values in `[0, 1]` into one `uint8` picture, nearest-neighbour
  upscaled so that small images (8x8 digits) stay visible.
- `write_png` writes a greyscale or RGB `uint8` array as a PNG (Pillow), atomically (a temporary file in the
  same directory, then a rename); `read_png` reads one back.
- `write_sample_grids` draws samples of a `DequantizedFlow` at temperatures 0.0 .. 1.0 (the temperature
  scales the base standard deviation), one grid per temperature plus one row per temperature in
  `samples_temperatures.png`; class-conditional models get one row per class.
- `write_reconstructions` encodes dequantised test images and decodes them back (`encode` then `decode`),
  writes originals above reconstructions, and returns the largest absolute difference.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch
from torch import Tensor

from flows.dequantization import DequantizedFlow
from flows.io import atomic_open

__all__ = [
    "DEFAULT_TEMPERATURES",
    "image_grid",
    "one_hot",
    "read_png",
    "write_png",
    "write_reconstructions",
    "write_sample_grids",
]

DEFAULT_TEMPERATURES: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)


def one_hot(labels: Tensor, num_classes: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """Integer labels `(batch)` as one-hot context vectors `(batch, num_classes)`."""
    return torch.nn.functional.one_hot(labels.long(), num_classes).to(dtype)


# ------------------------------------------------------------------------------------------------- PNG
def write_png(path: Union[str, Path], image: np.ndarray) -> Path:
    """Write `image` (`(H, W)` greyscale or `(H, W, 3)` RGB, `uint8`) as an 8-bit PNG (Pillow), atomically."""
    from PIL import Image

    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise TypeError(f"write_png expects a uint8 array, got dtype {image.dtype}")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 3)):
        raise ValueError(f"write_png expects shape (H, W) or (H, W, 3), got {image.shape}")
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise ValueError(f"cannot write an empty image of shape {image.shape}")
    with atomic_open(path, "wb") as handle:
        Image.fromarray(np.ascontiguousarray(image)).save(handle, format="PNG")
    return Path(path)


def read_png(path: Union[str, Path]) -> np.ndarray:
    """Read a PNG as a `uint8` array `(H, W)` (greyscale) or `(H, W, 3)` (RGB)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            if image.format != "PNG":
                raise ValueError(f"{path}: expected a PNG file, got {image.format}")
            picture = image.convert("L" if image.mode in ("1", "L", "I", "I;16") else "RGB")
            return np.asarray(picture, dtype=np.uint8)
    except UnidentifiedImageError as error:
        raise ValueError(f"{path} is not a PNG file") from error


def image_grid(
    images: Union[Tensor, np.ndarray], columns: Optional[int] = None, padding: int = 2, min_size: int = 64
) -> np.ndarray:
    """Tile images `(N, C, H, W)` in `[0, 1]` (C = 1 or 3) into `(H', W')` or `(H', W', 3)` uint8.

    `columns` defaults to `ceil(sqrt(N))`. Each image is upscaled by an integer factor so that its
    shorter side is at least `min_size` pixels; tiles are separated by `padding` pixels of mid grey.
    """
    array = (
        images.detach().cpu().double().numpy() if isinstance(images, Tensor) else np.asarray(images, float)
    )
    if array.ndim != 4 or array.shape[1] not in (1, 3) or array.shape[0] < 1:
        raise ValueError(
            f"image_grid expects (N, C, H, W) with C = 1 or 3 and N >= 1, got shape {array.shape}"
        )
    count, channels, height, width = array.shape
    columns = columns or math.ceil(math.sqrt(count))
    rows = math.ceil(count / columns)
    factor = max(1, math.ceil(min_size / min(height, width)))
    array = np.nan_to_num(np.clip(array, 0.0, 1.0), nan=0.0)
    array = array.repeat(factor, axis=2).repeat(factor, axis=3)
    tile_h, tile_w = height * factor, width * factor
    canvas = np.full(
        (channels, rows * tile_h + (rows + 1) * padding, columns * tile_w + (columns + 1) * padding), 0.5
    )
    for index in range(count):
        row, column = divmod(index, columns)
        top = padding + row * (tile_h + padding)
        left = padding + column * (tile_w + padding)
        canvas[:, top : top + tile_h, left : left + tile_w] = array[index]
    picture = np.round(canvas * 255.0).astype(np.uint8)
    return picture[0] if channels == 1 else picture.transpose(1, 2, 0)


def _levels_to_unit(levels: Tensor, num_levels: int) -> Tensor:
    """Integer levels `0 .. K-1` to display values in `[0, 1]`."""
    return levels.double() / (num_levels - 1)


@torch.no_grad()
def write_sample_grids(
    model: DequantizedFlow,
    directory: Union[str, Path],
    temperatures: Sequence[float] = DEFAULT_TEMPERATURES,
    count: int = 64,
    num_classes: int = 0,
    seed: int = 0,
    prefix: str = "samples",
) -> list[Path]:
    """Write `<prefix>_t<T>.png` for each temperature and `<prefix>_temperatures.png`; return the paths.

    Unconditional models: `count` samples per temperature. Class-conditional models (`num_classes > 0`,
    one-hot context): one row per class of `ceil(count / num_classes)` samples. Samples are quantised to
    the model's levels, as the discrete data are. Seeded: the same seed gives the same pictures.
    """
    if not temperatures:
        raise ValueError("temperatures must hold at least one value")
    directory = Path(directory)
    reference = next(iter(model.parameters()), None)
    if reference is None:
        reference = next(iter(model.buffers()))
    device, dtype = reference.device, reference.dtype
    was_training = model.training
    model.eval()
    paths: list[Path] = []
    strips: list[Tensor] = []
    per_class = math.ceil(count / num_classes) if num_classes else count
    try:
        for temperature in temperatures:
            with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                torch.manual_seed(seed)
                if num_classes:
                    labels = torch.arange(num_classes, device=device).repeat_interleave(per_class)
                    context = one_hot(labels, num_classes, dtype)
                    levels = model.sample_levels((), context, temperature)
                    columns = per_class
                else:
                    levels = model.sample_levels((count,), None, temperature)
                    columns = None
            pictures = _levels_to_unit(levels, model.num_levels)
            paths.append(
                write_png(directory / f"{prefix}_t{temperature:.2f}.png", image_grid(pictures, columns))
            )
            strip_width = per_class if num_classes else min(count, 10)
            strips.append(pictures[:strip_width] if not num_classes else pictures[::per_class])
        overview = torch.cat(strips)
        overview_columns = strips[0].shape[0]
        paths.append(
            write_png(directory / f"{prefix}_temperatures.png", image_grid(overview, overview_columns))
        )
    finally:
        model.train(was_training)
    return paths


@torch.no_grad()
def write_reconstructions(
    model: DequantizedFlow,
    images: Tensor,
    path: Union[str, Path],
    context: Optional[Tensor] = None,
) -> float:
    """Dequantise integer `images (N, C, H, W)`, `encode` then `decode` them; write originals over reconstructions.

    Returns the largest absolute difference between the dequantised inputs and their reconstructions
    (in `[0, 1]` units): exact invertibility shows as round-off (about 1e-5 in float32).
    """
    reference = next(iter(model.parameters()), None)
    if reference is None:
        reference = next(iter(model.buffers()))
    was_training = model.training
    model.eval()
    try:
        images = images.to(reference.device)
        context = None if context is None else context.to(device=reference.device, dtype=reference.dtype)
        y, _ = model.dequantizer(images, context)
        reconstruction = model.decode(model.encode(y, context), context)
    finally:
        model.train(was_training)
    error = float((reconstruction - y).abs().max())
    columns = images.shape[0]
    picture = torch.cat([y, reconstruction.clamp(0.0, 1.0)])
    write_png(path, image_grid(picture, columns))
    return error
