"""Item identity and collections a person can present: sources relative to the collection's folder, sidecar
metadata (CSV / JSON) loaded by the one data entry point into ``item.meta``, stored in items.sqlite's ``meta``
column and returned on hits; old item stores without the column; the collection's name, slug, title and
description in the manifest and their defaults."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sketchsearch.data.sources import load_collection, read_source
from sketchsearch.errors import FormatError, IndexArgumentError
from sketchsearch.index import create_index
from sketchsearch.index.store import (
    ItemStore,
    collection_fields,
    default_collection_name,
    load_index,
    read_manifest,
    save_index,
    slugify,
)
from sketchsearch.methods import create_method
from sketchsearch.methods.base import Preprocessing
from sketchsearch.retrieval import Hit, Retriever


def _images(root: Path, names: list[str]) -> None:
    for i, name in enumerate(names):
        f = root / name
        f.parent.mkdir(parents=True, exist_ok=True)
        img = np.full((24, 24), 255, np.uint8)
        img[4 + i % 10, 2:22] = 0
        Image.fromarray(img).save(f)


# ---------------------------------------------------------------------------------------------- sources
def test_sources_are_relative_to_the_collection_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _images(tmp_path / "scans", ["a/1.png", "b/2.png", "3.png"])
    assert sorted(it.source for it in load_collection(tmp_path / "scans")) == ["3.png", "a/1.png", "b/2.png"]
    assert [it.source for it in load_collection(tmp_path / "scans" / "a" / "1.png")] == ["1.png"]
    monkeypatch.chdir(tmp_path / "scans")
    assert sorted(it.source for it in load_collection(".")) == ["3.png", "a/1.png", "b/2.png"]
    nd = tmp_path / "qd" / "cat.ndjson"
    nd.parent.mkdir()
    nd.write_text(json.dumps({"word": "cat", "key_id": "9", "drawing": [[[0, 10], [0, 10]]]}) + "\n")
    assert [it.source for it in load_collection(nd.parent)] == ["cat.ndjson:1"]


# ---------------------------------------------------------------------------------------------- sidecar
def test_csv_sidecar_by_source_or_id(tmp_path: Path) -> None:
    _images(tmp_path, ["a/1.png", "a/2.png", "b/3.png"])
    (tmp_path / "metadata.csv").write_text(
        "source,title,date,place,url,maker\n"
        "a/1.png,First mark,1650,Bristol,https://example.org/1,\n"
        "./b/3,Third mark,,London,,John Smith\n"  # by id (no suffix), with ./
        "gone.png,Not here,,,,\n",
        encoding="utf-8",
    )
    errors: list[FormatError] = []
    reading = read_source(tmp_path, on_error=errors.append)
    items = {it.source: it for it in reading.items}
    assert items["a/1.png"].meta == {
        "title": "First mark",
        "date": "1650",
        "place": "Bristol",
        "url": "https://example.org/1",
    }
    assert items["b/3.png"].meta == {"title": "Third mark", "place": "London", "maker": "John Smith"}
    assert items["a/2.png"].meta == {} and errors == []
    assert reading.metadata is not None and reading.metadata.unmatched == ["gone.png"]


def test_json_sidecar_object_and_list_and_bad_rows(tmp_path: Path) -> None:
    _images(tmp_path, ["1.png", "2.png"])
    (tmp_path / "metadata.json").write_text(json.dumps({"1.png": {"title": "One", "tags": ["a", "b"]}, "2": 5}))
    coll = load_collection(tmp_path)
    items = {it.source: it.meta for it in coll}
    assert items == {"1.png": {"title": "One", "tags": ["a", "b"]}, "2.png": {}}
    assert coll.skipped == 1 and coll.errors[0].record == "2" and "object of fields" in coll.errors[0].reason
    (tmp_path / "metadata.json").write_text(
        json.dumps([{"id": "2", "title": "Two"}, {"title": "nameless"}, {"id": "2", "title": "again"}])
    )
    coll = load_collection(tmp_path)
    assert {it.source: it.meta for it in coll} == {"1.png": {}, "2.png": {"title": "Two"}}
    assert [(e.record, e.reason.split(" (")[0]) for e in coll.errors] == [
        (2, "no source / path / file / id naming the item"),
        (3, "'2' is named again"),
    ]
    (tmp_path / "metadata.json").write_text("{not json")
    with pytest.raises(FormatError, match=r"metadata.json: not JSON"):
        load_collection(tmp_path, strict=True)
    assert load_collection(tmp_path).skipped == 1  # reported, the images still read


def test_csv_sidecar_without_a_key_column_is_reported(tmp_path: Path) -> None:
    _images(tmp_path, ["1.png"])
    (tmp_path / "metadata.csv").write_text("name,title\n1.png,One\n")
    coll = load_collection(tmp_path)
    assert len(coll) == 1 and coll.skipped == 1
    assert "no column naming the item; give one of source, path, file, id" in str(coll.errors[0])
    (tmp_path / "metadata.csv").write_text("id,title\n1,One\n1,Again\n")
    coll = load_collection(tmp_path)
    assert coll.items[0].meta == {"title": "One"}
    assert (coll.errors[0].record, "named again (first at record 2)" in coll.errors[0].reason) == (3, True)


# ---------------------------------------------------------------------------------------------- store + hits
@pytest.fixture(scope="module")
def lsh() -> object:
    method = create_method("lsh", nbits=64, seed=0, preprocessing=Preprocessing(inputs=("raster",), raster_size=16))
    method.fit(np.random.default_rng(0).random((8, 16, 16)))
    return method


def test_metadata_round_trip_into_hits(tmp_path: Path, lsh: object) -> None:
    """Sidecar -> item.meta -> Retriever.add -> items.sqlite -> Retriever.load -> Hit.source / Hit.meta."""
    from sketchsearch.data.batching import item_input

    _images(tmp_path / "data", ["x/1.png", "x/2.png", "y/3.png"])
    (tmp_path / "data" / "metadata.csv").write_text("path,title,place\nx/2.png,Two,Bristol\n", encoding="utf-8")
    coll = load_collection(tmp_path / "data", modality="sketch")
    r = Retriever(lsh, model_id="lsh-test")  # type: ignore[arg-type]
    r.add(
        [item_input(it) for it in coll],
        labels=[it.label for it in coll],
        sources=[it.source for it in coll],
        metas=[it.meta for it in coll],
    )
    query = item_input(coll["x/2"])
    before = r.search(query, k=3)
    r.save(tmp_path / "idx")
    loaded = Retriever.load(tmp_path / "idx", model=lsh)  # type: ignore[arg-type]
    after = loaded.search(query, k=3)
    assert [(h.id, h.source, h.meta) for h in after] == [(h.id, h.source, h.meta) for h in before]
    assert {h.source: (h.label, h.meta) for h in after} == {
        "x/1.png": ("x", {}),
        "x/2.png": ("x", {"title": "Two", "place": "Bristol"}),
        "y/3.png": ("y", {}),
    }
    # saved again (an add / remove) the metadata is kept
    loaded.remove([0])
    loaded.save(tmp_path / "idx")
    _, store = load_index(tmp_path / "idx")
    assert [row["meta"] for row in store.items([1, 2])] == [{"title": "Two", "place": "Bristol"}, {}]


def test_hit_stays_backwards_compatible() -> None:
    h = Hit(3, 1, 0.5, "cat", "cat/1.png", {"k": 1})
    assert (h.extra, h.meta) == ({"k": 1}, {})
    assert list(h.__dict__) == ["id", "rank", "distance", "label", "source", "extra", "meta"]


def _index(n: int = 4) -> object:
    index = create_index("numpy", nbits=64)
    index.add(np.random.default_rng(0).integers(0, 256, (n, 8), dtype=np.uint8), np.arange(n))
    return index


def test_item_stores_without_the_meta_column_still_load(tmp_path: Path) -> None:
    folder = save_index(_index(), tmp_path / "old", "m", items=[{"id": 0, "label": "a", "source": "a.png"}])
    db = folder / "items.sqlite"
    db.unlink()
    con = sqlite3.connect(db)  # the schema before items had metadata
    con.execute(
        "CREATE TABLE items (id INTEGER PRIMARY KEY, label TEXT, source TEXT, thumbnail BLOB, extra TEXT NOT NULL)"
    )
    con.execute("INSERT INTO items VALUES (0, 'a', 'a.png', NULL, '{\"split\": \"gallery\"}')")
    con.commit()
    con.close()
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["files"]["items.sqlite"] = {
        "sha256": __import__("hashlib").sha256(db.read_bytes()).hexdigest(),
        "bytes": db.stat().st_size,
    }
    (folder / "manifest.json").write_text(json.dumps(manifest))
    _, store = load_index(folder)
    assert store.items([0]) == [
        {"id": 0, "label": "a", "source": "a.png", "meta": {}, "split": "gallery", "has_thumbnail": False}
    ]
    assert store.ids_with_sources(["a.png", "b.png"]) == {"a.png": [0]}


def test_store_refuses_meta_that_is_not_a_dict(tmp_path: Path) -> None:
    with pytest.raises(IndexArgumentError, match=r"items\[0\].meta: expected a dict"):
        save_index(_index(), tmp_path / "i", "m", items=[{"id": 0, "meta": ["title"]}])
    folder = save_index(
        _index(), tmp_path / "i", "m", items=[{"id": 1, "meta": {"title": "Été", "year": np.int64(1650)}}]
    )
    assert ItemStore(folder / "items.sqlite").items([1])[0]["meta"] == {"title": "Été", "year": 1650}


# ---------------------------------------------------------------------------------------------- collection fields
def test_slugs() -> None:
    assert slugify("Merchant marks of Bristol") == "merchant-marks-of-bristol"
    assert slugify("  Marques d'Été — 1650!  ") == "marques-d-ete-1650"
    assert slugify("x" * 100) == "x" * 64
    kanji = slugify("漢字の印")
    assert kanji.startswith("collection-") and len(kanji) == 19 and kanji != slugify("別の印")


def test_collection_fields_and_errors() -> None:
    assert collection_fields("  Merchant   marks\nof Bristol ", description="  Marks cut in stone.\n") == {
        "name": "Merchant marks of Bristol",
        "slug": "merchant-marks-of-bristol",
        "title": "Merchant marks of Bristol",
        "description": "Marks cut in stone.",
    }
    assert collection_fields("a", title="The A collection")["title"] == "The A collection"
    with pytest.raises(IndexArgumentError, match="^name: a non-empty name"):
        collection_fields("   ")
    with pytest.raises(IndexArgumentError, match="^title: at most 200 characters"):
        collection_fields("a", title="t" * 201)


@pytest.mark.parametrize(
    ("out", "data", "expected"),
    [
        ("runs/merchant-marks", "scans", "merchant-marks"),
        ("runs/demo/index", "scans", "scans"),
        ("idx", "my_scans", "my_scans"),
        ("out2", "default", "default"),
        ("Index", "kanjivg", "kanjivg"),
        ("idx", "marks.ndjson", "marks"),
    ],
)
def test_default_collection_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, out: str, data: str, expected: str
) -> None:
    monkeypatch.chdir(tmp_path)
    if data.endswith(".ndjson"):
        Path(data).write_text("")
    assert default_collection_name(out, data) == expected


def test_manifest_keeps_the_collection_fields_across_saves(tmp_path: Path, lsh: object) -> None:
    r = Retriever(lsh, model_id="lsh-test", collection=collection_fields("Marks of Bristol", description="d"))  # type: ignore[arg-type]
    r.add([np.zeros((28, 28), np.float32)], sources=["a.png"])
    r.save(tmp_path / "idx")
    m = read_manifest(tmp_path / "idx")
    assert (m["name"], m["slug"], m["title"], m["description"]) == (
        "Marks of Bristol",
        "marks-of-bristol",
        "Marks of Bristol",
        "d",
    )
    again = Retriever.load(tmp_path / "idx", model=lsh)  # type: ignore[arg-type]
    again.add([np.ones((28, 28), np.float32)])
    again.save(tmp_path / "idx")
    assert read_manifest(tmp_path / "idx")["slug"] == "marks-of-bristol"
    with pytest.raises(IndexArgumentError, match="collection: unknown field"):
        save_index(_index(), tmp_path / "x", "m", collection={"colour": "red"})
