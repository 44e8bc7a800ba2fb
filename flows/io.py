"""Atomic file writes: a temporary file beside the target, flushed to disk, then renamed into place.

A write that is interrupted (an exception, a killed process) never leaves a truncated target behind: the
target holds either its previous content or the complete new one. Every writer of results, configs,
samples, plots and saved models goes through `atomic_open`.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any, Union

__all__ = ["atomic_open", "atomic_save", "atomic_write_bytes", "atomic_write_text"]

PathLike = Union[str, "os.PathLike[str]"]


def _default_file_mode() -> int:
    """0o666 minus the process umask: the mode a plain `open(path, "w")` would give."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def _mode_for(target: Path) -> int:
    """The permissions of the file `target` replaces (a private 0600 file stays private), else those a plain
    `open(path, "w")` would give."""
    try:
        return stat.S_IMODE(os.stat(target).st_mode) & 0o777  # (not its setuid, setgid or sticky bits)
    except (FileNotFoundError, NotADirectoryError):
        return _default_file_mode()


@contextlib.contextmanager
def atomic_open(path: PathLike, mode: str = "w", **open_options: Any) -> Iterator[IO[Any]]:
    """Open a temporary file beside `path` for writing; on success it replaces `path` atomically.

    `mode` is `"w"` (text) or `"wb"` (binary); `open_options` go to `open` (e.g. `newline=""`). Parent
    directories are created. If the block raises, the temporary file is removed and `path` is untouched.
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"mode must be 'w' or 'wb', got {mode!r}")
    target = Path(path)
    if target.is_dir():
        raise IsADirectoryError(f"cannot write {target}: it is a directory; expected the path of a file")
    for parent in (target.parent, *target.parent.parents):
        if parent.exists():
            if not parent.is_dir():
                raise NotADirectoryError(f"cannot write {target}: {parent} is a file, not a directory")
            break
    target.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(descriptor, mode, **open_options) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temporary, _mode_for(target))  # mkstemp creates 0600
        os.replace(temporary, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise


def atomic_write_text(path: PathLike, text: str, **open_options: Any) -> Path:
    """Write `text` to `path` atomically; returns the path."""
    with atomic_open(path, "w", **open_options) as handle:
        handle.write(text)
    return Path(path)


def atomic_write_bytes(path: PathLike, data: bytes) -> Path:
    """Write `data` to `path` atomically; returns the path."""
    with atomic_open(path, "wb") as handle:
        handle.write(data)
    return Path(path)


def atomic_save(obj: Any, path: PathLike) -> Path:
    """`torch.save(obj)` to `path` atomically; returns the path. (torch is imported here, not at module
    import, so that light users of this module, such as the config writer, stay free of it.)"""
    import torch

    with atomic_open(path, "wb") as handle:
        torch.save(obj, handle)
    return Path(path)
