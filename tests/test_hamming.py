"""Every Hamming backend returns exactly what a brute-force popcount oracle returns, ties included."""

from __future__ import annotations

import numpy as np
import pytest

from sketchsearch.errors import IndexArgumentError
from sketchsearch.index import create_index, list_indexes
from sketchsearch.index.base import INDEXES
from sketchsearch.index.dense import DenseIndex
from sketchsearch.index.hamming import MISSING_DISTANCE, HammingIndex, knn_hamming

#: The Hamming backends of the one registry (it also holds the dense index).
BACKENDS = [
    name
    for name in list_indexes()
    if issubclass(INDEXES.get(name), HammingIndex)  # type: ignore[arg-type]
]


def hamming(a: np.ndarray, b: np.ndarray) -> int:
    return sum((int(x) ^ int(y)).bit_count() for x, y in zip(a.tolist(), b.tolist()))


def oracle_knn(q: np.ndarray, xb: np.ndarray, ids: np.ndarray, k: int) -> list[list[tuple[int, int]]]:
    """Sort the whole database by (distance, id) with Python ints and take the first k."""
    return [sorted((hamming(qq, x), int(i)) for x, i in zip(xb, ids))[:k] for qq in q]


def as_pairs(d: np.ndarray, ids: np.ndarray) -> list[list[tuple[int, int]]]:
    return [[(int(a), int(b)) for a, b in zip(dr, ir) if b >= 0] for dr, ir in zip(d, ids)]


def test_registry_lists_the_three_backends() -> None:
    assert {"numba", "faiss", "numpy"} <= set(BACKENDS)
    with pytest.raises(ValueError, match="valid names: .*faiss"):
        create_index("nope", nbits=64)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("nbits, n, k", [(16, 700, 25), (64, 500, 40), (128, 300, 17), (256, 200, 9), (24, 300, 5)])
def test_knn_matches_oracle_with_ties(backend: str, nbits: int, n: int, k: int, rng: np.random.Generator) -> None:
    # 16 bits over 700 codes: many equal distances, so the id tie-break is exercised at the k-th hit.
    xb = rng.integers(0, 256, size=(n, nbits // 8), dtype=np.uint8)
    xb[5:40] = xb[0]  # exact duplicates: ties at distance 0 too
    ids = rng.permutation(10 * n)[:n].astype(np.int64)  # ids not in insertion order
    q = np.concatenate([rng.integers(0, 256, size=(18, nbits // 8), dtype=np.uint8), xb[:3]])
    index = create_index(backend, nbits=nbits)
    index.add(xb[: n // 2], ids[: n // 2])
    index.add(xb[n // 2 :], ids[n // 2 :])  # second add interleaves ids with the first
    d, got = index.search(q, k)
    assert d.dtype == np.int32 and got.dtype == np.int64 and d.shape == got.shape == (len(q), k)
    assert as_pairs(d, got) == oracle_knn(q, xb, ids, k)


@pytest.mark.parametrize("backend", BACKENDS)
def test_k_larger_than_n_pads(backend: str, rng: np.random.Generator) -> None:
    xb = rng.integers(0, 256, size=(4, 8), dtype=np.uint8)
    index = create_index(backend, nbits=64)
    index.add(xb, np.array([7, 3, 9, 1]))
    d, ids = index.search(xb[:2], 6)
    assert (ids[:, 4:] == -1).all() and (d[:, 4:] == MISSING_DISTANCE).all()
    assert sorted(ids[0, :4].tolist()) == [1, 3, 7, 9]
    assert ids[0, 0] == 7 and d[0, 0] == 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_remove_and_empty(backend: str, rng: np.random.Generator) -> None:
    xb = rng.integers(0, 256, size=(50, 2), dtype=np.uint8)
    index = create_index(backend, nbits=16)
    index.add(xb)
    q = xb[:5]
    index.search(q, 3)  # builds any derived state, which remove must invalidate
    assert index.remove([0, 1, 2, 999]) == 3
    assert len(index) == 47
    d, ids = index.search(q, 10)
    assert not np.isin(ids, [0, 1, 2]).any()
    keep = np.arange(3, 50)
    assert as_pairs(d, ids) == oracle_knn(q, xb[3:], keep, 10)
    index.remove(index.ids)
    d, ids = index.search(q, 2)
    assert (ids == -1).all()


#: backends that refuse range search (with an error naming ``radius``)
NO_RANGE = {"milvus"}


@pytest.mark.parametrize("backend", BACKENDS)
def test_range_search_matches_oracle(backend: str, rng: np.random.Generator) -> None:
    xb = rng.integers(0, 256, size=(400, 2), dtype=np.uint8)
    ids = rng.permutation(4000)[:400]
    index = create_index(backend, nbits=16)
    index.add(xb, ids)
    q = rng.integers(0, 256, size=(6, 2), dtype=np.uint8)
    if backend in NO_RANGE:
        with pytest.raises(IndexArgumentError, match="radius: range search is not offered"):
            index.range_search(q, 6)
        return
    lims, d, got = index.range_search(q, 6)  # distance < 6, as faiss
    assert lims.dtype == np.int64 and d.dtype == np.int32 and got.dtype == np.int64
    for i, qq in enumerate(q):
        want = sorted((hamming(qq, x), int(j)) for x, j in zip(xb, ids) if hamming(qq, x) < 6)
        assert list(zip(d[lims[i] : lims[i + 1]].tolist(), got[lims[i] : lims[i + 1]].tolist())) == want


@pytest.mark.parametrize("backend", BACKENDS)
def test_bad_input_is_a_clear_error(backend: str) -> None:
    index = create_index(backend, nbits=64)
    with pytest.raises(IndexArgumentError, match=r"\(n, 8\)"):
        index.add(np.zeros((2, 7), np.uint8))
    index.add(np.zeros((2, 8), np.uint8))
    with pytest.raises(IndexArgumentError, match="already in the index"):
        index.add(np.zeros((1, 8), np.uint8), np.array([1]))
    with pytest.raises(IndexArgumentError, match="more than once"):
        index.add(np.zeros((2, 8), np.uint8), np.array([5, 5]))
    with pytest.raises(IndexArgumentError) as e:
        index.search(np.zeros((1, 16), np.uint8), 1)
    assert e.value.field == "queries"
    with pytest.raises(IndexArgumentError, match="k must be"):
        index.search(np.zeros((1, 8), np.uint8), 0)
    assert len(index) == 2  # failed adds added nothing


def test_knn_hamming_function(rng: np.random.Generator) -> None:
    xb = rng.integers(0, 256, size=(300, 2), dtype=np.uint8)
    q = rng.integers(0, 256, size=(4, 2), dtype=np.uint8)
    d, pos = knn_hamming(q, xb, 12)
    assert as_pairs(d, pos) == oracle_knn(q, xb, np.arange(300), 12)


def test_dense_index_cosine_and_ties(rng: np.random.Generator) -> None:
    x = rng.normal(size=(60, 8)).astype(np.float32)
    x[10:20] = x[3] * 2.0  # same direction: equal cosine similarity -> ties broken by id
    ids = rng.permutation(600)[:60]
    index = DenseIndex(8)
    index.add(x, ids)
    s, got = index.search(x[3:4] * 5.0, 15)
    assert s.dtype == np.float32 and got.dtype == np.int64
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    sims = (xn @ xn[3]).astype(np.float64)
    want = sorted(zip(np.round(-sims, 5).tolist(), ids.tolist()))[:15]
    assert [int(i) for i in got[0]] == [i for _, i in want]
    np.testing.assert_allclose(s[0], [-v for v, _ in want], atol=1e-5)
    index.remove(ids[:50])
    s, got = index.search(x[:1], 15)
    assert (got[0, 10:] == -1).all() and np.isneginf(s[0, 10:]).all()
    with pytest.raises(IndexArgumentError, match=r"\(n, 8\)"):
        index.add(np.zeros((1, 7), np.float32))


@pytest.mark.parametrize("nbits, n, k", [(192, 400, 30), (1024, 300, 12), (200, 250, 7), (256, 5, 9)])
def test_numba_row_scan_of_few_wide_queries_matches_the_oracle_and_the_plane_scan(
    nbits: int, n: int, k: int, rng: np.random.Generator
) -> None:
    """Few queries of >= 3 words take the row-by-row kernel (knn_rows): same hits, ties by id, padding; and
    when that kernel is chosen."""
    from sketchsearch.index import _kernels
    from sketchsearch.index.hamming import _words

    base = rng.integers(0, 256, size=(1, nbits // 8), dtype=np.uint8)
    flips = rng.random((n, nbits // 8)) < 0.02  # near one code: many equal distances at the k-th hit
    xb = np.where(flips, rng.integers(0, 256, size=(n, nbits // 8), dtype=np.uint8), base).astype(np.uint8)
    xb[3:9] = xb[1]  # exact duplicates
    ids = rng.permutation(10 * n)[:n].astype(np.int64)
    index = create_index("numba", nbits=nbits)
    index.add(xb, ids)
    for q in (base, xb[1:2], np.concatenate([base, xb[2:4]])):
        d, got = index.search(q, k)
        assert as_pairs(d, got) == oracle_knn(q, xb, ids, k)
        if k > n:
            assert (got[:, n:] == -1).all() and (d[:, n:] == MISSING_DISTANCE).all()
    nw = (nbits // 8 + 7) // 8
    qw, db = _words(xb[:2], nw), _words(index.codes, nw)
    _kernels.ensure_compiled()
    for a, b in zip(_kernels.knn_rows(qw, db, k, nbits), _kernels.knn_scan(qw, db, k, nbits)):
        np.testing.assert_array_equal(a, b)
    # rows for up to half as many queries as words (16 words: 8), planes beyond, never for narrow codes
    assert _kernels.rows_pay(8, 16) and not _kernels.rows_pay(9, 16) and _kernels.rows_pay(2, 4)
    assert not _kernels.rows_pay(3, 4) and not _kernels.rows_pay(1, 2) and _kernels.rows_pay(1, 3)
