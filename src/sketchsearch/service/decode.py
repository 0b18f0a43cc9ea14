"""Turning what a client sends into a query: a JSON search body into a request (and its drawing, as a
:class:`Sketch`), an uploaded PNG/JPEG into an upright RGB image, a multipart form field into an integer.

All of it is bounded by :class:`~sketchsearch.service.limits.Limits` before the work it guards, and all
of it runs off the event loop (the routes call it through ``run_in_threadpool``). A bad input raises a
4xx naming the field: ``HTTPException`` with a ``detail``, ``RequestValidationError`` for schema errors,
or :class:`~sketchsearch.errors.InvalidSketchError` for a drawing (answered by the app's error handler).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import os
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from fastapi.exceptions import RequestValidationError
from PIL import Image
from pydantic import ValidationError
from starlette.exceptions import HTTPException

from ..data.formats.base import MiB, ReadLimits
from ..data.formats.images import ImageDecodeError, open_image
from ..data.sketch import Sketch
from ..data.strokes import parse_strokes
from .limits import Limits, check_image_size, check_k
from .schemas import SearchRequest

__all__ = [
    "DECODE_BUDGET_BYTES",
    "DECODE_SLOTS",
    "DECODE_WAIT_S",
    "decode_slots",
    "form_bool",
    "form_int",
    "on_decode_thread",
    "parse_search_request",
    "read_image",
    "set_decode_slots",
]

_CHOOSE = "choose a drawing saved as PNG or JPEG"

#: At most this many uploads are decoded at once (``$SKETCHSEARCH_DECODE_SLOTS``, default 2; ``serve
#: --decode-slots``; see :func:`set_decode_slots`): 16 concurrent uploads hold at most this many decode
#: buffers, the others wait.
DECODE_SLOTS = int(os.environ.get("SKETCHSEARCH_DECODE_SLOTS", "2"))
#: How long an upload waits for a decode slot before it is answered 503.
DECODE_WAIT_S = 30.0
#: One upload's decode budget: width x height x bytes per pixel of its mode (16-bit and alpha counted), from
#: the header. 64 MiB is a 16-Mpx (the pixel limit) 8-bit RGBA image; the same size in 16-bit RGBA is refused.
DECODE_BUDGET_BYTES = 64 * MiB


def _trimmer() -> Any:
    """glibc's ``malloc_trim`` (None elsewhere). Written by hand because no library exposes it: Pillow's
    decode buffers come from the C heap, and glibc keeps freed heap memory in the arena of the thread that
    freed it, so without a trim each decode thread's arena stays at its largest decode."""
    name = ctypes.util.find_library("c")
    try:
        return getattr(ctypes.CDLL(name), "malloc_trim", None) if name else None
    except OSError:
        return None


_malloc_trim = _trimmer()


class _Decoder:
    """``n`` slots and a pool of exactly ``n`` threads that do every decode. The semaphore bounds how many
    decodes run at once; the pool bounds *which threads* run them. Decoding on whichever of the server's
    ~40 worker threads took the request let every one of their glibc arenas grow to one decode buffer
    (16 uploads of a 4000x4000 RGBA PNG with 2 slots: +964 MB); on ``n`` threads, trimmed after each decode,
    the server holds about ``n`` buffers at the peak and gives them back afterwards (see
    ``benchmarks/bench_memory_server.py``)."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.slots = threading.BoundedSemaphore(n)
        self.pool = ThreadPoolExecutor(max_workers=n, thread_name_prefix="sketchsearch-decode")

    def run(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """``fn(*args, **kwargs)`` on a decode thread, after waiting up to :data:`DECODE_WAIT_S` for a slot."""
        if not self.slots.acquire(timeout=DECODE_WAIT_S):
            raise HTTPException(503, "image: the server is decoding other pictures; try again in a moment")
        try:
            return self.pool.submit(_trimmed, fn, *args, **kwargs).result()
        finally:
            self.slots.release()


def _trimmed(fn: Any, *args: Any, **kwargs: Any) -> Any:
    try:
        return fn(*args, **kwargs)
    finally:
        if _malloc_trim is not None:
            _malloc_trim(0)


_decoder = _Decoder(max(1, DECODE_SLOTS))


def on_decode_thread(fn: Any, *args: Any, **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)`` on one of the decode threads, in a decode slot (503 after waiting
    :data:`DECODE_WAIT_S`): for the work that follows a decode and holds image-sized buffers."""
    return _decoder.run(fn, *args, **kwargs)


def decode_slots() -> int:
    """How many uploads may be decoded at once."""
    return _decoder.n


def set_decode_slots(n: int) -> None:
    """Allow ``n`` (>= 1) concurrent decodes from now on (decodes already running finish on the old pool)."""
    global _decoder
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"decode slots must be an int >= 1, got {n!r}")
    old, _decoder = _decoder, _Decoder(n)
    old.pool.shutdown(wait=False)


def parse_search_request(body: bytes, limits: Limits) -> tuple[SearchRequest, Sketch | None]:
    """A JSON body -> (request, its drawing; None for a search by item), read as a
    :class:`~.schemas.SearchRequest` (its ``by_page``, an option of page collections, is checked by the route
    against the collection searched). Bad JSON -> 400; schema errors ->
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
    """An uploaded PNG/JPEG -> upright RGB (or L) on white, decoded by the data layer's one image decoder
    (:func:`~sketchsearch.data.formats.images.open_image`, the same as the CLI's), so a file gives the same
    pixels, and the same distances, here and there. The size is checked from the header against ``limits``
    and the decode budget (:data:`DECODE_BUDGET_BYTES`) before any pixel is decoded, and at most
    :func:`decode_slots` decodes run at once (the others wait up to :data:`DECODE_WAIT_S`, then get 503)."""
    if not data:
        raise HTTPException(422, f"image: the file is empty: {_CHOOSE}")
    read_limits = ReadLimits(max_pixels=limits.max_image_pixels, max_decode_bytes=DECODE_BUDGET_BYTES)

    def check_size(w: int, h: int) -> None:
        check_image_size(w, h, limits)
        if w < 1 or h < 1:
            raise HTTPException(422, f"image: {w}x{h} has no pixels: {_CHOOSE}")

    try:
        arr = _decoder.run(
            open_image, data, name="image", limits=read_limits, formats=("PNG", "JPEG"), check_size=check_size
        )
    except ImageDecodeError as e:
        # Pillow's messages name its in-memory file (``<_io.BytesIO object at 0x...>``): not repeated here.
        if e.kind == "not_an_image":
            raise HTTPException(422, f"image: that file is not a PNG or JPEG image: {_CHOOSE}") from e
        if e.kind == "over_budget":
            raise HTTPException(
                413, f"image: too large to decode safely ({e.reason}): scale the picture down and choose it again"
            ) from e
        if e.kind == "too_large":
            raise HTTPException(
                413, "image: too large to decode safely: scale the picture down and choose it again"
            ) from e
        raise HTTPException(
            422, f"image: the file is damaged (cut short or corrupt): save the drawing again, or {_CHOOSE}"
        ) from e
    return Image.fromarray(arr)


def form_int(value: Any, field: str, default: int) -> int:
    """A multipart form field -> int (``default`` when absent or empty); anything else -> 422 naming ``field``."""
    if value is None or value == "":
        return default
    if not isinstance(value, str) or not re.fullmatch(r"\s*[+-]?\d{1,9}\s*", value):
        raise HTTPException(422, f"{field}: expected an integer, got {str(value)[:40]!r}")
    return int(value)


_TRUE, _FALSE = ("true", "1", "on", "yes"), ("false", "0", "off", "no")


def form_bool(value: Any, field: str, default: bool) -> bool:
    """A multipart form field -> bool (``default`` when absent or empty): true/false, 1/0, on/off, yes/no in any
    case; anything else -> 422 naming ``field``."""
    if value is None or value == "":
        return default
    text = value.strip().lower() if isinstance(value, str) else None
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise HTTPException(422, f"{field}: expected true or false, got {str(value)[:40]!r}")
