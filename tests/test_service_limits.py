"""What one client may take from the server: a real uvicorn on loopback (in a thread) with 1-2 s timeouts.

Slow request heads, slow bodies and silent sockets are dropped after their timeout; ``/api/health`` keeps
answering while 50 slow sockets are held; at the connection cap the longest-idle socket makes room for a new
client; a body over the limit is answered 413 and its connection closed unread; repeated out-of-descriptor
errors are logged once per interval; every response (pages, API, static files, docs, 404, 422, 500) carries
the security headers. Bounded: every socket and request has a deadline, and the module runs in ~15 s.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from test_service import build_retriever

from sketchsearch.cli.serve import uvicorn_config
from sketchsearch.service import Limits, create_app
from sketchsearch.service.limits import ConnectionLimits, RateLimitedResourceErrors
from sketchsearch.service.pages import PAGE_HEADERS

SRC = Path(__file__).resolve().parents[1] / "src"


@pytest.fixture(scope="module")
def app() -> Any:
    return create_app({"shapes": build_retriever(per_class=2)}, limits=Limits(max_body_bytes=200_000))


@contextmanager
def serving(app: Any, **limits: Any) -> Iterator[tuple[str, int]]:
    """uvicorn with ``ConnectionLimits(**limits)`` in a thread on a free loopback port: yields (host, port)."""
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn_config(app, ConnectionLimits(**limits), log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            pytest.fail("uvicorn did not start within 20 s")
        time.sleep(0.02)
    try:
        yield sock.getsockname()
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


def connect(addr: tuple[str, int], data: bytes = b"") -> socket.socket:
    s = socket.create_connection(addr, timeout=10)
    if data:
        s.sendall(data)
    return s


def read_until_closed(s: socket.socket, limit: float) -> tuple[bytes, float]:
    """Everything the server sends until it closes the socket, and the seconds that took (fails past ``limit``)."""
    t0, got = time.monotonic(), b""
    s.settimeout(limit)
    try:
        while chunk := s.recv(65536):
            got += chunk
    except TimeoutError:
        pytest.fail(f"the server kept the socket open for more than {limit} s (got {got[:80]!r})")
    except ConnectionResetError:
        pass
    return got, time.monotonic() - t0


HEAD = b"GET /api/health HTTP/1.1\r\nHost: test\r\n"  # no blank line: the head is not finished


# ----------------------------------------------------------------------------------------------- timeouts
def test_half_a_request_head_is_answered_408_and_dropped(app: Any) -> None:
    with serving(app, header_timeout=1.0) as addr:
        got, took = read_until_closed(connect(addr, HEAD), limit=5)
    assert got.startswith(b"HTTP/1.1 408 "), got
    assert 0.8 < took < 3, took


def test_a_head_dribbled_byte_by_byte_is_dropped_on_time(app: Any) -> None:
    """Each byte arrives well within the timeout: the deadline is for the whole head, not between bytes."""
    with serving(app, header_timeout=1.0) as addr:
        s = connect(addr)
        t0 = time.monotonic()
        with pytest.raises(OSError):  # BrokenPipe / ConnectionReset once the server has closed
            for byte in HEAD * 10:
                s.send(bytes([byte]))
                time.sleep(0.05)
                if time.monotonic() - t0 > 5:
                    pytest.fail("a dribbled head was not dropped within 5 s")
        assert 0.8 < time.monotonic() - t0 < 3


def test_a_silent_socket_is_closed_without_an_answer(app: Any) -> None:
    with serving(app, header_timeout=1.0) as addr:
        got, took = read_until_closed(connect(addr), limit=5)
    assert got == b"" and 0.8 < took < 3, (got, took)


def test_a_dribbled_body_is_answered_408_and_dropped(app: Any) -> None:
    head = b"POST /api/search HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
    with serving(app, header_timeout=1.0, body_timeout=1.5) as addr:
        s = connect(addr, head)
        t0, got = time.monotonic(), b""
        s.settimeout(0.1)
        while time.monotonic() - t0 < 6:  # a byte every 0.1 s: 1,000 bytes would take 100 s
            try:
                s.send(b" ")
                chunk = s.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                break
            if not chunk:
                break
            got += chunk
        took = time.monotonic() - t0
    assert got.startswith(b"HTTP/1.1 408 ") and b"body" in got, got
    assert 1.3 < took < 3.5, took


def test_an_idle_keep_alive_connection_is_closed(app: Any) -> None:
    with serving(app, keep_alive_timeout=1.0, header_timeout=10.0) as addr:
        got, took = read_until_closed(connect(addr, HEAD + b"\r\n"), limit=5)
    assert got.startswith(b"HTTP/1.1 200 ") and b'"status":"ok"' in got, got
    assert 0.8 < took < 3, took


def test_health_answers_while_50_slow_sockets_are_held(app: Any) -> None:
    """25 half heads and 25 dribbled bodies held open (timeouts 5 s: they outlive the measurement), then 20
    health checks, each on a new connection: all answer, quickly."""
    body_head = (
        b"POST /api/search HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: 9999\r\n\r\n{"
    )
    with serving(app, header_timeout=5.0, body_timeout=5.0) as addr, ExitStack() as stack:
        slow = [stack.enter_context(connect(addr, HEAD if i % 2 else body_head)) for i in range(50)]
        time.sleep(0.2)  # all 50 accepted and parsed
        times = []
        for _ in range(20):
            t0 = time.monotonic()
            r = httpx.get(f"http://{addr[0]}:{addr[1]}/api/health", timeout=5)
            times.append(time.monotonic() - t0)
            assert r.status_code == 200 and r.json()["status"] == "ok"
        assert max(times) < 1.0, times
        for s in slow:  # still held: the server has not dropped them early (the test would measure nothing)
            s.setblocking(False)
            with pytest.raises(BlockingIOError):
                s.recv(1)


def test_at_the_connection_cap_the_longest_idle_socket_makes_room(app: Any) -> None:
    with serving(app, header_timeout=30.0, max_connections=10) as addr, ExitStack() as stack:
        idle = [stack.enter_context(connect(addr)) for _ in range(15)]
        time.sleep(0.2)
        r = httpx.get(f"http://{addr[0]}:{addr[1]}/api/health", timeout=5)
        assert r.status_code == 200
        # the first ones were closed to admit the later ones and the health check; the last ones are held
        first, _ = read_until_closed(idle[0], limit=2)
        assert first == b""
        idle[-1].setblocking(False)
        with pytest.raises(BlockingIOError):
            idle[-1].recv(1)


def test_a_body_over_the_limit_is_refused_and_its_connection_closed_unread(app: Any) -> None:
    """Announced as 10 MB: 413 at once, and the server closes rather than reading (and discarding) the rest."""
    head = b"POST /api/search HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: 10000000\r\n\r\n"
    with serving(app) as addr:
        got, took = read_until_closed(connect(addr, head + b"[" * 65536), limit=5)
    assert got.startswith(b"HTTP/1.1 413 ") and b"connection: close" in got.lower(), got
    assert took < 2, took


# ----------------------------------------------------------------------------------------------- logging
def test_out_of_descriptor_errors_are_logged_once_per_interval() -> None:
    f = RateLimitedResourceErrors(interval=0.3)
    emfile = OSError(24, "Too many open files")

    def record(exc: BaseException | None) -> logging.LogRecord:
        info = (type(exc), exc, None) if exc else None
        return logging.LogRecord(
            "asyncio", logging.ERROR, __file__, 1, "socket.accept() out of system resource", (), info
        )

    passed = [r for r in (record(emfile) for _ in range(500)) if f.filter(r)]
    assert len(passed) == 1 and passed[0].exc_info is None and "Too many open files" in passed[0].getMessage()
    assert f.filter(record(ValueError("other"))) and f.filter(record(None)), "other records pass unchanged"
    time.sleep(0.35)
    later = record(emfile)
    assert f.filter(later) and "499 more" in later.getMessage()


def test_the_connection_cap_fits_the_open_file_limit() -> None:
    """With a hard limit of 300 descriptors, 1,000 connections are lowered to what fits (300 less 128)."""
    code = (
        "import resource; resource.setrlimit(resource.RLIMIT_NOFILE, (300, 300)); "
        "from sketchsearch.cli.serve import fit_open_files; print(fit_open_files(1000), fit_open_files(50))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
        env={"PYTHONPATH": str(SRC)},
    )
    assert out.stdout.split() == ["172", "50"], out
    assert "lowered to 172" in out.stdout + out.stderr


# ----------------------------------------------------------------------------------------------- headers
@pytest.fixture(scope="module")
def client(app: Any) -> Iterator[TestClient]:
    def boom() -> None:
        raise RuntimeError("a bug")

    app.add_api_route("/test-boom", boom)  # a 500 from Starlette's error middleware
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/", 200),
        ("GET", "/api/health", 200),
        ("GET", "/api/collections", 200),
        ("GET", "/api/items/0/thumbnail?collection=shapes", 200),
        ("GET", "/static/app.js", 200),
        ("GET", "/docs", 200),
        ("GET", "/docs-static/swagger-ui.css", 200),
        ("GET", "/openapi.json", 200),
        ("GET", "/no-such-page", 404),
        ("GET", "/api/items/x/thumbnail", 422),
        ("POST", "/api/search", 415),
        ("DELETE", "/api/health", 405),
        ("GET", "/test-boom", 500),
    ],
)
def test_security_headers_on_every_response(client: TestClient, method: str, path: str, status: int) -> None:
    r = client.request(method, path)
    assert r.status_code == status, (r.status_code, r.text[:200])
    assert r.headers["x-content-type-options"] == "nosniff"
    assert r.headers["x-frame-options"] == "DENY"
    assert r.headers["referrer-policy"] == "no-referrer"
    csp = r.headers["content-security-policy"]
    assert "frame-ancestors 'none'" in csp and "default-src 'self'" in csp
    assert "'unsafe-inline'" not in csp.split("script-src")[1].split(";")[0], "no inline script anywhere"
    if path != "/docs":
        assert csp == PAGE_HEADERS["Content-Security-Policy"]


def test_docs_csp_allows_exactly_its_own_inline_script(client: TestClient) -> None:
    r = client.get("/docs")
    scripts = re.findall(r"<script>(.*?)</script>", r.text, flags=re.DOTALL)
    assert len(scripts) == 1 and "SwaggerUIBundle(" in scripts[0]
    digest = base64.b64encode(hashlib.sha256(scripts[0].encode()).digest()).decode()
    script_src = r.headers["content-security-policy"].split("script-src")[1].split(";")[0].split()
    assert script_src == ["'self'", f"'sha256-{digest}'"]


def test_413_over_the_body_limit_carries_the_headers_and_closes(client: TestClient) -> None:
    r = client.post("/api/search", content=b"x" * 300_000, headers={"content-type": "application/json"})
    assert r.status_code == 413 and r.headers["connection"] == "close"
    assert r.headers["x-content-type-options"] == "nosniff"


# ----------------------------------------------------------------------------------------------- JSON bounds
def test_json_bodies_have_their_own_cap_below_uploads() -> None:
    """A JSON search over ``max_json_bytes`` is refused 413 naming it, announced or streamed, though it is
    under ``max_body_bytes`` (what an upload may take)."""
    app = create_app(
        {"shapes": build_retriever(per_class=1)}, limits=Limits(max_body_bytes=4_000_000, max_json_bytes=50_000)
    )
    body = b'{"strokes": [[' + b"[1,2]," * 20_000 + b"[1,2]]]}"
    with TestClient(app, raise_server_exceptions=False) as c:
        declared = c.post("/api/search", content=body, headers={"content-type": "application/json"})
        streamed = c.post(
            "/api/search", content=iter([body[:40_000], body[40_000:]]), headers={"content-type": "application/json"}
        )
    for r in (declared, streamed):
        assert r.status_code == 413 and "body (JSON): at most 50000 bytes" in r.json()["detail"], r.text
        assert r.headers["connection"] == "close"


def test_too_many_values_are_refused_before_parsing(monkeypatch: pytest.MonkeyPatch) -> None:
    """More commas than ``max_points`` points can hold: 413 without ``json.loads`` ever being called; a body
    just within the count is parsed (and then checked point by point, as before)."""
    import json
    from types import SimpleNamespace

    from sketchsearch.service import decode

    app = create_app({"shapes": build_retriever(per_class=1)}, limits=Limits(max_points=1000))
    parsed = []
    monkeypatch.setattr(decode, "json", SimpleNamespace(loads=lambda b: parsed.append(len(b)) or json.loads(b)))

    def body(n: int) -> bytes:
        return b'{"strokes": [[' + b",".join(b"[%d,2,3]" % i for i in range(n)) + b"]]}"

    with TestClient(app, raise_server_exceptions=False) as c:
        r = c.post("/api/search", content=body(2000), headers={"content-type": "application/json"})
        assert r.status_code == 413 and "at most 1000 points" in r.json()["detail"] and not parsed, r.text
        r = c.post("/api/search", content=body(1100), headers={"content-type": "application/json"})
        assert r.status_code == 413 and len(parsed) == 1, r.text  # parsed, then refused by the point count
        r = c.post("/api/search", content=body(900), headers={"content-type": "application/json"})
        assert r.status_code == 200, r.text


def test_large_json_searches_take_turns_and_small_ones_never_wait() -> None:
    import asyncio

    from sketchsearch.service.state import ServiceState

    state = ServiceState.build({"shapes": build_retriever(per_class=1)}, Limits(large_json_bytes=1000))

    async def scenario() -> list[str]:
        order: list[str] = []

        async def search(name: str, size: int, hold: float) -> None:
            async with state.large_search_slot(size):
                order.append(name + " in")
                await asyncio.sleep(hold)
                order.append(name + " out")

        first = asyncio.create_task(search("large1", 5000, 0.2))
        await asyncio.sleep(0.01)
        second = asyncio.create_task(search("large2", 5000, 0.0))
        await asyncio.sleep(0.01)
        await asyncio.wait_for(search("small", 500, 0.0), timeout=0.1)  # passes while large1 holds the slot
        await asyncio.gather(first, second)
        return order

    assert asyncio.run(scenario()) == ["large1 in", "small in", "small out", "large1 out", "large2 in", "large2 out"]
