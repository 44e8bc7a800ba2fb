"""Run configuration: typed dataclasses, YAML loading and merging, dotted overrides, validation.

A config is a nested mapping with the sections `seed`, `data`, `model`, `train`, `trainer` and `output`
(see docs/config.md). Several YAML files merge in order (later files win, mappings merge key by key) and
`--a.b value` overrides parse `value` as YAML. Every key is checked against the dataclasses below: an
unknown key or a value of the wrong type raises `ConfigError` naming the key. `model` options are
checked against the chosen preset's signature when the model is built (`flows.training.models`), and
`trainer` keys against `lightning.Trainer`'s signature when the trainer is built. This module does not
import lightning.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import math
import os
import re
import reprlib
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml

from flows.io import atomic_open

__all__ = [
    "Config",
    "ConfigError",
    "DataConfig",
    "MollificationConfig",
    "OutputConfig",
    "TargetConfig",
    "TrainConfig",
    "apply_override",
    "check_value",
    "load_config",
    "merge",
    "parse_config",
    "write_yaml_atomic",
    "yaml_load",
]


class ConfigError(ValueError):
    """A config key that does not exist or holds a value of the wrong type; the message names the key."""


@dataclass
class DataConfig:
    """Where the table comes from and how it is split and preprocessed."""

    #: "toy:<name>", "synthetic:<name>", "sklearn:<name>", "uci:<name>" or "file:<path>"
    dataset: str = "toy:moons"
    #: rows drawn from a toy or synthetic generator for the train / val / test splits
    n_train: int = 10_000
    n_val: int = 2_000
    n_test: int = 10_000
    #: keyword arguments of the synthetic target, e.g. {features: 6, components: 5, seed: 0}
    target: dict = field(default_factory=dict)
    #: fractions used to split a single table (file or sklearn); ignored when splits are given
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    #: seed of the split shuffle and of generated data; null = the top-level seed
    split_seed: Optional[int] = None
    #: file datasets: column names or positions, header (null = sniff), NPZ array key
    columns: Optional[list[Union[str, int]]] = None
    header: Optional[bool] = None
    key: Optional[str] = None
    #: given validation / test tables (same format and columns as the main file)
    val_path: Optional[str] = None
    test_path: Optional[str] = None
    #: directory holding the MAF data archive (uci datasets)
    root: Optional[str] = None
    #: standardise with the training split's mean/std, folded into the model as its first bijector
    standardize: bool = True
    #: add U[0, 1) noise to integer-valued data (fresh noise per training batch, one fixed draw for
    #: val/test); null = only when the data are known to be discrete or every value is an integer
    dequantize: Optional[bool] = None
    #: data loader workers
    num_workers: int = 0
    #: columns (names or positions) the model conditions on: it models p(rest | these); [] = unconditional
    context_columns: list[Union[str, int]] = field(default_factory=list)
    # -- streaming (file: datasets; `dataset: file:<path or glob>` of Parquet / CSV / TSV) -----------------
    #: read the table piece by piece (Parquet row groups, CSV blocks) instead of whole: true | false | auto
    #: (auto: stream a glob of several files, or files larger than `stream_memory_fraction` of the RAM)
    streaming: Union[bool, Literal["auto"]] = "auto"
    stream_memory_fraction: float = 0.25
    #: rows held by each shard's shuffle buffer (about 8 bytes x columns x this, per shard)
    shuffle_buffer: int = 100_000
    #: shards each epoch's rows are cut into; null = devices x loader workers. A fixed value (a multiple
    #: of devices x workers) makes the batches, and so the result, independent of the number of devices
    shards: Optional[int] = None
    #: CSV / TSV: bytes per independently read block
    block_bytes: int = 16 * 1024 * 1024

    # Per-column handling of tables (`flows.training.columns`); columns by name or position.
    #: column -> [low, high] (null: no bound): continuous values live on (low, high), discrete ones in
    #: [low, high]; folded into the model, so scores are densities on the support and samples stay on it
    bounds: dict = field(default_factory=dict)
    #: integer columns, dequantised (their likelihood: a log-probability mass bound)
    discrete_columns: list[Union[str, int]] = field(default_factory=list)
    #: noise of the discrete columns: uniform (U[0, 1)) | variational (learned q(u | row), a tighter bound)
    dequantization: Literal["uniform", "variational"] = "uniform"
    #: columns of categories (numbers, or strings in CSV / Parquet files), argmax-dequantised (K - 1 model
    #: coordinates per column of K categories) and decoded to their values in samples
    categorical_columns: list[Union[str, int]] = field(default_factory=list)

    def check_keys_apply(self) -> None:
        """Refuse a key set away from its default where the dataset's kind never reads it (a silently ignored
        key is a silent mistake: `data.n_train` for a file, `data.columns` for a toy, `data.standardize` for
        images)."""
        kind = self.dataset.partition(":")[0]
        applies = DATA_KEYS_BY_KIND.get(kind)
        if applies is None:
            return  # an unknown kind is reported where the dataset is loaded
        defaults = DataConfig()
        for item in dataclasses.fields(self):
            key = item.name
            if key in applies or getattr(self, key) == getattr(defaults, key):
                continue
            users = sorted(k for k, keys in DATA_KEYS_BY_KIND.items() if key in keys)
            raise ConfigError(
                f"config key 'data.{key}' does not apply to {kind}: datasets (it is read for "
                f"{', '.join(k + ':' for k in users)} datasets only), got {_describe(getattr(self, key))}"
            )


#: the `data` keys that each kind of dataset reads (every other key must keep its default)
_TABLE_KEYS = {"dataset", "standardize", "dequantize", "num_workers", "context_columns"}
_COLUMN_KEYS = {
    "bounds",
    "discrete_columns",
    "categorical_columns",
    "dequantization",
}  # real tables: files, scikit-learn, UCI
_SPLIT_KEYS = {"val_fraction", "test_fraction", "split_seed"}
DATA_KEYS_BY_KIND: dict[str, set[str]] = {
    "toy": _TABLE_KEYS | {"n_train", "n_val", "n_test", "split_seed"},
    "synthetic": _TABLE_KEYS | {"n_train", "n_val", "n_test", "split_seed", "target"},
    "sklearn": _TABLE_KEYS | _SPLIT_KEYS | _COLUMN_KEYS,
    "uci": _TABLE_KEYS | {"root"} | _COLUMN_KEYS,
    "file": _TABLE_KEYS
    | _SPLIT_KEYS
    | _COLUMN_KEYS
    | {"columns", "header", "key", "val_path", "test_path"}
    | {"streaming", "stream_memory_fraction", "shuffle_buffer", "shards", "block_bytes"},
    "image": {"dataset", "root"} | _SPLIT_KEYS,
}


@dataclass
class MollificationConfig:
    """Gaussian data mollification (Tran et al. 2023): noise annealed to zero over the first `fraction`."""

    #: fraction of training over which the noise anneals to zero; 0 disables mollification
    fraction: float = 0.0
    #: noise std at the start, in standardised units (variance preserving: requires <= 1)
    sigma: float = 1.0
    #: shape of sigma^2 as the mollification time t goes from 1 to 0
    schedule: Literal["linear", "cosine"] = "cosine"


@dataclass
class TrainConfig:
    """Optimisation: AdamW, linear warm-up then cosine decay, clipping, regularising noise, early stopping."""

    #: per-device batch size (the global batch is batch_size * devices * num_nodes)
    batch_size: int = 256
    #: training length: whichever of max_epochs / max_steps comes first (-1 / null = no limit)
    max_epochs: Optional[int] = 100
    max_steps: int = -1
    lr: float = 1e-3
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    #: linear warm-up steps from 0 to lr, then cosine decay to lr * final_lr_fraction
    warmup_steps: int = 0
    final_lr_fraction: float = 0.0
    #: gradient-norm clipping (null disables)
    gradient_clip: Optional[float] = 5.0
    mollification: MollificationConfig = field(default_factory=MollificationConfig)
    #: constant Gaussian noise added to training inputs (0 disables): tables in standardised units, images
    #: on the flow's input after the preprocessing (TarFlow's noise augmentation; samples are then denoised
    #: with one score step through the flow)
    noise_std: float = 0.0
    #: stop after this many validations without improvement of val_nll (null disables)
    early_stopping_patience: Optional[int] = 10
    #: validate every n optimiser steps (null = at the end of every epoch); every run also validates its last step
    val_every_n_steps: Optional[int] = None
    #: batch size of validation, test and scoring passes
    eval_batch_size: int = 4096
    #: shuffle the training rows every epoch (one global permutation shared by all devices)
    shuffle: bool = True
    #: call ActNorm `initialize` on the first training batch before training
    actnorm_init: bool = True
    #: CPU threads per process for torch ops (torch.set_num_threads): "auto" = chosen from the model's size,
    #: the batch size and the cores (flows.training.threads: 1 for small flows, which lose most of their time
    #: to thread synchronisation), an int = that many, null = torch's default (one per core). With DDP on CPU,
    #: cores / processes at most
    num_threads: Union[int, Literal["auto"], None] = "auto"
    #: the model's log_prob through torch.compile (Inductor): "auto" = training steps compiled when the run is
    #: long enough to repay the compilation (flows.training.compile_policy: chosen from the first steps'
    #: times and size, undone if the compiled step is not faster), true = training and validation always
    #: compiled, false = never. Compiling takes tens of seconds; needs a C++ compiler on CPUs
    compile: Union[bool, Literal["auto"]] = "auto"
    #: what training minimises: maximum_likelihood (data, or a target's exact samples); with a `target:`
    #: section also reverse_kl (reparameterised gradient) or reverse_kl_path (path gradient)
    objective: Literal["maximum_likelihood", "maximum_likelihood_path", "reverse_kl", "reverse_kl_path"] = (
        "maximum_likelihood"
    )


@dataclass
class TargetConfig:
    """An unnormalised density to sample (instead of `data`): a built-in name or `module:attr`."""

    #: funnel | gmm40 | double_well | many_well | phi4 | "module:attr"; "" = no target (a data run)
    name: str = ""
    #: the dimension D (built-ins have a default; required for a `module:attr` log_prob function)
    features: Optional[int] = None
    #: keyword arguments of the target, e.g. {size: 8, kappa: 0.3, lam: 0.022} for phi4
    options: dict = field(default_factory=dict)
    #: a fixed scale folded into the flow as its first bijector (x = scale * flow output), for wide targets
    scale: float = 1.0
    #: reverse KL against the geometric path beta log p~ + (1 - beta) log N(0, scale²) over this first fraction
    #: of training, beta geometric from anneal_start to 1 (0 = no annealing), against mode collapse
    anneal_fraction: float = 0.0
    anneal_start: float = 0.01
    #: fixed-seed flow samples per validation (val_reverse_kl, val_ess, val_log_z)
    validation_samples: int = 4096
    #: flow samples of the final ESS, log Z and Pareto k-hat (metrics.json)
    evaluation_samples: int = 100_000


@dataclass
class OutputConfig:
    """Where the run directory goes and what it holds."""

    #: parent directory of run directories
    dir: str = "runs"
    #: run directory name (null = "<model>-<dataset>-<UTC timestamp>")
    name: Optional[str] = None
    #: samples written to samples.csv after training (0 disables)
    samples: int = 10_000
    #: call flows.training.plots.write_plots after training
    plots: bool = True
    #: "auto" = CSV, plus TensorBoard when installed
    logger: Literal["auto", "csv", "tensorboard", "none"] = "auto"
    progress_bar: bool = True

    def __post_init__(self) -> None:
        name = self.name
        if name is not None and (
            not isinstance(name, str) or name in ("", ".", "..") or any(c in name for c in "/\\\0")
        ):
            raise ConfigError(
                "config key 'output.name': expected one directory name (no '/', '\\', '.' or '..'; the run "
                f"goes in output.dir), got {_describe(name)}"
            )


@dataclass
class Config:
    """A whole run. `model` and `trainer` are open mappings checked when the model / trainer are built."""

    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    #: `name` (maf | nsf | realnvp | glow | gaussian) plus the preset's keyword arguments
    model: dict = field(default_factory=lambda: {"name": "nsf"})
    train: TrainConfig = field(default_factory=TrainConfig)
    #: keyword arguments of lightning.Trainer (accelerator, devices, strategy, num_nodes, precision, ...)
    trainer: dict = field(default_factory=dict)
    output: OutputConfig = field(default_factory=OutputConfig)
    #: image runs only (`data.dataset: image:<name>`): options checked by flows.training.image_data
    image: dict = field(default_factory=dict)
    #: sampling runs only: the unnormalised target density (flows.training.tasks.sampling)
    target: TargetConfig = field(default_factory=TargetConfig)

    def to_dict(self) -> dict[str, Any]:
        """A plain nested dict (YAML-serialisable)."""
        return dataclasses.asdict(self)


# --------------------------------------------------------------------------------------------------
# Type checking of values against annotations


def _type_name(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    if annotation is type(None):
        return "null"
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(annotation))
    if origin in (Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(annotation))
    if origin in (list, Sequence, tuple):
        args = typing.get_args(annotation)
        return f"list[{_type_name(args[0])}]" if args else "list"
    if origin in (dict, Mapping):
        return "mapping"
    if annotation is Any:
        return "any"
    return getattr(annotation, "__name__", str(annotation))


#: the longest rendering of a value in an error message
MAX_SHOWN = 200


def short_repr(value: Any, limit: int = MAX_SHOWN) -> str:
    """`repr(value)` cut to `limit` characters (a config value can be huge, e.g. a YAML alias expansion)."""
    shortener = reprlib.Repr()  # (keyword arguments only from Python 3.12)
    shortener.maxlevel, shortener.maxlist, shortener.maxdict = 3, 8, 8
    shortener.maxstring = shortener.maxother = limit
    text = shortener.repr(value)
    return text if len(text) <= limit else f"{text[: limit - 3]}..."


def _describe(value: Any) -> str:
    return f"{type(value).__name__} {short_repr(value)}"


def check_value(key: str, value: Any, annotation: Any) -> Any:
    """Check `value` against a type annotation; return it (ints are accepted as floats and widened).

    Raises ConfigError naming `key`, the expected type and the value.
    """
    origin = typing.get_origin(annotation)
    if annotation is Any or annotation is typing.Any:
        return value
    if annotation is type(None):
        if value is None:
            return None
    elif origin is Literal:
        if value in typing.get_args(annotation) and not isinstance(value, bool):
            return value
    elif origin in (Union, types.UnionType):
        for option in typing.get_args(annotation):
            try:
                return check_value(key, value, option)
            except ConfigError:
                continue
    elif origin in (list, tuple, Sequence) or annotation in (list, tuple):
        if isinstance(value, (list, tuple)):
            args = typing.get_args(annotation)
            if origin is tuple and len(args) >= 1 and args[-1] is not Ellipsis:
                if len(args) != len(value):
                    raise ConfigError(
                        f"config key {key!r}: expected a list of {len(args)} items, got {_describe(value)}"
                    )
                return [check_value(f"{key}[{i}]", v, a) for i, (v, a) in enumerate(zip(value, args))]
            item = args[0] if args else Any
            return [check_value(f"{key}[{i}]", v, item) for i, v in enumerate(value)]
    elif origin in (dict, Mapping) or annotation in (dict, Mapping):
        if isinstance(value, Mapping):
            return dict(value)
    elif annotation is bool:
        if isinstance(value, bool):
            return value
    elif annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif annotation is str:
        if isinstance(value, str):
            return value
    elif isinstance(annotation, type):
        if isinstance(value, annotation):
            return value
    else:  # an annotation we cannot check (a forward reference, a protocol): accept the value
        return value
    raise ConfigError(f"config key {key!r}: expected {_type_name(annotation)}, got {_describe(value)}")


def unknown_key_error(key: str, valid: Sequence[str], section: str) -> ConfigError:
    """A ConfigError for an unknown key, listing the valid ones and the closest match."""
    close = difflib.get_close_matches(key.rsplit(".", 1)[-1], list(valid), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    where = f"in {section!r}" if section else "at the top level"
    return ConfigError(f"unknown config key {key!r}{hint}; valid keys {where}: {', '.join(sorted(valid))}")


def _build(cls: type, values: Any, prefix: str) -> Any:
    """Instantiate dataclass `cls` from a mapping, checking every key and value."""
    if values is None:
        values = {}
    if not isinstance(values, Mapping):
        raise ConfigError(f"config key {prefix or '(root)'!r}: expected a mapping, got {_describe(values)}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        full = f"{prefix}.{key}" if prefix else str(key)
        if key not in fields:
            raise unknown_key_error(full, list(fields), prefix)
        annotation = hints[key]
        if dataclasses.is_dataclass(annotation):
            kwargs[key] = _build(annotation, value, full)
        else:
            kwargs[key] = check_value(full, value, annotation)
    return cls(**kwargs)


def parse_config(values: Union[Mapping[str, Any], Config, None]) -> Config:
    """Validate a nested mapping into a `Config` (a `Config` is returned as a deep copy)."""
    if isinstance(values, Config):
        return copy.deepcopy(values)
    config = _build(Config, values or {}, "")
    if "name" not in config.model:
        raise ConfigError("config key 'model.name' is required (one of maf, nsf, realnvp, glow, gaussian)")
    if not isinstance(config.model["name"], str):
        raise ConfigError(f"config key 'model.name': expected str, got {_describe(config.model['name'])}")
    _check_ranges(config)
    config.data.check_keys_apply()
    _check_objective(config)
    return config


def _check_objective(config: Config) -> None:
    """A target run has no data section; a reverse-KL objective needs a target."""
    if config.target.name:
        if config.data != DataConfig():
            changed = [
                f.name
                for f in dataclasses.fields(DataConfig)
                if getattr(config.data, f.name) != getattr(DataConfig(), f.name)
            ]
            raise ConfigError(
                f"config keys {', '.join('data.' + k for k in changed)}: a run with a target section "
                f"(target.name {config.target.name!r}) samples the target and reads no data; remove them"
            )
        for key in ("validation_samples", "evaluation_samples"):
            value = getattr(config.target, key)
            if value < 1:
                raise ConfigError(f"config key 'target.{key}': expected a positive int, got {value!r}")
        if not 0 <= config.target.anneal_fraction <= 1 or not 0 < config.target.anneal_start <= 1:
            raise ConfigError(
                "config keys 'target.anneal_fraction' / 'target.anneal_start': expected 0 <= fraction <= 1 and "
                f"0 < start <= 1, got {config.target.anneal_fraction!r} and {config.target.anneal_start!r}"
            )
        if not 0 < config.target.scale < math.inf:
            raise ConfigError(
                f"config key 'target.scale': expected a finite positive number, got {config.target.scale!r}"
            )
    else:
        if config.target != TargetConfig():
            raise ConfigError(
                "config section 'target': target.name is required (a built-in name or 'module:attr')"
            )
        if config.train.objective != "maximum_likelihood":
            raise ConfigError(
                f"config key 'train.objective': {config.train.objective!r} needs a target section (target.name); "
                "a data run is trained by maximum_likelihood"
            )


#: upper limits on resources a config may ask for (a file from anyone must not exhaust the machine)
MAX_PER_CORE = 4  # data loader processes, or torch threads, per CPU core
MAX_SAMPLES = 100_000_000  # rows of samples.csv (about 2 GB per 10 columns)


def check_machine_limits(config: Config) -> None:
    """A ConfigError when the config asks this machine for more loader processes or torch threads than
    `MAX_PER_CORE` per core. Checked when a run starts on it, not when a saved record is read (a checkpoint of
    a larger machine stays loadable here)."""
    cores = os.cpu_count() or 1
    values = (("data.num_workers", config.data.num_workers), ("train.num_threads", config.train.num_threads))
    for key, value in values:
        if isinstance(value, int) and value > MAX_PER_CORE * cores:  # (each is a process or a thread)
            raise ConfigError(
                f"config key {key!r}: expected at most {MAX_PER_CORE} per core ({MAX_PER_CORE * cores} on this "
                f"machine's {cores} cores), got {value}"
            )


def _check_ranges(config: Config) -> None:
    def positive(key: str, value: Union[int, float, None], allow_none: bool = False) -> None:
        if value is None and allow_none:
            return
        if value is None or not 0 < value < math.inf:  # also refuses NaN and infinity
            raise ConfigError(f"config key {key!r}: expected a finite positive number, got {value!r}")

    if not 0 <= config.seed < 2**32:  # (numpy's generators take seeds below 2**32)
        raise ConfigError(f"config key 'seed': expected an integer in [0, 2**32), got {config.seed}")
    train, data = config.train, config.data
    for key in ("weight_decay", "final_lr_fraction", "noise_std"):
        value = getattr(train, key)
        if not math.isfinite(value):
            raise ConfigError(f"config key 'train.{key}': expected a finite number, got {value!r}")
    positive("train.batch_size", train.batch_size)
    positive("train.eval_batch_size", train.eval_batch_size)
    positive("train.lr", train.lr)
    positive("train.gradient_clip", train.gradient_clip, allow_none=True)
    positive("train.early_stopping_patience", train.early_stopping_patience, allow_none=True)
    positive("train.val_every_n_steps", train.val_every_n_steps, allow_none=True)
    if train.num_threads != "auto":
        positive("train.num_threads", train.num_threads, allow_none=True)
    if train.max_epochs is not None and train.max_epochs == 0:
        raise ConfigError("config key 'train.max_epochs': expected a positive number, -1 or null, got 0")
    if (train.max_epochs is None or train.max_epochs < 0) and train.max_steps < 0:
        raise ConfigError("config keys 'train.max_epochs' and 'train.max_steps' are both unlimited; set one")
    if train.weight_decay < 0:
        raise ConfigError(f"config key 'train.weight_decay': expected >= 0, got {train.weight_decay}")
    if train.warmup_steps < 0:
        raise ConfigError(f"config key 'train.warmup_steps': expected >= 0, got {train.warmup_steps}")
    if not 0.0 <= train.final_lr_fraction <= 1.0:
        raise ConfigError(
            f"config key 'train.final_lr_fraction': expected a number in [0, 1], got {train.final_lr_fraction}"
        )
    if train.noise_std < 0:
        raise ConfigError(f"config key 'train.noise_std': expected >= 0, got {train.noise_std}")
    if len(train.betas) != 2 or not all(0.0 <= b < 1.0 for b in train.betas):
        raise ConfigError(f"config key 'train.betas': expected two numbers in [0, 1), got {train.betas}")
    mollification = train.mollification
    if not 0.0 <= mollification.fraction <= 1.0:
        raise ConfigError(
            f"config key 'train.mollification.fraction': expected a number in [0, 1], got {mollification.fraction}"
        )
    if not 0.0 < mollification.sigma <= 1.0:
        raise ConfigError(
            f"config key 'train.mollification.sigma': expected a number in (0, 1] (variance preserving), "
            f"got {mollification.sigma}"
        )
    for key in ("n_train", "n_val", "n_test"):
        positive(f"data.{key}", getattr(data, key))
    if data.num_workers < 0:
        raise ConfigError(f"config key 'data.num_workers': expected >= 0, got {data.num_workers}")
    if not 0.0 < data.stream_memory_fraction <= 1.0:
        raise ConfigError(
            f"config key 'data.stream_memory_fraction': expected a number in (0, 1], got {data.stream_memory_fraction}"
        )
    if data.shuffle_buffer < 0:
        raise ConfigError(f"config key 'data.shuffle_buffer': expected >= 0, got {data.shuffle_buffer}")
    positive("data.shards", data.shards, allow_none=True)
    if data.block_bytes < 1024:
        raise ConfigError(f"config key 'data.block_bytes': expected >= 1024, got {data.block_bytes}")
    if not 0 <= config.output.samples <= MAX_SAMPLES:
        raise ConfigError(
            f"config key 'output.samples': expected a number in [0, {MAX_SAMPLES:,}], got {config.output.samples}"
        )
    if ":" not in data.dataset:
        raise ConfigError(
            f"config key 'data.dataset': expected 'kind:name' with kind one of toy, synthetic, sklearn, uci, "
            f"file, got {data.dataset!r}"
        )


# --------------------------------------------------------------------------------------------------
# YAML files, merging and overrides


class _Loader(yaml.SafeLoader):
    """YAML 1.1's safe loader, except that `1e-3` and `3E5` are floats (YAML 1.2 style), not strings.

    It refuses documents with more than `MAX_ALIASES` aliases ("billion laughs": a few kilobytes of nested
    aliases that expand to gigabytes when the values are walked or printed).
    """

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            self.aliases_seen = getattr(self, "aliases_seen", 0) + 1
            if self.aliases_seen > MAX_ALIASES:
                raise yaml.composer.ComposerError(
                    None,
                    None,
                    f"expected at most {MAX_ALIASES} aliases (*name) in a config",
                    self.peek_event().start_mark,
                )
        self.depth = getattr(self, "depth", 0) + 1
        try:
            if self.depth > MAX_FLOW_DEPTH:
                raise yaml.composer.ComposerError(
                    None,
                    None,
                    f"expected a config nested at most {MAX_FLOW_DEPTH} levels deep",
                    self.peek_event().start_mark,
                )
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1

    def flatten_mapping(self, node: Any) -> None:
        """PyYAML's merge of `<<` keys, after checking that no key is written twice in the mapping itself
        (PyYAML keeps the last silently: a repeated `data:` section would replace the first whole). Keys merged
        in with `<<` may still be overridden. Each node is checked once, before merging rewrites it (an
        anchored mapping is flattened again where an alias reuses it)."""
        checked = self.__dict__.setdefault("checked_mappings", set())
        if id(node) not in checked:
            checked.add(id(node))
            seen: set = set()
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    duplicate = key in seen
                except TypeError:  # an unhashable key: construct_mapping reports it
                    continue
                if duplicate:
                    raise yaml.constructor.ConstructorError(
                        "while constructing a mapping",
                        node.start_mark,
                        f"expected each key once, found {key!r} again",
                        key_node.start_mark,
                    )
                seen.add(key)
        super().flatten_mapping(node)


#: limits on a YAML document: aliases, and values once every alias is expanded
MAX_ALIASES = 100
MAX_EXPANDED_VALUES = 100_000
MAX_CONFIG_CHARS = 65_536
MAX_FLOW_DEPTH = 64


def _expanded_size(value: Any, sizes: dict[int, int]) -> int:
    """The number of values in `value` with every shared (aliased) container counted at each use."""
    if not isinstance(value, (list, dict)):
        return 1
    known = sizes.get(id(value))
    if known is not None:
        return known
    sizes[id(value)] = 1  # a recursive alias counts once
    children = value.values() if isinstance(value, dict) else value
    total = 1 + sum(min(_expanded_size(child, sizes), MAX_EXPANDED_VALUES + 1) for child in children)
    sizes[id(value)] = total
    return total


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def _max_flow_depth(text: str) -> int:
    """The deepest nesting of `[` and `{` in `text`, outside quotes and comments (one linear pass)."""
    depth = deepest = 0
    quote = ""
    comment = False
    previous = "\n"
    for char in text:
        if comment:
            comment = char != "\n"
        elif quote:
            if char == quote:
                quote = ""
        elif char in "'\"" and (previous in " \t\n[{,:" or depth == 0 and previous == "-"):
            quote = char
        elif char == "#" and previous in " \t\n":
            comment = True
        elif char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}":
            depth = max(0, depth - 1)
        previous = char
    return deepest


def yaml_load(text: str) -> Any:
    """Parse YAML text with the config loader (floats such as `1e-3` included).

    Text over `MAX_CONFIG_CHARS` characters or nested deeper than `MAX_FLOW_DEPTH` brackets is refused before
    parsing (PyYAML's scanner takes time quadratic in the bracket depth); the loader caps the nesting of
    every style and the aliases, and the expanded size is checked after loading.
    """
    if len(text) > MAX_CONFIG_CHARS:
        raise yaml.YAMLError(f"expected a config of at most {MAX_CONFIG_CHARS} characters, got {len(text)}")
    depth = _max_flow_depth(text)
    if depth > MAX_FLOW_DEPTH:
        raise yaml.YAMLError(f"expected a config nested at most {MAX_FLOW_DEPTH} brackets deep, got {depth}")
    values = yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass
    if _expanded_size(values, {}) > MAX_EXPANDED_VALUES:
        raise yaml.YAMLError(
            f"expected a config of at most {MAX_EXPANDED_VALUES} values with its aliases expanded, got more"
        )
    return values


def merge(base: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """Deep-merge two nested mappings: mappings merge key by key, anything else in `update` wins."""
    out = copy.deepcopy(dict(base))
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def read_yaml(path: Union[str, Path]) -> dict[str, Any]:
    """Read one YAML config file as a mapping (an empty file is an empty mapping)."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"config path {path} is a directory; expected a YAML file")
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise ConfigError(
            f"config file {path} is not UTF-8 text (byte {error.object[error.start]:#04x} at offset "
            f"{error.start}); expected a UTF-8 encoded YAML file"
        ) from error
    try:
        values = yaml_load(text)
    except yaml.YAMLError as error:
        raise ConfigError(f"config file {path} is not valid YAML: {error}") from error
    if values is None:
        return {}
    if not isinstance(values, Mapping):
        raise ConfigError(
            f"config file {path} must hold a mapping at the top level, got {type(values).__name__}"
        )
    return dict(values)


def apply_override(values: Mapping[str, Any], dotted_key: str, raw_value: Any) -> dict[str, Any]:
    """Set `a.b.c` in a nested mapping; a string `raw_value` is parsed as YAML (`"3"` -> 3, `"[1, 2]"`)."""
    if not dotted_key or any(not part for part in dotted_key.split(".")):
        raise ConfigError(f"invalid override key {dotted_key!r}; expected a dotted key like 'train.lr'")
    value = raw_value
    if isinstance(raw_value, str):
        try:
            value = yaml_load(raw_value)
        except yaml.YAMLError:
            value = raw_value
        if value is None and raw_value.strip() not in ("", "null", "~", "None"):
            value = raw_value
    nested: Any = value
    for part in reversed(dotted_key.split(".")):
        nested = {part: nested}
    return merge(values, nested)


def load_config(
    paths: Sequence[Union[str, Path]] = (),
    overrides: Union[Mapping[str, Any], Sequence[tuple[str, Any]]] = (),
) -> Config:
    """Merge YAML files in order, then apply dotted overrides (`{"train.lr": "1e-3"}`), then validate."""
    values: dict[str, Any] = {}
    for path in paths:
        values = merge(values, read_yaml(path))
    items = overrides.items() if isinstance(overrides, Mapping) else overrides
    for key, value in items:
        values = apply_override(values, key, value)
    return parse_config(values)


def write_yaml_atomic(values: Mapping[str, Any], path: Union[str, Path]) -> Path:
    """Write a mapping as YAML through a temporary file in the same directory and an atomic rename."""
    with atomic_open(path, "w") as handle:
        yaml.safe_dump(_plain(values), handle, sort_keys=False)
    return Path(path)


def _plain(value: Any) -> Any:
    """Tuples to lists, numpy scalars to Python, so that safe_dump accepts the structure."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", 1) == 0:
        return value.item()
    if isinstance(value, Path):
        return str(value)
    return value
