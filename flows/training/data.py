"""Resolve a `data` config section into train / validation / test tables (numpy, float64, user units).

Dataset strings: `toy:<name>` (FFJORD 2-D toys), `synthetic:<name>` (targets with a known density; keyword
arguments in `data.target`), `sklearn:<name>` (tables bundled with scikit-learn), `uci:<name>` (the MAF
benchmarks from `data.root`), `file:<path>` (CSV / TSV / NPY / NPZ / Parquet, with `columns`, `header`,
`key`, and optional `val_path` / `test_path`). Also in-memory arrays and DataFrames (`splits_from_arrays`).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Protocol

import numpy as np
import torch
from torch.utils.data import Sampler

from flows import datasets
from flows.dequantization import dequantize
from flows.training.config import ConfigError, DataConfig
from flows.training.frames import in_fitted_order

__all__ = ["DataSplits", "GlobalBatchSampler", "load_splits", "splits_from_arrays"]


@dataclass
class DataSplits:
    """Three float64 tables `(n, D)` with the same columns, and what is known about the true density."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    columns: list[str]
    name: str
    #: differential entropy of the generator in nats (the best achievable expected test NLL), if known
    entropy: Optional[float] = None
    entropy_se: Optional[float] = None
    #: the values are integers: train with uniform dequantisation noise
    discrete: bool = False
    info: dict[str, Any] = field(default_factory=dict)
    #: conditional data (`data.context_columns`): context tables `(n, k)` beside train / val / test
    train_context: Optional[np.ndarray] = None
    val_context: Optional[np.ndarray] = None
    test_context: Optional[np.ndarray] = None
    context_columns: list[str] = field(default_factory=list)

    @property
    def features(self) -> int:
        return int(self.train.shape[1])

    @property
    def context_features(self) -> int:
        """Width `k` of the context tables (0 when unconditional)."""
        return len(self.context_columns)


def _split_seed(config: DataConfig, seed: int) -> int:
    return seed if config.split_seed is None else config.split_seed


def _check_columns(splits: dict[str, np.ndarray], source: str) -> None:
    widths = {name: array.shape[1] for name, array in splits.items()}
    if len(set(widths.values())) != 1:
        raise ValueError(f"{source}: train/val/test splits have different numbers of columns: {widths}")
    for name, array in splits.items():
        if array.shape[0] < 1:
            raise ValueError(f"{source}: the {name} split is empty")


def load_splits(config: DataConfig, seed: int = 0) -> DataSplits:
    """The three splits of the dataset named by `config.dataset` (see the module docstring)."""
    kind, _, name = config.dataset.partition(":")
    split_seed = _split_seed(config, seed)
    if kind == "toy":
        if name not in datasets.TOY_NAMES:
            raise ConfigError(
                f"config key 'data.dataset': unknown toy {name!r}; expected one of {list(datasets.TOY_NAMES)}"
            )
        train, val, test = (
            datasets.toy_sample(name, n, split_seed * 3 + offset)
            for offset, n in enumerate((config.n_train, config.n_val, config.n_test))
        )
        return DataSplits(
            train, val, test, ["x0", "x1"], config.dataset, entropy=datasets.TOY_ENTROPY.get(name)
        )
    if kind == "synthetic":
        if name not in datasets.SYNTHETIC_TARGETS:
            raise ConfigError(
                f"config key 'data.dataset': unknown synthetic target {name!r}; "
                f"expected one of {sorted(datasets.SYNTHETIC_TARGETS)}"
            )
        try:
            target = datasets.make_synthetic_target(name, **config.target)
        except TypeError as error:
            raise ConfigError(f"config key 'data.target': invalid arguments for {name!r}: {error}") from error
        train, val, test = (
            target.sample(n, split_seed * 3 + offset)
            for offset, n in enumerate((config.n_train, config.n_val, config.n_test))
        )
        entropy, entropy_se = target.entropy()
        columns = list(getattr(target, "columns", [f"x{i}" for i in range(target.features)]))
        info: dict[str, Any] = {"target": dict(config.target)}
        if getattr(target, "context_columns", None):  # its entropy is that of y given these columns
            info["context_columns"] = list(target.context_columns)
        return DataSplits(
            train,
            val,
            test,
            columns,
            config.dataset,
            entropy=entropy,
            entropy_se=entropy_se,
            info=info,
        )
    if kind == "sklearn":
        if name not in datasets.SKLEARN_TABLES:
            raise ConfigError(
                f"config key 'data.dataset': unknown scikit-learn table {name!r}; "
                f"expected one of {sorted(datasets.SKLEARN_TABLES)}"
            )
        table = datasets.load_sklearn_table(name)
        train, val, test = datasets.train_val_test_split(
            table, config.val_fraction, config.test_fraction, split_seed
        )
        columns = [f"x{i}" for i in range(table.shape[1])]
        discrete = name in datasets.DISCRETE_SKLEARN_TABLES
        return DataSplits(train, val, test, columns, config.dataset, discrete=discrete)
    if kind == "uci":
        if name not in datasets.UCI_NAMES:
            raise ConfigError(
                f"config key 'data.dataset': unknown UCI dataset {name!r}; expected one of {list(datasets.UCI_NAMES)}"
            )
        if config.root is None:
            raise ConfigError(
                f"config key 'data.root' is required for {config.dataset!r}: the MAF data directory"
            )
        splits = datasets.load_uci(name, config.root)
        columns = [f"x{i}" for i in range(splits["train"].shape[1])]
        return DataSplits(splits["train"], splits["val"], splits["test"], columns, config.dataset)
    if kind == "file":
        return _file_splits(config, name, split_seed)
    raise ConfigError(
        f"config key 'data.dataset': unknown kind {kind!r} in {config.dataset!r}; "
        "expected toy:, synthetic:, sklearn:, uci: or file:"
    )


def _file_splits(config: DataConfig, path: str, split_seed: int) -> DataSplits:
    files = [path] + [p for p in (config.val_path, config.test_path) if p is not None]
    tables, columns, labels = datasets.load_tables(
        [Path(p).expanduser() for p in files],
        config.categorical_columns,
        columns=config.columns,
        header=config.header,
        key=config.key,
    )
    table, read = tables[0], iter(tables[1:])
    if config.val_path is None and config.test_path is None:
        train, val, test = datasets.train_val_test_split(
            table, config.val_fraction, config.test_fraction, split_seed
        )
    else:
        val_fraction = 0.0 if config.val_path is not None else config.val_fraction
        test_fraction = 0.0 if config.test_path is not None else config.test_fraction
        train, val, test = datasets.train_val_test_split(table, val_fraction, test_fraction, split_seed)
        if config.val_path is not None:
            val = next(read)
            _same_columns(columns, val.shape[1], config.val_path)
        if config.test_path is not None:
            test = next(read)
            _same_columns(columns, test.shape[1], config.test_path)
    splits = {"train": train, "val": val, "test": test}
    _check_columns(splits, path)
    discrete = bool(np.all(table == np.round(table)))
    info = {"labels": labels} if labels else {}
    return DataSplits(train, val, test, columns, f"file:{path}", discrete=discrete, info=info)


def _same_columns(expected: list[str], width: int, path: str) -> None:
    if len(expected) != width:
        raise ValueError(
            f"{path} has {width} columns, expected {len(expected)} like the training file {expected}"
        )


def splits_from_arrays(
    x: Any,
    x_val: Any = None,
    x_test: Any = None,
    val_fraction: float = 0.1,
    seed: int = 0,
) -> DataSplits:
    """Splits from in-memory data (numpy arrays, DataFrames, lists). Without `x_val`, `val_fraction` of
    `x` is held out for validation (early stopping); `x_test` may be None (the test split is then the
    validation split). With a context, see `flows.training.context.conditional_splits_from_arrays`."""
    train, columns = datasets.as_array(x, "X")
    if x_val is not None:
        val, _ = datasets.as_array(in_fitted_order(x_val, x, "X_val"), "X_val")
    elif val_fraction > 0 and train.shape[0] >= 3:
        train, val, _ = datasets.train_val_test_split(train, val_fraction, 0.0, seed)
    else:
        if val_fraction > 0:
            warnings.warn(
                f"X has only {train.shape[0]} rows: none can be held out for validation (val_fraction "
                f"{val_fraction}), so early stopping and the best weights are chosen on the training rows",
                UserWarning,
                stacklevel=3,
            )
        val = train
    test = val if x_test is None else datasets.as_array(in_fitted_order(x_test, x, "X_test"), "X_test")[0]
    splits = {"train": train, "val": val, "test": test}
    _check_columns(splits, "X")
    return DataSplits(train, val, test, columns, "arrays")


def dequantize_fixed(x: np.ndarray, seed: int, columns: Optional[np.ndarray] = None) -> np.ndarray:
    """One fixed draw of U[0, 1) noise (numpy's generator seeded by `seed`) added to integer-valued rows
    `x (n, D)` (for validation and test), through `flows.dequantization.dequantize`; only to the columns
    where the `(D,)` mask `columns` is 1, when given."""
    noise = np.random.default_rng(seed).uniform(size=x.shape)
    if columns is not None:
        noise = noise * np.asarray(columns, dtype=np.float64)
    return dequantize(torch.as_tensor(x), torch.as_tensor(noise)).numpy()


class GlobalBatchSampler(Sampler[list[int]]):
    """Batches of a per-epoch global permutation, split across `world_size` ranks.

    Every epoch draws one permutation of the `n` rows (seeded by `seed + epoch`) and cuts it into global
    batches of `batch_size * world_size` rows; rank `r` takes rows `r, r + world_size, ...` of each global
    batch. So one process with batch `B * W` and `W` processes with batch `B` see the same global batches,
    and DDP's averaged gradient equals the single-process gradient. The last incomplete global batch is
    dropped when there is at least one complete batch.
    """

    def __init__(
        self, n: int, batch_size: int, shuffle: bool, seed: int, rank: int = 0, world_size: int = 1
    ) -> None:
        if n < 1 or batch_size < 1 or world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(
                f"invalid sampler arguments n={n}, batch_size={batch_size}, rank={rank}/{world_size}"
            )
        self.n = n
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0
        self._resume: Optional[tuple[int, int]] = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def resume_from(self, epoch: int, batches_done: int) -> None:
        """Make the next iteration over `epoch` skip its first `batches_done` batches (a mid-epoch resume)."""
        self._resume = (int(epoch), int(batches_done)) if 0 < batches_done < len(self) else None

    @property
    def global_batch_size(self) -> int:
        return min(self.batch_size * self.world_size, self.n)

    def __len__(self) -> int:
        return max(1, self.n // self.global_batch_size)

    def __iter__(self):
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.n, generator=generator).tolist()
        else:
            order = list(range(self.n))
        size = self.global_batch_size
        skip = 0
        if self._resume is not None and self._resume[0] == self.epoch:
            skip, self._resume = self._resume[1], None
        for start in range(skip * size, len(self) * size, size):
            global_batch = order[start : start + size]
            yield global_batch[self.rank :: self.world_size]


class Resumable(Protocol):
    """What makes a training loader's batches (a `GlobalBatchSampler`, a streamed table) resumable."""

    def resume_from(self, epoch: int, batches_done: int) -> None: ...


class ResumableBatches:
    """Mixin for the `LightningDataModule`s whose training batches come from a `Resumable` (a
    `GlobalBatchSampler` or a `flows.training.streaming.ShardedTableStream`).

    Checkpoints save the progress of the current epoch (`state_dict`); on resume, `load_state_dict` makes
    the sampler skip the batches of that epoch already trained on, so a run resumed from a mid-epoch
    checkpoint (`train.val_every_n_steps`) sees the same batches as an uninterrupted one. (Lightning's own
    loader-state hook is skipped when the training loader is built before the restore, which
    `estimated_stepping_batches` does; the datamodule's state is always restored.)
    """

    _train_sampler: Optional[Resumable] = None
    _pending_resume: Optional[tuple[int, int]] = None

    def _training_sampler(self, sampler: Any) -> Any:
        """Register the sampler of a new training loader (a pending resume applies to it)."""
        self._train_sampler = sampler
        if self._pending_resume is not None:
            sampler.resume_from(*self._pending_resume)
            self._pending_resume = None
        return sampler

    def state_dict(self) -> dict[str, int]:
        epoch, batches_done = trainer_progress(getattr(self, "trainer", None))
        return {"epoch": epoch, "batches_done": batches_done}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        resume = (int(state.get("epoch", 0)), int(state.get("batches_done", 0)))
        if self._train_sampler is not None:
            self._train_sampler.resume_from(*resume)
        else:
            self._pending_resume = resume


def trainer_progress(trainer: Any) -> tuple[int, int]:
    """`(current epoch, batches of it completed)` of a Lightning trainer (0, 0 without one)."""
    if trainer is None:
        return 0, 0
    return int(trainer.current_epoch), int(trainer.fit_loop.epoch_loop.batch_progress.current.completed)
