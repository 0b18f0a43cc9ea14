"""What one request may hold: :class:`Limits`, the checks against it, and the body-size middleware.

Every bound is checked before the work it guards: the body size while it streams in
(:class:`BodySizeLimit`), stroke and point counts before any array is built (by
:func:`~sketchsearch.data.strokes.parse_strokes`), an image's size from its header before any pixel is
decoded (decompression bombs), k before searching. A request over a bound
gets a 4xx (413 for size, 422 for k) whose ``detail`` names the field and the bound.
"""

from __future__ import annotations

from dataclasses import dataclass

from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..data.strokes import MAX_POINTS, MAX_STROKES

__all__ = [
    "MAX_ID",
    "BodySizeLimit",
    "Limits",
    "check_image_size",
    "check_k",
]

MAX_ID = 2**63 - 1
"""The largest item id a client may ask for (ids are int64 in every index)."""


@dataclass(frozen=True)
class Limits:
    """What one request may hold. Defaults fit a drawing page comfortably (a dense 1-minute sketch is
    ~30 strokes and ~3,000 points) while keeping one request's work to milliseconds."""

    max_body_bytes: int = 4 * 1024 * 1024  # whole request body (JSON or multipart)
    max_strokes: int = MAX_STROKES
    max_points: int = MAX_POINTS  # over all strokes
    max_image_side: int = 4096  # pixels, width or height, read from the header before decoding
    max_image_pixels: int = 16_000_000  # width * height, read from the header before decoding
    max_k: int = 200

    def __post_init__(self) -> None:
        for name in self.__dataclass_fields__:
            if int(getattr(self, name)) < 1:
                raise ValueError(f"Limits.{name} must be >= 1, got {getattr(self, name)}")


def check_k(k: int, limits: Limits) -> None:
    """422 when ``k`` asks for more hits than ``limits.max_k``."""
    if k > limits.max_k:
        raise HTTPException(422, f"k: at most {limits.max_k} hits per search, got {k}")


def check_image_size(width: int, height: int, limits: Limits) -> None:
    """413 when an image's header claims more than ``limits`` allow a side or in all."""
    if max(width, height) > limits.max_image_side or width * height > limits.max_image_pixels:
        raise HTTPException(
            413,
            f"image: {width}x{height} is too large; at most {limits.max_image_side} pixels a side and "
            f"{limits.max_image_pixels} pixels in all: scale the picture down and choose it again",
        )


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
                    msg = "Content-Length is not a number" if declared < 0 else str(_TooLarge(self.max_bytes).detail)
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
