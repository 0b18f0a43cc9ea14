"""Multi-index hashing: exact Hamming k-NN that probes substring tables instead of scanning every code.

Norouzi, Punjani & Fleet, "Fast Exact Search in Hamming Space with Multi-Index Hashing", TPAMI 2014
(https://arxiv.org/abs/1307.2982). Backend ``"mih"``: ``create_index("mih", nbits=64, substrings=None)``.

A code of ``nbits`` bits is cut into ``m`` disjoint substrings of ``nbits // m`` or ``nbits // m + 1``
bits. Two codes at distance ``d`` agree within ``d // m`` bits on at least one substring (pigeonhole),
so the neighbours of a query are found by looking up, in the table of each substring, the values near
the query's substring, with a radius that grows until the ``k`` results are certain (the stopping rule
is in ``_mih_kernels.py``). Every candidate is verified by its full distance, so the results are
*exactly* those of the linear scan: the same ids and distances, ties broken by id ascending.

**Substrings.** ``substrings=None`` (the default) chooses ``m`` when the tables are built, so that a
substring has about ``log2(n)`` bits (the paper's advice: about one code per table bucket), and at most
:data:`MAX_SUBSTRING_BITS`; ``config()`` records the keyword as given, so a saved index chooses again
from its size when loaded. Bits are taken in the order of the code's 64-bit words (little-endian).

**Tables** are built lazily, on the first search after a change (add, remove, load), with numpy's
argsort and bincount: per table, the positions of the codes sorted by substring value (a CSR layout,
``2**len + 1`` offsets) and a copy of the codes in that order, so that verifying a bucket reads memory
sequentially. Memory: ``m * n * (4 + nbits / 8)`` bytes plus the offsets (``m`` copies of the codes;
:attr:`MultiIndexHashingIndex.table_nbytes`). Changes drop the tables; the next search rebuilds them
(2 to 3 s per table for 10^7 codes on one shared core).

**Speed** depends on the data: on codes with the structure of trained codes (neighbours at small
distances) a query reads a few buckets instead of every code, about 10x faster than the scan at 10^7
codes; on uniformly random codes the k-th neighbour is far and the search probes many buckets, slower
than the scan (see ``benchmarks/bench_mih.py`` and its results).
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np

from sketchsearch.errors import IndexArgumentError

from .base import INDEXES
from .hamming import HammingIndex, _words

__all__ = ["MAX_SUBSTRING_BITS", "MultiIndexHashingIndex", "choose_substrings"]

#: Longest substring a table is built for (a table has 2**bits + 1 offsets: 64 MB at 24 bits).
MAX_SUBSTRING_BITS = 24


def choose_substrings(nbits: int, n: int) -> int:
    """The paper's choice of ``m``: substrings of about ``log2(n)`` bits, within ``[1, MAX_SUBSTRING_BITS]``."""
    target = max(1.0, math.log2(max(n, 2)))
    m = max(1, round(nbits / target))
    return min(nbits, max(m, -(-nbits // MAX_SUBSTRING_BITS)))


def _check_substrings(substrings: object, nbits: int) -> int | None:
    if substrings is None:
        return None
    if isinstance(substrings, bool) or not isinstance(substrings, (int, np.integer)):
        raise IndexArgumentError(f"substrings must be an integer or None, got {substrings!r}", "substrings")
    low = -(-nbits // MAX_SUBSTRING_BITS)
    if not low <= substrings <= nbits:
        raise IndexArgumentError(
            f"substrings must be between {low} and {nbits} for {nbits}-bit codes (a substring has 1 to "
            f"{MAX_SUBSTRING_BITS} bits), got {substrings}",
            "substrings",
        )
    return int(substrings)


def _layout(nbits: int, m: int) -> tuple[np.ndarray, np.ndarray]:
    """(start, length) int64 (m,) of each substring: the first ``nbits % m`` substrings one bit longer."""
    lengths = np.full(m, nbits // m, np.int64)
    lengths[: nbits % m] += 1
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    return starts, lengths


def _substring_values(words: np.ndarray, start: int, length: int) -> np.ndarray:
    """int64 (n,) value of bits ``[start, start + length)`` of each code (uint64 words (n, w))."""
    wi, b = divmod(start, 64)
    v = words[:, wi] >> np.uint64(b)
    if b + length > 64:
        v = v | (words[:, wi + 1] << np.uint64(64 - b))
    return (v & np.uint64((1 << length) - 1)).astype(np.int64)


def _submasks(starts: np.ndarray, lengths: np.ndarray, nwords: int) -> np.ndarray:
    """uint64 (m, nwords): the bits of each substring, to count a substring's distance from an XOR."""
    out = np.zeros((len(starts), nwords), np.uint64)
    for t, (s, length) in enumerate(zip(starts.tolist(), lengths.tolist())):
        for bit in range(s, s + length):
            out[t, bit // 64] |= np.uint64(1) << np.uint64(bit % 64)
    return out


class _Tables:
    """The m substring tables of one state of the index (see the module docstring)."""

    def __init__(self, words: np.ndarray, nbits: int, m: int) -> None:
        t0 = time.perf_counter()
        n, nwords = words.shape
        self.m = m
        self.starts, self.lengths = _layout(nbits, m)
        self.submask = _submasks(self.starts, self.lengths, nwords)
        itype = np.int32 if n < 2**31 else np.int64
        self.off_start = np.zeros(m, np.int64)
        self.offsets = np.empty(int(sum((1 << int(L)) + 1 for L in self.lengths)), itype)
        self.positions = np.empty((m, n), itype)
        self.planes = np.empty((m, nwords, n), np.uint64)  # codes in table order, one row per 64-bit word
        at = 0
        for t in range(m):
            length = int(self.lengths[t])
            key = _substring_values(words, int(self.starts[t]), length)
            order = np.argsort(key, kind="stable")
            counts = np.bincount(key, minlength=1 << length)
            self.off_start[t] = at
            self.offsets[at] = 0
            np.cumsum(counts, out=self.offsets[at + 1 : at + 1 + counts.size])
            at += (1 << length) + 1
            self.positions[t] = order
            for u in range(nwords):
                np.take(words[:, u], order, out=self.planes[t, u])
        self.build_seconds = time.perf_counter() - t0

    @property
    def nbytes(self) -> int:
        return int(self.offsets.nbytes + self.positions.nbytes + self.planes.nbytes)

    def query_values(self, qw: np.ndarray) -> np.ndarray:
        """int64 (nq, m): each query's substring values."""
        out = np.empty((qw.shape[0], self.m), np.int64)
        for t in range(self.m):
            out[:, t] = _substring_values(qw, int(self.starts[t]), int(self.lengths[t]))
        return out


@INDEXES.register("mih")
class MultiIndexHashingIndex(HammingIndex):
    """Exact k-NN by multi-index hashing (see the module docstring); ``substrings``: ``m``, None = by size."""

    name = "mih"

    def __init__(self, nbits: int, substrings: int | None = None) -> None:
        super().__init__(nbits)
        self.substrings = _check_substrings(substrings, self.nbits)
        self._nwords = (self.nbytes + 7) // 8
        self._tables: _Tables | None = None

    def __repr__(self) -> str:
        return f"{type(self).__name__}(nbits={self.nbits}, substrings={self.substrings}, n={len(self)})"

    def config(self) -> dict[str, Any]:
        """``{"nbits": ..., "substrings": ...}`` (``substrings`` as given: None = chosen from the size)."""
        return {"nbits": self.nbits, "substrings": self.substrings}

    def _changed(self) -> None:
        self._tables = None

    def tables(self) -> _Tables:
        """The substring tables, built now if the index changed since the last search."""
        tables = self._tables
        if tables is None:
            m = self.substrings or choose_substrings(self.nbits, len(self))
            tables = _Tables(_words(self._store.rows, self._nwords), self.nbits, m)
            self._tables = tables
        return tables

    @property
    def table_nbytes(self) -> int:
        """Memory of the substring tables (0 until the first search builds them)."""
        return 0 if self._tables is None else self._tables.nbytes

    def _search(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        from . import _mih_kernels

        _mih_kernels.ensure_compiled()
        tb = self.tables()
        qw = np.ascontiguousarray(_words(q, self._nwords))
        return _mih_kernels.mih_knn(  # type: ignore[no-any-return]
            qw,
            tb.query_values(qw),
            tb.lengths,
            tb.submask,
            tb.offsets,
            tb.off_start,
            tb.positions,
            tb.planes,
            k,
            self.nbits,
        )

    def _range(self, q: np.ndarray, radius: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        from . import _mih_kernels

        _mih_kernels.ensure_compiled()
        tb = self.tables()
        qw = np.ascontiguousarray(_words(q, self._nwords))
        return _mih_kernels.mih_range(  # type: ignore[no-any-return]
            qw, tb.query_values(qw), tb.lengths, tb.submask, tb.offsets, tb.off_start, tb.positions, tb.planes, radius
        )
