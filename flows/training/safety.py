"""Checks of untrusted inputs that need no Lightning: checkpoint files, training columns, and the error a
diverged run raises.

- `read_tensor_file` loads a torch file of tensors and plain data only (never code), with a clear error for a
  missing, truncated or code-carrying file; `read_checkpoint` also checks that it is a checkpoint, and
  `resume_checkpoint` finds and checks the checkpoint that `flows fit --resume` continues from.
- `column_warnings` finds constant and discrete (heavily repeated) columns before training.
- `TrainingDivergedError` is what `flows.training.guard.NonFiniteGuard` raises on a non-finite value.
"""

from __future__ import annotations

import pickle
import re
import warnings
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import torch

__all__ = [
    "TrainingDivergedError",
    "column_warnings",
    "read_checkpoint",
    "read_tensor_file",
    "resume_checkpoint",
    "warn_about_columns",
]


class TrainingDivergedError(RuntimeError):
    """Training produced a non-finite loss, gradient or validation NLL; the message says where and what to try.

    Attributes: `step` and `epoch` where it stopped, `what` went non-finite, and `checkpoint`, the path of
    the last good checkpoint on disk (None if none had been written).
    """

    def __init__(
        self,
        message: str,
        step: Optional[int] = None,
        epoch: Optional[int] = None,
        what: str = "",
        checkpoint: Optional[str] = None,
    ) -> None:
        super().__init__(message)
        self.step = step
        self.epoch = epoch
        self.what = what
        self.checkpoint = checkpoint


# ----------------------------------------------------------------------------------------------------------
# Data checks


def column_warnings(
    train: np.ndarray,
    columns: Sequence[str],
    dequantized: Union[bool, Sequence[bool]],
    repeated_fraction: float = 0.5,
) -> list[str]:
    """Warnings about columns of `train (n, D)` that make the likelihood unbounded.

    A constant column has zero variance: a continuous density can concentrate on it without limit. A column
    of integers, or one whose most frequent value covers at least `repeated_fraction` of the rows, is
    (partly) discrete: without dequantisation the same happens on its repeated values. `dequantized`: True
    when every column is dequantised, or a `(D,)` flag per column (flagged columns are not warned about).
    """
    messages: list[str] = []
    train = train[:100_000]  # the training split is shuffled: its first rows are a fair sample
    rows = train.shape[0]
    flags = (
        [dequantized] * train.shape[1] if isinstance(dequantized, bool) else [bool(v) for v in dequantized]
    )
    constant = [str(columns[j]) for j in range(train.shape[1]) if np.all(train[:, j] == train[0, j])]
    if constant:
        messages.append(
            f"constant columns {constant} (zero variance): their log-likelihood grows without bound as training "
            "proceeds; drop them (a constant carries no density information)"
        )
    if all(flags) or rows < 2:
        return messages
    discrete = []
    for j in range(train.shape[1]):
        column = train[:, j]
        if str(columns[j]) in constant or flags[j]:
            continue
        _, counts = np.unique(column, return_counts=True)
        if np.all(column == np.round(column)) or counts.max() >= repeated_fraction * rows:
            discrete.append(f"{columns[j]} ({counts.size} distinct values)")
    if discrete:
        messages.append(
            f"discrete or heavily repeated columns {discrete}: a continuous density can put unbounded mass on "
            "repeated values; declare integer columns discrete (discrete_columns=[...], data.discrete_columns; "
            "dequantization='variational' / data.dequantization: variational learns their noise, a tighter "
            "bound) and category codes or labels categorical (categorical_columns=[...], "
            "data.categorical_columns: argmax dequantisation, no order among the categories) to dequantise "
            "them, or dequantize=True (data.dequantize: true) for every column"
        )
    return messages


def warn_about_columns(
    train: np.ndarray, columns: Sequence[str], dequantized: Union[bool, Sequence[bool]]
) -> list[str]:
    """Emit `column_warnings` as `UserWarning`s; returns them."""
    messages = column_warnings(train, columns, dequantized)
    for message in messages:
        warnings.warn(message, UserWarning, stacklevel=3)
    return messages


# ----------------------------------------------------------------------------------------------------------
# Checkpoint files


def read_checkpoint(path: Union[str, Path], map_location: Union[str, torch.device] = "cpu") -> dict[str, Any]:
    """Load a checkpoint file as a mapping; ValueError for a truncated, corrupt or non-checkpoint file.

    The file must hold a mapping with a `state_dict` (a Lightning checkpoint or a `DensityEstimator` file).
    """
    path = Path(path)
    payload = read_tensor_file(path, map_location)
    if not isinstance(payload, Mapping) or "state_dict" not in payload:
        kind = type(payload).__name__
        raise ValueError(
            f"{path} is not a flows checkpoint: expected a mapping with a state_dict, got {kind}"
        )
    return dict(payload)


def error_summary(error: BaseException, limit: int = 200) -> str:
    """`Type: first line of the message` (cut at `limit` characters) for an error from reading a file."""
    text = str(error)
    return f"{type(error).__name__}: {text.splitlines()[0][:limit] if text.strip() else 'no detail'}"


def read_tensor_file(path: Union[str, Path], map_location: Union[str, torch.device] = "cpu") -> Any:
    """Load a torch file of tensors and plain data only (never code); ValueError for a missing, truncated,
    corrupt or code-carrying file. `read_checkpoint` checks, on top, that it is a checkpoint; Lightning's own
    files (the weights a `ddp_spawn` worker hands back) are read with this directly."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if not path.is_file():
        raise ValueError(f"checkpoint path {path} is not a file")
    size = path.stat().st_size
    _check_zip_entries(path, size)
    try:
        # Tensors and plain data only: unpickling anything else could run code from the file.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's note about the pickle protocol of foreign files
            payload = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        text = str(error)
        # (torch's wording varies: "Unsupported global: GLOBAL os.system", "unsupported GLOBAL posix.system")
        found = re.search(r"[Uu]nsupported (?:global: )?GLOBAL (\S+?)[,:]?(?:\s|$)", text)
        if found:
            raise ValueError(
                f"refusing to load {path}: expected a flows checkpoint of tensors and plain data, got a file that "
                f"needs other objects (it asks for {found.group(1)}); it may be unsafe, and nothing in it was run"
            ) from None
        tail = text.split("WeightsUnpickler error:", 1)[-1]
        detail = next((line.strip() for line in tail.splitlines() if line.strip()), "no detail")
        raise ValueError(
            f"{path} ({size} bytes) is not a readable checkpoint: truncated or corrupted, or not a torch file "
            f"({detail[:200]}); nothing in it was run"
        ) from None
    except Exception as error:  # truncated zip, not a torch file at all
        raise ValueError(
            f"{path} ({size} bytes) is not a readable checkpoint: truncated or corrupted "
            f"({error_summary(error)})"
        ) from error
    return payload


def _check_zip_entries(path: Path, size: int) -> None:
    """A ValueError naming the first entry of a zip-format torch file whose bytes do not match the CRC-32 stored
    with them (torch.load does not check them, so a flipped bit in a weight would load as a different model),
    or that is compressed (torch stores every entry as it is; inflating a hostile entry could take minutes).
    Entries saved without checksums (`torch.serialization.set_crc32_options(False)` stores 0) are not checked."""
    with path.open("rb") as handle:
        if handle.read(4) != b"PK\x03\x04":
            return  # not a zip (older torch files): torch.load reports what else it cannot read
    try:
        with zipfile.ZipFile(path) as archive:
            for entry in archive.infolist():
                if entry.compress_type != zipfile.ZIP_STORED:
                    raise ValueError(
                        f"{path} ({size} bytes) is not a checkpoint torch writes: its entry {entry.filename!r} is "
                        "compressed; nothing in it was loaded"
                    )
                if entry.CRC == 0:
                    continue
                try:
                    with archive.open(entry) as stream:  # (reading to the end checks the CRC-32)
                        while stream.read(1 << 22):
                            pass
                except zipfile.BadZipFile as error:
                    if "CRC" not in str(error):
                        raise
                    raise ValueError(
                        f"{path} ({size} bytes) is damaged: the bytes of its entry {entry.filename!r} do not match "
                        "the checksum stored with them (a changed or corrupted file); nothing in it was loaded"
                    ) from None
    except ValueError:
        raise
    except Exception as error:  # a damaged or hostile archive: encrypted entries, bad headers, truncation
        raise ValueError(
            f"{path} ({size} bytes) is not a readable checkpoint: truncated or corrupted ({error_summary(error)}); "
            "nothing in it was loaded"
        ) from None


def resume_checkpoint(run_dir: Path, config: Mapping[str, Any]) -> Optional[Path]:
    """`run_dir/checkpoints/last.ckpt` when it exists, checked to hold the run that `config` (a plain config:
    `Config.to_dict()`) describes: the same `model`, `data`, `target` and `seed` (the `train` budget may grow
    and the `trainer` and `output` settings change); else None."""
    path = Path(run_dir) / "checkpoints" / "last.ckpt"
    if not path.exists():
        return None
    payload = read_checkpoint(path)
    record = payload.get("hyper_parameters") or {}
    saved = record.get("config") if isinstance(record, Mapping) else None
    if not isinstance(saved, Mapping) or saved.get("model") is None:
        raise ValueError(f"{path} was not written by `flows fit` (no model record); cannot resume from it")
    changed = [
        f"{name} {before!r} (the config: {after!r})"
        for key in RESUMED_KEYS
        if key in saved
        for name, before, after in _differences(key, saved[key], config.get(key))
    ]
    if changed:
        raise ValueError(
            f"cannot resume from {path}: it was trained with {'; '.join(changed[:5])}; resume with the run's own "
            "config, or start a new run (another output.name)"
        )
    return path


#: config sections (and keys) a resumed run must share with the run that wrote `last.ckpt`
RESUMED_KEYS = ("model", "data", "target", "seed")
#: keys of those sections that say where or how to read the data, or how much to evaluate, not what is
#: trained: they may change on resume
RESUMABLE_CHANGES = {
    "data.num_workers",
    "data.stream_memory_fraction",
    "data.block_bytes",
    "data.root",
    "target.evaluation_samples",
    "target.validation_samples",
}


def _differences(key: str, saved: Any, current: Any) -> list[tuple[str, Any, Any]]:
    """`(name, saved value, current value)` of each setting of `key` that differs (a section key by key).
    A key the saved record lacks (written before the key existed) is not a difference, nor a model option the
    config leaves unset (None) where the run recorded the value it chose (`model.components` of a fitted
    mixture base)."""
    if isinstance(saved, Mapping) and isinstance(current, Mapping):
        return [
            (f"{key}.{k}", saved[k], current.get(k))
            for k in saved
            if f"{key}.{k}" not in RESUMABLE_CHANGES
            and not (key == "model" and current.get(k) is None)
            and saved[k] != current.get(k)
        ]
    return [] if saved == current else [(key, saved, current)]
