"""Milvus-backed Hamming index: the exact k-NN of the scan, searched in a Milvus collection.

Backend ``"milvus"``: ``create_index("milvus", nbits=64, uri=None, collection=None)``. The rows go into a Milvus
collection (``id`` INT64 primary key, ``code`` BINARY_VECTOR of ``nbits``, index ``BIN_FLAT``, metric
``HAMMING``, consistency ``Strong``), and searches run there. Results are exactly those of the ``"numba"``
scan: the same ids and distances, ties broken by id ascending, missing hits as id -1 with ``MISSING_DISTANCE``.

**Where.** ``uri=None`` (the default) is an embedded milvus-lite private to the process: one server per
process on a database file in a temporary folder, removed at exit; each index is a collection of its own
there. ``uri="path/to/milvus.db"`` is a milvus-lite database file (one process at a time: milvus-lite locks it;
the file name: letters, digits, ``.``, ``-``, ``_``, at most 36 characters). ``uri="http://host:19530"`` (or
``https://``) is a Milvus server or cluster; a token, when the server wants one, is read from
``$SKETCHSEARCH_MILVUS_TOKEN`` at connection time and never recorded. ``collection``: the collection's name
(default: ``sketchsearch_`` and a random hex id). With a ``uri``, ``config()`` records both, so a saved index
reloads into the same collection; without one, ``uri`` None and the collection only when one was given (an
index made from that config gets a private collection). One index object per collection: loading a saved
index *replaces* its collection's contents, so two processes must not load the same folder against the same
server and collection at once (nor one process twice a folder whose collection is named).

**Exact ties.** Milvus's BIN_FLAT is an exact scan, but it orders hits at equal distance as it likes and
cuts the list at ``limit``: rows tied with the k-th hit may be left out in favour of ones with larger ids.
So a query asks for more than ``k`` hits (``2k + 16``), sorts them by (distance, id), and keeps the first
``k`` only when it can prove that none is missing: when the last hit returned is *farther* than the k-th,
every row at the k-th distance was returned (any row at that distance ranks before any row farther away).
Otherwise it asks again with 4x the limit, up to Milvus's ``topk`` limit (:data:`MAX_TOPK`, 16384). A query
whose tie at the k-th distance runs past even that (thousands of equal codes, or ``k`` near the limit on a
large collection) is answered by the exact local scan over the index's own copy of the codes (below) and
counted in :attr:`MilvusHammingIndex.local_fallbacks`. ``k`` beyond :data:`MAX_TOPK` on a collection larger
than that is refused (Milvus returns at most ``MAX_TOPK`` hits a query).

**Persistence.** The index keeps its codes and ids locally too (an :class:`~.base.IdStore`, as every backend,
memory-mapped after a load), so the index folder is self-contained as for every backend (``codes.npy``,
``ids.npy``; ``uri`` and ``collection`` in the manifest) and :meth:`state` costs nothing. :meth:`load_state`
(what a load does) drops the collection and inserts every row again (about 1.4 s for 10^5 codes into
milvus-lite on one shared core); add and remove change the collection and the local copy together. An
index used in a forked child of the process that filled it (embedded milvus-lite only) fills the child's own
server first. An embedded index's private collection (no ``collection`` given) is dropped when the index is
garbage-collected; a server's is left for a later load. Range search is not offered.

**Errors.** Bad arguments raise :class:`~sketchsearch.errors.IndexArgumentError` naming the field; a Milvus
failure (server unreachable, pymilvus or milvus-lite missing) raises :class:`~sketchsearch.errors.IndexError_`
with one line naming the uri and what failed. After a failed add, remove or search the collection is rebuilt
from the local copy on the next use, so the two never disagree for long.

**Versions.** milvus-lite 2.5.1 is the last release that takes binary vectors (the 3.x releases, a rewrite
in Python, have none); it needs setuptools < 82 (it imports ``pkg_resources``). The ``milvus`` extra of
pyproject.toml pins them.
"""

from __future__ import annotations

import atexit
import logging
import os
import re
import shutil
import tempfile
import threading
import uuid
import warnings
import weakref
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np
from numpy.typing import ArrayLike

from sketchsearch.errors import IndexArgumentError, IndexError_

from .base import INDEXES, check_k, state_arrays
from .hamming import MISSING_DISTANCE, HammingIndex, NumbaHammingIndex

__all__ = ["MAX_TOPK", "TOKEN_ENV", "MilvusHammingIndex", "check_uri"]

#: Most hits Milvus returns for one query (its ``topk`` limit).
MAX_TOPK = 16384
#: Environment variable read for the server's token (``user:password`` or an API key); never recorded.
TOKEN_ENV = "SKETCHSEARCH_MILVUS_TOKEN"
#: Seconds to wait for a server to answer when connecting.
CONNECT_TIMEOUT_S = 10.0
#: Hits one search request may bring back (queries x limit), and bytes of codes one insert may send.
MAX_HITS_PER_REQUEST = 1 << 20
MAX_INSERT_BYTES = 16 << 20
#: The field names of the collection.
ID_FIELD, CODE_FIELD = "id", "code"

_COLLECTION_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,254}$")
_LITE_FILE_NAME = re.compile(r"^[A-Za-z0-9.\-_]{1,36}$")


# ---------------------------------------------------------------------------------------------- arguments
def check_uri(uri: object) -> str | None:
    """None, an absolute milvus-lite ``.db`` path, or an ``http(s)://host[:port]`` address."""
    if uri is None:
        return None
    valid = "a Milvus server address (http://host:19530 or https://...) or a milvus-lite file ending in .db"
    if not isinstance(uri, (str, Path)) or not str(uri).strip():
        raise IndexArgumentError(f"expected {valid}, got {uri!r}", "uri")
    text = str(uri).strip()
    if text.endswith(".db"):
        path = Path(text).expanduser().absolute()
        if not _LITE_FILE_NAME.match(path.name):
            raise IndexArgumentError(
                "milvus-lite file names are letters, digits, '.', '-' and '_', at most 36 characters; "
                f"got {path.name!r}",
                "uri",
            )
        if not path.parent.is_dir():
            raise IndexArgumentError(f"the folder of the milvus-lite file does not exist: {path.parent}", "uri")
        return str(path)
    parsed = urlparse(text)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise IndexArgumentError(f"expected {valid}, got {text!r}", "uri")
    try:
        _ = parsed.port  # raises on a port that is not a number
    except ValueError:
        raise IndexArgumentError(f"expected {valid}, got {text!r} (bad port)", "uri") from None
    return text


def _check_collection(name: object) -> str | None:
    if name is None:
        return None
    if not isinstance(name, str) or not _COLLECTION_NAME.match(name):
        raise IndexArgumentError(
            f"a Milvus collection name is a letter or '_' then letters, digits or '_' (255 at most), got {name!r}",
            "collection",
        )
    return name


# ---------------------------------------------------------------------------------------------- connections
_LOCK = threading.Lock()
_CLIENTS: dict[tuple[int, str], Any] = {}
_EMBEDDED: dict[int, str] = {}  # pid -> its private milvus-lite file


def _embedded_file() -> str:
    """This process's private milvus-lite database file (in a temporary folder removed at exit)."""
    pid = os.getpid()
    with _LOCK:
        path = _EMBEDDED.get(pid)
        if path is None:
            folder = tempfile.mkdtemp(prefix="sketchsearch-milvus-")
            path = _EMBEDDED[pid] = os.path.join(folder, "lite.db")
            atexit.register(_stop_embedded, path)
        return path


def _stop_embedded(path: str) -> None:
    if _EMBEDDED.get(os.getpid()) != path:
        return  # a forked child: the folder is its parent's
    with suppress(Exception):  # exiting: the server stops anyway when its lock file is released
        from milvus_lite.server_manager import server_manager_instance

        server_manager_instance.release_server(path)
    shutil.rmtree(os.path.dirname(path), ignore_errors=True)


def _drop_embedded(pid: int, collection: str) -> None:
    """Drop a garbage-collected index's collection from this process's embedded milvus-lite."""
    path = _EMBEDDED.get(pid)
    client = _CLIENTS.get((pid, path)) if path is not None and os.getpid() == pid else None
    if client is not None:
        with suppress(Exception):  # best effort: the server may be stopping
            client.drop_collection(collection)


def _where(uri: str | None) -> str:
    return "embedded milvus-lite" if uri is None else f"milvus at {uri}"


_INSIDE = threading.local()


class _QuietInside(logging.Filter):
    """Drops pymilvus's error logs (a traceback each) raised inside :func:`_milvus`, which reports them itself."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not getattr(_INSIDE, "on", False)


logging.getLogger("pymilvus.decorators").addFilter(_QuietInside())


@contextmanager
def _milvus(uri: str | None, what: str) -> Iterator[None]:
    """Turn a failure of pymilvus / Milvus (a MilvusException, a gRPC or OS error) into one IndexError_ line."""
    outer = getattr(_INSIDE, "on", False)
    _INSIDE.on = True
    try:
        yield
    except (IndexError_, KeyboardInterrupt):
        raise
    except Exception as e:  # pymilvus raises its own errors, gRPC's and OSError
        reason = getattr(e, "message", None) or str(e) or type(e).__name__
        reason = " ".join(str(reason).split())
        raise IndexError_(f"{_where(uri)}: could not {what} ({reason})") from e
    finally:
        _INSIDE.on = outer


def _check_lite_version() -> None:
    """Refuse milvus-lite 3.x (no binary vectors) with the fix, rather than Milvus's error at the first insert."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        found = version("milvus-lite")
    except PackageNotFoundError:
        return  # pymilvus says so when it connects
    if int(found.split(".")[0]) >= 3:
        raise IndexError_(
            f"embedded milvus: milvus-lite {found} has no binary vectors (2.5.1 is the last release with them): "
            "pip install 'sketchsearch[milvus]'"
        )


def _client(uri: str | None) -> Any:
    """A MilvusClient for ``uri`` (None: this process's embedded milvus-lite), one per process and uri."""
    target = _embedded_file() if uri is None else uri
    key = (os.getpid(), target)
    with _LOCK:
        client = _CLIENTS.get(key)
    if client is not None:
        return client
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # milvus-lite 2.5 imports the deprecated pkg_resources
            from pymilvus import MilvusClient
    except ImportError:
        raise IndexError_(
            "the milvus backend needs pymilvus and milvus-lite: pip install 'sketchsearch[milvus]'"
        ) from None
    if uri is None or uri.endswith(".db"):
        _check_lite_version()
    token = os.environ.get(TOKEN_ENV, "") if uri is not None else ""
    with _milvus(uri, "connect"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        client = MilvusClient(target, token=token, timeout=CONNECT_TIMEOUT_S)
    with _LOCK:
        return _CLIENTS.setdefault(key, client)


# ---------------------------------------------------------------------------------------------- the index
@INDEXES.register("milvus")
class MilvusHammingIndex(HammingIndex):
    """Exact Hamming k-NN in a Milvus collection (BIN_FLAT, HAMMING), with a local copy of the rows (see the
    module docstring). ``uri``: None (embedded milvus-lite), a milvus-lite ``.db`` file or ``http(s)://host:port``;
    ``collection``: the collection's name (default: a new random one)."""

    name = "milvus"

    def __init__(self, nbits: int, uri: str | None = None, collection: str | None = None) -> None:
        super().__init__(nbits)
        self.uri = check_uri(uri)
        self._named = _check_collection(collection)
        self.collection = self._named or f"sketchsearch_{uuid.uuid4().hex}"
        #: queries answered by the local scan because their tie at the k-th distance ran past MAX_TOPK hits
        self.local_fallbacks = 0
        self._synced: int | None = None  # the process whose collection holds the local rows (None: none yet)
        self._lock = threading.RLock()
        self._finalizer: weakref.finalize | None = None  # drops an embedded collection with the index

    def __repr__(self) -> str:
        where = _where(self.uri)
        return f"{type(self).__name__}(nbits={self.nbits}, {where}, collection={self.collection!r}, n={len(self)})"

    # ------------------------------------------------------------------ persistence
    def config(self) -> dict[str, Any]:
        """``{"nbits", "uri", "collection"}``; without a uri (embedded), ``uri`` None and no collection (a new
        index gets a private one)."""
        if self.uri is None:
            return {"nbits": self.nbits, "uri": None, "collection": self._named}
        return {"nbits": self.nbits, "uri": self.uri, "collection": self.collection}

    def load_state(self, state: Mapping[str, np.ndarray]) -> None:
        """Adopt a :meth:`state` (e.g. memory-mapped) and fill the collection with it (dropped first)."""
        codes, ids = state_arrays(state)
        with self._lock:
            self._store.adopt(self._valid_codes(codes, "codes"), ids)
            self._synced = None
            self._ensure()

    # ------------------------------------------------------------------ the collection
    def _sync_key(self) -> int:
        """Who must (re)fill the collection: the process for embedded milvus-lite, anyone (0) for a server."""
        return os.getpid() if self.uri is None else 0

    def _ensure(self) -> Any:
        """The client, after (re)making the collection from the local rows when it does not hold them."""
        client = _client(self.uri)
        if self._synced == self._sync_key():
            return client
        from pymilvus import DataType

        with _milvus(self.uri, f"create collection {self.collection!r}"):
            if client.has_collection(self.collection):
                client.drop_collection(self.collection)
            schema = client.create_schema(auto_id=False, enable_dynamic_field=False)
            schema.add_field(ID_FIELD, DataType.INT64, is_primary=True)
            schema.add_field(CODE_FIELD, DataType.BINARY_VECTOR, dim=self.nbits)
            params = client.prepare_index_params()
            params.add_index(field_name=CODE_FIELD, index_type="BIN_FLAT", metric_type="HAMMING")
            client.create_collection(self.collection, schema=schema, index_params=params, consistency_level="Strong")
        if self.uri is None and self._named is None and self._finalizer is None:  # a private collection
            self._finalizer = weakref.finalize(self, _drop_embedded, os.getpid(), self.collection)
            self._finalizer.atexit = False  # at exit the whole server goes
        self._insert(client, self._store.rows, self._store.ids)
        self._synced = self._sync_key()
        return client

    def _insert(self, client: Any, codes: np.ndarray, ids: np.ndarray) -> None:
        step = max(1, MAX_INSERT_BYTES // (self.nbytes + 8))
        with _milvus(self.uri, f"insert into collection {self.collection!r}"):
            for s in range(0, ids.shape[0], step):
                part_codes, part_ids = np.ascontiguousarray(codes[s : s + step]), ids[s : s + step].tolist()
                rows = [{ID_FIELD: i, CODE_FIELD: c.tobytes()} for i, c in zip(part_ids, part_codes)]
                client.insert(self.collection, rows)

    # ------------------------------------------------------------------ changes
    def add(self, codes: np.ndarray, ids: ArrayLike | None = None) -> np.ndarray:
        """Add codes uint8 (n, nbits // 8) with ids (default: after the largest id); returns the ids.

        An id already in the index, or repeated, is refused and nothing is added (locally or in Milvus).
        """
        codes = self._valid_codes(codes, "codes")
        with self._lock:
            client = self._ensure()
            ids = self._store.add(codes, ids)
            try:
                self._insert(client, codes, ids)
            except BaseException:
                self._store.remove(ids)
                self._synced = None  # some batches may be in: rebuild the collection on the next use
                raise
            return ids

    def remove(self, ids: ArrayLike) -> int:
        """Remove the given ids (unknown ids are ignored); returns how many were removed."""
        arr = np.asarray(ids)
        if arr.size and not np.issubdtype(arr.dtype, np.integer):
            raise IndexArgumentError(f"expected integer ids, got dtype {arr.dtype}", "ids")
        with self._lock:
            flat = arr.reshape(-1).astype(np.int64)
            present = np.unique(flat[self._store.positions(flat) >= 0])
            if not present.size:
                return 0
            client = self._ensure()
            try:
                with _milvus(self.uri, f"delete from collection {self.collection!r}"):
                    for s in range(0, present.size, 10_000):
                        client.delete(self.collection, ids=present[s : s + 10_000].tolist())
            except BaseException:
                self._synced = None
                raise
            return self._store.remove(present)

    # ------------------------------------------------------------------ search
    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """k nearest codes to queries uint8 (nq, nbits // 8): (distances int32 (nq, k), ids int64 (nq, k)).

        Ties by id ascending; missing hits (k > len) are id -1 with distance ``MISSING_DISTANCE``.
        """
        k = check_k(k)
        if min(k, len(self)) > MAX_TOPK:
            raise IndexArgumentError(
                f"the milvus backend returns at most {MAX_TOPK} hits a query (Milvus's topk limit) from "
                f"{len(self)} codes, got k={k}",
                "k",
            )
        with self._lock:
            try:
                return super().search(queries, k)
            except IndexError_ as e:
                if not isinstance(e, IndexArgumentError):
                    self._synced = None  # the collection may be gone or changed: rebuild it on the next use
                raise

    def _search(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        n = len(self)
        kk = min(k, n)
        client = self._ensure()
        dist = np.full((q.shape[0], k), MISSING_DISTANCE, np.int32)
        pos = np.full((q.shape[0], k), -1, np.int64)
        todo = np.arange(q.shape[0])
        limit = min(n, MAX_TOPK, self._first_limit(kk))
        while todo.size:
            retry = []
            for j, (hit_d, hit_ids) in zip(todo, self._milvus_search(client, q[todo], limit)):
                if hit_ids.shape[0] < kk:
                    self._synced = None
                    raise IndexError_(
                        f"{_where(self.uri)}: collection {self.collection!r} returned {hit_ids.shape[0]} hits of "
                        f"{kk} (it changed outside this index?); it is rebuilt from the index's rows on the next use"
                    )
                order = np.lexsort((hit_ids, hit_d))
                hit_d, hit_ids = hit_d[order], hit_ids[order]
                # complete: every row was returned, or the last hit lies beyond the k-th (so no row tied with
                # the k-th was cut off)
                if hit_ids.shape[0] >= n or hit_d[-1] > hit_d[kk - 1]:
                    dist[j, :kk], pos[j, :kk] = hit_d[:kk], self._store.positions(hit_ids[:kk])
                else:
                    retry.append(j)
            todo = np.asarray(retry, np.int64)
            if todo.size and limit >= min(n, MAX_TOPK):
                self.local_fallbacks += int(todo.size)
                local = NumbaHammingIndex(self.nbits)
                local._store.adopt(self._store.rows, self._store.ids)
                d_local, i_local = local.search(q[todo], k)
                dist[todo], pos[todo] = d_local, self._store.positions(i_local)
                break
            limit = min(n, MAX_TOPK, 4 * limit)
        if (pos[:, :kk] < 0).any():
            self._synced = None
            raise IndexError_(
                f"{_where(self.uri)}: collection {self.collection!r} returned ids this index does not hold (it "
                "changed outside this index?); it is rebuilt from the index's rows on the next use"
            )
        return dist, pos

    def _first_limit(self, k: int) -> int:
        """Hits the first request for the top ``k`` asks for (the rest proves the tie at the k-th complete)."""
        return 2 * k + 16

    def _milvus_search(self, client: Any, q: np.ndarray, limit: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Per query, Milvus's hits (distances int32, ids int64) in its own order, ``limit`` at most."""
        step = max(1, min(MAX_TOPK, MAX_HITS_PER_REQUEST // limit))
        for s in range(0, q.shape[0], step):
            with _milvus(self.uri, f"search collection {self.collection!r}"):
                found = client.search(
                    self.collection,
                    data=[row.tobytes() for row in q[s : s + step]],
                    anns_field=CODE_FIELD,
                    limit=limit,
                    search_params={"metric_type": "HAMMING"},
                    output_fields=[],
                )
                parts = [(np.asarray(h.distances, np.int32), np.asarray(h.ids, np.int64)) for h in found]
            yield from parts

    def _range(self, q: np.ndarray, radius: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        raise IndexArgumentError("range search is not offered by the milvus backend; search with k instead", "radius")
