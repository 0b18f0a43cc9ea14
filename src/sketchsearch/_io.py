"""Atomic file writes: the one way this package writes a file that others read.

Through a temporary file in the same folder, fsync and a rename, so a reader never sees a half-written
file and a crash leaves the old file intact. (The standard library has no atomic write; index folders,
which are several files, use :func:`sketchsearch.index.store` 's folder-level replace instead.)

:func:`atomic_write_bytes` / :func:`atomic_write_text` write data held in memory; :func:`atomic_path` is for
writers that want a file name (matplotlib's ``savefig``, safetensors' ``save_file``).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["atomic_path", "atomic_write_bytes", "atomic_write_text"]


@contextmanager
def atomic_path(path: str | Path, mode: int = 0o644) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; when the block ends normally, the temporary file is
    fsynced, given permissions ``mode`` and renamed over ``path``. If the block raises (or the rename
    fails), the temporary file is removed and ``path`` is left as it was.

    The temporary name keeps ``path``'s suffix (``.rotation.x1y2.tmp.png``), so writers that pick the
    format from the extension still do. Parents are created. ``mode``: mkstemp makes 0600 files, and results
    are meant to be read by others.
    """
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=p.parent, prefix=f".{p.stem}.", suffix=f".tmp{p.suffix}")
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, mode)
        with open(tmp, "rb+") as f:  # the writer may have closed without flushing to disk
            os.fsync(f.fileno())
        os.replace(tmp, p)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | Path, data: bytes, mode: int = 0o644) -> Path:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_path`). Returns the path."""
    with atomic_path(path, mode) as tmp, open(tmp, "wb") as f:
        f.write(data)
    return Path(path)


def atomic_write_text(path: str | Path, text: str) -> Path:
    """:func:`atomic_write_bytes` of ``text`` as UTF-8 (``\\n`` line ends kept as written)."""
    return atomic_write_bytes(path, text.encode("utf-8"))
