"""Exact search over real-valued embeddings (float methods): cosine or inner product.

Vectors are float32 ``(n, dim)``; with ``metric="cosine"`` (default) they are L2-normalised on add
and queries on search, so similarity = dot product of unit vectors, as the design's contract says.
``search`` returns similarities ``float32 (nq, k)``, highest first, and ids ``int64 (nq, k)``; a
missing hit is id ``-1`` with similarity ``-inf``. Ties (equal similarity) are broken by id
ascending, as in the Hamming indexes: faiss's ``IndexFlatIP`` (the engine here) gives the exact top-k
scores but not the order among equal scores, so extra hits are fetched and re-sorted.

Registered as backend ``"dense"`` (``create_index("dense", dim=..., metric=...)``); it satisfies the
:class:`~sketchsearch.index.base.Index` protocol.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from sketchsearch.errors import IndexArgumentError

from .base import INDEXES, IdStore, check_k, readonly_view, state_arrays

__all__ = ["DenseIndex", "normalize"]

METRICS = ("cosine", "ip")


def normalize(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (float32); zero rows stay zero."""
    x = np.asarray(x, np.float32)
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return np.divide(x, norm, out=np.zeros_like(x), where=norm > 0)


@INDEXES.register("dense")
class DenseIndex:
    """Exact inner-product / cosine index; vectors and ids in an :class:`IdStore` (ascending id order)."""

    name = "dense"

    def __init__(self, dim: int, metric: str = "cosine") -> None:
        if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or dim <= 0:
            raise IndexArgumentError(f"dim must be a positive integer, got {dim!r}", "dim")
        if metric not in METRICS:
            raise IndexArgumentError(f"unknown metric {metric!r}; valid: {', '.join(METRICS)}", "metric")
        self.dim = int(dim)
        self.metric = metric
        self._store = IdStore(np.zeros((0, self.dim), np.float32))
        self._faiss: Any = None

    @property
    def codes(self) -> np.ndarray:
        """float32 (n, dim) (normalised for cosine), in ascending id order (read-only view)."""
        return readonly_view(self._store.rows)

    @property
    def ids(self) -> np.ndarray:
        """int64 (n,), ascending (read-only view)."""
        return readonly_view(self._store.ids)

    def __len__(self) -> int:
        return len(self._store)

    def __repr__(self) -> str:
        return f"DenseIndex(dim={self.dim}, metric={self.metric!r}, n={len(self)})"

    def _vectors(self, x: object, field: str) -> np.ndarray:
        """Real vectors (n, dim) (or one, (dim,)) -> float32 (n, dim), normalised for cosine."""
        if not isinstance(x, np.ndarray) or not np.issubdtype(x.dtype, np.number):
            got = f"dtype {x.dtype}" if isinstance(x, np.ndarray) else type(x).__name__
            raise IndexArgumentError(f"expected a real-valued numpy array (n, {self.dim}), got {got}", field)
        if x.ndim == 1:
            x = x.reshape(1, -1)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise IndexArgumentError(f"expected shape (n, {self.dim}), got {x.shape}", field)
        x = np.ascontiguousarray(x, np.float32)
        if not np.isfinite(x).all():
            raise IndexArgumentError("contains NaN or infinite values", field)
        return normalize(x) if self.metric == "cosine" else x

    def add(self, codes: np.ndarray, ids: ArrayLike | None = None) -> np.ndarray:
        """Add real vectors (n, dim) with int64 ids (default: after the largest id); returns the ids.

        An id already in the index, or repeated, is refused (nothing is added).
        """
        ids = self._store.add(self._vectors(codes, "codes"), ids)
        self._faiss = None
        return ids

    def remove(self, ids: ArrayLike) -> int:
        """Remove the given ids (unknown ids are ignored); returns how many were removed."""
        removed = self._store.remove(ids)
        if removed:
            self._faiss = None
        return removed

    # ------------------------------------------------------------------ persistence
    def config(self) -> dict[str, Any]:
        """``{"dim", "metric"}``: ``create_index("dense", **config())`` makes an empty index like this one."""
        return {"dim": self.dim, "metric": self.metric}

    def state(self) -> dict[str, np.ndarray]:
        """``{"codes": float32 (n, dim) as stored (normalised for cosine), "ids": int64 (n,)}``, id order."""
        return self._store.state()

    def load_state(self, state: Mapping[str, np.ndarray]) -> None:
        """Adopt a :meth:`state` as it is (e.g. memory-mapped from disk); ids must be strictly ascending."""
        codes, ids = state_arrays(state)
        if not isinstance(codes, np.ndarray) or codes.dtype != np.float32 or codes.shape[1:] != (self.dim,):
            got = f"{codes.dtype} {codes.shape}" if isinstance(codes, np.ndarray) else type(codes).__name__
            raise IndexArgumentError(f"expected float32 (n, {self.dim}), got {got}", "codes")
        self._store.adopt(codes, ids)
        self._faiss = None

    # ------------------------------------------------------------------ search
    def _index(self) -> Any:
        if self._faiss is None:
            import faiss

            idx = faiss.IndexFlatIP(self.dim)
            if len(self):
                idx.add(np.ascontiguousarray(self._store.rows))
            self._faiss = idx
        return self._faiss

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k by similarity to queries (nq, dim): (float32 (nq, k) highest first, ids int64 (nq, k)).

        Ties by id ascending; missing hits (k > len) are id -1 with similarity -inf.
        """
        k = check_k(k)
        q = self._vectors(queries, "queries")
        nq, n = q.shape[0], len(self)
        out_s = np.full((nq, k), -np.inf, np.float32)
        out_p = np.full((nq, k), -1, np.int64)
        if n == 0 or nq == 0:
            return out_s, out_p
        idx = self._index()
        todo = np.arange(nq)
        kk = min(n, k + max(16, k // 4))
        while todo.size:
            s, p = idx.search(q[todo], kk)
            kth = s[:, min(k, n) - 1]
            done = (kk >= n) | (s[:, kk - 1] < kth)
            for row in np.flatnonzero(done):
                order = np.lexsort((p[row], -s[row]))[: min(k, n)]
                out_s[todo[row], : order.size] = s[row, order]
                out_p[todo[row], : order.size] = p[row, order]
            todo = todo[~done]
            kk = min(n, 2 * kk)
        return out_s, self._store.ids_at(out_p)
