"""The embedded default collection: seeded, hand-drawn-looking marks with ground truth, no download needed.

Two families, both drawn "by hand" by the same code (:func:`redraw`):

* :func:`merchant_marks` - marks composed of parts like 17th-century merchant marks: a vertical staff, the
  "4"-shaped flag at its top, cross-bars, chevrons, a saltire, an orb / shield / heart / feet at the base and
  initials in a simple stroke alphabet. A *class* is one combination of parts with fixed parameters.
* :func:`kanji_variants` - a seeded choice of simple KanjiVG kanji (few strokes, so they look like marks).

Each *sample* of a class is the class's design drawn again: smooth low-frequency wobble along every stroke,
strokes that do not quite meet, an occasional overshoot at a stroke's end, varied point density, a small
affine change of the whole drawing (rotation, scale, shear, shift) and per-point times (ms) with a
slow-fast-slow pen speed and pauses between strokes.

Randomness is keyed by ``(seed, family, class, sample)`` through ``numpy.random.default_rng``, so a class's
design does not depend on how many classes are asked for, nor a sample on how many samples.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Sequence

import numpy as np

from .collection import Collection
from .formats.base import Item
from .sketch import Sketch

__all__ = [
    "LETTERS",
    "default_collection",
    "design_mark",
    "kanji_variants",
    "merchant_marks",
    "redraw",
    "simple_kanji",
]

Strokes = list[np.ndarray]  # float64 (n, 2) polylines in design units, y down

_MARK_BOX = 100.0  # merchant-mark designs live in [0, 100]^2; the staff stands at x = 50
_FAM_MARK, _FAM_KANJI = 1, 2


# ------------------------------------------------------------------------------------------- geometry helpers
def _pl(*pts: Sequence[float]) -> np.ndarray:
    return np.asarray(pts, dtype=np.float64)


def _ellipse(cx: float, cy: float, rx: float, ry: float, a0: float, a1: float, n: int = 40) -> np.ndarray:
    """Points of an elliptic arc from angle ``a0`` to ``a1`` (degrees, counter-clockwise as seen, y down)."""
    a = np.radians(np.linspace(a0, a1, n))
    return np.stack([cx + rx * np.cos(a), cy - ry * np.sin(a)], axis=1)


def _cubic(
    p0: Sequence[float], p1: Sequence[float], p2: Sequence[float], p3: Sequence[float], n: int = 30
) -> np.ndarray:
    t = np.linspace(0.0, 1.0, n)[:, None]
    P = [np.asarray(p, dtype=np.float64) for p in (p0, p1, p2, p3)]
    return (1 - t) ** 3 * P[0] + 3 * (1 - t) ** 2 * t * P[1] + 3 * (1 - t) * t**2 * P[2] + t**3 * P[3]


def _chain(*parts: np.ndarray) -> np.ndarray:
    """Join polylines drawn without lifting the pen (drops each repeated joint point)."""
    out = [parts[0]]
    for p in parts[1:]:
        out.append(p[1:] if np.allclose(p[0], out[-1][-1]) else p)
    return np.concatenate(out)


def _densify(line: np.ndarray, spacing: float) -> tuple[np.ndarray, np.ndarray]:
    """Resample a polyline at about ``spacing`` (corners kept as samples are dense). Returns (points, arc)."""
    seg = np.linalg.norm(np.diff(line, axis=0), axis=1)
    arc = np.concatenate([[0.0], np.cumsum(seg)])
    total = float(arc[-1])
    if total <= 0:
        return line[:1].repeat(2, axis=0), np.zeros(2)
    n = max(2, int(math.ceil(total / spacing)) + 1)
    s = np.linspace(0.0, total, n)
    return np.stack([np.interp(s, arc, line[:, 0]), np.interp(s, arc, line[:, 1])], axis=1), s


# ------------------------------------------------------------------------------------------- stroke alphabet
def _letter_strokes() -> dict[str, Strokes]:
    """Capitals as pen strokes in a unit box (x right, y down), in a plausible stroke order."""
    bowl_top = _chain(_pl((0, 0), (0.55, 0)), _ellipse(0.55, 0.25, 0.35, 0.25, 90, -90, 20), _pl((0.55, 0.5), (0, 0.5)))
    bowl_low = _chain(_pl((0, 0.5), (0.6, 0.5)), _ellipse(0.6, 0.75, 0.4, 0.25, 90, -90, 20), _pl((0.6, 1), (0, 1)))
    return {
        "A": [_pl((0, 1), (0.5, 0), (1, 1)), _pl((0.22, 0.6), (0.78, 0.6))],
        "B": [_pl((0, 0), (0, 1)), _chain(bowl_top, bowl_low)],
        "C": [_ellipse(0.5, 0.5, 0.5, 0.5, 45, 315)],
        "D": [
            _pl((0, 0), (0, 1)),
            _chain(_pl((0, 0), (0.4, 0)), _ellipse(0.4, 0.5, 0.6, 0.5, 90, -90, 30), _pl((0.4, 1), (0, 1))),
        ],
        "E": [_pl((1, 0), (0, 0), (0, 1), (1, 1)), _pl((0, 0.5), (0.75, 0.5))],
        "F": [_pl((1, 0), (0, 0), (0, 1)), _pl((0, 0.5), (0.75, 0.5))],
        "G": [_chain(_ellipse(0.5, 0.5, 0.5, 0.5, 45, 350), _pl((1, 0.59), (0.55, 0.59)))],
        "H": [_pl((0, 0), (0, 1)), _pl((1, 0), (1, 1)), _pl((0, 0.5), (1, 0.5))],
        "K": [_pl((0, 0), (0, 1)), _pl((1, 0), (0, 0.6)), _pl((0.3, 0.4), (1, 1))],
        "L": [_pl((0, 0), (0, 1), (1, 1))],
        "M": [_pl((0, 1), (0, 0), (0.5, 0.65), (1, 0), (1, 1))],
        "N": [_pl((0, 1), (0, 0), (1, 1), (1, 0))],
        "O": [_ellipse(0.5, 0.5, 0.5, 0.5, 90, 450, 48)],
        "P": [_pl((0, 0), (0, 1)), bowl_top],
        "R": [_pl((0, 0), (0, 1)), bowl_top, _pl((0.4, 0.5), (1, 1))],
        "S": [
            _chain(
                _cubic((0.95, 0.1), (0.6, -0.1), (0.0, 0.0), (0.15, 0.3)),
                _cubic((0.15, 0.3), (0.3, 0.6), (1.05, 0.5), (0.9, 0.85)),
                _cubic((0.9, 0.85), (0.8, 1.1), (0.2, 1.05), (0.02, 0.85)),
            )
        ],
        "T": [_pl((0, 0), (1, 0)), _pl((0.5, 0), (0.5, 1))],
        "V": [_pl((0, 0), (0.5, 1), (1, 0))],
        "W": [_pl((0, 0), (0.22, 1), (0.5, 0.35), (0.78, 1), (1, 0))],
        "X": [_pl((0, 0), (1, 1)), _pl((1, 0), (0, 1))],
        "Z": [_pl((0, 0), (1, 0), (0, 1), (1, 1))],
    }


#: The stroke alphabet used for initials: letter -> strokes (float64 (n, 2)) in a unit box, y down.
LETTERS: dict[str, Strokes] = _letter_strokes()


def _letter(ch: str, x: float, y: float, w: float, h: float) -> Strokes:
    return [np.stack([x + s[:, 0] * w, y + s[:, 1] * h], axis=1) for s in LETTERS[ch]]


# ------------------------------------------------------------------------------------------- merchant marks
_TOPS = ("flag4", "flag4_mirror", "cross", "double_cross", "chevron", "pennant", "ring")
_MIDDLES = ("none", "cross", "chevron", "saltire")
_BASES = ("orb", "shield", "heart", "feet", "triangle", "hook", "bar", "initials")


def design_mark(rng: np.random.Generator) -> tuple[Strokes, dict[str, object]]:
    """One merchant-mark design: strokes in the [0, 100]^2 box and the parts it was made of.

    The staff is drawn first, then top to bottom, as a merchant would; part sizes and positions are
    continuous parameters drawn from ``rng``, so two designs with the same parts still differ.
    """
    top = str(rng.choice(_TOPS))
    middle = str(rng.choice(_MIDDLES))
    base = str(rng.choice(_BASES))
    letters = "".join(rng.choice(sorted(LETTERS), size=2 if base in ("shield", "initials") else 1))
    x = 50.0
    y_top = float(rng.uniform(6, 14))
    y_bot = {
        "orb": rng.uniform(62, 72),
        "shield": rng.uniform(52, 58),
        "heart": rng.uniform(54, 60),
        "feet": rng.uniform(64, 72),
        "triangle": rng.uniform(62, 70),
        "hook": rng.uniform(78, 88),
        "bar": rng.uniform(84, 94),
        "initials": rng.uniform(84, 94),
    }[base]
    strokes: Strokes = [_pl((x, y_top), (x, y_bot))]
    # ---- top
    s = float(rng.uniform(14, 22))
    if top in ("flag4", "flag4_mirror"):
        d = 1.0 if top == "flag4" else -1.0
        y0 = y_top + float(rng.uniform(0, 4))
        strokes.append(_pl((x, y0), (x - d * s, y0 + 1.2 * s), (x + d * 0.6 * s, y0 + 1.2 * s)))
    elif top == "cross":
        y0 = y_top + float(rng.uniform(6, 12))
        strokes.append(_pl((x - s, y0), (x + s, y0)))
    elif top == "double_cross":
        y0 = y_top + float(rng.uniform(5, 8))
        strokes.append(_pl((x - 0.6 * s, y0), (x + 0.6 * s, y0)))
        strokes.append(_pl((x - s, y0 + 9), (x + s, y0 + 9)))
    elif top == "chevron":
        strokes.append(_pl((x - 0.8 * s, y_top + 0.8 * s), (x, y_top), (x + 0.8 * s, y_top + 0.8 * s)))
    elif top == "pennant":
        d = float(rng.choice([-1.0, 1.0]))
        strokes.append(_pl((x, y_top), (x + d * 1.3 * s, y_top + 0.45 * s), (x, y_top + 0.9 * s)))
    else:  # ring on the staff's head
        r = float(rng.uniform(5, 8))
        strokes[0] = _pl((x, y_top + 2 * r), (x, y_bot))
        strokes.append(_ellipse(x, y_top + r, r, r, 270, 630, 36))
    # ---- middle
    ym = float(rng.uniform(0.45, 0.6)) * (y_top + y_bot)
    w = float(rng.uniform(12, 20))
    if middle == "cross":
        strokes.append(_pl((x - w, ym), (x + w, ym)))
    elif middle == "chevron":
        h = float(rng.uniform(7, 11)) * float(rng.choice([-1.0, 1.0]))
        strokes.append(_pl((x - w, ym + h), (x, ym), (x + w, ym + h)))
    elif middle == "saltire":
        strokes.append(_pl((x - 0.7 * w, ym - 0.7 * w), (x + 0.7 * w, ym + 0.7 * w)))
        strokes.append(_pl((x + 0.7 * w, ym - 0.7 * w), (x - 0.7 * w, ym + 0.7 * w)))
    # ---- base
    lw, lh = float(rng.uniform(10, 13)), float(rng.uniform(13, 16))
    if base == "orb":
        r = float(rng.uniform(12, 17))
        strokes.append(_ellipse(x, y_bot + r, r, r, 90, 450, 48))
        if rng.random() < 0.5:
            strokes.append(_pl((x - r, y_bot + r), (x + r, y_bot + r)))
        else:
            strokes.extend(_letter(letters[0], x - lw / 2, y_bot + r - lh / 2, lw, lh))
    elif base == "shield":
        hw, h = float(rng.uniform(20, 26)), float(rng.uniform(34, 40))
        side = _pl((x - hw, y_bot), (x - hw, y_bot + 0.45 * h))
        strokes.append(
            _chain(
                _pl((x + hw, y_bot), (x - hw, y_bot)),
                side,
                _cubic((x - hw, y_bot + 0.45 * h), (x - hw, y_bot + 0.8 * h), (x - 6, y_bot + 0.9 * h), (x, y_bot + h)),
                _cubic((x, y_bot + h), (x + 6, y_bot + 0.9 * h), (x + hw, y_bot + 0.8 * h), (x + hw, y_bot + 0.45 * h)),
                _pl((x + hw, y_bot + 0.45 * h), (x + hw, y_bot)),
            )
        )
        strokes.extend(_letter(letters[0], x - hw + 4, y_bot + 6, lw * 0.8, lh))
        strokes.extend(_letter(letters[1], x + 4, y_bot + 6, lw * 0.8, lh))
    elif base == "heart":
        hw, h = float(rng.uniform(20, 25)), float(rng.uniform(30, 36))
        left = _chain(
            _cubic(
                (x, y_bot + 0.25 * h),
                (x - 0.2 * hw, y_bot - 0.15 * h),
                (x - 1.3 * hw, y_bot - 0.1 * h),
                (x - hw, y_bot + 0.45 * h),
            ),
            _cubic(
                (x - hw, y_bot + 0.45 * h),
                (x - 0.8 * hw, y_bot + 0.7 * h),
                (x - 0.2 * hw, y_bot + 0.85 * h),
                (x, y_bot + h),
            ),
        )
        right = left[::-1].copy()
        right[:, 0] = 2 * x - right[:, 0]
        strokes.append(_chain(left, right))
        strokes.extend(_letter(letters[0], x - lw / 2, y_bot + 0.3 * h, lw, lh * 0.9))
    elif base == "feet":
        sp, h = float(rng.uniform(12, 20)), float(rng.uniform(14, 22))
        strokes.append(_pl((x, y_bot - 4), (x - sp, y_bot + h)))
        strokes.append(_pl((x, y_bot - 4), (x + sp, y_bot + h)))
        strokes.extend(_letter(letters[0], x - lw / 2, y_bot + h + 3, lw, lh * 0.8))
    elif base == "triangle":
        hw, h = float(rng.uniform(12, 18)), float(rng.uniform(18, 24))
        strokes.append(_pl((x, y_bot), (x - hw, y_bot + h), (x + hw, y_bot + h), (x, y_bot)))
    elif base == "hook":
        r = float(rng.uniform(6, 10)) * float(rng.choice([-1.0, 1.0]))
        strokes[0] = _chain(
            strokes[0],
            _ellipse(x + r, y_bot, abs(r), abs(r), 180 if r > 0 else 0, 360 if r > 0 else -180, 20),
        )
        strokes.extend(_letter(letters[0], x - lw - 5 if r > 0 else x + 5, y_bot - lh - 2, lw, lh))
    elif base == "bar":
        strokes.append(_pl((x - 16, y_bot), (x + 16, y_bot)))
        strokes.extend(_letter(letters[0], x + 5, y_bot - lh - 4, lw, lh))
    else:  # initials flanking the staff's foot
        strokes.extend(_letter(letters[0], x - lw - 5, y_bot - lh, lw, lh))
        strokes.extend(_letter(letters[1], x + 5, y_bot - lh, lw, lh))
    parts = {"top": top, "middle": middle, "base": base, "letters": letters}
    return strokes, parts


# ------------------------------------------------------------------------------------------- drawing by hand
def _affine(
    rng: np.random.Generator, box: float, rotate_deg: float, scale: float, shear: float, shift: float
) -> np.ndarray:
    a = math.radians(float(rng.uniform(-rotate_deg, rotate_deg)))
    s = 1.0 + float(rng.uniform(-scale, scale))
    aspect = 1.0 + float(rng.uniform(-scale, scale)) * 0.5
    sh = float(rng.uniform(-shear, shear))
    R = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    A = R @ np.array([[1.0, sh], [0.0, 1.0]]) @ np.diag([s * aspect, s / aspect])
    c = np.array([box / 2, box / 2])
    t = c - A @ c + rng.uniform(-shift, shift, size=2) * box
    return np.column_stack([A, t])


def redraw(
    strokes: Sequence[np.ndarray],
    rng: np.random.Generator,
    box: float,
    *,
    wobble: float = 0.015,
    misplace: float = 0.008,
    overshoot_p: float = 0.25,
    rotate_deg: float = 5.0,
    scale: float = 0.08,
    shear: float = 0.08,
    shift: float = 0.05,
    spacing: tuple[float, float] = (0.012, 0.035),
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Draw a design again "by hand". Returns (strokes float32 (n_i, 2), times float64 (n_i,) in ms).

    ``strokes`` are polylines in a ``box``-sized frame (y down); amplitudes are fractions of ``box``:
    ``wobble`` - smooth displacement along each stroke (a few sinusoids whose wavelengths are 0.3-1.5 box);
    ``misplace`` - each stroke shifted as a whole (joints no longer meet exactly);
    ``overshoot_p`` - chance that a stroke runs on 1-4 % of the box past its end;
    ``rotate_deg`` / ``scale`` / ``shear`` / ``shift`` - bounds of the drawing's affine change;
    ``spacing`` - range of the sample's point spacing (its point density).
    Times: each stroke takes arc / speed with a slow-fast-slow speed profile; 120-400 ms pauses between.
    """
    step = float(rng.uniform(*spacing)) * box
    speed = float(rng.uniform(0.6, 1.2)) * box / 1000.0  # box units per ms at full speed: ~1 box a second
    M = _affine(rng, box, rotate_deg, scale, shear, shift)
    out_s: list[np.ndarray] = []
    out_t: list[np.ndarray] = []
    t0 = 0.0
    for line in strokes:
        line = np.asarray(line, dtype=np.float64)
        fine, arc = _densify(line, 0.004 * box)
        if rng.random() < overshoot_p and arc[-1] > 0.05 * box:
            tangent = fine[-1] - fine[max(0, len(fine) - 4)]
            norm = float(np.linalg.norm(tangent))
            if norm > 0:
                ext = fine[-1] + tangent / norm * float(rng.uniform(0.01, 0.04)) * box
                fine = np.vstack([fine, ext])
                arc = np.append(arc, arc[-1] + float(np.linalg.norm(ext - fine[-2])))
        u = arc / box
        disp = np.zeros_like(fine)
        for k, wavelength in enumerate((1.5, 0.7, 0.3)):
            amp = wobble * box / (k + 1) * rng.uniform(0.5, 1.0, size=2)
            phase = rng.uniform(0, 2 * np.pi, size=2)
            disp += amp * np.sin(2 * np.pi * u[:, None] / wavelength + phase)
        fine = fine + disp + rng.normal(0.0, misplace * box, size=2)
        pts, s = _densify(fine, step)
        pts = pts @ M[:, :2].T + M[:, 2]
        # pen speed: slow at both ends of a stroke, fastest in the middle
        frac = s / s[-1] if s[-1] > 0 else np.zeros_like(s)
        v = speed * (0.3 + 0.7 * np.sin(np.pi * frac))
        dt = np.diff(s) / np.maximum(0.5 * (v[1:] + v[:-1]), 1e-9)
        times = t0 + np.concatenate([[0.0], np.cumsum(np.maximum(dt, 1.0))])
        out_s.append(pts.astype(np.float32))
        out_t.append(times)
        t0 = float(times[-1]) + float(rng.uniform(120, 400))
    return out_s, out_t


def merchant_marks(n_classes: int, per_class: int, seed: int = 0) -> list[Sketch]:
    """``n_classes`` x ``per_class`` hand-drawn merchant marks (class-major order).

    Class ``c`` is ``design_mark(default_rng([seed, 1, c]))``; designs whose parts repeat an earlier class's
    parts are drawn again, so no two classes share the same combination of parts. Sample ``j`` is drawn with
    ``default_rng([seed, 1, c, j])``. Label ``'mark_007'``, id ``'mark_007_03'``; coordinates in a
    [0, 100] box (y down); ``meta`` holds ``family='mark'`` and the parts.
    """
    _check_counts(n_classes, per_class)
    out: list[Sketch] = []
    seen: set[tuple[str, ...]] = set()
    for c in range(n_classes):
        rng = np.random.default_rng([seed, _FAM_MARK, c])
        while True:
            design, parts = design_mark(rng)
            key = (str(parts["top"]), str(parts["middle"]), str(parts["base"]))
            if key not in seen or len(seen) >= len(_TOPS) * len(_MIDDLES) * len(_BASES):
                seen.add(key)
                break
        label = f"mark_{c:03d}"
        for j in range(per_class):
            strokes, times = redraw(design, np.random.default_rng([seed, _FAM_MARK, c, j]), _MARK_BOX)
            meta: dict[str, object] = {"family": "mark", "class_index": c, "sample": j, **parts}
            out.append(Sketch(strokes, times, label=label, id=f"{label}_{j:02d}", meta=meta))
    return out


# ------------------------------------------------------------------------------------------- kanji
_PATH_TAG = re.compile(rb"<path\b")


@functools.lru_cache(maxsize=8)
def simple_kanji(min_strokes: int = 2, max_strokes: int = 6) -> tuple[str, ...]:
    """The KanjiVG characters in the CJK Unified Ideographs block (U+4E00-U+9FFF, no variant forms) drawn with
    ``min_strokes``..``max_strokes`` strokes, in code point order. Strokes are counted as ``<path`` tags,
    which in KanjiVG files are exactly the strokes (checked against the parser in the tests)."""
    from .formats.kanjivg import kanjivg_files

    chars = []
    for f in kanjivg_files():
        stem = f.stem
        if len(stem) != 5 or not 0x4E00 <= int(stem, 16) <= 0x9FFF:
            continue
        if min_strokes <= len(_PATH_TAG.findall(f.read_bytes())) <= max_strokes:
            chars.append(chr(int(stem, 16)))
    return tuple(chars)


def kanji_variants(n_classes: int, per_class: int, seed: int = 0, max_strokes: int = 6) -> list[Sketch]:
    """``n_classes`` x ``per_class`` KanjiVG kanji redrawn by hand (class-major order).

    The kanji are a seeded choice (``default_rng([seed, 2])``) from :func:`simple_kanji` (2..``max_strokes``
    strokes), sorted by code point; sample ``j`` of class ``c`` uses ``default_rng([seed, 2, c, j])``.
    Label = the character, id ``'kanji_06f22_03'``; coordinates in KanjiVG's 109 box;
    ``meta`` holds ``family='kanji'`` and the character.
    """
    from .formats.kanjivg import KANJIVG_BOX, iter_kanjivg

    _check_counts(n_classes, per_class)
    pool = simple_kanji(2, max_strokes)
    if n_classes > len(pool):
        raise ValueError(f"n_classes={n_classes} but only {len(pool)} kanji have 2..{max_strokes} strokes")
    pick = np.random.default_rng([seed, _FAM_KANJI]).choice(len(pool), size=n_classes, replace=False)
    chosen = sorted(pool[i] for i in pick)
    designs = {it.label: it.sketch for it in iter_kanjivg(chars=chosen, strict=True)}
    out: list[Sketch] = []
    for c, ch in enumerate(chosen):
        design = designs.get(ch)
        if design is None:
            raise FileNotFoundError(f"KanjiVG has no file for {ch!r} (U+{ord(ch):04X}); is 'kanjivg' installed?")
        label = ch
        for j in range(per_class):
            strokes, times = redraw(design.strokes, np.random.default_rng([seed, _FAM_KANJI, c, j]), KANJIVG_BOX)
            meta: dict[str, object] = {"family": "kanji", "class_index": c, "sample": j, "char": ch}
            out.append(Sketch(strokes, times, label=label, id=f"kanji_{ord(ch):05x}_{j:02d}", meta=meta))
    return out


def default_collection(
    seed: int = 0, n_mark_classes: int = 40, n_kanji_classes: int = 40, per_class: int = 12
) -> Collection:
    """The project's embedded default: merchant marks + redrawn kanji (80 classes x 12 = 960 sketches).

    Deterministic for a seed (same seed -> same strokes, times, ids). Items are sketches with ``source``
    ``'synthetic:merchant_marks'`` or ``'synthetic:kanji_variants'`` and the sketch's meta.
    """
    sketches = merchant_marks(n_mark_classes, per_class, seed) + kanji_variants(n_kanji_classes, per_class, seed)
    items = [
        Item(
            id=str(s.id),
            label=s.label,
            modality="sketch",
            sketch=s,
            meta=dict(s.meta),
            source="synthetic:merchant_marks" if s.meta["family"] == "mark" else "synthetic:kanji_variants",
        )
        for s in sketches
    ]
    return Collection(items, name=f"embedded_default(seed={seed})")


def _check_counts(n_classes: int, per_class: int) -> None:
    if not isinstance(n_classes, int) or n_classes < 0:
        raise ValueError(f"n_classes must be a non-negative int, got {n_classes!r}")
    if not isinstance(per_class, int) or per_class < 0:
        raise ValueError(f"per_class must be a non-negative int, got {per_class!r}")
