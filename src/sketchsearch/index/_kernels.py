"""Numba kernels for the exact Hamming scan of the ``"numba"`` backend (formerly ``"sketchsearch"``).

Hand-written because no installed library does what we need: faiss's ``IndexBinaryFlat`` scans one
database code at a time with a scalar popcount and a heap (about 0.65 ms per query over 10^6 64-bit
codes on one core) and does not break ties by id. These kernels

* compute distances for a chunk of database codes at a time in a loop that LLVM vectorises (on a CPU
  with AVX-512 VPOPCNTDQ this becomes ``vpxorq`` + ``vpopcntq``), for a block of queries per pass
  over the database so the chunk stays in L1 cache;
* keep, per query, a small buffer of candidate hits and a threshold: a chunk is read a second time only
  when one of its distances is under the threshold (rare once the buffer has filled once);
* shrink the buffer by a counting pass over distance buckets (distances lie in ``0..nbits``).

Ties: the database is stored in ascending id order (``HammingIndex`` keeps it so), candidates enter the
buffer in scan order, the shrink step keeps the *earliest* candidates at the boundary distance and
later candidates need a strictly smaller distance, and the final counting sort is stable. So the
result is exactly the first ``k`` of the database sorted by (distance, id), ties included.

``knn_scan`` is ``knn_scan_live`` without its two extras, which the ``"sharded"`` backend uses: rows
marked dead (tombstones) never enter a buffer, and a per-query ``bound`` shared by the scans of several
blocks of rows (other shards, other threads) prunes rows that cannot be among the k best of their union.

Indexing (_NOTE_ON_INDEXING): numba wraps negative indices, so ``a[j]`` with ``j`` from ``range(s0, s1)``
(which LLVM cannot prove non-negative) compiles to an index fix-up per element and turns the vector loop
into ``vpgatherqq`` gathers, about 5x slower. Every hot loop here therefore runs ``range(len(seg))``
over a slice ``seg = a[s0:s1]``, which vectorises to plain loads.

Importing this module imports numba, which costs about half a second; ``hamming.py`` imports it
lazily, on the first search. ``cache=True`` keeps the compiled code on disk between runs.
"""

from __future__ import annotations

import numpy as np
from numba import njit, types
from numba.extending import intrinsic

#: Bytes of database codes per chunk (kept in L1 cache while a block of queries scans it).
CHUNK_BYTES = 16384
#: Codes per sub-block: the unit at which a query's running minimum is checked against its threshold.
SUB = 512
#: Piece size of the slow path (a query whose minimum over a sub-block is under its threshold).
SUB2 = 128
#: Queries that share one pass over the database.
QUERY_BLOCK = 16


@intrinsic
def _popcount64(typingctx, x):  # type: ignore[no-untyped-def]
    """``llvm.ctpop.i64``: numba has no popcount of its own (``np.bitwise_count`` is not supported)."""
    if not isinstance(x, types.Integer) or x.bitwidth != 64:
        return None
    sig = types.int64(x)

    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        return builder.ctpop(args[0])

    return sig, codegen


@njit(cache=True, nogil=True)
def _shrink(cand_pos, cand_d, fill, k, nbits):  # type: ignore[no-untyped-def]
    """Keep the first ``k`` candidates by (distance, scan order); return (new fill, accept threshold).

    ``cand_pos``/``cand_d`` hold ``fill`` candidates in scan order. Afterwards they hold
    ``min(fill, k)`` candidates, still in scan order, and later candidates must have a distance
    ``<= threshold`` (strictly below the boundary distance) to enter.
    """
    if fill <= k:
        return fill, nbits
    hist = np.zeros(nbits + 2, np.int64)
    for i in range(fill):
        hist[cand_d[i]] += 1
    cum = 0
    t = 0
    for t in range(nbits + 1):
        if cum + hist[t] >= k:
            break
        cum += hist[t]
    # cum = number of candidates with distance < t; keep all of them and the first k - cum at t.
    room_at_t = k - cum
    out = 0
    for i in range(fill):
        d = cand_d[i]
        if d < t or (d == t and room_at_t > 0):
            if d == t:
                room_at_t -= 1
            cand_pos[out] = cand_pos[i]
            cand_d[out] = d
            out += 1
    return out, t - 1


@njit(cache=True, nogil=True)
def _finish(cand_pos, cand_d, fill, k, nbits, out_d, out_p):  # type: ignore[no-untyped-def]
    """Stable counting sort of the kept candidates by distance into ``out_d``/``out_p`` (padded)."""
    fill, _ = _shrink(cand_pos, cand_d, fill, k, nbits)
    start = np.zeros(nbits + 2, np.int64)
    for i in range(fill):
        start[cand_d[i] + 1] += 1
    for t in range(1, nbits + 2):
        start[t] += start[t - 1]
    for i in range(fill):
        d = cand_d[i]
        j = start[d]
        start[d] += 1
        out_d[j] = d
        out_p[j] = cand_pos[i]
    for j in range(fill, k):
        out_d[j] = 2147483647
        out_p[j] = -1


@njit(cache=True, nogil=True)
def _min4_w1(p0, s0, s1, a0, a1, a2, a3, init):  # type: ignore[no-untyped-def]
    """Minimum distance of 4 one-word queries over ``p0[s0:s1]`` (one load serves four queries)."""
    m0 = init
    m1 = init
    m2 = init
    m3 = init
    seg = p0[s0:s1]
    for j in range(seg.shape[0]):  # 0-based over a slice: see _NOTE_ON_INDEXING
        x = seg[j]
        m0 = min(m0, _popcount64(a0 ^ x))
        m1 = min(m1, _popcount64(a1 ^ x))
        m2 = min(m2, _popcount64(a2 ^ x))
        m3 = min(m3, _popcount64(a3 ^ x))
    return m0, m1, m2, m3


@njit(cache=True, nogil=True)
def _min4_w2(p0, p1, s0, s1, a0, a1, a2, a3, b0, b1, b2, b3, init):  # type: ignore[no-untyped-def]
    """Minimum distance of 4 two-word queries over planes ``p0, p1`` in ``[s0, s1)``."""
    m0 = init
    m1 = init
    m2 = init
    m3 = init
    seg0 = p0[s0:s1]
    seg1 = p1[s0:s1]
    for j in range(seg0.shape[0]):  # 0-based over slices: see _NOTE_ON_INDEXING
        x = seg0[j]
        y = seg1[j]
        m0 = min(m0, _popcount64(a0 ^ x) + _popcount64(b0 ^ y))
        m1 = min(m1, _popcount64(a1 ^ x) + _popcount64(b1 ^ y))
        m2 = min(m2, _popcount64(a2 ^ x) + _popcount64(b2 ^ y))
        m3 = min(m3, _popcount64(a3 ^ x) + _popcount64(b3 ^ y))
    return m0, m1, m2, m3


@njit(cache=True, nogil=True)
def _min1(planes, q, s0, s1, dbuf, init):  # type: ignore[no-untyped-def]
    """Minimum distance of one query ``q`` (uint64 (w,)) over the chunk's codes ``[s0, s1)``."""
    w = planes.shape[0]
    m = s1 - s0
    mn = init
    # 0-based loops over slices throughout: see _NOTE_ON_INDEXING
    if w == 1:
        p0 = planes[0, s0:s1]
        a = q[0]
        for j in range(m):
            mn = min(mn, _popcount64(a ^ p0[j]))
    elif w == 2:
        p0 = planes[0, s0:s1]
        p1 = planes[1, s0:s1]
        a = q[0]
        b = q[1]
        for j in range(m):
            mn = min(mn, _popcount64(a ^ p0[j]) + _popcount64(b ^ p1[j]))
    else:
        mn = _dist(planes, q, s0, s1, dbuf, init)
    return mn


@njit(cache=True, nogil=True)
def _dist(planes, q, s0, s1, dbuf, init):  # type: ignore[no-untyped-def]
    """Exact distances of query ``q`` to the chunk's codes ``[s0, s1)`` into ``dbuf[s0:s1]``; their minimum."""
    w = planes.shape[0]
    m = s1 - s0
    d = dbuf[s0:s1]
    p0 = planes[0, s0:s1]
    a = q[0]
    for j in range(m):
        d[j] = _popcount64(a ^ p0[j])
    for u in range(1, w):
        pu = planes[u, s0:s1]
        a = q[u]
        for j in range(m):
            d[j] += _popcount64(a ^ pu[j])
    mn = init
    for j in range(m):
        mn = min(mn, d[j])
    return mn


@njit(cache=True, nogil=True)
def knn_scan(xq, xb, k, nbits):  # type: ignore[no-untyped-def]
    """Exact k nearest codes by Hamming distance, ties by position.

    xq: uint64 (nq, w) queries; xb: uint64 (n, w) database (codes zero-padded to whole 64-bit words),
    C-contiguous; k >= 1; nbits: code length (upper bound of a distance). Returns distances int32
    (nq, k) and positions int64 (nq, k); missing hits are (2**31 - 1, -1).
    """
    return knn_scan_live(xq, xb, np.zeros(0, np.bool_), k, nbits, np.zeros(0, np.int64))


ROWS_MIN_WORDS = 3
"""Codes of at least this many 64-bit words may be searched row by row (:func:`knn_rows`, see
:func:`rows_pay`): :func:`knn_scan` copies each chunk into word planes to share it between a block of
queries, which a lone query of wide codes pays for alone (one 1,024-bit query over 10^6 codes: ~55 ms in
planes, ~11 ms row by row, on the 2-core EPYC box)."""


def rows_pay(nq: int, nwords: int) -> bool:
    """Whether ``nq`` queries of ``nwords``-word codes are searched faster row by row than in word planes.

    Measured (one thread, 10^6 random codes, k = 10, ms per query rows / planes): 1,024 bits (16 words) at
    1 / 4 / 8 / 12 queries 10.8 / 55, 6.5 / 12.8, 7.3 / 8.1, 7.7 / 5.8; 256 bits (4 words) at 1 / 2 / 4
    queries 3.3 / 7.8, 3.4 / 3.9, 3.8 / 2.2. The planes win once there are more queries than half the words
    (a batch of the service's searches is often 4-8 queries of sketch-gan's 1,024-bit codes)."""
    return nwords >= ROWS_MIN_WORDS and nq <= nwords // 2


@njit(cache=True, nogil=True)
def knn_rows(xq, xb, k, nbits):  # type: ignore[no-untyped-def]
    """:func:`knn_scan`'s exact result (the first ``k`` by (distance, position), missing hits
    ``(2**31 - 1, -1)``) computed one query at a time over whole rows: every distance into a buffer and a
    histogram of them, then one pass placing each row of distance ``<=`` the k-th smallest in its rank
    (rows are visited in position order, so ties keep position order)."""
    nq, w = xq.shape
    n = xb.shape[0]
    out_d = np.full((nq, k), 2147483647, np.int32)
    out_p = np.full((nq, k), -1, np.int64)
    d = np.empty(n, np.int64)
    hist = np.zeros(nbits + 1, np.int64)
    start = np.zeros(nbits + 1, np.int64)
    kk = min(k, n)
    if kk == 0:
        return out_d, out_p
    for i in range(nq):
        hist[:] = 0
        q = xq[i]
        for j in range(n):
            row = xb[j]
            s = 0
            for u in range(w):
                s += _popcount64(q[u] ^ row[u])
            d[j] = s
            hist[s] += 1
        cum = 0
        top = nbits
        for t in range(nbits + 1):
            start[t] = cum
            if cum + hist[t] >= kk:
                top = t
                break
            cum += hist[t]
        for j in range(n):
            t = d[j]
            if t <= top:
                slot = start[t]
                if slot < kk:
                    out_d[i, slot] = t
                    out_p[i, slot] = j
                    start[t] = slot + 1
    return out_d, out_p


@njit(cache=True, nogil=True)
def knn_scan_live(xq, xb, dead, k, nbits, bound):  # type: ignore[no-untyped-def]
    """:func:`knn_scan` over the rows of ``xb`` not marked in ``dead``, pruned by a shared ``bound``.

    ``dead``: bool (n,), or empty (every row is live). A dead row still takes part in the fast path's
    minimum (a lower bound, so nothing is missed) but never enters a query's buffer.

    ``bound``: int64 (nq,), or empty (none). ``bound[i]`` says that ``k`` rows *somewhere* (this scan or
    another one sharing the array: other blocks of rows, other threads) are at distance ``<= bound[i]``
    from query ``i``, so a row farther than that cannot be among the ``k`` best of the union; rows at
    exactly ``bound[i]`` are kept (their ids may be below those others'). The scan reads it at every
    sub-block and lowers it whenever its own buffer proves a smaller one. Every value ever written is a
    true bound, so a stale read or a lost update between threads only prunes less (aligned 64-bit loads
    and stores are not torn); the results stay exact.

    Result: the first ``k`` live rows by (distance, position) among those within the bound, padded with
    missing hits; with several blocks of rows sharing ``bound``, merging their results by (distance, id)
    gives exactly the first ``k`` of their union. Both checks sit off the fast path's inner loops, so the
    scan without them (:func:`knn_scan`) runs as fast as before.
    """
    nq, w = xq.shape
    n = xb.shape[0]
    has_dead = dead.shape[0] > 0
    has_bound = bound.shape[0] > 0
    out_d = np.empty((nq, k), np.int32)
    out_p = np.empty((nq, k), np.int64)
    if nq == 0:
        return out_d, out_p
    chunk = max(SUB, (CHUNK_BYTES // (8 * w)) // SUB * SUB)
    cap = k + max(64, k // 2)
    cand_pos = np.empty((QUERY_BLOCK, cap), np.int64)
    cand_d = np.empty((QUERY_BLOCK, cap), np.int32)
    fill = np.zeros(QUERY_BLOCK, np.int64)
    thr = np.zeros(QUERY_BLOCK, np.int64)
    planes = np.empty((w, chunk), np.uint64)  # the chunk, one row per 64-bit word
    dbuf = np.empty(chunk, np.int64)
    xb_flat = xb.reshape(-1)
    init = nbits + 1
    for q0 in range(0, nq, QUERY_BLOCK):
        nblk = min(nq - q0, QUERY_BLOCK)
        fill[:] = 0
        thr[:] = nbits
        for c0 in range(0, n, chunk):
            m = min(n, c0 + chunk) - c0
            # Copy the chunk into word planes (numba's strided slice assignment is slow: plain loops,
            # 0-based over a slice of the source, see _NOTE_ON_INDEXING).
            src = xb_flat[c0 * w : (c0 + m) * w]
            if w == 1:
                dst = planes[0]
                for j in range(m):
                    dst[j] = src[j]
            else:
                for j in range(m):
                    for u in range(w):
                        planes[u, j] = src[j * w + u]
            for s0 in range(0, m, SUB):
                s1 = min(m, s0 + SUB)
                for g in range(0, nblk, 4):
                    # Fast path: each query's minimum distance over the sub-block, four queries per
                    # load (rows past the block's end repeat its last query). Wide codes skip it.
                    i0 = q0 + g
                    i1 = q0 + min(g + 1, nblk - 1)
                    i2 = q0 + min(g + 2, nblk - 1)
                    i3 = q0 + min(g + 3, nblk - 1)
                    if w == 1:
                        r = _min4_w1(planes[0], s0, s1, xq[i0, 0], xq[i1, 0], xq[i2, 0], xq[i3, 0], init)
                    elif w == 2:
                        r = _min4_w2(
                            planes[0],
                            planes[1],
                            s0,
                            s1,
                            xq[i0, 0],
                            xq[i1, 0],
                            xq[i2, 0],
                            xq[i3, 0],
                            xq[i0, 1],
                            xq[i1, 1],
                            xq[i2, 1],
                            xq[i3, 1],
                            init,
                        )
                    else:
                        r = (
                            _min1(planes, xq[i0], s0, s1, dbuf, init),
                            _min1(planes, xq[i1], s0, s1, dbuf, init),
                            _min1(planes, xq[i2], s0, s1, dbuf, init),
                            _min1(planes, xq[i3], s0, s1, dbuf, init),
                        )
                    for rr in range(4):
                        qi = g + rr
                        if qi >= nblk:
                            continue
                        if has_bound and bound[q0 + qi] < thr[qi]:
                            thr[qi] = bound[q0 + qi]
                        if r[rr] > thr[qi]:
                            continue
                        # Slow path (rare once the threshold is tight): this query alone, in pieces of
                        # SUB2 codes; exact distances of the pieces that hold a hit go to the buffer.
                        iq = q0 + qi
                        acc = thr[qi]
                        f = fill[qi]
                        for t0 in range(s0, s1, SUB2):
                            t1 = min(s1, t0 + SUB2)
                            if _dist(planes, xq[iq], t0, t1, dbuf, init) > acc:
                                continue
                            dseg = dbuf[t0:t1]
                            for j in range(t1 - t0):
                                d = dseg[j]
                                if d <= acc:
                                    if has_dead and dead[c0 + t0 + j]:
                                        continue
                                    cand_pos[qi, f] = c0 + t0 + j
                                    cand_d[qi, f] = d
                                    f += 1
                                    if f == cap:
                                        f, acc = _shrink(cand_pos[qi], cand_d[qi], f, k, nbits)
                                        if has_bound:  # k rows at <= acc + 1: tell the other scans
                                            bound[iq] = min(bound[iq], acc + 1)
                                            acc = min(acc, bound[iq])
                        fill[qi] = f
                        thr[qi] = acc
        for qi in range(nblk):
            _finish(cand_pos[qi], cand_d[qi], fill[qi], k, nbits, out_d[q0 + qi], out_p[q0 + qi])
            if has_bound and out_p[q0 + qi, k - 1] >= 0 and out_d[q0 + qi, k - 1] < bound[q0 + qi]:
                bound[q0 + qi] = out_d[q0 + qi, k - 1]
    return out_d, out_p


@njit(cache=True, nogil=True)
def range_scan(xq, xb, radius):  # type: ignore[no-untyped-def]
    """All database codes at Hamming distance ``< radius`` (faiss's convention) from each query.

    Returns lims int64 (nq + 1,), distances int32 and positions int64 (lims[-1],), query i's hits in
    ``[lims[i], lims[i+1])`` in scan order (the caller sorts them by (distance, id)).
    """
    nq, w = xq.shape
    n = xb.shape[0]
    lims = np.zeros(nq + 1, np.int64)
    cap = 1024
    out_d = np.empty(cap, np.int32)
    out_p = np.empty(cap, np.int64)
    total = 0
    for qi in range(nq):
        for j in range(n):
            d = 0
            for u in range(w):
                d += _popcount64(xq[qi, u] ^ xb[j, u])
            if d < radius:
                if total == cap:
                    cap *= 2
                    nd = np.empty(cap, np.int32)
                    npos = np.empty(cap, np.int64)
                    nd[:total] = out_d[:total]
                    npos[:total] = out_p[:total]
                    out_d = nd
                    out_p = npos
                out_d[total] = d
                out_p[total] = j
                total += 1
        lims[qi + 1] = total
    return lims, out_d[:total].copy(), out_p[:total].copy()


_READY = False


def ensure_compiled() -> None:
    """Compile (or load from numba's on-disk cache) the kernels once per process.

    The distance loops are compiled with LLVM's vector width forced to 8 lanes: LLVM otherwise prefers
    256-bit vectors on Intel CPUs, and 512-bit ``vpopcntq`` nearly halves the scan time where the CPU
    has AVX-512 VPOPCNTDQ (elsewhere 8 lanes are split into narrower registers, which is harmless).
    The LLVM option is process-wide, so it is set only while those small helpers compile and put
    back to its default (0 = let LLVM choose) straight after.
    """
    global _READY
    if _READY:
        return
    import llvmlite.binding as llvm

    u64 = types.Array(types.uint64, 1, "C")
    u64_2d = types.Array(types.uint64, 2, "C")
    i64 = types.int64
    llvm.set_option("", "--force-vector-width=8")
    try:
        _min4_w1.compile((u64, i64, i64) + (types.uint64,) * 4 + (i64,))
        _min4_w2.compile((u64, u64, i64, i64) + (types.uint64,) * 8 + (i64,))
        _min1.compile((u64_2d, u64, i64, i64, types.Array(types.int64, 1, "C"), i64))
        _dist.compile((u64_2d, u64, i64, i64, types.Array(types.int64, 1, "C"), i64))
    finally:
        llvm.set_option("", "--force-vector-width=0")
    _READY = True
