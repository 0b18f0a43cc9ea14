"""The pages a browser opens: the drawing page at ``/`` and the API docs at ``/docs``, both offline, and the
security headers every response carries (:class:`SecurityHeaders`).

Everything they load comes from this server (the page from :data:`STATIC_DIR`, Swagger UI from the
installed ``swagger-ui-bundle`` wheel, mounted by the app at ``/static`` and ``/docs-static``): no CDN.
So one policy, :data:`PAGE_HEADERS` (``'self'`` only, no inline script, no framing), fits every response;
``/docs`` alone sets its own CSP (:func:`docs_csp`): Swagger UI starts from one inline script, allowed by
its hash (not ``'unsafe-inline'``), and styles its widgets inline.
"""

from __future__ import annotations

import base64
import hashlib
import re
from importlib import resources
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["PAGE_HEADERS", "STATIC_DIR", "SecurityHeaders", "docs_csp", "router"]

STATIC_DIR = Path(str(resources.files("sketchsearch.service") / "static"))
"""The drawing page's files (``index.html`` and what it loads), served at ``/static``."""

PAGE_HEADERS = {
    # Everything the page needs comes from this server: no CDN, works offline.
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; "
    "script-src 'self'; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",  # frame-ancestors for browsers that predate CSP 2
    "Referrer-Policy": "no-referrer",
}
"""Security headers on every response (the drawing page, the API, static files, errors); ``/docs`` replaces
the CSP with :func:`docs_csp`."""


class SecurityHeaders:
    """Add :data:`PAGE_HEADERS` to every HTTP response, keeping any of them a route set itself (``/docs``'s CSP).

    A pure ASGI wrapper around ``send``; the app puts it outside Starlette's error middleware, so 404s, 422s
    and even a 500 carry the headers too."""

    def __init__(self, app: ASGIApp, headers: dict[str, str] = PAGE_HEADERS) -> None:
        self.app = app
        self.headers = dict(headers)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for key, value in self.headers.items():
                    if key not in headers:
                        headers[key] = value
            await send(message)

        await self.app(scope, receive, send_with_headers)


def docs_csp(html: str) -> str:
    """The CSP for Swagger UI's page ``html``: scripts from this server plus the page's own inline scripts by
    their SHA-256 (so nothing injected could run), inline styles (Swagger UI's widgets set them), images from
    here or ``data:`` URLs (its icons), fetches to this server only (the OpenAPI document, "Try it out")."""
    hashes = " ".join(
        "'sha256-" + base64.b64encode(hashlib.sha256(m.encode()).digest()).decode() + "'"
        for m in re.findall(r"<script>(.*?)</script>", html, flags=re.DOTALL)
    )
    return (
        f"default-src 'self'; script-src 'self' {hashes}; style-src 'self' 'unsafe-inline'; "
        "img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
    )


router = APIRouter(include_in_schema=False)


@router.get("/")
def index() -> FileResponse:
    return FileResponse(STATIC_DIR / "index.html", media_type="text/html", headers=PAGE_HEADERS)


@router.get("/docs")
def docs(request: Request) -> HTMLResponse:
    page = get_swagger_ui_html(
        openapi_url="/openapi.json",
        title=f"{request.app.title} API",
        swagger_js_url="/docs-static/swagger-ui-bundle.js",
        swagger_css_url="/docs-static/swagger-ui.css",
        swagger_favicon_url="/docs-static/favicon-32x32.png",
    )
    page.headers["Content-Security-Policy"] = docs_csp(bytes(page.body).decode())
    return page
