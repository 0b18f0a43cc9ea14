"""The on-disk index folder: round trip, corruption, model mismatch, atomic replace, item updates
(through the Retriever, the one search path), folders whose manifest names the backend's old name."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from sketchsearch.errors import IndexArgumentError, IndexError_
from sketchsearch.index import create_index, store
from sketchsearch.index.dense import DenseIndex
from sketchsearch.index.store import load_index, read_manifest, save_index
from sketchsearch.methods import create_method
from sketchsearch.methods.base import Preprocessing
from sketchsearch.model import save_model
from sketchsearch.retrieval import Retriever

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 16


def make(rng: np.random.Generator, n: int = 40, nbits: int = 64) -> tuple[object, list[dict[str, object]]]:
    index = create_index("numba", nbits=nbits)
    ids = rng.permutation(1000)[:n]
    index.add(rng.integers(0, 256, size=(n, nbits // 8), dtype=np.uint8), ids)
    items = [
        {
            "id": int(i),
            "label": f"c{int(i) % 3}",
            "source": f"file.ndjson:{int(i)}",
            "thumbnail": PNG if i % 2 else None,
            "split": "gallery",
        }
        for i in ids
    ]
    return index, items


def test_round_trip(tmp_path: Path, rng: np.random.Generator) -> None:
    index, items = make(rng)
    folder = save_index(index, tmp_path / "idx", model_id="model-a", items=items, model_name="tiny")
    assert sorted(p.name for p in folder.iterdir()) == [
        "codes.npy",
        "ids.npy",
        "items.sqlite",
        "manifest.json",
    ]
    m = read_manifest(folder)
    assert (m["kind"], m["nbits"], m["count"], m["model_id"], m["format_version"]) == (
        "binary",
        64,
        40,
        "model-a",
        1,
    )
    loaded, items_store = load_index(folder, expected_model_id="model-a")
    assert isinstance(np.load(folder / "codes.npy", mmap_mode="r"), np.memmap)
    np.testing.assert_array_equal(loaded.codes, index.codes)
    np.testing.assert_array_equal(loaded.ids, index.ids)
    q = index.codes[:5]
    for a, b in zip(loaded.search(q, 7), index.search(q, 7)):
        np.testing.assert_array_equal(a, b)
    odd = next(i for i in index.ids.tolist() if i % 2)
    even = next(i for i in index.ids.tolist() if i % 2 == 0)
    got = items_store.items([odd, 123456, even])
    assert [r["id"] for r in got] == [odd, even]
    assert got[0]["label"] == f"c{odd % 3}" and got[0]["split"] == "gallery" and got[0]["has_thumbnail"]
    assert items_store.thumbnail(odd) == PNG and items_store.thumbnail(even) is None
    assert items_store.thumbnail(123456) is None
    with pytest.raises(IndexArgumentError):
        items_store.thumbnail("../../etc/passwd")  # type: ignore[arg-type]


def test_dense_round_trip(tmp_path: Path, rng: np.random.Generator) -> None:
    index = DenseIndex(6)
    index.add(rng.normal(size=(9, 6)).astype(np.float32))
    save_index(index, tmp_path / "d", model_id="m")
    loaded, _ = load_index(tmp_path / "d", mmap=False)
    assert isinstance(loaded, DenseIndex) and read_manifest(tmp_path / "d")["dim"] == 6
    np.testing.assert_array_equal(loaded.search(index.codes[:2], 3)[1], index.search(index.codes[:2], 3)[1])


def test_flipped_byte_in_codes_is_detected(tmp_path: Path, rng: np.random.Generator) -> None:
    index, items = make(rng)
    folder = save_index(index, tmp_path / "idx", model_id="m", items=items)
    raw = bytearray((folder / "codes.npy").read_bytes())
    raw[-3] ^= 0x10
    (folder / "codes.npy").write_bytes(bytes(raw))
    with pytest.raises(IndexError_, match=r"codes\.npy: checksum mismatch"):
        load_index(folder)
    loaded, _ = load_index(folder, verify=False)  # the documented opt-out still loads it
    assert len(loaded) == 40


@pytest.mark.parametrize("name", ["codes.npy", "ids.npy", "items.sqlite", "manifest.json"])
def test_missing_file_is_refused(tmp_path: Path, rng: np.random.Generator, name: str) -> None:
    index, items = make(rng)
    folder = save_index(index, tmp_path / "idx", model_id="m", items=items)
    (folder / name).unlink()
    with pytest.raises(IndexError_, match=name.replace(".", r"\.")):
        load_index(folder)


def test_wrong_format_version_and_model(tmp_path: Path, rng: np.random.Generator) -> None:
    index, items = make(rng)
    folder = save_index(index, tmp_path / "idx", model_id="model-a", items=items)
    with pytest.raises(IndexError_, match="model 'model-a'.*'model-b'"):
        load_index(folder, expected_model_id="model-b")
    m = json.loads((folder / "manifest.json").read_text())
    m["format_version"] = 99
    (folder / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(IndexError_, match="format version 99"):
        load_index(folder)


def test_failed_save_leaves_old_index_intact(
    tmp_path: Path, rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch
) -> None:
    old, items = make(rng)
    folder = save_index(old, tmp_path / "idx", model_id="old", items=items)
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    new, new_items = make(np.random.default_rng(7), n=10)

    def boom(*a: object, **k: object) -> None:
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(store, "_write_items", boom)  # fails after codes/ids are written
    with pytest.raises(IndexError_, match=r"could not be saved \(.*items.sqlite: disk full \(simulated\)\)"):
        save_index(new, folder, model_id="new", items=new_items)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [".idx.lock", "idx"]  # no temp folder left behind
    assert load_index(folder, expected_model_id="old")[0].ids.tolist() == old.ids.tolist()


def test_refuses_to_replace_a_folder_that_is_not_an_index(tmp_path: Path, rng: np.random.Generator) -> None:
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "keep.jpg").write_bytes(b"x")
    index, _ = make(rng)
    with pytest.raises(IndexError_, match="refusing"):
        save_index(index, tmp_path / "photos", model_id="m")
    assert (tmp_path / "photos" / "keep.jpg").exists()


def test_bad_items_are_refused(tmp_path: Path, rng: np.random.Generator) -> None:
    index, items = make(rng)
    with pytest.raises(IndexArgumentError, match="PNG") as e:
        save_index(index, tmp_path / "i", model_id="m", items=[{**items[0], "thumbnail": b"GIF89a"}])
    assert e.value.field == "items[0].thumbnail"
    with pytest.raises(IndexArgumentError, match="not in the index"):
        save_index(index, tmp_path / "i", model_id="m", items=[{"id": 99999}])
    assert not (tmp_path / "i").exists()


@pytest.fixture
def models(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    """Two saved 64-bit LSH models that differ only in their hyperplanes: name -> (artifact, model id)."""
    pre = Preprocessing(inputs=("raster",), raster_size=16, line_width=1.5)
    rasters = np.random.default_rng(0).random((8, 16, 16))
    out = {}
    for name, seed in (("a", 0), ("b", 1)):
        method = create_method("lsh", nbits=64, seed=seed, preprocessing=pre)
        method.fit(rasters)
        path = tmp_path / "models" / f"lsh-{name}"
        out[name] = (path, save_model(method, path).model_id)
    assert out["a"][1] != out["b"][1]
    return out


def test_add_and_remove_on_a_stored_index(
    tmp_path: Path, rng: np.random.Generator, models: dict[str, tuple[Path, str]]
) -> None:
    """Changing a saved index goes through the one search path: Retriever.load, add / remove, save."""
    (model_a, id_a), (model_b, id_b) = models["a"], models["b"]
    index, items = make(rng, n=20)
    folder = save_index(index, tmp_path / "idx", model_id=id_a, items=items)
    labels = {int(it["id"]): it["label"] for it in items}
    r = Retriever.load(folder, model=model_a)
    new_codes = rng.integers(0, 256, size=(3, 8), dtype=np.uint8)
    new_ids = r.add([None] * 3, encoded=new_codes, labels=["x", "y", "z"])  # type: ignore[list-item]
    r.save(folder)
    assert new_ids.tolist() == [int(index.ids.max()) + 1 + i for i in range(3)]
    loaded, st = load_index(folder, expected_model_id=id_a)
    assert len(loaded) == 23 and [r["label"] for r in st.items(new_ids.tolist())] == ["x", "y", "z"]
    assert {r["id"]: r["label"] for r in st.items(list(labels))} == labels  # the stored items are kept
    odd = next(i for i in labels if i % 2)
    assert st.thumbnail(odd) == PNG and st.items([odd])[0]["split"] == "gallery"
    d, got = loaded.search(new_codes, 1)
    assert got[:, 0].tolist() == new_ids.tolist() and (d[:, 0] == 0).all()
    gone = [int(index.ids[0]), int(new_ids[1])]
    r = Retriever.load(folder, model=model_a)
    r.remove(gone)
    assert len(r) == 21
    r.save(folder)
    loaded, st = load_index(folder)
    assert len(loaded) == 21 and not np.isin(loaded.ids, gone).any() and st.items(gone) == []
    with pytest.raises(IndexError_, match=f"model '{id_a}'.*'{id_b}'"):
        Retriever.load(folder, model=model_b)
    d, got = Retriever.load(folder, model=model_a).search_encoded(loaded.codes[:1], 3)
    assert got[0, 0] == loaded.ids[0] and d[0, 0] == 0


def test_manifests_with_the_former_backend_names_load(tmp_path: Path, rng: np.random.Generator) -> None:
    """Folders saved before the rename: binary manifests say "sketchsearch", dense ones name no backend."""
    index, items = make(rng)
    folder = save_index(index, tmp_path / "bin", model_id="m", items=items)
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["backend"] == "numba"
    (folder / "manifest.json").write_text(json.dumps({**manifest, "backend": "sketchsearch"}))
    loaded, _ = load_index(folder)
    assert loaded.name == "numba" and loaded.ids.tolist() == index.ids.tolist()
    for a, b in zip(loaded.search(index.codes[:4], 5), index.search(index.codes[:4], 5)):
        np.testing.assert_array_equal(a, b)
    (folder / "manifest.json").write_text(json.dumps({**manifest, "backend": "nope"}))
    with pytest.raises(
        IndexError_,
        match="manifest.json: field 'backend' is 'nope'.*binary backends: faiss, mih, milvus, numba, numpy, sharded",
    ):
        load_index(folder)

    dense = DenseIndex(6, metric="ip")
    dense.add(rng.normal(size=(9, 6)).astype(np.float32))
    folder = save_index(dense, tmp_path / "dense", model_id="m")
    manifest = json.loads((folder / "manifest.json").read_text())
    assert (manifest["backend"], manifest["dim"], manifest["metric"]) == ("dense", 6, "ip")
    del manifest["backend"]
    (folder / "manifest.json").write_text(json.dumps(manifest))
    loaded, _ = load_index(folder)
    assert isinstance(loaded, DenseIndex) and loaded.config() == {"dim": 6, "metric": "ip"}
    np.testing.assert_array_equal(loaded.codes, dense.codes)
