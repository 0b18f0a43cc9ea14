"""Memory and latency of the web service under maximum-size requests, on loopback.

The server is the real app with ``serve``'s defaults (``Limits()``: 4 MiB bodies, 4096 px a side, 16 M pixels;
``ConnectionLimits()``), one uvicorn worker in its own process, over a small index (``--items`` random codes,
as in ``bench_service.py``). Its memory is read from ``/proc/PID/status``: the peak is ``VmHWM`` after resetting
it (``/proc/PID/clear_refs``), cross-checked by polling ``VmRSS`` every 5 ms. Measured:

1. idle RSS (after a few small searches), in a fresh server for each burst;
2. peak RSS under 16 concurrent uploads of a 4000 x 4000 RGBA 16-bit PNG (~160 KB compressed, inside the pixel
   limit; 128 MB of samples), of the same in 8-bit (64 MB of samples), and under 16 concurrent maximum-size
   JSON bodies: the largest the JSON cap lets through (compact ``[x, y, t]`` points, ~49,000: a valid, very
   dense drawing) and one the size of the body cap (4 MiB, ~196,000 points: refused);
3. the median latency of a small search (one client, one at a time) alone, then while 4 clients keep sending
   each of those.

    python benchmarks/bench_memory_server.py        -> benchmarks/results/memory_server.json, memory_server.md

Bounded: a fixed number of requests, a per-request timeout and ``--time-limit`` seconds overall; loopback only.
Linux only (``/proc``).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import socket
import statistics
import struct
import sys
import threading
import time
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, machine_info, write_results
from bench_service import query_payloads

MB = 1024 * 1024


def build_app(items: int, nbits: int, seed: int) -> Any:
    """The app over one collection ``bench`` of ``items`` random ``nbits`` codes with labels and a pixel-LSH
    encoder (what is measured here is the server's memory under large requests, not a model)."""
    import numpy as np
    import torch

    torch.set_num_threads(1)
    from sketchsearch.data.synthetic import merchant_marks
    from sketchsearch.index.base import create_index
    from sketchsearch.methods.base import create_method
    from sketchsearch.retrieval import Retriever
    from sketchsearch.service import create_app

    method = create_method("lsh", nbits=nbits, seed=seed)
    method.fit(merchant_marks(10, 4, seed=seed))
    retriever = Retriever(method, create_index("numba", nbits=nbits), model_id=f"bench-lsh-{nbits}")
    codes = np.random.default_rng(seed).integers(0, 256, size=(items, nbits // 8), dtype=np.uint8)
    retriever.add([], labels=[f"class_{i % 345:03d}" for i in range(items)], encoded=codes)
    return create_app({"bench": retriever})


# ----------------------------------------------------------------------------------------------- the server
def _serve(sock: socket.socket, items: int, nbits: int, seed: int) -> None:
    import uvicorn

    from sketchsearch.cli.serve import fit_open_files, uvicorn_config
    from sketchsearch.service.limits import ConnectionLimits

    app = build_app(items, nbits, seed)  # create_app with the default Limits, as `serve` has them
    connections = ConnectionLimits()
    fit_open_files(connections.max_connections)
    uvicorn.Server(uvicorn_config(app, connections)).run(sockets=[sock])


def status_kb(pid: int, key: str) -> int:
    """``key`` (``VmRSS``, ``VmHWM``) of process ``pid`` in kB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


class PeakRSS:
    """The peak resident memory of ``pid`` while the block runs: ``VmHWM`` after a reset (where the kernel
    allows it) and the maximum of ``VmRSS`` polled every 5 ms."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.polled_kb = 0
        self.hwm_kb: int | None = None
        self._stop = threading.Event()

    def __enter__(self) -> PeakRSS:  # noqa: PYI034 (a plain class: Self needs typing_extensions on 3.10)
        try:
            with open(f"/proc/{self.pid}/clear_refs", "w") as f:
                f.write("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
            self._hwm_reset = True
        except OSError:
            self._hwm_reset = False
        self.polled_kb = status_kb(self.pid, "VmRSS")
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def _poll(self) -> None:
        while not self._stop.wait(0.005):
            try:
                self.polled_kb = max(self.polled_kb, status_kb(self.pid, "VmRSS"))
            except (OSError, KeyError):
                return

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        if self._hwm_reset:
            self.hwm_kb = status_kb(self.pid, "VmHWM")

    @property
    def peak_mb(self) -> float:
        return round(max(self.polled_kb, self.hwm_kb or 0) / 1024, 1)


def rss_mb(pid: int) -> float:
    return round(status_kb(pid, "VmRSS") / 1024, 1)


# ----------------------------------------------------------------------------------------------- the requests
def png_rgba(side: int = 4000, bits: int = 16) -> bytes:
    """A ``side`` x ``side`` RGBA PNG of ``bits`` (8 or 16) per sample, opaque white with a dark cross: tiny
    compressed, ``bits // 2`` bytes a pixel decoded (4000 px, 16-bit: 128 MB of samples; 8-bit: 64 MB)."""
    px = bits // 8 * 4
    white = b"\xff" * px * side
    dark_px = b"\x00" * (px * 3 // 4) + b"\xff" * (px // 4)
    band = side // 20
    lo, hi = side // 2 - band // 2, side // 2 + band // 2
    cross_row = white[: px * lo] + dark_px * (hi - lo) + white[px * hi :]
    bar_row = white[: px * (side // 10)] + dark_px * (side * 8 // 10) + white[px * (side * 9 // 10) :]
    z = zlib.compressobj(9)
    idat = b"".join(z.compress(b"\0" + (bar_row if lo <= y < hi else cross_row)) for y in range(side)) + z.flush()

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", side, side, bits, 6, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def max_json_body(max_bytes: int) -> bytes:
    """A search body just under ``max_bytes``: compact ``[x, y, t]`` points in strokes of 100."""
    head, tail = b'{"collection": "bench", "k": 10, "strokes": [', b"]}"
    stroke = b"[" + b",".join(b"[%d.4,%d.8,%d.1]" % (100 + i, 500 + i % 7, 9000 + 16 * i) for i in range(100)) + b"],"
    n = (max_bytes - len(head) - len(tail) - 64) // len(stroke)
    return head + (stroke * n)[:-1] + tail


Send = Callable[[Any], int]


def upload(png: bytes) -> Send:
    def send(c: Any) -> int:
        files = {"image": ("big.png", png, "image/png")}
        return c.post("/api/search", files=files, data={"k": "10", "collection": "bench"}).status_code

    return send


def post_json(body: bytes) -> Send:
    def send(c: Any) -> int:
        return c.post("/api/search", content=body, headers={"content-type": "application/json"}).status_code

    return send


def concurrent(url: str, send: Send, n: int, timeout: float) -> tuple[Counter[str], float]:
    """``n`` requests at once (one thread and connection each): their outcomes and the wall seconds."""
    import httpx

    outcomes: Counter[str] = Counter()
    lock = threading.Lock()
    barrier = threading.Barrier(n)

    def one() -> None:
        with httpx.Client(base_url=url, timeout=timeout) as c:
            barrier.wait()
            try:
                key = f"HTTP {send(c)}"
            except httpx.HTTPError as e:
                key = type(e).__name__
        with lock:
            outcomes[key] += 1

    t0 = time.perf_counter()
    threads = [threading.Thread(target=one) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return outcomes, time.perf_counter() - t0


def small_search_latency(url: str, payloads: list[bytes], n: int, timeout: float) -> dict[str, Any]:
    """``n`` small searches one after another on one connection: median and p90 client-side latency (ms)."""
    import httpx

    lat, errors = [], Counter()
    with httpx.Client(base_url=url, timeout=timeout) as c:
        for i in range(n):
            t0 = time.perf_counter()
            try:
                r = c.post(
                    "/api/search", content=payloads[i % len(payloads)], headers={"content-type": "application/json"}
                )
                ok = r.status_code == 200
            except httpx.HTTPError as e:
                ok, r = False, type(e).__name__
            if ok:
                lat.append((time.perf_counter() - t0) * 1000)
            else:
                errors[str(getattr(r, "status_code", r))] += 1
    return {
        "searches_ok": len(lat),
        "errors": dict(errors),
        "median_ms": round(statistics.median(lat), 1) if lat else None,
        "p90_ms": round(sorted(lat)[int(0.9 * (len(lat) - 1))], 1) if lat else None,
    }


def under_load(
    url: str, send: Send, clients: int, probe: Callable[[], dict[str, Any]], timeout: float
) -> dict[str, Any]:
    """``probe()`` while ``clients`` threads keep sending ``send`` requests (each its own connection)."""
    import httpx

    stop = threading.Event()
    outcomes: Counter[str] = Counter()
    lock = threading.Lock()

    def loop() -> None:
        with httpx.Client(base_url=url, timeout=timeout) as c:
            while not stop.is_set():
                try:
                    key = f"HTTP {send(c)}"
                except httpx.HTTPError as e:
                    key = type(e).__name__
                with lock:
                    outcomes[key] += 1

    threads = [threading.Thread(target=loop, daemon=True) for _ in range(clients)]
    for t in threads:
        t.start()
    time.sleep(1.0)  # the load is running before the first probe
    try:
        result = probe()
    finally:
        stop.set()
        for t in threads:
            t.join(timeout)
    return {**result, "load_requests": dict(outcomes)}


@contextmanager
def serving(args: argparse.Namespace, payloads: list[bytes], deadline: float) -> Iterator[tuple[str, int]]:
    """A fresh server process (memory measured from its own idle state), warmed up by 10 small searches:
    yields its URL and pid."""
    import httpx

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))  # loopback only
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    proc = mp.get_context("spawn").Process(target=_serve, args=(sock, args.items, args.nbits, args.seed), daemon=True)
    proc.start()
    try:
        while True:
            if time.monotonic() > deadline or not proc.is_alive():
                raise SystemExit(f"the server did not come up (alive={proc.is_alive()})")
            try:
                if httpx.get(url + "/api/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        small_search_latency(url, payloads, 10, args.request_timeout)  # warm-up: imports, caches
        time.sleep(1.0)
        assert proc.pid is not None
        yield url, proc.pid
    finally:
        proc.terminate()
        proc.join(10)
        sock.close()


# ----------------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--items", type=int, default=10_000)
    ap.add_argument("--nbits", type=int, default=64)
    ap.add_argument("--concurrent", type=int, default=16, help="simultaneous maximum-size requests")
    ap.add_argument("--load-clients", type=int, default=4, help="clients sending maximum-size requests in a loop")
    ap.add_argument("--searches", type=int, default=40, help="small searches timed in each latency phase")
    ap.add_argument("--side", type=int, default=4000, help="the 16-bit RGBA PNG's side in pixels")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--request-timeout", type=float, default=120.0)
    ap.add_argument("--time-limit", type=float, default=900.0, help="seconds for the whole run")
    ap.add_argument("--out", type=Path, default=RESULTS / "memory_server")
    args = ap.parse_args(argv)
    if not Path("/proc/self/status").exists():
        raise SystemExit("this benchmark reads /proc: Linux only")
    from sketchsearch.service import Limits

    limits = Limits()
    png = png_rgba(args.side, 16)
    png8 = png_rgba(args.side, 8)
    json_body = max_json_body(min(limits.max_json_bytes, limits.max_body_bytes))
    huge_body = max_json_body(limits.max_body_bytes)
    payloads, _ = query_payloads(10, 10, args.seed)  # (request bodies, where the drawings came from)
    load_before = os.getloadavg()[0]

    deadline = time.monotonic() + args.time_limit
    phases: dict[str, Any] = {}

    def burst(server: tuple[str, int], name: str, send: Send) -> None:
        url, pid = server
        before = rss_mb(pid)
        with PeakRSS(pid) as peak:
            outcomes, wall = concurrent(url, send, args.concurrent, args.request_timeout)
        time.sleep(2.0)
        phases[name] = {
            "rss_before_mb": before,
            "peak_rss_mb": peak.peak_mb,
            "peak_over_before_mb": round(peak.peak_mb - before, 1),
            "rss_2s_after_mb": rss_mb(pid),
            "outcomes": dict(outcomes),
            "wall_s": round(wall, 2),
        }
        print(name, phases[name], flush=True)

    with serving(args, payloads, deadline) as server:
        phases["idle_rss_mb"] = rss_mb(server[1])
        burst(server, "uploads_16bit_png", upload(png))
    with serving(args, payloads, deadline) as server:
        burst(server, "uploads_8bit_png", upload(png8))
    with serving(args, payloads, deadline) as server:
        phases["idle_rss_mb_json"] = rss_mb(server[1])
        burst(server, "json_bodies_at_json_cap", post_json(json_body))
        burst(server, "json_bodies_at_body_cap", post_json(huge_body))
    with serving(args, payloads, deadline) as (url, pid):

        def probe() -> dict[str, Any]:
            return small_search_latency(url, payloads, args.searches, args.request_timeout)

        phases["latency_alone"] = probe()
        print("latency_alone", phases["latency_alone"], flush=True)
        loads = {
            "latency_with_json_at_json_cap": post_json(json_body),
            "latency_with_json_at_body_cap": post_json(huge_body),
            "latency_with_png_uploads": upload(png),
            "latency_with_png8_uploads": upload(png8),
        }
        for name, send in loads.items():
            if time.monotonic() > deadline:
                phases[name] = "skipped: --time-limit reached"
                continue
            phases[name] = under_load(url, send, args.load_clients, probe, args.request_timeout)
            print(name, phases[name], flush=True)
        phases["final_rss_mb"] = rss_mb(pid)

    out = {
        "benchmark": "service memory and latency under maximum-size requests",
        "items": args.items,
        "nbits": args.nbits,
        "limits": {
            "max_body_bytes": limits.max_body_bytes,
            "max_json_bytes": limits.max_json_bytes,
            "max_points": limits.max_points,
            "max_image_pixels": limits.max_image_pixels,
        },
        "png": {
            "side": args.side,
            "mode": "RGBA 16-bit",
            "bytes": len(png),
            "decoded_samples_mb": args.side**2 * 8 / MB,
        },
        "png8": {
            "side": args.side,
            "mode": "RGBA 8-bit",
            "bytes": len(png8),
            "decoded_samples_mb": args.side**2 * 4 / MB,
        },
        "json_body_bytes": {"at_json_cap": len(json_body), "at_body_cap": len(huge_body)},
        "json_body_points": {"at_json_cap": json_body.count(b"],[") + 1, "at_body_cap": huge_body.count(b"],[") + 1},
        "concurrent": args.concurrent,
        "load_clients": args.load_clients,
        "phases": phases,
        "machine": {**machine_info(), "load_average_1min_before": round(load_before, 2)},
        "command": "python benchmarks/bench_memory_server.py " + " ".join(argv if argv is not None else sys.argv[1:]),
    }
    write_results(args.out, out, markdown(out))
    print(markdown(out))
    return out


def markdown(out: dict[str, Any]) -> str:
    p, m = out["phases"], out["machine"]

    def burst_row(label: str, key: str) -> str:
        b = p.get(key)
        if not isinstance(b, dict):
            return f"| {label} | | | | | {b} |"
        outcomes = ", ".join(f"{k} x{v}" for k, v in sorted(b["outcomes"].items()))
        return (
            f"| {label} | {b['rss_before_mb']:,} | {b['peak_rss_mb']:,} | +{b['peak_over_before_mb']:,} | "
            f"{b['rss_2s_after_mb']:,} | {outcomes} |"
        )

    def lat_row(label: str, key: str) -> str:
        lat = p.get(key)
        if not isinstance(lat, dict):
            return f"| {label} | | | {lat} |"
        load = ", ".join(f"{k} x{v}" for k, v in sorted(lat.get("load_requests", {}).items())) or "-"
        return f"| {label} | {lat['median_ms']} | {lat['p90_ms']} | {lat['searches_ok']} ok; load: {load} |"

    kb = out["png"]["bytes"] / 1024
    return "\n".join(
        [
            "# Service memory under maximum-size requests",
            "",
            (
                f"`{out['command'].strip()}` — uvicorn (1 worker) on 127.0.0.1 with `serve`'s default limits "
                f"({out['limits']['max_body_bytes'] / MB:g} MiB bodies, {out['limits']['max_json_bytes'] / MB:g} MiB "
                f"JSON, {out['limits']['max_points']:,} points), {out['items']:,} items; "
                f"{m['cores']} CPUs ({m['cpu']}), 1-minute load average {m['load_average_1min_before']} before the run "
                "(a shared machine). RSS of the server process from /proc (peak: VmHWM after a reset, and VmRSS "
                "polled every 5 ms)."
            ),
            "",
            (
                f"| {out['concurrent']} concurrent requests (a fresh server each) | RSS before (MB) | peak RSS (MB) "
                "| peak over before (MB) | RSS 2 s after (MB) | answers |"
            ),
            "|---|---:|---:|---:|---:|---|",
            burst_row(
                f"{out['png']['side']}x{out['png']['side']} RGBA 16-bit PNG ({kb:.0f} KB) uploads", "uploads_16bit_png"
            ),
            burst_row(
                f"{out['png8']['side']}x{out['png8']['side']} RGBA 8-bit PNG ({out['png8']['bytes'] / 1024:.0f} KB) "
                "uploads",
                "uploads_8bit_png",
            ),
            burst_row(
                f"{out['json_body_bytes']['at_json_cap'] / MB:.2f} MB JSON bodies "
                f"({out['json_body_points']['at_json_cap']:,} points), the JSON cap",
                "json_bodies_at_json_cap",
            ),
            burst_row(
                f"{out['json_body_bytes']['at_body_cap'] / MB:.2f} MB JSON bodies "
                f"({out['json_body_points']['at_body_cap']:,} points), the body cap (same server, after the row above)",
                "json_bodies_at_body_cap",
            ),
            "",
            "| small search (1 client, sequential) | median (ms) | p90 (ms) | |",
            "|---|---:|---:|---|",
            lat_row("alone", "latency_alone"),
            lat_row(f"while {out['load_clients']} clients send JSON at the JSON cap", "latency_with_json_at_json_cap"),
            lat_row(f"while {out['load_clients']} clients send JSON at the body cap", "latency_with_json_at_body_cap"),
            lat_row(f"while {out['load_clients']} clients upload the 16-bit PNG", "latency_with_png_uploads"),
            lat_row(f"while {out['load_clients']} clients upload the 8-bit PNG", "latency_with_png8_uploads"),
            "",
        ]
    )


if __name__ == "__main__":
    main()
