"""QuickDraw downloads against a local HTTP server on 127.0.0.1 (loopback only): Range resume, verification."""

from __future__ import annotations

import hashlib
import http.server
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sketchsearch.data.download import DownloadError, download_file, download_quickdraw, verify_ndjson


def _ndjson(n: int, word: str) -> bytes:
    lines = [json.dumps({"word": word, "key_id": str(i), "drawing": [[[i, i + 5], [0, 9], [0, 30]]]}) for i in range(n)]
    return ("\n".join(lines) + "\n").encode()


class _Server:
    """Serves ``files`` (path -> bytes) with Range support. ``cut`` (path -> bytes to send) makes the next
    request for that path send only that many body bytes and drop the connection."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.cut: dict[str, int] = {}
        self.ranges: list[tuple[str, str | None]] = []
        self.honour_range = True
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *a: Any) -> None:
                pass

            def do_GET(self) -> None:
                body = server.files.get(self.path)
                rng = self.headers.get("Range")
                server.ranges.append((self.path, rng))
                if body is None:
                    self.send_error(404)
                    return
                start = 0
                if rng and server.honour_range:
                    start = int(rng.split("=")[1].split("-")[0])
                    if start >= len(body):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(body)}")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(body) - start))
                self.end_headers()
                n = server.cut.pop(self.path, None)
                self.wfile.write(body[start:] if n is None else body[start : start + n])
                if n is not None:
                    self.wfile.flush()
                    self.close_connection = True

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server() -> Iterator[_Server]:
    s = _Server()
    yield s
    s.close()


def test_download_quickdraw_classes(server: _Server, tmp_path: Path) -> None:
    server.files["/raw/cat.ndjson"] = _ndjson(20, "cat")
    server.files["/raw/The%20Eiffel%20Tower.ndjson"] = _ndjson(5, "The Eiffel Tower")
    res = download_quickdraw(["cat", "The Eiffel Tower"], tmp_path, base_url=server.url, retries=0)
    assert [r.status for r in res] == ["downloaded", "downloaded"] and [r.lines for r in res] == [20, 5]
    assert (tmp_path / "cat.ndjson").read_bytes() == server.files["/raw/cat.ndjson"]
    assert not list(tmp_path.glob("*.part"))
    # present files are kept, not fetched again
    n_requests = len(server.ranges)
    assert download_quickdraw(["cat"], tmp_path, base_url=server.url)[0].status == "present"
    assert len(server.ranges) == n_requests
    # the files read back through the streaming reader
    from sketchsearch.data.formats.quickdraw import read_quickdraw_ndjson

    assert sum(1 for _ in read_quickdraw_ndjson(tmp_path)) == 25


def test_interrupted_download_resumes_with_range(server: _Server, tmp_path: Path) -> None:
    body = _ndjson(200, "cat")
    server.files["/raw/cat.ndjson"] = body
    server.cut["/raw/cat.ndjson"] = 1000
    with pytest.raises(DownloadError, match="rerun to resume"):
        download_quickdraw(["cat"], tmp_path, base_url=server.url, retries=0)
    part = tmp_path / "cat.ndjson.part"
    assert part.stat().st_size == 1000 and not (tmp_path / "cat.ndjson").exists()
    res = download_quickdraw(["cat"], tmp_path, base_url=server.url, retries=0)
    assert res[0].status == "resumed" and res[0].lines == 200
    assert server.ranges[-1] == ("/raw/cat.ndjson", "bytes=1000-")
    assert (tmp_path / "cat.ndjson").read_bytes() == body and not part.exists()


def test_retry_within_one_call(server: _Server, tmp_path: Path) -> None:
    body = _ndjson(100, "dog")
    server.files["/f.ndjson"] = body
    server.cut["/f.ndjson"] = 333
    size, resumed = download_file(server.url + "/f.ndjson", tmp_path / "f.ndjson", retries=2, backoff=0)
    assert size == len(body) and resumed and (tmp_path / "f.ndjson").read_bytes() == body


def test_server_ignoring_range_restarts(server: _Server, tmp_path: Path) -> None:
    body = _ndjson(50, "cat")
    server.files["/f.ndjson"] = body
    (tmp_path / "f.ndjson.part").write_bytes(b"garbage that must not survive")
    server.honour_range = False
    _, resumed = download_file(server.url + "/f.ndjson", tmp_path / "f.ndjson", retries=0)
    assert not resumed and (tmp_path / "f.ndjson").read_bytes() == body


def test_sha256_verified_and_published(server: _Server, tmp_path: Path) -> None:
    body = _ndjson(10, "cat")
    server.files["/raw/cat.ndjson"] = body
    with pytest.raises(DownloadError, match="sha256"):
        download_quickdraw(["cat"], tmp_path, base_url=server.url, sha256={"cat": "0" * 64}, retries=0)
    assert not list(tmp_path.iterdir())  # nothing half-written is left behind
    server.files["/raw/cat.ndjson.sha256"] = f"{hashlib.sha256(body).hexdigest()}  cat.ndjson\n".encode()
    res = download_quickdraw(["cat"], tmp_path, base_url=server.url, retries=0)
    assert res[0].sha256 == hashlib.sha256(body).hexdigest()


def test_bad_content_and_missing_class(server: _Server, tmp_path: Path) -> None:
    server.files["/raw/cat.ndjson"] = b"<html>quota exceeded</html>\n"
    with pytest.raises(DownloadError, match="line 1 is not JSON"):
        download_quickdraw(["cat"], tmp_path, base_url=server.url, retries=0)
    assert (tmp_path / "cat.ndjson.invalid").exists() and not (tmp_path / "cat.ndjson").exists()
    with pytest.raises(DownloadError, match="HTTP 404"):
        download_quickdraw(["unicorn"], tmp_path, base_url=server.url, retries=0)
    with pytest.raises(ValueError, match="class name"):
        download_quickdraw(["../etc"], tmp_path, base_url=server.url)


def test_verify_ndjson(tmp_path: Path) -> None:
    p = tmp_path / "x.ndjson"
    p.write_bytes(_ndjson(3, "cat") + b'{"word": "cat", "drawing": [[[1')
    with pytest.raises(DownloadError, match="line 4"):
        verify_ndjson(p)
    p.write_bytes(_ndjson(3, "cat"))
    assert verify_ndjson(p) == 3


def test_cli_download_quickdraw(server: _Server, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from sketchsearch.cli import main

    server.files["/simplified/cat.ndjson"] = _ndjson(4, "cat")
    server.files["/simplified/dog.ndjson"] = _ndjson(6, "dog")
    with pytest.raises(SystemExit) as e:
        main(
            [
                "data",
                "download",
                "quickdraw",
                "--classes",
                "cat,dog",
                "--kind",
                "simplified",
                "--out",
                str(tmp_path),
                "--base-url",
                server.url,
                "--json",
            ]
        )
    assert e.value.code in (0, None)
    rows = json.loads(capsys.readouterr().out)
    assert [(r["class"], r["records"], r["status"]) for r in rows] == [
        ("cat", 4, "downloaded"),
        ("dog", 6, "downloaded"),
    ]
    with pytest.raises(SystemExit) as e:
        main(
            [
                "data",
                "download",
                "quickdraw",
                "-c",
                "unicorn",
                "--out",
                str(tmp_path),
                "--base-url",
                server.url,
                "--retries",
                "0",
            ]
        )
    assert e.value.code == 2
