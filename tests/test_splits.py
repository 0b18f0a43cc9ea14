"""data.splits: every builder is deterministic, disjoint, keeps unseen classes out of train, and round-trips
through its file; ``check`` and ``load`` refuse bad split files naming the file and the key; the rules of the
category and zero-shot builders, by hand."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from sketchsearch.data.collection import Collection
from sketchsearch.data.formats.base import Item
from sketchsearch.data.splits import (
    SPLIT_FORMAT,
    Split,
    category_split,
    list_splits,
    make_split,
    zero_shot_split,
)
from sketchsearch.errors import FormatError


def sketchy(n_classes: int = 8, photos: int = 4, per_photo: int = 2) -> list[Item]:
    """Sketchy-shaped items: per class ``photos`` photos ``photo/<c>/p<k>`` and ``per_photo`` sketches of each
    (``pair`` = the photo's name); photo 0's group is the dataset's own ``test`` split (QMUL-style)."""
    items = []
    for c in (f"c{i}" for i in range(n_classes)):
        for k in range(photos):
            meta = {"split": "test" if k == 0 else "train"}
            items.append(Item(f"photo/{c}/p{k}", c, "photo", f"{c}/p{k}.jpg", pair=f"p{k}", meta=meta))
            for j in range(per_photo):
                items.append(Item(f"sketch/{c}/p{k}-{j}", c, "sketch", f"{c}/p{k}-{j}.png", pair=f"p{k}", meta=meta))
    return items


#: parameters that give every kind seen and (where the kind has them) unseen classes on ``sketchy()``
PARAMS: dict[str, dict[str, Any]] = {
    "category": {"queries_per_class": 2},
    "zero_shot": {"unseen_classes": 2},
    "class_holdout": {"unseen": 2},
    "photo_group": {"n_unseen": 2},
    "heldout_instance": {},
    "instance": {},
    "leave_one_out": {},
}
#: kinds whose parts do not depend on the seed
SEEDLESS = {"instance", "leave_one_out"}


def test_every_registered_kind_is_covered() -> None:
    assert sorted(list_splits()) == sorted(PARAMS)


@pytest.fixture(params=sorted(PARAMS))
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def test_deterministic_for_a_seed(kind: str) -> None:
    items = sketchy()
    a = make_split(kind, items, seed=3, **PARAMS[kind])
    assert a.kind == kind and a.seed == 3 and a.evaluations()
    assert make_split(kind, items, seed=3, **PARAMS[kind]).to_json() == a.to_json()
    if kind not in SEEDLESS:
        assert make_split(kind, items, seed=4, **PARAMS[kind]).parts != a.parts


def test_parts_disjoint_known_and_no_unseen_class_in_train(kind: str) -> None:
    items = sketchy()
    s = make_split(kind, items, **PARAMS[kind])
    ids = [i for part in s.parts.values() for i in part]
    assert len(ids) == len(set(ids)) and set(ids) <= {it.id for it in items}
    label = {it.id: it.label for it in items}
    assert not {label[i] for i in s.train} & set(s.unseen_classes)
    assert not set(s.seen_classes) & set(s.unseen_classes)
    if kind in ("zero_shot", "class_holdout", "photo_group"):
        assert len(s.unseen_classes) == 2 and {label[i] for i in s.part("unseen_query")} == set(s.unseen_classes)
        assert [n for n, _, _ in s.evaluations()] == ["main", "zero_shot"]
    s.check(items)  # its own check agrees


def test_save_load_round_trip(kind: str, tmp_path: Path) -> None:
    s = replace(make_split(kind, sketchy(), seed=5, **PARAMS[kind]), data="somewhere")
    path = s.save(tmp_path / "split.json")
    back = Split.load(path)
    assert back == s and back.to_json() == s.to_json() == path.read_text(encoding="utf-8")
    assert json.loads(path.read_text())["format"] == SPLIT_FORMAT


def _moved_to_train(s: Split) -> tuple[Split, str]:
    """``s`` with the first id of its first part moved into ``train``; (new split, that id)."""
    name = next(n for n, ids in s.parts.items() if ids)
    moved = s.parts[name][0]
    parts = {n: [i for i in ids if i != moved] for n, ids in s.parts.items()}
    parts["train"] = [moved, *parts.get("train", [])]
    return replace(s, parts=parts), moved


def test_check_refuses_unknown_duplicate_and_leaked_ids(kind: str, tmp_path: Path) -> None:
    items = sketchy()
    s = make_split(kind, items, **PARAMS[kind])
    src = tmp_path / "split.json"
    first = next(n for n, ids in s.parts.items() if ids)
    ghost = replace(s, parts={**s.parts, first: [*s.parts[first], "ghost-7"]})
    with pytest.raises(FormatError) as e:
        ghost.check(items, src)
    assert (e.value.file, e.value.record) == (str(src), f"parts.{first}") and "'ghost-7'" in e.value.reason
    twice = replace(s, parts={**s.parts, "extra": [s.parts[first][0]]})
    with pytest.raises(FormatError) as e:
        twice.check(items, src)
    assert e.value.record == "parts.extra" and "is in both" in e.value.reason
    moved, item_id = _moved_to_train(s)
    moved.check(items, src)  # still a valid split while its class is seen ...
    label = next(it.label for it in items if it.id == item_id)
    leak = replace(moved, unseen_classes=sorted({*moved.unseen_classes, label}))
    with pytest.raises(FormatError) as e:  # ... not once the class is declared unseen
        leak.check(items, src)
    assert (e.value.file, e.value.record) == (str(src), "parts.train") and label in e.value.reason


@pytest.mark.parametrize(
    "edit, key",
    [
        (lambda o: o.update(format="sketchsearch.split/1"), "format"),
        (lambda o: o.update(parts=[1, 2]), "parts"),
        (lambda o: o["parts"].update(query=[1, 2]), "parts.query"),
        (lambda o: o.update(unseen_classes="c1"), "unseen_classes"),
        (lambda o: o.update(kind="no-such-kind"), "kind"),
    ],
)
def test_load_names_the_file_and_the_bad_key(tmp_path: Path, edit: Any, key: str) -> None:
    obj = json.loads(make_split("zero_shot", sketchy(), unseen_classes=2).to_json())
    edit(obj)
    path = tmp_path / "split.json"
    path.write_text(json.dumps(obj), encoding="utf-8")
    with pytest.raises(FormatError) as e:
        Split.load(path)
    assert (e.value.file, e.value.record) == (str(path), key)


def test_load_refuses_what_is_not_a_split_file(tmp_path: Path) -> None:
    (tmp_path / "bad.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(FormatError, match="not JSON") as e:
        Split.load(tmp_path / "bad.json")
    assert e.value.file == str(tmp_path / "bad.json")
    with pytest.raises(FormatError, match="cannot read"):
        Split.load(tmp_path / "missing.json")
    with pytest.raises(ValueError, match="zero_shot"):  # an unknown kind lists the registered ones
        make_split("nope", sketchy())


# ------------------------------------------------------------------------------------------------ category
def _labelled(labels: list[str]) -> list[Item]:
    return [Item(f"id{i}", lab, "sketch", f"f:{i}") for i, lab in enumerate(labels)]


def test_category_split_is_per_class_and_independent_of_other_classes() -> None:
    labels = ["cat"] * 15 + ["dog"] * 12 + ["ant"] * 3 + ["owl"]
    items = _labelled(labels)
    s = category_split(items, queries_per_class=10, seed=0)
    label = {it.id: it.label for it in items}
    assert set(s.query) | set(s.gallery) == set(label) and not set(s.query) & set(s.gallery)
    per_class = {c: sum(label[i] == c for i in s.query) for c in set(labels)}
    assert per_class == {"cat": 10, "dog": 10, "ant": 2, "owl": 0}  # small classes keep one gallery item
    assert s.query == [it.id for it in items if it.id in set(s.query)]  # parts in the items' order
    assert category_split(items, 10, seed=1).query != s.query
    only_cat = category_split(items[:15], 10, seed=0)  # a class's split does not depend on the others
    assert only_cat.query == [i for i in s.query if label[i] == "cat"]
    with pytest.raises(ValueError, match="queries_per_class"):
        category_split(items, queries_per_class=0)


# ----------------------------------------------------------------------------------------------- zero_shot
def _coll(sizes: dict[str, int], photos: bool = False) -> Collection:
    items = []
    for label, n in sizes.items():
        for j in range(n):
            items.append(Item(f"{label}-s{j}", label, "sketch", f"f.ndjson:{j}", pair=f"{label}{j}"))
            if photos:
                items.append(Item(f"{label}-p{j}", label, "photo", f"{label}{j}.jpg", pair=f"{label}{j}"))
    return Collection(items, name="toy")


SIZES = {f"c{i:02d}": 6 + i % 5 for i in range(20)}


def _counts(c: Collection, ids: list[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for i in ids:
        out[str(c[i].label)] = out.get(str(c[i].label), 0) + 1
    return out


def test_same_seed_gives_byte_identical_files(tmp_path: Path) -> None:
    c = _coll(SIZES)
    kw = {"query_per_class": 2, "gallery_per_class": None, "train_fraction": 0.5, "unseen_classes": 0.25}
    a = zero_shot_split(c.items, seed=3, **kw).save(tmp_path / "a" / "split.json")
    b = zero_shot_split(c.items[::-1], seed=3, **kw).save(tmp_path / "b" / "split.json")  # another order
    assert a.read_bytes() == b.read_bytes()
    other = zero_shot_split(c.items, seed=4, **kw).save(tmp_path / "c" / "split.json")
    assert other.read_bytes() != a.read_bytes()
    obj = json.loads(a.read_text())
    assert obj["seed"] == 3 and obj["params"]["query_per_class"] == 2
    assert all(ids == sorted(ids) for ids in obj["parts"].values())


def test_zero_shot_parts_follow_the_rule() -> None:
    c = _coll(SIZES)
    s = zero_shot_split(c.items, seed=0, query_per_class=2, gallery_per_class=3, train_fraction=0.5, unseen_classes=5)
    assert len(s.unseen_classes) == 5 and set(s.unseen_classes) | set(s.seen_classes) == set(SIZES)
    train, query, gallery = _counts(c, s.train), _counts(c, s.query), _counts(c, s.gallery)
    u_query, u_gallery = _counts(c, s.part("unseen_query")), _counts(c, s.part("unseen_gallery"))
    for cls, n in SIZES.items():
        unseen = cls in s.unseen_classes
        n_train = train.get(cls, 0)
        assert n_train == (0 if unseen else n // 2)
        assert (u_query if unseen else query).get(cls) == 2 and cls not in (query if unseen else u_query)
        assert (u_gallery if unseen else gallery).get(cls) == min(3, n - n_train - 2)


def test_small_classes_get_fewer_queries_and_keep_a_gallery_item() -> None:
    c = _coll({"one": 1, "two": 2, "many": 8})
    s = zero_shot_split(c.items, seed=0, query_per_class=3, train_fraction=0.0)
    assert _counts(c, s.query) == {"many": 3, "two": 1}
    assert "one-s0" in s.gallery and sum(i.startswith("two") for i in s.gallery) == 1


def test_sketch_queries_against_photo_gallery() -> None:
    c = _coll({"a": 3, "b": 1}, photos=True)
    s = zero_shot_split(
        c.items, seed=0, query_per_class=5, train_fraction=0.0, query_modality="sketch", gallery_modality="photo"
    )
    assert all(c[i].modality == "sketch" for i in s.query) and all(c[i].modality == "photo" for i in s.gallery)
    assert _counts(c, s.query) == {"a": 3, "b": 1} and len(s.gallery) == 4


def test_unseen_classes_by_name_and_bad_parameters() -> None:
    items = _coll(SIZES).items
    s = zero_shot_split(items, unseen_classes=["c07", "c03"])
    assert s.unseen_classes == ["c03", "c07"] and s.params["unseen_classes"] == ["c03", "c07"]
    # numpy scalars are recorded as plain numbers (the file stays JSON)
    assert (
        zero_shot_split(items, unseen_classes=np.int64(2)).to_json()
        == zero_shot_split(items, unseen_classes=2).to_json()
    )
    assert len(zero_shot_split(items, unseen_classes=np.float32(0.25)).unseen_classes) == 5
    with pytest.raises(ValueError, match="not in the collection"):
        zero_shot_split(items, unseen_classes=["nope"])
    with pytest.raises(ValueError, match="collection has 20 classes"):
        zero_shot_split(items, unseen_classes=21)
    with pytest.raises(ValueError, match="train_fraction"):
        zero_shot_split(items, train_fraction=1.5)
    with pytest.raises(ValueError, match="query_modality"):
        zero_shot_split(items, query_modality="video")


# ------------------------------------------------------------------------------------- sketch/photo kinds
def test_instance_kinds_keep_each_query_photo_in_the_gallery() -> None:
    items = sketchy()
    by_id = {it.id: it for it in items}
    for kind in ("heldout_instance", "instance"):
        s = make_split(kind, items, **PARAMS[kind])
        assert s.query and all(by_id[i].modality == "sketch" for i in s.query)
        assert all(by_id[i].modality == "photo" for i in s.gallery)
        own = {(by_id[i].label, by_id[i].pair) for i in s.gallery}
        assert all((by_id[i].label, by_id[i].pair) in own for i in s.query), kind
    inst = make_split("instance", items)
    assert all(by_id[i].meta["split"] == "test" for i in inst.query + inst.gallery)
    assert all(by_id[i].meta["split"] == "train" for i in inst.train)
    with pytest.raises(ValueError, match="no 'val' sketches"):
        make_split("instance", items, test="val")


def test_photo_group_holds_out_whole_groups_with_their_photo() -> None:
    items = sketchy()
    by_id = {it.id: it for it in items}
    s = make_split("photo_group", items, n_unseen=2, heldout=0.25)
    assert all(by_id[i].modality == "sketch" for i in s.query + s.part("unseen_query"))
    assert all(by_id[i].modality == "photo" for i in s.gallery + s.part("unseen_gallery"))
    train_groups = {(by_id[i].label, by_id[i].pair) for i in s.train if by_id[i].modality == "sketch"}
    for i in s.query:  # a held-out group: none of its sketches trains, its photo is in the gallery
        assert (by_id[i].label, by_id[i].pair) not in train_groups
        assert f"photo/{by_id[i].label}/{by_id[i].pair}" in s.gallery
