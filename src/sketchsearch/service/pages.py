"""The pages a browser opens: the drawing page at ``/`` and the API docs at ``/docs``, both offline.

Everything they load comes from this server (the page from :data:`STATIC_DIR`, Swagger UI from the
installed ``swagger-ui-bundle`` wheel, mounted by the app at ``/static`` and ``/docs-static``): no CDN.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse

__all__ = ["PAGE_HEADERS", "STATIC_DIR", "router"]

STATIC_DIR = Path(str(resources.files("sketchsearch.service") / "static"))
"""The drawing page's files (``index.html`` and what it loads), served at ``/static``."""

PAGE_HEADERS = {
    # Everything the page needs comes from this server: no CDN, works offline.
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; "
    "script-src 'self'; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
"""Security headers on the drawing page."""

router = APIRouter(include_in_schema=False)


@router.get("/")
def index() -> FileResponse:
    return FileResponse(STATIC_DIR / "index.html", media_type="text/html", headers=PAGE_HEADERS)


@router.get("/docs")
def docs(request: Request) -> HTMLResponse:
    return get_swagger_ui_html(
        openapi_url="/openapi.json",
        title=f"{request.app.title} API",
        swagger_js_url="/docs-static/swagger-ui-bundle.js",
        swagger_css_url="/docs-static/swagger-ui.css",
        swagger_favicon_url="/docs-static/favicon-32x32.png",
    )
