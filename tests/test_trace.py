"""data.trace: strokes traced from a drawing's pixels (for SketchMate on image collections): the traced strokes
cover the drawing's ink, run the way people draw, come in reading order, and take milliseconds; images
without ink are refused; make_example traces an image when a method asks for stroke points."""

from __future__ import annotations

import time

import numpy as np
import pytest
from PIL import Image

from sketchsearch.data.batching import Preprocessing, make_example, sketch_points
from sketchsearch.data.render import image_to_raster, rasterize
from sketchsearch.data.sketch import Sketch
from sketchsearch.data.synthetic import merchant_marks
from sketchsearch.data.trace import image_to_sketch
from sketchsearch.errors import InvalidSketchError


def paper(sketch: Sketch, size: int = 256, line_width: float = 3.0) -> Image.Image:
    """``sketch`` drawn in black on a white ``size`` px page."""
    ink = rasterize(sketch, size=size, line_width=line_width)
    return Image.fromarray(((1.0 - ink) * 255).astype(np.uint8))


def iou(a: Sketch, b: Sketch) -> float:
    """Intersection over union of the two drawings' ink, each rendered fitted to 64 px (2 px lines)."""
    ra, rb = rasterize(a, 64, line_width=2.0) > 0.3, rasterize(b, 64, line_width=2.0) > 0.3
    return float((ra & rb).sum() / (ra | rb).sum())


PLUS = Sketch([np.array([[50, 10], [50, 90]]), np.array([[10, 50], [90, 50]])])
# drawn from its bottom and right ends, the horizontal bar first: the tracer does not read this order
PLUS_BACKWARDS = Sketch([np.array([[90, 50], [10, 50]]), np.array([[50, 90], [50, 10]])])


@pytest.mark.parametrize("sketch", merchant_marks(6, 1, seed=3), ids=lambda s: s.label)
def test_traced_strokes_cover_the_drawing(sketch: Sketch) -> None:
    traced = image_to_sketch(paper(sketch))
    assert iou(traced, sketch) > 0.7
    # every traced point lies on the drawing's ink (the skeleton runs inside the line)
    ink = rasterize(sketch, size=256, line_width=3.0)
    pts = np.concatenate(traced.strokes).round().astype(int)
    assert (ink[pts[:, 1], pts[:, 0]] > 0.2).mean() > 0.97


def test_strokes_run_and_come_as_people_draw() -> None:
    traced = image_to_sketch(paper(PLUS_BACKWARDS))
    assert len(traced.strokes) == 2  # the crossing is gone through, not cut into four arms
    vertical, horizontal = traced.strokes
    assert vertical[0, 1] < vertical[-1, 1]  # from the top: the stroke that starts higher comes first
    assert horizontal[0, 0] < horizontal[-1, 0]  # from the left
    assert abs(vertical[:, 0] - vertical[0, 0]).max() < 3 and abs(horizontal[:, 1] - horizontal[0, 1]).max() < 3


def test_a_loop_starts_at_its_top_and_goes_counter_clockwise() -> None:
    a = np.linspace(0, 2 * np.pi, 60)
    ring = Sketch([np.stack([50 + 40 * np.cos(a), 50 + 40 * np.sin(a)], axis=1)])  # clockwise as seen
    (stroke,) = image_to_sketch(paper(ring)).strokes
    assert np.allclose(stroke[0], stroke[-1], atol=1.5)  # closed
    assert stroke[0, 1] <= stroke[:, 1].min() + 1  # starts at the top
    x, y = stroke[:, 0], stroke[:, 1]
    assert np.sum(x * np.roll(y, -1) - np.roll(x, -1) * y) < 0  # counter-clockwise as seen (y down)


def test_polarity_size_and_array_forms_agree() -> None:
    page = paper(PLUS)
    traced = image_to_sketch(page)
    ink = 255 - np.asarray(page)
    for other in (
        Image.fromarray(ink),  # light ink on a dark ground (QuickDraw bitmaps): polarity from the border
        ink,  # a uint8 array: ink = 255
        ink.astype(np.float32) / 255.0,  # a float array: ink = 1
    ):
        again = image_to_sketch(other)
        assert len(again.strokes) == 2 and all(np.allclose(a, b) for a, b in zip(again.strokes, traced.strokes))
    # a big scan is reduced to trace, and its strokes are given in its own pixels
    big = image_to_sketch(page.resize((1024, 1024), Image.BILINEAR))
    assert len(big.strokes) == 2 and np.allclose(np.array(big.bounds()) / 4, traced.bounds(), atol=2.5)


def test_no_ink_is_refused() -> None:
    with pytest.raises(InvalidSketchError, match="no ink") as e:
        image_to_sketch(Image.new("L", (64, 64), 255))
    assert e.value.field == "image"
    y, x = np.mgrid[:256, :256]
    blot = ((x - 128) ** 2 + (y - 128) ** 2 <= 20**2).astype(np.float32)  # a filled disc: no line in it
    with pytest.raises(InvalidSketchError, match="only specks or blots"):
        image_to_sketch(blot)
    with pytest.raises(InvalidSketchError, match=r"2-D array"):
        image_to_sketch(np.ones((8, 8, 3), np.float32))


def test_a_dot_of_the_pen_stays_and_dust_goes() -> None:
    dotted = Sketch([np.array([[50, 10], [50, 70]]), np.array([[50, 90]])])  # an "i" upside down
    page = np.asarray(paper(dotted)).copy()
    page[20, 20] = page[200, 30:32] = 0  # specks of dust, smaller than a dot of the pen
    traced = image_to_sketch(Image.fromarray(page))
    assert len(traced.strokes) == 2 and len(traced.strokes[1]) <= 2  # the line, then the dot below it
    assert np.concatenate(traced.strokes)[:, 0].min() > 100  # nothing left where the dust was


def test_tracing_256_px_takes_milliseconds() -> None:
    page = paper(merchant_marks(1, 1, seed=5)[0])
    image_to_sketch(page)  # first call loads scikit-image's kernels
    best = min(_timed(lambda: image_to_sketch(page)) for _ in range(5))
    assert best < 0.05, f"{best * 1000:.0f} ms for 256 px"


def _timed(fn: object) -> float:
    t0 = time.perf_counter()
    fn()  # type: ignore[operator]
    return time.perf_counter() - t0


def test_make_example_traces_an_image_for_stroke_points() -> None:
    pre = Preprocessing(inputs=("raster", "points"), raster_size=32, max_points=64)
    page = paper(PLUS)
    ex = make_example(page, pre)
    assert np.array_equal(ex["points"], sketch_points(image_to_sketch(page), 64))
    assert ex["points"].shape[1] == 4 and ex["points"][:, 3].sum() == 2  # two strokes: two pen lifts
    assert np.array_equal(ex["raster"], image_to_raster(page, 32))  # the raster is the image's own
    with pytest.raises(InvalidSketchError, match="no ink"):
        make_example(np.zeros((32, 32), np.float32), pre)
