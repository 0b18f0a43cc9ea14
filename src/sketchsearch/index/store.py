"""The on-disk index: a folder that holds everything a search needs, written atomically.

Layout (format version 1)::

    my-index/
      manifest.json   {"format": "sketchsearch-index", "format_version": 1, "kind": "binary"|"dense",
                       "nbits" | "dim", "count", "model_id", "model_name", "metric", "backend",
                       "created", "updated", "files": {name: {"sha256", "bytes"}},
                       optional: "name", "slug", "title", "description"}
      codes.npy       binary: uint8 (count, nbits // 8), packed as in codes.py; dense: float32 (count, dim)
      ids.npy         int64 (count,), strictly ascending (the codes are stored in id order)
      items.sqlite    table items(id INTEGER PRIMARY KEY, label TEXT, source TEXT, thumbnail BLOB,
                                  extra TEXT, meta TEXT)
                      source = where the item came from: its file relative to the collection's folder
                      (with ":record" when the file holds several), or its record id;
                      meta = JSON object of the item's metadata (sidecar title, date, place, url, ...,
                      and the reader's extras), NULL when it has none; extra = JSON object of any
                      further fields of an item

**Collection.** ``name`` is what a person calls the collection (any text, spaces allowed), ``slug`` the
URL-safe id derived from it (:func:`slugify`: lowercase ASCII letters, digits and ``-``), ``title`` the
heading to show (the name unless given), ``description`` a sentence or two (or null). Folders without
them, and item stores without the ``meta`` column (written before it existed), still load: their items'
``meta`` is ``{}``.

Any :class:`~sketchsearch.index.base.Index` is saved the same way: its ``name`` (as "backend"), ``metric``
and ``config()`` ("nbits", or "dim" and "metric") go into the manifest, its ``state()`` arrays into
codes.npy and ids.npy; loading makes ``create_index(backend, **config)`` and hands it the arrays
(``load_state``). "kind" is "binary" for the Hamming metric, "dense" otherwise. Manifests written
before the backend was renamed still load: binary ones say "backend": "sketchsearch" (an alias of
"numba"), dense ones have no "backend" (the dense index is meant).

**Atomic save.** Everything is written into a temporary folder beside the target (same file
system), each file fsync'ed, then the folder is renamed into place; an existing index is first
renamed aside and deleted only after the new one is in place. A failure at any point before the
final rename leaves the old index untouched. (Between the two renames a crash can leave the old
index at ``.<name>.old-*`` beside the target; ``load_index`` says so if the target is missing.)

**Verification.** ``load_index(verify=True)`` (the default) recomputes the SHA-256 of every file
and refuses the index on any mismatch, naming the file. This reads every byte once: about 0.1 s
per 100 MB (10 million 64-bit codes are 80 MB of codes + 80 MB of ids) on one core. Pass
``verify=False`` to skip it for a trusted index (shapes, dtypes and the manifest are still checked).

**Writers.** :func:`write_lock` lets one command at a time change a folder (``index build``, ``add``,
``remove``: load, change, save under the lock); readers need no lock (they see the old folder or the new).

**Models.** The manifest records the id of the model that made the codes; ``load_index(...,
expected_model_id=...)`` refuses an index from another model.

This module is the persistence of :class:`~sketchsearch.retrieval.Retriever` (``Retriever.save`` /
``Retriever.load``), the one search path: to add or remove items of a saved index, load it with the
Retriever, change it and save it again (the folder is rewritten atomically: O(index size) per save).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import re
import shutil
import sqlite3
import tempfile
import threading
import unicodedata
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from sketchsearch.errors import IndexArgumentError, IndexError_

from .base import Index, create_index, state_arrays

__all__ = [
    "COLLECTION_FIELDS",
    "FORMAT",
    "FORMAT_VERSION",
    "GENERIC_NAMES",
    "ItemStore",
    "collection_fields",
    "default_collection_name",
    "load_index",
    "read_manifest",
    "save_index",
    "slugify",
    "write_lock",
]

FORMAT = "sketchsearch-index"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
CODES, IDS, ITEMS = "codes.npy", "ids.npy", "items.sqlite"
DATA_FILES = (CODES, IDS, ITEMS)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

#: Per kind: the manifest fields that hold the index's ``config()``, and the backend meant by a
#: manifest without "backend" (dense manifests written before the dense index was registered).
CONFIG_FIELDS = {"binary": ("nbits",), "dense": ("dim", "metric")}
DEFAULT_BACKEND = {"binary": "numba", "dense": "dense"}
#: The manifest's optional fields that present the collection (see the module docstring).
COLLECTION_FIELDS = ("name", "slug", "title", "description")
#: Folder names that say nothing about a collection: an index folder so called does not name it.
GENERIC_NAMES = frozenset(
    {
        "",
        "index",
        "indexes",
        "indices",
        "idx",
        "out",
        "output",
        "outputs",
        "build",
        "tmp",
        "temp",
        "new",
        "result",
        "results",
        "run",
        "runs",
        "data",
        "dataset",
        "db",
        "collection",
        "folder",
    }
)
MAX_NAME_CHARS, MAX_DESCRIPTION_CHARS, MAX_SLUG_CHARS = 200, 2000, 64


# ---------------------------------------------------------------------------------------------- helpers
def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"{type(o).__name__} is not JSON serialisable")


def _index_kind(index: object) -> str:
    """The manifest's "kind" of an index: "binary" (Hamming metric) or "dense"."""
    if not isinstance(index, Index):
        raise IndexArgumentError(
            f"expected an index (the Index protocol, e.g. from create_index), got {type(index).__name__}",
            "index",
        )
    return "binary" if index.metric == "hamming" else "dense"


def _backups(folder: Path) -> list[Path]:
    return sorted(folder.parent.glob(f".{folder.name}.old-*"))


# ---------------------------------------------------------------------------------------------- collection
def slugify(name: str) -> str:
    """A URL-safe id for ``name``: accents dropped, lowercase ASCII letters and digits, other runs as ``-``,
    at most 64 characters (``"Merchant marks of Bristol"`` -> ``"merchant-marks-of-bristol"``). A name with
    no Latin letters or digits gets ``collection-`` and 8 hex digits of its SHA-256."""
    text = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode("ascii").lower()
    slug = re.sub(r"[^a-z0-9]+", "-", text).strip("-")[:MAX_SLUG_CHARS].rstrip("-")
    return slug or f"collection-{hashlib.sha256(name.encode('utf-8')).hexdigest()[:8]}"


def _says_something(name: str) -> bool:
    """False for folder names such as ``index``, ``idx2``, ``out-1`` (:data:`GENERIC_NAMES`, digits aside)."""
    return re.sub(r"[\W_\d]+$", "", name.lower()) not in GENERIC_NAMES


def default_collection_name(out: str | Path, data: str | Path) -> str:
    """The name of a collection indexed from ``data`` into ``out`` when none is given: the index folder's
    name when it says something (not ``index``, ``idx``, ``out`` ...: :data:`GENERIC_NAMES`), else the
    data's name (a folder's name, a file's stem; ``default`` / ``kanjivg`` for the built-in sources)."""
    out_name = Path(out).resolve().name
    if _says_something(out_name):
        return out_name
    data_path = Path(data)
    if str(data) in ("default", "kanjivg"):
        return str(data)
    data_name = data_path.resolve().stem if data_path.is_file() else data_path.resolve().name
    return data_name or out_name or "collection"


def _text(value: str | None, key: str, limit: int, one_line: bool) -> str | None:
    """``value`` stripped (runs of white space as one space when ``one_line``), None when empty."""
    if value is None:
        return None
    text = " ".join(value.split()) if one_line else value.strip()
    if len(text) > limit:
        raise IndexArgumentError(f"at most {limit} characters, got {len(text)}", key)
    return text or None


def collection_fields(name: str, title: str | None = None, description: str | None = None) -> dict[str, Any]:
    """The manifest's collection fields: ``name`` and ``title`` on one line (white space runs as one space),
    the ``slug`` of the name, ``title`` defaulting to the name, ``description`` (None when empty).
    IndexArgumentError naming ``name`` / ``title`` / ``description`` for an empty name or text over its
    length limit (200 characters; description 2000)."""
    clean = _text(name, "name", MAX_NAME_CHARS, one_line=True)
    if clean is None:
        raise IndexArgumentError(f"a non-empty name is needed, got {name!r}", "name")
    return {
        "name": clean,
        "slug": slugify(clean),
        "title": _text(title, "title", MAX_NAME_CHARS, one_line=True) or clean,
        "description": _text(description, "description", MAX_DESCRIPTION_CHARS, one_line=False),
    }


@contextmanager
def write_lock(folder: str | Path) -> Iterator[None]:
    """Hold the write lock of the index folder ``folder`` (the file ``.<name>.lock`` beside it, created when
    missing and left in place) for the block; IndexError_ at once when another process holds it."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    lock = folder.parent / f".{folder.name}.lock"
    with open(lock, "a+b") as f:
        try:
            if os.name == "nt":  # pragma: no cover - Windows
                import msvcrt

                msvcrt.locking(f.fileno(), msvcrt.LK_NBLCK, 1)
            else:
                import fcntl

                fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise IndexError_(
                f"{folder}: another command is changing this index (it holds {lock}); run again when it has finished"
            ) from None
        yield  # the lock goes with the file's closing


# ---------------------------------------------------------------------------------------------- items
_SCHEMA = (
    (
        "CREATE TABLE items (id INTEGER PRIMARY KEY, label TEXT, source TEXT, thumbnail BLOB, extra TEXT NOT NULL, "
        "meta TEXT)"
    ),
    "CREATE INDEX items_source ON items (source)",
)
_ITEM_KEYS = ("id", "label", "source", "thumbnail", "meta")


def _item_row(item: Mapping[str, Any], n: int) -> tuple[int, str | None, str | None, bytes | None, str, str | None]:
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
        row.append(v)
    thumb = item.get("thumbnail")
    if thumb is not None:
        if not isinstance(thumb, (bytes, bytearray, memoryview)) or not bytes(thumb[:8]) == PNG_MAGIC:
            raise IndexArgumentError("expected PNG bytes (or None)", f"items[{n}].thumbnail")
        thumb = bytes(thumb)
    row.append(thumb)
    extra = {k: v for k, v in item.items() if k not in _ITEM_KEYS}
    try:
        row.append(json.dumps(extra, default=_json_default, sort_keys=True))
    except (TypeError, ValueError) as e:
        raise IndexArgumentError(f"extra fields must be JSON-serialisable: {e}", f"items[{n}]") from None
    meta = item.get("meta")
    if meta is not None and not isinstance(meta, Mapping):
        raise IndexArgumentError(f"expected a dict of fields (or None), got {type(meta).__name__}", f"items[{n}].meta")
    try:
        row.append(json.dumps(dict(meta), default=_json_default, sort_keys=True, ensure_ascii=False) if meta else None)
    except (TypeError, ValueError) as e:
        raise IndexArgumentError(f"must be JSON-serialisable: {e}", f"items[{n}].meta") from None
    return tuple(row)  # type: ignore[return-value]


def _write_items(path: Path, rows: Iterable[tuple[Any, ...]]) -> None:
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


# ---------------------------------------------------------------------------------------------- save
def _write_folder(
    tmp: Path,
    index: Index,
    model_id: str,
    model_name: str | None,
    rows: Sequence[tuple[Any, ...]],
    created: str | None,
    collection: Mapping[str, Any],
) -> None:
    codes, ids = state_arrays(index.state())
    for name, arr in ((CODES, codes), (IDS, ids)):
        with open(tmp / name, "wb") as f:
            np.save(f, np.ascontiguousarray(arr), allow_pickle=False)
            f.flush()
            os.fsync(f.fileno())
    _write_items(tmp / ITEMS, rows)
    _fsync_file(tmp / ITEMS)
    manifest: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "kind": _index_kind(index),
        "count": len(index),
        "model_id": model_id,
        "model_name": model_name,
        "metric": index.metric,
        "backend": index.name,
        **index.config(),
        **{key: collection[key] for key in COLLECTION_FIELDS if key in collection},
        "created": created or _now(),
        "updated": _now(),
        "files": {name: {"sha256": _sha256(tmp / name), "bytes": (tmp / name).stat().st_size} for name in DATA_FILES},
    }
    with open(tmp / MANIFEST, "w") as f:
        json.dump(manifest, f, indent=2, sort_keys=True, default=_json_default)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    _fsync_dir(tmp)


def _atomic_replace(folder: Path, fill: Any) -> Path:
    """Build the new folder with ``fill(tmp)`` beside ``folder``, then swap it in."""
    folder = Path(folder)
    if folder.exists():
        if not folder.is_dir():
            raise IndexError_(f"{folder}: exists and is not an index folder")
        if any(folder.iterdir()) and not (folder / MANIFEST).is_file():
            raise IndexError_(f"{folder}: exists, is not empty and holds no {MANIFEST}; refusing to replace it")
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp-", dir=folder.parent))
    try:
        fill(tmp)
        old = None
        if folder.exists():
            old = folder.parent / f".{folder.name}.old-{uuid.uuid4().hex[:8]}"
            os.rename(folder, old)
        os.rename(tmp, folder)
        _fsync_dir(folder.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return folder


def save_index(
    index: Index,
    folder: str | Path,
    model_id: str,
    items: Sequence[Mapping[str, Any]] | None = None,
    model_name: str | None = None,
    collection: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``index`` and its ``items`` to ``folder`` atomically (replacing an index already there).

    items: dicts with ``id`` (must be an id of the index), optional ``label``, ``source``, ``meta`` (a
    dict of JSON-serialisable fields), ``thumbnail`` (PNG bytes) and any JSON-serialisable extra fields.
    Items are optional per id. The manifest records the index's backend name, metric and config (see the
    module docstring) and ``collection``'s fields (:func:`collection_fields`); None keeps those of the
    index already in ``folder``, if any.
    """
    _index_kind(index)
    if not isinstance(model_id, str) or not model_id:
        raise IndexArgumentError(f"expected a non-empty string, got {model_id!r}", "model_id")
    rows = [_item_row(it, n) for n, it in enumerate(items or [])]
    if rows:
        row_ids = np.fromiter((r[0] for r in rows), np.int64, len(rows))
        unknown = ~np.isin(row_ids, index.ids)
        if unknown.any():
            n = int(np.flatnonzero(unknown)[0])
            raise IndexArgumentError(f"id {int(row_ids[n])} is not in the index", f"items[{n}].id")
    if collection is not None:
        unknown = sorted(set(collection) - set(COLLECTION_FIELDS))
        if unknown:
            raise IndexArgumentError(f"unknown field(s) {unknown}; valid: {', '.join(COLLECTION_FIELDS)}", "collection")
    old: dict[str, Any] = {}
    folder = Path(folder)
    if (folder / MANIFEST).is_file():
        try:
            old = json.loads((folder / MANIFEST).read_text())
        except (OSError, ValueError):
            old = {}
    created = old.get("created") if isinstance(old, dict) else None
    if collection is None:
        collection = {k: old[k] for k in COLLECTION_FIELDS if isinstance(old, dict) and k in old}
    return _atomic_replace(
        folder, lambda tmp: _write_folder(tmp, index, model_id, model_name, rows, created, collection)
    )


# ---------------------------------------------------------------------------------------------- load
def read_manifest(folder: str | Path) -> dict[str, Any]:
    """The folder's manifest, checked for format and version; raises IndexError_ naming what is wrong."""
    folder = Path(folder)
    if not folder.is_dir():
        hint = ""
        backups = _backups(folder)
        if backups:
            hint = f" (an interrupted save left the previous index at {backups[-1]}; rename it back to {folder.name})"
        raise IndexError_(f"{folder}: no such index folder{hint}")
    path = folder / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise IndexError_(f"{path}: missing; {folder} is not a complete index folder") from None
    except (OSError, ValueError) as e:
        raise IndexError_(f"{path}: unreadable manifest ({e})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise IndexError_(f"{path}: not a {FORMAT} manifest")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise IndexError_(
            f"{path}: format version {manifest.get('format_version')!r}, this sketchsearch reads version "
            f"{FORMAT_VERSION}; rebuild the index with `sketchsearch index`"
        )
    for key in ("kind", "count", "model_id", "files"):
        if key not in manifest:
            raise IndexError_(f"{path}: field {key!r} is missing")
    if manifest["kind"] not in ("binary", "dense") or manifest["kind"] == "binary" and "nbits" not in manifest:
        raise IndexError_(f"{path}: field 'kind'/'nbits'/'dim' is invalid")
    return manifest


def _check_files(folder: Path, manifest: Mapping[str, Any], verify: bool) -> None:
    files = manifest["files"]
    for name in DATA_FILES:
        path = folder / name
        if name not in files:
            raise IndexError_(f"{folder / MANIFEST}: no checksum recorded for {name}")
        if not path.is_file():
            raise IndexError_(f"{path}: missing file of the index")
        if path.stat().st_size != files[name].get("bytes"):
            raise IndexError_(
                f"{path}: size {path.stat().st_size} bytes, the manifest says {files[name].get('bytes')}; "
                "the index is corrupt"
            )
        if verify and _sha256(path) != files[name].get("sha256"):
            raise IndexError_(f"{path}: checksum mismatch (the file changed after it was saved); the index is corrupt")


def _load_array(path: Path, mmap: bool) -> np.ndarray:
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise IndexError_(f"{path}: not a readable .npy array ({e})") from None


def load_index(
    folder: str | Path,
    expected_model_id: str | None = None,
    mmap: bool = True,
    verify: bool = True,
    backend: str | None = None,
) -> tuple[Index, ItemStore]:
    """Open an index folder: returns (index, item store).

    expected_model_id: refuse (IndexError_) an index whose codes another model made.
    mmap: memory-map codes.npy instead of reading it (the index copies only on add/remove).
    verify: recompute the files' SHA-256 (see the module docstring for the cost).
    backend: backend to search with, one of the folder's kind (default: the one recorded at save time).
    """
    folder = Path(folder)
    manifest = read_manifest(folder)
    _check_model(manifest, expected_model_id, folder)
    _check_files(folder, manifest, verify)
    codes = _load_array(folder / CODES, mmap)
    ids = _load_array(folder / IDS, False)
    count = manifest["count"]
    kind = manifest["kind"]
    name = backend or manifest.get("backend") or DEFAULT_BACKEND[kind]
    try:
        index = create_index(name, **{key: manifest[key] for key in CONFIG_FIELDS[kind] if key in manifest})
    except (TypeError, ValueError) as e:  # an unknown backend, one of the other kind, a bad nbits / dim
        raise IndexError_(f"{folder}: cannot make a {kind} index with backend {name!r} ({e})") from None
    try:
        if codes.shape[0] != count or ids.shape != (count,) or ids.dtype != np.int64:
            raise IndexArgumentError(
                f"{count} codes and ids expected, found {codes.shape} and {ids.shape} {ids.dtype}", "count"
            )
        index.load_state({"codes": codes, "ids": ids})
    except IndexArgumentError as e:
        raise IndexError_(f"{folder}: stored arrays do not match the manifest ({e})") from None
    return index, ItemStore(folder / ITEMS)


def _check_model(manifest: Mapping[str, Any], expected: str | None, folder: Path) -> None:
    if expected is not None and manifest.get("model_id") != expected:
        raise IndexError_(
            f"{folder}: made by model {manifest.get('model_id')!r}, but the query model is {expected!r}; "
            "codes from different models are not comparable (re-index with the query's model)"
        )
