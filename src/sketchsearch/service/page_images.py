"""A page collection's pictures (:mod:`sketchsearch.pages`): each page's preview, and a box's region of it.

* ``GET /api/collections/{name}/pages/{page}`` — the page's preview, a JPEG stored in the index's page table
  (at most :data:`~sketchsearch.pages.store.PREVIEW_SIDE` pixels a side); ``?size=N``: scaled down to at most
  ``N`` pixels a side (a thumbnail).
* ``GET /api/collections/{name}/pages/{page}/crop?box=x0,y0,x1,y1`` — the box (page pixels, as a page hit gives
  it) with a margin of ``margin`` times its longer side, cut from the preview and scaled so that its longer
  side is ``size`` pixels (enlarged, for a small mark), as a PNG.

Both read the index's own page table only: the page is an integer and the box four integers checked against
the page's size (a 422 naming ``box`` otherwise), so nothing a client sends reaches the file system. An item
collection has no pages (404), nor has a page id its index does not hold (404 naming the page). Decoding and
scaling a preview run on the decode threads (:func:`~.decode.on_decode_thread`), bounded as uploads are.
"""

from __future__ import annotations

import io
import math
import re
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query
from fastapi import Path as PathParam
from fastapi.responses import Response
from PIL import Image
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from ..pages import PageIndex
from ..pages.store import PREVIEW_SIDE
from .decode import on_decode_thread
from .limits import MAX_ID
from .schemas import ErrorOut
from .state import ServiceState, get_state

__all__ = ["crop_png", "parse_box", "router", "scaled_jpeg"]

router = APIRouter()
State = Annotated[ServiceState, Depends(get_state)]

_CACHE = {"Cache-Control": "public, max-age=3600", "X-Content-Type-Options": "nosniff"}
_INT = r"\s*([+-]?\d{1,9})\s*"
_BOX_RE = re.compile(",".join([_INT] * 4))

Name = Annotated[str, PathParam(max_length=64, description="the collection's name (a page collection)")]
PageId = Annotated[int, PathParam(ge=0, le=MAX_ID, description="the page's id (a page hit's `page`)")]


def parse_box(text: str, page: int, width: int, height: int) -> tuple[int, int, int, int]:
    """``x0,y0,x1,y1`` -> four ints inside a ``width`` x ``height`` page (``x0 < x1 <= width``, ``y0 < y1 <=
    height``, none negative); 422 naming ``box`` and what was expected otherwise."""
    m = _BOX_RE.fullmatch(text)
    if m is None:
        raise HTTPException(422, f"box: expected four integers x0,y0,x1,y1 (page pixels), got {text[:60]!r}")
    x0, y0, x1, y1 = (int(v) for v in m.groups())
    if not (0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height):
        raise HTTPException(
            422,
            f"box: {x0},{y0},{x1},{y1} must lie inside page {page} ({width} x {height} pixels) with x0 < x1 and "
            "y0 < y1",
        )
    return x0, y0, x1, y1


def scaled_jpeg(data: bytes, size: int) -> bytes:
    """A JPEG scaled down to at most ``size`` pixels a side (unchanged when it already fits)."""
    img = Image.open(io.BytesIO(data))
    if max(img.size) <= size:
        return data
    img.draft("RGB", (size, size))  # JPEG: decoded at 1/2, 1/4 or 1/8 scale where that still covers size
    img = img.convert("RGB")
    img.thumbnail((size, size), Image.LANCZOS)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=85)
    return buf.getvalue()


def crop_png(
    preview: bytes, page_size: tuple[int, int], box: tuple[int, int, int, int], margin: float, size: int
) -> bytes:
    """The region of ``box`` (in a ``page_size`` = (width, height) page's pixels) plus ``margin`` times its
    longer side around it, clipped to the page, cut from the page's ``preview`` (a scaled copy) and scaled so
    that its longer side is ``size`` pixels; as a PNG."""
    img = Image.open(io.BytesIO(preview)).convert("RGB")
    sx, sy = img.width / page_size[0], img.height / page_size[1]
    x0, y0, x1, y1 = box
    pad = margin * max(x1 - x0, y1 - y0)
    left, top = max(0, math.floor((x0 - pad) * sx)), max(0, math.floor((y0 - pad) * sy))
    right = min(img.width, max(left + 1, math.ceil((x1 + pad) * sx)))
    bottom = min(img.height, max(top + 1, math.ceil((y1 + pad) * sy)))
    region = img.crop((left, top, right, bottom))
    scale = size / max(region.size)
    region = region.resize((max(1, round(region.width * scale)), max(1, round(region.height * scale))), Image.LANCZOS)
    buf = io.BytesIO()
    region.save(buf, format="PNG")
    return buf.getvalue()


def _page(pages: PageIndex, page: int, name: str) -> tuple[dict[str, Any], bytes]:
    """The page's row and preview; 404 naming the page when the collection has no such page (or no preview)."""
    row = pages.page(page)
    data = pages.preview(page) if row is not None else None
    if row is None or data is None:
        n = pages.page_count
        raise HTTPException(
            404,
            f"page: {page} is not a page of collection {name!r} ({n} page{'' if n == 1 else 's'}); "
            "use the page of one of its hits",
        )
    return row, data


@router.get(
    "/api/collections/{name}/pages/{page}",
    response_class=Response,
    summary="A page collection's page: its preview (JPEG), the whole page with no boxes drawn",
    responses={200: {"content": {"image/jpeg": {}}}, 404: {"model": ErrorOut}},
)
async def page_preview(
    state: State,
    name: Name,
    page: PageId,
    size: int | None = Query(
        default=None,
        ge=16,
        le=PREVIEW_SIDE,
        description=f"at most this many pixels a side (a thumbnail); default: the stored preview (up to "
        f"{PREVIEW_SIDE})",
    ),
) -> Response:
    pages = state.pick(name).page_index()
    _, data = await run_in_threadpool(_page, pages, page, name)  # the page table is SQLite: off the event loop
    if size is not None:
        data = await run_in_threadpool(on_decode_thread, scaled_jpeg, data, size)
    return Response(data, media_type="image/jpeg", headers=_CACHE)


@router.get(
    "/api/collections/{name}/pages/{page}/crop",
    response_class=Response,
    summary="A box on a page collection's page: its region of the preview, enlarged (PNG)",
    responses={200: {"content": {"image/png": {}}}, 404: {"model": ErrorOut}},
)
async def page_crop(
    state: State,
    name: Name,
    page: PageId,
    box: str = Query(
        max_length=64,
        description="x0,y0,x1,y1: the box in the page's pixels (a page hit's `box`), inside the page, x0 < x1, y0 < y1",
    ),
    margin: float = Query(default=0.1, ge=0.0, le=1.0, description="paper kept around the box: times its longer side"),
    size: int = Query(default=192, ge=16, le=1024, description="the longer side of the picture, pixels"),
) -> Response:
    pages = state.pick(name).page_index()
    row, data = await run_in_threadpool(_page, pages, page, name)
    xyxy = parse_box(box, page, row["width"], row["height"])
    png = await run_in_threadpool(on_decode_thread, crop_png, data, (row["width"], row["height"]), xyxy, margin, size)
    return Response(png, media_type="image/png", headers=_CACHE)
