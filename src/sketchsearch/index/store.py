"""The on-disk index: a folder that holds everything a search needs, written atomically.

Layout (format version 1)::

    my-index/
      manifest.json   {"format": "sketchsearch-index", "format_version": 1, "kind": "binary"|"dense",
                       "nbits" | "dim", "count", "model_id", "model_name", "metric", "backend",
                       "created", "updated", "files": {name: {"sha256", "bytes"}},
                       optional: "name", "slug", "title", "description", "attachments", "pages"}
      codes.npy       binary: uint8 (count, nbits // 8), packed as in codes.py; dense: float32 (count, dim)
      ids.npy         int64 (count,), strictly ascending (the codes are stored in id order)
      items.sqlite    table items(id INTEGER PRIMARY KEY, label TEXT, source TEXT, thumbnail BLOB,
                                  extra TEXT, meta TEXT)
                      source = where the item came from: its file relative to the collection's folder
                      (with ":record" when the file holds several), or its record id;
                      meta = JSON object of the item's metadata (sidecar title, date, place, url, ...,
                      and the reader's extras), NULL when it has none; extra = JSON object of any
                      further fields of an item

**Attachments.** An index may carry further files of its own (``save_index(attachments=...)``: a page
collection's ``pages.sqlite``, see :mod:`sketchsearch.pages`), listed in the manifest's ``"attachments"``,
checksummed in ``"files"`` and verified on load like the data files. Extra manifest fields
(:data:`EXTRA_FIELDS`, e.g. ``"pages"``: how a page collection's boxes were proposed) are kept as given.

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

**Atomic save.** Everything is written into a temporary folder ``.<name>.tmp-*`` beside the target (same
file system), each file fsync'ed, then swapped into place (:func:`~sketchsearch.index.folder.swap_in`: one
atomic exchange on Linux, else two renames); the previous generation is deleted afterwards. A failure at
any point before the swap (a full disk, no permission) leaves the old index untouched and is reported as
IndexError_ naming the file; no temporary folder is left. A symlink given as the folder is followed.

**Verification.** ``load_index(verify=True)`` (the default) recomputes the SHA-256 of every file
and refuses the index on any mismatch, naming the file. This reads every byte once: about 0.1 s
per 100 MB (10 million 64-bit codes are 80 MB of codes + 80 MB of ids) on one core. Pass
``verify=False`` to skip it for a trusted index (shapes, dtypes and the manifest are still checked).

**Writers and readers.** Every save holds the folder's write lock
(:func:`~sketchsearch.index.folder.write_lock`, which waits for another writer); to change an index, hold
it around load, change and save (``index build``, ``add``, ``remove`` do), so that ids are allocated from
the latest generation. Readers take no lock: each save writes a new random "generation" into the
manifest, and ``load_index`` retries when the folder changed while it was read, so a swap is never
reported as corruption (real corruption still is). The folder's modes follow the umask (a replaced
folder keeps the modes it had); leftovers of killed writers are removed by the next writer.

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
import shutil
import sqlite3
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from sketchsearch.errors import IndexArgumentError, IndexError_

from .base import ALIASES, Index, create_index, list_indexes, state_arrays
from .collection import (
    COLLECTION_FIELDS,
    GENERIC_NAMES,
    collection_fields,
    default_collection_name,
    slugify,
)
from .folder import _fsync_dir, check_path, os_reason, set_modes, swap_in, write_lock
from .items import ItemStore, json_default
from .items import item_row as _item_row
from .items import write_items as _write_items

__all__ = [
    "COLLECTION_FIELDS",
    "EXTRA_FIELDS",
    "FORMAT",
    "FORMAT_VERSION",
    "GENERIC_NAMES",
    "ItemStore",
    "attachment_names",
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
#: manifest fields a caller may add (``save_index(fields=...)``): a page collection's proposal settings
EXTRA_FIELDS = ("pages",)
#: seconds a load keeps retrying while writers swap new generations in under it
READ_RETRY_S = 10.0

#: Per kind: the manifest fields that hold the index's ``config()``, and the backend meant by a
#: manifest without "backend" (dense manifests written before the dense index was registered).
CONFIG_FIELDS = {"binary": ("nbits",), "dense": ("dim", "metric")}
DEFAULT_BACKEND = {"binary": "numba", "dense": "dense"}
#: Per backend: further ``config()`` fields it reads back when its manifest has them.
BACKEND_CONFIG_FIELDS = {
    "mih": ("substrings",),
    "sharded": ("shard_size", "threads", "max_deleted"),
    "milvus": ("uri", "collection"),
}


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


# ---------------------------------------------------------------------------------------------- save
@contextmanager
def _writing(path: Path) -> Iterator[None]:
    """Name ``path`` in an OSError raised without a file name (a ``write`` on a full disk)."""
    try:
        yield
    except OSError as e:
        if e.filename is None:
            e.filename = str(path)
        raise


def _write_folder(
    tmp: Path,
    index: Index,
    model_id: str,
    model_name: str | None,
    rows: Sequence[tuple[Any, ...]],
    created: str | None,
    collection: Mapping[str, Any],
    attachments: Mapping[str, Path],
    fields: Mapping[str, Any],
) -> None:
    codes, ids = state_arrays(index.state())
    for name, arr in ((CODES, codes), (IDS, ids)):
        with _writing(tmp / name), open(tmp / name, "wb") as f:
            np.save(f, np.ascontiguousarray(arr), allow_pickle=False)
            f.flush()
            os.fsync(f.fileno())
    with _writing(tmp / ITEMS):
        _write_items(tmp / ITEMS, rows)
        _fsync_file(tmp / ITEMS)
    for name, src in sorted(attachments.items()):
        with _writing(tmp / name):
            shutil.copyfile(src, tmp / name)
            _fsync_file(tmp / name)
    files = (*DATA_FILES, *sorted(attachments))
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
        **dict(fields),
        **({"attachments": sorted(attachments)} if attachments else {}),
        "created": created or _now(),
        "updated": _now(),
        "generation": uuid.uuid4().hex,
        "files": {name: {"sha256": _sha256(tmp / name), "bytes": (tmp / name).stat().st_size} for name in files},
    }
    with _writing(tmp / MANIFEST), open(tmp / MANIFEST, "w") as f:
        json.dump(manifest, f, indent=2, sort_keys=True, default=json_default)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())


def _atomic_replace(folder: Path, fill: Callable[[Path], None]) -> Path:
    """Build the new folder with ``fill(tmp)`` beside ``folder``, then swap it in (hold the write lock).
    Writing errors (a full disk, no permission) become IndexError_ naming the file, with nothing changed."""
    if folder.exists():
        if not folder.is_dir():
            raise IndexError_(f"{folder}: exists and is not an index folder")
        if any(folder.iterdir()) and not (folder / MANIFEST).is_file():
            raise IndexError_(f"{folder}: exists, is not empty and holds no {MANIFEST}; refusing to replace it")
    tmp = None
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp-", dir=folder.parent))
        fill(tmp)
        set_modes(tmp, folder if folder.is_dir() else None)
        _fsync_dir(tmp)
        swap_in(tmp, folder)
    except BaseException as e:
        if tmp is not None and tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, (OSError, sqlite3.Error)):
            what = os_reason(e) if isinstance(e, OSError) else f"{folder / ITEMS}: {e}"
            raise IndexError_(f"{folder}: the index could not be saved ({what}); nothing was changed") from e
        raise
    return folder


def save_index(
    index: Index,
    folder: str | Path,
    model_id: str,
    items: Sequence[Mapping[str, Any]] | None = None,
    model_name: str | None = None,
    collection: Mapping[str, Any] | None = None,
    attachments: Mapping[str, str | Path] | None = None,
    fields: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``index`` and its ``items`` to ``folder`` atomically (replacing an index already there), under
    the folder's write lock (:func:`~sketchsearch.index.folder.write_lock`: taken here unless this thread
    holds it; hold it around load, change and save to change an index safely). A symlink ``folder`` is
    followed: its target is written. Returns the folder written.

    items: dicts with ``id`` (must be an id of the index), optional ``label``, ``source``, ``meta`` (a
    dict of JSON-serialisable fields), ``thumbnail`` (PNG bytes) and any JSON-serialisable extra fields.
    Items are optional per id. The manifest records the index's backend name, metric and config (see the
    module docstring) and ``collection``'s fields (:func:`collection_fields`); None keeps those of the
    index already in ``folder``, if any. ``attachments``: further files (file name in the folder -> the path to
    copy it from; a name of the folder's own files is refused), checksummed and verified on load like the
    data files. ``fields``: extra manifest fields, among :data:`EXTRA_FIELDS`.
    """
    _index_kind(index)
    atts = _check_attachments(attachments or {})
    extra = dict(fields or {})
    bad = sorted(set(extra) - set(EXTRA_FIELDS))
    if bad:
        raise IndexArgumentError(f"unknown field(s) {bad}; valid: {', '.join(EXTRA_FIELDS)}", "fields")
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
        unknown_fields = sorted(set(collection) - set(COLLECTION_FIELDS))
        if unknown_fields:
            raise IndexArgumentError(
                f"unknown field(s) {unknown_fields}; valid: {', '.join(COLLECTION_FIELDS)}", "collection"
            )
    with write_lock(folder) as real:
        old: dict[str, Any] = {}
        if (real / MANIFEST).is_file():
            try:
                old = json.loads((real / MANIFEST).read_text())
            except (OSError, ValueError):
                old = {}
        created = old.get("created") if isinstance(old, dict) else None
        if collection is None:
            collection = {k: old[k] for k in COLLECTION_FIELDS if isinstance(old, dict) and k in old}
        coll = collection
        return _atomic_replace(
            real, lambda tmp: _write_folder(tmp, index, model_id, model_name, rows, created, coll, atts, extra)
        )


def _check_attachments(attachments: Mapping[str, str | Path]) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for name, src in attachments.items():
        if not isinstance(name, str) or not name or Path(name).name != name or name.startswith("."):
            raise IndexArgumentError(f"expected a plain file name, got {name!r}", "attachments")
        if name in (*DATA_FILES, MANIFEST):
            raise IndexArgumentError(f"{name!r} is one of the index's own files; choose another name", "attachments")
        if not Path(src).is_file():
            raise IndexArgumentError(f"{src}: no such file", f"attachments[{name!r}]")
        out[name] = Path(src)
    return out


def attachment_names(manifest: Mapping[str, Any]) -> list[str]:
    """The attachments a manifest lists (plain file names; anything else is refused as corrupt)."""
    names = manifest.get("attachments", [])
    if not isinstance(names, list) or not all(
        isinstance(n, str) and n and Path(n).name == n and n not in (*DATA_FILES, MANIFEST) for n in names
    ):
        raise IndexError_(f"field 'attachments' is not a list of file names: {names!r}")
    return names


# ---------------------------------------------------------------------------------------------- load
def read_manifest(folder: str | Path) -> dict[str, Any]:
    """The folder's manifest, checked for format, version and the fields a load needs; raises IndexError_
    naming the manifest and what is wrong."""
    folder = Path(folder)
    check_path(folder)
    deadline = time.monotonic() + READ_RETRY_S
    while not folder.is_dir() and _backups(folder) and time.monotonic() < deadline:
        time.sleep(0.01)  # a two-rename swap (systems without the atomic exchange) is putting a folder in
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
    kind = manifest["kind"]
    if kind not in CONFIG_FIELDS:
        raise IndexError_(f"{path}: field 'kind' is {kind!r}; valid: {', '.join(CONFIG_FIELDS)}")
    for key in CONFIG_FIELDS[kind]:
        if key not in manifest:
            raise IndexError_(
                f"{path}: field {key!r} is missing (a {kind} index's manifest has {' and '.join(CONFIG_FIELDS[kind])})"
            )
    if not isinstance(manifest["files"], dict) or not all(isinstance(v, dict) for v in manifest["files"].values()):
        raise IndexError_(f"{path}: field 'files' is not a table of file name -> sha256 and bytes")
    return manifest


def _check_files(folder: Path, manifest: Mapping[str, Any], verify: bool) -> None:
    files = manifest["files"]
    try:
        attached = attachment_names(manifest)
    except IndexError_ as e:
        raise IndexError_(f"{folder / MANIFEST}: {e}") from None
    for name in (*DATA_FILES, *attached):
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


def _generation(folder: Path) -> tuple[int, int, bytes] | None:
    """What identifies the generation at ``folder``: its inode and its manifest's bytes (which hold a
    random "generation"); None while there is no folder (or manifest) there."""
    try:
        st = folder.stat()
        return st.st_dev, st.st_ino, (folder / MANIFEST).read_bytes()
    except OSError:
        return None


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

    A writer may swap a new generation in while this reads: the load is retried when the folder changed
    under it (so a swap is never reported as corruption), for up to :data:`READ_RETRY_S` seconds.
    """
    folder = Path(folder)
    deadline = time.monotonic() + READ_RETRY_S
    while True:
        before = _generation(folder)
        try:
            index, store = _load_once(folder, expected_model_id, mmap, verify, backend)
        except (IndexError_, OSError):
            after = _generation(folder)
            if time.monotonic() < deadline and (after != before or (after is None and _backups(folder))):
                time.sleep(0.01)  # a writer swapped a generation in meanwhile (or is swapping one in)
                continue
            raise
        if _generation(folder) == before:
            return index, store
        store.close()  # read across a swap: the files may be of two generations
        if time.monotonic() >= deadline:
            raise IndexError_(f"{folder}: the index kept changing while it was read; try again")


def _load_once(
    folder: Path, expected_model_id: str | None, mmap: bool, verify: bool, backend: str | None
) -> tuple[Index, ItemStore]:
    manifest = read_manifest(folder)
    _check_model(manifest, expected_model_id, folder)
    _check_files(folder, manifest, verify)
    codes = _load_array(folder / CODES, mmap)
    ids = _load_array(folder / IDS, False)
    count = manifest["count"]
    kind = manifest["kind"]
    name = backend or manifest.get("backend") or DEFAULT_BACKEND[kind]
    try:
        fields = CONFIG_FIELDS[kind] + BACKEND_CONFIG_FIELDS.get(ALIASES.get(name, name), ())
        index = create_index(name, **{key: manifest[key] for key in fields if key in manifest})
    except (TypeError, ValueError) as e:  # an unknown backend, one of the other kind, a bad nbits / dim
        where = f"backend {name!r}" if backend else f"{folder / MANIFEST}: field 'backend' is {name!r}"
        valid = ", ".join(n for n in list_indexes() if _kind_of(n) == kind)
        why = "no such backend" if ALIASES.get(name, name) not in list_indexes() else str(e)
        raise IndexError_(f"{where}: cannot make a {kind} index ({why}); valid {kind} backends: {valid}") from None
    try:
        if codes.shape[0] != count or ids.shape != (count,) or ids.dtype != np.int64:
            raise IndexArgumentError(
                f"{count} codes and ids expected, found {codes.shape} and {ids.shape} {ids.dtype}", "count"
            )
        index.load_state({"codes": codes, "ids": ids})
    except IndexArgumentError as e:
        raise IndexError_(f"{folder}: stored arrays do not match the manifest ({e})") from None
    return index, ItemStore(folder / ITEMS)


def _kind_of(backend: str) -> str:
    """ "dense" for the dense backend, "binary" for the Hamming ones."""
    return "dense" if backend == "dense" else "binary"


def _check_model(manifest: Mapping[str, Any], expected: str | None, folder: Path) -> None:
    if expected is not None and manifest.get("model_id") != expected:
        raise IndexError_(
            f"{folder}: made by model {manifest.get('model_id')!r}, but the query model is {expected!r}; "
            "codes from different models are not comparable (re-index with the query's model)"
        )
