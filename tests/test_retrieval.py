"""The Retriever against brute-force oracles: Hamming over the method's own bits (ITQ) and 1 - cosine over
a toy float method's embeddings; ties by id; labels/sources in hits; persistence with the model check."""

from __future__ import annotations

import io
import itertools
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import Tensor

from sketchsearch.data.batching import make_batch
from sketchsearch.data.sketch import Sketch
from sketchsearch.errors import IndexError_, InvalidSketchError
from sketchsearch.methods import create_method
from sketchsearch.methods.base import Batch, Method, Preprocessing
from sketchsearch.model import save_model
from sketchsearch.retrieval import Hit, Retriever, thumbnail_png

PRE = Preprocessing(inputs=("raster",), raster_size=16, line_width=1.5)


class ToyFloat(Method):
    """A fixed seeded random projection of the 16 x 16 raster to 8 dimensions (cosine search)."""

    name = "toy-float"
    output = "float"

    def __init__(self, preprocessing: Preprocessing | None = None, seed: int = 0) -> None:
        super().__init__(preprocessing or PRE)
        g = torch.Generator().manual_seed(seed)
        self.register_buffer("w", torch.randn(16 * 16, 8, generator=g))

    @property
    def code_size(self) -> int:
        return 8

    def encode_sketch(self, batch: Batch) -> Tensor:
        return batch["raster"].flatten(1) @ self.w  # not normalised: the Retriever must do it


def walk(rng: np.random.Generator) -> Sketch:
    return Sketch(
        [np.cumsum(rng.normal(size=(int(rng.integers(3, 12)), 2)), axis=0) for _ in range(int(rng.integers(1, 4)))]
    )


@pytest.fixture(scope="module")
def sketches() -> list[Sketch]:
    rng = np.random.default_rng(11)
    return [walk(rng) for _ in range(40)]


@pytest.fixture(scope="module")
def itq(sketches: list[Sketch]) -> Method:
    m = create_method("itq", nbits=16, iterations=10, seed=0, preprocessing=PRE)
    m.fit(sketches)
    return m


def bits_of(method: Method, items: list[Sketch]) -> np.ndarray:
    """The oracle's bits: z > 0 straight from the method, no packing involved."""
    with torch.no_grad():
        return (method.encode_sketch(make_batch(items, method.preprocessing)).numpy() > 0).astype(np.int64)


def embeddings_of(method: Method, items: list[Sketch]) -> np.ndarray:
    with torch.no_grad():
        z = method.encode_sketch(make_batch(items, method.preprocessing)).numpy().astype(np.float64)
    return z / np.linalg.norm(z, axis=1, keepdims=True)


def oracle(dist_row: np.ndarray, ids: np.ndarray, k: int) -> list[tuple[float, int]]:
    """Brute force: sort all (distance, id) pairs, ties by id."""
    return sorted(zip(dist_row.tolist(), ids.tolist()))[:k]


def filled(method: Method, sketches: list[Sketch], ids: np.ndarray | None = None) -> Retriever:
    r = Retriever(method)
    n = len(sketches)
    r.add(
        sketches,
        ids=ids,
        labels=[f"c{i % 5}" for i in range(n)],
        sources=[f"src/{i}.ndjson" for i in range(n)],
    )
    return r


# ---------------------------------------------------------------------------------------------- binary
def test_binary_search_matches_hamming_oracle_with_ties_by_id(itq: Method, sketches: list[Sketch]) -> None:
    gallery, queries = sketches[:30], sketches[30:]
    ids = np.random.default_rng(0).permutation(1000)[:30].astype(np.int64)  # ids unrelated to insertion order
    r = filled(itq, gallery, ids)
    assert len(r) == 30
    gb, qb = bits_of(itq, gallery), bits_of(itq, queries)
    k = 12
    n_ties = 0
    for q, sk in enumerate(queries):
        hits = r.search(sk, k=k)
        ham = (qb[q][None] != gb).sum(axis=1)
        want = oracle(ham.astype(float), ids, k)
        assert [(h.distance, h.id) for h in hits] == want
        assert [h.rank for h in hits] == list(range(1, k + 1))
        n_ties += len(want) - len({d for d, _ in want})
        pos = {int(i): j for j, i in enumerate(ids)}
        assert [h.label for h in hits] == [f"c{pos[h.id] % 5}" for h in hits]
        assert [h.source for h in hits] == [f"src/{pos[h.id]}.ndjson" for h in hits]
    assert n_ties > 0  # 16-bit codes of 30 items: the tie rule was exercised


def test_duplicates_tie_and_come_back_in_id_order(itq: Method, sketches: list[Sketch]) -> None:
    r = Retriever(itq)
    r.add([sketches[0]] * 3, ids=[50, 7, 30])
    r.add(sketches[1:10], ids=range(100, 109))
    hits = r.search(sketches[0], k=3)
    assert [(h.id, h.distance) for h in hits] == [(7, 0.0), (30, 0.0), (50, 0.0)]


def test_binary_encode_is_packed_uint8(itq: Method, sketches: list[Sketch]) -> None:
    codes = Retriever(itq).encode(sketches[:5])
    assert codes.dtype == np.uint8 and codes.shape == (5, 2)
    assert np.unpackbits(codes, axis=1).sum() == bits_of(itq, sketches[:5]).sum()


def test_k_larger_than_index_pads_nothing_into_hits(itq: Method, sketches: list[Sketch]) -> None:
    r = filled(itq, sketches[:4])
    hits = r.search(sketches[5], k=10)
    assert sorted(h.id for h in hits) == [0, 1, 2, 3]
    _, ids = r.search_many([sketches[5]], k=10)
    assert ids.shape == (1, 10) and ids.dtype == np.int64 and (ids[0, 4:] == -1).all()


# ---------------------------------------------------------------------------------------------- float
def test_float_search_matches_cosine_oracle(sketches: list[Sketch]) -> None:
    m = ToyFloat()
    gallery, queries = sketches[:30], sketches[30:]
    r = filled(m, gallery)
    z = r.encode(gallery)
    assert z.dtype == np.float32 and z.shape == (30, 8)
    np.testing.assert_allclose(np.linalg.norm(z, axis=1), 1.0, atol=1e-5)
    g, qz = embeddings_of(m, gallery), embeddings_of(m, queries)
    for q, sk in enumerate(queries):
        hits = r.search(sk, k=10)
        want = oracle(1.0 - g @ qz[q], np.arange(30), 10)
        assert [h.id for h in hits] == [i for _, i in want]
        np.testing.assert_allclose([h.distance for h in hits], [d for d, _ in want], atol=1e-5)
        assert all(a.distance <= b.distance for a, b in itertools.pairwise(hits))
        assert [h.label for h in hits] == [f"c{h.id % 5}" for h in hits]


def test_float_ties_by_id() -> None:
    r = Retriever(ToyFloat())
    v = np.eye(8, dtype=np.float32)
    r.add([None] * 5, ids=[9, 4, 6, 2, 8], encoded=np.stack([v[0], v[0], v[1], v[0], v[2]]))  # type: ignore[list-item]
    d, ids = r.search_encoded(v[:1], k=4)
    assert ids[0].tolist() == [2, 4, 9, 6]
    np.testing.assert_allclose(d[0], [0, 0, 0, 1], atol=1e-6)


# ---------------------------------------------------------------------------------------------- errors
@pytest.mark.parametrize("method", ["itq", "float"])
def test_empty_sketch_query_is_refused(itq: Method, sketches: list[Sketch], method: str) -> None:
    r = filled(itq if method == "itq" else ToyFloat(), sketches[:5])
    for bad in (Sketch([]), Sketch([np.zeros((0, 2))])):
        with pytest.raises(InvalidSketchError) as e:
            r.search(bad, k=3)
        assert e.value.field == "strokes"
    with pytest.raises(InvalidSketchError):
        r.search_many([sketches[0], Sketch([])], k=3)
    with pytest.raises(InvalidSketchError):
        r.add([Sketch([])])
    assert len(r) == 5  # nothing was added by the failed call


def test_searching_an_empty_index_is_an_index_error(itq: Method, sketches: list[Sketch]) -> None:
    with pytest.raises(IndexError_, match="empty"):
        Retriever(itq).search(sketches[0])


def test_ids_must_match_items(itq: Method, sketches: list[Sketch]) -> None:
    with pytest.raises(ValueError, match="2 ids for 3 items"):
        Retriever(itq).add(sketches[:3], ids=[1, 2])


def test_automatic_ids_continue_after_the_largest(itq: Method, sketches: list[Sketch]) -> None:
    r = Retriever(itq)
    r.add(sketches[:2], ids=[10, 3])
    assert r.add(sketches[2:4]).tolist() == [11, 12]


# ---------------------------------------------------------------------------------------------- search_many, remove
@pytest.mark.parametrize("method", ["itq", "float"])
def test_search_many_equals_per_query_search(itq: Method, sketches: list[Sketch], method: str) -> None:
    r = filled(itq if method == "itq" else ToyFloat(), sketches[:30])
    r.batch_size = 4  # several encoding chunks
    d, ids = r.search_many(sketches[30:], k=7)
    assert d.shape == ids.shape == (10, 7) and ids.dtype == np.int64
    for q, sk in enumerate(sketches[30:]):
        hits = r.search(sk, k=7)
        assert [h.id for h in hits] == ids[q].tolist()
        np.testing.assert_allclose([h.distance for h in hits], d[q], atol=1e-6)


def test_remove(itq: Method, sketches: list[Sketch]) -> None:
    r = filled(itq, sketches[:10])
    first = r.search(sketches[3], k=10)
    gone = [first[0].id, first[4].id]
    r.remove(gone)
    assert len(r) == 8
    after = r.search(sketches[3], k=10)
    assert [h.id for h in after] == [h.id for h in first if h.id not in gone]
    assert r.item_meta(gone) == {}


# ---------------------------------------------------------------------------------------------- thumbnails
def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(io.BytesIO(data)) as im:
        im.verify()
    return Image.open(io.BytesIO(data)).size


def test_thumbnails_are_png_bytes(itq: Method, sketches: list[Sketch]) -> None:
    assert _png_size(thumbnail_png(sketches[0], size=48)) == (48, 48)
    ink = thumbnail_png(sketches[0], size=48)
    gray = np.asarray(Image.open(io.BytesIO(ink)).convert("L"))
    assert gray[0, 0] == 255 and gray.min() < 100  # dark ink on white
    assert max(_png_size(thumbnail_png(np.random.default_rng(0).random((40, 20)), size=32))) == 32
    assert max(_png_size(thumbnail_png(Image.new("RGB", (200, 100), "red"), size=50))) == 50
    r = Retriever(itq)
    r.add(sketches[:3], ids=[5, 6, 7], thumbnails=True)
    assert _png_size(r.thumbnail(6) or b"") == (96, 96)
    assert r.thumbnail(99) is None
    assert Retriever(itq).add(sketches[:1]) is not None and Retriever(itq).thumbnail(0) is None


# ---------------------------------------------------------------------------------------------- persistence
@pytest.fixture
def artifacts(itq: Method, sketches: list[Sketch], tmp_path: Path) -> tuple[Path, Path]:
    other = create_method("itq", nbits=16, iterations=10, seed=5, preprocessing=PRE)
    other.fit(sketches)
    save_model(itq, tmp_path / "models" / "itq-a")
    save_model(other, tmp_path / "models" / "itq-b")
    return tmp_path / "models" / "itq-a", tmp_path / "models" / "itq-b"


def _results(r: Retriever, queries: list[Sketch]) -> list[list[tuple[int, float, str | None, str | None]]]:
    return [[(h.id, h.distance, h.label, h.source) for h in r.search(q, k=8)] for q in queries]


def test_save_load_round_trip_with_manifest_model(
    artifacts: tuple[Path, Path], sketches: list[Sketch], tmp_path: Path
) -> None:
    a, _ = artifacts
    r = Retriever.from_model(a)
    r.add(
        sketches[:30],
        ids=np.arange(100, 130),
        labels=[f"c{i % 5}" for i in range(30)],
        sources=[f"s{i}" for i in range(30)],
        thumbnails=True,
    )
    before = _results(r, sketches[30:])
    r.save(tmp_path / "idx")
    loaded = Retriever.load(tmp_path / "idx")  # the model named in the manifest
    assert loaded.model_id == r.model_id and loaded.model_id.startswith("itq-16-")
    assert len(loaded) == 30
    assert _results(loaded, sketches[30:]) == before
    assert loaded.thumbnail(105) == r.thumbnail(105)
    assert all(isinstance(h, Hit) for h in loaded.search(sketches[0], k=3))


def test_load_with_another_model_is_refused(
    artifacts: tuple[Path, Path], sketches: list[Sketch], tmp_path: Path
) -> None:
    a, b = artifacts
    r = Retriever.from_model(a)
    r.add(sketches[:10])
    r.save(tmp_path / "idx")
    with pytest.raises(IndexError_, match="model"):
        Retriever.load(tmp_path / "idx", model=b)
    assert len(Retriever.load(tmp_path / "idx", model=a)) == 10


def test_unsaved_model_index_needs_a_model_to_load(itq: Method, sketches: list[Sketch], tmp_path: Path) -> None:
    r = filled(itq, sketches[:5])
    r.save(tmp_path / "idx")
    with pytest.raises(IndexError_, match="does not name its model"):
        Retriever.load(tmp_path / "idx")


def test_float_index_round_trip_with_a_method_object(sketches: list[Sketch], tmp_path: Path) -> None:
    m = ToyFloat()
    r = filled(m, sketches[:20])
    before = _results(r, sketches[30:33])
    r.save(tmp_path / "dense")
    loaded = Retriever.load(tmp_path / "dense", model=m)
    got = _results(loaded, sketches[30:33])
    assert [[x[0] for x in row] for row in got] == [[x[0] for x in row] for row in before]
    np.testing.assert_allclose([[x[1] for x in row] for row in got], [[x[1] for x in row] for row in before], atol=1e-6)
    assert [[x[2:] for x in row] for row in got] == [[x[2:] for x in row] for row in before]


def test_add_to_a_loaded_index_then_save_keeps_the_old_items(
    artifacts: tuple[Path, Path], sketches: list[Sketch], tmp_path: Path
) -> None:
    a, _ = artifacts
    r = Retriever.from_model(a)
    old_ids = [0, 1, 2, 5, 6]  # a gap: automatic ids must not collide with 5 and 6
    r.add(sketches[:5], ids=old_ids, labels=["old"] * 5, thumbnails=True)
    r.save(tmp_path / "idx")
    loaded = Retriever.load(tmp_path / "idx")
    new_ids = loaded.add(sketches[5:7], labels=["new"] * 2)
    assert new_ids.tolist() == [7, 8]
    labels = {h.id: h.label for h in loaded.search(sketches[0], k=7)}
    assert labels == {**{i: "old" for i in old_ids}, **{int(i): "new" for i in new_ids}}
    assert loaded.thumbnail(2) is not None and loaded.thumbnail(7) is None
    loaded.save(tmp_path / "idx")
    again = Retriever.load(tmp_path / "idx")
    assert {h.id: h.label for h in again.search(sketches[0], k=7)} == labels
    assert again.thumbnail(2) is not None
