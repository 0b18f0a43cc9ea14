"""The item store of an index folder: ``items.sqlite`` (id -> label, source, thumbnail, metadata, extras).

Written once per save by :func:`write_items` (rows checked by :func:`item_row`), read through
:class:`ItemStore` (read-only, by integer id only). See :mod:`sketchsearch.index.store` for the layout.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from sketchsearch.errors import IndexArgumentError, IndexError_

__all__ = ["PNG_MAGIC", "ItemStore", "item_row", "json_default", "write_items"]

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"{type(o).__name__} is not JSON serialisable")


# ---------------------------------------------------------------------------------------------- items
_SCHEMA = (
    (
        "CREATE TABLE items (id INTEGER PRIMARY KEY, label TEXT, source TEXT, thumbnail BLOB, extra TEXT NOT NULL, "
        "meta TEXT)"
    ),
    "CREATE INDEX items_source ON items (source)",
)
_ITEM_KEYS = ("id", "label", "source", "thumbnail", "meta")


def item_row(item: Mapping[str, Any], n: int) -> tuple[int, str | None, str | None, bytes | None, str, str | None]:
    """One item dict -> a row; errors name ``items[n].field``."""
    if not isinstance(item, Mapping):
        raise IndexArgumentError(f"expected a dict, got {type(item).__name__}", f"items[{n}]")
    iid = item.get("id")
    if isinstance(iid, bool) or not isinstance(iid, (int, np.integer)) or iid < 0:
        raise IndexArgumentError(f"expected an integer id >= 0, got {iid!r}", f"items[{n}].id")
    row: list[Any] = [int(iid)]
    for key in ("label", "source"):
        v = item.get(key)
        if v is not None and not isinstance(v, str):
            v = str(v)
        if v is not None and not v.isascii():
            try:
                v.encode("utf-8")
            except UnicodeEncodeError:  # a file name that is not UTF-8, read with surrogateescape
                raise IndexArgumentError(
                    f"not valid UTF-8: {os.fsencode(v)!r}; rename the file it names", f"items[{n}].{key}"
                ) from None
        row.append(v)
    thumb = item.get("thumbnail")
    if thumb is not None:
        if not isinstance(thumb, (bytes, bytearray, memoryview)) or not bytes(thumb[:8]) == PNG_MAGIC:
            raise IndexArgumentError("expected PNG bytes (or None)", f"items[{n}].thumbnail")
        thumb = bytes(thumb)
    row.append(thumb)
    extra = {k: v for k, v in item.items() if k not in _ITEM_KEYS}
    try:
        row.append(json.dumps(extra, default=json_default, sort_keys=True))
    except (TypeError, ValueError) as e:
        raise IndexArgumentError(f"extra fields must be JSON-serialisable: {e}", f"items[{n}]") from None
    meta = item.get("meta")
    if meta is not None and not isinstance(meta, Mapping):
        raise IndexArgumentError(f"expected a dict of fields (or None), got {type(meta).__name__}", f"items[{n}].meta")
    try:
        row.append(json.dumps(dict(meta), default=json_default, sort_keys=True, ensure_ascii=False) if meta else None)
    except (TypeError, ValueError) as e:
        raise IndexArgumentError(f"must be JSON-serialisable: {e}", f"items[{n}].meta") from None
    return tuple(row)  # type: ignore[return-value]


def write_items(path: Path, rows: Iterable[tuple[Any, ...]]) -> None:
    """Create the item store ``path`` holding ``rows``."""
    con = sqlite3.connect(path)
    try:
        for statement in _SCHEMA:
            con.execute(statement)
        try:
            con.executemany("INSERT INTO items VALUES (?, ?, ?, ?, ?, ?)", rows)
        except sqlite3.IntegrityError as e:
            raise IndexArgumentError(f"an item id is given more than once ({e})", "items") from None
        con.commit()
    finally:
        con.close()


class ItemStore:
    """Read-only access to an index folder's ``items.sqlite``: labels, sources, metadata, thumbnails, extras.

    Lookups are by integer id only; the file path is fixed when the store is opened, so nothing a
    caller passes ever reaches the file system. The connection is opened once (read-only), so the
    store keeps reading the file it was opened on even if the folder is replaced meanwhile; it is
    safe to share between threads.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        try:
            self._con = sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro", uri=True, check_same_thread=False)
            self._con.execute("SELECT id, label, source, thumbnail, extra FROM items LIMIT 1").fetchall()
            columns = {row[1] for row in self._con.execute("PRAGMA table_info(items)")}
        except sqlite3.Error as e:
            raise IndexError_(f"{self.path}: not a readable item store ({e})") from None
        #: stores written before items had metadata have no ``meta`` column: their items' meta is {}
        self._meta = "meta" if "meta" in columns else "NULL"
        self._lock = threading.Lock()

    @staticmethod
    def _check_id(item_id: object) -> int:
        if isinstance(item_id, bool) or not isinstance(item_id, (int, np.integer)):
            raise IndexArgumentError(f"expected an integer id, got {item_id!r}", "id")
        return int(item_id)

    def items(self, ids: Sequence[int]) -> list[dict[str, Any]]:
        """Item dicts (id, label, source, meta (a dict, {} when none), has_thumbnail, extra fields) for the
        ids found, in the given order."""
        want = [self._check_id(i) for i in ids]
        found: dict[int, dict[str, Any]] = {}
        with self._lock:
            for s in range(0, len(want), 500):  # SQLite's bound-parameter limit
                part = want[s : s + 500]
                q = (
                    f"SELECT id, label, source, thumbnail IS NOT NULL, extra, {self._meta} FROM items "
                    f"WHERE id IN ({','.join('?' * len(part))})"
                )
                for iid, label, source, has_thumb, extra, meta in self._con.execute(q, part):
                    row = json.loads(extra)
                    row.update(
                        id=iid,
                        label=label,
                        source=source,
                        meta=json.loads(meta) if meta else {},
                        has_thumbnail=bool(has_thumb),
                    )
                    found[iid] = row
        return [found[i] for i in want if i in found]

    def ids_with_sources(self, sources: Sequence[str]) -> dict[str, list[int]]:
        """source -> the ids of the items with that source (ascending), for the sources found."""
        out: dict[str, list[int]] = {}
        want = [str(s) for s in sources]
        with self._lock:
            for s in range(0, len(want), 500):
                part = want[s : s + 500]
                q = f"SELECT source, id FROM items WHERE source IN ({','.join('?' * len(part))}) ORDER BY id"
                for source, iid in self._con.execute(q, part):
                    out.setdefault(source, []).append(int(iid))
        return out

    def thumbnail(self, item_id: int) -> bytes | None:
        """PNG bytes of an item's thumbnail; None when the item has none or does not exist."""
        iid = self._check_id(item_id)
        with self._lock:
            row = self._con.execute("SELECT thumbnail FROM items WHERE id = ?", (iid,)).fetchone()
        return None if row is None or row[0] is None else bytes(row[0])

    def __len__(self) -> int:
        with self._lock:
            return int(self._con.execute("SELECT COUNT(*) FROM items").fetchone()[0])

    def close(self) -> None:
        self._con.close()
