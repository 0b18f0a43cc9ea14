"""data.strokes.parse_strokes: one reader for every stroke form the API and the CLI accept, with one set of
limits and errors that name the field and the accepted forms."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from sketchsearch.data.strokes import FORMS, SketchTooLargeError, parse_strokes
from sketchsearch.errors import InvalidSketchError

SRC = Path(__file__).resolve().parents[1] / "src"

# One drawing, two strokes (3 and 4 points, with times), in every form.
XY = [[(10, 20), (30, 40.5), (50, 60)], [(0, 0), (5, 5), (10, 0), (15, 5)]]
T = [[0, 16, 32], [200, 216, 232, 248]]
OBJECTS = [[{"x": x, "y": y, "t": t} for (x, y), t in zip(s, ts)] for s, ts in zip(XY, T)]
POINTS = [[[x, y, t] for (x, y), t in zip(s, ts)] for s, ts in zip(XY, T)]
QUICKDRAW = [[[x for x, _ in s], [y for _, y in s], ts] for s, ts in zip(XY, T)]


def check_drawing(sketch: Any, times: bool = True) -> None:
    assert [s.tolist() for s in sketch.strokes] == [[list(map(float, p)) for p in s] for s in XY]
    assert all(s.dtype == np.float32 for s in sketch.strokes)
    if times:
        assert [t.tolist() for t in sketch.times] == T
    else:
        assert sketch.times is None


@pytest.mark.parametrize(
    "obj",
    [
        OBJECTS,
        POINTS,
        QUICKDRAW,
        {"strokes": OBJECTS},
        {"strokes": POINTS},
        {"drawing": QUICKDRAW, "word": "zigzag", "key_id": "5", "recognized": True},  # a QuickDraw record
    ],
    ids=["objects", "points", "quickdraw", "wrapped-objects", "wrapped-points", "quickdraw-record"],
)
def test_every_form_reads_the_same_drawing(obj: Any) -> None:
    check_drawing(parse_strokes(obj))


def test_json_text_of_each_form_round_trips() -> None:
    # what a file or a request body holds: integers and floats as JSON writes them
    for obj in (OBJECTS, POINTS, {"drawing": QUICKDRAW}):
        check_drawing(parse_strokes(json.loads(json.dumps(obj))))


def test_times_are_optional_and_kept_only_when_every_point_has_one() -> None:
    check_drawing(parse_strokes([[[x, y] for x, y in s] for s in XY]), times=False)
    check_drawing(parse_strokes([st[:2] for st in QUICKDRAW]), times=False)
    check_drawing(parse_strokes([[{"x": x, "y": y} for x, y in s] for s in XY]), times=False)
    partly = json.loads(json.dumps(OBJECTS))
    del partly[1][2]["t"]
    check_drawing(parse_strokes(partly), times=False)


def test_short_strokes_read_as_points_unless_wrapped_as_a_quickdraw_record() -> None:
    # [[0, 10], [5, 15]] is two points (0, 10), (5, 15) or, as QuickDraw rows, x = (0, 10), y = (5, 15)
    line = [[[0, 10], [5, 15]]]
    assert parse_strokes(line).strokes[0].tolist() == [[0, 10], [5, 15]]
    assert parse_strokes({"drawing": line}).strokes[0].tolist() == [[0, 5], [10, 15]]
    # one long QuickDraw stroke decides for the whole drawing, short strokes included
    mixed = [[[0, 10], [5, 15]], [[0, 1, 2, 3], [4, 5, 6, 7]]]
    assert parse_strokes(mixed).strokes[0].tolist() == [[0, 5], [10, 15]]


def test_single_point_strokes_and_empty_strokes() -> None:
    sk = parse_strokes([[{"x": 1, "y": 2}], []])
    assert [s.tolist() for s in sk.strokes] == [[[1, 2]]]
    assert parse_strokes([[[7], [8]]]).strokes[0].tolist() == [[7, 8]]  # a one-point QuickDraw stroke


BAD: list[tuple[str, Any, str, str]] = [
    ("not a list", "circle", "strokes", "expected a list of strokes, got a string"),
    ("stroke not a list", [{"x": 1}], "strokes[0]", "expected a stroke"),
    ("point a number", [[1, 2]], "strokes[0][0]", "expected a point [x, y] or [x, y, t], got a number"),
    ("y missing", [[{"x": 1}]], "strokes[0][0].y", "missing"),
    ("x a numeric string", [[{"x": "1", "y": 2}]], "strokes[0][0].x", "expected a number, got a string"),
    ("y a boolean", [[{"x": 1, "y": True}]], "strokes[0][0].y", "got a boolean"),
    ("null coordinate", [[[1, None]]], "strokes[0][0][1]", "got null"),
    ("negative time", [[{"x": 1, "y": 2, "t": -5}]], "strokes[0][0].t", ">= 0"),
    ("negative list time", [[[1, 2, 0], [3, 4, -1]]], "strokes[0][1][2]", ">= 0"),
    ("unknown key", [[{"x": 1, "y": 2, "pressure": 0.5}]], "strokes[0][0]", "unknown key 'pressure'"),
    ("NaN", [[[0, 0], [1, float("nan")]]], "strokes[0][1][1]", "finite"),
    ("infinity", [[{"x": float("inf"), "y": 0}]], "strokes[0][0].x", "finite"),
    ("huge integer", [[[10**400, 0]]], "strokes[0][0][0]", "finite"),
    ("past float32", [[[0, 0], [1e300, 1]]], "strokes[0][1][0]", "32-bit"),
    ("quickdraw rows differ", [[[0, 1, 2, 3], [0, 1, 2]]], "strokes[0]", "differ in length: [4, 3]"),
    ("quickdraw row not numbers", {"drawing": [[[0, 1], [0, "a"]]]}, "drawing[0][1][1]", "string"),
    ("quickdraw stroke of four rows", {"drawing": [[[0], [1], [2], [3]]]}, "drawing[0]", "QuickDraw stroke"),
    ("mixed forms", [[{"x": 1, "y": 2}], [[1, 2]]], "strokes[1][0]", 'expected a point {"x"'),
    ("unknown wrapper", {"points": []}, "", "'strokes' or 'drawing'"),
    ("both wrappers", {"strokes": [], "drawing": []}, "", "both"),
    ("no strokes", [], "strokes", "no points"),
    ("only empty strokes", [[], []], "strokes", "no points"),
]


@pytest.mark.parametrize("case", BAD, ids=[c[0] for c in BAD])
def test_errors_name_the_field(case: tuple[str, Any, str, str]) -> None:
    _, obj, field, words = case
    with pytest.raises(InvalidSketchError) as err:
        parse_strokes(obj)
    assert (err.value.field or "") == field, str(err.value)
    assert words in str(err.value), str(err.value)
    assert not isinstance(err.value, SketchTooLargeError)


def test_structural_errors_list_the_accepted_forms() -> None:
    for obj in ("circle", [[1, 2]], {"points": []}, [[{"x": 1, "y": 2}], [[1, 2]]]):
        with pytest.raises(InvalidSketchError, match="accepted: ") as err:
            parse_strokes(obj)
        assert FORMS in str(err.value)


def test_field_prefix_names_the_place_in_a_larger_document() -> None:
    with pytest.raises(InvalidSketchError) as err:
        parse_strokes({"drawing": [[[0, 1], [0, "a"]]]}, field="strokes")
    assert err.value.field == "strokes.drawing[0][1][1]"
    with pytest.raises(InvalidSketchError) as err:
        parse_strokes([[{"x": 1}]], field="strokes")
    assert err.value.field == "strokes[0][0].y"


def test_limits_are_checked_before_the_values() -> None:
    with pytest.raises(SketchTooLargeError, match="at most 3 strokes, got 4") as err:
        parse_strokes([[["junk"]]] * 4, max_strokes=3)
    assert err.value.field == "strokes"
    # 3 + 3 points counted from the lengths alone, though every value is junk
    with pytest.raises(SketchTooLargeError, match="at most 5 points in all, got 6"):
        parse_strokes([[None] * 3, [None] * 3], max_points=5)
    with pytest.raises(SketchTooLargeError, match="at most 5 points in all, got 6"):
        parse_strokes({"drawing": [[["a"] * 6, []]]}, max_points=5)
    assert parse_strokes([[[0, 0]] * 5], max_points=5).n_points == 5  # the limit itself is allowed


def test_importable_without_the_service() -> None:
    # the CLI reads query files with it: importing it must not pull in FastAPI or the web service
    code = (
        "import sys, sketchsearch.data.strokes; "
        "print(sorted(m for m in sys.modules if m.startswith(('fastapi', 'starlette', 'sketchsearch.service'))))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env={"PYTHONPATH": str(SRC)}
    )
    assert out.stdout.strip() == "[]", out.stdout


def test_page_points_read_in_bulk_equal_the_point_by_point_reading() -> None:
    """The bulk reader of the page's {"x", "y", "t"} strokes gives what the point-by-point one gives, and
    leaves every odd point to it (so its errors still name the point)."""
    from sketchsearch.data import strokes as mod

    rng = np.random.default_rng(3)
    plain = [{"x": float(x), "y": int(y), "t": float(t)} for x, y, t in rng.uniform(0, 500, (40, 3))]
    no_t = [{"x": p["x"], "y": p["y"]} for p in plain]
    for stroke in (plain, no_t, [{"x": 1, "y": 2, "t": None}]):
        xy, t = mod._objects_bulk(stroke)  # type: ignore[misc]
        ref_xy, ref_t = mod._objects_stroke(stroke, "s")
        np.testing.assert_array_equal(xy, np.asarray(ref_xy, np.float64).reshape(-1, 2))
        assert (t is None) == (ref_t is None) and (t is None or np.array_equal(t, ref_t))
    odd = [
        [],
        [{"x": True, "y": 1}],
        [{"x": "1", "y": 1}],
        [{"x": 1, "y": 1, "z": 0}],
        [{"x": 1}],
        [{"x": 10**400, "y": 1}],
        [{"x": 2e30, "y": 1}],
        [{"x": float("nan"), "y": 1}],
        [{"x": 1, "y": 1, "t": -1}],
        [{"x": 1, "y": 1, "t": 0}, {"x": 1, "y": 1}],
        [[1, 2]],
    ]
    for stroke in odd:
        assert mod._objects_bulk(stroke) is None, stroke
    sk = parse_strokes([plain, no_t])
    assert sk.times is None and sk.n_points == 80
    with pytest.raises(InvalidSketchError) as e:
        parse_strokes([plain, [{"x": 1, "y": True}]])
    assert e.value.field == "strokes[1][0].y"
