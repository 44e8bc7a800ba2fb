"""Image data (digits, MNIST IDX, CIFAR-10 pickles), PNG grids and reconstructions, and every image config end to end."""

from __future__ import annotations

import gzip
import math
import pickle
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml

from flows.datasets.images import (
    CIFAR10_FOLDER,
    MNIST_FILES,
    load_cifar10,
    load_digits_images,
    load_image_dataset,
    load_mnist,
    read_cifar_batch,
    read_idx,
)
from flows.dequantization import DequantizedFlow, make_dequantizer, make_preprocessing
from flows.flow import Flow
from flows.presets_image import Glow
from flows.training.images import image_grid, read_png, write_png, write_reconstructions, write_sample_grids
from tests.test_imagenet64 import write_imagenet64


@pytest.fixture(autouse=True)
def one_thread():
    """These small convolutions run several times faster on one thread than on two contended ones."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


#: the default tile size of `image_grid` (small images are upscaled to it)
TILE = 64
#: the default padding between tiles
PAD = 2

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs" / "images").glob("*.yaml"))


# ------------------------------------------------------------------------------------------ tiny files
def idx_bytes(array: np.ndarray) -> bytes:
    """An IDX file of a uint8 array: magic 0x0000 08 <ndim>, big-endian dims, then the bytes."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">I", size) for size in array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_mnist(directory: Path, n_train: int = 12, n_test: int = 5, gz: bool = False, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    arrays = {
        "train_images": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train_labels": rng.integers(0, 10, n_train, dtype=np.uint8),
        "test_images": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "test_labels": rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    directory.mkdir(parents=True, exist_ok=True)
    for key, name in MNIST_FILES.items():
        payload = idx_bytes(arrays[key])
        if gz:
            (directory / f"{name}.gz").write_bytes(gzip.compress(payload))
        else:
            (directory / name).write_bytes(payload)
    return arrays


def write_cifar(directory: Path, per_batch: int = 3, n_test: int = 4, seed: int = 0) -> dict:
    """CIFAR-10 python batches: pickled dicts with bytes keys, data (N, 3072) uint8 rows R..G..B, labels list."""
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    batches = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        n = n_test if name == "test_batch" else per_batch
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, n)]
        with (directory / name).open("wb") as handle:
            pickle.dump({b"batch_label": name.encode(), b"labels": labels, b"data": data}, handle, protocol=2)
        batches[name] = (data, labels)
    return batches


# ----------------------------------------------------------------------------------------------- readers
def test_digits_are_17_level_8x8_images_with_labels() -> None:
    splits = load_digits_images(val_fraction=0.1, test_fraction=0.2, seed=0)
    assert splits.train.shape[1:] == (1, 8, 8) and splits.shape == (1, 8, 8) and splits.num_dims == 64
    total = splits.train.shape[0] + splits.val.shape[0] + splits.test.shape[0]
    assert total == 1797 and splits.test.shape[0] == round(0.2 * 1797)
    everything = np.concatenate([splits.train, splits.val, splits.test])
    assert everything.min() == 0 and everything.max() == 16 and splits.num_levels == 17
    assert set(np.unique(splits.train_labels)) == set(range(10)) and splits.num_classes == 10
    from sklearn.datasets import load_digits

    reference = load_digits()
    # The first training image is one of sklearn's images with its own label.
    match = np.flatnonzero((reference.images == splits.train[0, 0]).all(axis=(1, 2)))
    assert match.size >= 1 and splits.train_labels[0] in reference.target[match]


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_idx_reader_round_trips_tiny_files(tmp_path: Path, gz: bool) -> None:
    arrays = write_mnist(tmp_path / "mnist", gz=gz)
    name = MNIST_FILES["train_images"] + (".gz" if gz else "")
    np.testing.assert_array_equal(read_idx(tmp_path / "mnist" / name), arrays["train_images"])
    splits = load_mnist(tmp_path, val_size=4, seed=0)
    assert splits.train.shape == (8, 1, 28, 28) and splits.val.shape == (4, 1, 28, 28)
    np.testing.assert_array_equal(splits.test[:, 0], arrays["test_images"])
    np.testing.assert_array_equal(splits.test_labels, arrays["test_labels"])
    # train + val are the training file, each image with its own label
    pooled = np.concatenate([splits.train, splits.val])[:, 0]
    pooled_labels = np.concatenate([splits.train_labels, splits.val_labels])
    for image, label in zip(pooled, pooled_labels):
        index = np.flatnonzero((arrays["train_images"] == image).all(axis=(1, 2)))
        assert arrays["train_labels"][index[0]] == label
    assert splits.num_levels == 256 and splits.train.dtype == np.uint8


def test_idx_reader_rejects_bad_files(tmp_path: Path) -> None:
    bad_magic = tmp_path / "bad"
    bad_magic.write_bytes(b"\x01\x02\x08\x01" + struct.pack(">I", 3) + b"abc")
    with pytest.raises(ValueError, match="not an IDX file"):
        read_idx(bad_magic)
    truncated = tmp_path / "truncated"
    truncated.write_bytes(idx_bytes(np.zeros((4, 2, 2), np.uint8))[:-3])
    with pytest.raises(ValueError, match="promises shape"):
        read_idx(truncated)


def test_missing_files_say_where_to_put_them(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"train-images-idx3-ubyte.*mnist"):
        load_mnist(tmp_path)
    with pytest.raises(FileNotFoundError, match=CIFAR10_FOLDER):
        load_cifar10(tmp_path)
    with pytest.raises(ValueError, match="unknown image dataset"):
        load_image_dataset("svhn")


def test_cifar_pickle_reader_keeps_the_channel_layout(tmp_path: Path) -> None:
    batches = write_cifar(tmp_path / CIFAR10_FOLDER)
    images, labels = read_cifar_batch(tmp_path / CIFAR10_FOLDER / "test_batch")
    data, expected_labels = batches["test_batch"]
    assert images.shape == (4, 3, 32, 32) and labels.tolist() == expected_labels
    # row layout: 1024 red, 1024 green, 1024 blue values, each row-major 32x32
    assert images[2, 1, 5, 7] == data[2, 1024 + 5 * 32 + 7]
    assert images[3, 2, 31, 0] == data[3, 2048 + 31 * 32]
    splits = load_cifar10(tmp_path, val_size=5, seed=1)
    assert splits.train.shape == (10, 3, 32, 32) and splits.val.shape == (5, 3, 32, 32)
    assert splits.test.shape == (4, 3, 32, 32) and splits.num_levels == 256


def test_cifar_reader_refuses_pickles_that_are_not_data(tmp_path: Path) -> None:
    class Payload:
        def __reduce__(self) -> tuple[Any, tuple[str]]:
            return (print, ("this must never run",))

    path = tmp_path / "evil"
    path.write_bytes(pickle.dumps({b"data": Payload(), b"labels": []}))
    with pytest.raises(ValueError, match="refusing to unpickle"):
        read_cifar_batch(path)


# ---------------------------------------------------------------------------------------------- pictures
def test_png_round_trip_and_grid_layout(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    grey = rng.integers(0, 256, (5, 7), dtype=np.uint8)
    rgb = rng.integers(0, 256, (4, 6, 3), dtype=np.uint8)
    np.testing.assert_array_equal(read_png(write_png(tmp_path / "grey.png", grey)), grey)
    np.testing.assert_array_equal(read_png(write_png(tmp_path / "rgb.png", rgb)), rgb)
    assert not list(tmp_path.glob(".*.tmp"))  # atomic writes leave no temporary files
    with pytest.raises(TypeError, match="uint8"):
        write_png(tmp_path / "x.png", grey.astype(float))

    images = np.zeros((10, 1, 8, 8))
    images[3] = 1.0
    grid = image_grid(images, padding=1, min_size=32)  # 4 columns, 3 rows of 32x32 tiles
    assert grid.shape == (3 * 32 + 4, 4 * 32 + 5) and grid.dtype == np.uint8
    top, left = 1, 1 + 3 * 33
    assert (grid[top : top + 32, left : left + 32] == 255).all()
    assert (grid[top : top + 32, 1 : 1 + 32] == 0).all()
    assert grid[0, 0] == 128  # padding is mid grey
    colour = image_grid(np.ones((2, 3, 4, 4)), columns=2, padding=1, min_size=4)
    assert colour.shape == (6, 11, 3)


def tiny_model(
    shape: tuple[int, int, int], context_features: int = 0, levels: int = 17, coupling: str = "affine"
) -> DequantizedFlow:
    torch.manual_seed(0)
    flow = Glow(
        shape, context_features=context_features, levels=1, steps=1, hidden_channels=4, coupling=coupling
    )
    dequantizer = make_dequantizer("uniform", shape, levels)
    return DequantizedFlow(flow, dequantizer, make_preprocessing("logit", 0.05))


def test_sample_grids_per_temperature_and_class(tmp_path: Path) -> None:
    model = tiny_model((1, 4, 4))
    paths = write_sample_grids(model, tmp_path / "plain", temperatures=(0.0, 0.5, 1.0), count=9)
    names = sorted(p.name for p in paths)
    assert names == [
        "samples_t0.00.png",
        "samples_t0.50.png",
        "samples_t1.00.png",
        "samples_temperatures.png",
    ]
    cold = read_png(tmp_path / "plain" / "samples_t0.00.png")
    size, pad = TILE, PAD  # 4x4 images upscaled to the default 64-pixel tiles
    first, second = slice(pad, pad + size), slice(2 * pad + size, 2 * pad + 2 * size)
    tile = cold[first, first]
    assert (cold[first, second] == tile).all()  # temperature 0: all the same image
    hot = read_png(tmp_path / "plain" / "samples_t1.00.png")
    assert not (hot[first, second] == hot[first, first]).all()
    again = write_sample_grids(model, tmp_path / "again", temperatures=(1.0,), count=9)
    np.testing.assert_array_equal(read_png(again[0]), hot)  # seeded

    conditional = tiny_model((1, 4, 4), context_features=3)
    write_sample_grids(conditional, tmp_path / "classes", temperatures=(0.7,), count=6, num_classes=3)
    grid = read_png(tmp_path / "classes" / "samples_t0.70.png")
    assert grid.shape == (3 * TILE + 4 * PAD, 2 * TILE + 3 * PAD)  # one row per class, two samples each


@pytest.mark.parametrize("coupling", ["affine", "spline"])
def test_reconstructions_are_exact_up_to_round_off(tmp_path: Path, coupling: str) -> None:
    model = tiny_model((1, 8, 8), coupling=coupling)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    images = torch.as_tensor(load_digits_images().test[:6])
    error = write_reconstructions(model, images, tmp_path / "reconstructions.png")
    assert error < 1e-4
    picture = read_png(tmp_path / "reconstructions.png")
    assert picture.shape == (2 * TILE + 3 * PAD, 6 * TILE + 7 * PAD)  # originals over reconstructions


# ------------------------------------------------------------------------------------ configs end to end
def small_overrides(config: dict[str, Any], tmp_path: Path) -> dict[str, Any]:
    """Shrink a shipped config to a few CPU steps; the dataset, levels and options stay as shipped."""
    model = config["model"]
    if model["name"] in ("glow", "realnvp"):
        model.update({"hidden_channels": 8})
    if model["name"] == "glow":
        model["steps"] = 1
    if model["name"] == "tarflow":
        model.update({"blocks": 2, "layers_per_block": 1, "channels": 8, "heads": 2})
    if model["name"] == "jet":
        model.update({"couplings": 2, "layers_per_coupling": 1, "channels": 8, "heads": 2})
    if config["data"]["dataset"] == "image:imagenet64":
        model["patch_size"] = 8  # 64 tokens: a few seconds of CPU sampling instead of 1,024 token steps
    config["train"].update(
        {
            "max_steps": 2,
            "max_epochs": None,
            "batch_size": 4,
            "eval_batch_size": 64,
            "warmup_steps": 0,
            "val_every_n_steps": 1,
        }
    )
    image = config.setdefault("image", {})
    image.update({"grid_size": 4, "reconstructions": 2, "temperatures": [0.0, 1.0], "val_size": 4})
    if image.get("dequantization") == "variational":
        image["dequantizer"] = {"hidden_channels": 4, "steps": 2}
    config["trainer"] = {"accelerator": "cpu", "limit_val_batches": 1}
    config["output"] = {"dir": str(tmp_path / "runs"), "name": "run", "progress_bar": False, "logger": "csv"}
    dataset = config["data"]["dataset"]
    if dataset == "image:mnist":
        write_mnist(tmp_path / "data" / "mnist", n_train=12, n_test=5)
        config["data"]["root"] = str(tmp_path / "data")
    elif dataset == "image:cifar10":
        write_cifar(tmp_path / "data" / CIFAR10_FOLDER, per_batch=3, n_test=4)
        config["data"]["root"] = str(tmp_path / "data")
    elif dataset == "image:imagenet64":
        write_imagenet64(tmp_path / "data", per_batch=1, n_test=2)
        config["data"]["root"] = str(tmp_path / "data")
    return config


@pytest.mark.slow
@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_every_image_config_runs_a_few_steps(path: Path, tmp_path: Path) -> None:
    from flows.training.config import read_yaml
    from flows.training.image_checkpoints import evaluate_image_checkpoint, sample_images
    from flows.training.pipeline import run as run_image
    from flows.training.registry import with_model_defaults

    assert len(CONFIGS) >= 7
    config = small_overrides(read_yaml(path), tmp_path)
    result = run_image(config, verbose=False)
    metrics = result.metrics
    for key in ("val_bpd", "test_bpd", "test_nll"):
        assert math.isfinite(metrics[key]), key
    assert metrics["test_bpd"] == pytest.approx(
        metrics["test_nll"] / (math.prod(metrics["shape"]) * math.log(2))
    )
    assert metrics["reconstruction_error"] < 1e-3
    run_dir = Path(metrics["run_dir"])
    assert (run_dir / "samples" / "samples_t0.00.png").is_file()
    assert (run_dir / "samples" / "samples_temperatures.png").is_file()
    assert (run_dir / "reconstructions.png").is_file() and (run_dir / "metrics.json").is_file()
    # The saved config carries every model option (defaults included), so a later default change cannot
    # alter what this checkpoint rebuilds.
    saved_model = yaml.safe_load((run_dir / "config.yaml").read_text())["model"]
    defaults = with_model_defaults({"name": saved_model["name"]}, "image")
    assert len(defaults) > 3 and set(defaults) <= set(saved_model)
    checkpoint = run_dir / "checkpoints" / "last.ckpt"
    evaluated = evaluate_image_checkpoint(checkpoint, {"image": {"eval_samples": 2}}, verbose=False)
    assert evaluated["test_rows"] == metrics["test_rows"] and math.isfinite(evaluated["test_bpd"])
    out = sample_images(checkpoint, tmp_path / "drawn.npy", count=3, temperature=0.5, seed=0)
    drawn = np.load(out)
    channels, height, width = metrics["shape"]
    assert drawn.shape[-3:] == (channels, height, width) and drawn.min() >= 0
    assert drawn.max() < metrics["num_levels"]
    if metrics["conditional"]:
        one_class = np.load(sample_images(checkpoint, tmp_path / "ones.npy", count=2, label=1, seed=0))
        assert one_class.shape == (2, channels, height, width)
        with pytest.raises(ValueError, match="label"):
            sample_images(checkpoint, tmp_path / "bad.npy", count=2, label=10)
    else:
        with pytest.raises(ValueError, match="unconditional"):
            sample_images(checkpoint, tmp_path / "bad.npy", count=2, label=1)


# ------------------------------------------------------------------------------------------- validation
def test_image_options_and_models_are_validated_by_key() -> None:
    from flows.training.config import ConfigError
    from flows.training.image_data import build_image_model, parse_image_options, split_image_options

    with pytest.raises(ConfigError, match="did you mean 'dequantization'"):
        parse_image_options({"dequantisation": "uniform"})
    with pytest.raises(ConfigError, match="image.dequantization"):
        parse_image_options({"dequantization": "gaussian"})
    with pytest.raises(ConfigError, match="variational only"):
        parse_image_options({"dequantization": "uniform", "dequantizer": {"steps": 2}})
    with pytest.raises(ConfigError, match="image.dequantizer.depth"):
        parse_image_options({"dequantization": "variational", "dequantizer": {"depth": 2}})
    with pytest.raises(ConfigError, match="logit_alpha"):
        parse_image_options({"logit_alpha": 0.5})
    options = parse_image_options({"conditional": True, "dequantization": "variational"})
    with pytest.raises(ConfigError, match="model.depth"):
        build_image_model({"name": "glow", "depth": 3}, options, (1, 8, 8), 17, 10)
    with pytest.raises(ConfigError, match="set from the data"):
        build_image_model({"name": "glow", "shape": [1, 8, 8]}, options, (1, 8, 8), 17, 10)
    with pytest.raises(ConfigError, match="model 'maf' is for a table dataset; models for an image dataset"):
        build_image_model({"name": "maf"}, options, (1, 8, 8), 17, 10)
    model = build_image_model({"name": "realnvp", "hidden_channels": 4}, options, (1, 8, 8), 17, 10)
    assert isinstance(model, Flow) and model.dequantizer.context_features == 10
    config, parsed, plain = split_image_options(
        {"data": {"dataset": "image:digits"}, "model": {"name": "glow"}, "image": {"preprocessing": "center"}}
    )
    assert parsed.preprocessing == "center" and plain["image"] == {"preprocessing": "center"}
    assert config.data.dataset == "image:digits"


def test_cifar_reader_refuses_pickles_that_ask_for_huge_allocations(tmp_path: Path) -> None:
    """Tiny pickles that would make the unpickler allocate 1 TiB: a counted bytes8 and a numpy array."""
    import struct

    bombs = {
        "bytes8": b"\x80\x04\x8e" + struct.pack("<Q", 2**40) + b".",
        "array": b"\x80\x02cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n"
        b"\x8a\x06\x00\x00\x00\x00\x00\x01\x85C\x01b\x87R.",
    }
    for name, payload in bombs.items():
        path = tmp_path / name
        path.write_bytes(payload)
        with pytest.raises(ValueError, match="not a CIFAR-10 python batch") as caught:
            read_cifar_batch(path)
        message = str(caught.value)
        assert str(path) in message and f"({len(payload)} bytes)" in message and "1099511627776" in message
