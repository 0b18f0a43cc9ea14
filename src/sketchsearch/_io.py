"""Atomic file writes: the one way this package writes a file that others read.

Through a temporary file in the same folder, fsync and a rename, so a reader never sees a half-written
file and a crash leaves the old file intact. (The standard library has no atomic write; index folders,
which are several files, use :func:`sketchsearch.index.store` 's folder-level replace instead.)
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

__all__ = ["atomic_write_bytes", "atomic_write_text"]


def atomic_write_bytes(path: str | Path, data: bytes, mode: int = 0o644) -> Path:
    """Write ``data`` to ``path`` atomically (parents created; permissions ``mode``: mkstemp makes 0600
    files, and results are meant to be read by others). Returns the path."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=f".{p.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return p


def atomic_write_text(path: str | Path, text: str) -> Path:
    """:func:`atomic_write_bytes` of ``text`` as UTF-8 (``\\n`` line ends kept as written)."""
    return atomic_write_bytes(path, text.encode("utf-8"))
