"""Rasterisation: Sketch -> float32 (H, W) in [0, 1], ink = 1 on background 0 (sketch-GAN's convention).

Antialiasing by supersampling: Pillow draws the polylines (C code) on a canvas ``supersample`` times
larger, and a box filter reduces it. Pillow has no antialiased wide-line primitive, and skia/cairo would
be an extra native dependency for the same result.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
from PIL import Image, ImageDraw

from ..errors import InvalidSketchError
from .sketch import Sketch

__all__ = ["image_ink", "image_to_raster", "rasterize", "rasterize_batch"]


def rasterize(
    sketch: Sketch,
    size: int = 64,
    line_width: float = 1.5,
    margin: float = 0.08,
    supersample: int = 4,
    keep_aspect: bool = True,
) -> np.ndarray:
    """Render ``sketch`` centred in a ``size`` x ``size`` canvas with a ``margin`` (fraction of the size).

    ``line_width`` is in output pixels. The drawing is scaled to fit, aspect ratio kept.
    Returns float32 (size, size), ink = 1.
    """
    if size < 2:
        raise InvalidSketchError(f"size must be >= 2, got {size}", "size")
    sketch.validate()
    S = size * supersample
    inner = S * (1.0 - 2.0 * margin)
    norm = sketch.normalise(inner, keep_aspect=keep_aspect)
    off = S * margin
    img = Image.new("L", (S, S), 0)
    draw = ImageDraw.Draw(img)
    w = max(1, int(round(line_width * supersample)))
    r = w / 2.0
    for s in norm.strokes:
        pts = [(float(x) + off, float(y) + off) for x, y in s]
        if len(pts) == 1:
            x, y = pts[0]
            draw.ellipse([x - r, y - r, x + r, y + r], fill=255)
        else:
            draw.line(pts, fill=255, width=w, joint="curve")
            if w > 2:  # round caps
                for x, y in (pts[0], pts[-1]):
                    draw.ellipse([x - r, y - r, x + r, y + r], fill=255)
    if supersample > 1:
        img = img.reduce(supersample)  # box filter: exact area coverage
    return np.asarray(img, dtype=np.float32) / 255.0


def rasterize_batch(
    sketches: Sequence[Sketch] | Iterable[Sketch], size: int = 64, line_width: float = 1.5, **kw: object
) -> np.ndarray:
    """Render many sketches to float32 (N, size, size)."""
    rows = [rasterize(s, size=size, line_width=line_width, **kw) for s in sketches]  # type: ignore[arg-type]
    if not rows:
        return np.zeros((0, size, size), dtype=np.float32)
    return np.stack(rows)


def image_ink(img: Image.Image, invert: bool | None = None) -> np.ndarray:
    """The ink of a drawing given as an image: float32 (H, W) in [0, 1], ink = 1, at the image's own size.

    ``invert=None`` decides the polarity from the border: an image whose border is mostly light is
    dark ink on light paper (Omniglot, scans) and is inverted; a dark border means light ink (QuickDraw
    bitmaps). InvalidSketchError when the image has no contrast (blank, or all one colour)."""
    g = np.asarray(img.convert("L"), dtype=np.float32) / 255.0
    if invert is None:
        border = np.concatenate([g[0], g[-1], g[:, 0], g[:, -1]])
        invert = bool(border.mean() > 0.5)
    ink = 1.0 - g if invert else g
    if float(ink.max() - ink.min()) < 0.1:  # no contrast: blank, or one uniform colour
        raise InvalidSketchError("the image has no ink: it is blank (or all one colour)", "image")
    return ink


def image_to_raster(img: Image.Image, size: int = 64, invert: bool | None = None, fit: bool = True) -> np.ndarray:
    """A drawing given as an image -> float32 (size, size), ink = 1.

    ``invert``: the polarity, as :func:`image_ink` decides it when None.
    With ``fit`` the ink's bounding box is cropped and centred like :func:`rasterize` does for strokes,
    so a scanned or uploaded drawing meets the encoder in the same frame as a stroke query.
    """
    ink = image_ink(img, invert)
    if fit:
        ys, xs = np.nonzero(ink > 0.1)
        if len(xs):
            x0, x1, y0, y1 = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1
            side = max(x1 - x0, y1 - y0)
            pad = int(round(side * 0.08 / 0.84))
            canvas = np.zeros((side + 2 * pad, side + 2 * pad), dtype=np.float32)
            oy = pad + (side - (y1 - y0)) // 2
            ox = pad + (side - (x1 - x0)) // 2
            canvas[oy : oy + y1 - y0, ox : ox + x1 - x0] = ink[y0:y1, x0:x1]
            ink = canvas
    out = Image.fromarray((np.clip(ink, 0, 1) * 255).astype(np.uint8)).resize((size, size), Image.BOX)
    return np.asarray(out, dtype=np.float32) / 255.0
