"""Where one search request's server time goes: the whole ASGI request (middleware, routing, parsing,
validation, rasterisation, network, Hamming search, labels, response) run in this process under cProfile,
per model, over an index of ``--items`` codes (the index folders of ``bench_service.py``, memory-mapped).

The route's thread-pool hops (``run_in_threadpool``) are made inline here so that the profiler, which sees
one thread, sees all of the request's work; for the same reason request batching is off (``serve --batch-max
1``: a batched search is encoded and scanned on its batcher's thread, and one request at a time would only be a
batch of one that waits ``--batch-wait-ms`` for company). Everything else is the real app (``load_collections``
+ ``create_app``) driven through ``httpx.ASGITransport``, with torch on 1 thread as ``serve`` sets it.

    python benchmarks/profile_service.py --models pixel-lsh sketch-gan sketchmate-quickdraw-64
    -> benchmarks/results/service_profile.json, service_profile.md
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, machine_info, write_results
from bench_service import MODELS, WORKDIR, index_folder, model_path, query_payloads

STAGES = [
    "JSON parse (json.loads)",
    "schema validation (pydantic)",
    "strokes -> Sketch (parse_strokes)",
    "rasterise / stroke prep (make_batch)",
    "network forward (embed - make_batch)",
    "binarise (encode - embed)",
    "Hamming search (index.search)",
    "item rows for labels (item_meta, all calls)",
    "answer (SearchResponse -> JSON)",
    "rest: framework, middleware, thread hops, ASGI transport",
]


def stage_times(stats: pstats.Stats, n: int, total_ms: float) -> dict[str, float]:
    """ms per request of each stage, from cumulative times of named functions in a profile of ``n`` requests
    (the same names before and after the changes of this branch, where they exist)."""
    raw = stats.stats  # type: ignore[attr-defined]

    def cum(suffix: str, name: str) -> float:
        return sum(v[3] for (f, _l, fn), v in raw.items() if f.endswith(suffix) and fn == name) * 1000.0 / n

    answer = cum("routes.py", "_answer_body")
    if answer == 0.0:  # before: built inside _search_response, around _run_search
        answer = cum("routes.py", "_search_response") - cum("routes.py", "_run_search")
    out = {
        STAGES[0]: cum("json/__init__.py", "loads"),
        STAGES[1]: cum("pydantic/main.py", "model_validate"),
        STAGES[2]: cum("strokes.py", "parse_strokes"),
        STAGES[3]: cum("batching.py", "make_batch"),
        STAGES[4]: cum("retrieval.py", "embed") - cum("batching.py", "make_batch"),
        STAGES[5]: cum("retrieval.py", "encode") - cum("retrieval.py", "embed"),
        STAGES[6]: cum("hamming.py", "search"),
        STAGES[7]: cum("retrieval.py", "item_meta"),
        STAGES[8]: answer,
    }
    out[STAGES[9]] = total_ms - sum(out.values())
    return {k: round(v, 3) for k, v in out.items()}


def profile_model(model: str, args: argparse.Namespace, payloads: list[bytes]) -> dict[str, Any]:
    import httpx
    import torch

    torch.set_num_threads(1)
    from sketchsearch.service import app as app_module
    from sketchsearch.service import routes

    mpath = model_path(model, args.workdir, args.seed)
    folder = index_folder(mpath, args.items, args.workdir, args.seed)
    cols = app_module.load_collections([("bench", mpath, folder)])
    app_module.warm_up(cols)
    app = app_module.create_app(cols, batching=app_module.BatchOptions(max_batch=1))  # see the docstring

    async def inline(fn: Any, *a: Any, **kw: Any) -> Any:
        return fn(*a, **kw)

    routes.run_in_threadpool = inline  # type: ignore[assignment]

    async def requests(n: int) -> float:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://bench") as c:
            t0 = time.perf_counter()
            for i in range(n):
                r = await c.post(
                    "/api/search", content=payloads[i % len(payloads)], headers={"content-type": "application/json"}
                )
                assert r.status_code == 200, r.text
            return (time.perf_counter() - t0) * 1000.0 / n

    async def health(n: int) -> float:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://bench") as c:
            t0 = time.perf_counter()
            for _ in range(n):
                assert (await c.get("/api/health")).status_code == 200
            return (time.perf_counter() - t0) * 1000.0 / n

    asyncio.run(requests(10))  # warm
    plain_ms = min(asyncio.run(requests(args.requests)) for _ in range(2))
    health_ms = min(asyncio.run(health(args.requests)) for _ in range(2))
    prof = cProfile.Profile()
    prof.enable()
    asyncio.run(requests(args.requests))
    prof.disable()
    stats = pstats.Stats(prof)
    total_profiled = sum(v[3] for k, v in stats.stats.items() if k[2] == "requests") * 1000.0 / args.requests  # type: ignore[attr-defined]
    stages = stage_times(stats, args.requests, total_profiled)
    if args.dump:
        stats.sort_stats("cumulative").print_stats(args.dump)
        stats.sort_stats("tottime").print_stats(args.dump)
    n_points = [sum(len(s) for s in __import__("json").loads(p)["strokes"]) for p in payloads]
    cols["bench"].store.close() if cols["bench"].store is not None else None
    return {
        "model": model,
        "nbits": int(cols["bench"].method.code_size),
        "items": len(cols["bench"]),
        "ms_per_request": round(plain_ms, 3),
        "health_ms_per_request": round(health_ms, 3),
        "ms_per_request_profiled": round(total_profiled, 3),
        "stages_ms_profiled": stages,
        "points_per_query_median": float(np.median(n_points)),
    }


def markdown(out: dict[str, Any]) -> str:
    rows = out["models"]
    lines = [
        "# Where a search request's server time goes",
        "",
        (
            f"`{out['command'].strip()}` — one request at a time, in process (no network), {out['requests']} "
            f"requests per model over {rows[0]['items']:,} codes; queries: {out['queries']} (median "
            f"{rows[0]['points_per_query_median']:.0f} points). Stage times are cProfile's cumulative times (the "
            "profiler's own overhead inflates Python-heavy stages); the first rows are unprofiled wall times. "
            f"Machine: {out['machine']['cores']} CPUs, 1-minute load average {out['load_average_before'][0]} before "
            f"({out['load_note']})."
        ),
        "",
        "| | " + " | ".join(f"{r['model']} ({r['nbits']} bits)" for r in rows) + " |",
        "|---|" + "---:|" * len(rows),
        "| **request, ms (unprofiled)** | " + " | ".join(f"**{r['ms_per_request']}**" for r in rows) + " |",
        "| GET /api/health, ms (unprofiled) | " + " | ".join(str(r["health_ms_per_request"]) for r in rows) + " |",
        "| request, ms (profiled) | " + " | ".join(str(r["ms_per_request_profiled"]) for r in rows) + " |",
    ]
    for stage in STAGES:
        lines.append(f"| {stage} | " + " | ".join(str(r["stages_ms_profiled"][stage]) for r in rows) + " |")
    lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--items", type=int, default=1_000_000)
    ap.add_argument("--models", nargs="+", default=list(MODELS))
    ap.add_argument("--requests", type=int, default=100)
    ap.add_argument("--distinct-queries", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", type=Path, default=WORKDIR)
    ap.add_argument("--dump", type=int, default=0, help="print this many lines of each profile (cumulative)")
    ap.add_argument("--load-note", default="a shared machine")
    ap.add_argument("--out", type=Path, default=RESULTS / "service_profile")
    args = ap.parse_args(argv)
    import os

    args.workdir.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()
    payloads, what = query_payloads(args.distinct_queries, 10, args.seed)
    rows = [profile_model(m, args, payloads) for m in args.models]
    out = {
        "benchmark": "one search request in process under cProfile",
        "queries": what,
        "requests": args.requests,
        "models": rows,
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "load_note": args.load_note,
        "machine": machine_info(),
        "command": "python benchmarks/profile_service.py " + " ".join(argv if argv is not None else sys.argv[1:]),
    }
    md = markdown(out)
    if args.out.name != "-":
        write_results(args.out, out, md)
    print(md)
    return out


if __name__ == "__main__":
    main()
