"""The web service's assembly: :func:`create_app` builds the FastAPI app over one or more
:class:`~sketchsearch.retrieval.Retriever` (item collections) or :class:`~sketchsearch.pages.PageIndex`
(page collections: boxes on document pages).

It keeps a :class:`~.state.ServiceState` (the collections, the :class:`~.limits.Limits` and each item
collection's :class:`~.batching.SearchBatcher`, stopped at shutdown) on ``app.state.service``, puts
security headers on every response (:class:`~.pages.SecurityHeaders`, outermost), installs the body-size
limit and (optionally) CORS, turns validation and domain errors into 4xx answers with a ``detail`` naming
the field, includes the API (:mod:`.routes`, and :mod:`.page_images` for page collections' pictures) and the
pages (:mod:`.pages`), mounts their static files, and documents the hand-read search body in OpenAPI.
Nothing a client sends should produce a 5xx.

The OpenAPI document is published as version 3.0 (:data:`OPENAPI_VERSION`): the Swagger UI served at
``/docs`` (swagger-ui-bundle's 4.15) cannot read 3.1, so the few JSON Schema 2020-12 constructs pydantic
writes are turned into their 3.0 spelling (:func:`_openapi_30`).

The pieces: :mod:`.schemas` (request/response models), :mod:`.limits` (bounds and their checks),
:mod:`.batching` (searches that arrive together encoded and scanned together),
:mod:`.decode` (strokes JSON and image uploads -> queries), :mod:`.state` (loading and serving
collections), :mod:`.routes`, :mod:`.page_images` and :mod:`.pages` (the endpoints).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp
from swagger_ui_bundle import swagger_ui_path

from .. import __version__
from ..data.strokes import SketchTooLargeError
from ..errors import InvalidSketchError, SketchSearchError
from . import page_images, pages, routes
from .batching import BatchOptions
from .limits import BodySizeLimit, Limits
from .schemas import (
    CollectionInfo,
    ErrorOut,
    Health,
    HitOut,
    PageHitOut,
    PageSearchResponse,
    SearchRequest,
    SearchResponse,
    StrokePoint,
)
from .state import CollectionSpec, Served, ServiceState, load_collections, warm_up

# The models and loaders are re-exported: this module has been their public home.
__all__ = [
    "OPENAPI_VERSION",
    "BatchOptions",
    "CollectionInfo",
    "CollectionSpec",
    "Health",
    "HitOut",
    "Limits",
    "PageHitOut",
    "PageSearchResponse",
    "SearchRequest",
    "SearchResponse",
    "StrokePoint",
    "create_app",
    "load_collections",
    "warm_up",
]

OPENAPI_VERSION = "3.0.3"
"""The OpenAPI version the app publishes: the newest one the bundled Swagger UI (4.15) reads."""


class _App(FastAPI):
    """FastAPI with :class:`~.pages.SecurityHeaders` outside Starlette's whole middleware stack: user
    middleware (``add_middleware``) sits inside the error middleware, whose 500s would go out without them."""

    def build_middleware_stack(self) -> ASGIApp:
        return pages.SecurityHeaders(super().build_middleware_stack())


def create_app(
    collections: Mapping[str, Served],
    *,
    cors_origins: list[str] | None = None,
    limits: Limits = Limits(),
    batching: BatchOptions = BatchOptions(),
) -> FastAPI:
    """The FastAPI app serving ``collections`` (name -> Retriever, or PageIndex for a page collection; a
    Retriever loaded from a page index is served as one) and the drawing page.

    ``cors_origins``: origins allowed to call the API from other pages (``None`` = CORS off, the default).
    ``batching``: how an item collection's concurrent searches are batched (:mod:`.batching`; on by default,
    ``BatchOptions(max_batch=1)``: off).
    """
    state = ServiceState.build(collections, limits, batching)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        await run_in_threadpool(state.close)  # the batchers' threads; each process (serve --workers) has its own

    app = _App(
        title="sketchsearch",
        version=__version__,
        description="Search collections by drawing. Draw at `/`; the API is below.",
        responses={400: {"model": ErrorOut}, 413: {"model": ErrorOut}, 422: {"model": ErrorOut}},
        docs_url=None,  # served by pages.router from the swagger-ui-bundle package: FastAPI's default loads a CDN
        redoc_url=None,  # ReDoc has no offline bundle on PyPI; /docs is the one API page
        exception_handlers={
            RequestValidationError: _validation_error,
            SketchSearchError: _domain_error,
            ClientDisconnect: _client_left,
        },
        lifespan=lifespan,
    )
    app.openapi_version = OPENAPI_VERSION  # an attribute FastAPI reads, not a constructor argument
    app.state.service = state
    app.add_middleware(BodySizeLimit, max_bytes=limits.max_body_bytes)
    if cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(cors_origins),
            allow_methods=["GET", "POST"],
            allow_headers=["*"],
        )

    app.include_router(routes.router)
    app.include_router(page_images.router)
    app.include_router(pages.router)
    app.mount("/static", StaticFiles(directory=pages.STATIC_DIR), name="static")
    # Swagger UI from the installed swagger-ui-bundle wheel, so /docs works offline like the page does.
    app.mount("/docs-static", StaticFiles(directory=str(swagger_ui_path)), name="docs-static")

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = _openapi_schema(app)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app


# ----------------------------------------------------------------------------------------------- errors -> 4xx
def _format_validation(errors: Sequence[Mapping[str, Any]]) -> str:
    """Up to five schema errors as ``field.path: message``, joined; the field is ``body`` when unnamed."""
    parts = []
    for e in errors[:5]:
        loc = ".".join(str(p) for p in e.get("loc", ()) if p != "body")
        parts.append(f"{loc or 'body'}: {e.get('msg', 'invalid')}")
    more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
    return "; ".join(parts) + more


async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    """422 with a readable ``detail`` and the errors themselves (FastAPI's own, and the search body's)."""
    return JSONResponse(
        {"detail": _format_validation(exc.errors()), "errors": jsonable_encoder(exc.errors())},
        status_code=422,
    )


async def _client_left(request: Request, exc: ClientDisconnect) -> Response:
    """The client went away (or was dropped by a timeout) while its body was read: nothing to answer, and
    nothing to log (without this, every dropped slow client would log a traceback)."""
    return Response(status_code=400)


async def _domain_error(request: Request, exc: SketchSearchError) -> JSONResponse:
    """The library's own errors: 413 for a drawing over the limits, 422 for a sketch it cannot use, 400 for
    the rest."""
    if isinstance(exc, SketchTooLargeError):
        status = 413
    else:
        status = 422 if isinstance(exc, InvalidSketchError) else 400
    return JSONResponse({"detail": str(exc)}, status_code=status)


# ----------------------------------------------------------------------------------------------- OpenAPI
def _openapi_schema(app: FastAPI) -> dict[str, Any]:
    """FastAPI's schema plus SearchRequest (the JSON search body is read by hand, to
    take JSON or multipart on one route, so FastAPI does not find the models itself), in OpenAPI 3.0."""
    schema = get_openapi(
        title=app.title,
        version=app.version,
        openapi_version=app.openapi_version,
        description=app.description,
        routes=app.routes,
    )
    comps = schema.setdefault("components", {}).setdefault("schemas", {})
    req = SearchRequest.model_json_schema(ref_template="#/components/schemas/{model}")
    comps.update(req.pop("$defs", {}))
    comps["SearchRequest"] = req
    return _openapi_30(schema)


_NULL = {"type": "null"}


def _openapi_30(node: Any) -> Any:
    """A copy of an OpenAPI document (or any part) with pydantic's JSON Schema 2020-12 spellings in their
    OpenAPI 3.0 form: ``anyOf: [X, {"type": "null"}]`` -> X with ``nullable: true``; ``const: v`` ->
    ``enum: [v]``."""
    if isinstance(node, list):
        return [_openapi_30(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {key: _openapi_30(value) for key, value in node.items()}
    for key in ("anyOf", "oneOf"):
        alternatives = out.get(key)
        if isinstance(alternatives, list) and _NULL in alternatives:
            rest = [a for a in alternatives if a != _NULL]
            del out[key]
            if len(rest) > 1:
                out[key] = rest
            elif "$ref" in rest[0]:
                out["allOf"] = rest  # 3.0 ignores the siblings of a $ref, such as nullable
            else:
                out = {**rest[0], **out}
            out["nullable"] = True
    if "const" in out:
        out["enum"] = [out.pop("const")]
    return out
