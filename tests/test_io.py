"""sketchsearch._io: a file appears whole or not at all, the old one survives a failed write, no temp file
is left behind, and the new file is readable by others (0644)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from sketchsearch import _io
from sketchsearch._io import atomic_path, atomic_write_bytes, atomic_write_text


def _names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_write_text_creates_parents_and_returns_the_path(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "out.json"
    assert atomic_write_text(target, "héllo\nworld\n") == target
    assert target.read_bytes() == "héllo\nworld\n".encode()
    assert _names(target.parent) == ["out.json"]
    assert stat.S_IMODE(target.stat().st_mode) == 0o644


def test_write_bytes_replaces_and_honours_mode(tmp_path: Path) -> None:
    target = tmp_path / "w.bin"
    target.write_bytes(b"old")
    atomic_write_bytes(target, b"\x00new", mode=0o600)
    assert target.read_bytes() == b"\x00new"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert _names(tmp_path) == ["w.bin"]


@pytest.mark.parametrize("fail_at", ["fsync", "replace"])
def test_failed_write_keeps_the_old_file_and_leaves_no_temp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fail_at: str
) -> None:
    target = tmp_path / "card.json"
    target.write_text("old content")

    def boom(*args: object, **kwargs: object) -> None:
        raise OSError(f"simulated failure in {fail_at}")

    monkeypatch.setattr(_io.os, fail_at, boom)
    with pytest.raises(OSError, match="simulated failure"):
        atomic_write_text(target, "new content " * 1000)
    assert target.read_text() == "old content"
    assert _names(tmp_path) == ["card.json"]


def test_failure_mid_write_does_not_create_a_new_file(tmp_path: Path) -> None:
    target = tmp_path / "new.png"
    with pytest.raises(RuntimeError, match="writer died"), atomic_path(target) as tmp:
        tmp.write_bytes(b"half a fi")
        raise RuntimeError("writer died")
    assert _names(tmp_path) == []


def test_interrupt_cleans_up_too(tmp_path: Path) -> None:
    target = tmp_path / "x.txt"
    target.write_text("old")
    with pytest.raises(KeyboardInterrupt), atomic_path(target) as tmp:
        tmp.write_text("partial")
        raise KeyboardInterrupt
    assert target.read_text() == "old" and _names(tmp_path) == ["x.txt"]


def test_atomic_path_writes_beside_the_target_and_only_renames_at_the_end(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "rotation.png"
    target.parent.mkdir()
    target.write_bytes(b"old")
    with atomic_path(target) as tmp:
        assert tmp.parent == target.parent and tmp != target
        assert tmp.suffix == ".png" and tmp.name.startswith(".")  # the writer can infer the format
        tmp.write_bytes(b"new")
        assert target.read_bytes() == b"old"  # readers still see the whole old file
    assert target.read_bytes() == b"new"
    assert _names(target.parent) == ["rotation.png"]
    assert stat.S_IMODE(target.stat().st_mode) == 0o644


def test_atomic_path_with_a_writer_that_opens_by_name(tmp_path: Path) -> None:
    """The temporary file exists (empty) when handed out, and a writer that reopens it by name works."""
    target = tmp_path / "weights.safetensors"
    with atomic_path(target) as tmp:
        assert tmp.exists() and tmp.stat().st_size == 0
        with open(os.fspath(tmp), "w") as f:
            f.write("payload")
    assert target.read_text() == "payload"
