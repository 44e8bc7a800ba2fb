"""The streamed-table task: a table flow trained on `data.dataset: file:<path or glob>` read piece by piece.

The same model, module, objective, metrics and outputs as `TabularTask`; what differs is where the rows
come from. One streaming pass (`flows.datasets.stream_stats.scan_table`, cached beside the data) gives the
row counts per piece and split and the training statistics (standardisation, integer-valued columns);
training batches come from `flows.training.streaming.ShardedTableStream`, validation and test rows are
streamed in file order and never held whole. Splits are given files (`val_path`, `test_path`) or rows held
out by a hash of their global row index (`data.val_fraction`, `data.test_fraction`).
"""

from __future__ import annotations

import glob
import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader

from flows.datasets.stream import STREAM_FORMATS, TEST, TRAIN, VAL, TableSource, open_source
from flows.datasets.stream_stats import scan_table
from flows.dequantization import dequantize
from flows.flow import Flow
from flows.training.checkpoints import model_record
from flows.training.config import Config, ConfigError, DataConfig
from flows.training.data import DataSplits, ResumableBatches
from flows.training.evaluation import LikelihoodTally, draw_samples, iter_log_prob, write_samples
from flows.training.fitting import Fitted
from flows.training.models import build_flow
from flows.training.safety import warn_about_columns
from flows.training.standardization import check_resolution
from flows.training.streaming import EpochLoader, ShardedTableStream, SplitStream, StreamedSplit
from flows.training.tasks.tabular import TabularTask, _plots
from flows.training.trainer_options import training_dtype

__all__ = ["StreamedTable", "StreamingTableTask", "is_streaming_config", "load_streamed_table"]


@dataclass
class StreamedTable:
    """The three splits of a streamed table and what the scan found (column statistics of the train split)."""

    train: StreamedSplit
    val: StreamedSplit
    test: StreamedSplit
    columns: list[str]
    name: str
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def features(self) -> int:
        return len(self.columns)


def _ram_bytes() -> int:
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):  # pragma: no cover - not POSIX
        return 1 << 62


def is_streaming_config(values: Union[Config, Mapping[str, Any]]) -> bool:
    """True when a `file:` dataset is to be streamed: `data.streaming: true`, or `auto` with a glob of several
    files or files larger than `data.stream_memory_fraction` of the RAM (and a format that streams)."""
    if isinstance(values, Config):
        data: Mapping[str, Any] = vars(values.data)
    else:
        data = values.get("data") or {}
        if not isinstance(data, Mapping):
            return False
    kind, _, pattern = str(data.get("dataset", "")).partition(":")
    streaming = data.get("streaming", DataConfig.streaming)
    if kind != "file" or streaming is False or streaming not in (True, "auto"):
        return False
    if streaming is True:
        return True
    paths = (
        glob.glob(os.path.expanduser(pattern)) if glob.has_magic(pattern) else [os.path.expanduser(pattern)]
    )
    paths = [p for p in paths if os.path.isfile(p)]
    if not paths or any(Path(p).suffix.lower() not in STREAM_FORMATS for p in paths):
        return False
    fraction = data.get("stream_memory_fraction", DataConfig.stream_memory_fraction)
    if not isinstance(fraction, (int, float)) or isinstance(fraction, bool):
        fraction = DataConfig.stream_memory_fraction
    return len(paths) > 1 or sum(os.path.getsize(p) for p in paths) > fraction * _ram_bytes()


def load_streamed_table(config: DataConfig, seed: int) -> StreamedTable:
    """Scan the files of `config.dataset` (and the given validation / test files) into three splits."""
    split_seed = seed if config.split_seed is None else config.split_seed
    pattern = config.dataset.partition(":")[2]

    def source(path: str) -> TableSource:
        return open_source(path, config.columns, config.header, config.block_bytes)

    main = source(pattern)
    val_fraction = 0.0 if config.val_path is not None else config.val_fraction
    test_fraction = 0.0 if config.test_path is not None else config.test_fraction
    if val_fraction + test_fraction >= 1.0:
        raise ConfigError(
            f"config keys 'data.val_fraction' + 'data.test_fraction' must be < 1, got {val_fraction} + "
            f"{test_fraction}"
        )
    scan = scan_table(main, split_seed, val_fraction, test_fraction)
    hashed = (split_seed, val_fraction, test_fraction)
    splits = {"train": StreamedSplit(main, scan, TRAIN, *hashed)}
    for name, given, label in (("val", config.val_path, VAL), ("test", config.test_path, TEST)):
        if given is None:
            splits[name] = StreamedSplit(main, scan, label, *hashed)
            continue
        other = source(given)
        if len(other.columns) != len(main.columns):
            raise ValueError(
                f"{given} has {len(other.columns)} columns {list(other.names)}, expected {len(main.columns)} "
                "like the training file"
            )
        splits[name] = StreamedSplit(other, scan_table(other, split_seed), TRAIN, split_seed, 0.0, 0.0)
    for name, split in splits.items():
        if split.rows < 1:
            raise ValueError(f"{config.dataset}: the {name} split is empty")
    info = {"streamed": True, "discrete": scan.discrete}
    return StreamedTable(
        splits["train"], splits["val"], splits["test"], list(main.names), config.dataset, info
    )


class StreamingDataModule(ResumableBatches, L.LightningDataModule):
    """Loaders of a streamed table: sharded training batches (resumable mid-epoch), validation and test
    split in file order (every rank sees all of them, like `TableDataModule`)."""

    def __init__(self, data: StreamedTable, config: Config) -> None:
        super().__init__()
        self.data = data
        self.config = config

    def _rank_and_world(self) -> tuple[int, int]:
        trainer = getattr(self, "trainer", None)
        return (0, 1) if trainer is None else (int(trainer.global_rank), int(trainer.world_size))

    def train_dataloader(self) -> DataLoader:
        rank, world = self._rank_and_world()
        stream = training_stream(self.data, self.config, rank, world)
        workers = self.config.data.num_workers
        return EpochLoader(self._training_sampler(stream), self._epoch, num_workers=workers)

    def _epoch(self) -> int:
        trainer = getattr(self, "trainer", None)
        return 0 if trainer is None else int(trainer.current_epoch)

    def _eval_loader(self, split: StreamedSplit, offset: int) -> DataLoader:
        seed = self.config.seed + offset if self.data.info.get("dequantized") else None
        return DataLoader(SplitStream(split, self.config.train.eval_batch_size, seed), batch_size=None)

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader(self.data.val, 1)

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader(self.data.test, 2)


def training_stream(data: StreamedTable, config: Config, rank: int, world: int) -> ShardedTableStream:
    """Rank `rank`'s training stream (shards: `data.shards`, or devices x workers when null)."""
    workers = max(1, config.data.num_workers)
    shards = config.data.shards or world * workers
    return ShardedTableStream(
        data.train,
        config.train.batch_size,
        shards,
        config.data.shuffle_buffer,
        config.train.shuffle,
        config.seed,
        rank=rank,
        world_size=world,
        num_workers=config.data.num_workers,
    )


class StreamingTableTask(TabularTask):
    """A `TabularTask` whose rows are streamed from disk (`StreamedTable`) instead of held in memory."""

    def resolve(self, values: Union[Config, Mapping[str, Any]]) -> Config:
        config = super().resolve(values)
        if config.data.context_columns:
            raise ConfigError(
                "config key 'data.context_columns': conditional models are not trained on streamed tables "
                "yet; set data.streaming: false (the table is then read whole)"
            )
        for key in ("bounds", "discrete_columns", "categorical_columns"):
            if getattr(config.data, key):
                raise ConfigError(
                    f"config key 'data.{key}': per-column bounds and discrete or categorical columns are not "
                    "applied to streamed tables yet; set data.streaming: false (the table is then read whole), "
                    f"got {key} = {getattr(config.data, key)!r}"
                )
        return config

    def load_data(self, config: Config) -> StreamedTable:
        return load_streamed_table(config.data, config.seed)

    def prepare_data(self, config: Config, data: StreamedTable) -> StreamedTable:
        dequantize = config.data.dequantize
        if dequantize is None:
            dequantize = bool(data.info["discrete"])
            if dequantize:
                warnings.warn(
                    f"every training value of {data.name} is an integer: adding U[0, 1) dequantisation noise "
                    "(set data.dequantize: false to fit the values as they are)",
                    stacklevel=2,
                )
        data.info["dequantized"] = bool(dequantize)
        return data

    def build(self, config: Config, data: StreamedTable) -> tuple[Flow, dict[str, Any]]:
        scan = data.train.scan
        # the checks of a table held in memory (constant, discrete columns), on its first 10,000 rows
        sample = next(SplitStream(data.train, 10_000).arrays())
        warn_about_columns(sample, data.columns, dequantized=bool(data.info.get("dequantized")))
        largest = np.maximum(np.abs(scan.minimum), np.abs(scan.maximum))  # (the scan of every training row)
        check_resolution(largest, scan.std, list(data.columns), training_dtype(config.trainer))
        mean = std = None
        if config.data.standardize:
            mean, std = scan.mean.copy(), scan.std.copy()
            if data.info.get("dequantized"):  # the moments of x + U[0, 1), independent noise
                mean, std = mean + 0.5, np.sqrt(std**2 + 1.0 / 12.0)
            std = np.where(std > 0, std, 1.0)
        torch.manual_seed(config.seed)
        flow = build_flow(config.model, data.features, mean, std)
        record = model_record(config, data.features, data.columns, standardized=mean is not None)
        return flow, record

    def initialize(self, model: Flow, data: StreamedTable, config: Config, global_batch: int) -> None:
        """ActNorm on the first global batch: the batches of one process with the whole global batch."""
        world = global_batch // config.train.batch_size
        shards = config.data.shards or world * max(1, config.data.num_workers)
        stream = ShardedTableStream(
            data.train,
            global_batch,
            shards,
            config.data.shuffle_buffer,
            config.train.shuffle,
            config.seed,
            num_workers=config.data.num_workers,
        )
        rows = torch.as_tensor(next(stream.batches(0)))
        if data.info.get("dequantized"):
            noise = np.random.default_rng(config.seed + 3).uniform(size=tuple(rows.shape))
            rows = dequantize(rows, torch.as_tensor(noise))
        model.initialize(rows.to(torch.get_default_dtype()))

    def datamodule(self, data: StreamedTable, config: Config) -> StreamingDataModule:
        return StreamingDataModule(data, config)

    def evaluate(self, fitted: Fitted, config: Config) -> dict[str, Any]:
        data: StreamedTable = fitted.info["data"]
        module = fitted.trainer.datamodule
        metrics = split_metrics(fitted.model, module.test_dataloader().dataset)
        best = fitted.best_val
        if best is None:
            best = -split_metrics(fitted.model, module.val_dataloader().dataset, "val")["val_log_likelihood"]
        metrics.update(
            {
                "best_val_nll": best,
                "features": data.features,
                "train_rows": data.train.rows,
                "dequantized": bool(data.info.get("dequantized")),
                "streamed": True,
            }
        )
        return metrics

    def write_outputs(self, fitted: Fitted, config: Config, run_dir: Path) -> dict[str, Any]:
        data: StreamedTable = fitted.info["data"]
        if config.output.samples <= 0:
            return {}
        samples = draw_samples(fitted.model, config.output.samples, seed=config.seed)
        write_samples(run_dir / "samples.csv", samples, data.columns)
        metrics: dict[str, Any] = {"samples_nonfinite_rows": int(np.sum(~np.isfinite(samples).all(axis=1)))}
        if config.output.plots:  # against the first rows of the test split (plots show a few thousand)
            shown = next(SplitStream(data.test, 5000).arrays())
            preview = DataSplits(shown, shown, shown, data.columns, data.name)
            metrics["plots"] = _plots(run_dir, fitted.model, preview, samples)
        return metrics


def split_metrics(flow: torch.nn.Module, stream: SplitStream, prefix: str = "test") -> dict[str, Any]:
    """Log-likelihood metrics of a streamed split (running mean and standard error)."""
    tally = LikelihoodTally()
    for log_prob in iter_log_prob(flow, stream.arrays()):
        tally.add(log_prob)
    return tally.metrics(prefix)
