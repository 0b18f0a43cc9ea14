"""One stroke format everywhere: :func:`parse_strokes` reads a drawing given as JSON data into a
:class:`~sketchsearch.data.sketch.Sketch`, for the API's search body and the CLI's query files alike.

Accepted forms (a drawing is a list of strokes, in drawing order; x, y in any unit, y pointing down;
t in ms since the drawing began, optional, kept only when every point has one):

* **points as objects** (the web page): ``[[{"x": 1, "y": 2, "t": 0}, ...], ...]``
* **points as lists**: ``[[[x, y], ...], ...]`` or ``[[[x, y, t], ...], ...]``
* **QuickDraw** strokes: ``[[[x0, x1, ...], [y0, y1, ...]], ...]`` or with a third list of times

each also wrapped as ``{"strokes": ...}`` or as a QuickDraw record ``{"drawing": ..., "word": ...}``
(other keys of the wrapper are ignored). A bare list whose every point list has 2 or 3 numbers reads
both as points and as QuickDraw strokes of 2-3 points: it is read as points; wrap QuickDraw strokes as
``{"drawing": ...}`` (as the QuickDraw files do) to say otherwise.

Limits are checked before any array is built: at most ``max_strokes`` strokes and ``max_points`` points
in all; coordinates finite and within :data:`MAX_COORD`, times finite and >= 0; strings and booleans
are not numbers. Every error is an :class:`~sketchsearch.errors.InvalidSketchError` whose ``field`` names
the place (``strokes[3][2].x``); over a limit, the :class:`SketchTooLargeError` subclass.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Literal

import numpy as np

from ..errors import InvalidSketchError
from .sketch import Sketch

__all__ = [
    "FORMS",
    "MAX_COORD",
    "MAX_POINTS",
    "MAX_STROKES",
    "SketchTooLargeError",
    "parse_strokes",
]

MAX_STROKES = 500
"""Default most strokes in one drawing."""
MAX_POINTS = 50_000
"""Default most points in one drawing, over all strokes (a dense 1-minute sketch has ~3,000)."""
MAX_COORD = 1e30
"""The largest |x| or |y| accepted: well inside float32, so scaling in ``normalise()`` cannot overflow."""

FORMS = (
    'a list of strokes, each a list of points {"x": .., "y": .., "t": ..} ("t" optional), '
    "or of points [x, y] / [x, y, t], or QuickDraw's [[x0, x1, ..], [y0, y1, ..]] (+ [t0, t1, ..]); "
    'optionally wrapped as {"strokes": ...} or a QuickDraw record {"drawing": ...}'
)
"""The accepted forms in one line, as error messages quote them."""

Form = Literal["objects", "points", "quickdraw"]
_WRAPPERS = ("strokes", "drawing")


class SketchTooLargeError(InvalidSketchError):
    """A drawing with more strokes or points than the limits allow (the service answers 413)."""


def parse_strokes(
    obj: Any,
    *,
    max_strokes: int = MAX_STROKES,
    max_points: int = MAX_POINTS,
    field: str = "",
) -> Sketch:
    """A drawing in any accepted form (see the module docstring) -> :class:`Sketch`.

    ``field`` is where ``obj`` sits in a larger document (the API passes ``"strokes"``); error fields are
    named from it: ``strokes[3][2].x``. Raises :class:`InvalidSketchError` (:class:`SketchTooLargeError`
    over a limit) and nothing else, whatever ``obj`` is.
    """
    form: Form | None = None
    where = field or "strokes"
    if isinstance(obj, Mapping):
        keys = [k for k in _WRAPPERS if k in obj]
        if len(keys) != 1:
            found = "both 'strokes' and 'drawing'" if keys else f"keys {sorted(map(str, obj))[:8]}"
            raise InvalidSketchError(
                f"expected one of the keys 'strokes' or 'drawing', found {found}; accepted: {FORMS}",
                field or None,
            )
        key = keys[0]
        form = "quickdraw" if key == "drawing" else None
        obj, where = obj[key], f"{field}.{key}" if field else key
    if not isinstance(obj, list):
        raise InvalidSketchError(f"expected a list of strokes, got {_kind(obj)}; accepted: {FORMS}", where)
    if len(obj) > max_strokes:
        raise SketchTooLargeError(f"at most {max_strokes} strokes, got {len(obj)}", where)
    for i, stroke in enumerate(obj):
        if not isinstance(stroke, list):
            raise InvalidSketchError(
                f"expected a stroke (a list), got {_kind(stroke)}; accepted: {FORMS}", f"{where}[{i}]"
            )
    form = form or _detect(obj)
    n_points = sum(_count(s, form) for s in obj)
    if n_points > max_points:
        raise SketchTooLargeError(f"at most {max_points} points in all, got {n_points}", where)
    if n_points == 0:
        raise InvalidSketchError("the sketch has no points (draw something first)", where)
    parse = {"objects": _objects_stroke, "points": _points_stroke, "quickdraw": _quickdraw_stroke}[form]
    # the page's form is read stroke by stroke in bulk (:func:`_objects_bulk`); a stroke it does not take
    # whole (any point off the plain case) is read point by point, which names the point at fault
    parsed = [(_objects_bulk(s) if form == "objects" else None) or parse(s, f"{where}[{i}]") for i, s in enumerate(obj)]
    xy = [np.asarray(p, dtype=np.float64).reshape(-1, 2).astype(np.float32) for p, _ in parsed]
    has_t = all(t is not None for _, t in parsed)
    times = [np.asarray(t, dtype=np.float64) for _, t in parsed] if has_t else None
    return Sketch(xy, times)


# ----------------------------------------------------------------------------------------------- forms
def _detect(strokes: list[Any]) -> Form:
    """The form of a bare list of strokes, from its first point (see the module docstring on ambiguity)."""
    first = next((s[0] for s in strokes if s), None)
    if isinstance(first, Mapping):
        return "objects"
    # QuickDraw rows hold every point of a stroke: only they can have other than 2 or 3 numbers.
    quickdraw = any(isinstance(e, list) and len(e) not in (2, 3) for s in strokes for e in s)
    return "quickdraw" if quickdraw else "points"


def _count(stroke: list[Any], form: Form) -> int:
    """Points in a stroke, read from its length only (before any value is checked)."""
    if form == "quickdraw":
        return len(stroke[0]) if stroke and isinstance(stroke[0], list) else 0
    return len(stroke)


_Parsed = tuple[list[tuple[float, float]], "list[float] | None"]


def _objects_stroke(stroke: list[Any], where: str) -> _Parsed:
    xy: list[tuple[float, float]] = []
    times: list[float] = []
    for j, p in enumerate(stroke):
        at = f"{where}[{j}]"
        if not isinstance(p, Mapping):
            raise InvalidSketchError(
                f'expected a point {{"x": .., "y": .., "t": ..}} (as the first point is), got {_kind(p)}; '
                f"accepted: {FORMS}",
                at,
            )
        extra = [k for k in p if k not in ("x", "y", "t")]
        if extra:
            raise InvalidSketchError(f"unknown key {str(extra[0])!r}: a point has x, y and optionally t", at)
        for key in ("x", "y"):
            if key not in p:
                raise InvalidSketchError("missing: a point has x, y and optionally t", f"{at}.{key}")
        xy.append((_coord(p["x"], f"{at}.x"), _coord(p["y"], f"{at}.y")))
        if p.get("t") is not None:
            times.append(_time(p["t"], f"{at}.t"))
    return xy, times if len(times) == len(xy) else None


_XYT = frozenset(("x", "y", "t"))
_FLOATS = (int, float)


def _objects_bulk(stroke: list[Any]) -> tuple[np.ndarray, np.ndarray | None] | None:
    """A stroke of ``{"x", "y"[, "t"]}`` objects read in bulk: (float64 (n, 2), its times or None); None
    when any point is not the plain case (a dict with x and y and no other key than t, numbers that are
    ints or floats, finite, coordinates within :data:`MAX_COORD`, times all given and >= 0, or all absent),
    so that :func:`_objects_stroke` reads it point by point and names the fault. What it accepts it reads
    exactly as :func:`_objects_stroke` does; for 1,000 points it is several times faster."""
    if not stroke:
        return None
    for p in stroke:
        if type(p) is not dict or not p.keys() <= _XYT or "x" not in p or "y" not in p:
            return None
    xs = [p["x"] for p in stroke]
    ys = [p["y"] for p in stroke]
    ts = [p.get("t") for p in stroke]
    # type() rather than isinstance(): bool is an int subclass, and a JSON true is not a number
    if not all(type(v) in _FLOATS for v in xs) or not all(type(v) in _FLOATS for v in ys):
        return None
    try:
        xy = np.array([xs, ys], dtype=np.float64).T
        if all(t is None for t in ts):
            times = None
        elif all(type(t) in _FLOATS for t in ts):
            times = np.array(ts, dtype=np.float64)
            if not (np.isfinite(times).all() and (times >= 0).all()):
                return None
        else:
            return None
    except OverflowError:  # an integer past float range
        return None
    if not np.isfinite(xy).all() or np.abs(xy).max() > MAX_COORD:
        return None
    return xy, times


def _points_stroke(stroke: list[Any], where: str) -> _Parsed:
    xy: list[tuple[float, float]] = []
    times: list[float] = []
    for j, p in enumerate(stroke):
        at = f"{where}[{j}]"
        if not isinstance(p, list) or len(p) not in (2, 3):
            got = f"a list of {len(p)}" if isinstance(p, list) else _kind(p)
            raise InvalidSketchError(f"expected a point [x, y] or [x, y, t], got {got}; accepted: {FORMS}", at)
        xy.append((_coord(p[0], f"{at}[0]"), _coord(p[1], f"{at}[1]")))
        if len(p) == 3:
            times.append(_time(p[2], f"{at}[2]"))
    return xy, times if len(times) == len(xy) else None


def _quickdraw_stroke(stroke: list[Any], where: str) -> _Parsed:
    if len(stroke) not in (2, 3) or not all(isinstance(row, list) for row in stroke):
        raise InvalidSketchError(
            f"expected a QuickDraw stroke [[x0, x1, ..], [y0, y1, ..]] (+ [t0, t1, ..]), got {_kind(stroke)}; "
            f"accepted: {FORMS}",
            where,
        )
    lengths = [len(row) for row in stroke]
    if len(set(lengths)) != 1:
        raise InvalidSketchError(f"the x, y (and t) lists differ in length: {lengths}", where)
    xs = [_coord(v, f"{where}[0][{j}]") for j, v in enumerate(stroke[0])]
    ys = [_coord(v, f"{where}[1][{j}]") for j, v in enumerate(stroke[1])]
    ts = [_time(v, f"{where}[2][{j}]") for j, v in enumerate(stroke[2])] if len(stroke) == 3 else None
    return list(zip(xs, ys)), ts


# ----------------------------------------------------------------------------------------------- values
def _number(v: Any, at: str) -> float:
    # bool is an int in Python; a JSON true is not a coordinate
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise InvalidSketchError(f"expected a number, got {_kind(v)}", at)
    try:
        f = float(v)
    except OverflowError:  # an integer past float range
        f = math.inf
    if not math.isfinite(f):
        raise InvalidSketchError(f"expected a finite number, got {v!r}"[:120], at)
    return f


def _coord(v: Any, at: str) -> float:
    f = _number(v, at)
    if abs(f) > MAX_COORD:
        raise InvalidSketchError(f"coordinates must fit in 32-bit floats (|x|, |y| <= {MAX_COORD:g}), got {f:g}", at)
    return f


def _time(v: Any, at: str) -> float:
    f = _number(v, at)
    if f < 0:
        raise InvalidSketchError(f"a time must be >= 0 (ms since the drawing began), got {f:g}", at)
    return f


def _kind(v: Any) -> str:
    """What a JSON value is, for messages: ``a string ('left')``, ``a number (3)``, ``an object``."""
    if v is None:
        return "null"
    if isinstance(v, bool):
        return f"a boolean ({str(v).lower()})"
    if isinstance(v, (int, float)):
        return f"a number ({v!r})"[:60]
    if isinstance(v, str):
        return f"a string ({v[:20]!r})"
    if isinstance(v, Mapping):
        return "an object"
    if isinstance(v, list):
        return f"a list of {len(v)}"
    return f"a {type(v).__name__}"
