"""The Sketch: an ordered list of strokes, each a float32 (n, 2) array of (x, y), y pointing down.

Conversions between the stroke formats in use:

* **stroke-3** (sketch-rnn): rows ``(dx, dy, p)``, offsets from the previous point, ``p = 1`` when the
  pen is lifted *after* this point (end of a stroke). The first row is an offset from (0, 0).
* **stroke-5** (sketch-rnn): rows ``(dx, dy, p1, p2, p3)``: pen down / pen up after this point /
  end of sketch, padded with ``(0, 0, 0, 0, 1)`` up to a fixed length.
* **4-d** (SketchMate): stroke-5 without the end-of-sketch state: ``(dx, dy, pen_down, pen_up)``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from ..errors import InvalidSketchError

__all__ = ["Sketch", "rdp"]


def _as_points(a: object, field_name: str) -> np.ndarray:
    arr = np.asarray(a, dtype=np.float32)
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise InvalidSketchError(f"expected an (n, 2) array of x, y, got shape {arr.shape}", field_name)
    if not np.all(np.isfinite(arr)):
        raise InvalidSketchError("coordinates must be finite numbers", field_name)
    return arr


@dataclass
class Sketch:
    """A drawing. ``strokes[i]`` is a float32 (n_i, 2) array; ``times[i]`` (optional) its times in ms."""

    strokes: list[np.ndarray]
    times: list[np.ndarray] | None = None
    label: str | None = None
    id: str | None = None
    meta: dict[str, object] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.strokes = [_as_points(s, f"strokes[{i}]") for i, s in enumerate(self.strokes)]
        # Zero-point strokes carry nothing; drop them (with their times) rather than fail later.
        keep = [i for i, s in enumerate(self.strokes) if len(s) > 0]
        if self.times is not None:
            if len(self.times) != len(self.strokes):
                raise InvalidSketchError(f"{len(self.times)} time arrays for {len(self.strokes)} strokes", "times")
            times = [np.asarray(t, dtype=np.float64).reshape(-1) for t in self.times]
            for i, (s, t) in enumerate(zip(self.strokes, times)):
                if len(t) != len(s):
                    raise InvalidSketchError(f"{len(t)} times for {len(s)} points", f"times[{i}]")
            self.times = [times[i] for i in keep]
        self.strokes = [self.strokes[i] for i in keep]

    # ------------------------------------------------------------------ basic properties
    @property
    def n_points(self) -> int:
        return int(sum(len(s) for s in self.strokes))

    @property
    def is_empty(self) -> bool:
        return self.n_points == 0

    def validate(self) -> Sketch:
        """Raise :class:`InvalidSketchError` if the sketch has no points; return self otherwise."""
        if self.is_empty:
            raise InvalidSketchError("the sketch has no points (draw something first)", "strokes")
        return self

    def bounds(self) -> tuple[float, float, float, float]:
        """(xmin, ymin, xmax, ymax) over all points."""
        pts = np.concatenate(self.validate().strokes)
        return float(pts[:, 0].min()), float(pts[:, 1].min()), float(pts[:, 0].max()), float(pts[:, 1].max())

    def _with(self, strokes: list[np.ndarray], times: list[np.ndarray] | None = None) -> Sketch:
        return Sketch(strokes, times, label=self.label, id=self.id, meta=dict(self.meta))

    # ------------------------------------------------------------------ geometry
    def normalise(self, size: float = 1.0, keep_aspect: bool = True) -> Sketch:
        """Translate and scale so the drawing fits the box [0, size]^2, centred; aspect kept by default."""
        x0, y0, x1, y1 = self.bounds()
        w, h = x1 - x0, y1 - y0
        if keep_aspect:
            s = size / max(w, h) if max(w, h) > 0 else 1.0
            sx = sy = s
        else:
            sx = size / w if w > 0 else 1.0
            sy = size / h if h > 0 else 1.0
        ox = (size - w * sx) / 2.0
        oy = (size - h * sy) / 2.0
        out = [
            np.stack([(s[:, 0] - x0) * sx + ox, (s[:, 1] - y0) * sy + oy], axis=1).astype(np.float32)
            for s in self.strokes
        ]
        return self._with(out, self.times)

    def simplify(self, epsilon: float) -> Sketch:
        """Ramer-Douglas-Peucker simplification of each stroke (QuickDraw's 'simplified' uses epsilon=2.0
        on a 0-255 box). Times follow the kept points."""
        strokes, times = [], [] if self.times is not None else None
        for i, s in enumerate(self.strokes):
            keep = rdp(s, epsilon)
            strokes.append(s[keep])
            if times is not None and self.times is not None:
                times.append(self.times[i][keep])
        return self._with(strokes, times)

    def resample(self, spacing: float) -> Sketch:
        """Resample each stroke at equal arc-length ``spacing`` (end points kept). Times are interpolated."""
        if spacing <= 0:
            raise InvalidSketchError(f"spacing must be > 0, got {spacing}", "spacing")
        strokes, times = [], [] if self.times is not None else None
        for i, s in enumerate(self.strokes):
            seg = np.linalg.norm(np.diff(s, axis=0), axis=1) if len(s) > 1 else np.zeros(0)
            arc = np.concatenate([[0.0], np.cumsum(seg)])
            # ceil: steps are equal and never wider than ``spacing`` (tolerance for float round-off)
            steps = max(int(np.ceil(arc[-1] / spacing - 1e-6)), 1)
            target = np.linspace(0.0, arc[-1], steps + 1)
            if len(s) == 1 or arc[-1] == 0:
                strokes.append(s[:1].copy())
                if times is not None and self.times is not None:
                    times.append(self.times[i][:1].copy())
                continue
            xs = np.interp(target, arc, s[:, 0])
            ys = np.interp(target, arc, s[:, 1])
            strokes.append(np.stack([xs, ys], axis=1).astype(np.float32))
            if times is not None and self.times is not None:
                times.append(np.interp(target, arc, self.times[i]))
        return self._with(strokes, times)

    def transformed(self, matrix: np.ndarray) -> Sketch:
        """Apply a 2x3 affine matrix to every point."""
        m = np.asarray(matrix, dtype=np.float32)
        out = [s @ m[:, :2].T + m[:, 2] for s in self.strokes]
        return self._with([o.astype(np.float32) for o in out], self.times)

    # ------------------------------------------------------------------ formats
    @classmethod
    def from_stroke3(cls, arr: np.ndarray, **kw: object) -> Sketch:
        """From sketch-rnn stroke-3 rows ``(dx, dy, pen_lifted_after)``."""
        a = np.asarray(arr, dtype=np.float64)
        if a.ndim != 2 or a.shape[1] != 3:
            raise InvalidSketchError(f"stroke-3 must be (n, 3), got shape {a.shape}", "stroke3")
        xy = np.cumsum(a[:, :2], axis=0)
        ends = np.flatnonzero(a[:, 2] > 0.5)
        starts = np.concatenate([[0], ends + 1])
        stops = np.concatenate([ends + 1, [len(a)]])
        strokes = [xy[s:e] for s, e in zip(starts, stops) if e > s]
        return cls([s.astype(np.float32) for s in strokes], **kw)  # type: ignore[arg-type]

    def to_stroke3(self) -> np.ndarray:
        """(n, 3) float32 rows ``(dx, dy, pen_lifted_after)``; the first offset is from (0, 0)."""
        self.validate()
        pts = np.concatenate(self.strokes).astype(np.float64)
        lift = np.zeros(len(pts), dtype=np.float64)
        lift[np.cumsum([len(s) for s in self.strokes]) - 1] = 1.0
        d = np.diff(np.vstack([[0.0, 0.0], pts]), axis=0)
        return np.column_stack([d, lift]).astype(np.float32)

    @classmethod
    def from_stroke5(cls, arr: np.ndarray, **kw: object) -> Sketch:
        """From stroke-5 rows ``(dx, dy, p_down, p_up, p_end)``; rows from the first end state are dropped."""
        a = np.asarray(arr, dtype=np.float64)
        if a.ndim != 2 or a.shape[1] != 5:
            raise InvalidSketchError(f"stroke-5 must be (n, 5), got shape {a.shape}", "stroke5")
        end = np.flatnonzero(a[:, 4] > 0.5)
        a = a[: end[0]] if len(end) else a
        return cls.from_stroke3(np.column_stack([a[:, :2], a[:, 3]]), **kw)

    def to_stroke5(self, max_len: int | None = None) -> np.ndarray:
        """(max_len, 5) float32 (or (n + 1, 5) when ``max_len`` is None), padded with end-of-sketch rows.
        Raises if the sketch is longer than ``max_len``."""
        s3 = self.to_stroke3()
        n = len(s3)
        length = n + 1 if max_len is None else max_len
        if n > length - 1 and max_len is not None:
            raise InvalidSketchError(f"{n} points do not fit max_len={max_len} (one row is the end)", "max_len")
        out = np.zeros((length, 5), dtype=np.float32)
        out[:n, :2] = s3[:, :2]
        out[:n, 2] = 1.0 - s3[:, 2]
        out[:n, 3] = s3[:, 2]
        out[n:, 4] = 1.0
        return out

    def to_4d(self) -> np.ndarray:
        """SketchMate's input: (n, 4) float32 rows ``(dx, dy, pen_down, pen_up)`` (no end-of-sketch row)."""
        return self.to_stroke5()[:-1, :4].copy()

    @classmethod
    def from_4d(cls, arr: np.ndarray, **kw: object) -> Sketch:
        a = np.asarray(arr, dtype=np.float64)
        if a.ndim != 2 or a.shape[1] != 4:
            raise InvalidSketchError(f"4-d form must be (n, 4), got shape {a.shape}", "points4d")
        return cls.from_stroke3(np.column_stack([a[:, :2], a[:, 3]]), **kw)

    @classmethod
    def from_polylines(cls, polylines: Iterable[Sequence[Sequence[float]]], **kw: object) -> Sketch:
        return cls([np.asarray(p, dtype=np.float32).reshape(-1, 2) for p in polylines], **kw)  # type: ignore[arg-type]


def rdp(points: np.ndarray, epsilon: float) -> np.ndarray:
    """Indices of the points kept by Ramer-Douglas-Peucker with tolerance ``epsilon`` (iterative, no recursion
    limit). Hand-written: no maintained library we depend on offers RDP returning indices."""
    n = len(points)
    if n < 3:
        return np.arange(n)
    keep = np.zeros(n, dtype=bool)
    keep[0] = keep[-1] = True
    stack = [(0, n - 1)]
    p = points.astype(np.float64)
    while stack:
        i, j = stack.pop()
        if j <= i + 1:
            continue
        a, b = p[i], p[j]
        seg = b - a
        mid = p[i + 1 : j]
        L = np.hypot(*seg)
        if L == 0:
            d = np.hypot(mid[:, 0] - a[0], mid[:, 1] - a[1])
        else:
            d = np.abs(seg[0] * (mid[:, 1] - a[1]) - seg[1] * (mid[:, 0] - a[0])) / L
        k = int(np.argmax(d))
        if d[k] > epsilon:
            m = i + 1 + k
            keep[m] = True
            stack.append((i, m))
            stack.append((m, j))
    return np.flatnonzero(keep)
