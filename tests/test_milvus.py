"""The milvus backend (``index/milvus.py``, embedded milvus-lite) is the numba scan, exactly: the same ids and
distances (ties by id) on codes full of ties, with k beyond the ties and beyond the rows, at 64 and 256 bits,
including ties that run past Milvus's first answer (asked again) and past its topk limit (the local scan);
removed rows are never returned; a save + load through store.py refills the collection (embedded, and a
milvus-lite file named by ``uri`` recorded in the manifest); ``evaluate`` through it gives the numba backend's
figures on a small collection; bad arguments name their field; an unreachable server, milvus-lite 3.x or a
missing pymilvus is one IndexError_ line; ``index build --backend milvus`` writes a milvus folder and ``--uri``
is checked.

One embedded milvus-lite serves the whole process (started by the first index that reaches it, ~1 s)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from sketchsearch.cli import app
from sketchsearch.data.collection import Collection
from sketchsearch.data.formats.base import Item
from sketchsearch.data.render import rasterize
from sketchsearch.data.splits import make_split
from sketchsearch.data.synthetic import merchant_marks
from sketchsearch.errors import IndexArgumentError, IndexError_
from sketchsearch.eval.evaluate import evaluate
from sketchsearch.index import MISSING_DISTANCE, MilvusHammingIndex, create_index
from sketchsearch.index import milvus as milvus_module
from sketchsearch.index.store import load_index, read_manifest, save_index
from sketchsearch.methods import create_method
from sketchsearch.methods.base import Preprocessing
from sketchsearch.model import save_model
from sketchsearch.retrieval import Retriever

pytest.importorskip("pymilvus", reason="the milvus extra is not installed (pip install -e '.[milvus]')")


@pytest.fixture(scope="module", autouse=True)
def embedded() -> None:
    """Start this process's embedded milvus-lite once, before the first test times anything."""
    index = milvus(64)
    index.add(np.zeros((1, 8), np.uint8))


def tied_codes(rng: np.random.Generator, n: int, nbits: int, distinct: int = 6) -> np.ndarray:
    """n codes drawn from a few distinct ones: nearly every distance is tied many times."""
    return rng.integers(0, 256, size=(distinct, nbits // 8), dtype=np.uint8)[rng.integers(0, distinct, n)]


def milvus(nbits: int = 64, **config: Any) -> MilvusHammingIndex:
    index = create_index("milvus", nbits=nbits, **config)
    assert isinstance(index, MilvusHammingIndex)
    return index


def reference(xb: np.ndarray, ids: np.ndarray, nbits: int) -> Any:
    index = create_index("numba", nbits=nbits)
    index.add(xb, ids)
    return index


def assert_same(a: Any, b: Any, q: np.ndarray, ks: tuple[int, ...]) -> None:
    for k in ks:
        (da, ia), (db, ib) = a.search(q, k), b.search(q, k)
        assert da.dtype == np.int32 and ia.dtype == np.int64 and da.shape == ia.shape == (len(q), k)
        np.testing.assert_array_equal(da, db, err_msg=f"distances, k={k}")
        np.testing.assert_array_equal(ia, ib, err_msg=f"ids, k={k}")


@pytest.mark.parametrize("nbits", [64, 256])
def test_the_same_ids_and_distances_as_the_scan_on_ties(nbits: int, rng: np.random.Generator) -> None:
    xb = tied_codes(rng, 3000, nbits, distinct=8)  # ~375 rows share each code: ties everywhere
    ids = rng.permutation(10**6)[:3000].astype(np.int64)  # not in insertion order
    index = milvus(nbits)
    index.add(xb[:2000], ids[:2000])
    index.add(xb[2000:], ids[2000:])  # a second insert, interleaved ids
    ref = reference(xb, ids, nbits)
    q = np.concatenate([xb[:4], rng.integers(0, 256, size=(4, nbits // 8), dtype=np.uint8)])
    # k=1..10 inside the first tie; 500 past it (the first answer of 2k + 16 hits cuts the tie: asked again);
    # 3000 = every row; 3100: -1 pads
    assert_same(index, ref, q, (1, 10, 500, 3000, 3100))
    _, got = index.search(q, 3100)
    assert (got[:, 3000:] == -1).all() and index.local_fallbacks == 0
    assert (index.search(q, 3100)[0][:, 3000:] == MISSING_DISTANCE).all()


def test_a_tie_past_the_topk_limit_is_answered_by_the_local_scan(rng: np.random.Generator) -> None:
    n = milvus_module.MAX_TOPK + 2000
    xb = np.repeat(rng.integers(0, 256, size=(1, 8), dtype=np.uint8), n, axis=0)
    xb[::50] ^= 1  # one row in 50 a bit away
    ids = rng.permutation(10**6)[:n].astype(np.int64)
    index, ref = milvus(), reference(xb, ids, 64)
    index.add(xb, ids)
    # xb[1]: 18,016 rows at distance 0, more than Milvus returns, so no answer proves which have the smallest
    # ids (the local scan answers); xb[0]: its 368 equals fit in an answer (asked again with larger limits)
    q = xb[:2]
    assert_same(index, ref, q, (5, 300))
    assert index.local_fallbacks == 2  # xb[1], once per k
    with pytest.raises(IndexArgumentError, match="at most 16384 hits a query") as e:
        index.search(q, milvus_module.MAX_TOPK + 1)
    assert e.value.field == "k"


def test_removed_rows_are_never_returned(rng: np.random.Generator) -> None:
    xb = tied_codes(rng, 1000, 64)
    ids = np.arange(0, 3000, 3, dtype=np.int64)
    index = milvus()
    index.add(xb, ids)
    gone = ids[rng.permutation(1000)[:400]]
    assert index.remove(np.concatenate([gone, gone[:5], [7, 10**9]])) == 400  # repeats and unknown ids ignored
    keep = ~np.isin(ids, gone)
    assert index.ids.tolist() == ids[keep].tolist()
    q = xb[:5]
    assert_same(index, reference(xb[keep], ids[keep], 64), q, (1, 50, 600, 700))
    assert not np.isin(index.search(q, 700)[1], gone).any()
    assert index.add(xb[:2]).tolist() == [int(ids[keep].max()) + 1, int(ids[keep].max()) + 2]


def test_save_and_load_refill_the_collection(rng: np.random.Generator, tmp_path: Path) -> None:
    xb = tied_codes(rng, 500, 64)
    ids = rng.permutation(5000)[:500].astype(np.int64)
    # embedded: a private collection; the loaded index fills a new one of its own
    index = milvus()
    index.add(xb, ids)
    save_index(index, tmp_path / "idx", model_id="m")
    manifest = read_manifest(tmp_path / "idx")
    assert (manifest["backend"], manifest["uri"], manifest["collection"]) == ("milvus", None, None)
    loaded, items = load_index(tmp_path / "idx", expected_model_id="m")
    items.close()
    assert isinstance(loaded, MilvusHammingIndex) and loaded.collection != index.collection
    assert_same(loaded, index, xb[:4], (7, 300))
    # a milvus-lite file named by uri, and a collection name: recorded, and a load uses them again
    lite = milvus(uri=tmp_path / "lite.db", collection="drawings")
    lite.add(xb, ids)
    save_index(lite, tmp_path / "lite-idx", model_id="m")
    manifest = read_manifest(tmp_path / "lite-idx")
    assert (manifest["uri"], manifest["collection"]) == (str(tmp_path / "lite.db"), "drawings")
    again, items = load_index(tmp_path / "lite-idx")
    items.close()
    assert again.config() == lite.config() == {"nbits": 64, "uri": str(tmp_path / "lite.db"), "collection": "drawings"}
    assert again.remove(ids[:10]) == 10 and len(again.add(xb[:3])) == 3  # the loaded index changes like any other
    ref = reference(np.concatenate([xb[10:], xb[:3]]), np.concatenate([ids[10:], again.ids[-3:]]), 64)
    assert_same(again, ref, xb[:4], (7, 300))


def test_evaluate_through_milvus_gives_the_scans_figures() -> None:
    marks = merchant_marks(6, 10, seed=3)
    coll = Collection([Item(s.id, s.label, "sketch", f"{s.id}.json", sketch=s) for s in marks], name="marks")
    split = make_split("category", coll.items, queries_per_class=3)
    pre = Preprocessing(inputs=("raster",), raster_size=16, line_width=1.5)
    method = create_method("lsh", nbits=16, seed=0, preprocessing=pre)  # 16 bits: ties all through the rankings
    method.fit(np.random.default_rng(0).random((32, 16, 16)))
    figures = {}
    for backend in ("numba", "milvus"):
        res = evaluate(lambda b=backend: Retriever(method, backend=b), coll, split, ks=(1, 10), top=20)["main"]
        assert (res["n_queries"], res["n_gallery"]) == (18, 42)
        figures[backend] = {k: v for k, v in res.items() if k not in ("ms_per_query", "encode_per_s")}
    assert figures["milvus"] == figures["numba"]
    assert 0 < figures["numba"]["mAP@all"] < 1


def test_bad_arguments_name_their_field(tmp_path: Path) -> None:
    index = milvus(64)
    good = np.zeros((2, 8), np.uint8)
    index.add(good, [1, 2])
    cases: list[tuple[Any, str, str]] = [
        (lambda: index.add(np.zeros((2, 4), np.uint8), [3, 4]), "codes", r"\(n, 8\)"),
        (lambda: index.search(np.zeros((1, 32), np.uint8), 1), "queries", r"\(n, 8\)"),
        (lambda: index.add(good, [2, 3]), "ids", "id 2 is already in the index"),
        (lambda: index.range_search(good, 3), "radius", "range search is not offered"),
        (lambda: milvus(60), "nbits", "multiple of 8"),
        (lambda: milvus(uri="ftp://host:19530"), "uri", r"http://host:19530 .* ending in \.db"),
        (lambda: milvus(uri="http://host:port"), "uri", "bad port"),
        (lambda: milvus(uri=tmp_path / "missing" / "x.db"), "uri", "does not exist"),
        (lambda: milvus(uri=tmp_path / ("x" * 40 + ".db")), "uri", "at most 36 characters"),
        (lambda: milvus(collection="9 lives"), "collection", "collection name"),
    ]
    for call, field, message in cases:
        with pytest.raises(IndexArgumentError, match=message) as e:
            call()
        assert e.value.field == field
    assert index.ids.tolist() == [1, 2]
    assert_same(index, reference(good, np.array([1, 2]), 64), good, (1, 3))


def test_milvus_failures_are_one_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    index = milvus(uri="http://127.0.0.1:9")  # the discard port: nothing listens there
    with pytest.raises(IndexError_) as e:
        index.add(np.zeros((1, 8), np.uint8))
    assert not isinstance(e.value, IndexArgumentError)
    assert str(e.value).startswith("milvus at http://127.0.0.1:9: could not connect (") and "\n" not in str(e.value)
    assert len(index) == 0  # nothing was added
    monkeypatch.setattr("importlib.metadata.version", lambda name: "3.2.2")  # the 3.x rewrite: no binary vectors
    with pytest.raises(IndexError_, match=r"milvus-lite 3.2.2 has no binary vectors \(2.5.1 is the last"):
        milvus(uri=tmp_path / "new.db").add(np.zeros((1, 8), np.uint8))
    monkeypatch.undo()
    monkeypatch.setitem(sys.modules, "pymilvus", None)  # as if the milvus extra were not installed
    with pytest.raises(IndexError_, match=r"needs pymilvus and milvus-lite: pip install 'sketchsearch\[milvus\]'"):
        milvus(uri=tmp_path / "other.db").add(np.zeros((1, 8), np.uint8))


def test_a_collection_changed_outside_the_index_is_rebuilt_from_its_rows(rng: np.random.Generator) -> None:
    xb = tied_codes(rng, 200, 64)
    index = milvus()
    index.add(xb)
    ref = reference(xb, np.arange(200), 64)
    client = milvus_module._client(None)
    client.drop_collection(index.collection)
    with pytest.raises(IndexError_, match=f"embedded milvus-lite: could not search collection '{index.collection}'"):
        index.search(xb[:3], 5)
    assert_same(index, ref, xb[:3], (5, 200))  # rebuilt on the next use
    client.delete(index.collection, ids=[0, 1, 2])  # rows the index still holds
    with pytest.raises(IndexError_, match="returned 197 hits of 200 .* rebuilt from the index's rows"):
        index.search(xb[:3], 200)
    assert_same(index, ref, xb[:3], (5, 200))


def test_index_build_with_backend_milvus(tmp_path: Path) -> None:
    pre = Preprocessing(inputs=("raster",), raster_size=16, line_width=1.5)
    method = create_method("lsh", nbits=64, seed=0, preprocessing=pre)
    method.fit(np.random.default_rng(0).random((8, 16, 16)))
    save_model(method, tmp_path / "lsh")
    for s in merchant_marks(3, 2, seed=7):
        ink = rasterize(s, size=64, line_width=2.5)
        Image.fromarray(((1 - ink) * 255).astype(np.uint8)).save(tmp_path / f"{s.label}-{s.id}.png")
    build = ["index", "build", "--model", str(tmp_path / "lsh"), "--data", str(tmp_path)]
    res = CliRunner().invoke(app, [*build, "--out", str(tmp_path / "idx"), "--backend", "milvus", "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["count"] == 6
    assert read_manifest(tmp_path / "idx")["backend"] == "milvus"
    res = CliRunner().invoke(
        app, [*build, "--out", str(tmp_path / "idx2"), "--backend", "milvus", "--uri", str(tmp_path / "cli.db")]
    )
    assert res.exit_code == 0, res.output
    assert read_manifest(tmp_path / "idx2")["uri"] == str(tmp_path / "cli.db")
    index, items = load_index(tmp_path / "idx2")
    items.close()
    assert index.name == "milvus" and len(index) == 6
    for args, message in [
        (["--backend", "numba", "--uri", "http://host:19530"], "--uri: only with --backend milvus"),
        (["--backend", "milvus", "--uri", "host:19530"], "--uri: expected a Milvus server address"),
    ]:
        res = CliRunner().invoke(app, [*build, "--out", str(tmp_path / "bad"), *args])
        assert res.exit_code == 2 and message in res.output, res.output
