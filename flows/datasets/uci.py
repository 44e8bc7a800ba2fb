"""The five MAF tabular benchmarks (Papamakarios et al. 2017), read from a local copy of the MAF data archive.

Expected layout under ``root`` (the public MAF data archive, Zenodo record 1161203, unpacked)::

    power/data.npy  gas/ethylene_CO.pickle  hepmass/1000_train.csv  hepmass/1000_test.csv
    miniboone/data.npy  BSDS300/BSDS300.hdf5

Preprocessing and splits follow the MAF reference code step by step (see each ``_load_*`` docstring).
Nothing is downloaded.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from flows.datasets.files import _pandas

__all__ = ["UCI_FILES", "UCI_NAMES", "UCI_SPLIT_SIZES", "load_uci"]

ARCHIVE = "the MAF data archive (Papamakarios et al., Zenodo record 1161203, file data.tar.gz)"

#: dataset name -> files (relative to root) that it needs
UCI_FILES: dict[str, tuple[str, ...]] = {
    "power": ("power/data.npy",),
    "gas": ("gas/ethylene_CO.pickle",),
    "hepmass": ("hepmass/1000_train.csv", "hepmass/1000_test.csv"),
    "miniboone": ("miniboone/data.npy",),
    "bsds300": ("BSDS300/BSDS300.hdf5",),
}
UCI_NAMES: tuple[str, ...] = tuple(UCI_FILES)

#: (features, train rows, validation rows, test rows) of the full benchmarks, as in the MAF paper.
UCI_SPLIT_SIZES: dict[str, tuple[int, int, int, int]] = {
    "power": (6, 1_659_917, 184_435, 204_928),
    "gas": (8, 852_174, 94_685, 105_206),
    "hepmass": (21, 315_123, 35_013, 174_987),
    "miniboone": (43, 29_556, 3_284, 3_648),
    "bsds300": (63, 1_000_000, 50_000, 250_000),
}

Splits = dict[str, np.ndarray]


def _require(root: Path, rel: str, name: str) -> Path:
    path = root / rel
    if not path.is_file():
        raise FileNotFoundError(
            f"{name.upper()} needs the file {rel!r} under the data root {str(root)!r} "
            f"(looked for {str(path)!r}); put it there from {ARCHIVE}, keeping the archive's folder layout"
        )
    return path


def _tail_split(data: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """MAF split: test = last int(0.1 N) rows; validation = last int(0.1 N_rest) rows of the rest."""
    n_test = int(0.1 * data.shape[0])
    test = data[-n_test:] if n_test else data[:0]
    rest = data[: data.shape[0] - n_test]
    n_val = int(0.1 * rest.shape[0])
    val = rest[-n_val:] if n_val else rest[:0]
    return rest[: rest.shape[0] - n_val], val, test


def _load_power(root: Path) -> Splits:
    """Shuffle (RandomState(42)); drop columns 3 then 1; add noise drawn with the same RNG; split; standardise.

    Noise draw order: voltage 0.01*rand(N,1), gap 0.001*rand(N,1), sub-metering rand(N,3), time zeros;
    added as hstack(gap, voltage, sub-metering, time). Mean/std (ddof 0) of train+validation.
    """
    data = np.load(_require(root, UCI_FILES["power"][0], "power")).astype(np.float64)
    if data.ndim != 2 or data.shape[1] != 8:
        raise ValueError(f"POWER data.npy should be (N, 8) (6 columns remain), got shape {data.shape}")
    rng = np.random.RandomState(42)
    rng.shuffle(data)
    n = data.shape[0]
    data = np.delete(data, 3, axis=1)
    data = np.delete(data, 1, axis=1)
    voltage_noise = 0.01 * rng.rand(n, 1)
    gap_noise = 0.001 * rng.rand(n, 1)
    sm_noise = rng.rand(n, 3)
    time_noise = np.zeros((n, 1))
    data = data + np.hstack((gap_noise, voltage_noise, sm_noise, time_noise))
    train, val, test = _tail_split(data)
    both = np.vstack((train, val))
    mu, s = both.mean(axis=0), both.std(axis=0)
    return {"train": (train - mu) / s, "val": (val - mu) / s, "test": (test - mu) / s}


#: the only globals a pickled DataFrame of numbers may name (the current pandas and numpy names, and
#: numpy's pre-2.0 module paths); anything else could run code from the file, so it is refused
_FRAME_GLOBALS = {
    ("builtins", "slice"),
    ("builtins", "bytearray"),
    ("__builtin__", "slice"),
    ("_codecs", "encode"),
    ("numpy", "dtype"),
    ("numpy", "ndarray"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.numeric", "_frombuffer"),
    ("numpy.core.numeric", "_frombuffer"),
    ("pandas", "DataFrame"),
    ("pandas", "Index"),
    ("pandas", "RangeIndex"),
    ("pandas.core.frame", "DataFrame"),
    ("pandas.core.indexes.base", "Index"),
    ("pandas.core.indexes.base", "_new_Index"),
    ("pandas.core.indexes.range", "RangeIndex"),
    ("pandas.core.internals.managers", "BlockManager"),
    ("pandas._libs.internals", "_unpickle_block"),
    # string column names (pandas 3 stores them as Arrow strings)
    ("pandas", "StringDtype"),
    ("pandas.arrays", "ArrowStringArray"),
    ("pyarrow.lib", "_restore_array"),
    ("pyarrow.lib", "py_buffer"),
    ("pyarrow.lib", "type_for_alias"),
}


class _FrameUnpickler(pickle.Unpickler):
    """Unpickles a DataFrame of numbers and refuses every other global (no code from the file runs)."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _FRAME_GLOBALS:
            raise pickle.UnpicklingError(
                f"expected a pickled DataFrame of numbers, got a reference to {module}.{name}; refusing it, since "
                "unpickling arbitrary objects can run code"
            )
        return super().find_class(module, name)


def _read_gas_frame(path: Path) -> Any:
    pd = _pandas()
    try:
        with open(path, "rb") as handle:
            frame = _FrameUnpickler(handle).load()
    except Exception as err:  # old pandas pickles fail in many ways (ImportError, AttributeError, ...)
        raise ValueError(
            f"could not unpickle {str(path)!r} with pandas {pd.__version__} ({type(err).__name__}: {err}). "
            "The MAF archive's ethylene_CO.pickle was written by an old pandas; convert it once with an "
            "older pandas (e.g. `pd.read_pickle(p).to_pickle(p)` in pandas 0.2x/1.x) and retry"
        ) from err
    if not isinstance(frame, pd.DataFrame):
        raise ValueError(f"{path}: expected a pickled pandas DataFrame, got {type(frame).__name__}")
    return frame


def _gas_corr_counts(frame: Any) -> np.ndarray:
    """Per column, how many columns (itself included) have Pearson correlation > 0.98 with it."""
    return (frame.corr() > 0.98).to_numpy().sum(axis=1)


def _load_gas(root: Path) -> Splits:
    """Drop Meth/Eth/Time; drop the first column with corr > 0.98 to another until none; standardise (ddof 1)
    with the full-data mean/std; no shuffle; tail split."""
    frame = _read_gas_frame(_require(root, UCI_FILES["gas"][0], "gas"))
    missing = [c for c in ("Meth", "Eth", "Time") if c not in frame.columns]
    if missing:
        raise ValueError(f"GAS DataFrame lacks columns {missing}; got columns {list(frame.columns)}")
    frame = frame.drop(columns=["Meth", "Eth", "Time"])
    counts = _gas_corr_counts(frame)
    while np.any(counts > 1):
        frame = frame.drop(columns=[frame.columns[int(np.flatnonzero(counts > 1)[0])]])
        counts = _gas_corr_counts(frame)
    frame = (frame - frame.mean()) / frame.std()
    train, val, test = _tail_split(frame.to_numpy(dtype=np.float64))
    return {"train": train, "val": val, "test": test}


def _hepmass_positive(frame: Any) -> Any:
    frame = frame[frame[frame.columns[0]] == 1]
    return frame.drop(columns=[frame.columns[0]])


def _load_hepmass(root: Path) -> Splits:
    """Keep label-1 rows and drop the label; drop the test set's last column; standardise both with the train
    mean/std (ddof 1); drop columns whose smallest train value occurs > 5 times; validation = last 10% of train.
    """
    pd = _pandas()
    train_f = pd.read_csv(_require(root, UCI_FILES["hepmass"][0], "hepmass"), index_col=False)
    test_f = pd.read_csv(_require(root, UCI_FILES["hepmass"][1], "hepmass"), index_col=False)
    train_f = _hepmass_positive(train_f)
    test_f = _hepmass_positive(test_f)
    test_f = test_f.drop(columns=[test_f.columns[-1]])
    mu, s = train_f.mean(), train_f.std()
    train = ((train_f - mu) / s).to_numpy(dtype=np.float64)
    if test_f.shape[1] == train_f.shape[1]:  # same columns by position
        with np.errstate(divide="ignore", invalid="ignore"):  # constant columns: dropped below
            test = (test_f.to_numpy(dtype=np.float64) - mu.to_numpy()) / s.to_numpy()
    elif set(test_f.columns) <= set(train_f.columns):  # align by name, as pandas did in the MAF code
        test = ((test_f.reindex(columns=train_f.columns) - mu) / s).to_numpy(dtype=np.float64)
    else:
        raise ValueError(
            f"HEPMASS test columns ({test_f.shape[1]}) do not match train columns ({train_f.shape[1]}) "
            "by position or by name"
        )
    # Count on the raw train values: identical to counting after standardisation (a positive affine map),
    # and a constant column (std 0, NaN once standardised) is counted N times and dropped as it should be.
    raw = train_f.to_numpy(dtype=np.float64)
    keep = [j for j in range(raw.shape[1]) if np.count_nonzero(raw[:, j] == raw[:, j].min()) <= 5]
    train, test = train[:, keep], test[:, keep]
    if not np.all(np.isfinite(test)):
        raise ValueError("HEPMASS test set has non-finite values after column alignment and dropping")
    n_val = int(0.1 * train.shape[0])
    return {"train": train[: train.shape[0] - n_val], "val": train[train.shape[0] - n_val :], "test": test}


def _load_miniboone(root: Path) -> Splits:
    """Tail split of the cleaned data; standardise with the train+validation mean/std (ddof 0)."""
    data = np.load(_require(root, UCI_FILES["miniboone"][0], "miniboone")).astype(np.float64)
    train, val, test = _tail_split(data)
    both = np.vstack((train, val))
    mu, s = both.mean(axis=0), both.std(axis=0)
    return {"train": (train - mu) / s, "val": (val - mu) / s, "test": (test - mu) / s}


def _load_bsds300(root: Path) -> Splits:
    """The stored ``train``, ``validation`` and ``test`` datasets of BSDS300.hdf5, as stored (63-D)."""
    try:
        import h5py
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("BSDS300 needs h5py; install it with `pip install h5py`") from err
    path = _require(root, UCI_FILES["bsds300"][0], "bsds300")
    with h5py.File(path, "r") as f:
        missing = [k for k in ("train", "validation", "test") if k not in f]
        if missing:
            raise ValueError(f"{str(path)!r} lacks datasets {missing}; found {list(f.keys())}")
        return {"train": f["train"][()], "val": f["validation"][()], "test": f["test"][()]}


_LOADERS: dict[str, Callable[[Path], Splits]] = {
    "power": _load_power,
    "gas": _load_gas,
    "hepmass": _load_hepmass,
    "miniboone": _load_miniboone,
    "bsds300": _load_bsds300,
}


def load_uci(name: str, root: str | Path, dtype: np.dtype | type | None = None) -> Splits:
    """Load a MAF benchmark as ``{"train": (N_tr, D), "val": (N_va, D), "test": (N_te, D)}``.

    ``name`` is one of power, gas, hepmass, miniboone, bsds300 (case-insensitive). Arrays are float64
    (BSDS300: the stored dtype) unless ``dtype`` is given.
    """
    key = name.lower() if isinstance(name, str) else name
    if key not in _LOADERS:
        raise ValueError(f"unknown UCI dataset {name!r}; expected one of {list(UCI_NAMES)}")
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(
            f"UCI data root {str(root)!r} is not a directory; unpack {ARCHIVE} there so that it holds "
            f"{', '.join(f for files in UCI_FILES.values() for f in files)}"
        )
    splits = _LOADERS[key](root)
    if dtype is not None:
        splits = {k: v.astype(dtype, copy=False) for k, v in splits.items()}
    return {k: np.ascontiguousarray(v) for k, v in splits.items()}
