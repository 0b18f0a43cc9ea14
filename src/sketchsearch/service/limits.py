"""What one request may hold, and what one connection may take: :class:`Limits` and the checks against it,
the body-size middleware, and :class:`ConnectionLimits` with the uvicorn protocol that enforces them.

Every bound is checked before the work it guards: the body size while it streams in
(:class:`BodySizeLimit`), stroke and point counts before any array is built (by
:func:`~sketchsearch.data.strokes.parse_strokes`), an image's size from its header before any pixel is
decoded (decompression bombs), k before searching. A request over a bound
gets a 4xx (413 for size, 422 for k) whose ``detail`` names the field and the bound.

Connections (:class:`ConnectionLimits`, enforced by :class:`GuardedH11Protocol`): a request head must
arrive within ``header_timeout`` seconds and its body within ``body_timeout`` seconds (408, then the
socket is closed), an idle keep-alive connection is closed after ``keep_alive_timeout``, and at most
``max_connections`` sockets are open at once (at the cap the longest-idle one is closed to let a new one
in; with none idle the new one gets 503). Repeated "Too many open files" accept errors are logged once
per interval (:class:`RateLimitedResourceErrors`).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import time
from dataclasses import dataclass
from typing import Any, ClassVar

import h11
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

from ..data.strokes import MAX_POINTS, MAX_STROKES

__all__ = [
    "MAX_ID",
    "BodySizeLimit",
    "ConnectionLimits",
    "GuardedH11Protocol",
    "Limits",
    "RateLimitedResourceErrors",
    "check_image_size",
    "check_json_values",
    "check_k",
    "install_log_filters",
    "read_body",
]

MAX_ID = 2**63 - 1
"""The largest item id a client may ask for (ids are int64 in every index)."""


@dataclass(frozen=True)
class Limits:
    """What one request may hold. Defaults fit a drawing page comfortably (a dense 1-minute sketch is
    ~30 strokes and ~3,000 points) while keeping one request's work to milliseconds."""

    max_body_bytes: int = 4 * 1024 * 1024  # whole request body (JSON or multipart)
    # A JSON search body: the page's dense 3,000-point sketch is ~115 KB. Parsing JSON holds the interpreter
    # lock from start to end (~0.2 s a MB on a busy core), stalling every other request: kept well below uploads.
    max_json_bytes: int = 1024 * 1024
    # JSON searches over large_json_bytes (a drawing of thousands of points) are parsed and encoded
    # max_large_searches at a time; smaller ones (a typical sketch: tens of KB) are never held back.
    large_json_bytes: int = 128 * 1024
    max_large_searches: int = 1
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


# A body over the limit is answered and the connection closed: the rest of it is never read.
_CLOSE = {"Connection": "close"}


class _TooLarge(HTTPException):
    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body is larger than {limit} bytes", headers=_CLOSE)


async def read_body(request: Request, max_bytes: int, what: str) -> bytes:
    """The request's body, refused with 413 (and the connection closed, the rest unread) as soon as it is
    announced or has streamed past ``max_bytes``; ``what`` names the body in the message."""
    declared = request.headers.get("content-length", "")
    too_large = f"{what}: at most {max_bytes} bytes"
    if declared.isdigit() and int(declared) > max_bytes:
        raise HTTPException(413, f"{too_large}, got {int(declared)}", headers=_CLOSE)
    chunks, seen = [], 0
    async for chunk in request.stream():
        seen += len(chunk)
        if seen > max_bytes:
            raise HTTPException(413, f"{too_large}, got more", headers=_CLOSE)
        chunks.append(chunk)
    return b"".join(chunks)


# Values a point may take in any stroke form parse_strokes reads, counting the comma after it: x, y, t (and
# one spare); other fields (k, collection, a label) get a fixed allowance.
_COMMAS_PER_POINT = 4
_OTHER_COMMAS = 1024


def check_json_values(body: bytes, limits: Limits) -> None:
    """413 before parsing when a JSON body holds more commas than ``limits.max_points`` points can: parsing
    would only find out after building every value (one C call that holds the interpreter lock throughout)."""
    commas = body.count(b",")
    if commas > _COMMAS_PER_POINT * limits.max_points + _OTHER_COMMAS:
        raise HTTPException(
            413,
            f"strokes: at most {limits.max_points} points; this body holds {commas} values (counted before "
            "parsing): simplify the drawing",
        )


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
                    resp = JSONResponse({"detail": msg}, status_code=400 if declared < 0 else 413, headers=_CLOSE)
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


# ----------------------------------------------------------------------------------------------- connections
@dataclass(frozen=True)
class ConnectionLimits:
    """What one connection may take from the server (seconds and counts; see the module docstring).

    Defaults: a browser sends a request head in milliseconds and a 4 MB body in well under a minute on a slow
    uplink (4 MB / 60 s = 70 KB/s); 5 s of keep-alive is uvicorn's own default; 16 KiB of request head is h11's.
    ``max_connections`` stays below the process's open-file limit (``serve`` raises that limit to its hard
    maximum and lowers this cap to fit, with a warning), so the server never runs out of descriptors.
    """

    header_timeout: float = 10.0  # from the first byte (or the connection) to the end of the request head
    body_timeout: float = 60.0  # from the end of the head to the end of the body
    keep_alive_timeout: float = 5.0  # idle time between requests on one connection
    max_connections: int = 1000  # sockets open at once
    max_head_bytes: int = 16 * 1024  # request line + headers (h11's incomplete-event limit)
    # The listen queue, and so the most sockets asyncio accepts in one go before any is admitted or refused
    # (uvicorn's default, 2048, would overshoot the cap by that many descriptors in a burst).
    backlog: int = 64

    def __post_init__(self) -> None:
        for name in self.__dataclass_fields__:
            if not getattr(self, name) > 0:
                raise ValueError(f"ConnectionLimits.{name} must be > 0, got {getattr(self, name)}")

    def protocol(self) -> type[GuardedH11Protocol]:
        """A :class:`GuardedH11Protocol` class bound to these limits (uvicorn builds one per connection)."""
        return type("GuardedH11Protocol", (GuardedH11Protocol,), {"limits": self})

    def uvicorn_options(self) -> dict[str, Any]:
        """The keyword arguments of ``uvicorn.Config`` that carry these limits."""
        return {
            "http": self.protocol(),
            "timeout_keep_alive": self.keep_alive_timeout,
            "h11_max_incomplete_event_size": self.max_head_bytes,
            "backlog": self.backlog,
        }


def _raw_response(status: int, reason: str, text: str) -> bytes:
    body = text.encode()
    return (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: {len(body)}\r\n"
        "connection: close\r\nx-content-type-options: nosniff\r\n\r\n"
    ).encode() + body


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a request-head timeout, a request-body timeout and a connection cap.

    Hand-written because uvicorn has none of these (0.55: ``timeout_keep_alive`` only runs *after* a
    response, so a socket that never sends, or sends half a head, or dribbles a body, is held forever;
    ``limit_concurrency`` still accepts every socket and only answers 503 once a full request arrives, so idle
    sockets still use up descriptors). This subclass keeps uvicorn's parsing and adds two timers per
    connection and an admission check in ``connection_made``. It is h11 only: httptools is not a dependency
    (``serve`` passes this class as uvicorn's ``http``).
    """

    limits: ClassVar[ConnectionLimits] = ConnectionLimits()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._head_timer: asyncio.TimerHandle | None = None
        self._body_timer: asyncio.TimerHandle | None = None
        self._idle_since = self.loop.time()
        super().connection_made(transport)
        if len(self.connections) > self.limits.max_connections and not self._evict_one():
            self.connections.discard(self)
            transport.write(_raw_response(503, "Service Unavailable", "too many connections: try again shortly\n"))
            transport.close()
            return
        self._head_timer = self.loop.call_later(self.limits.header_timeout, self._head_timed_out)

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timers()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._track()

    def on_response_complete(self) -> None:
        super().on_response_complete()  # arms uvicorn's keep-alive timer, runs any pipelined request
        if not self.transport.is_closing():
            self._idle_since = self.loop.time()
            self._track()

    # ------------------------------------------------------------------ the timers
    def _waiting_for_head(self) -> bool:
        return self.conn.their_state is h11.IDLE and (self.cycle is None or self.cycle.response_complete)

    def _track(self) -> None:
        """Arm or cancel the timers for where the request now is: head pending (bytes buffered: the head timer;
        none: uvicorn's keep-alive timer), body pending (the body timer), or done."""
        state = self.conn.their_state
        if state is h11.IDLE:
            if self.conn.trailing_data[0] and self._head_timer is None:
                self._head_timer = self.loop.call_later(self.limits.header_timeout, self._head_timed_out)
            elif not self.conn.trailing_data[0] and self.cycle is not None and self._head_timer is not None:
                self._head_timer.cancel()  # between requests: the keep-alive timer is the one that counts
                self._head_timer = None
            return
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        if state is h11.SEND_BODY:
            if self._body_timer is None:
                self._body_timer = self.loop.call_later(self.limits.body_timeout, self._body_timed_out)
        elif self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None

    def _cancel_timers(self) -> None:
        for timer in (self._head_timer, self._body_timer):
            if timer is not None:
                timer.cancel()
        self._head_timer = self._body_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.transport.is_closing() or not self._waiting_for_head():
            return
        if self.conn.trailing_data[0]:  # half a head: say why; a socket that sent nothing is just closed
            self.transport.write(
                _raw_response(
                    408, "Request Timeout", f"request head not received within {self.limits.header_timeout:g} s\n"
                )
            )
        self._close()

    def _body_timed_out(self) -> None:
        self._body_timer = None
        if self.transport.is_closing() or self.conn.their_state is not h11.SEND_BODY:
            return
        cycle = self.cycle
        if cycle is not None and not cycle.response_started:
            cycle.response_started = True
            self.transport.write(
                _raw_response(
                    408, "Request Timeout", f"request body not received within {self.limits.body_timeout:g} s\n"
                )
            )
        self._close()

    def _close(self) -> None:
        """Close now; the app (if it is waiting on the body) is told the client left: ``http.disconnect``."""
        self._cancel_timers()
        if self.cycle is not None and not self.cycle.response_complete:
            self.cycle.disconnected = True
            self.cycle.message_event.set()
        self.transport.close()

    def _evict_one(self) -> bool:
        """At the cap: close the connection that has waited longest for a request head (an idle keep-alive
        socket or a slow one), so that a new client gets in; False when every connection is busy."""
        idle = [
            c
            for c in self.connections
            if c is not self
            and isinstance(c, GuardedH11Protocol)
            and c._waiting_for_head()
            and not c.transport.is_closing()
        ]
        if not idle:
            return False
        oldest = min(idle, key=lambda c: c._idle_since)
        oldest._close()
        self.connections.discard(oldest)
        return True


# ----------------------------------------------------------------------------------------------- logging
_RESOURCE_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


class RateLimitedResourceErrors(logging.Filter):
    """Let one "out of resources" error (EMFILE, ENFILE, ENOBUFS, ENOMEM: asyncio's failed ``accept``) through
    per ``interval`` seconds, as one line counting those held back; everything else passes unchanged.

    Without it a server out of descriptors logs a traceback for every accept it retries (the audit saw 115 MB
    in 20 s)."""

    def __init__(self, interval: float = 10.0) -> None:
        super().__init__()
        self.interval = interval
        self._last = -float("inf")
        self._held = 0

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if not (isinstance(exc, OSError) and exc.errno in _RESOURCE_ERRNOS):
            return True
        now = time.monotonic()
        if now - self._last < self.interval:
            self._held += 1
            return False
        held = f" ({self._held} more in the last {self.interval:g} s not logged)" if self._held else ""
        record.msg = f"{record.getMessage()}: {exc}{held}; connections already open are still served"
        record.args = ()
        record.exc_info = record.exc_text = None
        self._last, self._held = now, 0
        return True


def install_log_filters(interval: float = 10.0) -> None:
    """Add :class:`RateLimitedResourceErrors` to the loggers that report failed accepts (asyncio's and
    uvicorn's), once."""
    for name in ("asyncio", "uvicorn.error"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, RateLimitedResourceErrors) for f in logger.filters):
            logger.addFilter(RateLimitedResourceErrors(interval))
