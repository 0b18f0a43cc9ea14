"""Numba kernels of the multi-index hashing backend (``mih.py``): probing the substring tables.

Norouzi, Punjani & Fleet, "Fast Exact Search in Hamming Space with Multi-Index Hashing", TPAMI 2014.
A code is cut into ``m`` disjoint substrings; table ``t`` lists, for every value of substring ``t``, the
database codes that have it (CSR: ``offsets`` per value, then the entries: positions, and a copy of the
codes in the same order, as 64-bit word planes, so that verifying a bucket reads memory sequentially).

**Probing order.** Rounds ``r = 0, 1, 2, ...``; in round ``r`` every table is probed at substring
radius exactly ``r``: every value at Hamming distance ``r`` from the query's substring (enumerated with
Gosper's hack). Within a round the tables go in one order per query, ascending size of the query's own
bucket (below, ``t`` is a table's place in that order). A code whose substring distances are
``s_0 .. s_{m-1}`` is met first at step ``(min s, the first t with s_t = min s)``; met again later it is
skipped, so no "seen" array is needed: its substring distances come from the XOR already computed for
its full distance.

**Stopping rule** (the paper's incremental search, with unequal substring lengths allowed): after step
``(r, t)`` a code not yet met has ``s_j >= r + 1`` for ``j <= t`` and ``s_j >= r`` for ``j > t``, so
its distance is at least ``m * r + t + 1``; every code at distance ``<= m * r + t`` has been met.
Once ``k`` codes at distance ``<= thr`` have been met and ``thr <= m * r + t``, the top ``k`` are
certain, ties included (every code at distance ``<= thr`` is among the candidates). A table probed to
its full length has met every code.

**Exactness.** Candidates at distance ``<= thr`` (``thr``: the k-th smallest distance met so far) are
kept; at the end they are sorted by (distance, position), so ties break by position = by id.

**Cost.** On trained codes the work is the buckets' entries, not the probes: many codes share a
substring with the query (about 13,000 of 10^7 replicated SketchMate codes per 21-bit bucket), so a
bucket is verified in pieces of :data:`PIECE` entries: the distances in a vector loop (as the scan's),
a piece skipped whole when its minimum is over the threshold, and the entries within it gathered
without a branch per entry before the (rare) duplicate check.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from ._kernels import _popcount64

#: Entries of a bucket whose distances are computed in one pass (the scratch buffer's size).
PIECE = 2048


@njit(cache=True, nogil=True)
def _piece_dist(planes, q, s0, s1, dbuf, init):  # type: ignore[no-untyped-def]
    """Distances of query ``q`` to codes ``[s0, s1)`` of ``planes`` (w, n) into ``dbuf[:s1 - s0]``; their minimum.

    The scan's ``_kernels._dist`` with the output at the start of a small scratch buffer; a vector loop
    (0-based over slices, see ``_kernels._NOTE_ON_INDEXING``), compiled by :func:`ensure_compiled`.
    """
    w = planes.shape[0]
    m = s1 - s0
    d = dbuf[:m]
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
def _probe(  # type: ignore[no-untyped-def]
    qw, qkey, sub_len, submask, offsets, off_start, tab_pos, tab_planes, k, thr, tighten, buf_d, buf_p, dbuf
):
    """Probe for one query; returns (candidate buffers, fill, thr).

    qw: uint64 (w,) the query; qkey: int64 (m,) its substring values. ``tighten``: lower ``thr`` to the
    k-th smallest distance met (k-NN); otherwise ``thr`` stays (range search) and the probing stops as
    soon as every code at distance ``<= thr`` has been met. The buffers hold ``fill`` candidates (some
    may be at distance ``> thr`` after a tightening). ``dbuf``: int64 (PIECE,) scratch.
    """
    m = sub_len.shape[0]
    w = qw.shape[0]
    init = 64 * w + 1
    hist = np.zeros(64 * w + 1, np.int64)
    surv = np.empty(PIECE, np.int64)
    cnt = 0  # candidates kept with distance <= thr
    fill = 0
    cap = buf_d.shape[0]
    maxlen = 0
    for t in range(m):
        maxlen = max(maxlen, sub_len[t])
    done = False
    # Tables in ascending order of the query's own bucket: where the k-th distance is small the search
    # stops after the first step or two, and reads the smallest buckets. ``rank[t]``: table t's place.
    size0 = np.empty(m, np.int64)
    for t in range(m):
        at = off_start[t] + qkey[t]
        size0[t] = offsets[at + 1] - offsets[at]
    order = np.argsort(size0, kind="mergesort")
    rank = np.empty(m, np.int64)
    for tt in range(m):
        rank[order[tt]] = tt
    for r in range(maxlen + 1):
        for tt in range(m):
            t = order[tt]
            L = sub_len[t]
            if r > L:
                continue
            offs = offsets[off_start[t] : off_start[t] + (np.int64(1) << L) + 1]
            planes = tab_planes[t]
            pos_t = tab_pos[t]
            key = qkey[t]
            limit = np.int64(1) << L
            mask = (np.int64(1) << r) - 1
            while mask < limit:
                v = key ^ mask
                lo = np.int64(offs[v])
                hi = np.int64(offs[v + 1])
                # The bucket's distances, a piece at a time in a vector loop; a piece with none within
                # the threshold is skipped whole.
                for p0 in range(lo, hi, PIECE):
                    p1 = min(hi, p0 + PIECE)
                    if _piece_dist(planes, qw, p0, p1, dbuf, init) > thr:
                        continue  # nothing within the threshold in this piece
                    # The entries within the threshold, gathered without a branch per entry (distances
                    # near the threshold would make one unpredictable); thr may drop as they are taken.
                    nsurv = 0
                    for j in range(p1 - p0):
                        surv[nsurv] = j
                        nsurv += dbuf[j] <= thr
                    for c0 in range(nsurv):
                        e = p0 + surv[c0]
                        d = dbuf[surv[c0]]
                        if d > thr:
                            continue
                        # Met before? Only if another table has a smaller substring distance, or an
                        # equal one and comes earlier (see the module docstring).
                        dup = False
                        for i in range(m):
                            if i == t:
                                continue
                            s = 0
                            for u in range(w):
                                s += _popcount64((qw[u] ^ planes[u, e]) & submask[i, u])
                            if s < r or (s == r and rank[i] < tt):
                                dup = True
                                break
                        if dup:
                            continue
                        if fill == cap:
                            # Drop candidates beyond the threshold; grow if that frees too little.
                            out = 0
                            for c in range(fill):
                                if buf_d[c] <= thr:
                                    buf_d[out] = buf_d[c]
                                    buf_p[out] = buf_p[c]
                                    out += 1
                            fill = out
                            if fill > cap // 2:
                                cap *= 2
                                nd = np.empty(cap, buf_d.dtype)
                                npos = np.empty(cap, buf_p.dtype)
                                nd[:fill] = buf_d[:fill]
                                npos[:fill] = buf_p[:fill]
                                buf_d = nd
                                buf_p = npos
                        buf_d[fill] = d
                        buf_p[fill] = pos_t[e]
                        fill += 1
                        hist[d] += 1
                        cnt += 1
                        if tighten:
                            while thr > 0 and cnt - hist[thr] >= k:
                                cnt -= hist[thr]
                                thr -= 1
                if r == 0:
                    break
                # Gosper's hack: the next integer with the same number of set bits.
                low = mask & -mask
                rr = mask + low
                mask = (((rr ^ mask) >> 2) // low) | rr
            # After step (r, tt): every code at distance <= m * r + tt has been met; a table probed
            # to its full length has met every code.
            if (thr <= m * r + tt and (cnt >= k or not tighten)) or r == L:
                done = True
                break
        if done:
            break
    return buf_d, buf_p, fill, thr


@njit(cache=True, nogil=True)
def _sorted_hits(buf_d, buf_p, fill, thr, k):  # type: ignore[no-untyped-def]
    """The first ``k`` candidates at distance ``<= thr`` by (distance, position): (d int64, p int64).

    Keys ``distance << 40 | position``; the candidates below ``thr`` are fewer than ``k`` (k-NN) and are
    all sorted, but of the ties at ``thr`` (there may be thousands) only the needed smallest positions.
    """
    below = 0
    at = 0
    for j in range(fill):
        if buf_d[j] < thr:
            below += 1
        elif buf_d[j] == thr:
            at += 1
    key = np.empty(below + at, np.int64)
    nb = 0
    na = below
    for j in range(fill):
        d = buf_d[j]
        if d <= thr:
            v = (np.int64(d) << 40) | np.int64(buf_p[j])
            if d < thr:
                key[nb] = v
                nb += 1
            else:
                key[na] = v
                na += 1
    key[:below].sort()
    need = min(at, max(0, k - below))
    ties = key[below:]
    if 0 < need < at:
        ties[:] = np.partition(ties, need - 1)
    ties[:need].sort()
    key = key[: below + need]
    return key >> 40, key & ((np.int64(1) << 40) - 1)


@njit(cache=True, nogil=True)
def mih_knn(qw, qkeys, sub_len, submask, offsets, off_start, tab_pos, tab_planes, k, nbits):  # type: ignore[no-untyped-def]
    """Exact k-NN of each query (uint64 (nq, w), substring values int64 (nq, m)) by probing the tables.

    Returns distances int32 (nq, k) and positions int64 (nq, k), ties by position; missing hits
    (fewer than k codes) are (2**31 - 1, -1).
    """
    nq = qw.shape[0]
    out_d = np.full((nq, k), 2147483647, np.int32)
    out_p = np.full((nq, k), -1, np.int64)
    cap = max(1024, 2 * k)
    buf_d = np.empty(cap, np.int64)
    buf_p = np.empty(cap, np.int64)
    dbuf = np.empty(PIECE, np.int64)
    for i in range(nq):
        tables = (sub_len, submask, offsets, off_start, tab_pos, tab_planes)
        buf_d, buf_p, fill, thr = _probe(qw[i], qkeys[i], *tables, k, nbits, True, buf_d, buf_p, dbuf)
        d, p = _sorted_hits(buf_d, buf_p, fill, thr, k)
        kk = min(k, d.shape[0])
        for j in range(kk):
            out_d[i, j] = d[j]
            out_p[i, j] = p[j]
    return out_d, out_p


@njit(cache=True, nogil=True)
def mih_range(qw, qkeys, sub_len, submask, offsets, off_start, tab_pos, tab_planes, radius):  # type: ignore[no-untyped-def]
    """Every code at distance ``< radius`` from each query: (lims int64 (nq + 1,), d int32, positions int64),
    each query's hits sorted by (distance, position)."""
    nq = qw.shape[0]
    lims = np.zeros(nq + 1, np.int64)
    cap = 1024
    buf_d = np.empty(cap, np.int64)
    buf_p = np.empty(cap, np.int64)
    total = 0
    all_d = np.empty(cap, np.int32)
    all_p = np.empty(cap, np.int64)
    dbuf = np.empty(PIECE, np.int64)
    for i in range(nq):
        fill = 0
        thr = radius - 1
        if radius > 0:
            tables = (sub_len, submask, offsets, off_start, tab_pos, tab_planes)
            buf_d, buf_p, fill, thr = _probe(qw[i], qkeys[i], *tables, 0, thr, False, buf_d, buf_p, dbuf)
        d, p = _sorted_hits(buf_d, buf_p, fill, thr, fill)
        need = total + d.shape[0]
        if need > all_d.shape[0]:
            size = max(need, 2 * all_d.shape[0])
            nd = np.empty(size, np.int32)
            npos = np.empty(size, np.int64)
            nd[:total] = all_d[:total]
            npos[:total] = all_p[:total]
            all_d = nd
            all_p = npos
        for j in range(d.shape[0]):
            all_d[total + j] = d[j]
            all_p[total + j] = p[j]
        total = need
        lims[i + 1] = total
    return lims, all_d[:total].copy(), all_p[:total].copy()


_READY = False


def ensure_compiled() -> None:
    """Compile (or load from numba's cache) :func:`_piece_dist` with LLVM's vector width forced to 8 lanes,
    as ``_kernels.ensure_compiled`` does for the scan's loops (see there why), then put the option back."""
    global _READY
    if _READY:
        return
    import llvmlite.binding as llvm
    from numba import types

    llvm.set_option("", "--force-vector-width=8")
    try:
        _piece_dist.compile(
            (
                types.Array(types.uint64, 2, "C"),
                types.Array(types.uint64, 1, "C"),
                types.int64,
                types.int64,
                types.Array(types.int64, 1, "C"),
                types.int64,
            )
        )
    finally:
        llvm.set_option("", "--force-vector-width=0")
    _READY = True
