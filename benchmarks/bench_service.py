"""Load benchmark of the web service on loopback: N concurrent clients, M searches by strokes, one index.

The server is the real app (``create_app`` + uvicorn, one worker) in its own process; the clients are
``httpx.AsyncClient`` tasks in this one, so neither steals the other's interpreter lock.

The index holds ``--items`` random ``--nbits``-bit codes: a search's cost depends on the number of codes and
their length, not on what they encode, so random codes stand in for an encoded collection of that size
(building 100,000 real sketches would only time the encoder). Queries are real strokes (the embedded
synthetic marks, with times, as the page sends them), encoded per request by a pixel-LSH model, then
searched exhaustively in the Hamming index through ``Retriever.search``.

    python benchmarks/bench_service.py            # 16 clients, 2,000 searches, 100,000 items
    -> benchmarks/results/service.json, service.md

Bounded: a fixed number of searches and ``--time-limit`` seconds overall; loopback only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import socket
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, machine_info, write_results


def build_app(items: int, nbits: int, seed: int) -> Any:
    """The app over one collection of ``items`` random codes with labels (see the module docstring)."""
    import torch

    torch.set_num_threads(1)
    from sketchsearch.data.synthetic import merchant_marks
    from sketchsearch.index.hamming import create_index
    from sketchsearch.methods import create_method
    from sketchsearch.retrieval import Retriever
    from sketchsearch.service import create_app

    method = create_method("lsh", nbits=nbits, seed=seed)
    method.fit(merchant_marks(10, 4, seed=seed))
    retriever = Retriever(method, create_index("sketchsearch", nbits=nbits), model_id=f"bench-lsh-{nbits}")
    rng = np.random.default_rng(seed)
    codes = rng.integers(0, 256, size=(items, nbits // 8), dtype=np.uint8)
    retriever.add([], labels=[f"class_{i % 345:03d}" for i in range(items)], encoded=codes)
    return create_app({"bench": retriever})


def _serve(sock: socket.socket, items: int, nbits: int, seed: int) -> None:
    import uvicorn

    app = build_app(items, nbits, seed)
    uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False)).run(sockets=[sock])


def query_payloads(n_distinct: int, k: int, seed: int) -> list[bytes]:
    from sketchsearch.data.synthetic import merchant_marks

    out = []
    for s in merchant_marks(max(1, n_distinct // 5), 5, seed=seed + 1)[:n_distinct]:
        times = s.times or [np.arange(len(st)) * 16.0 for st in s.strokes]
        strokes = [
            [{"x": round(float(x), 1), "y": round(float(y), 1), "t": round(float(t), 1)} for (x, y), t in zip(st, ts)]
            for st, ts in zip(s.strokes, times)
        ]
        out.append(json.dumps({"strokes": strokes, "k": k, "collection": "bench"}).encode())
    return out


async def load(
    url: str, payloads: list[bytes], total: int, clients: int, deadline: float, health_only: bool = False
) -> dict[str, Any]:
    """``total`` searches by ``clients`` concurrent clients; ``health_only``: the same load of ``GET /api/health``
    instead (the reference: what the server, the framework and the clients cost without a search)."""
    import httpx

    latencies: list[float] = []
    server_ms: list[float] = []
    errors: dict[str, int] = {}
    next_i = 0

    async def client(c: httpx.AsyncClient) -> None:
        nonlocal next_i
        while next_i < total and time.monotonic() < deadline:
            i = next_i
            next_i += 1
            t0 = time.perf_counter()
            try:
                if health_only:
                    r = await c.get("/api/health")
                else:
                    r = await c.post(
                        "/api/search",
                        content=payloads[i % len(payloads)],
                        headers={"content-type": "application/json"},
                    )
                dt = (time.perf_counter() - t0) * 1000
                if health_only and r.status_code == 200:
                    latencies.append(dt)
                elif r.status_code == 200 and r.json()["hits"]:
                    latencies.append(dt)
                    server_ms.append(float(r.json()["took_ms"]))
                else:
                    errors[f"HTTP {r.status_code}"] = errors.get(f"HTTP {r.status_code}", 0) + 1
            except httpx.HTTPError as e:
                errors[type(e).__name__] = errors.get(type(e).__name__, 0) + 1

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60.0) as c:
        for p in payloads[:clients]:  # warm-up (not timed): first requests pay for imports and caches
            await c.post("/api/search", content=p, headers={"content-type": "application/json"})
        t0 = time.perf_counter()
        await asyncio.gather(*(client(c) for _ in range(clients)))
        wall = time.perf_counter() - t0
    return {"latencies_ms": latencies, "server_ms": server_ms, "errors": errors, "wall_s": wall}


def pct(xs: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs), q)) if xs else float("nan")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--items", type=int, default=100_000)
    ap.add_argument("--nbits", type=int, default=64)
    ap.add_argument("--searches", type=int, default=2_000)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--distinct-queries", type=int, default=50)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--time-limit", type=float, default=300.0, help="seconds for the whole run, set-up included")
    ap.add_argument("--out", type=Path, default=RESULTS / "service")
    args = ap.parse_args(argv)
    deadline = time.monotonic() + args.time_limit
    load_before = os.getloadavg()[0]

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))  # loopback only
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    proc = mp.get_context("spawn").Process(target=_serve, args=(sock, args.items, args.nbits, args.seed), daemon=True)
    t_setup = time.perf_counter()
    proc.start()
    try:
        import httpx

        while True:  # wait for the server (it builds the index first)
            if time.monotonic() > deadline or not proc.is_alive():
                raise SystemExit(f"the server did not come up (alive={proc.is_alive()})")
            try:
                if httpx.get(url + "/api/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        health = httpx.get(url + "/api/health").json()
        setup_s = time.perf_counter() - t_setup
        payloads = query_payloads(args.distinct_queries, args.k, args.seed)
        ref = asyncio.run(load(url, payloads, args.searches, args.clients, deadline, health_only=True))
        res = asyncio.run(load(url, payloads, args.searches, args.clients, deadline))
    finally:
        proc.terminate()
        proc.join(10)
        sock.close()

    lat, n_ok = res["latencies_ms"], len(res["latencies_ms"])
    n_err = sum(res["errors"].values()) + (args.searches - n_ok - sum(res["errors"].values()))
    out = {
        "benchmark": "service load (POST /api/search, strokes JSON)",
        "items": health["items"],
        "nbits": args.nbits,
        "codes": "random (uniform bits); queries are real strokes encoded by pixel LSH",
        "clients": args.clients,
        "searches_asked": args.searches,
        "searches_ok": n_ok,
        "errors": n_err,
        "error_kinds": res["errors"],
        "k": args.k,
        "wall_s": round(res["wall_s"], 3),
        "throughput_per_s": round(n_ok / res["wall_s"], 1) if res["wall_s"] > 0 else None,
        "latency_ms": {
            "p50": round(pct(lat, 50), 2),
            "p90": round(pct(lat, 90), 2),
            "p99": round(pct(lat, 99), 2),
            "max": round(max(lat), 2) if lat else None,
            "mean": round(statistics.fmean(lat), 2) if lat else None,
        },
        "server_search_ms": {
            "p50": round(pct(res["server_ms"], 50), 3),
            "p99": round(pct(res["server_ms"], 99), 3),
        },
        "reference_health": {  # same clients and count, GET /api/health: the serving floor, same run
            "requests_ok": len(ref["latencies_ms"]),
            "throughput_per_s": round(len(ref["latencies_ms"]) / ref["wall_s"], 1) if ref["wall_s"] > 0 else None,
            "p50_ms": round(pct(ref["latencies_ms"], 50), 2),
            "p99_ms": round(pct(ref["latencies_ms"], 99), 2),
        },
        "server_setup_s": round(setup_s, 1),
        "machine": {**machine_info(), "load_average_1min_before": round(load_before, 2)},
        "command": "python benchmarks/bench_service.py " + " ".join(argv if argv is not None else sys.argv[1:]),
    }
    L = out["latency_ms"]
    md = [
        "# Service load benchmark",
        "",
        (
            f"`{out['command'].strip()}` — uvicorn (1 worker) on 127.0.0.1, {out['clients']} concurrent httpx clients, "
            f"{out['items']:,} items of {out['nbits']}-bit codes ({out['codes']}), k = {out['k']}, "
            f"{out['machine']['cores']} CPUs ({out['machine']['cpu']}, {out['machine']['platform']}), "
            f"1-minute load average {out['machine']['load_average_1min_before']} before the run (a shared machine)."
        ),
        "",
        (
            "| searches ok | errors | throughput (searches/s) | p50 (ms) | p90 (ms) | p99 (ms) | max (ms) "
            "| server search p50 / p99 (ms) |"
        ),
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
        (
            f"| {n_ok:,} | {n_err} | {out['throughput_per_s']} | {L['p50']} | {L['p90']} | {L['p99']} | {L['max']} | "
            f"{out['server_search_ms']['p50']} / {out['server_search_ms']['p99']} |"
        ),
        (
            f"| reference: {out['reference_health']['requests_ok']:,} `GET /api/health` | | "
            f"{out['reference_health']['throughput_per_s']} | {out['reference_health']['p50_ms']} | | "
            f"{out['reference_health']['p99_ms']} | | |"
        ),
        "",
        (
            f"Search throughput is {out['throughput_per_s'] / out['reference_health']['throughput_per_s']:.2f}x "
            "that of the reference (the same clients asking the same server for its health, in the same run): "
            "what is left is the cost of a search request itself (JSON parsing and validation, encoding, Hamming "
            "search, the answer)."
        ),
        "",
        (
            "Latency is client-side (request sent to answer parsed), under full concurrency, so it includes queueing; "
            "the server search time is encode + Hamming search + labels for one query (the API's `took_ms`)."
        ),
        "",
    ]
    write_results(args.out, out, "\n".join(md))
    print("\n".join(md))
    return out


if __name__ == "__main__":
    main()
