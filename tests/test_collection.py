"""Collections and manifests (their splits: tests/test_splits.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from sketchsearch.data.collection import Collection
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
    p.write_text('{"id": "a1", "label": "a", "modality": "sketch", "source": "s"}\n' + line + "\n", encoding="utf-8")
    with pytest.raises(FormatError) as e:
        Collection.load_manifest(p)
    assert e.value.file == str(p) and e.value.record == 2 and fragment in e.value.reason


def test_collection_refuses_duplicate_ids() -> None:
    it = Item(id="a", label="x", modality="sketch", source="")
    with pytest.raises(ValueError, match="duplicate item id 'a'"):
        Collection([it, it])


def test_access_by_id_subset_and_classes() -> None:
    c = _coll({"dog": 2, "cat": 1}, photos=True)
    c.items.append(Item(id="x", label=None, modality="photo", source="x.jpg"))
    c = Collection(c.items, name="toy")
    assert c.classes == ["cat", "dog"] and len(c) == 7 and c.ids[:2] == ["dog-s0", "dog-p0"]
    assert "cat-p0" in c and "nope" not in c and c["cat-p0"].modality == "photo"
    with pytest.raises(KeyError, match="'nope'"):
        c["nope"]
    sub = c.subset(["cat-s0", "dog-s1"])
    assert [it.id for it in sub] == ["cat-s0", "dog-s1"] and sub.name == "toy"
    with pytest.raises(ValueError, match="modality"):
        Collection([Item(id="v", label=None, modality="video", source="")])  # type: ignore[arg-type]


def test_load_collection_counts_and_names_bad_records(tmp_path: Path) -> None:
    import json

    from sketchsearch.data.sources import load_collection

    folder = tmp_path / "qd"
    folder.mkdir()
    rows = [{"word": "bar", "key_id": f"b{i}", "drawing": [[[0, 10 + i], [0, 5]]]} for i in range(4)]
    (folder / "bar.ndjson").write_text("".join(json.dumps(r) + "\n" for r in rows) + "not json\n")
    coll = load_collection(folder)
    assert [it.id for it in coll] == ["b0", "b1", "b2", "b3"] and coll.path == str(folder) and coll.name == "qd"
    assert coll.skipped == 1 and [(Path(e["file"]).name, e["record"]) for e in coll.error_dicts()] == [
        ("bar.ndjson", 5)
    ]
    assert len(load_collection(folder, limit=2)) == 2
    with pytest.raises(FormatError, match="bar.ndjson"):
        load_collection(folder, strict=True)
    default = load_collection("default", limit=5)
    assert len(default) == 5 and default.path == "default" and all(it.sketch is not None for it in default)
