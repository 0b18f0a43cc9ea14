"""Sketch: format round trips on a hand example, geometry (normalise, RDP, resample) against hand-computed
answers and a brute-force recursive RDP, and the errors bad input must raise."""

from __future__ import annotations

import numpy as np
import pytest

from sketchsearch.data.sketch import Sketch, rdp
from sketchsearch.errors import InvalidSketchError

# Two strokes: an "L" (0,0) -> (1,0) -> (1,2), then a short segment (3,3) -> (4,5).
STROKES = [np.array([[0, 0], [1, 0], [1, 2]], np.float32), np.array([[3, 3], [4, 5]], np.float32)]
# offsets from the previous point (the first from the origin); pen lifted after points 3 and 5
STROKE3 = np.array([[0, 0, 0], [1, 0, 0], [0, 2, 1], [2, 1, 0], [1, 2, 1]], np.float32)
STROKE5 = np.array(
    [
        [0, 0, 1, 0, 0],
        [1, 0, 1, 0, 0],
        [0, 2, 0, 1, 0],
        [2, 1, 1, 0, 0],
        [1, 2, 0, 1, 0],
        [0, 0, 0, 0, 1],
    ],
    np.float32,
)
FOUR_D = STROKE5[:-1, :4]


def _same_strokes(a: Sketch, b: list[np.ndarray], atol: float = 1e-6) -> None:
    assert len(a.strokes) == len(b)
    for got, want in zip(a.strokes, b):
        assert got.dtype == np.float32
        np.testing.assert_allclose(got, want, atol=atol)


# ---------------------------------------------------------------------------------------------- formats
def test_to_stroke3_hand_example() -> None:
    s3 = Sketch(STROKES).to_stroke3()
    assert s3.dtype == np.float32
    np.testing.assert_array_equal(s3, STROKE3)


def test_to_stroke5_and_4d_hand_example() -> None:
    sk = Sketch(STROKES)
    np.testing.assert_array_equal(sk.to_stroke5(), STROKE5)
    np.testing.assert_array_equal(sk.to_4d(), FOUR_D)
    assert sk.to_4d().dtype == np.float32


@pytest.mark.parametrize(
    "build",
    [
        lambda: Sketch.from_stroke3(STROKE3),
        lambda: Sketch.from_stroke5(STROKE5),
        lambda: Sketch.from_4d(FOUR_D),
        lambda: Sketch.from_polylines([[(0, 0), (1, 0), (1, 2)], [(3, 3), (4, 5)]]),
    ],
    ids=["stroke3", "stroke5", "4d", "polylines"],
)
def test_from_formats_give_the_hand_strokes(build) -> None:  # type: ignore[no-untyped-def]
    _same_strokes(build(), STROKES)


def test_round_trips_on_random_sketches(rng: np.random.Generator) -> None:
    for _ in range(5):
        strokes = [rng.normal(size=(int(n), 2)).astype(np.float32) * 50 for n in rng.integers(1, 8, size=4)]
        sk = Sketch(strokes)
        # float32 offsets re-summed: exact up to float32 rounding of coordinates ~100
        _same_strokes(Sketch.from_stroke3(sk.to_stroke3()), strokes, atol=1e-4)
        _same_strokes(Sketch.from_stroke5(sk.to_stroke5(max_len=40)), strokes, atol=1e-4)
        _same_strokes(Sketch.from_4d(sk.to_4d()), strokes, atol=1e-4)


def test_from_stroke5_stops_at_the_first_end_row() -> None:
    tail = np.array([[0, 0, 0, 0, 1], [7, 7, 1, 0, 0], [1, 1, 0, 1, 0]], np.float32)
    _same_strokes(Sketch.from_stroke5(np.vstack([STROKE5[:-1], tail])), STROKES)


def test_from_stroke3_keeps_meta_kwargs() -> None:
    sk = Sketch.from_stroke3(STROKE3, label="cat", id="a1")
    assert (sk.label, sk.id) == ("cat", "a1")


def test_to_stroke5_pads_to_max_len_with_end_rows() -> None:
    out = Sketch(STROKES).to_stroke5(max_len=8)
    assert out.shape == (8, 5)
    np.testing.assert_array_equal(out[:6], STROKE5)
    np.testing.assert_array_equal(out[5:], np.tile([0, 0, 0, 0, 1], (3, 1)))
    # exactly fits: 5 points + 1 end row
    np.testing.assert_array_equal(Sketch(STROKES).to_stroke5(max_len=6), STROKE5)


def test_to_stroke5_too_long_raises_naming_max_len() -> None:
    with pytest.raises(InvalidSketchError) as e:
        Sketch(STROKES).to_stroke5(max_len=5)
    assert e.value.field == "max_len" and "5 points" in str(e.value)


@pytest.mark.parametrize(
    "arr, field",
    [(np.zeros((3, 2)), "stroke3"), (np.zeros((3, 4)), "stroke5"), (np.zeros((3, 5)), "points4d")],
)
def test_wrong_shapes_are_refused(arr: np.ndarray, field: str) -> None:
    ctor = {"stroke3": Sketch.from_stroke3, "stroke5": Sketch.from_stroke5, "points4d": Sketch.from_4d}[field]
    with pytest.raises(InvalidSketchError) as e:
        ctor(arr)
    assert e.value.field == field


# ---------------------------------------------------------------------------------------------- validation
def test_empty_sketch_is_refused_naming_strokes() -> None:
    for sk in (Sketch([]), Sketch([np.zeros((0, 2))]), Sketch.from_stroke5(np.array([[0, 0, 0, 0, 1]]))):
        assert sk.is_empty
        for call in (sk.validate, sk.to_stroke3, sk.to_stroke5, sk.bounds, sk.normalise):
            with pytest.raises(InvalidSketchError) as e:
                call()
            assert e.value.field == "strokes"


def test_zero_point_strokes_are_dropped_with_their_times() -> None:
    sk = Sketch([np.zeros((0, 2)), [[1, 1], [2, 2]]], times=[[], [10, 20]])
    assert len(sk.strokes) == 1 and sk.n_points == 2
    assert sk.times is not None and len(sk.times) == 1
    np.testing.assert_array_equal(sk.times[0], [10, 20])


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_coordinates_are_refused_naming_the_stroke(bad: float) -> None:
    with pytest.raises(InvalidSketchError) as e:
        Sketch([[[0, 0], [1, 1]], [[0, 0], [bad, 1]]])
    assert e.value.field == "strokes[1]"
    assert "finite" in str(e.value)


def test_bad_point_shape_is_refused_naming_the_stroke() -> None:
    with pytest.raises(InvalidSketchError) as e:
        Sketch([np.zeros((3, 3))])
    assert e.value.field == "strokes[0]"


def test_mismatched_times_are_refused() -> None:
    with pytest.raises(InvalidSketchError) as e:
        Sketch(STROKES, times=[[0, 1, 2]])
    assert e.value.field == "times"
    with pytest.raises(InvalidSketchError) as e:
        Sketch(STROKES, times=[[0, 1, 2], [3]])
    assert e.value.field == "times[1]"


# ---------------------------------------------------------------------------------------------- normalise
def test_normalise_hand_example_keeps_aspect_and_centres() -> None:
    sk = Sketch([[[2, 10], [6, 10], [6, 12]]], label="x", id="7", meta={"k": 1})
    # width 4, height 2 -> scale 1/4; height 0.5 centred in [0, 1] -> y offset 0.25
    out = sk.normalise()
    np.testing.assert_allclose(out.strokes[0], [[0, 0.25], [1, 0.25], [1, 0.75]], atol=1e-6)
    np.testing.assert_allclose(sk.normalise(10.0).strokes[0], [[0, 2.5], [10, 2.5], [10, 7.5]], atol=1e-5)
    assert (out.label, out.id, out.meta) == ("x", "7", {"k": 1})
    np.testing.assert_array_equal(sk.strokes[0], [[2, 10], [6, 10], [6, 12]])  # the input is untouched


def test_normalise_without_aspect_fills_the_box() -> None:
    out = Sketch([[[2, 10], [6, 10], [6, 12]]]).normalise(keep_aspect=False)
    np.testing.assert_allclose(out.strokes[0], [[0, 0], [1, 0], [1, 1]], atol=1e-6)


def test_normalise_random_sketch_fits_unit_box(rng: np.random.Generator) -> None:
    sk = Sketch([rng.normal(size=(10, 2)) * [30, 5] + 100, rng.normal(size=(4, 2))])
    out = sk.normalise()
    x0, y0, x1, y1 = out.bounds()
    w, h = x1 - x0, y1 - y0
    assert max(w, h) == pytest.approx(1.0, abs=1e-5)
    assert (x0 + x1) / 2 == pytest.approx(0.5, abs=1e-5) and (y0 + y1) / 2 == pytest.approx(0.5, abs=1e-5)
    bx0, by0, bx1, by1 = sk.bounds()
    assert w / h == pytest.approx((bx1 - bx0) / (by1 - by0), rel=1e-4)


def test_normalise_single_point_goes_to_the_centre() -> None:
    np.testing.assert_allclose(Sketch([[[5, -3]]]).normalise(2.0).strokes[0], [[1, 1]])


# ---------------------------------------------------------------------------------------------- RDP
def _rdp_reference(p: np.ndarray, eps: float, offset: int = 0) -> list[int]:
    """Textbook recursive Ramer-Douglas-Peucker (perpendicular distance to the line through the ends)."""
    if len(p) < 3:
        return [offset + i for i in range(len(p))]
    a, b = p[0].astype(np.float64), p[-1].astype(np.float64)
    seg = b - a
    L = np.hypot(*seg)
    mid = p[1:-1].astype(np.float64)
    d = np.hypot(*(mid - a).T) if L == 0 else np.abs(seg[0] * (mid[:, 1] - a[1]) - seg[1] * (mid[:, 0] - a[0])) / L
    k = int(np.argmax(d)) + 1
    if d[k - 1] <= eps:
        return [offset, offset + len(p) - 1]
    left = _rdp_reference(p[: k + 1], eps, offset)
    right = _rdp_reference(p[k:], eps, offset + k)
    return left[:-1] + right


def test_rdp_hand_case_drops_collinear_keeps_corner() -> None:
    pts = np.array([[0, 0], [1, 0.01], [2, 0], [3, 0], [3, 1], [3, 2]], np.float32)
    np.testing.assert_array_equal(rdp(pts, 0.1), [0, 3, 5])
    # the small bump survives a tolerance below its height
    np.testing.assert_array_equal(rdp(pts, 0.001), [0, 1, 2, 3, 5])


def test_rdp_epsilon_zero_keeps_every_non_collinear_point() -> None:
    t = np.linspace(0, 1, 20)
    pts = np.stack([t, t**2], axis=1)
    np.testing.assert_array_equal(rdp(pts, 0.0), np.arange(20))


def test_rdp_epsilon_zero_drops_exactly_collinear_points() -> None:
    # distance 0 is not > 0: points exactly on the chord (and repeated points) carry nothing
    pts = np.array([[0, 0], [1, 1], [2, 2], [2, 2], [3, 0]], np.float32)
    np.testing.assert_array_equal(rdp(pts, 0.0), [0, 2, 4])
    np.testing.assert_array_equal(rdp(pts, 0.0), _rdp_reference(pts, 0.0))


def test_rdp_short_inputs() -> None:
    np.testing.assert_array_equal(rdp(np.zeros((1, 2)), 1.0), [0])
    np.testing.assert_array_equal(rdp(np.array([[0, 0], [1, 1]]), 1.0), [0, 1])


def test_rdp_closed_stroke_with_equal_ends() -> None:
    square = np.array([[0, 0], [1, 0], [1, 1], [0, 1], [0, 0]], np.float64)
    np.testing.assert_array_equal(rdp(square, 0.1), _rdp_reference(square, 0.1))
    assert 2 in rdp(square, 0.1)  # the far corner of a closed loop is kept


@pytest.mark.parametrize("eps", [0.5, 2.0, 5.0])
def test_rdp_matches_recursive_reference_on_random_walks(rng: np.random.Generator, eps: float) -> None:
    for _ in range(10):
        pts = np.cumsum(rng.normal(size=(int(rng.integers(3, 60)), 2)) * 3, axis=0).astype(np.float32)
        np.testing.assert_array_equal(rdp(pts, eps), _rdp_reference(pts, eps))


def test_simplify_applies_rdp_per_stroke_and_times_follow() -> None:
    pts = np.array([[0, 0], [1, 0.01], [2, 0], [3, 0], [3, 1], [3, 2]], np.float32)
    sk = Sketch([pts, pts[:2]], times=[np.arange(6) * 10.0, [100.0, 110.0]], label="l")
    out = sk.simplify(0.1)
    np.testing.assert_array_equal(out.strokes[0], pts[[0, 3, 5]])
    np.testing.assert_array_equal(out.strokes[1], pts[:2])
    assert out.times is not None
    np.testing.assert_array_equal(out.times[0], [0, 30, 50])
    np.testing.assert_array_equal(out.times[1], [100, 110])
    assert out.label == "l"
    assert Sketch([pts]).simplify(0.1).times is None


# ---------------------------------------------------------------------------------------------- resample
def test_resample_straight_line_exact_spacing() -> None:
    out = Sketch([[[0, 0], [10, 0]]], times=[[0.0, 1000.0]]).resample(2.5)
    np.testing.assert_allclose(out.strokes[0], [[0, 0], [2.5, 0], [5, 0], [7.5, 0], [10, 0]], atol=1e-6)
    assert out.times is not None
    np.testing.assert_allclose(out.times[0], [0, 250, 500, 750, 1000])


def test_resample_follows_arc_length_round_a_corner() -> None:
    # an L of arc length 4 + 2 = 6 sampled every 1.5: points at arc 0, 1.5, 3, 4.5, 6
    out = Sketch([[[0, 0], [4, 0], [4, 2]]]).resample(1.5)
    np.testing.assert_allclose(out.strokes[0], [[0, 0], [1.5, 0], [3, 0], [4, 0.5], [4, 2]], atol=1e-6)


@pytest.mark.parametrize("spacing", [0.7, 1.0, 3.0, 5.9])
def test_resample_spacing_is_even_and_never_wider_than_asked(rng: np.random.Generator, spacing: float) -> None:
    pts = np.cumsum(np.abs(rng.normal(size=(12, 2))) * 2, axis=0)  # monotone: straight-ish polyline
    arc_in = np.linalg.norm(np.diff(pts, axis=0), axis=1)
    total = arc_in.sum()
    out = Sketch([pts]).resample(spacing).strokes[0]
    np.testing.assert_allclose(out[0], pts[0], atol=1e-4)
    np.testing.assert_allclose(out[-1], pts[-1], atol=1e-4)
    # arc position of each output point along the input polyline
    cum = np.concatenate([[0], np.cumsum(arc_in)])
    pos = []
    for p in out.astype(np.float64):
        best = min(
            (np.linalg.norm(p - (pts[i] + t * (pts[i + 1] - pts[i]))), cum[i] + t * arc_in[i])
            for i in range(len(pts) - 1)
            for t in [float(np.clip(np.dot(p - pts[i], pts[i + 1] - pts[i]) / arc_in[i] ** 2, 0, 1))]
        )
        assert best[0] < 1e-3  # the point lies on the input polyline
        pos.append(best[1])
    gaps = np.diff(pos)
    np.testing.assert_allclose(gaps, gaps[0], rtol=1e-3)  # equal arc-length steps
    assert gaps[0] <= spacing + 1e-4, "resampling must not be coarser than the requested spacing"
    assert len(out) == int(np.ceil(total / spacing - 1e-6)) + 1


def test_resample_single_point_and_zero_length_strokes() -> None:
    out = Sketch([[[1, 1]], [[2, 2], [2, 2]]], times=[[5.0], [6.0, 7.0]]).resample(1.0)
    np.testing.assert_array_equal(out.strokes[0], [[1, 1]])
    np.testing.assert_array_equal(out.strokes[1], [[2, 2]])
    assert out.times is not None and [t.tolist() for t in out.times] == [[5.0], [6.0]]


@pytest.mark.parametrize("spacing", [0.0, -1.0])
def test_resample_non_positive_spacing_is_refused(spacing: float) -> None:
    with pytest.raises(InvalidSketchError) as e:
        Sketch(STROKES).resample(spacing)
    assert e.value.field == "spacing"


def test_transformed_applies_affine() -> None:
    m = np.array([[2, 0, 1], [0, 3, -1]], np.float32)
    out = Sketch(STROKES).transformed(m)
    _same_strokes(out, [s * [2, 3] + [1, -1] for s in STROKES])
