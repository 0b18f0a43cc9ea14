"""The REST API (an :class:`APIRouter`); every search goes through :meth:`Retriever.search`.

* ``POST /api/search`` — a query as strokes (JSON ``{"collection", "k", "strokes": [[{x, y, t}, ...], ...]}``,
  or any other form :func:`~sketchsearch.data.strokes.parse_strokes` reads), as an indexed item (JSON
  ``{"collection", "k", "item": id}``: the item's own stored code is the query), or as an uploaded PNG/JPEG
  (``multipart/form-data`` with fields ``image``, ``k``, ``collection``; for a model that reads stroke order the
  picture's strokes are traced from its pixels, :mod:`sketchsearch.data.trace`). Answers the ranked hits (id, rank,
  title, label, source, metadata, distance, thumbnail URL) and the time the search took. A page collection
  (:mod:`sketchsearch.pages`) answers boxes on its pages instead (:class:`~.schemas.PageSearchResponse`: page,
  source, box, page size, distance, preview and crop URLs), and takes ``by_page`` (JSON or form field): the
  best box of each page only.
* ``GET /api/items/{id}/thumbnail?collection=NAME`` — a PNG from the index's own item store only:
  the id is an integer (validated), never a path, so nothing a client sends reaches the file system.
* ``GET /api/collections`` (name, title, description, size, method, kind: items or pages), ``GET /api/health``.
* A page collection's page images: :mod:`.page_images`.

The routes read the served collections and the limits from :class:`~sketchsearch.service.state.ServiceState`
through ``Depends(get_state)``. CPU work (parsing, decoding, searching) runs off the event loop. An item
collection's searches by strokes or by item are encoded and scanned in batches with the searches that arrive
with them (:mod:`.batching`; the answer's ``Server-Timing`` header gives the batch's size as
``batch;desc="N"``); uploaded images and page collections are searched one by one.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import PurePosixPath
from typing import Annotated, Any
from urllib.parse import quote

import numpy as np
from fastapi import APIRouter, Depends, Query, Request
from fastapi import Path as PathParam
from fastapi.responses import Response
from PIL import Image
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from .. import __version__
from ..data.sketch import Sketch
from ..errors import IndexError_
from ..pages import PageHit
from ..retrieval import Hit
from .decode import form_bool, form_int, on_decode_thread, parse_search_request, read_image
from .limits import MAX_ID, check_json_values, check_k, read_body
from .schemas import (
    CollectionInfo,
    ErrorOut,
    Health,
    HitOut,
    PageHitOut,
    PageSearchResponse,
    PageSize,
    SearchResponse,
)
from .state import ServedCollection, ServiceState, get_state

__all__ = ["router"]

router = APIRouter()
State = Annotated[ServiceState, Depends(get_state)]

# The body is read by hand (JSON strokes or a multipart image on one route), so it is described here;
# the app adds the request models' schemas to the OpenAPI components.
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
                        "by_page": {
                            "type": "boolean",
                            "default": False,
                            "description": "page collections only: the best box of each page (true/false)",
                        },
                    },
                }
            },
        },
    }
}


@router.post(
    "/api/search",
    response_model=SearchResponse | PageSearchResponse,
    summary="Search a collection by strokes or by an item of it (JSON), or by an uploaded PNG/JPEG drawing (multipart)",
    description="An item collection answers its items (SearchResponse); a page collection answers boxes on its "
    "pages (PageSearchResponse, `kind: pages`), the best box of each page only with `by_page`.",
    responses={404: {"model": ErrorOut}, 409: {"model": ErrorOut}, 415: {"model": ErrorOut}},
    openapi_extra=_SEARCH_BODY,
)
async def search(request: Request, state: State) -> Response:
    limits = state.limits
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype == "application/json":
        # bounded before parsing: JSON's own cap (below the upload cap) while it streams, then its value count
        body = await read_body(request, min(limits.max_json_bytes, limits.max_body_bytes), "body (JSON)")
        check_json_values(body, limits)
        async with state.large_search_slot(len(body)):
            # parsing and validating up to max_points points is CPU work: off the event loop, so that one
            # large request does not stall every other client (and /api/health); parsing, encoding, the
            # search and the answer's body are one hop to the thread pool (each hop is a thread switch)
            return _json_answer(*await run_in_threadpool(_json_search, state, body))
    if ctype == "multipart/form-data":
        async with request.form(max_files=1, max_fields=8) as form:
            upload = form.get("image")
            if upload is None or isinstance(upload, str):
                raise HTTPException(422, "image: send the drawing as a file field named 'image' (PNG or JPEG)")
            k = form_int(form.get("k"), "k", default=10)
            if k < 1:
                raise HTTPException(422, f"k: must be >= 1, got {k}")
            check_k(k, limits)
            by_page = form_bool(form.get("by_page"), "by_page", default=False)
            cname = form.get("collection")
            col = state.pick(cname if isinstance(cname, str) and cname else None)
            _check_options(col, by_page)
            data = await upload.read()
        img = await run_in_threadpool(read_image, data, limits)  # decoding is CPU work: off the event loop
        # an image query's preparation (up to 1,024 px a side, in float) also runs on the decode threads, so
        # 16 concurrent uploads hold at most decode_slots() of those buffers too
        return await _search_response(
            col, img, k, {"width": img.size[0], "height": img.size[1]}, runner=on_decode_thread, by_page=by_page
        )
    raise HTTPException(
        415,
        f"Content-Type {ctype or '(none)'!r} not supported: "
        "send application/json (strokes) or multipart/form-data (image)",
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
                title=c.title,
                description=c.description,
                items=len(r),
                model_id=r.model_id,
                method=r.method.name,
                metric=c.metric,
                code_size=r.method.code_size,
                inputs=inputs,
                kind=c.kind,
                pages=c.pages.page_count if c.pages is not None else None,
                boxes=len(r) if c.pages is not None else None,
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


Query = Sketch | Image.Image | int
"""A drawing, a picture of one, or the id of an item of the collection."""


def _json_search(state: ServiceState, body: bytes) -> tuple[bytes, float, int | None]:
    """A JSON search body -> (the answer's JSON bytes, ms the search took, its batch's size or None), on a
    worker thread."""
    req, sketch = parse_search_request(body, state.limits)
    col = state.pick(req.collection)
    _check_options(col, req.by_page)
    if sketch is None:  # a search by item: parse_search_request checked that it names one
        assert req.item is not None
        query: Query = req.item
        qinfo = {"item": req.item}
    else:
        query = sketch
        qinfo = {"strokes": len(sketch.strokes), "points": sketch.n_points}
    return _search_body(col, query, req.k, qinfo, req.by_page)


def _check_options(col: ServedCollection, by_page: bool) -> None:
    """422 when a search asks an item collection for what only page collections do."""
    if by_page and col.pages is None:
        raise HTTPException(
            422, f"by_page: collection {col.name!r} holds items, not pages; by_page is for page collections"
        )


def _search_body(
    col: ServedCollection, query: Query, k: int, qinfo: dict[str, int], by_page: bool = False
) -> tuple[bytes, float, int | None]:
    """Search ``col`` (:func:`_run_search`, or :func:`_run_page_search` for a page collection) and answer: the
    JSON bytes, the ms the search took and how many searches were scanned with it (None: not batched). An
    empty index is a 409 naming the collection."""
    try:
        if col.pages is not None:
            page_hits, took = _run_page_search(col, query, k, by_page)
            return _page_answer_body(col, k, by_page, took, qinfo, page_hits), took, None
        hits, rows, took, batch = _run_search(col, query, k)
    except IndexError_ as e:
        raise HTTPException(409, f"collection {col.name!r}: {e}") from e
    return _answer_body(col, k, took, qinfo, hits, rows), took, batch


def _encode(col: ServedCollection, query: Query) -> np.ndarray | None:
    """The query's code (None for an item: its stored code is read under the lock). Encoding (rasterizing,
    the network) touches neither the index nor the item store: done outside the lock, so that one large
    drawing does not hold up every other search of the collection."""
    if isinstance(query, int):
        return None
    if isinstance(query, Sketch):
        query.validate()
    return col.retriever.encode([query])


def _run_search(
    col: ServedCollection, query: Query, k: int
) -> tuple[list[Hit], dict[int, dict[str, Any]], float, int | None]:
    """Encode the query, then search under the collection's lock: the hits, their item rows, the ms it took
    (waiting for its batch included) and its batch's size (None: searched alone, not through a batcher).

    A drawing or an item's stored code goes through the collection's batcher when it has one (encoded and
    scanned with the searches that arrive with it, :mod:`.batching`); an uploaded image is searched alone (its
    preparation, up to 1,024 px a side and traced for stroke-order models, would hold up the whole batch).

    Hits carry label and source; an item's metadata (the ``meta`` field of its row, when the index stores
    one) is read from the rows the Retriever reads them from (:meth:`Retriever.item_meta`).
    """
    t0 = time.perf_counter()
    if col.batcher is not None and not isinstance(query, Image.Image):
        if isinstance(query, int):
            with col.lock:
                code = np.array(_stored_code(col, query))  # a copy: scanned later, outside this lock
            dist, found, batch = col.batcher.search(k, code=code)
        else:
            query.validate()  # here, so that a bad drawing is refused before it can join a batch
            dist, found, batch = col.batcher.search(k, query=query)
        with col.lock:
            hits, rows = col.retriever.hits_and_rows(dist, found)
        return hits, rows, (time.perf_counter() - t0) * 1000.0, batch
    codes = _encode(col, query)
    with col.lock:
        if codes is None:
            codes = _stored_code(col, int(query))
        dist, found = col.retriever.search_encoded(codes, k)
        hits, rows = col.retriever.hits_and_rows(dist[0], found[0])  # the item rows: read once
        return hits, rows, (time.perf_counter() - t0) * 1000.0, None


def _run_page_search(col: ServedCollection, query: Query, k: int, by_page: bool) -> tuple[list[PageHit], float]:
    """A page collection's search: encoded like any query (:func:`_encode`), then its boxes searched and
    suppressed per page by :meth:`PageIndex.search_encoded <sketchsearch.pages.PageIndex.search_encoded>`
    under the collection's lock. The page hits and the ms it took."""
    t0 = time.perf_counter()
    pages = col.pages
    assert pages is not None  # _search_body's choice
    codes = _encode(col, query)
    with col.lock:
        if codes is None:
            codes = _stored_code(col, int(query))
        hits = pages.search_encoded(codes, k, by_page=by_page)[0]
        return hits, (time.perf_counter() - t0) * 1000.0


def _stored_code(col: ServedCollection, item_id: int) -> np.ndarray:
    """An indexed item's own stored code, (1, code bytes or dims), to search with it (no re-encoding: the
    item finds itself first, at distance 0) like any encoded query; 404 naming it when it is not indexed.
    Called under the collection's lock."""
    stored = col.retriever.index.state()  # the index's own arrays, ids ascending: no copy
    ids = stored["ids"]
    pos = int(np.searchsorted(ids, item_id))
    if pos == len(ids) or int(ids[pos]) != item_id:
        raise HTTPException(
            404, f"item: {item_id} is not in collection {col.name!r}; search with the id of one of its hits"
        )
    return np.asarray(stored["codes"][pos : pos + 1])


def _meta_out(meta: object) -> dict[str, str]:
    """An item's stored metadata as the API shows it: text values by key; absent, empty or nested values
    left out (the item store holds whatever the collection's sidecar gave)."""
    if not isinstance(meta, Mapping):
        return {}
    return {
        str(key): str(value)
        for key, value in meta.items()
        if isinstance(value, (str, int, float)) and not isinstance(value, bool) and str(value).strip()
    }


def _title(hit: Hit, meta: Mapping[str, str]) -> str:
    """What to call a hit: its metadata title, its source's file name, its label, or ``item <id>``."""
    if meta.get("title"):
        return meta["title"]
    if hit.source:
        return PurePosixPath(hit.source.replace("\\", "/")).name or hit.source
    return hit.label or f"item {hit.id}"


def _similarity(col: ServedCollection, distance: float) -> float:
    # float rounding can put an item's distance to itself a hair below 0
    code_size = col.retriever.method.code_size
    return min(1.0, (1.0 - distance / code_size) if col.metric == "hamming" else 1.0 - distance)


def _hit_out(col: ServedCollection, hit: Hit, meta: Mapping[str, str]) -> HitOut:
    distance = float(hit.distance)
    return HitOut(
        id=hit.id,
        rank=hit.rank,
        title=_title(hit, meta),
        label=hit.label,
        source=hit.source,
        meta=dict(meta),
        distance=distance,
        similarity=_similarity(col, distance),
        thumbnail_url=f"/api/items/{hit.id}/thumbnail?collection={quote(col.name)}",
    )


def page_url(collection: str, page: int) -> str:
    """Where a page collection's page preview is served (:mod:`.page_images`)."""
    return f"/api/collections/{quote(collection, safe='')}/pages/{page}"


def _page_title(hit: PageHit) -> str:
    """What to call a hit's page: its source's file name (with a PDF page's ``:n``), else ``page <id>``."""
    if hit.source:
        return PurePosixPath(hit.source.replace("\\", "/")).name or hit.source
    return f"page {hit.page}"


def _page_hit_out(col: ServedCollection, hit: PageHit) -> PageHitOut:
    distance = float(hit.distance)
    width, height = hit.page_size or (0, 0)
    box = [int(v) for v in hit.box]
    return PageHitOut(
        id=hit.id,
        rank=hit.rank,
        page=hit.page,
        title=_page_title(hit),
        source=hit.source,
        box=box,
        page_size=PageSize(width=width, height=height),
        proposal=hit.proposal,
        distance=distance,
        similarity=_similarity(col, distance),
        preview_url=page_url(col.name, hit.page),
        crop_url=f"{page_url(col.name, hit.page)}/crop?box={','.join(map(str, box))}",
    )


async def _search_response(
    col: ServedCollection, query: Query, k: int, qinfo: dict[str, int], runner: Any = None, by_page: bool = False
) -> Response:
    """Run the search in the thread pool (through ``runner(fn, *args)`` when given) and answer it as a
    :class:`SearchResponse` (a :class:`PageSearchResponse` for a page collection) with Server-Timing."""
    if runner is None:
        answer = await run_in_threadpool(_search_body, col, query, k, qinfo, by_page)
    else:
        answer = await run_in_threadpool(runner, _search_body, col, query, k, qinfo, by_page)
    return _json_answer(*answer)


def _answer_body(
    col: ServedCollection,
    k: int,
    took: float,
    qinfo: dict[str, int],
    hits: list[Hit],
    rows: Mapping[int, Mapping[str, Any]],
) -> bytes:
    """A search's answer as JSON bytes (a :class:`SearchResponse`, serialised by pydantic in one call)."""
    out = SearchResponse(
        collection=col.name,
        k=k,
        metric=col.metric,
        took_ms=round(took, 3),
        query=qinfo,
        hits=[_hit_out(col, h, _meta_out(rows.get(h.id, {}).get("meta"))) for h in hits],
    )
    return out.model_dump_json().encode()


def _page_answer_body(
    col: ServedCollection, k: int, by_page: bool, took: float, qinfo: dict[str, int], hits: list[PageHit]
) -> bytes:
    """A page search's answer as JSON bytes (a :class:`PageSearchResponse`)."""
    out = PageSearchResponse(
        collection=col.name,
        kind="pages",
        k=k,
        by_page=by_page,
        metric=col.metric,
        took_ms=round(took, 3),
        query=qinfo,
        hits=[_page_hit_out(col, h) for h in hits],
    )
    return out.model_dump_json().encode()


def _json_answer(content: bytes, took: float, batch: int | None = None) -> Response:
    """The answer, with the search's time (and its batch's size, when it went through a batcher) in
    ``Server-Timing``: a header, so that the JSON answer's fields stay as they were."""
    timing = f"search;dur={took:.2f}" + (f', batch;desc="{batch}"' if batch is not None else "")
    return Response(content, media_type="application/json", headers={"Server-Timing": timing})
