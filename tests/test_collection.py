"""Collections, manifests and deterministic saved splits."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from sketchsearch.data.collection import Collection, Splits, load_splits, make_splits
from sketchsearch.data.formats.base import Item
from sketchsearch.errors import FormatError


def _coll(sizes: dict[str, int], photos: bool = False) -> Collection:
    items = []
    for label, n in sizes.items():
        for j in range(n):
            items.append(
                Item(
                    id=f"{label}-s{j}",
                    label=label,
                    modality="sketch",
                    source=f"f.ndjson:{j}",
                    pair=f"{label}{j}",
                )
            )
            if photos:
                items.append(
                    Item(
                        id=f"{label}-p{j}",
                        label=label,
                        modality="photo",
                        source=f"{label}{j}.jpg",
                        pair=f"{label}{j}",
                    )
                )
    return Collection(items, name="toy")


SIZES = {f"c{i:02d}": 6 + i % 5 for i in range(20)}


def test_manifest_round_trip_jsonl_and_csv(tmp_path: Path) -> None:
    c = _coll({"cat": 2, "dog": 1}, photos=True)
    c.items.append(Item(id="x", label=None, modality="photo", source="x.jpg"))
    c = Collection(c.items)
    for name in ("manifest.jsonl", "manifest.csv"):
        p = c.save_manifest(tmp_path / name)
        back = Collection.load_manifest(p)
        assert back.manifest_rows() == c.manifest_rows()
        assert not list(tmp_path.glob(".*tmp"))  # the temporary file was renamed away
    with pytest.raises(ValueError, match="jsonl or .csv"):
        c.save_manifest(tmp_path / "m.txt")


@pytest.mark.parametrize(
    "line, fragment",
    [
        ("not json", "not JSON"),
        ("[1, 2]", "expected a JSON object"),
        ('{"label": "a", "modality": "sketch"}', "'id' must be"),
        ('{"id": "a", "label": "a", "modality": "video"}', "'modality' must be"),
        ('{"id": "a1", "label": "a", "modality": "sketch"}', "duplicate id"),
    ],
)
def test_bad_manifest_rows_name_file_and_line(tmp_path: Path, line: str, fragment: str) -> None:
    p = tmp_path / "manifest.jsonl"
    p.write_text(
        '{"id": "a1", "label": "a", "modality": "sketch", "source": "s"}\n' + line + "\n", encoding="utf-8"
    )
    with pytest.raises(FormatError) as e:
        Collection.load_manifest(p)
    assert e.value.file == str(p) and e.value.record == 2 and fragment in e.value.reason


def test_collection_refuses_duplicate_ids() -> None:
    it = Item(id="a", label="x", modality="sketch", source="")
    with pytest.raises(ValueError, match="duplicate item id 'a'"):
        Collection([it, it])


def test_same_seed_gives_byte_identical_files(tmp_path: Path) -> None:
    c = _coll(SIZES)
    kw = {"query_per_class": 2, "gallery_per_class": None, "train_fraction": 0.5, "unseen_classes": 0.25}
    a = make_splits(c, seed=3, **kw).save(tmp_path / "a" / "splits.json")
    # items given in another order: same splits
    b = make_splits(Collection(c.items[::-1]), seed=3, **kw).save(tmp_path / "b" / "splits.json")
    assert a.read_bytes() == b.read_bytes()
    other = make_splits(c, seed=4, **kw).save(tmp_path / "c" / "splits.json")
    assert other.read_bytes() != a.read_bytes()
    obj = json.loads(a.read_text())
    assert obj["seed"] == 3 and obj["params"]["query_per_class"] == 2 and obj["train"] == sorted(obj["train"])


def test_splits_are_disjoint_and_follow_the_rule() -> None:
    c = _coll(SIZES)
    s = make_splits(c, seed=0, query_per_class=2, gallery_per_class=3, train_fraction=0.5, unseen_classes=5)
    tr, ga, qu = set(s.train), set(s.gallery), set(s.query)
    assert not (tr & ga or tr & qu or ga & qu)
    assert len(s.unseen_classes) == 5 and set(s.unseen_classes) | set(s.seen_classes) == set(SIZES)
    label = {it.id: it.label for it in c}
    assert not {label[i] for i in tr} & set(s.unseen_classes)  # zero-shot: unseen classes never trained on
    for cls, n in SIZES.items():
        n_train = sum(label[i] == cls for i in tr)
        assert n_train == (0 if cls in s.unseen_classes else n // 2)
        assert sum(label[i] == cls for i in qu) == 2 == s.query_counts[cls]
        assert sum(label[i] == cls for i in ga) == min(3, n - n_train - 2)


def test_small_classes_get_fewer_queries_and_keep_a_gallery_item() -> None:
    c = _coll({"one": 1, "two": 2, "many": 8})
    s = make_splits(c, seed=0, query_per_class=3, train_fraction=0.0)
    assert s.query_counts == {"many": 3, "one": 0, "two": 1}
    assert "one-s0" in s.gallery and sum(i.startswith("two") for i in s.gallery) == 1


def test_sketch_queries_against_photo_gallery() -> None:
    c = _coll({"a": 3, "b": 1}, photos=True)
    s = make_splits(
        c, seed=0, query_per_class=5, train_fraction=0.0, query_modality="sketch", gallery_modality="photo"
    )
    assert all(c[i].modality == "sketch" for i in s.query) and all(
        c[i].modality == "photo" for i in s.gallery
    )
    assert s.query_counts == {"a": 3, "b": 1} and len(s.gallery) == 4


def test_unseen_classes_by_name_and_bad_parameters() -> None:
    c = _coll(SIZES)
    s = make_splits(c, unseen_classes=["c07", "c03"])
    assert s.unseen_classes == ["c03", "c07"] and s.params["unseen_classes"] == ["c03", "c07"]
    # numpy scalars are recorded as plain numbers (the file stays JSON)
    assert make_splits(c, unseen_classes=np.int64(2)).to_json() == make_splits(c, unseen_classes=2).to_json()
    assert len(make_splits(c, unseen_classes=np.float32(0.25)).unseen_classes) == 5
    with pytest.raises(ValueError, match="not in the collection"):
        make_splits(c, unseen_classes=["nope"])
    with pytest.raises(ValueError, match="collection has 20 classes"):
        make_splits(c, unseen_classes=21)
    with pytest.raises(ValueError, match="train_fraction"):
        make_splits(c, train_fraction=1.5)


def test_load_validates_against_the_manifest(tmp_path: Path) -> None:
    c = _coll(SIZES)
    c.save_manifest(tmp_path / "manifest.jsonl")
    s = make_splits(c, seed=1, unseen_classes=3)
    path = s.save(tmp_path / "splits.json")
    back = load_splits(path)
    assert isinstance(back, Splits) and back.to_json() == s.to_json()
    obj = json.loads(path.read_text())
    obj["query"].append("ghost-7")
    path.write_text(json.dumps(obj), encoding="utf-8")
    with pytest.raises(FormatError) as e:
        load_splits(path)
    assert e.value.file == str(path) and e.value.record == "query" and "'ghost-7'" in e.value.reason


def test_load_refuses_overlap_and_unseen_leak(tmp_path: Path) -> None:
    c = _coll(SIZES)
    s = json.loads(make_splits(c, seed=1, unseen_classes=3).to_json())
    overlap = dict(s, gallery=s["gallery"] + [s["train"][0]])
    (tmp_path / "o.json").write_text(json.dumps(overlap), encoding="utf-8")
    with pytest.raises(FormatError, match="disjoint"):
        load_splits(tmp_path / "o.json", c)
    leak = dict(s, unseen_classes=[c[s["train"][0]].label])
    (tmp_path / "l.json").write_text(json.dumps(leak), encoding="utf-8")
    with pytest.raises(FormatError, match="have train items"):
        load_splits(tmp_path / "l.json", c)
    (tmp_path / "n.json").write_text("{}", encoding="utf-8")
    with pytest.raises(FormatError, match="format"):
        load_splits(tmp_path / "n.json", c)
    with pytest.raises(FormatError, match="no manifest"):
        load_splits(tmp_path / "l.json")
