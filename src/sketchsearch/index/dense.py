"""Exact search over real-valued embeddings (float methods): cosine or inner product.

Vectors are float32 ``(n, dim)``; with ``metric="cosine"`` (default) they are L2-normalised on add
and queries on search, so similarity = dot product of unit vectors, as the design's contract says.
``search`` returns similarities ``float32 (nq, k)``, highest first, and ids ``int64 (nq, k)``; a
missing hit is id ``-1`` with similarity ``-inf``. Ties (equal similarity) are broken by id
ascending, as in the Hamming indexes: faiss's ``IndexFlatIP`` (the engine here) gives the exact top-k
scores but not the order among equal scores, so extra hits are fetched and re-sorted.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from sketchsearch.errors import InvalidSketchError

from .hamming import _as_ids, _check_k, _ids_at

__all__ = ["DenseIndex", "normalize"]

METRICS = ("cosine", "ip")


def normalize(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (float32); zero rows stay zero."""
    x = np.asarray(x, np.float32)
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return np.divide(x, norm, out=np.zeros_like(x), where=norm > 0)


class DenseIndex:
    """Exact inner-product / cosine index; codes and ids kept in ascending id order."""

    kind = "dense"

    def __init__(self, dim: int, metric: str = "cosine") -> None:
        if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or dim <= 0:
            raise InvalidSketchError(f"dim must be a positive integer, got {dim!r}", "dim")
        if metric not in METRICS:
            raise InvalidSketchError(f"unknown metric {metric!r}; valid: {', '.join(METRICS)}", "metric")
        self.dim = int(dim)
        self.metric = metric
        self._codes = np.zeros((0, self.dim), np.float32)
        self._ids = np.zeros(0, np.int64)
        self._faiss: Any = None

    @property
    def codes(self) -> np.ndarray:
        """float32 (n, dim) (normalised for cosine), in ascending id order (read-only view)."""
        v = self._codes.view()
        v.flags.writeable = False
        return v

    @property
    def ids(self) -> np.ndarray:
        v = self._ids.view()
        v.flags.writeable = False
        return v

    def __len__(self) -> int:
        return int(self._ids.shape[0])

    def __repr__(self) -> str:
        return f"DenseIndex(dim={self.dim}, metric={self.metric!r}, n={len(self)})"

    def _vectors(self, x: object, field: str) -> np.ndarray:
        if not isinstance(x, np.ndarray) or not np.issubdtype(x.dtype, np.number):
            raise InvalidSketchError(f"expected a float array (n, {self.dim})", field)
        if x.ndim == 1:
            x = x.reshape(1, -1)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise InvalidSketchError(f"expected shape (n, {self.dim}), got {x.shape}", field)
        x = np.ascontiguousarray(x, np.float32)
        if not np.isfinite(x).all():
            raise InvalidSketchError("contains NaN or infinite values", field)
        return normalize(x) if self.metric == "cosine" else x

    def add(self, vectors: np.ndarray, ids: np.ndarray | None = None) -> np.ndarray:
        """Add float vectors (n, dim) with int64 ids (default: after the largest id); returns the ids."""
        x = self._vectors(vectors, "vectors")
        n = x.shape[0]
        if ids is None:
            start = int(self._ids[-1]) + 1 if len(self) else 0
            ids = np.arange(start, start + n, dtype=np.int64)
        ids = _as_ids(ids, n)
        if n == 0:
            return ids
        all_ids = np.concatenate([self._ids, ids])
        order = np.argsort(all_ids, kind="stable")
        s = all_ids[order]
        if np.any(s[1:] == s[:-1]):
            raise InvalidSketchError(
                f"id {int(s[1:][s[1:] == s[:-1]][0])} is repeated or already in the index", "ids"
            )
        self._ids = s
        self._codes = np.concatenate([self._codes, x])[order]
        self._faiss = None
        return ids

    def remove(self, ids: np.ndarray | list[int]) -> int:
        """Remove the given ids (unknown ids are ignored); returns how many were removed."""
        keep = ~np.isin(self._ids, np.asarray(ids, np.int64).reshape(-1))
        removed = int(len(self) - keep.sum())
        if removed:
            self._ids, self._codes, self._faiss = self._ids[keep], self._codes[keep], None
        return removed

    def _set_arrays(self, codes: np.ndarray, ids: np.ndarray) -> None:
        codes = np.asarray(codes)
        if codes.dtype != np.float32 or codes.ndim != 2 or codes.shape[1] != self.dim:
            raise InvalidSketchError(
                f"expected float32 (n, {self.dim}), got {codes.dtype} {codes.shape}", "codes"
            )
        ids = _as_ids(ids, codes.shape[0])
        if ids.size > 1 and not np.all(ids[1:] > ids[:-1]):
            raise InvalidSketchError("ids must be strictly ascending and unique", "ids")
        self._codes, self._ids, self._faiss = codes, ids, None

    def _index(self) -> Any:
        if self._faiss is None:
            import faiss

            idx = faiss.IndexFlatIP(self.dim)
            if len(self):
                idx.add(np.ascontiguousarray(self._codes))
            self._faiss = idx
        return self._faiss

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k by similarity: (float32 (nq, k) highest first, ids int64 (nq, k)); ties by id."""
        k = _check_k(k)
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
        return out_s, _ids_at(self._ids, out_p)
