"""Batching: padding and lengths by hand, raster + points batches equal to rendering each item directly,
the max_points budget, array passthrough / conversion, and refusals."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from sketchsearch.data.batching import (
    RasterDataset,
    SketchDataset,
    collate,
    make_batch,
    make_example,
    query_to_batch,
    sketch_points,
)
from sketchsearch.data.render import rasterize
from sketchsearch.data.sketch import Sketch
from sketchsearch.errors import InvalidSketchError
from sketchsearch.methods.base import Preprocessing

BOTH = Preprocessing(inputs=("raster", "points"), raster_size=32, line_width=2.0, max_points=10)


def walk(rng: np.random.Generator, n: int) -> Sketch:
    return Sketch([np.cumsum(rng.normal(size=(n, 2)), axis=0)])


def test_collate_pads_points_and_records_lengths() -> None:
    pts = [np.full((3, 4), 1, np.float32), np.full((1, 4), 2, np.float32), np.full((5, 4), 3, np.float32)]
    examples = [
        {"label": i, "points": p, "raster": np.full((4, 4), i, np.float32), "domain": i % 2} for i, p in enumerate(pts)
    ]
    b = collate(examples)
    assert b["points"].shape == (3, 5, 4) and b["points"].dtype == torch.float32
    assert b["lengths"].tolist() == [3, 1, 5] and b["lengths"].dtype == torch.long
    expected = np.zeros((3, 5, 4), np.float32)
    expected[0, :3], expected[1, :1], expected[2, :5] = 1, 2, 3
    np.testing.assert_array_equal(b["points"].numpy(), expected)
    assert b["label"].tolist() == [0, 1, 2] and b["label"].dtype == torch.long
    assert b["raster"].shape == (3, 1, 4, 4)
    np.testing.assert_array_equal(b["raster"][:, 0, 0, 0].numpy(), [0, 1, 2])
    assert b["domain"].tolist() == [0, 1, 0]


def test_collate_all_empty_points_keeps_one_step() -> None:
    b = collate([{"label": -1, "points": np.zeros((0, 4), np.float32)}] * 2)
    assert b["points"].shape == (2, 1, 4) and b["lengths"].tolist() == [0, 0]
    assert "raster" not in b


def test_make_batch_raster_and_points_match_direct_rendering(rng: np.random.Generator) -> None:
    sketches = [walk(rng, n) for n in (4, 7, 9)]
    b = make_batch(sketches, BOTH, labels=[2, 0, 1])
    assert set(b) == {"raster", "points", "lengths", "label"}
    assert b["raster"].shape == (3, 1, 32, 32) and b["raster"].dtype == torch.float32
    for i, sk in enumerate(sketches):
        np.testing.assert_array_equal(b["raster"][i, 0].numpy(), rasterize(sk, size=32, line_width=2.0))
        n = sk.n_points
        assert b["lengths"][i] == n
        np.testing.assert_allclose(b["points"][i, :n].numpy(), sk.normalise(1.0).to_4d(), atol=1e-6)
        assert torch.all(b["points"][i, n:] == 0)
    assert b["label"].tolist() == [2, 0, 1]
    assert make_batch(sketches, BOTH)["label"].tolist() == [-1, -1, -1]


def test_sketch_points_hand_example() -> None:
    # an L in a 2 x 4 box: normalised scale 1/4, x offset (1 - 0.5) / 2 = 0.25
    pts = sketch_points(Sketch([[[0, 0], [0, 4], [2, 4]]]), max_points=10)
    np.testing.assert_allclose(pts, [[0.25, 0, 1, 0], [0, 1, 1, 0], [0.5, 0, 0, 1]], atol=1e-6)


def test_points_follow_max_points(rng: np.random.Generator) -> None:
    long = walk(rng, 300)
    for max_points in (8, 50, 256):
        pts = sketch_points(long, max_points)
        assert pts.shape[1] == 4 and 1 <= len(pts) <= max_points
        assert pts.dtype == np.float32
    # a dense but simple stroke is simplified (not cut): it still ends where the drawing ends
    t = np.linspace(0, 1, 500)
    line = Sketch([np.stack([t, 0.5 * t], axis=1)])
    pts = sketch_points(line, max_points=20)
    assert len(pts) <= 20
    np.testing.assert_allclose(pts[:, :2].sum(axis=0), [1.0, 0.75], atol=1e-3)  # the end point in the unit box
    b = make_batch([long, line], Preprocessing(inputs=("points",), max_points=16))
    assert b["points"].shape[1] <= 16 and int(b["lengths"].max()) <= 16
    assert "raster" not in b


def test_raster_passthrough_of_a_right_sized_array(rng: np.random.Generator) -> None:
    pre = Preprocessing(inputs=("raster",), raster_size=32)
    x = rng.random((32, 32)).astype(np.float32)
    b = make_batch([x], pre)
    np.testing.assert_array_equal(b["raster"][0, 0].numpy(), x)
    u8 = (x * 255).astype(np.uint8)  # a bitmap: ink = 255
    np.testing.assert_allclose(make_batch([u8], pre)["raster"][0, 0].numpy(), u8 / 255.0, atol=1e-7)


def test_wrong_sized_array_is_resized(rng: np.random.Generator) -> None:
    pre = Preprocessing(inputs=("raster",), raster_size=32)
    x = np.zeros((64, 64), np.float32)
    x[16:48, 16:48] = 1.0  # a filled square in the middle
    r = make_batch([x], pre)["raster"][0, 0].numpy()
    assert r.shape == (32, 32) and r.dtype == np.float32
    assert r[16, 16] == pytest.approx(1.0, abs=0.01) and r[0, 0] == 0.0
    assert r.sum() == pytest.approx(16 * 16, rel=0.1)


def test_pil_image_is_rasterized_as_drawing() -> None:
    pre = Preprocessing(inputs=("raster",), raster_size=32)
    page = np.full((100, 100), 255, np.uint8)
    page[40:60, 10:90] = 0  # dark bar on white
    r = make_batch([Image.fromarray(page)], pre)["raster"][0, 0].numpy()
    assert r.shape == (32, 32) and r[0, 0] == 0.0 and r.max() > 0.9


def test_points_of_an_image_are_traced_and_a_blank_image_is_refused() -> None:
    with pytest.raises(InvalidSketchError, match="ink"):  # nothing to trace strokes from
        make_example(np.zeros((32, 32), np.float32), BOTH)
    img = np.zeros((32, 32), np.float32)
    img[16, 4:28] = 1.0  # one horizontal line (ink = 1)
    ex = make_example(img, BOTH)
    assert len(ex["points"]) >= 2 and ex["raster"].shape == (32, 32)


def test_query_to_batch_refuses_an_empty_sketch() -> None:
    with pytest.raises(InvalidSketchError) as e:
        query_to_batch(Sketch([]), BOTH)
    assert e.value.field == "strokes"
    b = query_to_batch(Sketch([[[0, 0], [1, 1]]]), BOTH)
    assert b["raster"].shape == (1, 1, 32, 32) and b["lengths"].tolist() == [2]


def test_sketch_dataset_renders_caches_and_checks_labels(rng: np.random.Generator) -> None:
    sketches = [walk(rng, 5) for _ in range(3)]
    ds = SketchDataset(sketches, [0, 1, 2], BOTH)
    assert len(ds) == 3
    ex = ds[1]
    assert ex["label"] == 1
    np.testing.assert_array_equal(ex["raster"], rasterize(sketches[1], size=32, line_width=2.0))
    assert ds[1] is ex  # cached
    assert SketchDataset(sketches, None, BOTH, cache=False)[0]["label"] == -1
    with pytest.raises(ValueError, match="2 labels for 3 items"):
        SketchDataset(sketches, [0, 1], BOTH)


def test_raster_dataset() -> None:
    x = np.arange(2 * 4 * 4, dtype=np.float64).reshape(2, 4, 4)
    ds = RasterDataset(x, [5, 6])
    assert len(ds) == 2 and ds[1]["label"] == 6 and ds[1]["raster"].dtype == np.float32
    b = collate([ds[0], ds[1]])
    np.testing.assert_array_equal(b["raster"][:, 0].numpy(), x)
    assert RasterDataset(x)[0]["label"] == -1
