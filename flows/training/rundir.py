"""A run directory belongs to one run at a time: an OS file lock, stale temporary files, finished runs.

`run_lock(run_dir)` takes an exclusive `flock` on `run_dir/.lock` for the whole run. The operating system
releases it when the process dies (even by SIGKILL), so a killed run can be resumed at once, while a second
run, or a `--resume` of a run that is still going, fails straight away naming the directory and the holder's
pid. DDP ranks started by Lightning's launcher share their rank 0's lock (they do not take it).
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Optional

try:  # POSIX; on other systems runs are not locked (documented in docs/config.md)
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

__all__ = ["LOCK_NAME", "RunDirectoryLocked", "finished_metrics", "remove_stale_temporaries", "run_lock"]

LOCK_NAME = ".lock"


class RunDirectoryLocked(RuntimeError):
    """Another live process holds the run directory's lock; the message names the directory and its pid."""


def _holder(path: Path) -> str:
    try:
        text = path.read_text().strip()
    except OSError:
        return "unknown"
    return text if text.isdigit() else "unknown"


@contextlib.contextmanager
def run_lock(run_dir: Path) -> Iterator[Path]:
    """Hold an exclusive lock on `run_dir` (created if needed) for the block; yields the lock file's path."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / LOCK_NAME
    if fcntl is None:  # pragma: no cover - Windows
        yield path
        return
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunDirectoryLocked(
                f"run directory {run_dir} is in use by another flows run (pid {_holder(path)}); wait for it to "
                "finish, stop it, or choose another output.name"
            ) from None
        os.ftruncate(descriptor, 0)
        os.write(descriptor, f"{os.getpid()}\n".encode())
        os.fsync(descriptor)
        yield path
    finally:
        os.close(descriptor)  # releases the lock; the file stays (removing it would race with a new holder)


def remove_stale_temporaries(run_dir: Path) -> list[Path]:
    """Remove the temporary files (`.<name>.*.tmp`) that a killed writer left in `run_dir`; call with the lock."""
    removed = []
    for path in Path(run_dir).rglob(".*.tmp"):
        if path.is_file():
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                removed.append(path)
    return removed


def finished_metrics(run_dir: Path) -> Optional[dict[str, Any]]:
    """The final metrics of a finished run in `run_dir` (its `metrics.json`), or None if it has not finished."""
    path = Path(run_dir) / "metrics.json"
    if not path.is_file():
        return None
    try:
        metrics = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(
            f"{path} is not a readable metrics file ({type(error).__name__}: {error})"
        ) from error
    if not isinstance(metrics, dict):
        raise ValueError(f"{path}: expected a JSON object of metrics, got {type(metrics).__name__}")
    return metrics
