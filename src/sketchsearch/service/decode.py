"""Turning what a client sends into a query: a JSON search body into a request (and its drawing, as a
:class:`Sketch`), an uploaded PNG/JPEG into an upright RGB image, a multipart form field into an integer.

All of it is bounded by :class:`~sketchsearch.service.limits.Limits` before the work it guards, and all
of it runs off the event loop (the routes call it through ``run_in_threadpool``). A bad input raises a
4xx naming the field: ``HTTPException`` with a ``detail``, ``RequestValidationError`` for schema errors,
or :class:`~sketchsearch.errors.InvalidSketchError` for a drawing (answered by the app's error handler).
"""

from __future__ import annotations

import io
import json
import re
import warnings
from typing import Any

from fastapi.exceptions import RequestValidationError
from PIL import Image, ImageOps, UnidentifiedImageError
from pydantic import ValidationError
from starlette.exceptions import HTTPException

from ..data.sketch import Sketch
from ..data.strokes import parse_strokes
from .limits import Limits, check_image_size, check_k
from .schemas import SearchRequest

__all__ = ["form_int", "parse_search_request", "read_image"]

_CHOOSE = "choose a drawing saved as PNG or JPEG"


def parse_search_request(body: bytes, limits: Limits) -> tuple[SearchRequest, Sketch | None]:
    """A JSON body -> (request, its drawing; None for a search by item). Bad JSON -> 400; schema errors ->
    ``RequestValidationError`` (answered 422 with every error listed, like FastAPI's own); neither or both
    of ``strokes`` and ``item`` -> 422; k or the drawing over ``limits`` -> 4xx."""
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
    if (req.strokes is None) == (req.item is None):
        raise HTTPException(
            422,
            "strokes: send either strokes (a drawing) or item (the id of an indexed item to search with)"
            + (", not both" if req.item is not None else ""),
        )
    if req.strokes is None:
        return req, None
    sketch = parse_strokes(req.strokes, max_strokes=limits.max_strokes, max_points=limits.max_points, field="strokes")
    return req, sketch


def read_image(data: bytes, limits: Limits) -> Image.Image:
    """An uploaded PNG/JPEG -> upright RGB (or L) on white. The size is checked from the header, before
    any pixel is decoded; Pillow's decompression-bomb warning is an error here, not a log line."""
    if not data:
        raise HTTPException(422, f"image: the file is empty: {_CHOOSE}")
    try:
        # Image.open reads only the header: the size is known before any pixel is decoded.
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data), formats=["PNG", "JPEG"])
        w, h = img.size
        check_image_size(w, h, limits)
        if w < 1 or h < 1:
            raise HTTPException(422, f"image: {w}x{h} has no pixels: {_CHOOSE}")
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img.load()
        return _flatten_image(img)
    except HTTPException:
        raise
    # Pillow's messages name its in-memory file (``<_io.BytesIO object at 0x...>``): not repeated here.
    except UnidentifiedImageError as e:
        raise HTTPException(422, f"image: that file is not a PNG or JPEG image: {_CHOOSE}") from e
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:  # Pillow's own header check
        raise HTTPException(413, "image: too large to decode safely: scale the picture down and choose it again") from e
    except (OSError, ValueError, SyntaxError) as e:  # truncated / corrupt files
        raise HTTPException(
            422, f"image: the file is damaged (cut short or corrupt): save the drawing again, or {_CHOOSE}"
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
