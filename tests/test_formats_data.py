"""The readers on the real datasets in ../shared/data: the counts its README states, exactly, with no
record skipped. Streams only (nothing rendered); marked `data`, skipped when the folder is absent."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from sketchsearch.data.formats import (
    detect_format,
    read_omniglot,
    read_qmul_chairv2,
    read_qmul_v1,
    read_quickdraw_bitmap,
    read_quickdraw_ndjson,
    read_sketchrnn,
    read_sketchy,
)
from sketchsearch.data.inspect import inspect_dataset

pytestmark = pytest.mark.data


def _strict_labels(items) -> Counter[str | None]:  # type: ignore[no-untyped-def]
    return Counter(it.label for it in items)


def test_quickdraw_raw(shared_data: Path) -> None:
    info = inspect_dataset(shared_data / "quickdraw" / "raw", strict=True)
    assert (info["format"], info["items"], info["classes"], info["skipped"]) == (
        "quickdraw_ndjson",
        8359,
        300,
        0,
    )
    assert info["with_strokes"] == 8359
    assert 11 <= min(info["class_counts"].values()) and max(info["class_counts"].values()) <= 114
    first = next(read_quickdraw_ndjson(shared_data / "quickdraw" / "raw" / "cat.ndjson"))
    assert first.meta["quickdraw_format"] == "raw" and first.sketch.times is not None


def test_quickdraw_simplified(shared_data: Path) -> None:
    info = inspect_dataset(shared_data / "quickdraw" / "simplified", strict=True)
    assert (info["items"], info["classes"], info["skipped"]) == (7475, 299, 0)
    first = next(read_quickdraw_ndjson(shared_data / "quickdraw" / "simplified" / "cat.ndjson"))
    pts = np.concatenate(first.sketch.strokes)
    assert first.meta["quickdraw_format"] == "simplified" and pts.min() >= 0 and pts.max() <= 255


def test_quickdraw_bitmaps(shared_data: Path) -> None:
    folder = shared_data / "quickdraw" / "bitmap"
    for name in ["apple", "bicycle", "cat", "diamond", "eye", "fish"]:
        counts = _strict_labels(read_quickdraw_bitmap(folder / f"{name}.npy", strict=True))
        assert counts == {name: 3000}
    npz = _strict_labels(read_quickdraw_bitmap(folder / "cat_fish_apple_bicycle.npz", strict=True))
    assert npz == {"cat": 1000, "fish": 1000, "apple": 1000, "bicycle": 1000}


def test_sketchrnn_omniglot(shared_data: Path) -> None:
    splits = Counter(it.meta["split"] for it in read_sketchrnn(shared_data / "sketchrnn" / "omniglot.npz", strict=True))
    assert splits == {"train": 30000, "valid": 1000, "test": 1000}


def test_sketchrnn_folder_reads_every_file(shared_data: Path) -> None:
    info = inspect_dataset(shared_data / "sketchrnn", strict=True)
    # omniglot 32,000 + kanji.rdp100 11,458 + kanji.rdp200 11,458 + short_kanji 11,100
    assert (info["format"], info["items"], info["skipped"], info["excluded"]) == ("sketchrnn", 66016, 0, {})


@pytest.mark.parametrize(
    "name, counts",
    [
        ("kanji.rdp100", {"train": 10358, "valid": 600, "test": 500}),
        ("kanji.rdp200", {"train": 10358, "valid": 600, "test": 500}),
        ("short_kanji", {"train": 10000, "valid": 600, "test": 500}),
    ],
)
def test_sketchrnn_kanji(shared_data: Path, name: str, counts: dict[str, int]) -> None:
    f = shared_data / "sketchrnn" / f"{name}.npz"
    assert detect_format(f) == "sketchrnn"
    assert Counter(it.meta["split"] for it in read_sketchrnn(f, strict=True)) == counts


def test_omniglot_strokes_and_images(shared_data: Path) -> None:
    items = list(read_omniglot(shared_data / "omniglot", strict=True))
    strokes = [it for it in items if it.sketch is not None]
    images = [it for it in items if it.image is not None]
    assert len(strokes) == len(images) == 2720
    assert len({it.label for it in strokes}) == len({it.label for it in images}) == 136
    assert Counter(it.label for it in strokes).most_common()[-1][1] == 20  # 20 drawers per character
    assert {it.pair for it in strokes} == {it.pair for it in images}  # every trajectory has its image
    assert {it.label.split("/")[0] for it in strokes} == {
        "Balinese",
        "Early_Aramaic",
        "Greek",
        "Korean",
        "Latin",
    }
    assert {it.image.shape for it in images} == {(105, 105)}
    # The reader negates Omniglot's y: the points must then lie on the black ink of the paired image.
    by_pair = {it.pair: it.image for it in images}
    hits = []
    for it in strokes[::271]:
        pts = np.rint(np.concatenate(it.sketch.strokes)).astype(int).clip(0, 104)
        ink = by_pair[it.pair] < 128
        near = ink | np.roll(ink, 1, 0) | np.roll(ink, -1, 0) | np.roll(ink, 1, 1) | np.roll(ink, -1, 1)
        hits.append(near[pts[:, 1], pts[:, 0]].mean())
    assert np.mean(hits) > 0.9


def test_sketchy_instance_pairs(shared_data: Path) -> None:
    items = list(read_sketchy(shared_data / "sketchy", strict=True))
    sketches = [it for it in items if it.modality == "sketch"]
    photos = [it for it in items if it.modality == "photo"]
    assert len(sketches) == len(photos) == 2500
    assert len({it.label for it in sketches}) == len({it.label for it in photos}) == 100
    photo_ids = {(it.label, it.pair) for it in photos}
    assert all((it.label, it.pair) in photo_ids for it in sketches)  # each sketch's source photo is there


def test_qmul_v1(shared_data: Path) -> None:
    counts = Counter(
        (it.label, it.meta["split"], it.modality) for it in read_qmul_v1(shared_data / "qmul_v1", strict=True)
    )
    assert counts == {
        ("shoes", "train", "sketch"): 304,
        ("shoes", "train", "photo"): 304,
        ("shoes", "test", "sketch"): 115,
        ("shoes", "test", "photo"): 115,
        ("chairs", "train", "sketch"): 200,
        ("chairs", "train", "photo"): 200,
        ("chairs", "test", "sketch"): 97,
        ("chairs", "test", "photo"): 97,
    }
    first = next(read_qmul_v1(shared_data / "qmul_v1" / "shoes"))
    assert first.image.shape == (256, 256) and first.pair == "shoes/1"


def test_qmul_chairv2(shared_data: Path) -> None:
    items = list(read_qmul_chairv2(shared_data / "qmul_chairv2", strict=True))
    assert len(items) == 1275 and len({it.pair for it in items}) == 400
    per_split = {s: len({it.pair for it in items if it.meta["split"] == s}) for s in ("train", "test")}
    assert per_split == {"train": 300, "test": 100}
    pts = np.concatenate([np.concatenate(it.sketch.strokes) for it in items])
    assert pts.min() >= -1 and pts.max() <= 257  # on a 256 canvas


@pytest.mark.parametrize(
    "sub, name",
    [
        ("quickdraw/raw", "quickdraw_ndjson"),
        ("quickdraw/simplified", "quickdraw_ndjson"),
        ("quickdraw/bitmap", "quickdraw_bitmap"),
        ("sketchrnn", "sketchrnn"),
        ("sketchrnn/omniglot.npz", "sketchrnn"),
        ("omniglot", "omniglot"),
        ("omniglot/images_background_small1", "omniglot"),
        ("sketchy", "sketchy"),
        ("sketchy/photo", "images"),
        ("qmul_v1", "qmul_v1"),
        ("qmul_v1/chairs", "qmul_v1"),
        ("qmul_chairv2", "qmul_chairv2"),
        ("qmul_chairv2/ChairV2_Coordinate", "qmul_chairv2"),
    ],
)
def test_detect_format_on_each_dataset(shared_data: Path, sub: str, name: str) -> None:
    assert detect_format(shared_data / sub) == name
