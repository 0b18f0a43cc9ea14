"""The REST API (an :class:`APIRouter`); every search goes through :meth:`Retriever.search`.

* ``POST /api/search`` — a query as strokes (JSON ``{"collection", "k", "strokes": [[{x, y, t}, ...], ...]}``)
  or as an uploaded PNG/JPEG (``multipart/form-data`` with fields ``image``, ``k``, ``collection``).
  Answers the ranked hits (id, rank, label, distance, thumbnail URL) and the time the search took.
* ``GET /api/items/{id}/thumbnail?collection=NAME`` — a PNG from the index's own item store only:
  the id is an integer (validated), never a path, so nothing a client sends reaches the file system.
* ``GET /api/collections``, ``GET /api/health``.

The routes read the served collections and the limits from :class:`~sketchsearch.service.state.ServiceState`
through ``Depends(get_state)``. CPU work (parsing, decoding, searching) runs off the event loop.
"""

from __future__ import annotations

import time
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Depends, Query, Request
from fastapi import Path as PathParam
from fastapi.responses import JSONResponse, Response
from PIL import Image
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from .. import __version__
from ..data.sketch import Sketch
from ..errors import IndexError_
from .decode import form_int, parse_strokes_request, read_image
from .limits import MAX_ID, check_k
from .schemas import CollectionInfo, ErrorOut, Health, HitOut, SearchResponse
from .state import ServedCollection, ServiceState, get_state

__all__ = ["router"]

router = APIRouter()
State = Annotated[ServiceState, Depends(get_state)]

# The body is read by hand (JSON strokes or a multipart image on one route), so it is described here;
# the app adds SearchRequest's schema to the OpenAPI components.
_SEARCH_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/SearchRequest"}},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["image"],
                    "properties": {
                        "image": {"type": "string", "format": "binary", "description": "PNG or JPEG"},
                        "k": {"type": "integer", "default": 10, "minimum": 1},
                        "collection": {"type": "string"},
                    },
                }
            },
        },
    }
}


@router.post(
    "/api/search",
    response_model=SearchResponse,
    summary="Search a collection by strokes (JSON) or by an uploaded PNG/JPEG drawing (multipart)",
    responses={404: {"model": ErrorOut}, 409: {"model": ErrorOut}, 415: {"model": ErrorOut}},
    openapi_extra=_SEARCH_BODY,
)
async def search(request: Request, state: State) -> JSONResponse:
    limits = state.limits
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype == "application/json":
        body = await request.body()
        # parsing and validating up to max_points points is CPU work: off the event loop, so that one
        # large request does not stall every other client (and /api/health)
        req, sketch = await run_in_threadpool(parse_strokes_request, body, limits)
        col = state.pick(req.collection)
        return await _search_response(
            col, sketch, req.k, {"strokes": len(sketch.strokes), "points": sketch.n_points}
        )
    if ctype == "multipart/form-data":
        async with request.form(max_files=1, max_fields=8) as form:
            upload = form.get("image")
            if upload is None or isinstance(upload, str):
                raise HTTPException(
                    422, "image: send the drawing as a file field named 'image' (PNG or JPEG)"
                )
            k = form_int(form.get("k"), "k", default=10)
            if k < 1:
                raise HTTPException(422, f"k: must be >= 1, got {k}")
            check_k(k, limits)
            cname = form.get("collection")
            col = state.pick(cname if isinstance(cname, str) and cname else None)
            data = await upload.read()
        if "points" in col.retriever.method.preprocessing.inputs:
            raise HTTPException(
                422,
                f"image: collection {col.name!r}'s model reads stroke order; search it with strokes, not an image",
            )
        img = await run_in_threadpool(read_image, data, limits)  # decoding is CPU work: off the event loop
        return await _search_response(col, img, k, {"width": img.size[0], "height": img.size[1]})
    raise HTTPException(
        415,
        f"Content-Type {ctype or '(none)'!r} not supported: send application/json (strokes) or multipart/form-data (image)",
    )


@router.get(
    "/api/items/{item_id}/thumbnail",
    response_class=Response,
    summary="The item's thumbnail (PNG) from the collection's own item store",
    responses={200: {"content": {"image/png": {}}}, 404: {"model": ErrorOut}},
)
def thumbnail(
    state: State,
    item_id: int = PathParam(ge=0, le=MAX_ID, description="the item's integer id"),
    collection: str | None = Query(default=None, max_length=64),
) -> Response:
    col = state.pick(collection)
    png = col.retriever.thumbnail(item_id)  # read-only: a dict lookup, or the store (which has its own lock)
    if png is None:
        raise HTTPException(404, f"item {item_id} has no thumbnail in collection {col.name!r}")
    return Response(
        png,
        media_type="image/png",
        headers={"Cache-Control": "public, max-age=3600", "X-Content-Type-Options": "nosniff"},
    )


@router.get("/api/collections", response_model=list[CollectionInfo], summary="The collections served")
def list_collections(state: State) -> list[CollectionInfo]:
    out = []
    for c in state.collections.values():
        r = c.retriever
        inputs = list(r.method.preprocessing.inputs)
        out.append(
            CollectionInfo(
                name=c.name,
                items=len(r),
                model_id=r.model_id,
                method=r.method.name,
                metric=c.metric,
                code_size=r.method.code_size,
                inputs=inputs,
                accepts_images="points" not in inputs,
            )
        )
    return out


@router.get("/api/health", response_model=Health, summary="Liveness and what is loaded")
def health(state: State) -> Health:
    return Health(
        status="ok",
        version=__version__,
        collections=len(state.collections),
        items=sum(len(c.retriever) for c in state.collections.values()),
    )


def _run_search(col: ServedCollection, query: Sketch | Image.Image, k: int) -> tuple[list[Any], float]:
    """Search under the collection's lock; the hits and the ms the search took."""
    with col.lock:
        t0 = time.perf_counter()
        hits = col.retriever.search(query, k=k)
        return hits, (time.perf_counter() - t0) * 1000.0


async def _search_response(
    col: ServedCollection, query: Sketch | Image.Image, k: int, qinfo: dict[str, int]
) -> JSONResponse:
    """Run the search in the thread pool and answer it as a :class:`SearchResponse` with Server-Timing."""
    try:
        hits, took = await run_in_threadpool(_run_search, col, query, k)
    except IndexError_ as e:
        raise HTTPException(409, f"collection {col.name!r}: {e}") from e
    code_size = col.retriever.method.code_size
    out = SearchResponse(
        collection=col.name,
        k=k,
        metric=col.metric,
        took_ms=round(took, 3),
        query=qinfo,
        hits=[
            HitOut(
                id=h.id,
                rank=h.rank,
                label=h.label,
                distance=float(h.distance),
                similarity=(1.0 - float(h.distance) / code_size)
                if col.metric == "hamming"
                else 1.0 - float(h.distance),
                thumbnail_url=f"/api/items/{h.id}/thumbnail?collection={quote(col.name)}",
            )
            for h in hits
        ],
    )
    return JSONResponse(out.model_dump(), headers={"Server-Timing": f"search;dur={took:.2f}"})
