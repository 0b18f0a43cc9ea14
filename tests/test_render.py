"""Rasterisation: the raster convention (float32, ink = 1 on 0), ink amounts computed by hand (length x width),
antialiasing, invariance of the normalised frame, and images -> rasters (polarity, framing)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from PIL import Image

from sketchsearch.data.render import image_to_raster, rasterize, rasterize_batch
from sketchsearch.data.sketch import Sketch
from sketchsearch.errors import InvalidSketchError

MARGIN = 0.08  # rasterize's default margin (fraction of the side on each edge)


def random_sketch(rng: np.random.Generator, n_strokes: int = 3) -> Sketch:
    return Sketch([np.cumsum(rng.normal(size=(15, 2)), axis=0) for _ in range(n_strokes)])


@pytest.mark.parametrize("size", [28, 64, 97])
def test_shape_dtype_range(rng: np.random.Generator, size: int) -> None:
    r = rasterize(random_sketch(rng), size=size)
    assert r.shape == (size, size) and r.dtype == np.float32
    assert r.min() >= 0.0 and r.max() <= 1.0
    assert r.max() == 1.0  # some pixel is fully covered by a stroke
    # the background is 0: the margin rows/columns stay empty
    m = int(size * MARGIN) - 1
    assert r[:m].sum() == 0 and r[-m:].sum() == 0 and r[:, :m].sum() == 0 and r[:, -m:].sum() == 0


@pytest.mark.parametrize("line_width", [1.0, 1.5, 3.0])
def test_horizontal_line_ink_is_length_times_width(line_width: float) -> None:
    size = 64
    r = rasterize(Sketch([[[0, 0], [10, 0]]]), size=size, line_width=line_width)
    length = size * (1 - 2 * MARGIN)  # the line spans the inner box
    # round caps add at most a half-disc at each end; pixels snap to the 4x supersampled grid
    assert length * line_width * 0.97 <= r.sum() <= (length + line_width) * line_width * 1.1
    rows = np.flatnonzero(r.sum(axis=1))
    assert rows.min() >= size // 2 - 2 and rows.max() <= size // 2 + 1  # centred vertically
    cols = np.flatnonzero(r.sum(axis=0))
    slack = line_width / 2 + 1  # round caps reach half a width past the ends
    assert abs(cols.min() - size * MARGIN) <= slack and abs(cols.max() - size * (1 - MARGIN)) <= slack


def test_wide_line_is_solid_ink_in_its_middle() -> None:
    r = rasterize(Sketch([[[0, 0], [10, 0]]]), size=64, line_width=3.0)
    assert np.all(r[31:33, 10:54] == 1.0)
    assert r[0, 0] == 0.0


def test_antialiasing_gives_intermediate_values() -> None:
    r = rasterize(Sketch([[[0, 0], [10, 7]]]), size=64)
    partial = (r > 0) & (r < 1)
    assert partial.sum() > 20
    assert len(np.unique(r[partial])) > 5
    no_aa = rasterize(Sketch([[[0, 0], [10, 7]]]), size=64, supersample=1)
    assert set(np.unique(no_aa)) <= {0.0, 1.0}


def test_line_width_increases_ink(rng: np.random.Generator) -> None:
    sk = random_sketch(rng)
    inks = [rasterize(sk, line_width=w).sum() for w in (1.0, 1.5, 2.5, 4.0)]
    assert all(a < b for a, b in itertools.pairwise(inks))


def test_single_point_stroke_renders_a_centred_dot() -> None:
    r = rasterize(Sketch([[[3, 3]]]), size=64, line_width=3.0)
    assert r.sum() == pytest.approx(np.pi * 1.5**2, rel=0.25)  # a disc of diameter line_width
    cy, cx = np.argwhere(r > 0).mean(axis=0)
    assert abs(cy - 31.5) <= 1 and abs(cx - 31.5) <= 1
    # a dot beside a line is drawn too
    with_dot = rasterize(Sketch([[[0, 0], [10, 0]], [[5, 5]]]), size=64)
    line = rasterize(Sketch([[[0, 0], [10, 0]]]), size=64)
    assert with_dot.sum() > line.sum()


def test_translated_and_scaled_drawing_gives_the_same_raster(rng: np.random.Generator) -> None:
    sk = random_sketch(rng)
    base = rasterize(sk)
    for m in ([[3, 0, 100], [0, 3, -50]], [[0.01, 0, 0], [0, 0.01, 7]], [[1, 0, -1e3], [0, 1, 1e3]]):
        np.testing.assert_allclose(rasterize(sk.transformed(np.array(m, np.float32))), base, atol=0.02)
    # far from the origin float32 coordinates lose ~1e-3 units: a few edge pixels may move one subpixel
    far = rasterize(sk.transformed(np.array([[1, 0, -1e4], [0, 1, 1e4]], np.float32)))
    assert np.abs(far - base).mean() < 0.005


def test_aspect_ratio_is_kept() -> None:
    # a 2:1 rectangle: its ink's bounding box is about twice as wide as tall
    r = rasterize(Sketch([[[0, 0], [2, 0], [2, 1], [0, 1], [0, 0]]]), size=64)
    rows, cols = np.flatnonzero(r.sum(axis=1) > 0.5), np.flatnonzero(r.sum(axis=0) > 0.5)
    assert (np.ptp(cols) + 1) / (np.ptp(rows) + 1) == pytest.approx(2.0, rel=0.1)


def test_empty_sketch_and_tiny_size_are_refused() -> None:
    with pytest.raises(InvalidSketchError) as e:
        rasterize(Sketch([]))
    assert e.value.field == "strokes"
    with pytest.raises(InvalidSketchError) as e:
        rasterize(Sketch([[[0, 0], [1, 1]]]), size=1)
    assert e.value.field == "size"


def test_rasterize_batch(rng: np.random.Generator) -> None:
    sketches = [random_sketch(rng) for _ in range(3)]
    out = rasterize_batch(sketches, size=32)
    assert out.shape == (3, 32, 32) and out.dtype == np.float32
    np.testing.assert_array_equal(out[1], rasterize(sketches[1], size=32))
    assert rasterize_batch([], size=32).shape == (0, 32, 32)


# ---------------------------------------------------------------------------------------------- images
def _png_of(ink: np.ndarray, dark_on_light: bool) -> Image.Image:
    gray = (1.0 - ink) if dark_on_light else ink
    return Image.fromarray(np.round(gray * 255).astype(np.uint8))


def test_image_to_raster_inverts_dark_on_light_only(rng: np.random.Generator) -> None:
    ink = rasterize(random_sketch(rng), size=64)
    from_dark = image_to_raster(_png_of(ink, dark_on_light=True), size=64)
    from_light = image_to_raster(_png_of(ink, dark_on_light=False), size=64)
    for out in (from_dark, from_light):
        assert out.dtype == np.float32 and out.shape == (64, 64)
        assert out[0, 0] == 0.0 and out.max() > 0.9  # ink = 1 on a 0 background either way
    np.testing.assert_allclose(from_dark, from_light, atol=1 / 255 + 1e-6)
    # forcing no inversion on dark-on-light keeps the light background as "ink"
    assert image_to_raster(_png_of(ink, True), size=64, invert=False, fit=False).mean() > 0.8


def test_image_to_raster_refits_the_drawing_like_rasterize(rng: np.random.Generator) -> None:
    sk = random_sketch(rng)
    want = rasterize(sk, size=64)
    # the same drawing rendered big, off-centre and small on a large white page
    page = np.zeros((400, 300), np.float32)
    page[250:378, 20:148] = rasterize(sk, size=128, line_width=3.0, margin=0.0)
    got = image_to_raster(_png_of(page, dark_on_light=True), size=64)
    assert np.abs(got - want).mean() < 0.06
    assert np.corrcoef(got.ravel(), want.ravel())[0, 1] > 0.8


@pytest.mark.parametrize("colour", [0, 255, 128])
def test_image_to_raster_refuses_a_blank_image(colour: int) -> None:
    with pytest.raises(InvalidSketchError) as e:
        image_to_raster(Image.new("L", (50, 40), colour), size=32)
    assert e.value.field == "image"
