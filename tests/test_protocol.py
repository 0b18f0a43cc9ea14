"""The evaluation protocol: hand-checked rankings through a brute-force retriever, leave-one-out, chunking,
splits; the real Retriever (when the index is in the tree) for the baselines and the benchmark runner."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest
from threadpoolctl import threadpool_limits

from sketchsearch.eval.metrics import map_at_all, n_relevant_from_labels, relevance_from_labels
from sketchsearch.eval.protocol import (
    category_split,
    evaluate_retrieval,
    load_split,
    markdown_table,
    run_benchmark,
    save_split,
)


@pytest.fixture(autouse=True)
def _one_blas_thread():  # type: ignore[no-untyped-def]
    with threadpool_limits(1):
        yield


class BruteRetriever:
    """Oracle with the Retriever's interface: items are feature vectors, distance is Euclidean, ties by id."""

    def __init__(self) -> None:
        self.codes = np.zeros((0, 1))
        self.ids = np.zeros(0, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.ids)

    def encode(self, items: Sequence[Any], modality: str = "sketch") -> np.ndarray:
        return np.asarray(items, dtype=np.float64).reshape(len(items), -1)

    def add(
        self, items: Sequence[Any], ids: np.ndarray, labels: Any = None, encoded: np.ndarray | None = None
    ) -> np.ndarray:
        codes = self.encode(items) if encoded is None else encoded
        self.codes = codes if len(self.ids) == 0 else np.concatenate([self.codes, codes])
        self.ids = np.concatenate([self.ids, np.asarray(ids, dtype=np.int64)])
        return ids

    def search_encoded(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        d = np.linalg.norm(q[:, None, :] - self.codes[None], axis=2)
        order = np.lexsort((np.broadcast_to(self.ids, d.shape), d), axis=1)[:, :k]  # by distance, then id
        return np.take_along_axis(d, order, 1), self.ids[order]


def test_hand_checked_rankings() -> None:
    gallery = [[0.0], [1.0], [2.0], [10.0], [11.0]]
    g_labels = ["a", "a", "b", "b", "b"]
    # query 0.4 ("a"): order 0,1,2,3,4 -> rel 1,1,0,0,0 -> AP 1
    # query 1.6 ("b"): distances 1.6,0.6,0.4,8.4,9.4 -> order 2,1,0,3,4 -> rel 1,0,0,1,1 -> AP (1 + 2/4 + 3/5)/3 = 0.7
    res = evaluate_retrieval(BruteRetriever(), gallery, g_labels, [[0.4], [1.6]], ["a", "b"], ks=(1, 2))
    assert res["mAP@all"] == pytest.approx((1 + 0.7) / 2)
    assert res["P@1"] == pytest.approx(1.0) and res["acc@1"] == pytest.approx(1.0)
    assert res["P@2"] == pytest.approx((1 + 0.5) / 2)
    # mAP@2: q0 (1 + 1)/2 = 1 ; q1 P@1 / 3 = 1/3 (by #relevant) or / min(2, 3) = 1/2
    assert res["mAP@2"] == pytest.approx((1 + 1 / 3) / 2)
    assert res["mAP@2_min"] == pytest.approx((1 + 1 / 2) / 2)
    # MAP@R: q0 R=2 -> 1 ; q1 R=3 -> first 3 ranks rel 1,0,0 -> 1/3
    assert res["MAP@R"] == pytest.approx((1 + 1 / 3) / 2)
    assert (res["n_queries"], res["n_gallery"], res["n_excluded"]) == (2, 5, 0)
    assert res["ms_per_query"] >= 0 and res["encode_per_s"] > 0


def test_leave_one_out_removes_each_query_itself() -> None:
    feats, labels = [[0.0], [1.0], [5.0], [6.0]], ["a", "b", "a", "b"]
    # q0: others 1(b) 5(a) 6(b) -> 0,1,0 -> 1/2 ; q1: 0(a) 5(a) 6(b) -> 1/3 ; q2: 6(b) 1(b) 0(a) -> 1/3 ; q3: 5(a) 1(b) 0(a) -> 1/2
    res = evaluate_retrieval(BruteRetriever(), feats, labels, ks=(1,), leave_one_out=True)
    assert res["mAP@all"] == pytest.approx(5 / 12)
    assert res["acc@1"] == pytest.approx(0.0)
    assert res["n_queries"] == 4 and res["leave_one_out"]
    with pytest.raises(ValueError, match="leave queries"):
        evaluate_retrieval(BruteRetriever(), feats, labels, feats, labels, leave_one_out=True)


def test_queries_without_relevant_items_are_excluded_and_counted() -> None:
    res = evaluate_retrieval(
        BruteRetriever(), [[0.0], [1.0]], ["a", "b"], [[0.1], [0.2]], ["a", "zebra"], ks=(1,)
    )
    assert res["n_excluded"] == 1 and res["mAP@all"] == pytest.approx(1.0)


def test_chunking_does_not_change_results() -> None:
    rng = np.random.default_rng(0)
    g, q = rng.normal(size=(60, 3)), rng.normal(size=(23, 3))
    gl, ql = rng.integers(0, 4, 60).tolist(), rng.integers(0, 4, 23).tolist()
    a = evaluate_retrieval(BruteRetriever(), g, gl, q, ql, chunk=5)
    b = evaluate_retrieval(BruteRetriever(), g, gl, q, ql, chunk=1000)
    for key in ("mAP@all", "MAP@R", "mAP@100", "mAP@100_min", "P@10", "acc@1"):
        assert a[key] == pytest.approx(b[key], rel=1e-12), key
    # and agrees with the metrics applied to a full brute-force ranking directly
    d = np.linalg.norm(q[:, None] - g[None], axis=2)
    order = np.argsort(d, axis=1, kind="stable")
    rel = relevance_from_labels(order, gl, ql)
    assert a["mAP@all"] == pytest.approx(map_at_all(rel, n_relevant_from_labels(gl, ql)))


def test_input_checks() -> None:
    with pytest.raises(ValueError, match="gallery is empty"):
        evaluate_retrieval(BruteRetriever(), [], [], [[0.0]], ["a"])
    with pytest.raises(ValueError, match="3 gallery labels for 2"):
        evaluate_retrieval(BruteRetriever(), [[0.0], [1.0]], ["a", "b", "c"], [[0.0]], ["a"])
    r = BruteRetriever()
    r.add([[0.0]], ids=np.array([0]))
    with pytest.raises(ValueError, match="empty retriever"):
        evaluate_retrieval(r, [[0.0]], ["a"], [[0.0]], ["a"])


def test_category_split_is_deterministic_disjoint_and_per_class(tmp_path) -> None:  # type: ignore[no-untyped-def]
    labels = ["cat"] * 15 + ["dog"] * 12 + ["ant"] * 3 + ["owl"]
    s = category_split(labels, queries_per_class=10, seed=0)
    assert len(np.intersect1d(s.query, s.gallery)) == 0 and len(s.query) + len(s.gallery) == len(labels)
    per_class = {c: sum(labels[i] == c for i in s.query) for c in set(labels)}
    assert per_class == {"cat": 10, "dog": 10, "ant": 2, "owl": 0}  # small classes keep one gallery item
    again = category_split(labels, 10, seed=0)
    np.testing.assert_array_equal(s.query, again.query)
    assert not np.array_equal(s.query, category_split(labels, 10, seed=1).query)
    # a class's split does not depend on the other classes
    only_cat = category_split(labels[:15], 10, seed=0)
    np.testing.assert_array_equal(only_cat.query, s.query[s.query < 15])
    ids = [f"id{i}" for i in range(len(labels))]
    save_split(s, tmp_path / "split.json", ids)
    back = load_split(tmp_path / "split.json", ids[::-1])  # data re-read in another order
    assert sorted(ids[::-1][i] for i in back.query) == sorted(ids[i] for i in s.query)


# ---------------------------------------------------------------------------------- with the real Retriever
def _needs_index() -> None:
    pytest.importorskip("sketchsearch.index.hamming", reason="the Hamming index is not in the tree yet")


def _clustered(n_classes: int = 5, per_class: int = 30, seed: int = 0) -> tuple[np.ndarray, list[str]]:
    rng = np.random.default_rng(seed)
    templates = (rng.random((n_classes, 32, 32)) < 0.15).astype(np.float32)
    lab = np.repeat(np.arange(n_classes), per_class)
    x = np.clip(
        templates[lab] * (rng.random((len(lab), 32, 32)) < 0.7) + 0.1 * rng.random((len(lab), 32, 32)), 0, 1
    )
    return x.astype(np.float32), [f"c{i}" for i in lab]


@pytest.mark.parametrize("name", ["itq", "lsh"])
def test_baselines_through_the_retriever(name: str) -> None:
    _needs_index()
    from sketchsearch.methods import create_method
    from sketchsearch.retrieval import Retriever

    x, labels = _clustered()
    split = category_split(labels, queries_per_class=5, seed=0)
    m = create_method(name, nbits=32)
    m.fit(x[split.gallery])
    g, q = x[split.gallery], x[split.query]
    gl, ql = [labels[i] for i in split.gallery], [labels[i] for i in split.query]
    res = evaluate_retrieval(m, g, gl, q, ql)
    assert res["mAP@all"] > 0.5  # chance is 1/5
    # search_many is encode + search_encoded: the protocol's split timing ranks exactly as the service does
    r = Retriever(m)
    r.add(g, ids=np.arange(len(g)))
    d1, i1 = r.search_many(list(q), len(g))
    d2, i2 = r.search_encoded(r.encode(list(q)), len(g))
    np.testing.assert_array_equal(i1, i2)
    np.testing.assert_array_equal(d1, d2)
    rel = relevance_from_labels(i1, gl, ql)
    assert res["mAP@all"] == pytest.approx(map_at_all(rel, n_relevant_from_labels(gl, ql)))


def test_run_benchmark_writes_json_and_markdown(tmp_path) -> None:  # type: ignore[no-untyped-def]
    _needs_index()
    from test_baselines import _write_quickdraw_folder  # tests/ is on sys.path (rootdir conftest, no package)

    _write_quickdraw_folder(tmp_path / "qd")
    rows = [{"label": f"ITQ {b}", "method": "itq", "kwargs": {"nbits": b}} for b in (8, 16)]
    rows.append({"label": "LSH 16", "method": "lsh", "kwargs": {"nbits": 16}})
    doc = run_benchmark(rows, tmp_path / "qd", {"queries_per_class": 4, "seed": 0, "file": tmp_path / "split.json"},
                        json_path=tmp_path / "out.json", md_path=tmp_path / "out.md")  # fmt: skip
    assert [r["code_size"] for r in doc["rows"]] == [8, 16, 16]
    assert json.loads((tmp_path / "out.json").read_text())["rows"][0]["mAP@all"] == doc["rows"][0]["mAP@all"]
    md = (tmp_path / "out.md").read_text()
    assert "| ITQ 16 | 16 |" in md and md == markdown_table(doc)
    assert (tmp_path / "split.json").is_file()  # reused by the next run
    again = run_benchmark(
        rows[:1], tmp_path / "qd", {"queries_per_class": 4, "seed": 0, "file": tmp_path / "split.json"}
    )
    assert again["rows"][0]["mAP@all"] == doc["rows"][0]["mAP@all"]
