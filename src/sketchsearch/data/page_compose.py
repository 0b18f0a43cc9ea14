"""Synthetic document pages with real drawings placed on them, and the ground truth of where they are.

For finding marks inside document pages: :func:`compose_pages` draws pages that look like photographed old
letters or ledgers, each holding a few real drawings (the *marks*, e.g. Omniglot characters or merchant marks)
whose tight ink boxes are the ground truth; :func:`write_pages` saves the pages as PNG files beside a
``truth.json``, and :func:`read_truth` reads it back, checked.

A page, layer by layer:

* **Paper**: an off-white to yellowed tint (``yellowing``), blotchy mid-frequency mottling (``texture``),
  sometimes faint brownish stains (``stains``) and faint blue ruled lines (``ruled``, the text then sits on them).
* **Marks**: ``marks_per_page`` distinct drawings, each scaled so the longer side of its ink box is drawn from
  ``mark_size``, turned by at most ``rotation`` degrees, at a random place at least ``margin`` px inside the page
  and ``gap`` px away from every other mark. Stroke drawings are drawn with a pen ``line_width`` px wide; drawings
  given as images only are placed as their ink (:func:`~sketchsearch.data.render.image_ink`, faint ink below 0.2
  dropped), scaled and turned with Pillow (their line width scales with them).
* **Distractor drawings**: ``distractor_drawings`` other drawings, smaller (``distractor_size``), at least
  ``clearance`` px away from every mark; they are not in the truth.
* **Distractor text**: ``distractor_lines`` lines of handwriting-like words in one of the Hershey script stroke
  fonts (``scripts``, ``scriptc``, ``cursive``), each word written "by hand" (slant, size jitter, a smooth
  wobble, strokes a little off at pen lifts), in a paragraph across the page.
  A word that would come within ``clearance`` px of a mark (or of a distractor drawing) is left out, so the text
  flows around the marks and never enters a mark's box.
* **Ink**: dark brown, black or blue-black pen colours, antialiased (drawn ``supersample`` times finer with
  Pillow and box-filtered down, as :mod:`~sketchsearch.data.render` does), laid on the paper as a filter
  (``paper * (1 - alpha * (1 - ink))``), its darkness varying slowly along the strokes (``ink_fade``).
* **Light and sensor**: uneven, low-frequency illumination (a ramp plus broad bumps; ``lighting``) multiplies
  everything; Gaussian noise of sd ``noise`` grey levels is added; the result is uint8 RGB.

Every knob is a field of :class:`PageStyle`, with its default (a 1000 x 1400 page, 3-6 marks of 70-200 px, up
to 10 degrees, 6-14 lines of text, 0-3 distractor drawings, noise 6, lighting 0.25). :meth:`PageStyle.clean`
gives marks alone on flat paper (for checking the truth); ``draw_marks=False`` places the marks (truth and
all) without drawing them, so a test can see that nothing else was drawn in their boxes.

**Randomness**: page ``i`` of :func:`compose_pages` uses ``numpy.random.default_rng([seed, 3, i])`` for
everything (which drawings, where, how), so a page does not depend on how many pages are asked for.

**Truth** (``truth.json``, written last and atomically, after the PNGs it names)::

    {"format": "sketchsearch.page_truth", "version": 1,
     "pages": [{"file": "page-0000.png", "width": 1000, "height": 1400,
                "marks": [{"box": [x0, y0, x1, y1], "label": "Greek/character05",
                           "item_id": "strokes:Greek/character05/0112_03", "source": ".../0112_03.txt"}]}]}

``box`` is the tight box of the mark's ink as drawn, in page pixels, ``x1`` / ``y1`` exclusive: every pixel
the pen touched (antialiasing fringe included) is inside it, and each of its four edges touches ink.
``item_id`` lets an evaluation query with a *different* drawing of the same label.

**Dependencies**: the text uses the ``Hershey-Fonts`` package (import ``HersheyFonts``; MIT licence,
github.com/apshu/HersheyFonts). Its font data are the fonts Dr. A. V. Hershey digitised at the U.S. National
Bureau of Standards; the package's notice calls them public domain (only NTIS's own distribution format is not,
and the package does not use it); the customary credit to Hershey and the NBS is given here. Everything runs on
the CPU with numpy and Pillow: a 1000 x 1400 page takes 0.1-0.2 s on one core (fonts loaded once, 0.5 s).
"""

from __future__ import annotations

import functools
import io
import json
import math
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from .._io import atomic_write_bytes, atomic_write_text
from ..errors import FormatError, InvalidSketchError
from .formats.base import Item
from .render import image_ink
from .sketch import Sketch

__all__ = [
    "TRUTH_FILE",
    "TRUTH_FORMAT",
    "TRUTH_VERSION",
    "ComposedPage",
    "PageStyle",
    "PlacedMark",
    "compose_page",
    "compose_pages",
    "read_truth",
    "write_pages",
]

Box = tuple[int, int, int, int]  # x0, y0, x1, y1 in page pixels, x1 / y1 exclusive

#: The ground-truth file of a folder of pages.
TRUTH_FILE = "truth.json"
TRUTH_FORMAT = "sketchsearch.page_truth"
TRUTH_VERSION = 1

_PAGES = 3  # rng key tag of page composition (synthetic.py keys its two families 1 and 2)

# Colours are reflectances in [0, 1] (RGB).
_PAPER_WHITE = np.array([0.985, 0.98, 0.965], dtype=np.float32)
_PAPER_AGED = np.array([0.90, 0.83, 0.66], dtype=np.float32)
_STAIN = np.array([0.72, 0.58, 0.40], dtype=np.float32)
_RULE = np.array([0.55, 0.66, 0.86], dtype=np.float32)
_INKS = np.array(
    [
        [0.16, 0.12, 0.09],  # iron-gall black-brown
        [0.30, 0.20, 0.12],  # sepia
        [0.08, 0.08, 0.09],  # black
        [0.10, 0.12, 0.25],  # blue-black
        [0.12, 0.20, 0.45],  # blue
    ],
    dtype=np.float32,
)
_FONTS = ("scripts", "cursive", "scriptc")  # Hershey script faces (scriptc: double-stroked)
_FONT_P = (0.45, 0.35, 0.2)
_HERSHEY_BASE, _HERSHEY_HEIGHT = 9.0, 33.0  # base line (y down) and cap-to-descender height of the script fonts
_WORD_LIST = (  # early-modern Dutch, English and Latin of letters and ledgers
    "anno item den van ende datum gulden schip merck coopman haer dit met naer voor sijn heeft de het in op te als "
    "ons onder teecken geleverd pack vaten wijn laken balen Amsterdam Dantzig Lisbon Bergen Hamburg received of the "
    "and for goods marked margin witness hand paid sum pounds shillings per bale cask signed sealed this day month "
    "year our said master merchant ship bound from to with by account freight notary domini testes praesentibus"
)
_WORDS = tuple(_WORD_LIST.split())


# ------------------------------------------------------------------------------------------------ style
@dataclass(frozen=True)
class PageStyle:
    """How pages look. A range ``(lo, hi)`` is drawn uniformly (ints: both ends included) per page or per piece."""

    size: tuple[int, int] = (1000, 1400)  # page width, height in px (A4 at about 120 dpi)
    marks_per_page: tuple[int, int] = (3, 6)  # drawings placed on a page (capped by the drawings given)
    mark_size: tuple[int, int] = (70, 200)  # longer side of a placed mark's ink box, px
    rotation: float = 10.0  # max |degrees| a mark or distractor drawing is turned
    line_width: tuple[float, float] = (1.5, 3.5)  # pen width of stroke drawings and text, px
    distractor_lines: tuple[int, int] = (6, 14)  # lines of handwriting-like text (Hershey script fonts)
    distractor_drawings: tuple[int, int] = (0, 3)  # other drawings (from a distractor pool), not in the truth
    distractor_size: tuple[int, int] = (30, 80)  # longer side of a distractor drawing's ink box, px
    text_size: tuple[float, float] = (22.0, 34.0)  # text height, cap line to descender, px (one size a page)
    noise: float = 6.0  # grey-level sd of the Gaussian noise (0-255 scale)
    lighting: float = 0.25  # amplitude of uneven illumination: the darkest part gets 1 - lighting (0 = flat)
    yellowing: float = 1.0  # most age tint of the paper, drawn per page: 0 = off-white, 1 = old yellowed paper
    texture: float = 0.03  # amplitude of the paper's blotchy mottling, a fraction of its brightness
    stains: float = 0.4  # chance that a page has a few faint brownish stains
    ruled: float = 0.3  # chance that a page has faint ruled lines (its text then sits on them)
    ink_fade: float = 0.3  # ink darkness varies slowly along the strokes, down to 1 - ink_fade
    margin: int = 40  # page border kept free of marks and text, px
    gap: int = 30  # least distance between two marks' boxes, px
    clearance: int = 8  # least distance between distractor ink (text, drawings) and a mark's box, px
    supersample: int = 4  # antialiasing: ink is drawn this many times finer, then box-filtered down
    draw_marks: bool = True  # False: marks are placed and in the truth but not drawn (tests; background pages)

    def __post_init__(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, tuple):
                if len(v) != 2 or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v):
                    raise ValueError(f"PageStyle.{f.name} must be a pair of numbers, got {v!r}")
                if v[0] < 0 or v[0] > v[1]:
                    raise ValueError(f"PageStyle.{f.name} must be (lo, hi) with 0 <= lo <= hi, got {v!r}")
            elif isinstance(v, (int, float)) and not isinstance(v, bool) and v < 0:
                raise ValueError(f"PageStyle.{f.name} must be >= 0, got {v!r}")
        for name in ("marks_per_page", "distractor_lines", "distractor_drawings", "mark_size", "distractor_size"):
            if not all(isinstance(x, int) for x in getattr(self, name)):
                raise ValueError(f"PageStyle.{name} must be a pair of ints, got {getattr(self, name)!r}")
        w, h = self.size
        if self.mark_size[0] < 4 or self.distractor_size[0] < 4 or self.text_size[0] < 4:
            raise ValueError("PageStyle.mark_size, distractor_size and text_size must start at 4 px or more")
        if self.mark_size[1] + 2 * self.margin > min(w, h):
            raise ValueError(
                f"PageStyle.mark_size {self.mark_size} does not fit a {w} x {h} page inside margins of {self.margin} px"
            )
        for name in ("lighting", "yellowing", "stains", "ruled", "ink_fade"):
            if getattr(self, name) > 1:
                raise ValueError(f"PageStyle.{name} must be in [0, 1], got {getattr(self, name)!r}")
        if not isinstance(self.supersample, int) or not 1 <= self.supersample <= 8:
            raise ValueError(f"PageStyle.supersample must be an int in 1..8, got {self.supersample!r}")
        if self.line_width[0] <= 0:
            raise ValueError(f"PageStyle.line_width must be > 0, got {self.line_width!r}")

    @classmethod
    def clean(cls, **changes: Any) -> PageStyle:
        """Marks alone on flat paper of one colour: no noise, lighting, mottling, stains, rules or distractors.
        ``changes`` override any field (e.g. ``distractor_lines=(8, 12)`` to bring the text back)."""
        kw: dict[str, Any] = {
            "noise": 0.0,
            "lighting": 0.0,
            "yellowing": 0.0,
            "texture": 0.0,
            "stains": 0.0,
            "ruled": 0.0,
            "distractor_lines": (0, 0),
            "distractor_drawings": (0, 0),
        }
        kw.update(changes)
        return cls(**kw)


# ------------------------------------------------------------------------------------------------ results
@dataclass(frozen=True)
class PlacedMark:
    """One drawing placed on a page: the tight box of its ink as drawn, and what it is."""

    box: Box  # x0, y0, x1, y1 in page pixels, x1 / y1 exclusive
    label: str | None  # the drawing's label (e.g. Omniglot "alphabet/character")
    item_id: str | int | None  # the placed drawing's id, so a query can be a *different* drawing of the label
    source: str | None  # where the drawing was read from (an Item's source), when known

    def record(self) -> dict[str, Any]:
        """The mark as a ``truth.json`` record."""
        return {"box": list(self.box), "label": self.label, "item_id": self.item_id, "source": self.source}


@dataclass
class ComposedPage:
    """A page and its truth."""

    image: np.ndarray  # uint8 (H, W, 3) RGB
    marks: list[PlacedMark]
    name: str  # file name, e.g. "page-0003.png"
    distractor_boxes: list[Box] = field(default_factory=list)  # ink boxes of text words and distractor drawings
    skipped: list[str] = field(default_factory=list)  # one reason per mark given but not placed (no ink / room)

    def record(self) -> dict[str, Any]:
        """The page as a ``truth.json`` record."""
        h, w = self.image.shape[:2]
        return {"file": self.name, "width": int(w), "height": int(h), "marks": [m.record() for m in self.marks]}


# ------------------------------------------------------------------------------------------------ drawings
@dataclass
class _Drawing:
    sketch: Sketch | None
    image: np.ndarray | None
    label: str | None
    item_id: str | int | None
    source: str | None


def _as_drawing(d: Item | Sketch, where: str) -> _Drawing:
    if isinstance(d, Sketch):
        src = d.meta.get("source")
        return _Drawing(d, None, d.label, d.id, src if isinstance(src, str) else None)
    if isinstance(d, Item):
        return _Drawing(d.sketch, d.image, d.label, d.id, d.source)
    raise TypeError(f"{where}: expected an Item or a Sketch, got {type(d).__name__}")


def _has_ink(d: Item | Sketch) -> bool:
    """Cheap check that a drawing can be placed: strokes with extent, or an image with contrast."""
    sketch = d if isinstance(d, Sketch) else d.sketch
    if sketch is not None and not sketch.is_empty:
        x0, y0, x1, y1 = sketch.bounds()
        return max(x1 - x0, y1 - y0) > 0
    image = None if isinstance(d, Sketch) else d.image
    if image is None or np.size(image) == 0:
        return False
    a = np.asarray(image)
    span = float(a.max()) - float(a.min())
    return span >= 0.1 * 255 if a.dtype == np.uint8 else span > 0  # image_ink's no-contrast rule, on uint8


# ------------------------------------------------------------------------------------------------ ink patches
Patch = tuple[np.ndarray, int, int]  # alpha float32 (h, w) in (0, 1], cropped to its ink; x, y of its top left


def _crop(alpha: np.ndarray, x: int, y: int) -> Patch | None:
    ys = np.flatnonzero(alpha.any(axis=1))
    if len(ys) == 0:
        return None
    xs = np.flatnonzero(alpha.any(axis=0))
    y0, y1, x0, x1 = int(ys[0]), int(ys[-1]) + 1, int(xs[0]), int(xs[-1]) + 1
    return np.ascontiguousarray(alpha[y0:y1, x0:x1]), x + x0, y + y0


def _stroke_patch(strokes: Sequence[np.ndarray], width: float, supersample: int) -> Patch | None:
    """The ink of ``strokes`` (float (n, 2) arrays, already in page pixels) with a pen ``width`` px wide.

    Drawn as :func:`~sketchsearch.data.render.rasterize` draws (Pillow lines ``supersample`` times finer, round
    joints and caps, box-filtered down), but on a patch the size of the strokes' own box and in their own pixel
    frame: ``rasterize`` fits a drawing into a square canvas, which would move and rescale it. Round joints are a
    disk at every point over the plain wide line (the same shape): Pillow's ``joint="curve"`` computes a pie slice
    per point in Python, ten times slower, and a page has some 20,000 points of text.
    """
    pts = np.concatenate(strokes)
    pad = width / 2.0 + 1.0
    x0, y0 = math.floor(float(pts[:, 0].min()) - pad), math.floor(float(pts[:, 1].min()) - pad)
    x1, y1 = math.ceil(float(pts[:, 0].max()) + pad), math.ceil(float(pts[:, 1].max()) + pad)
    ss = supersample
    img = Image.new("L", ((x1 - x0) * ss, (y1 - y0) * ss), 0)
    draw = ImageDraw.Draw(img)
    w = max(1, int(round(width * ss)))
    r = w / 2.0
    origin = np.array([x0, y0], dtype=np.float64)
    for s in strokes:
        p = [(float(x), float(y)) for x, y in (np.asarray(s, dtype=np.float64) - origin) * ss]
        if len(p) > 1:
            draw.line(p, fill=255, width=w)
        if w > 2 or len(p) == 1:  # round joints and caps: a disk at every point
            for x, y in p:
                draw.ellipse([x - r, y - r, x + r, y + r], fill=255)
    if ss > 1:
        img = img.reduce(ss)
    return _crop(np.asarray(img, dtype=np.float32) / 255.0, x0, y0)


def _sketch_patch(sketch: Sketch, longer: float, angle: float, width: float, supersample: int) -> Patch | None:
    """A stroke drawing turned by ``angle`` degrees and scaled so its ink box's longer side is about ``longer``."""
    strokes = [s.astype(np.float64) for s in sketch.strokes]
    pts = np.concatenate(strokes)
    c = (pts.min(axis=0) + pts.max(axis=0)) / 2.0
    a = math.radians(angle)
    rot = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    turned = [(s - c) @ rot.T for s in strokes]
    allp = np.concatenate(turned)
    lo, extent = allp.min(axis=0), float((allp.max(axis=0) - allp.min(axis=0)).max())
    if extent <= 0:
        return None
    scale = max(longer - width, 1.0) / extent
    return _stroke_patch([(s - lo) * scale for s in turned], width, supersample)


def _image_patch(image: np.ndarray, longer: float, angle: float) -> Patch | None:
    """A drawing given as an image, placed as its ink: faint ink (< 0.2: paper grain, scan background) dropped,
    turned and scaled with Pillow (bicubic, antialiased when shrinking), quantised to 1/255 steps."""
    ink = image_ink(Image.fromarray(np.asarray(image)))  # InvalidSketchError when it has no contrast
    ink = np.clip((ink - 0.2) / 0.8, 0.0, 1.0).astype(np.float32)
    first = _crop(ink, 0, 0)
    if first is None:
        return None
    im = Image.fromarray(first[0]).rotate(angle, resample=Image.Resampling.BICUBIC, expand=True)
    turned = _crop(np.clip(np.asarray(im), 0.0, 1.0) * (np.asarray(im) > 1e-3), 0, 0)
    if turned is None:
        return None
    h, w = turned[0].shape
    s = longer / max(w, h)
    size = (max(1, int(round(w * s))), max(1, int(round(h * s))))
    out = np.asarray(Image.fromarray(turned[0]).resize(size, Image.Resampling.BICUBIC), dtype=np.float32)
    out = np.round(np.clip(out, 0.0, 1.0) * 255.0) / 255.0
    out[out < 8 / 255] = 0.0  # ringing of the bicubic filter, invisible on the page
    return _crop(out.astype(np.float32), 0, 0)


def _drawing_patch(
    d: _Drawing, longer: float, angle: float, width: float, supersample: int
) -> tuple[Patch | None, str | None]:
    """(patch, None), or (None, why not)."""
    if d.sketch is not None and not d.sketch.is_empty:
        p = _sketch_patch(d.sketch, longer, angle, width, supersample)
        return p, None if p is not None else "no ink (its strokes have no extent)"
    if d.image is not None and np.size(d.image):
        try:
            p = _image_patch(d.image, longer, angle)
        except InvalidSketchError as e:
            return None, f"no ink ({e.reason})"
        return p, None if p is not None else "no ink"
    return None, "no ink (neither strokes nor an image)"


# ------------------------------------------------------------------------------------------------ placement
def _free(boxes: np.ndarray, obstacles: Sequence[tuple[Box, int]]) -> np.ndarray:
    """Which of ``boxes`` (int (n, 4)) keep the required distance from every obstacle ``(box, distance)``."""
    ok = np.ones(len(boxes), dtype=bool)
    for (ox0, oy0, ox1, oy1), d in obstacles:
        ok &= (boxes[:, 2] + d <= ox0) | (ox1 + d <= boxes[:, 0]) | (boxes[:, 3] + d <= oy0) | (oy1 + d <= boxes[:, 1])
    return ok


def _spot(
    rng: np.random.Generator, w: int, h: int, page: tuple[int, int], margin: int, obstacles: Sequence[tuple[Box, int]]
) -> tuple[int, int] | None:
    """A random top-left corner for a w x h box inside the page's margins, clear of the obstacles; None when 256
    random tries all fail (rejection sampling: the pages are sparse, and 256 tries cost microseconds)."""
    W, H = page
    if w > W - 2 * margin or h > H - 2 * margin:
        return None
    xs = rng.integers(margin, W - margin - w, size=256, endpoint=True)
    ys = rng.integers(margin, H - margin - h, size=256, endpoint=True)
    ok = np.flatnonzero(_free(np.stack([xs, ys, xs + w, ys + h], axis=1), obstacles))
    return (int(xs[ok[0]]), int(ys[ok[0]])) if len(ok) else None


# ------------------------------------------------------------------------------------------------ paper and light
def _smooth(rng: np.random.Generator, grid: tuple[int, int], size: tuple[int, int]) -> np.ndarray:
    """Gaussian noise on a coarse ``grid`` (rows, cols) resized bicubically to ``size`` (w, h): a smooth field."""
    g = rng.standard_normal((max(2, grid[0]), max(2, grid[1]))).astype(np.float32)
    return np.asarray(Image.fromarray(g).resize(size, Image.Resampling.BICUBIC), dtype=np.float32)


def _paper(rng: np.random.Generator, style: PageStyle, rules: Sequence[int]) -> np.ndarray:
    """Paper reflectance, float32 (H, W, 3): tint, mottling, stains, ruled lines."""
    W, H = style.size
    tint = _PAPER_WHITE + (_PAPER_AGED - _PAPER_WHITE) * float(rng.uniform(0.0, style.yellowing))
    page = np.empty((H, W, 3), dtype=np.float32)
    page[:] = tint
    if style.texture > 0:
        page *= (1.0 + style.texture * np.clip(_smooth(rng, (H // 10, W // 10), (W, H)), -3, 3) / 3)[..., None]
    if rng.random() < style.stains:
        for _ in range(int(rng.integers(1, 4))):
            r = int(rng.integers(30, 160))
            cx, cy = int(rng.integers(0, W)), int(rng.integers(0, H))
            x0, y0, x1, y1 = max(0, cx - r), max(0, cy - r), min(W, cx + r), min(H, cy + r)
            yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
            d = np.hypot(xx - cx, yy - cy) / r
            wobble = _smooth(rng, (4, 4), (x1 - x0, y1 - y0)) * 0.25
            mask = np.clip(1.0 - d + wobble, 0.0, 1.0) ** 0.7
            amount = float(rng.uniform(0.04, 0.12))
            page[y0:y1, x0:x1] *= 1.0 - amount * mask[..., None] * (1.0 - _STAIN)
    for y in rules:
        if 0 <= y < H:
            page[y] *= 1.0 - 0.3 * (1.0 - _RULE)
    return page


def _unit(a: np.ndarray) -> np.ndarray:
    """``a`` rescaled to [0, 1] (all zeros when it is flat)."""
    return (a - a.min()) / max(float(np.ptp(a)), 1e-6)


def _illumination(rng: np.random.Generator, style: PageStyle) -> np.ndarray:
    """float32 (H, W) in [1 - lighting, 1]: a ramp from a random side plus broad bumps, made on a coarse grid."""
    W, H = style.size
    gw, gh = max(2, W // 25), max(2, H // 25)
    a = float(rng.uniform(0, 2 * math.pi))
    yy, xx = np.mgrid[0:gh, 0:gw].astype(np.float32)
    ramp = xx / gw * math.cos(a) + yy / gh * math.sin(a)
    bumps = _smooth(rng, (3, 4), (gw, gh))
    f = _unit(0.6 * _unit(ramp) + 0.4 * _unit(bumps))
    light = np.asarray(Image.fromarray(f.astype(np.float32)).resize((W, H), Image.Resampling.BILINEAR))
    return 1.0 - style.lighting * np.clip(light, 0.0, 1.0)


def _ink_colour(rng: np.random.Generator) -> np.ndarray:
    return np.clip(_INKS[int(rng.integers(len(_INKS)))] + rng.uniform(-0.03, 0.03, size=3), 0.0, 1.0).astype(np.float32)


def _lay_ink(
    page: np.ndarray, rng: np.random.Generator, patch: Patch, colour: np.ndarray, fade: float, visible: bool = True
) -> None:
    """Ink on paper, as a filter: ``paper * (1 - alpha * (1 - ink))``; darkness fades slowly along the strokes.
    ``visible=False`` makes the same random draws and leaves the page as it is."""
    alpha, x, y = patch
    h, w = alpha.shape
    a = alpha * float(rng.uniform(0.85, 1.0))
    if fade > 0:
        grid = rng.uniform(1.0 - fade, 1.0, size=(max(2, h // 30), max(2, w // 30))).astype(np.float32)
        a = a * np.asarray(Image.fromarray(grid).resize((w, h), Image.Resampling.BILINEAR))
    if visible:
        page[y : y + h, x : x + w] *= 1.0 - a[..., None] * (1.0 - colour)


# ------------------------------------------------------------------------------------------------ text
@functools.lru_cache(maxsize=4)
def _font(name: str) -> Any:
    try:
        from HersheyFonts import HersheyFonts
    except ImportError as e:  # a dependency in pyproject.toml; an old environment may lack it
        raise ImportError("page_compose's text needs the Hershey-Fonts package: pip install Hershey-Fonts") from e
    f = HersheyFonts()
    f.load_default_font(name)
    return f


@functools.lru_cache(maxsize=4096)
def _word_units(font: str, word: str) -> tuple[tuple[np.ndarray, ...], float]:
    """A word's strokes in font units (y down, base line at y = 9) and its advance width."""
    f = _font(font)
    strokes = tuple(np.asarray(s, dtype=np.float64) for s in f.strokes_for_text(word) if len(s))
    for s in strokes:
        s.setflags(write=False)
    advance = float(sum(g.char_width for g in f.glyphs_for_text(word)))
    return strokes, advance


def _handwrite(rng: np.random.Generator, units: Sequence[np.ndarray]) -> list[np.ndarray]:
    """A word's font strokes as a hand writes them, in font units with the base line at y = 0: a slant, a size
    jitter, a slight turn, a smooth wobble of the whole word (three sine waves of position, 0.3-2 letter heights
    long) and each stroke a little off where the pen was lifted. One vectorised pass over the word's points
    (:func:`~sketchsearch.data.synthetic.redraw` works stroke by stroke, too slow for a page of words)."""
    pts = np.concatenate(units) - (0.0, _HERSHEY_BASE)
    n = [len(u) for u in units]
    shear, size, turn = float(rng.normal(0.0, 0.12)), float(rng.uniform(0.95, 1.05)), float(rng.normal(0.0, 0.015))
    c, s = math.cos(turn), math.sin(turn)
    x = (pts[:, 0] - shear * pts[:, 1]) * size
    y = pts[:, 1] * size
    out = np.stack([c * x - s * y, s * x + c * y], axis=1)
    for k, wavelength in enumerate((2.0, 0.8, 0.3)):
        direction = rng.normal(size=2)
        phase = (out @ direction) / (np.linalg.norm(direction) * wavelength * _HERSHEY_HEIGHT) * 2 * math.pi
        amp = rng.uniform(0.3, 0.6, size=2) * 0.02 * _HERSHEY_HEIGHT / (k + 1)
        out += amp * np.sin(phase[:, None] + rng.uniform(0, 2 * math.pi, size=2))
    out += np.repeat(rng.normal(0.0, 0.006 * _HERSHEY_HEIGHT, size=(len(n), 2)), n, axis=0)
    return np.split(out, np.cumsum(n)[:-1])


def _word(rng: np.random.Generator, capital: bool) -> str:
    if rng.random() < 0.04:
        w = str(int(rng.integers(1, 400)))
    else:
        w = _WORDS[int(rng.integers(len(_WORDS)))]
        if capital:
            w = w[0].upper() + w[1:]
    r = rng.random()
    return w + ("," if r < 0.08 else "." if r < 0.12 else "")


@dataclass
class _TextPlan:
    n_lines: int
    size: float  # px, cap line to descender
    spacing: float  # px between base lines
    first: float  # y of the first base line
    font: str
    ruled: bool


def _plan_text(rng: np.random.Generator, style: PageStyle) -> _TextPlan:
    H = style.size[1]
    n = int(rng.integers(style.distractor_lines[0], style.distractor_lines[1], endpoint=True))
    size = float(rng.uniform(*style.text_size))
    spacing = size * float(rng.uniform(1.5, 2.1))
    top = style.margin + size * 0.7  # cap line 21 font units above the base line, descenders 12 below (of 33)
    room = H - style.margin - size * 0.4 - top
    block = spacing * n * 1.15  # paragraph breaks add about a line in seven
    first = top + float(rng.uniform(0.0, max(0.0, room - block)))
    font = str(rng.choice(_FONTS, p=_FONT_P))
    return _TextPlan(n, size, spacing, first, font, bool(rng.random() < style.ruled))


def _rules(plan: _TextPlan, style: PageStyle) -> list[int]:
    """Ruled lines: every ``spacing`` down the page through the text's base lines (when the page is ruled)."""
    if not plan.ruled:
        return []
    H = style.size[1]
    y0 = plan.first - math.floor((plan.first - style.margin) / plan.spacing) * plan.spacing
    return [int(round(y)) for y in np.arange(y0, H - style.margin, plan.spacing)]


def _text(
    rng: np.random.Generator, style: PageStyle, plan: _TextPlan, obstacles: Sequence[tuple[Box, int]]
) -> list[tuple[Patch, Box]]:
    """The distractor text's words, as ink patches with their boxes. Words that would come within the required
    distance of an obstacle are left out (the line goes on after them)."""
    if plan.n_lines == 0:
        return []
    W, H = style.size
    scale = plan.size / _HERSHEY_HEIGHT
    width = min(float(rng.uniform(*style.line_width)), plan.size * 0.12)
    left = style.margin + float(rng.uniform(0, 60))
    right = W - style.margin - float(rng.uniform(0, 40))
    space = 12.0 * scale
    slack = width / 2 + 2 + 0.12 * plan.size  # a quick test on the font's box before writing the word by hand
    out: list[tuple[Patch, Box]] = []
    y = plan.first
    new_paragraph = True
    for _ in range(plan.n_lines):
        if y + plan.size * 0.4 > H - style.margin:
            break
        x = left + (float(rng.uniform(1.0, 3.0)) * plan.size if new_paragraph else 0.0)
        end = right - (float(rng.uniform(0.1, 0.6)) * (right - left) if rng.random() < 0.15 else 0.0)
        slope = float(rng.normal(0.0, 0.008))
        capital = new_paragraph
        while True:
            word = _word(rng, capital)
            units, advance = _word_units(plan.font, word)
            adv = advance * scale
            if x + adv > end:
                break
            capital = word.endswith(".")
            x_next = x + adv + space * float(rng.uniform(0.8, 1.4))
            base = y + slope * (x - left)
            if not units:
                x = x_next
                continue
            raw = np.concatenate(units)
            rough = np.array(
                [
                    [
                        int(x + raw[:, 0].min() * scale - slack),
                        int(base + (raw[:, 1].min() - _HERSHEY_BASE) * scale - slack),
                        int(x + raw[:, 0].max() * scale + slack) + 1,
                        int(base + (raw[:, 1].max() - _HERSHEY_BASE) * scale + slack) + 1,
                    ]
                ]
            )
            if _free(rough, obstacles)[0]:
                px = [h * scale + (x, base) for h in _handwrite(rng, units)]
                patch = _stroke_patch(px, width, style.supersample)
                if patch is not None:
                    a, px0, py0 = patch
                    box = (px0, py0, px0 + a.shape[1], py0 + a.shape[0])
                    inside = box[0] >= 0 and box[1] >= 0 and box[2] <= W and box[3] <= H
                    if inside and _free(np.array([box]), obstacles)[0]:
                        out.append((patch, box))
            x = x_next
        new_paragraph = rng.random() < 0.15
        y += plan.spacing * (2 if new_paragraph and not plan.ruled and rng.random() < 0.5 else 1)
    return out


# ------------------------------------------------------------------------------------------------ pages
def _place_marks(
    rng: np.random.Generator, drawings: Sequence[_Drawing], style: PageStyle
) -> tuple[list[tuple[PlacedMark, Patch]], list[str]]:
    """Each drawing at a random size, turn and place, ``gap`` px from the others; (placed, why each other was not)."""
    placed: list[tuple[PlacedMark, Patch]] = []
    skipped: list[str] = []
    obstacles: list[tuple[Box, int]] = []
    for i, d in enumerate(drawings):
        longer = float(rng.integers(style.mark_size[0], style.mark_size[1], endpoint=True))
        angle = float(rng.uniform(-style.rotation, style.rotation))
        width = float(rng.uniform(*style.line_width))
        why = "no room left on the page"
        for _ in range(4):  # the drawn size, then smaller, until it fits
            patch, bad = _drawing_patch(d, longer, angle, width, style.supersample)
            if patch is None:
                why = str(bad)
                break
            h, w = patch[0].shape
            spot = _spot(rng, w, h, style.size, style.margin, obstacles)
            if spot is not None:
                box = (spot[0], spot[1], spot[0] + w, spot[1] + h)
                obstacles.append((box, style.gap))
                placed.append((PlacedMark(box, d.label, d.item_id, d.source), (patch[0], spot[0], spot[1])))
                why = ""
                break
            longer *= 0.8
        if why:
            skipped.append(f"marks[{i}] (id {d.item_id!r}): {why}")
    return placed, skipped


def _place_distractors(
    rng: np.random.Generator, drawings: Sequence[_Drawing], style: PageStyle, near_marks: Sequence[tuple[Box, int]]
) -> list[tuple[Patch, Box]]:
    """Distractor drawings at ``distractor_size``, clear of the marks and of each other; those without ink or room
    are left out."""
    out: list[tuple[Patch, Box]] = []
    for d in drawings:
        longer = float(rng.integers(style.distractor_size[0], style.distractor_size[1], endpoint=True))
        angle = float(rng.uniform(-style.rotation, style.rotation))
        width = float(rng.uniform(*style.line_width))
        patch, _ = _drawing_patch(d, longer, angle, width, style.supersample)
        if patch is None:
            continue
        h, w = patch[0].shape
        spot = _spot(rng, w, h, style.size, style.margin, [*near_marks, *((b, style.clearance) for _, b in out)])
        if spot is not None:
            out.append(((patch[0], spot[0], spot[1]), (spot[0], spot[1], spot[0] + w, spot[1] + h)))
    return out


def compose_page(
    rng: np.random.Generator,
    marks: Sequence[Item | Sketch],
    distractors: Sequence[Item | Sketch],
    style: PageStyle,
    name: str,
) -> ComposedPage:
    """One page holding every drawing of ``marks`` (in the truth) and of ``distractors`` (not in the truth).

    Every random choice comes from ``rng``, in a fixed order. A mark with no ink, or with no room left on the
    page (after shrinking it three times by 0.8), is skipped and named in :attr:`ComposedPage.skipped`; a
    distractor drawing likewise, silently. ``marks`` may be empty (a page without marks). ValueError when two
    marks are the same drawing (the same id).
    """
    W, H = style.size
    drawings = [_as_drawing(m, f"marks[{i}]") for i, m in enumerate(marks)]
    ids = [d.item_id for d in drawings if d.item_id is not None]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise ValueError(f"marks: the drawing {dup!r} is given twice; a page's marks are distinct drawings")
    others = [_as_drawing(m, f"distractors[{i}]") for i, m in enumerate(distractors)]

    plan = _plan_text(rng, style)
    page = _paper(rng, style, _rules(plan, style))

    placed, skipped = _place_marks(rng, drawings, style)
    near_marks = [(m.box, style.clearance) for m, _ in placed]
    distractor_ink = _place_distractors(rng, others, style, near_marks)
    words = _text(rng, style, plan, near_marks + [(b, 2) for _, b in distractor_ink])

    for patch, _ in distractor_ink:
        _lay_ink(page, rng, patch, _ink_colour(rng), style.ink_fade)
    scribe = _ink_colour(rng)
    for patch, _ in words:
        _lay_ink(page, rng, patch, scribe, style.ink_fade)
    for _, patch in placed:  # the same random draws whether drawn or not: all else stays the same
        _lay_ink(page, rng, patch, _ink_colour(rng), style.ink_fade, visible=style.draw_marks)

    if style.lighting > 0:
        page *= _illumination(rng, style)[..., None]
    page *= 255.0
    if style.noise > 0:
        page += (rng.standard_normal((H, W), dtype=np.float32) * style.noise)[..., None]
    image = np.rint(np.clip(page, 0.0, 255.0)).astype(np.uint8)
    return ComposedPage(
        image=image,
        marks=[m for m, _ in placed],
        name=name,
        distractor_boxes=[b for _, b in distractor_ink] + [b for _, b in words],
        skipped=skipped,
    )


def compose_pages(
    drawings: Sequence[Item] | Iterable[Item],
    n_pages: int,
    *,
    seed: int = 0,
    style: PageStyle = PageStyle(),
    distractors: Sequence[Item] | Iterable[Item] | None = None,
) -> list[ComposedPage]:
    """``n_pages`` pages (``page-0000.png`` ...) of marks chosen from ``drawings`` (Items with strokes or images;
    a :class:`~sketchsearch.data.collection.Collection` will do).

    Page ``i`` uses ``default_rng([seed, 3, i])``: it draws ``marks_per_page`` distinct drawings (capped by how
    many there are), then ``distractor_drawings`` drawings from ``distractors`` (default: ``drawings``) whose
    labels and ids differ from the page's marks (so no unlabelled copy of a mark's class is on the page), then
    composes the page with :func:`compose_page`. Drawings without ink are skipped up front, with a warning that
    counts them. ValueError when ``drawings`` is empty or has no drawing with ink, or ``n_pages`` is not an int
    >= 0.
    """
    if not isinstance(n_pages, int) or isinstance(n_pages, bool) or n_pages < 0:
        raise ValueError(f"n_pages must be an int >= 0, got {n_pages!r}")
    given = list(drawings)
    if not given:
        raise ValueError("drawings: no drawings given; compose_pages needs at least one drawing to place")
    pool = [d for d in given if _has_ink(d)]
    if len(pool) < len(given):
        warnings.warn(
            f"compose_pages: {len(given) - len(pool)} of {len(given)} drawings have no ink and are skipped",
            stacklevel=2,
        )
    if not pool:
        raise ValueError(f"drawings: none of the {len(given)} drawings has ink (strokes or an image with contrast)")
    others = pool if distractors is None else [d for d in distractors if _has_ink(d)]
    pages = []
    for i in range(n_pages):
        rng = np.random.default_rng([seed, _PAGES, i])
        n = min(len(pool), int(rng.integers(style.marks_per_page[0], style.marks_per_page[1], endpoint=True)))
        marks = [pool[int(j)] for j in rng.choice(len(pool), size=n, replace=False)]
        labels = {m.label for m in marks if m.label is not None}
        ids = {m.id for m in marks}
        k = int(rng.integers(style.distractor_drawings[0], style.distractor_drawings[1], endpoint=True))
        chosen: list[Item] = []
        for _ in range(20 * k if others else 0):  # rejection: a pool may be large, and most draws are fine
            if len(chosen) == k:
                break
            d = others[int(rng.integers(len(others)))]
            if d.id not in ids and d.label not in labels and all(d is not c for c in chosen):
                chosen.append(d)
        pages.append(compose_page(rng, marks, chosen, style, f"page-{i:04d}.png"))
    return pages


# ------------------------------------------------------------------------------------------------ files
def _check_name(name: str) -> None:
    if not name or Path(name).name != name or name in (".", "..") or "\\" in name:
        raise ValueError(f"page name must be a plain file name (no folders), got {name!r}")


def write_pages(pages: Sequence[ComposedPage], folder: str | Path) -> Path:
    """Save each page as ``folder/<name>`` (PNG) and then their truth as ``folder/truth.json`` (see the module
    docstring); every file is written to a temporary file and renamed, so ``truth.json`` never names a page that
    is missing or half-written. Returns the folder. ValueError on a duplicate or non-plain page name."""
    folder = Path(folder)
    names = [p.name for p in pages]
    for n in names:
        _check_name(n)
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise ValueError(f"pages: two pages are named {dup!r}")
    folder.mkdir(parents=True, exist_ok=True)
    for p in pages:
        buf = io.BytesIO()
        Image.fromarray(p.image).save(buf, format="PNG")
        atomic_write_bytes(folder / p.name, buf.getvalue())
    truth = {"format": TRUTH_FORMAT, "version": TRUTH_VERSION, "pages": [p.record() for p in pages]}
    atomic_write_text(folder / TRUTH_FILE, json.dumps(truth, indent=1) + "\n")
    return folder


def _int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def read_truth(folder: str | Path) -> list[dict[str, Any]]:
    """The page records of ``folder/truth.json`` (or of that file given directly), checked:
    ``[{"file", "width", "height", "marks": [{"box": [x0, y0, x1, y1], "label", "item_id", "source"}]}]``.

    FormatError(file, record, reason) names the record (``pages[3].marks[0].box``) of anything malformed: not
    JSON, another format or version, a missing or mistyped field, a box not inside its page, a file name that is
    not a plain file name.
    """
    path = Path(folder)
    if path.is_dir() or not path.suffix:
        path = path / TRUTH_FILE
    if not path.is_file():
        raise FormatError(path, None, f"no such file (a folder of pages holds a {TRUTH_FILE} made by write_pages)")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise FormatError(path, None, f"not JSON: {e}") from e
    if not isinstance(doc, dict) or doc.get("format") != TRUTH_FORMAT:
        raise FormatError(path, None, f'expected a JSON object with "format": "{TRUTH_FORMAT}"')
    if doc.get("version") != TRUTH_VERSION:
        raise FormatError(path, "version", f"version {doc.get('version')!r}; this reader knows {TRUTH_VERSION}")
    pages = doc.get("pages")
    if not isinstance(pages, list):
        raise FormatError(path, "pages", "expected a list of page records")
    out: list[dict[str, Any]] = []
    for i, pg in enumerate(pages):
        where = f"pages[{i}]"
        if not isinstance(pg, dict):
            raise FormatError(path, where, "expected an object with file, width, height, marks")
        f = pg.get("file")
        if not isinstance(f, str) or not f or Path(f).name != f or f in (".", "..") or "\\" in f:
            raise FormatError(path, f"{where}.file", f"expected a plain file name, got {f!r}")
        w, h = pg.get("width"), pg.get("height")
        for key, v in (("width", w), ("height", h)):
            if not _int(v) or v < 1:  # type: ignore[operator]
                raise FormatError(path, f"{where}.{key}", f"expected a positive int, got {v!r}")
        marks = pg.get("marks")
        if not isinstance(marks, list):
            raise FormatError(path, f"{where}.marks", "expected a list of marks")
        recs = []
        for j, m in enumerate(marks):
            mw = f"{where}.marks[{j}]"
            if not isinstance(m, dict):
                raise FormatError(path, mw, "expected an object with box, label, item_id, source")
            box = m.get("box")
            if not (isinstance(box, list) and len(box) == 4 and all(_int(v) for v in box)):
                raise FormatError(path, f"{mw}.box", f"expected [x0, y0, x1, y1] ints, got {box!r}")
            x0, y0, x1, y1 = box
            if not (0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h):  # type: ignore[operator]
                raise FormatError(path, f"{mw}.box", f"{box} is not a box inside the {w} x {h} page (x1, y1 exclusive)")
            for key, ok, want in (
                ("label", lambda v: v is None or isinstance(v, str), "a string or null"),
                ("item_id", lambda v: v is None or isinstance(v, str) or _int(v), "a string, an int or null"),
                ("source", lambda v: v is None or isinstance(v, str), "a string or null"),
            ):
                if key not in m or not ok(m[key]):
                    raise FormatError(path, f"{mw}.{key}", f"expected {want}, got {m.get(key, '<missing>')!r}")
            recs.append({"box": list(box), "label": m["label"], "item_id": m["item_id"], "source": m["source"]})
        out.append({"file": f, "width": w, "height": h, "marks": recs})
    return out
