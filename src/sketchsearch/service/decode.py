"""Turning what a client sends into a query: a JSON strokes body into a :class:`Sketch`, an uploaded
PNG/JPEG into an upright RGB image, a multipart form field into an integer.

All of it is bounded by :class:`~sketchsearch.service.limits.Limits` before the work it guards, and all
of it runs off the event loop (the routes call it through ``run_in_threadpool``). A bad input raises a
4xx naming the field: ``HTTPException`` with a ``detail``, or ``RequestValidationError`` for schema errors.
"""

from __future__ import annotations

import io
import json
import re
import warnings
from typing import Any

import numpy as np
from fastapi.exceptions import RequestValidationError
from PIL import Image, ImageOps, UnidentifiedImageError
from pydantic import ValidationError
from starlette.exceptions import HTTPException

from ..data.sketch import Sketch
from .limits import MAX_COORD, Limits, check_image_size, check_k, check_stroke_counts
from .schemas import SearchRequest, StrokePoint

__all__ = ["form_int", "parse_strokes_request", "read_image", "to_sketch"]


def parse_strokes_request(body: bytes, limits: Limits) -> tuple[SearchRequest, Sketch]:
    """A JSON body -> (request, sketch). Bad JSON -> 400; schema errors -> ``RequestValidationError``
    (answered 422 with every error listed, like FastAPI's own); k or the sketch over ``limits`` -> 4xx."""
    try:
        raw = json.loads(body)
    # ValueError covers JSONDecodeError, UnicodeDecodeError and an integer past Python's digit limit;
    # RecursionError: arrays/objects nested deeper than the interpreter's stack allows
    except (ValueError, RecursionError) as e:
        raise HTTPException(400, f"body: not valid JSON ({type(e).__name__}: {e})") from e
    try:
        req = SearchRequest.model_validate(raw)
    except ValidationError as e:
        errs = e.errors(include_url=False, include_context=False, include_input=False)
        raise RequestValidationError(errs) from e
    check_k(req.k, limits)
    return req, to_sketch(req.strokes, limits)


def to_sketch(strokes: list[list[StrokePoint]], limits: Limits) -> Sketch:
    """Validated points -> :class:`Sketch` (float32 coordinates; times kept only when every point has one)."""
    n = sum(len(s) for s in strokes)
    check_stroke_counts(len(strokes), n, limits)
    if n == 0:
        raise HTTPException(422, "strokes: the sketch has no points (draw something first)")
    xy64 = [np.array([(p.x, p.y) for p in s], dtype=np.float64).reshape(-1, 2) for s in strokes]
    if any(len(a) and float(np.abs(a).max()) > MAX_COORD for a in xy64):
        raise HTTPException(
            422, f"strokes: coordinates must fit in 32-bit floats (|x|, |y| <= {MAX_COORD:g})"
        )
    xy = [a.astype(np.float32) for a in xy64]
    has_t = all(p.t is not None for s in strokes for p in s)
    times = [np.array([p.t for p in s], dtype=np.float64) for s in strokes] if has_t else None
    return Sketch(xy, times)


def read_image(data: bytes, limits: Limits) -> Image.Image:
    """An uploaded PNG/JPEG -> upright RGB (or L) on white. The size is checked from the header, before
    any pixel is decoded; Pillow's decompression-bomb warning is an error here, not a log line."""
    if not data:
        raise HTTPException(422, "image: the uploaded file is empty")
    try:
        # Image.open reads only the header: the size is known before any pixel is decoded.
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data), formats=["PNG", "JPEG"])
        w, h = img.size
        check_image_size(w, h, limits)
        if w < 1 or h < 1:
            raise HTTPException(422, f"image: {w}x{h} has no pixels")
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img.load()
        return _flatten_image(img)
    except HTTPException:
        raise
    except UnidentifiedImageError as e:
        raise HTTPException(422, f"image: not a readable PNG or JPEG ({e})") from e
    except (
        Image.DecompressionBombError,
        Image.DecompressionBombWarning,
    ) as e:  # Pillow's own header check
        raise HTTPException(413, f"image: too large to decode safely ({e})") from e
    except (OSError, ValueError, SyntaxError) as e:  # truncated / corrupt files
        raise HTTPException(
            422, f"image: the file is damaged or not a PNG/JPEG ({type(e).__name__}: {e})"
        ) from e


def _flatten_image(img: Image.Image) -> Image.Image:
    """Upright RGB on white: EXIF rotation applied (phone photos), transparency composited on white (a canvas
    exported as PNG is dark ink on transparent black, which would otherwise read as an all-dark image)."""
    img = ImageOps.exif_transpose(img) or img
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img.convert("RGB") if img.mode not in ("RGB", "L") else img


def form_int(value: Any, field: str, default: int) -> int:
    """A multipart form field -> int (``default`` when absent or empty); anything else -> 422 naming ``field``."""
    if value is None or value == "":
        return default
    if not isinstance(value, str) or not re.fullmatch(r"\s*[+-]?\d{1,9}\s*", value):
        raise HTTPException(422, f"{field}: expected an integer, got {str(value)[:40]!r}")
    return int(value)
