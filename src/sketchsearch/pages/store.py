"""The page table of a page index: ``pages.sqlite``, an attachment of the index folder
(:mod:`sketchsearch.index.store`: listed in the manifest, checksummed, verified on load).

    pages(id INTEGER PRIMARY KEY, source TEXT NOT NULL, width INTEGER, height INTEGER, boxes INTEGER,
          preview BLOB, meta TEXT)

``source`` is the page's file relative to the folder it was indexed from (``file.pdf:3`` for the fourth page
of a PDF); ``width`` / ``height`` the size the boxes are given in (the page as read, after
``ProposalConfig.max_side``); ``preview`` a JPEG of the page at most :data:`PREVIEW_SIDE` pixels a side (what
``pages search --out`` and the web page draw the boxes on, scaled); ``meta`` a JSON object (e.g. its truth,
for generated pages). The boxes themselves are the index's items: ``meta = {"page": id, "box": [x0, y0, x1,
y1], "proposal": "ink" | "window"}``, ``source`` = the page's source.
"""

from __future__ import annotations

import io
import json
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..errors import IndexError_

__all__ = ["PAGES_FILE", "PREVIEW_SIDE", "PageStore", "PageWriter", "preview_jpeg"]

PAGES_FILE = "pages.sqlite"
#: the longer side of a page's stored preview, pixels
PREVIEW_SIDE = 1400
_SCHEMA = (
    "CREATE TABLE pages (id INTEGER PRIMARY KEY, source TEXT NOT NULL, width INTEGER NOT NULL, "
    "height INTEGER NOT NULL, boxes INTEGER NOT NULL, preview BLOB, meta TEXT)"
)


def preview_jpeg(page: np.ndarray, side: int = PREVIEW_SIDE) -> bytes:
    """A page (uint8 grey or RGB) as a JPEG at most ``side`` pixels a side."""
    img = Image.fromarray(np.asarray(page)).convert("RGB")
    img.thumbnail((side, side), Image.LANCZOS)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=85, optimize=True)
    return buf.getvalue()


class PageWriter:
    """Writes the page table to ``path`` (a new file) one page at a time, so memory holds one preview."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if self.path.exists():
            self.path.unlink()
        self._db = sqlite3.connect(self.path)
        self._db.execute(_SCHEMA)
        self.count = 0

    def add(self, page_id: int, source: str, width: int, height: int, boxes: int, preview: bytes, meta: Any) -> None:
        self._db.execute(
            "INSERT INTO pages VALUES (?, ?, ?, ?, ?, ?, ?)",
            (int(page_id), source, int(width), int(height), int(boxes), preview, json.dumps(meta or {})),
        )
        self.count += 1

    def copy_from(self, store: PageStore) -> None:
        """Every page of an existing table (an index being added to)."""
        for row in store.rows(with_preview=True):
            self.add(row["id"], row["source"], row["width"], row["height"], row["boxes"], row["preview"], row["meta"])

    def close(self) -> Path:
        self._db.commit()
        self._db.close()
        return self.path


class PageStore:
    """Read-only access to a page table (thread-safe: one connection per thread)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise IndexError_(f"{self.path}: missing page table of a page index")
        self._local = threading.local()
        try:
            cols = [r[1] for r in self._db().execute("PRAGMA table_info(pages)")]
        except sqlite3.DatabaseError as e:
            raise IndexError_(f"{self.path}: not a page table ({e})") from None
        if cols[:5] != ["id", "source", "width", "height", "boxes"]:
            raise IndexError_(f"{self.path}: not a page table (columns {cols})")

    def _db(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, check_same_thread=False)
            self._local.db = db
        return db

    def __len__(self) -> int:
        return int(self._db().execute("SELECT COUNT(*) FROM pages").fetchone()[0])

    def _row(self, r: tuple[Any, ...], with_preview: bool) -> dict[str, Any]:
        out = {
            "id": r[0],
            "source": r[1],
            "width": r[2],
            "height": r[3],
            "boxes": r[4],
            "meta": json.loads(r[-1] or "{}"),
        }
        if with_preview:
            out["preview"] = r[5]
        return out

    def rows(self, with_preview: bool = False) -> Iterator[dict[str, Any]]:
        cols = (
            "id, source, width, height, boxes, preview, meta"
            if with_preview
            else "id, source, width, height, boxes, meta"
        )
        for r in self._db().execute(f"SELECT {cols} FROM pages ORDER BY id"):
            yield self._row(r, with_preview)

    def page(self, page_id: int) -> dict[str, Any] | None:
        r = (
            self._db()
            .execute("SELECT id, source, width, height, boxes, meta FROM pages WHERE id = ?", (int(page_id),))
            .fetchone()
        )
        return None if r is None else self._row(r, False)

    def preview(self, page_id: int) -> bytes | None:
        r = self._db().execute("SELECT preview FROM pages WHERE id = ?", (int(page_id),)).fetchone()
        return None if r is None else r[0]
