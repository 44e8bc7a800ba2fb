"""flows.io: atomic writes keep the previous file on failure, leave no temporary behind, use normal modes."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from flows.io import atomic_open, atomic_write_bytes, atomic_write_text


def test_a_failed_write_keeps_the_previous_file_and_removes_the_temporary(tmp_path: Path) -> None:
    path = atomic_write_text(tmp_path / "result.json", "complete\n")
    with pytest.raises(RuntimeError), atomic_open(path, "w") as handle:
        handle.write("half of a new ver")
        raise RuntimeError("killed mid-write")
    assert path.read_text() == "complete\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result.json"]


def test_a_failed_rename_keeps_the_previous_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = atomic_write_bytes(tmp_path / "model.pt", b"old")

    def crash(*args: object) -> None:
        raise OSError("power cut")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="power cut"):
        atomic_write_bytes(path, b"new")
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]


def test_writes_create_parents_and_use_the_umask_mode(tmp_path: Path) -> None:
    path = atomic_write_text(tmp_path / "a" / "b" / "c.txt", "x")
    assert path.read_text() == "x"
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask


def test_only_write_modes_are_accepted(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="mode must be"), atomic_open(tmp_path / "x", "a"):
        pass


def test_a_replaced_file_keeps_its_permissions(tmp_path: Path) -> None:
    private = tmp_path / "private.csv"
    private.write_text("old\n")
    os.chmod(private, 0o600)
    atomic_write_text(private, "new\n")
    assert private.read_text() == "new\n" and stat.S_IMODE(private.stat().st_mode) == 0o600


def test_a_directory_or_a_file_in_the_way_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "out.csv").mkdir()
    with pytest.raises(IsADirectoryError, match=r"out.csv: it is a directory; expected the path of a file"):
        atomic_write_text(tmp_path / "out.csv", "x")
    (tmp_path / "file").write_text("keep")
    with pytest.raises(NotADirectoryError, match=r"file is a file, not a directory"):
        atomic_write_text(tmp_path / "file" / "sub" / "out.csv", "x")
    assert (tmp_path / "file").read_text() == "keep" and not list(tmp_path.glob(".*.tmp"))
