"""Every registered index backend keeps the Index contract (sketchsearch/index/base.py): add, remove,
search against a brute-force oracle (popcount for Hamming, cosine / inner product for dense; ties by
id), save + load through store.py, len, metric, and IndexArgumentError for bad arguments."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from sketchsearch.errors import IndexArgumentError, IndexError_, InvalidSketchError
from sketchsearch.index import Index, create_index, list_indexes
from sketchsearch.index.store import load_index, save_index
from sketchsearch.methods import create_method
from sketchsearch.retrieval import Retriever

NBITS, DIM = 64, 16
#: Constructor keywords per backend; any backend not named here is a Hamming one.
CONFIGS: dict[str, list[dict[str, Any]]] = {
    "dense": [{"dim": DIM, "metric": "cosine"}, {"dim": DIM, "metric": "ip"}],
}
CASES = [(name, config) for name in list_indexes() for config in CONFIGS.get(name, [{"nbits": NBITS}])]


def case_id(case: tuple[str, dict[str, Any]]) -> str:
    return "-".join([case[0], *map(str, case[1].values())])


@pytest.fixture(params=CASES, ids=case_id)
def index(request: pytest.FixtureRequest) -> Index:
    name, config = request.param
    return create_index(name, **config)


def rows(index: Index, n: int, rng: np.random.Generator) -> np.ndarray:
    """n random rows of the index's kind, a third of them repeating row 0 so that ties occur."""
    if index.metric == "hamming":
        x = rng.integers(0, 256, size=(n, NBITS // 8), dtype=np.uint8)
    else:
        x = rng.normal(size=(n, DIM)).astype(np.float32)
    x[1 : n // 3] = x[0]
    return x


def oracle(metric: str, queries: np.ndarray, xb: np.ndarray, ids: np.ndarray, k: int) -> list[list[int]]:
    """The first k ids of the whole database sorted by (score, id), computed without any index code."""
    out = []
    for q in queries:
        if metric == "hamming":
            keys = [sum((int(a) ^ int(b)).bit_count() for a, b in zip(q, x)) for x in xb]
        else:
            q64, x64 = q.astype(np.float64), xb.astype(np.float64)
            if metric == "cosine":
                q64 = q64 / np.linalg.norm(q64)
                x64 = x64 / np.linalg.norm(x64, axis=1, keepdims=True)
            keys = np.round(-(x64 @ q64), 5).tolist()  # best first = smallest key; rounding makes ties exact
        out.append([int(i) for _, i in sorted(zip(keys, ids.tolist()))[:k]])
    return out


def ranked_ids(got: np.ndarray) -> list[list[int]]:
    return [[int(i) for i in row if i >= 0] for row in got]


def test_every_backend_is_in_the_one_registry() -> None:
    assert {"dense", "faiss", "mih", "numba", "numpy", "sharded"} <= set(list_indexes())
    assert "sketchsearch" not in list_indexes()  # an alias, not a second backend
    assert create_index("sketchsearch", nbits=NBITS).name == "numba"
    valid = "valid names: dense, faiss, mih, milvus, numba, numpy, sharded"
    with pytest.raises(ValueError, match=f"unknown index backend 'nope'; {valid}"):
        create_index("nope")


def test_add_search_remove_against_the_oracle(index: Index, rng: np.random.Generator) -> None:
    assert isinstance(index, Index) and index.metric in ("hamming", "cosine", "ip")
    assert len(index) == 0 and index.ids.dtype == np.int64
    xb = rows(index, 90, rng)
    ids = rng.permutation(1000)[:90].astype(np.int64)  # not in insertion order
    assert index.add(xb[:50], ids[:50]).tolist() == ids[:50].tolist()
    assert index.add(xb[50:], ids[50:]).tolist() == ids[50:].tolist()  # interleaves with the first add
    assert len(index) == 90 and index.ids.tolist() == sorted(ids.tolist())
    queries = np.concatenate([rows(index, 5, rng), xb[:2]])
    k = 40  # beyond the 30 rows tied with row 0
    scores, got = index.search(queries, k)
    assert scores.shape == got.shape == (7, k) and got.dtype == np.int64
    assert ranked_ids(got) == oracle(index.metric, queries, xb, ids, k)
    best_first = np.diff(scores.astype(np.float64), axis=1)
    assert (best_first >= 0).all() if index.metric == "hamming" else (best_first <= 1e-6).all()

    gone = ids[::3]
    assert index.remove(np.concatenate([gone, [5000]])) == len(gone)  # an unknown id is ignored
    keep = ~np.isin(ids, gone)
    assert len(index) == int(keep.sum()) and not np.isin(index.ids, gone).any()
    _, got = index.search(queries, 100)  # k > len: -1 pads the rest
    assert ranked_ids(got) == oracle(index.metric, queries, xb[keep], ids[keep], 100)
    assert (got[:, len(index) :] == -1).all()
    top = int(index.ids.max())
    assert index.add(xb[:2]).tolist() == [top + 1, top + 2]  # automatic ids follow the largest in use


def test_save_and_load_round_trip(index: Index, rng: np.random.Generator, tmp_path: Path) -> None:
    xb = rows(index, 40, rng)
    index.add(xb, rng.permutation(400)[:40])
    folder = save_index(index, tmp_path / "idx", model_id="m")
    loaded, items = load_index(folder, expected_model_id="m")
    items.close()
    assert (loaded.name, loaded.metric, loaded.config(), len(loaded)) == (
        index.name,
        index.metric,
        index.config(),
        40,
    )
    for key, arr in index.state().items():
        np.testing.assert_array_equal(loaded.state()[key], arr)
    q = rows(index, 6, rng)
    for a, b in zip(loaded.search(q, 9), index.search(q, 9)):
        np.testing.assert_array_equal(a, b)
    # the loaded index (its codes memory-mapped) still changes like any other
    assert loaded.remove(loaded.ids[:5]) == 5 and len(loaded.add(xb[:3])) == 3 and len(loaded) == 38


def test_bad_arguments_raise_index_argument_error(index: Index) -> None:
    width = NBITS // 8 if index.metric == "hamming" else DIM
    good = np.zeros((2, width), np.uint8 if index.metric == "hamming" else np.float32)
    index.add(good, [1, 2])
    cases: list[tuple[Any, str, str]] = [
        (lambda: index.add(good[:, :-1], [3, 4]), "codes", rf"\(n, {width}\)"),  # wrong code width
        (lambda: index.add(good.astype(bool), [3, 4]), "codes", "dtype"),
        (lambda: index.add(good[:1], [2]), "ids", "id 2 is already in the index"),
        (lambda: index.add(good, [7, 7]), "ids", "id 7 is given more than once"),
        (lambda: index.add(good, [3, -1]), "ids", ">= 0"),
        (lambda: index.add(good, [3]), "ids", "expected 2 ids"),
        (lambda: index.search(good[:, :-1], 1), "queries", rf"\(n, {width}\)"),
        (lambda: index.search(good, 0), "k", "k must be an integer >= 1"),
        (lambda: index.remove(np.array([1.5])), "ids", "integer ids"),
        (lambda: index.load_state({"codes": good}), "state", r"\['codes', 'ids'\]"),
    ]
    for call, field, message in cases:
        with pytest.raises(IndexArgumentError, match=message) as e:
            call()
        assert e.value.field == field
        assert isinstance(e.value, IndexError_) and isinstance(e.value, ValueError)
        assert not isinstance(e.value, InvalidSketchError)
    assert index.ids.tolist() == [1, 2]  # every refused call left the index as it was


def test_the_retriever_holds_an_index_of_the_default_backend() -> None:
    index = Retriever(create_method("lsh", nbits=NBITS)).index
    assert isinstance(index, Index) and index.name == "numba" and index.metric == "hamming"
    assert create_method("pca", dim=DIM).output == "float"
    assert Retriever(create_method("pca", dim=DIM)).index.name == "dense"
