"""Download QuickDraw's full per-class files (resumable, verified, atomic), for users with network access.

Google publishes each class as one file (``https://storage.googleapis.com/quickdraw_dataset/full/<kind>/<class>.ndjson``;
raw: ~100 MB-1 GB a class with timing, simplified: ~40-200 MB). A download:

* writes ``<class>.ndjson.part`` and resumes it with an HTTP ``Range`` request after an interruption (the same
  call retries ``retries`` times; a later call resumes what an earlier one left);
* verifies the size against ``Content-Range`` / ``Content-Length``, a SHA-256 when one is given (``sha256=``)
  or published beside the file (``<url>.sha256``), and that every line is a JSON object with a ``drawing``
  (``check_lines``): a truncated or HTML error page never passes as data;
* renames the verified ``.part`` to ``<class>.ndjson`` (atomic: a reader never sees half a file); a file
  already there is kept (``overwrite=False``).

Hand-written on ``urllib`` (stdlib): the few lines of Range/resume logic do not justify a dependency, and
QuickDraw's bucket needs no authentication. Huge files are then read by the streaming ndjson reader
(``sketchsearch.data.formats.quickdraw``).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ..errors import SketchSearchError

__all__ = [
    "QUICKDRAW_BASE_URL",
    "DownloadError",
    "DownloadResult",
    "download_file",
    "download_quickdraw",
    "verify_ndjson",
]

QUICKDRAW_BASE_URL = "https://storage.googleapis.com/quickdraw_dataset/full"
_CHUNK = 1 << 20


class DownloadError(SketchSearchError):
    """A download failed or did not verify; ``url`` and ``path`` say which, the message why."""

    def __init__(self, url: str, path: str | Path, reason: str) -> None:
        self.url, self.path, self.reason = url, str(path), reason
        super().__init__(f"{url} -> {path}: {reason}")


@dataclass
class DownloadResult:
    name: str
    path: Path
    bytes: int
    status: Literal["downloaded", "resumed", "present"]
    lines: int | None = None
    sha256: str | None = None
    seconds: float = 0.0


def verify_ndjson(path: str | Path, require: str = "drawing") -> int:
    """Count the lines of an ndjson file, checking each is a JSON object holding ``require``.

    Returns the number of records; raises DownloadError naming the first bad line.
    """
    n = 0
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            try:
                obj = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise DownloadError(
                    "", path, f"line {lineno} is not JSON ({e}); truncated or not an ndjson file"
                ) from None
            if not isinstance(obj, dict) or require not in obj:
                raise DownloadError("", path, f"line {lineno} is not a QuickDraw record (no {require!r} field)")
            n += 1
    if n == 0:
        raise DownloadError("", path, "no records (empty file)")
    return n


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def _published_sha256(url: str, timeout: float) -> str | None:
    """The hex digest in ``<url>.sha256`` when the server has one (``sha256sum`` format accepted)."""
    try:
        with urllib.request.urlopen(url + ".sha256", timeout=timeout) as r:
            text = r.read(4096).decode("ascii", "replace")
    except (urllib.error.URLError, OSError, ValueError):
        return None
    m = re.match(r"\s*([0-9a-fA-F]{64})\b", text)
    return m.group(1).lower() if m else None


_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)")


def download_file(
    url: str,
    dest: str | Path,
    *,
    sha256: str | None = None,
    retries: int = 3,
    timeout: float = 60.0,
    backoff: float = 1.0,
    progress: Callable[[int, int | None], None] | None = None,
) -> tuple[int, bool]:
    """Download ``url`` to ``dest`` through ``dest.part`` (resumed with Range), verify the size (and
    ``sha256`` when given), then rename. Returns ``(bytes, resumed)``. Raises DownloadError."""
    dest = Path(dest)
    part = dest.with_name(dest.name + ".part")
    dest.parent.mkdir(parents=True, exist_ok=True)
    resumed = False
    total: int | None = None
    attempt = 0
    while True:
        have = part.stat().st_size if part.exists() else 0
        req = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                if have and r.status == 206:
                    m = _CONTENT_RANGE.match(r.headers.get("Content-Range", ""))
                    if not m or int(m.group(1)) != have:
                        raise DownloadError(
                            url,
                            dest,
                            f"server answered range {r.headers.get('Content-Range')!r} to a resume at byte {have}",
                        )
                    total = int(m.group(3)) if m.group(3) != "*" else None
                    mode, resumed = "ab", True
                else:  # 200: the server ignored the Range (or there was none): start over
                    length = r.headers.get("Content-Length")
                    total = int(length) if length is not None else None
                    mode, have = "wb", 0
                with open(part, mode) as f:
                    done = have
                    while chunk := r.read(_CHUNK):
                        f.write(chunk)
                        done += len(chunk)
                        if progress:
                            progress(done, total)
                    f.flush()
                    os.fsync(f.fileno())
        except urllib.error.HTTPError as e:
            if e.code == 416 and have:  # nothing left past our bytes: the part may be complete; verify below
                m = _CONTENT_RANGE.match(e.headers.get("Content-Range", "") or "")
                total = int(m.group(3)) if m and m.group(3) != "*" else have
            elif e.code in (404, 403, 401, 400):
                raise DownloadError(
                    url, dest, f"HTTP {e.code} {e.reason} (check the class name and the base URL)"
                ) from None
            elif attempt < retries:
                attempt += 1
                time.sleep(backoff * attempt)
                continue
            else:
                raise DownloadError(
                    url, dest, f"HTTP {e.code} {e.reason} after {attempt + 1} attempts; rerun to resume"
                ) from None
        except (
            urllib.error.URLError,
            OSError,
            ConnectionError,
        ) as e:  # incl. IncompleteRead, timeouts, resets
            if attempt < retries:
                attempt += 1
                time.sleep(backoff * attempt)
                continue
            kept = part.stat().st_size if part.exists() else 0
            raise DownloadError(
                url,
                dest,
                f"{e} after {attempt + 1} attempts; {kept} bytes kept in {part.name}, rerun to resume",
            ) from None
        size = part.stat().st_size
        if total is not None and size < total:
            if attempt < retries:  # the connection closed early without an error
                attempt += 1
                continue
            raise DownloadError(url, dest, f"incomplete: {size} of {total} bytes; rerun to resume")
        if total is not None and size != total:
            part.unlink()
            raise DownloadError(
                url, dest, f"size {size} does not match the server's {total} bytes; partial file removed"
            )
        break
    if sha256 is not None:
        got = _sha256(part)
        if got != sha256.lower():
            part.unlink()
            raise DownloadError(url, dest, f"sha256 {got} does not match the expected {sha256}; partial file removed")
    os.replace(part, dest)
    return size, resumed


def download_quickdraw(
    classes: Iterable[str],
    out_dir: str | Path,
    kind: Literal["raw", "simplified"] = "raw",
    base_url: str = QUICKDRAW_BASE_URL,
    *,
    sha256: dict[str, str] | None = None,
    check_lines: bool = True,
    overwrite: bool = False,
    retries: int = 3,
    timeout: float = 60.0,
    progress: Callable[[str, int, int | None], None] | None = None,
) -> list[DownloadResult]:
    """Download ``<base_url>/<kind>/<class>.ndjson`` for each class into ``out_dir/<class>.ndjson``.

    ``sha256``: expected digests by class name (else a published ``.sha256`` beside the file is used when
    there is one). A verified file already present is kept unless ``overwrite``. Raises DownloadError on the
    first class that fails (the classes before it stay downloaded; rerun to continue).
    """
    if kind not in ("raw", "simplified"):
        raise ValueError(f"kind must be 'raw' or 'simplified', got {kind!r}")
    out = Path(out_dir)
    results = []
    for name in classes:
        name = name.strip()
        if not name or "/" in name or name.startswith("."):
            raise ValueError(f"not a QuickDraw class name: {name!r}")
        url = f"{base_url.rstrip('/')}/{kind}/{urllib.parse.quote(name)}.ndjson"
        dest = out / f"{name}.ndjson"
        t0 = time.perf_counter()
        if dest.exists() and not overwrite:
            results.append(DownloadResult(name, dest, dest.stat().st_size, "present"))
            continue
        expected = (sha256 or {}).get(name) or _published_sha256(url, timeout)
        cb = (lambda done, total, _n=name: progress(_n, done, total)) if progress else None
        size, resumed = download_file(url, dest, sha256=expected, retries=retries, timeout=timeout, progress=cb)
        lines = None
        if check_lines:
            try:
                lines = verify_ndjson(dest)
            except DownloadError as e:
                bad = dest.with_name(dest.name + ".invalid")
                os.replace(dest, bad)
                raise DownloadError(url, dest, f"{e.reason}; moved to {bad.name}") from None
        results.append(
            DownloadResult(
                name, dest, size, "resumed" if resumed else "downloaded", lines, expected, time.perf_counter() - t0
            )
        )
    return results
