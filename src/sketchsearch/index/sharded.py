"""Sharded Hamming index: the numba scan over blocks of rows in parallel threads, with tombstone deletes.

Backend ``"sharded"``: ``create_index("sharded", nbits=64, shard_size=2**20, threads=None, max_deleted=0.25)``.
Results are exactly those of the ``"numba"`` scan on the same live rows: the same ids and distances,
ties broken by id ascending, missing hits as id -1 with ``MISSING_DISTANCE``.

**Shards.** The rows (ascending id order, as in every index) are cut into shards: contiguous blocks of at
most ``shard_size`` rows, so that every id of a shard is smaller than every id of the next one. A search
gives each of ``threads`` threads a run of consecutive shards (about equal rows); a thread scans its shards
one after the other with the ``"numba"`` backend's compiled kernel (``_kernels.knn_scan_live``, which
releases the GIL) and merges each shard's top-k into its own; the threads' lists are merged at the end.
A merge is a stable sort on the distance of lists that are each in (distance, id) order and lie in id
order, so it keeps ties by id and is exact. ``threads=None`` (the default) uses
``$SKETCHSEARCH_INDEX_THREADS`` if set, else one thread per shard up to the CPUs this process may use; a
single run is scanned in the calling thread.

**Pruning across shards.** Each shard's scan would otherwise find its own top-k from scratch (about 1.8x the
scan's time over 10 shards on one thread). So the scans share, per query, a distance within which ``k``
rows are already known (``knn_scan_live``'s ``bound``): a scan skips rows farther than it, lowers it as its
own buffer fills, and a thread lowers it again after each merge. Rows *at* the bound are still taken, so
the results stay exact whatever the threads' timing; the threads only prune more or less.

**Add** writes only into the last shard and new ones: the last shard gets its own buffer (growing by
doubling up to ``shard_size`` rows, so the first add after a load copies that one shard), further rows
open new shards; the arrays of earlier shards, memory-mapped ones included, are neither copied nor
written. An add whose ids fall before the largest stored id rebuilds the shards from the first one those
ids reach (rare: the Retriever and the CLI allocate ids after the largest).

**Remove** marks rows as deleted (tombstones: one bool per row of a shard, allocated on the shard's first
delete); searches skip them (``knn_scan_live``), so results are exact over the live rows and filled from
live rows only. A shard whose tombstones exceed ``max_deleted`` of its rows is compacted at once (rewritten
without them: that shard only); :meth:`ShardedHammingIndex.compact` drops every tombstone and cuts the rows
into full shards again. ``max_deleted=0`` compacts at every remove, ``1`` only on save and ``compact()``.

**Persistence** uses the store unchanged (``codes.npy``, ``ids.npy``; ``shard_size``, ``threads`` and
``max_deleted`` in the manifest). :meth:`state` is the live rows as one array: straight after a load or a
compaction the shards are views over row ranges of that one array and nothing is copied; after an add or
remove, :meth:`state` compacts first (one copy of the live rows), so **every save is compacted** and no
tombstones are written. This is the simplest design that meets the goals: the store rewrites the whole
folder atomically at every save (O(index size)), so files per shard or a tombstone file would make no save
cheaper, only the format bigger. On load the shards are views over row ranges of the memory-mapped
``codes.npy``: a collection larger than RAM is searched from the page cache, and adds and removes keep
those pages unread except the last shard's. What does take memory: the ids (loaded, 8 bytes a row, as for
every backend), codes whose width is not a multiple of 64 bits (padded to 64-bit words per shard for the
kernel), and a save after a change (the compacted live codes, once).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import numpy as np
from numpy.typing import ArrayLike

from sketchsearch.errors import IndexArgumentError

from .base import INDEXES, IdStore, _check_ids, _sort_new_ids, check_k, readonly_view, state_arrays
from .hamming import MISSING_DISTANCE, HammingIndex, _words

__all__ = [
    "DEFAULT_MAX_DELETED",
    "DEFAULT_SHARD_SIZE",
    "THREADS_ENV",
    "ShardedHammingIndex",
    "usable_cpus",
]

#: Rows per shard by default (8 MB of 64-bit codes: a few ms of scan per query block).
DEFAULT_SHARD_SIZE = 1 << 20
#: A shard is compacted when more than this fraction of its rows are tombstones.
DEFAULT_MAX_DELETED = 0.25
#: Environment variable giving the search threads of an index made with ``threads=None``.
THREADS_ENV = "SKETCHSEARCH_INDEX_THREADS"

_NO_DEAD = np.zeros(0, np.bool_)
_T = TypeVar("_T")
_R = TypeVar("_R")


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity where the system tells it, else ``os.cpu_count()``)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def _check_int(value: object, field: str, low: int, allow_none: bool = False) -> int | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        what = "an integer" + (" or None" if allow_none else "")
        raise IndexArgumentError(f"{field} must be {what} >= {low}, got {value!r}", field)
    return int(value)


def _check_fraction(value: object, field: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) or not 0 <= value <= 1:
        raise IndexArgumentError(f"{field} must be a number between 0 and 1, got {value!r}", field)
    return float(value)


# ---------------------------------------------------------------------------------------------- threads
_POOLS: dict[tuple[int, int], ThreadPoolExecutor] = {}
_POOLS_LOCK = threading.Lock()


def _pool(threads: int) -> ThreadPoolExecutor:
    """A process-wide pool of ``threads`` workers (one per size, made again in a forked child)."""
    key = (os.getpid(), threads)
    with _POOLS_LOCK:
        pool = _POOLS.get(key)
        if pool is None:
            pool = _POOLS[key] = ThreadPoolExecutor(threads, thread_name_prefix="sketchsearch-shard")
        return pool


def _map(fn: Callable[[_T], _R], items: Sequence[_T], threads: int) -> list[_R]:
    """``[fn(x) for x in items]``, on ``threads`` threads when that is more than one and there are several items."""
    if threads <= 1 or len(items) <= 1:
        return [fn(x) for x in items]
    return list(_pool(min(threads, len(items))).map(fn, items))


def _merge(found: list[tuple[np.ndarray, np.ndarray]], k: int) -> tuple[np.ndarray, np.ndarray]:
    """The first k of lists of hits ``(distances (nq, k), ids (nq, k))``, each in (distance, id) order, given
    in the order of their ids (every id of a list below every id of the next): a stable sort by distance of
    the lists side by side is the (distance, id) order of their union."""
    if len(found) == 1:
        return found[0]
    dist = np.concatenate([f[0] for f in found], axis=1)
    ids = np.concatenate([f[1] for f in found], axis=1)
    order = np.argsort(dist, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(dist, order, axis=1), np.take_along_axis(ids, order, axis=1)


# ---------------------------------------------------------------------------------------------- shards
class _Shard:
    """One block of rows: codes and ids in buffers (the first ``n`` rows used) and the tombstones.

    A shard made from arrays (a load, a compaction) uses them as given (views, memory maps) with no room
    to grow; :meth:`append` moves the rows to a buffer of its own first. ``dead`` is None until a row of
    the shard is removed.
    """

    __slots__ = ("_codes", "_ids", "_words", "dead", "n", "ndead")

    def __init__(self, codes: np.ndarray, ids: np.ndarray) -> None:
        self._codes, self._ids = codes, ids
        self.n = int(ids.shape[0])
        self.dead: np.ndarray | None = None
        self.ndead = 0
        self._words: np.ndarray | None = None

    @property
    def codes(self) -> np.ndarray:
        return self._codes[: self.n]

    @property
    def ids(self) -> np.ndarray:
        return self._ids[: self.n]

    @property
    def live(self) -> int:
        return self.n - self.ndead

    @property
    def last_id(self) -> int:
        return int(self._ids[self.n - 1])

    def live_mask(self) -> np.ndarray | None:
        """bool (n,) of the rows not removed, None when every row is live."""
        return None if self.dead is None else ~self.dead[: self.n]

    def live_rows(self) -> tuple[np.ndarray, np.ndarray]:
        """(codes, ids) of the live rows: the arrays themselves when none is removed, else copies."""
        keep = self.live_mask()
        return (self.codes, self.ids) if keep is None else (self.codes[keep], self.ids[keep])

    def dead_mask(self) -> np.ndarray:
        """The kernel's tombstones: bool (n,), or empty when none."""
        return _NO_DEAD if self.dead is None else self.dead[: self.n]

    def words(self, nwords: int) -> np.ndarray:
        """The codes as uint64 (n, nwords) for the kernel: a view for whole 64-bit words, else a padded copy."""
        if self._words is None:
            self._words = _words(self.codes, nwords)
        return self._words

    def append(self, codes: np.ndarray, ids: np.ndarray, shard_size: int) -> None:
        """Add rows (ids above the shard's) after the shard's rows, growing its buffer up to ``shard_size``."""
        need = self.n + int(ids.shape[0])
        if need > self._ids.shape[0]:
            cap = min(shard_size, max(need, 2 * self._ids.shape[0], 1024))
            codes_buf = np.empty((cap, self._codes.shape[1]), np.uint8)
            ids_buf = np.empty(cap, np.int64)
            codes_buf[: self.n], ids_buf[: self.n] = self.codes, self.ids
            if self.dead is not None:
                dead = np.zeros(cap, np.bool_)
                dead[: self.n] = self.dead[: self.n]
                self.dead = dead
            self._codes, self._ids = codes_buf, ids_buf
        self._codes[self.n : need], self._ids[self.n : need] = codes, ids
        if self.dead is not None:
            self.dead[self.n : need] = False
        self.n = need
        self._words = None

    def mark(self, ids: np.ndarray) -> int:
        """Tombstone the rows of ``ids`` (int64, sorted, unique; unknown ids ignored); returns how many."""
        mine = self.ids
        pos = np.searchsorted(mine, ids)
        found = pos < self.n
        found[found] = mine[pos[found]] == ids[found]
        pos = pos[found]
        if not pos.size:
            return 0
        if self.dead is None:
            self.dead = np.zeros(self._ids.shape[0], np.bool_)
        pos = pos[~self.dead[pos]]
        self.dead[pos] = True
        self.ndead += int(pos.size)
        return int(pos.size)


@INDEXES.register("sharded")
class ShardedHammingIndex(HammingIndex):
    """Exact Hamming k-NN over shards searched in parallel threads, with tombstone deletes (see the module
    docstring). ``shard_size``: rows per shard; ``threads``: search threads (None = ``$SKETCHSEARCH_INDEX_THREADS``
    or one per shard up to the CPUs); ``max_deleted``: fraction of a shard's rows removed before it is compacted.
    """

    name = "sharded"

    def __init__(
        self,
        nbits: int,
        shard_size: int = DEFAULT_SHARD_SIZE,
        threads: int | None = None,
        max_deleted: float = DEFAULT_MAX_DELETED,
    ) -> None:
        super().__init__(nbits)
        del self._store  # the rows live in the shards; nothing of HammingIndex may reach for an IdStore
        self.shard_size = _check_int(shard_size, "shard_size", 1)
        self.threads = _check_int(threads, "threads", 1, allow_none=True)
        self.max_deleted = _check_fraction(max_deleted, "max_deleted")
        self._nwords = (self.nbytes + 7) // 8
        self._shards: list[_Shard] = []
        self._count = 0
        self._base: tuple[np.ndarray, np.ndarray] | None = None  # (codes, ids) the shards are views of
        self._ids: np.ndarray | None = None  # the live ids, concatenated on demand

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(nbits={self.nbits}, shard_size={self.shard_size}, threads={self.threads}, "
            f"n={len(self)}, shards={len(self._shards)}, deleted={self.deleted})"
        )

    # ------------------------------------------------------------------ data
    def __len__(self) -> int:
        return self._count

    @property
    def ids(self) -> np.ndarray:
        """int64 (n,) of the live rows, ascending (read-only view)."""
        if self._ids is None:
            parts = [s.live_rows()[1] for s in self._shards]
            self._ids = parts[0] if len(parts) == 1 else np.concatenate([np.zeros(0, np.int64), *parts])
        return readonly_view(self._ids)

    @property
    def codes(self) -> np.ndarray:
        """uint8 (n, nbits // 8) of the live rows in id order (read-only view; compacts first, see :meth:`state`)."""
        return readonly_view(self.state()["codes"])

    @property
    def deleted(self) -> int:
        """Rows removed but still stored (tombstones)."""
        return sum(s.ndead for s in self._shards)

    def shards(self) -> list[tuple[np.ndarray, np.ndarray, np.ndarray | None]]:
        """Per shard, read-only views of its stored ``(codes, ids, tombstones)`` (tombstones None: none)."""
        return [
            (readonly_view(s.codes), readonly_view(s.ids), None if s.dead is None else readonly_view(s.dead[: s.n]))
            for s in self._shards
        ]

    def search_threads(self) -> int:
        """Threads a search uses: ``threads``, else ``$SKETCHSEARCH_INDEX_THREADS``, else one per shard up to
        the CPUs; never more than the shards."""
        threads = self.threads
        if threads is None:
            raw = os.environ.get(THREADS_ENV, "").strip()
            if raw:
                try:
                    threads = int(raw)
                except ValueError:
                    threads = 0
                if threads < 1:
                    raise IndexArgumentError(f"${THREADS_ENV} must be an integer >= 1, got {raw!r}", "threads")
            else:
                threads = usable_cpus()
        return max(1, min(threads, len(self._shards)))

    def _changed(self) -> None:
        self._ids = None

    def _set_layout(self, codes: np.ndarray, ids: np.ndarray) -> None:
        """Shards as views over row ranges of ``codes`` / ``ids`` (used as given), ``shard_size`` rows each."""
        size = self.shard_size
        self._shards = [_Shard(codes[s : s + size], ids[s : s + size]) for s in range(0, ids.shape[0], size)]
        self._count = int(ids.shape[0])
        self._base = (codes, ids)
        self._changed()

    # ------------------------------------------------------------------ add / remove
    def add(self, codes: np.ndarray, ids: ArrayLike | None = None) -> np.ndarray:
        """Add codes uint8 (n, nbits // 8) with ids int64 (n,) (default: after the largest id in use).

        Returns the ids. An id already in the index, or repeated, is refused (nothing is added).
        """
        rows = self._valid_codes(codes, "codes")
        m = rows.shape[0]
        if ids is None:
            start = self._largest_live_id() + 1
            ids = np.arange(start, start + m, dtype=np.int64)
        ids = _check_ids(ids, m)
        if m == 0:
            return ids
        order, sorted_ids = _sort_new_ids(ids)
        if not self._shards or sorted_ids[0] > self._shards[-1].last_id:
            self._append(rows[order], sorted_ids)
        else:
            self._insert(rows[order], sorted_ids)
        self._count += m
        self._base = None
        self._changed()
        return ids

    def _largest_live_id(self) -> int:
        for s in reversed(self._shards):
            if s.live:
                keep = s.live_mask()
                return s.last_id if keep is None else int(s.ids[keep][-1])
        return -1

    def _append(self, rows: np.ndarray, ids: np.ndarray) -> None:
        """Rows with ids above every stored id (``rows`` is ours: a copy made by the caller's sort)."""
        at, size = 0, self.shard_size
        if self._shards and self._shards[-1].n < size:
            at = min(size - self._shards[-1].n, ids.shape[0])
            self._shards[-1].append(rows[:at], ids[:at], size)
        for s in range(at, ids.shape[0], size):
            self._shards.append(_Shard(rows[s : s + size], ids[s : s + size]))

    def _insert(self, rows: np.ndarray, ids: np.ndarray) -> None:
        """Rows with ids among the stored ones: the shards from the first that the ids reach are rebuilt."""
        first = int(np.searchsorted([s.last_id for s in self._shards], ids[0]))
        tail = [s.live_rows() for s in self._shards[first:]]
        live_ids = np.concatenate([t[1] for t in tail])
        clash = ids[np.isin(ids, live_ids)]
        if clash.size:
            raise IndexArgumentError(f"id {int(clash[0])} is already in the index", "ids")
        merge = np.argsort(np.concatenate([live_ids, ids]), kind="stable")
        all_codes = np.concatenate([*(t[0] for t in tail), rows])[merge]
        all_ids = np.concatenate([live_ids, ids])[merge]
        size = self.shard_size
        self._shards[first:] = [  # their tombstones are dropped
            _Shard(all_codes[s : s + size], all_ids[s : s + size]) for s in range(0, all_ids.shape[0], size)
        ]

    def remove(self, ids: ArrayLike) -> int:
        """Mark the given ids removed (unknown ids are ignored); returns how many were removed.

        A shard whose tombstones then exceed ``max_deleted`` of its rows is compacted (that shard only).
        """
        arr = np.asarray(ids)
        if arr.size and not np.issubdtype(arr.dtype, np.integer):
            raise IndexArgumentError(f"expected integer ids, got dtype {arr.dtype}", "ids")
        wanted = np.sort(arr.reshape(-1).astype(np.int64))  # (np.unique hashes first: several times slower)
        wanted = wanted[np.concatenate([[True], wanted[1:] != wanted[:-1]])] if wanted.size else wanted
        removed = 0
        kept: list[_Shard] = []
        lo = 0
        for s in self._shards:
            hi = int(np.searchsorted(wanted, s.last_id, side="right"))
            if hi > lo:
                removed += s.mark(wanted[lo:hi])
            lo = hi
            if s.ndead > self.max_deleted * s.n:
                if s.live:
                    kept.append(_Shard(*(np.ascontiguousarray(a) for a in s.live_rows())))
            else:
                kept.append(s)
        if removed:
            self._shards = kept
            self._count -= removed
            self._base = None
            self._changed()
        return removed

    def compact(self) -> int:
        """Drop every tombstone and cut the live rows into full shards (one new array); returns how many
        tombstones were dropped. Nothing is copied when the shards are already views over one array without
        tombstones."""
        dropped = self.deleted
        if self._base is not None and not dropped:
            return 0
        parts = [s.live_rows() for s in self._shards]
        if parts:
            codes, ids = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
        else:
            codes, ids = np.zeros((0, self.nbytes), np.uint8), np.zeros(0, np.int64)
        self._set_layout(codes, ids)
        return dropped

    # ------------------------------------------------------------------ persistence
    def config(self) -> dict[str, Any]:
        """``{"nbits", "shard_size", "threads", "max_deleted"}`` (``threads`` as given: None = chosen at search)."""
        return {
            "nbits": self.nbits,
            "shard_size": self.shard_size,
            "threads": self.threads,
            "max_deleted": self.max_deleted,
        }

    def state(self) -> dict[str, np.ndarray]:
        """``{"codes", "ids"}`` of the live rows in id order: the arrays themselves after a load or a
        compaction; after an add or remove the index is compacted first (:meth:`compact`), so a save writes
        no tombstones."""
        if len(self._shards) == 1 and not self._shards[0].ndead:
            return {"codes": self._shards[0].codes, "ids": self._shards[0].ids}
        self.compact()
        assert self._base is not None
        return {"codes": self._base[0], "ids": self._base[1]}

    def load_state(self, state: Mapping[str, np.ndarray]) -> None:
        """Adopt a :meth:`state` as it is (e.g. memory-mapped from disk): shards are views over its row ranges."""
        codes, ids = state_arrays(state)
        store = IdStore(np.zeros((0, self.nbytes), np.uint8))
        store.adopt(self._valid_codes(codes, "codes"), ids)  # checks the ids: int64, >= 0, ascending
        self._set_layout(store.rows, store.ids)

    # ------------------------------------------------------------------ search
    def _live_shards(self) -> list[_Shard]:
        return [s for s in self._shards if s.live]

    def _groups(self, shards: list[_Shard]) -> list[list[_Shard]]:
        """The shards cut into one run of consecutive shards per search thread, of about equal rows."""
        threads = min(self.search_threads(), len(shards))
        total = sum(s.n for s in shards)
        groups: list[list[_Shard]] = [[] for _ in range(threads)]
        done = 0
        for s in shards:  # a shard goes to the thread whose share of the rows its middle falls in
            groups[min(threads - 1, (2 * done + s.n) * threads // (2 * total))].append(s)
            done += s.n
        return [g for g in groups if g]

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """k nearest live codes to queries uint8 (nq, nbits // 8): (distances int32 (nq, k), ids int64 (nq, k)).

        Ties by id ascending; missing hits (k > len) are id -1 with distance ``MISSING_DISTANCE``.
        """
        k = check_k(k)
        q = self._valid_codes(queries, "queries")
        nq = q.shape[0]
        shards = self._live_shards()
        if not shards or nq == 0:
            return np.full((nq, k), MISSING_DISTANCE, np.int32), np.full((nq, k), -1, np.int64)
        from . import _kernels

        _kernels.ensure_compiled()
        qw = np.ascontiguousarray(_words(q, self._nwords))
        # Per query, a distance that k rows already found (by any thread) are within: every scan prunes by it
        # and lowers it (see knn_scan_live), and so does each thread after merging a shard into its results,
        # so that a thread's later shards, and the threads together, skip rows that cannot be in the top k.
        bound = np.full(nq, self.nbits, np.int64) if len(shards) > 1 else np.zeros(0, np.int64)

        def scan(group: list[_Shard]) -> tuple[np.ndarray, np.ndarray]:
            best: tuple[np.ndarray, np.ndarray] | None = None
            for s in group:
                d, pos = _kernels.knn_scan_live(qw, s.words(self._nwords), s.dead_mask(), k, self.nbits, bound)
                found = (d, np.where(pos >= 0, s.ids[np.maximum(pos, 0)], -1))
                best = found if best is None else _merge([best, found], k)
                if len(group) > 1:
                    np.minimum(bound, best[0][:, k - 1], out=bound)  # a missing hit's distance bounds nothing
            assert best is not None
            return best

        return _merge(_map(scan, self._groups(shards), self.search_threads()), k)

    def range_search(self, queries: np.ndarray, radius: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """All live codes at distance ``< radius``: (lims int64 (nq+1,), dist int32, ids int64), by (distance, id)."""
        if isinstance(radius, bool) or not isinstance(radius, (int, np.integer)) or radius < 0:
            raise IndexArgumentError(f"radius must be an integer >= 0, got {radius!r}", "radius")
        q = self._valid_codes(queries, "queries")
        nq = q.shape[0]
        shards = self._live_shards()
        if not shards or nq == 0:
            return np.zeros(nq + 1, np.int64), np.zeros(0, np.int32), np.zeros(0, np.int64)
        from . import _kernels

        _kernels.ensure_compiled()
        qw = np.ascontiguousarray(_words(q, self._nwords))

        def one(s: _Shard) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
            lims, d, pos = _kernels.range_scan(qw, s.words(self._nwords), int(radius))
            qid = np.repeat(np.arange(nq), np.diff(lims))
            if s.dead is not None:
                keep = ~s.dead[pos]
                qid, d, pos = qid[keep], d[keep], pos[keep]
            return qid, d.astype(np.int32), s.ids[pos]

        found = _map(one, shards, self.search_threads())
        qid = np.concatenate([f[0] for f in found])
        dist = np.concatenate([f[1] for f in found])
        ids = np.concatenate([f[2] for f in found])
        order = np.lexsort((ids, dist, qid))
        lims = np.zeros(nq + 1, np.int64)
        np.cumsum(np.bincount(qid, minlength=nq), out=lims[1:])
        return lims, dist[order], ids[order]
