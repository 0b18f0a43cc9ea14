"""The web service: a drawing page and a small REST API over one or more :class:`~sketchsearch.retrieval.Retriever`.

Every search goes through :meth:`Retriever.search` (the only search path). The API:

* ``POST /api/search`` — a query as strokes (JSON ``{"collection", "k", "strokes": [[{x, y, t}, ...], ...]}``)
  or as an uploaded PNG/JPEG (``multipart/form-data`` with fields ``image``, ``k``, ``collection``).
  Answers the ranked hits (id, rank, label, distance, thumbnail URL) and the time the search took.
* ``GET /api/items/{id}/thumbnail?collection=NAME`` — a PNG from the index's own item store only:
  the id is an integer (validated), never a path, so nothing a client sends reaches the file system.
* ``GET /api/collections``, ``GET /api/health``; OpenAPI docs at ``/docs``; the page at ``/``.

Every request is bounded (:class:`Limits`): body bytes, strokes, points, image side and pixels (checked
from the image header, before decoding: decompression bombs), k. A bad request gets a 4xx whose
``detail`` says what was wrong; nothing a client sends should produce a 5xx.
"""

from __future__ import annotations

import io
import json
import re
import threading
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote

import numpy as np
from fastapi import FastAPI, Query, Request
from fastapi import Path as PathParam
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.openapi.utils import get_openapi
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from PIL import Image, ImageOps, UnidentifiedImageError
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from swagger_ui_bundle import swagger_ui_path

from .. import __version__
from ..data.sketch import Sketch
from ..errors import IndexError_, InvalidSketchError, SketchSearchError
from ..retrieval import Retriever

__all__ = [
    "CollectionInfo",
    "CollectionSpec",
    "Health",
    "HitOut",
    "Limits",
    "SearchRequest",
    "SearchResponse",
    "StrokePoint",
    "create_app",
    "load_collections",
    "warm_up",
]

STATIC_DIR = Path(str(resources.files("sketchsearch.service") / "static"))
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_MAX_ID = 2**63 - 1
_MAX_COORD = 1e30  # well inside float32, so scaling in normalise() cannot overflow


# ----------------------------------------------------------------------------------------------- limits
@dataclass(frozen=True)
class Limits:
    """What one request may hold. Defaults fit a drawing page comfortably (a dense 1-minute sketch is
    ~30 strokes and ~3,000 points) while keeping one request's work to milliseconds."""

    max_body_bytes: int = 4 * 1024 * 1024  # whole request body (JSON or multipart)
    max_strokes: int = 500
    max_points: int = 50_000  # over all strokes
    max_image_side: int = 4096  # pixels, width or height, read from the header before decoding
    max_image_pixels: int = 16_000_000  # width * height, read from the header before decoding
    max_k: int = 200

    def __post_init__(self) -> None:
        for name in self.__dataclass_fields__:
            if int(getattr(self, name)) < 1:
                raise ValueError(f"Limits.{name} must be >= 1, got {getattr(self, name)}")


# ----------------------------------------------------------------------------------------------- schemas
class StrokePoint(BaseModel):
    """One recorded point: page pixels (y down) and the time in ms since the drawing began."""

    # strict: a string or a boolean is a wrong type (422), not a number to coerce ("1" -> 1.0, true -> 1.0)
    model_config = ConfigDict(extra="forbid", strict=True)
    x: float = Field(allow_inf_nan=False, description="x in any unit (the page sends CSS pixels)")
    y: float = Field(allow_inf_nan=False, description="y in the same unit, pointing down")
    t: float | None = Field(default=None, allow_inf_nan=False, ge=0, description="ms since the drawing began")


class SearchRequest(BaseModel):
    """A search by strokes (``application/json``)."""

    model_config = ConfigDict(extra="forbid", strict=True)  # "k": "5" or true is a wrong type, not 5 / 1
    strokes: list[list[StrokePoint]] = Field(description="strokes in drawing order, each a list of points")
    k: int = Field(default=10, ge=1, description="number of hits wanted (at most the server's max_k)")
    collection: str | None = Field(
        default=None, description="collection name; optional when only one is served"
    )


class HitOut(BaseModel):
    id: int
    rank: int
    label: str | None
    distance: float = Field(
        description="Hamming distance (binary codes) or 1 - cosine (float embeddings); smaller is closer"
    )
    similarity: float = Field(
        description="1 - distance / nbits (binary) or cosine (float), in [-1, 1]; larger is closer"
    )
    thumbnail_url: str


class SearchResponse(BaseModel):
    collection: str
    k: int
    metric: Literal["hamming", "cosine"]
    took_ms: float = Field(
        description="time the search took on the server (encode + index search + labels), ms"
    )
    query: dict[str, int] = Field(
        description="what was searched: strokes/points, or the image's width/height"
    )
    hits: list[HitOut]


class CollectionInfo(BaseModel):
    name: str
    items: int
    model_id: str
    method: str
    metric: Literal["hamming", "cosine"]
    code_size: int
    inputs: list[str] = Field(
        description="what the model reads: raster (strokes or images), points (strokes only)"
    )
    accepts_images: bool


class Health(BaseModel):
    status: Literal["ok"]
    version: str
    collections: int
    items: int


class ErrorOut(BaseModel):
    detail: str


# ----------------------------------------------------------------------------------------------- loading
CollectionSpec = tuple[str, "str | Path | None", "str | Path"]
"""(name, model name/path or None for the model the index's manifest names, index folder)."""


def load_collections(specs: Sequence[CollectionSpec]) -> dict[str, Retriever]:
    """Open every ``(name, model, index_folder)`` with :meth:`Retriever.load`.

    Raises :class:`~sketchsearch.errors.IndexError_` naming the collection, the folder and the cause when
    any of them fails (the CLI prints it and stops: a half-started service is worse than none).
    """
    out: dict[str, Retriever] = {}
    for name, model, folder in specs:
        _check_name(name)
        if name in out:
            raise IndexError_(f"collection {name!r} is given twice; give each --index its own --name")
        try:
            out[name] = Retriever.load(folder, model)
        except Exception as e:
            what = f"model {str(model)!r} and index {str(folder)!r}" if model else f"index {str(folder)!r}"
            cause = str(e) if isinstance(e, SketchSearchError) else f"{type(e).__name__}: {e}"
            raise IndexError_(f"collection {name!r}: cannot load {what}: {cause}") from e
    return out


def warm_up(collections: Mapping[str, Retriever]) -> dict[str, float]:
    """Run one small search per non-empty collection so the first visitor does not pay for lazy set-up
    (JIT-compiled search kernels, index caches). Returns the ms each took."""
    probe = Sketch([np.array([[0, 0], [10, 10], [20, 0]], dtype=np.float32)])
    out = {}
    for name, r in collections.items():
        if len(r):
            t0 = time.perf_counter()
            r.search(probe, k=1)
            out[name] = (time.perf_counter() - t0) * 1000.0
    return out


def _check_name(name: str) -> None:
    if not _NAME_RE.match(name):
        raise ValueError(
            f"collection name {name!r} is not valid: use 1-64 letters, digits, '_', '.' or '-', starting with a letter or digit"
        )


# ----------------------------------------------------------------------------------------------- middleware
class _TooLarge(HTTPException):
    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body is larger than {limit} bytes")


class BodySizeLimit:
    """Refuse request bodies over ``max_bytes`` with 413, whether announced by Content-Length or streamed.

    Hand-written because Starlette/FastAPI have no body-size limit of their own (uvicorn has none either);
    this is a pure ASGI wrapper around ``receive``, so it bounds JSON, multipart and anything else alike.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for key, value in scope.get("headers", []):
            if key == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = -1
                if declared < 0 or declared > self.max_bytes:
                    msg = (
                        "Content-Length is not a number"
                        if declared < 0
                        else str(_TooLarge(self.max_bytes).detail)
                    )
                    resp = JSONResponse({"detail": msg}, status_code=400 if declared < 0 else 413)
                    await resp(scope, receive, send)
                    return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise _TooLarge(self.max_bytes)  # an HTTPException: FastAPI answers it with 413
            return message

        await self.app(scope, limited, send)


# ----------------------------------------------------------------------------------------------- the app
@dataclass
class _Collection:
    name: str
    retriever: Retriever
    # The Retriever makes no thread-safety promise (its item store may hold an sqlite connection, indexes
    # keep scratch buffers), so one collection answers one search at a time; collections run in parallel.
    lock: threading.Lock

    @property
    def metric(self) -> Literal["hamming", "cosine"]:
        return "hamming" if self.retriever.binary else "cosine"


def _error(status: int, detail: str) -> HTTPException:
    return HTTPException(status_code=status, detail=detail)


def _format_validation(errors: Sequence[Mapping[str, Any]], prefix: str = "") -> str:
    parts = []
    for e in errors[:5]:
        loc = ".".join(str(p) for p in e.get("loc", ()) if p not in ("body",))
        loc = f"{prefix}{loc}" if loc else (prefix.rstrip(".") or "body")
        parts.append(f"{loc}: {e.get('msg', 'invalid')}")
    more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
    return "; ".join(parts) + more


def create_app(
    collections: Mapping[str, Retriever],
    *,
    cors_origins: list[str] | None = None,
    limits: Limits = Limits(),
) -> FastAPI:
    """The FastAPI app serving ``collections`` (name -> Retriever) and the drawing page.

    ``cors_origins``: origins allowed to call the API from other pages (``None`` = CORS off, the default).
    """
    if not collections:
        raise ValueError("create_app needs at least one collection (name -> Retriever)")
    cols: dict[str, _Collection] = {}
    for name, retriever in collections.items():
        _check_name(name)
        cols[name] = _Collection(name, retriever, threading.Lock())

    app = FastAPI(
        title="sketchsearch",
        version=__version__,
        description="Search collections by drawing. Draw at `/`; the API is below.",
        responses={400: {"model": ErrorOut}, 413: {"model": ErrorOut}, 422: {"model": ErrorOut}},
        docs_url=None,  # served below from the swagger-ui-bundle package: FastAPI's default loads a CDN
        redoc_url=None,  # ReDoc has no offline bundle on PyPI; /docs is the one API page
    )
    app.state.collections = cols
    app.state.limits = limits
    app.add_middleware(BodySizeLimit, max_bytes=limits.max_body_bytes)
    if cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(cors_origins),
            allow_methods=["GET", "POST"],
            allow_headers=["*"],
        )

    # ------------------------------------------------------------------ errors -> 4xx with a message
    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse(
            {"detail": _format_validation(exc.errors()), "errors": jsonable_encoder(exc.errors())},
            status_code=422,
        )

    @app.exception_handler(SketchSearchError)
    async def _domain(request: Request, exc: SketchSearchError) -> JSONResponse:
        return JSONResponse(
            {"detail": str(exc)}, status_code=422 if isinstance(exc, InvalidSketchError) else 400
        )

    # ------------------------------------------------------------------ helpers
    def pick(name: str | None) -> _Collection:
        if name is None:
            if len(cols) == 1:
                return next(iter(cols.values()))
            raise _error(422, f"collection: several are served, name one of {sorted(cols)}")
        col = cols.get(name)
        if col is None:
            raise _error(404, f"collection {name!r} is not served; known: {sorted(cols)}")
        return col

    def check_k(k: int) -> None:
        if k > limits.max_k:
            raise _error(422, f"k: at most {limits.max_k} hits per search, got {k}")

    def to_sketch(strokes: list[list[StrokePoint]]) -> Sketch:
        if len(strokes) > limits.max_strokes:
            raise _error(413, f"strokes: at most {limits.max_strokes} strokes, got {len(strokes)}")
        n = sum(len(s) for s in strokes)
        if n > limits.max_points:
            raise _error(413, f"strokes: at most {limits.max_points} points in all, got {n}")
        if n == 0:
            raise _error(422, "strokes: the sketch has no points (draw something first)")
        xy64 = [np.array([(p.x, p.y) for p in s], dtype=np.float64).reshape(-1, 2) for s in strokes]
        if any(len(a) and float(np.abs(a).max()) > _MAX_COORD for a in xy64):
            raise _error(422, f"strokes: coordinates must fit in 32-bit floats (|x|, |y| <= {_MAX_COORD:g})")
        xy = [a.astype(np.float32) for a in xy64]
        has_t = all(p.t is not None for s in strokes for p in s)
        times = [np.array([p.t for p in s], dtype=np.float64) for s in strokes] if has_t else None
        return Sketch(xy, times)

    def read_image(data: bytes) -> Image.Image:
        if not data:
            raise _error(422, "image: the uploaded file is empty")
        try:
            # Image.open reads only the header: the size is known before any pixel is decoded.
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                img = Image.open(io.BytesIO(data), formats=["PNG", "JPEG"])
            w, h = img.size
            if max(w, h) > limits.max_image_side or w * h > limits.max_image_pixels:
                raise _error(
                    413,
                    f"image: {w}x{h} is too large; at most {limits.max_image_side} pixels a side and "
                    f"{limits.max_image_pixels} pixels in all",
                )
            if w < 1 or h < 1:
                raise _error(422, f"image: {w}x{h} has no pixels")
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                img.load()
            return _flatten_image(img)
        except HTTPException:
            raise
        except UnidentifiedImageError as e:
            raise _error(422, f"image: not a readable PNG or JPEG ({e})") from e
        except (
            Image.DecompressionBombError,
            Image.DecompressionBombWarning,
        ) as e:  # Pillow's own header check
            raise _error(413, f"image: too large to decode safely ({e})") from e
        except (OSError, ValueError, SyntaxError) as e:  # truncated / corrupt files
            raise _error(
                422, f"image: the file is damaged or not a PNG/JPEG ({type(e).__name__}: {e})"
            ) from e

    def parse_strokes_request(body: bytes) -> tuple[SearchRequest, Sketch] | JSONResponse:
        """JSON body -> (request, sketch), or a 422 response listing the schema errors; bad JSON -> 400."""
        try:
            raw = json.loads(body)
        # ValueError covers JSONDecodeError, UnicodeDecodeError and an integer past Python's digit limit;
        # RecursionError: arrays/objects nested deeper than the interpreter's stack allows
        except (ValueError, RecursionError) as e:
            raise _error(400, f"body: not valid JSON ({type(e).__name__}: {e})") from e
        try:
            req = SearchRequest.model_validate(raw)
        except ValidationError as e:
            errs = e.errors(include_url=False, include_context=False, include_input=False)
            return JSONResponse(
                {"detail": _format_validation(errs), "errors": jsonable_encoder(errs)}, status_code=422
            )
        check_k(req.k)
        return req, to_sketch(req.strokes)

    def run_search(col: _Collection, query: Sketch | Image.Image, k: int) -> tuple[list[Any], float]:
        with col.lock:
            t0 = time.perf_counter()
            hits = col.retriever.search(query, k=k)
            return hits, (time.perf_counter() - t0) * 1000.0

    async def search_response(
        col: _Collection, query: Sketch | Image.Image, k: int, qinfo: dict[str, int]
    ) -> JSONResponse:
        try:
            hits, took = await run_in_threadpool(run_search, col, query, k)
        except IndexError_ as e:
            raise _error(409, f"collection {col.name!r}: {e}") from e
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

    # ------------------------------------------------------------------ routes
    @app.post(
        "/api/search",
        response_model=SearchResponse,
        summary="Search a collection by strokes (JSON) or by an uploaded PNG/JPEG drawing (multipart)",
        responses={404: {"model": ErrorOut}, 409: {"model": ErrorOut}, 415: {"model": ErrorOut}},
        openapi_extra={
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
        },
    )
    async def search(request: Request) -> JSONResponse:
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype == "application/json":
            body = await request.body()
            # parsing and validating up to max_points points is CPU work: off the event loop, so that one
            # large request does not stall every other client (and /api/health)
            parsed = await run_in_threadpool(parse_strokes_request, body)
            if isinstance(parsed, JSONResponse):
                return parsed
            req, sketch = parsed
            col = pick(req.collection)
            return await search_response(
                col, sketch, req.k, {"strokes": len(sketch.strokes), "points": sketch.n_points}
            )
        if ctype == "multipart/form-data":
            async with request.form(max_files=1, max_fields=8) as form:
                upload = form.get("image")
                if upload is None or isinstance(upload, str):
                    raise _error(422, "image: send the drawing as a file field named 'image' (PNG or JPEG)")
                k = _form_int(form.get("k"), "k", default=10)
                if k < 1:
                    raise _error(422, f"k: must be >= 1, got {k}")
                check_k(k)
                cname = form.get("collection")
                col = pick(cname if isinstance(cname, str) and cname else None)
                data = await upload.read()
            if "points" in col.retriever.method.preprocessing.inputs:
                raise _error(
                    422,
                    f"image: collection {col.name!r}'s model reads stroke order; search it with strokes, not an image",
                )
            img = await run_in_threadpool(read_image, data)  # decoding is CPU work: off the event loop
            return await search_response(col, img, k, {"width": img.size[0], "height": img.size[1]})
        raise _error(
            415,
            f"Content-Type {ctype or '(none)'!r} not supported: send application/json (strokes) or multipart/form-data (image)",
        )

    @app.get(
        "/api/items/{item_id}/thumbnail",
        response_class=Response,
        summary="The item's thumbnail (PNG) from the collection's own item store",
        responses={200: {"content": {"image/png": {}}}, 404: {"model": ErrorOut}},
    )
    def thumbnail(
        item_id: int = PathParam(ge=0, le=_MAX_ID, description="the item's integer id"),
        collection: str | None = Query(default=None, max_length=64),
    ) -> Response:
        col = pick(collection)
        png = col.retriever.thumbnail(
            item_id
        )  # read-only: a dict lookup, or the store (which has its own lock)
        if png is None:
            raise _error(404, f"item {item_id} has no thumbnail in collection {col.name!r}")
        return Response(
            png,
            media_type="image/png",
            headers={"Cache-Control": "public, max-age=3600", "X-Content-Type-Options": "nosniff"},
        )

    @app.get("/api/collections", response_model=list[CollectionInfo], summary="The collections served")
    def list_collections() -> list[CollectionInfo]:
        out = []
        for c in cols.values():
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

    @app.get("/api/health", response_model=Health, summary="Liveness and what is loaded")
    def health() -> Health:
        return Health(
            status="ok",
            version=__version__,
            collections=len(cols),
            items=sum(len(c.retriever) for c in cols.values()),
        )

    # ------------------------------------------------------------------ the page (static, offline)
    page_headers = {
        # Everything the page needs comes from this server: no CDN, works offline.
        "Content-Security-Policy": "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; "
        "script-src 'self'; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
    }

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html", headers=page_headers)

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    # Swagger UI from the installed swagger-ui-bundle wheel, so /docs works offline like the page does.
    app.mount("/docs-static", StaticFiles(directory=str(swagger_ui_path)), name="docs-static")

    @app.get("/docs", include_in_schema=False)
    def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url="/openapi.json",
            title=f"{app.title} API",
            swagger_js_url="/docs-static/swagger-ui-bundle.js",
            swagger_css_url="/docs-static/swagger-ui.css",
            swagger_favicon_url="/docs-static/favicon-32x32.png",
        )

    # OpenAPI: the JSON request body is read by hand (to take JSON or multipart on one route), so add its schema.
    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title, version=app.version, description=app.description, routes=app.routes
            )
            comps = schema.setdefault("components", {}).setdefault("schemas", {})
            req = SearchRequest.model_json_schema(ref_template="#/components/schemas/{model}")
            comps.update(req.pop("$defs", {}))
            comps["SearchRequest"] = req
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app


def _flatten_image(img: Image.Image) -> Image.Image:
    """Upright RGB on white: EXIF rotation applied (phone photos), transparency composited on white (a canvas
    exported as PNG is dark ink on transparent black, which would otherwise read as an all-dark image)."""
    img = ImageOps.exif_transpose(img) or img
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img.convert("RGB") if img.mode not in ("RGB", "L") else img


def _form_int(value: Any, field: str, default: int) -> int:
    if value is None or value == "":
        return default
    if not isinstance(value, str) or not re.fullmatch(r"\s*[+-]?\d{1,9}\s*", value):
        raise _error(422, f"{field}: expected an integer, got {str(value)[:40]!r}")
    return int(value)
