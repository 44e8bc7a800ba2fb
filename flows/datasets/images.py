"""Image datasets as integer arrays `(N, C, H, W)` with class labels: digits, MNIST (IDX), CIFAR-10 (pickles).

- `digits`: scikit-learn's bundled 8x8 handwritten digits, 17 grey levels (0..16), shape `(1, 8, 8)`;
  needs no network. Split into train/val/test with fixed fractions.
- `mnist`: the four IDX files of MNIST (`train-images-idx3-ubyte`, `train-labels-idx1-ubyte`,
  `t10k-images-idx3-ubyte`, `t10k-labels-idx1-ubyte`, optionally `.gz`), 256 levels, shape `(1, 28, 28)`.
- `cifar10`: the python pickle batches of CIFAR-10 (`data_batch_1..5`, `test_batch`, as in
  `cifar-10-python.tar.gz`), 256 levels, shape `(3, 32, 32)`.
- `imagenet64`: downsampled ImageNet 64x64 (Chrabaszcz et al. 2017, the `Imagenet64_train_npz` and
  `Imagenet64_val_npz` archives of image-net.org: `train_data_batch_1..10.npz` and `val_data.npz`, each
  with `data (N, 12288)` uint8 as R, G, B planes and `labels` 1..1000), 256 levels, shape `(3, 64, 64)`,
  1000 classes; the official validation set is the test split, as in the papers. Read with
  `allow_pickle=False` and held in memory (about 16 GB of training images).

MNIST, CIFAR-10 and ImageNet-64 are read from a local directory (`root`, else `$FLOWS_DATA_DIR`, else
`~/.cache/flows/data`); when the files are missing a `FileNotFoundError` says where to put them.
Validation rows are held out from the training files (their test files are the test split).
"""

from __future__ import annotations

import gzip
import io
import math
import os
import pickle
import pickletools
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Optional, Union

import numpy as np

from flows.datasets.splits import train_val_test_split

__all__ = [
    "IMAGE_DATASETS",
    "ImageSplits",
    "default_data_root",
    "load_cifar10",
    "load_digits_images",
    "load_imagenet64",
    "load_image_dataset",
    "load_mnist",
    "read_cifar_batch",
    "read_idx",
    "read_imagenet64_batch",
]

#: dataset name -> (event shape, number of grey levels per channel, number of classes)
IMAGE_DATASETS: dict[str, tuple[tuple[int, int, int], int, int]] = {
    "digits": ((1, 8, 8), 17, 10),
    "mnist": ((1, 28, 28), 256, 10),
    "cifar10": ((3, 32, 32), 256, 10),
    "imagenet64": ((3, 64, 64), 256, 1000),
}
IMAGENET64_TRAIN = tuple(f"Imagenet64_train_npz/train_data_batch_{i}.npz" for i in range(1, 11))
IMAGENET64_TEST = "Imagenet64_val_npz/val_data.npz"

MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
CIFAR10_TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR10_TEST_BATCH = "test_batch"
CIFAR10_FOLDER = "cifar-10-batches-py"

# IDX type codes (the third byte of the magic number) -> numpy big-endian dtypes.
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


@dataclass
class ImageSplits:
    """Integer images `(N, C, H, W)` with values in `[0, num_levels)` and int64 labels `(N,)` per split.

    8-bit datasets (MNIST, CIFAR-10) are stored as uint8 (CIFAR-10's training images take 150 MB, not 1.2 GB);
    digits as int64.
    """

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    train_labels: np.ndarray
    val_labels: np.ndarray
    test_labels: np.ndarray
    num_levels: int
    num_classes: int
    name: str

    @property
    def shape(self) -> tuple[int, int, int]:
        """The event shape `(C, H, W)`."""
        return tuple(int(s) for s in self.train.shape[1:])  # type: ignore[return-value]

    @property
    def num_dims(self) -> int:
        """`C * H * W`, the D of bits/dim."""
        c, h, w = self.shape
        return c * h * w


def default_data_root() -> Path:
    """`$FLOWS_DATA_DIR` when set, else `~/.cache/flows/data`."""
    return Path(os.environ.get("FLOWS_DATA_DIR", "~/.cache/flows/data")).expanduser()


def _check_images(images: np.ndarray, labels: np.ndarray, num_levels: int, source: str) -> None:
    if images.ndim != 4:
        raise ValueError(f"{source}: expected images of shape (N, C, H, W), got shape {images.shape}")
    if labels.shape != (images.shape[0],):
        raise ValueError(f"{source}: {images.shape[0]} images but labels of shape {labels.shape}")
    if images.size and (images.min() < 0 or images.max() >= num_levels):
        raise ValueError(
            f"{source}: pixel values must lie in [0, {num_levels - 1}], got [{images.min()}, {images.max()}]"
        )


def _split_with_labels(
    images: np.ndarray, labels: np.ndarray, val_fraction: float, test_fraction: float, seed: int
) -> tuple[tuple[np.ndarray, ...], tuple[np.ndarray, ...]]:
    index = np.arange(images.shape[0])
    parts = train_val_test_split(index, val_fraction, test_fraction, seed)
    return tuple(images[p] for p in parts), tuple(labels[p] for p in parts)


# ------------------------------------------------------------------------------------------------- digits
def load_digits_images(val_fraction: float = 0.1, test_fraction: float = 0.2, seed: int = 0) -> ImageSplits:
    """scikit-learn's 1,797 8x8 digits as `(N, 1, 8, 8)` int64 images with 17 levels (0..16) and labels."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError("the digits dataset needs scikit-learn: `pip install scikit-learn`") from error
    bunch = load_digits()
    images = np.asarray(bunch.images, dtype=np.int64)[:, None, :, :]
    labels = np.asarray(bunch.target, dtype=np.int64)
    _check_images(images, labels, 17, "sklearn digits")
    (train, val, test), (train_y, val_y, test_y) = _split_with_labels(
        images, labels, val_fraction, test_fraction, seed
    )
    return ImageSplits(train, val, test, train_y, val_y, test_y, 17, 10, "digits")


# -------------------------------------------------------------------------------------------------- MNIST
def _open_binary(path: Path) -> BinaryIO:
    if path.suffix == ".gz":
        return gzip.open(path, "rb")  # type: ignore[return-value]
    return path.open("rb")


def read_idx(path: Union[str, Path]) -> np.ndarray:
    """Read one IDX file (optionally gzipped) into a numpy array of its stored dtype and shape.

    Format: a 4-byte magic number `0x00 0x00 <type code> <number of dims>`, one big-endian uint32 per
    dimension, then the values in C order.
    """
    path = Path(path)
    with _open_binary(path) as handle:
        data = handle.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise ValueError(
            f"{path} is not an IDX file: its magic number starts with {data[:4]!r}, expected 0x0000"
        )
    type_code, ndim = data[2], data[3]
    if type_code not in _IDX_DTYPES:
        raise ValueError(
            f"{path}: unknown IDX type code {type_code:#04x}; expected one of {sorted(_IDX_DTYPES)}"
        )
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(f"{path}: truncated IDX header ({len(data)} bytes for {ndim} dimensions)")
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(_IDX_DTYPES[type_code])
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(data) - header != expected:
        raise ValueError(
            f"{path}: IDX header promises shape {shape} ({expected} bytes of data), got {len(data) - header} bytes"
        )
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def _find(directory: Path, name: str) -> Optional[Path]:
    for candidate in (directory / name, directory / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _mnist_directory(root: Path) -> Optional[Path]:
    for directory in (root / "mnist", root / "MNIST" / "raw", root):
        if all(_find(directory, name) for name in MNIST_FILES.values()):
            return directory
    return None


def load_mnist(root: Union[str, Path, None] = None, val_size: int = 5000, seed: int = 0) -> ImageSplits:
    """MNIST from its IDX files in `root/mnist`, `root/MNIST/raw` or `root` (plain or `.gz`).

    The last `val_size` training images (after a seeded shuffle) are the validation split; `t10k` is test.
    """
    root = default_data_root() if root is None else Path(root).expanduser()
    directory = _mnist_directory(root)
    if directory is None:
        names = ", ".join(MNIST_FILES.values())
        raise FileNotFoundError(
            f"MNIST files not found under {root}. Put the four IDX files ({names}; plain or .gz) in "
            f"{root / 'mnist'} (or pass data.root / set FLOWS_DATA_DIR). They are distributed at "
            "http://yann.lecun.com/exdb/mnist/ and its mirrors."
        )
    arrays = {key: read_idx(_find(directory, name)) for key, name in MNIST_FILES.items()}  # type: ignore[arg-type]
    for split in ("train", "test"):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if images.ndim != 3 or labels.ndim != 1:
            raise ValueError(
                f"MNIST {split}: expected images (N, H, W) and labels (N,), got {images.shape} and {labels.shape}"
            )
    train_all = arrays["train_images"][:, None]
    train_labels_all = arrays["train_labels"].astype(np.int64)
    test = arrays["test_images"][:, None]
    test_labels = arrays["test_labels"].astype(np.int64)
    _check_images(train_all, train_labels_all, 256, f"MNIST training files in {directory}")
    _check_images(test, test_labels, 256, f"MNIST test files in {directory}")
    train_all, test = train_all.astype(np.uint8, copy=False), test.astype(np.uint8, copy=False)
    train, val, train_labels, val_labels = _hold_out(train_all, train_labels_all, val_size, seed)
    return ImageSplits(train, val, test, train_labels, val_labels, test_labels, 256, 10, "mnist")


def _hold_out(
    images: np.ndarray, labels: np.ndarray, val_size: int, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    n = images.shape[0]
    if not 0 < val_size < n:
        raise ValueError(f"val_size must be in (0, {n}) for {n} training images, got {val_size}")
    order = np.random.default_rng(seed).permutation(n)
    train_index, val_index = order[: n - val_size], order[n - val_size :]
    return images[train_index], images[val_index], labels[train_index], labels[val_index]


# ----------------------------------------------------------------------------------------------- CIFAR-10
class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles the CIFAR batches (dicts of numpy arrays, lists, bytes) and refuses any other class.

    New arrays are built only while their bytes, all together, fit in the file (`data` is the whole pickle):
    a tiny file cannot ask for a huge allocation.
    """

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("_codecs", "encode"),
    }

    def __init__(self, data: bytes) -> None:
        super().__init__(io.BytesIO(data), encoding="bytes")
        self._limit = len(data)
        self._budget = len(data)  # bytes that new arrays may still take

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(
                f"refusing to unpickle {module}.{name}: a CIFAR-10 batch holds only numpy arrays and lists"
            )
        found = super().find_class(module, name)
        if name == "_reconstruct":
            return lambda subtype, shape, dtype: found(np.ndarray, self._checked(shape, dtype), dtype)
        if name == "ndarray":
            return self._ndarray
        return found

    def _ndarray(
        self, shape: Any, dtype: Any = float, buffer: Any = None, *args: Any, **kwargs: Any
    ) -> np.ndarray:
        if buffer is None:  # a new allocation (with a buffer, numpy checks its size itself)
            self._checked(shape, dtype)
        return np.ndarray(shape, dtype, buffer, *args, **kwargs)

    def _checked(self, shape: Any, dtype: Any) -> Any:
        """`shape`, after checking that an array of it fits in what is left of the file's size."""
        try:
            dims = [int(shape)] if np.ndim(shape) == 0 else [int(n) for n in shape]
            itemsize = np.dtype(dtype.decode() if isinstance(dtype, bytes) else dtype).itemsize
        except (TypeError, ValueError):
            return shape  # numpy's own error follows
        nbytes = math.prod(dims) * itemsize
        if nbytes > self._budget:
            raise pickle.UnpicklingError(
                f"an array of shape {tuple(dims)} needs {nbytes} bytes, more than the file "
                f"({self._limit} bytes) can hold"
            )
        self._budget -= max(nbytes, 0)
        return shape


def _check_counted_lengths(data: bytes) -> None:
    """Walk the pickle's opcodes without building anything: every counted string, bytes or frame must fit
    in the data (the unpickler allocates a counted object before reading it)."""
    for opcode, argument, position in pickletools.genops(data):  # ValueError on a truncated argument
        if opcode.name == "FRAME" and argument > len(data) - position:
            raise ValueError(f"a frame of {argument} bytes at offset {position} runs past the file's end")


def read_cifar_batch(path: Union[str, Path]) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR-10 python batch: `(images (N, 3, 32, 32) uint8, labels (N,) int64)`."""
    path = Path(path)
    data = path.read_bytes()
    try:
        _check_counted_lengths(data)
        batch = _NumpyOnlyUnpickler(data).load()
    except (pickle.UnpicklingError, EOFError, ValueError, MemoryError) as error:
        raise ValueError(f"{path} ({len(data)} bytes) is not a CIFAR-10 python batch: {error}") from error
    if not isinstance(batch, dict):
        raise ValueError(
            f"{path}: expected a pickled dict with b'data' and b'labels', got {type(batch).__name__}"
        )
    batch = {k.decode() if isinstance(k, bytes) else k: v for k, v in batch.items()}
    if "data" not in batch or "labels" not in batch:
        raise ValueError(f"{path}: expected keys 'data' and 'labels', got {sorted(map(str, batch))}")
    data = np.asarray(batch["data"])
    labels = np.asarray(batch["labels"], dtype=np.int64)
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or data.shape[0] != labels.shape[0]:
        raise ValueError(
            f"{path}: expected data (N, 3072) and labels (N,), got {data.shape} and {labels.shape}"
        )
    return data.reshape(-1, 3, 32, 32), labels


def _cifar_directory(root: Path) -> Optional[Path]:
    names = (*CIFAR10_TRAIN_BATCHES, CIFAR10_TEST_BATCH)
    for directory in (root / CIFAR10_FOLDER, root / "cifar10" / CIFAR10_FOLDER, root / "cifar10", root):
        if all((directory / name).is_file() for name in names):
            return directory
    return None


def load_cifar10(root: Union[str, Path, None] = None, val_size: int = 5000, seed: int = 0) -> ImageSplits:
    """CIFAR-10 from its python batches in `root/cifar-10-batches-py` (or `root/cifar10`, or `root`).

    The last `val_size` training images (after a seeded shuffle) are the validation split; `test_batch`
    is the test split.
    """
    root = default_data_root() if root is None else Path(root).expanduser()
    directory = _cifar_directory(root)
    if directory is None:
        raise FileNotFoundError(
            f"CIFAR-10 batches not found under {root}. Extract cifar-10-python.tar.gz "
            f"(https://www.cs.toronto.edu/~kriz/cifar.html) so that {root / CIFAR10_FOLDER} holds "
            f"{', '.join(CIFAR10_TRAIN_BATCHES)} and {CIFAR10_TEST_BATCH} "
            "(or pass data.root / set FLOWS_DATA_DIR)."
        )
    parts = [read_cifar_batch(directory / name) for name in CIFAR10_TRAIN_BATCHES]
    train_all = np.concatenate([images for images, _ in parts])
    train_labels_all = np.concatenate([labels for _, labels in parts])
    test, test_labels = read_cifar_batch(directory / CIFAR10_TEST_BATCH)
    _check_images(train_all, train_labels_all, 256, f"CIFAR-10 training batches in {directory}")
    _check_images(test, test_labels, 256, f"CIFAR-10 test batch in {directory}")
    train_all, test = train_all.astype(np.uint8, copy=False), test.astype(np.uint8, copy=False)
    train, val, train_labels, val_labels = _hold_out(train_all, train_labels_all, val_size, seed)
    return ImageSplits(train, val, test, train_labels, val_labels, test_labels, 256, 10, "cifar10")


# --------------------------------------------------------------------------------------------- ImageNet-64
def read_imagenet64_batch(path: Union[str, Path]) -> tuple[np.ndarray, np.ndarray]:
    """One downsampled-ImageNet npz file: `(images (N, 3, 64, 64) uint8, labels (N,) int64 in 0..999)`."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as archive:
            data, labels = np.asarray(archive["data"]), np.asarray(archive["labels"])
    except (KeyError, ValueError, OSError, EOFError) as error:
        raise ValueError(
            f"{path} is not a downsampled-ImageNet npz file with 'data' and 'labels': {error}"
        ) from error
    if data.ndim != 2 or data.shape[1] != 3 * 64 * 64 or labels.shape != (data.shape[0],):
        raise ValueError(
            f"{path}: expected data (N, 12288) and labels (N,), got {data.shape} and {labels.shape}"
        )
    if data.dtype != np.uint8 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(
            f"{path}: expected uint8 data and integer labels, got {data.dtype} and {labels.dtype}"
        )
    if labels.size and (labels.min() < 1 or labels.max() > 1000):
        raise ValueError(f"{path}: labels must lie in 1..1000, got [{labels.min()}, {labels.max()}]")
    return data.reshape(-1, 3, 64, 64), labels.astype(np.int64) - 1


def load_imagenet64(root: Union[str, Path, None] = None, val_size: int = 5000, seed: int = 0) -> ImageSplits:
    """Downsampled ImageNet 64x64 from `root` (see the module docstring); `val_size` training images are
    held out for validation, the official validation set is the test split."""
    root = default_data_root() if root is None else Path(root).expanduser()
    missing = [name for name in (*IMAGENET64_TRAIN, IMAGENET64_TEST) if not (root / name).is_file()]
    if missing:
        raise FileNotFoundError(
            f"ImageNet-64 files not found under {root} (missing {', '.join(missing[:3])}"
            f"{' ...' if len(missing) > 3 else ''}). Download Imagenet64_train_npz and Imagenet64_val_npz "
            "(https://image-net.org/download-images, 'Downsampled ImageNet 64x64') and extract them there "
            "(or pass data.root / set FLOWS_DATA_DIR)."
        )
    parts = [read_imagenet64_batch(root / name) for name in IMAGENET64_TRAIN]
    train_all = np.concatenate([images for images, _ in parts])
    train_labels_all = np.concatenate([labels for _, labels in parts])
    del parts
    test, test_labels = read_imagenet64_batch(root / IMAGENET64_TEST)
    train, val, train_labels, val_labels = _hold_out(train_all, train_labels_all, val_size, seed)
    return ImageSplits(train, val, test, train_labels, val_labels, test_labels, 256, 1000, "imagenet64")


# ------------------------------------------------------------------------------------------------- lookup
def load_image_dataset(
    name: str,
    root: Union[str, Path, None] = None,
    seed: int = 0,
    val_size: int = 5000,
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
) -> ImageSplits:
    """An image dataset by name (`digits`, `mnist`, `cifar10`, `imagenet64`); see the module docstring.

    `val_fraction` / `test_fraction` split digits; `val_size` is held out of the other training files.
    """
    if name == "digits":
        return load_digits_images(val_fraction, test_fraction, seed)
    if name == "mnist":
        return load_mnist(root, val_size, seed)
    if name == "cifar10":
        return load_cifar10(root, val_size, seed)
    if name == "imagenet64":
        return load_imagenet64(root, val_size, seed)
    raise ValueError(f"unknown image dataset {name!r}; expected one of {sorted(IMAGE_DATASETS)}")
