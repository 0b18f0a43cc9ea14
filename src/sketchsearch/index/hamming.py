"""Exact Hamming-distance search over packed binary codes, with interchangeable backends.

Contract (faiss's, see :mod:`sketchsearch.index.codes`): codes are packed ``uint8 (n, nbits // 8)``,
distances ``int32``, ids ``int64``. A missing hit (``k`` larger than the index) is id ``-1`` with
distance ``MISSING_DISTANCE`` (``2**31 - 1``, what faiss's ``IndexBinaryFlat`` writes too).

**Ties** in Hamming distance are broken by id, ascending, in every backend: a result row is exactly
the first ``k`` entries of the index sorted by ``(distance, id)``. Every index keeps its codes in
ascending id order, so "by id" and "by position" agree; the faiss backend, whose heap does not
order ties, fetches extra hits and re-sorts (see :class:`FaissHammingIndex`).

Backends (``create_index(name, nbits=...)``, registered in :mod:`sketchsearch.index.base` with the
dense index; each satisfies its :class:`~sketchsearch.index.base.Index` protocol):

* ``"numba"`` — a numba scan (``_kernels.py``), about 2.5x faster than faiss on one core for
  64-bit codes; compiled lazily on first search and cached on disk. ``"sketchsearch"``, its former
  name, is an alias (saved manifests record it).
* ``"faiss"`` — ``faiss.IndexBinaryFlat``, the reference implementation.
* ``"numpy"`` — popcount of XOR with ``np.bitwise_count`` and a stable sort: the readable reference.

Range search follows faiss: hits are the codes at distance ``< radius`` (strictly), returned as
``(lims int64 (nq + 1,), distances int32, ids int64)`` with query ``i``'s hits in
``lims[i]:lims[i + 1]``, sorted by ``(distance, id)``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from sketchsearch.errors import IndexArgumentError, InvalidSketchError

from .base import INDEXES, IdStore, check_k, create_index, readonly_view, state_arrays
from .codes import code_size, validate_codes

__all__ = [
    "MISSING_DISTANCE",
    "FaissHammingIndex",
    "HammingIndex",
    "NumbaHammingIndex",
    "NumpyHammingIndex",
    "knn_hamming",
]

#: Distance reported with id -1 for a missing hit (k > number of codes), as faiss does.
MISSING_DISTANCE = np.iinfo(np.int32).max


@contextmanager
def _index_arguments() -> Iterator[None]:
    """Re-raise codes.py's InvalidSketchError (its public helpers' error type) as IndexArgumentError."""
    try:
        yield
    except InvalidSketchError as e:
        raise IndexArgumentError(e.reason, e.field) from None


class HammingIndex:
    """Packed codes and ids in an :class:`IdStore` (ascending id order), plus the search a backend implements.

    Subclasses implement ``_search(queries, k) -> (dist int32 (nq, k), positions int64 (nq, k))`` and
    ``_range(queries, radius) -> (lims, dist, positions)``; positions index ``codes``/``ids`` and missing
    hits are position -1. ``_changed()`` is called after every modification (to drop derived state).
    """

    name = "base"
    metric = "hamming"

    def __init__(self, nbits: int) -> None:
        with _index_arguments():
            self.nbytes = code_size(nbits)
        self.nbits = int(nbits)
        self._store = IdStore(np.zeros((0, self.nbytes), np.uint8))

    # ------------------------------------------------------------------ data
    @property
    def codes(self) -> np.ndarray:
        """uint8 (n, nbits // 8), in ascending id order (read-only view)."""
        return readonly_view(self._store.rows)

    @property
    def ids(self) -> np.ndarray:
        """int64 (n,), ascending (read-only view)."""
        return readonly_view(self._store.ids)

    def __len__(self) -> int:
        return len(self._store)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(nbits={self.nbits}, n={len(self)})"

    def _valid_codes(self, codes: object, field: str) -> np.ndarray:
        with _index_arguments():
            return validate_codes(codes, self.nbits, field)

    def add(self, codes: np.ndarray, ids: ArrayLike | None = None) -> np.ndarray:
        """Add codes uint8 (n, nbits // 8) with ids int64 (n,) (default: after the largest id).

        Returns the ids. An id already in the index, or repeated, is refused (nothing is added).
        """
        ids = self._store.add(self._valid_codes(codes, "codes"), ids)
        self._changed()
        return ids

    def remove(self, ids: ArrayLike) -> int:
        """Remove the given ids (unknown ids are ignored); returns how many were removed."""
        removed = self._store.remove(ids)
        if removed:
            self._changed()
        return removed

    # ------------------------------------------------------------------ persistence
    def config(self) -> dict[str, Any]:
        """``{"nbits": ...}``: ``create_index(self.name, **config())`` makes an empty index like this one."""
        return {"nbits": self.nbits}

    def state(self) -> dict[str, np.ndarray]:
        """``{"codes": uint8 (n, nbits // 8), "ids": int64 (n,)}`` in ascending id order."""
        return self._store.state()

    def load_state(self, state: Mapping[str, np.ndarray]) -> None:
        """Adopt a :meth:`state` as it is (e.g. memory-mapped from disk); ids must be strictly ascending."""
        codes, ids = state_arrays(state)
        self._store.adopt(self._valid_codes(codes, "codes"), ids)
        self._changed()

    def _changed(self) -> None:
        pass

    # ------------------------------------------------------------------ search
    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """k nearest codes to queries uint8 (nq, nbits // 8): (distances int32 (nq, k), ids int64 (nq, k)).

        Ties by id ascending; missing hits (k > len) are id -1 with distance ``MISSING_DISTANCE``.
        """
        k = check_k(k)
        q = self._valid_codes(queries, "queries")
        if len(self) == 0 or q.shape[0] == 0:
            return (
                np.full((q.shape[0], k), MISSING_DISTANCE, np.int32),
                np.full((q.shape[0], k), -1, np.int64),
            )
        dist, pos = self._search(q, k)
        return dist.astype(np.int32, copy=False), self._store.ids_at(pos)

    def range_search(self, queries: np.ndarray, radius: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """All codes at distance ``< radius``: (lims int64 (nq+1,), dist int32, ids int64), by (distance, id)."""
        if isinstance(radius, bool) or not isinstance(radius, (int, np.integer)) or radius < 0:
            raise IndexArgumentError(f"radius must be an integer >= 0, got {radius!r}", "radius")
        q = self._valid_codes(queries, "queries")
        if len(self) == 0 or q.shape[0] == 0:
            return np.zeros(q.shape[0] + 1, np.int64), np.zeros(0, np.int32), np.zeros(0, np.int64)
        lims, dist, pos = self._range(q, int(radius))
        lims = np.asarray(lims, np.int64)
        dist = np.asarray(dist, np.int32)
        pos = np.asarray(pos, np.int64)
        # Sort each query's hits by (distance, position); positions are in id order.
        qid = np.repeat(np.arange(q.shape[0]), np.diff(lims))
        order = np.lexsort((pos, dist, qid))
        return lims, dist[order], self._store.ids[pos[order]]

    def _search(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def _range(self, q: np.ndarray, radius: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        raise NotImplementedError


def _words(codes: np.ndarray, nwords: int) -> np.ndarray:
    """uint8 (n, nbytes) -> uint64 (n, nwords), zero-padded; zero-copy when nbytes is a multiple of 8."""
    n, nbytes = codes.shape
    if nbytes == 8 * nwords and codes.flags.c_contiguous and codes.ctypes.data % 8 == 0:
        return codes.view(np.uint64)
    out = np.zeros((n, 8 * nwords), np.uint8)
    out[:, :nbytes] = codes
    return out.view(np.uint64)


@INDEXES.register("numba")
class NumbaHammingIndex(HammingIndex):
    """Exact scan compiled with numba (see ``_kernels.py``); single-threaded, releases the GIL."""

    name = "numba"

    def __init__(self, nbits: int) -> None:
        super().__init__(nbits)
        self._nwords = (self.nbytes + 7) // 8
        self._xb: np.ndarray | None = None

    def _changed(self) -> None:
        self._xb = None

    def _db(self) -> np.ndarray:
        if self._xb is None:
            self._xb = _words(self._store.rows, self._nwords)
        return self._xb

    def _search(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        from . import _kernels

        _kernels.ensure_compiled()
        if _kernels.rows_pay(q.shape[0], self._nwords):
            return _kernels.knn_rows(_words(q, self._nwords), self._db(), k, self.nbits)  # type: ignore[no-any-return]
        return _kernels.knn_scan(_words(q, self._nwords), self._db(), k, self.nbits)  # type: ignore[no-any-return]

    def _range(self, q: np.ndarray, radius: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        from . import _kernels

        _kernels.ensure_compiled()
        return _kernels.range_scan(_words(q, self._nwords), self._db(), radius)  # type: ignore[no-any-return]


@INDEXES.register("faiss")
class FaissHammingIndex(HammingIndex):
    """``faiss.IndexBinaryFlat`` made tie-exact.

    faiss returns the exact top-k *distances*, but among codes at the k-th distance it picks an
    unspecified subset. So we ask for ``k + extra`` hits: if the last one is farther than the k-th,
    every code at the k-th distance is among them and a stable sort by (distance, position) gives the
    exact answer; otherwise the query is asked again with twice as many (up to all codes).
    """

    name = "faiss"

    def __init__(self, nbits: int) -> None:
        super().__init__(nbits)
        self._faiss: Any = None

    def _changed(self) -> None:
        self._faiss = None

    def _index(self) -> Any:
        if self._faiss is None:
            import faiss

            idx = faiss.IndexBinaryFlat(self.nbits)
            if len(self):
                idx.add(np.ascontiguousarray(self._store.rows))
            self._faiss = idx
        return self._faiss

    def _search(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        n = len(self)
        idx = self._index()
        out_d = np.full((q.shape[0], k), MISSING_DISTANCE, np.int32)
        out_p = np.full((q.shape[0], k), -1, np.int64)
        todo = np.arange(q.shape[0])
        kk = min(n, k + max(16, k // 4))
        while todo.size:
            d, p = idx.search(q[todo], kk)
            kth = d[:, min(k, n) - 1]
            done = (kk >= n) | (d[:, kk - 1] > kth)
            for row in np.flatnonzero(done):
                order = np.lexsort((p[row], d[row]))[: min(k, n)]
                out_d[todo[row], : order.size] = d[row, order]
                out_p[todo[row], : order.size] = p[row, order]
            todo = todo[~done]
            kk = min(n, 2 * kk)
        return out_d, out_p

    def _range(self, q: np.ndarray, radius: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        lims, d, p = self._index().range_search(q, radius)
        return lims.astype(np.int64), d.astype(np.int32), p.astype(np.int64)


@INDEXES.register("numpy")
class NumpyHammingIndex(HammingIndex):
    """Reference backend: ``np.bitwise_count`` of XOR per byte, then a stable (distance, position) sort."""

    name = "numpy"

    #: Work on at most this many distances at once (bounds memory to ~100 MB).
    block_elements = 1 << 23

    def _distances(self, q: np.ndarray) -> np.ndarray:
        """int32 (nq, n) distances, computed in blocks of database rows."""
        n = len(self)
        out = np.empty((q.shape[0], n), np.int32)
        step = max(1, self.block_elements // max(1, q.shape[0] * self.nbytes))
        for s in range(0, n, step):
            x = np.bitwise_xor(q[:, None, :], self._store.rows[None, s : s + step, :])
            out[:, s : s + step] = np.bitwise_count(x).sum(axis=2, dtype=np.int32)
        return out

    def _search(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        n = len(self)
        out_d = np.full((q.shape[0], k), MISSING_DISTANCE, np.int32)
        out_p = np.full((q.shape[0], k), -1, np.int64)
        kk = min(k, n)
        rows = max(1, self.block_elements // max(1, n))
        for s in range(0, q.shape[0], rows):
            d = self._distances(q[s : s + rows]).astype(np.int64)
            key = d * n + np.arange(n)  # (distance, position) as one sortable integer
            part = np.argpartition(key, kk - 1, axis=1)[:, :kk] if kk < n else np.broadcast_to(np.arange(n), key.shape)
            part_key = np.take_along_axis(key, part, axis=1)
            order = np.take_along_axis(part, np.argsort(part_key, axis=1, kind="stable"), axis=1)
            out_p[s : s + rows, :kk] = order
            out_d[s : s + rows, :kk] = np.take_along_axis(d, order, axis=1)
        return out_d, out_p

    def _range(self, q: np.ndarray, radius: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        lims = [0]
        ds: list[np.ndarray] = []
        ps: list[np.ndarray] = []
        rows = max(1, self.block_elements // max(1, len(self)))
        for s in range(0, q.shape[0], rows):
            d = self._distances(q[s : s + rows])
            for row in d:
                hit = np.flatnonzero(row < radius)
                ds.append(row[hit])
                ps.append(hit)
                lims.append(lims[-1] + hit.size)
        return np.asarray(lims, np.int64), np.concatenate(ds), np.concatenate(ps)


def knn_hamming(xq: np.ndarray, xb: np.ndarray, k: int, backend: str = "numba") -> tuple[np.ndarray, np.ndarray]:
    """Index-free exact k-NN by Hamming distance (as faiss's ``knn_hamming``).

    xq: uint8 (nq, nbytes) queries; xb: uint8 (n, nbytes) database; returns (distances int32 (nq, k),
    positions int64 (nq, k)) with ties broken by position in ``xb``; -1 pads missing hits.
    """
    if not isinstance(xb, np.ndarray) or xb.ndim != 2:
        raise IndexArgumentError("expected packed uint8 codes of shape (n, nbytes)", "xb")
    index = create_index(backend, nbits=8 * xb.shape[1])
    index.add(xb, np.arange(xb.shape[0], dtype=np.int64))
    return index.search(xq, k)
