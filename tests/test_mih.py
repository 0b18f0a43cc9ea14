"""Multi-index hashing (``index/mih.py``) is exact: the same ids and distances as the popcount oracle (the
``numpy`` backend), ties by id, on random codes and on clustered codes full of ties, for several code
lengths and substring counts, k beyond n, after add and remove, in range search, and after save + load."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from sketchsearch.errors import IndexArgumentError
from sketchsearch.index import MISSING_DISTANCE, create_index
from sketchsearch.index.mih import MAX_SUBSTRING_BITS, MultiIndexHashingIndex, choose_substrings
from sketchsearch.index.store import load_index, save_index


def random_codes(rng: np.random.Generator, n: int, nbits: int) -> np.ndarray:
    return rng.integers(0, 256, size=(n, nbits // 8), dtype=np.uint8)


def clustered_codes(rng: np.random.Generator, n: int, nbits: int, centres: int = 5, flip: float = 0.04) -> np.ndarray:
    """A few distinct centres, each copied many times: half exact duplicates (ties), half with a few bits flipped."""
    base = random_codes(rng, centres, nbits)
    bits = np.unpackbits(base, axis=1)[rng.integers(0, centres, n)]
    noisy = rng.random(bits.shape) < flip
    noisy[: n // 2] = False
    return np.packbits(bits ^ noisy, axis=1)


def queries_for(rng: np.random.Generator, xb: np.ndarray) -> np.ndarray:
    """Random queries, database codes themselves, and database codes with a few bits flipped."""
    nbits = 8 * xb.shape[1]
    near = np.unpackbits(xb[rng.integers(0, len(xb), 4)], axis=1) ^ (rng.random((4, nbits)) < 0.1)
    return np.concatenate([random_codes(rng, 4, nbits), xb[rng.integers(0, len(xb), 3)], np.packbits(near, axis=1)])


def pair(nbits: int, substrings: int | None = None) -> tuple[MultiIndexHashingIndex, object]:
    index = create_index("mih", nbits=nbits, substrings=substrings)
    assert isinstance(index, MultiIndexHashingIndex)
    return index, create_index("numpy", nbits=nbits)


def assert_same_search(index: object, oracle: object, q: np.ndarray, ks: tuple[int, ...]) -> None:
    for k in ks:
        d, i = index.search(q, k)  # type: ignore[attr-defined]
        od, oi = oracle.search(q, k)  # type: ignore[attr-defined]
        assert d.dtype == np.int32 and i.dtype == np.int64 and d.shape == i.shape == (len(q), k)
        np.testing.assert_array_equal(d, od, err_msg=f"distances, k={k}")
        np.testing.assert_array_equal(i, oi, err_msg=f"ids, k={k}")


def assert_same_range(index: object, oracle: object, q: np.ndarray, radii: tuple[int, ...]) -> None:
    for radius in radii:
        got = index.range_search(q, radius)  # type: ignore[attr-defined]
        want = oracle.range_search(q, radius)  # type: ignore[attr-defined]
        for name, a, b in zip(("lims", "distances", "ids"), got, want):
            np.testing.assert_array_equal(a, b, err_msg=f"{name}, radius={radius}")


@pytest.mark.parametrize("nbits", [8, 32, 64, 128, 256])
@pytest.mark.parametrize("kind", ["random", "clustered"])
def test_knn_and_range_equal_the_popcount_oracle(nbits: int, kind: str, rng: np.random.Generator) -> None:
    n = 1500
    xb = random_codes(rng, n, nbits) if kind == "random" else clustered_codes(rng, n, nbits)
    q = queries_for(rng, xb)
    index, oracle = pair(nbits)
    ids = rng.permutation(10 * n)[:n]  # not in insertion order
    index.add(xb, ids)
    oracle.add(xb, ids)  # type: ignore[attr-defined]
    assert_same_search(index, oracle, q, (1, 10, 100, 400, n + 7))  # 400: beyond a cluster's ties; k > n pads
    assert_same_range(index, oracle, q, (0, 1, nbits // 8, nbits // 4, nbits // 2 + 1, nbits + 1))
    assert index.tables().m == choose_substrings(nbits, n)


@pytest.mark.parametrize(("nbits", "substrings"), [(64, 1 + 64 // MAX_SUBSTRING_BITS), (64, 5), (64, 64), (128, 6)])
def test_any_number_of_substrings_is_exact(nbits: int, substrings: int, rng: np.random.Generator) -> None:
    """Uneven substring lengths (64 / 5), one bit per table, substrings across a 64-bit word (128 / 6)."""
    xb = clustered_codes(rng, 800, nbits, centres=3)
    index, oracle = pair(nbits, substrings)
    index.add(xb)
    oracle.add(xb)  # type: ignore[attr-defined]
    q = queries_for(rng, xb)
    assert_same_search(index, oracle, q, (1, 50, 300))
    assert_same_range(index, oracle, q, (3, nbits // 4))
    assert index.tables().m == substrings and int(index.tables().lengths.sum()) == nbits


def test_k_beyond_n_and_tiny_indexes(rng: np.random.Generator) -> None:
    for n in (1, 2, 5):
        xb = random_codes(rng, n, 64)
        index, oracle = pair(64)
        index.add(xb)
        oracle.add(xb)  # type: ignore[attr-defined]
        assert_same_search(index, oracle, queries_for(rng, xb), (1, n, n + 3))
    d, i = index.search(xb[:1], 8)
    assert (i[0, 5:] == -1).all() and (d[0, 5:] == MISSING_DISTANCE).all()
    empty = create_index("mih", nbits=64)
    d, i = empty.search(xb, 3)
    assert (i == -1).all() and (d == MISSING_DISTANCE).all()


def test_add_and_remove_rebuild_the_tables(rng: np.random.Generator) -> None:
    index, oracle = pair(64)
    xb = clustered_codes(rng, 2000, 64)
    ids = rng.permutation(4000)[:2000]
    index.add(xb[:1000], ids[:1000])
    oracle.add(xb[:1000], ids[:1000])  # type: ignore[attr-defined]
    q = queries_for(rng, xb)
    assert_same_search(index, oracle, q, (20, 200))
    first = index.tables()
    index.add(xb[1000:], ids[1000:])  # ids interleave with the first add's
    oracle.add(xb[1000:], ids[1000:])  # type: ignore[attr-defined]
    assert index.table_nbytes == 0  # dropped; the next search rebuilds
    assert_same_search(index, oracle, q, (20, 200))
    assert index.tables() is not first and index.tables().positions.shape[1] == 2000
    gone = ids[::3]
    assert index.remove(gone) == oracle.remove(gone) == len(gone)  # type: ignore[attr-defined]
    assert not np.isin(index.search(q, 300)[1], gone).any()
    assert_same_search(index, oracle, q, (1, 20, 300, 2000))
    assert_same_range(index, oracle, q, (5, 20))
    assert index.add(xb[:2]).tolist() == [int(ids.max()) + 1, int(ids.max()) + 2]


def test_save_and_load_give_identical_results(rng: np.random.Generator, tmp_path: Path) -> None:
    index = create_index("mih", nbits=64)
    xb = clustered_codes(rng, 1200, 64)
    index.add(xb, rng.permutation(5000)[:1200])
    q = queries_for(rng, xb)
    before = index.search(q, 150)
    folder = save_index(index, tmp_path / "idx", model_id="m")
    loaded, items = load_index(folder, expected_model_id="m")
    items.close()
    assert loaded.name == "mih" and loaded.config() == index.config() == {"nbits": 64, "substrings": None}
    for a, b in zip(loaded.search(q, 150), before):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(loaded.range_search(q, 12), index.range_search(q, 12)):
        np.testing.assert_array_equal(a, b)


def test_a_chosen_number_of_substrings_survives_save_and_load(rng: np.random.Generator, tmp_path: Path) -> None:
    index = create_index("mih", nbits=64, substrings=5)
    index.add(random_codes(rng, 50, 64))
    loaded, items = load_index(save_index(index, tmp_path / "idx", model_id="m"))
    items.close()
    assert loaded.config() == {"nbits": 64, "substrings": 5}


@pytest.mark.parametrize("bad", [0, 2, 65, 2.5, True, "4"])
def test_bad_substrings_are_refused(bad: object) -> None:
    with pytest.raises(IndexArgumentError, match="substrings") as e:
        create_index("mih", nbits=64, substrings=bad)
    assert e.value.field == "substrings"


def test_the_paper_s_choice_of_m() -> None:
    """Substrings of about log2(n) bits, never longer than MAX_SUBSTRING_BITS, never shorter than one bit."""
    assert choose_substrings(64, 10**6) == 3  # 64 / 19.9
    assert choose_substrings(64, 2**16) == 4
    assert choose_substrings(64, 10**9) == 3  # 64 / 29.9 would be 2, but a table is at most 24 bits
    assert choose_substrings(8, 1) == 8
