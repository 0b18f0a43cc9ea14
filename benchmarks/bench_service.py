"""Load benchmark of the web service on loopback: N concurrent clients searching one index of 10^6 codes by
real strokes, per shipped model and per number of server workers, each against the trivial endpoint's
reference measured in the same run.

The server is the real command, ``sketchsearch serve --index FOLDER --workers W``, in its own process
(its workers load the index memory-mapped, the model once each); the clients are ``httpx.AsyncClient``
tasks in this process. For every (model, workers) pair the same clients first load ``GET /api/health``
(the serving floor: framework, HTTP, clients; no search) and then ``POST /api/search``; the table gives
both and their ratios.

* Models (``--models``): ``pixel-lsh`` (64-bit LSH of the raster, fitted on the embedded synthetic marks and
  saved beside the indexes), ``sketch-gan`` (the shipped float GAN encoder served as its 1,024-bit binary
  variant, :func:`binary_gan`) and ``sketchmate-quickdraw-64`` (64 bits), the shipped ones: every query is
  encoded by the model on the server, as a visitor's would be.
* The index (``--items``, default 10^6) holds *random* codes of the model's code width (uniform bits), with
  ids and labels in its item store, saved as a real index folder: a linear scan's cost depends on the number
  of codes and their width, not on what they encode, and encoding 10^6 drawings per model would time the
  encoder (which ``sketchmate_quickdraw.py`` measures) and need 10^6 drawings (the raw QuickDraw subset here
  has ~8,000). The folders are cached in ``--workdir`` between runs.
* Request batching (``--batch-max``, ``--batch-wait-ms``: passed to ``serve``, recorded with the results):
  the searches that arrive together are encoded and scanned together; ``--batch-max 1`` serves each alone (as
  before batching). The server says each answer's batch size (``Server-Timing``); the table gives their mean
  and largest.
* Queries: real QuickDraw drawings (``$SKETCHSEARCH_SHARED_DATA/quickdraw/raw``: first drawings of the first
  classes, with their times), sent as the drawing page sends them (``{"x", "y", "t"}`` points); the embedded
  synthetic marks where that folder is absent (the JSON says which).

    python benchmarks/bench_service.py --models pixel-lsh sketch-gan sketchmate-quickdraw-64 --workers 1 2
    -> benchmarks/results/service.json, service.md
    python benchmarks/bench_service.py ... --batch-max 1      # the same without batching

Bounded: ``--searches`` per phase and ``--time-limit`` seconds per (model, workers) run; loopback only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import DATA_ROOT, RESULTS, ROOT, machine_info, write_results

from sketchsearch.service.batching import BatchOptions

MODELS = ("pixel-lsh", "sketch-gan", "sketchmate-quickdraw-64")
BATCH_RE = re.compile(r'batch;desc="(\d+)"')
WORKDIR = Path(os.environ.get("TMPDIR", "/tmp")) / "sketchsearch-bench-service"
QUICKDRAW_RAW = DATA_ROOT / "quickdraw" / "raw"


# ----------------------------------------------------------------------------------------------- set-up
def model_path(name: str, workdir: Path = WORKDIR, seed: int = 0) -> str:
    """What ``serve --model`` is given for ``name``: the shipped name, or for ``pixel-lsh`` a 64-bit LSH model
    fitted on the embedded synthetic marks and saved in ``workdir`` (once)."""
    if name == "sketch-gan":
        return binary_gan(workdir)
    if name != "pixel-lsh":
        return name
    stem = workdir / f"pixel-lsh-64-seed{seed}"
    if not stem.with_suffix(".json").exists():
        from sketchsearch.data.synthetic import merchant_marks
        from sketchsearch.methods import create_method
        from sketchsearch.model import save_model

        method = create_method("lsh", nbits=64, seed=seed)
        method.fit(merchant_marks(10, 4, seed=seed))
        save_model(method, stem)
    return str(stem)


def binary_gan(workdir: Path = WORKDIR, name: str = "sketch-gan") -> str:
    """The shipped float GAN encoder ``name`` as its 1,024-bit binary variant (the same weights, codes = signs
    of the centred embedding: the card's ``*_binary_1024`` figures), saved once in ``workdir``. The float form
    would serve 10^6 items as a 4 GB float32 matrix read in full by every query."""
    stem = workdir / f"{name}-binary-1024"
    if not stem.with_suffix(".json").exists():
        from sketchsearch.methods.gan_encoder import binary_variant
        from sketchsearch.model import load_model, save_model

        method, _ = load_model(name)
        save_model(binary_variant(method), stem)  # type: ignore[arg-type]
    return str(stem)


def index_folder(model: str, items: int, workdir: Path = WORKDIR, seed: int = 0) -> Path:
    """An index folder of ``items`` random codes of ``model``'s code width (ids 0..items-1, a label each),
    made by ``model`` as far as its manifest says; made once and reused while the model's id is the same."""
    from sketchsearch.index.store import read_manifest, save_index
    from sketchsearch.model import load_model

    method, card = load_model(model)
    if method.output != "binary":
        raise SystemExit(f"{model}: float embeddings; this benchmark serves binary codes")
    slug = re.sub(r"[^A-Za-z0-9_.-]", "-", Path(model).name)
    folder = workdir / f"{slug}-{items}-seed{seed}"
    from sketchsearch.errors import IndexError_

    try:
        m = read_manifest(folder)
    except IndexError_:  # not made yet (or unreadable): made again below
        m = {}
    if m.get("count") == items and m.get("model_id") == card.model_id:
        return folder
    from sketchsearch.index.hamming import create_index

    nbits = int(method.code_size)
    rng = np.random.default_rng(seed)
    index = create_index("numba", nbits=nbits)
    index.add(rng.integers(0, 256, size=(items, nbits // 8), dtype=np.uint8), np.arange(items, dtype=np.int64))
    classes = quickdraw_classes() or [f"class_{i:03d}" for i in range(345)]
    rows = [{"id": i, "label": classes[i % len(classes)]} for i in range(items)]
    save_index(index, folder, model_id=card.model_id, model_name=model, items=rows)
    return folder


def quickdraw_classes(folder: Path = QUICKDRAW_RAW) -> list[str]:
    return sorted(p.stem for p in folder.glob("*.ndjson")) if folder.is_dir() else []


def query_drawings(n: int, seed: int = 0, folder: Path = QUICKDRAW_RAW) -> tuple[list[list[list[dict]]], str]:
    """``n`` drawings as the page sends them (strokes of ``{"x", "y", "t"}``, t in ms from the first point),
    and what they are: real QuickDraw raw drawings (one from each class in turn), else the synthetic marks."""
    out: list[list[list[dict]]] = []
    files = sorted(folder.glob("*.ndjson")) if folder.is_dir() else []
    if files:
        per_class = max(1, -(-n // len(files)))
        for f in files:
            with open(f) as fh:
                for _, line in zip(range(per_class), fh):
                    drawing = json.loads(line)["drawing"]
                    t0 = min(st[2][0] for st in drawing if len(st) > 2 and st[2])
                    out.append(
                        [
                            [{"x": float(x), "y": float(y), "t": float(t - t0)} for x, y, t in zip(*st[:3])]
                            for st in drawing
                        ]
                    )
        rng = np.random.default_rng(seed)
        picked = rng.permutation(len(out))[:n]
        return [out[i] for i in picked], f"QuickDraw raw drawings ({folder}), {n} of {len(files)} classes"
    from sketchsearch.data.synthetic import merchant_marks

    for s in merchant_marks(max(1, n // 5), 5, seed=seed + 1)[:n]:
        times = s.times or [np.arange(len(st)) * 16.0 for st in s.strokes]
        out.append(
            [
                [
                    {"x": round(float(x), 1), "y": round(float(y), 1), "t": round(float(t), 1)}
                    for (x, y), t in zip(st, ts)
                ]
                for st, ts in zip(s.strokes, times)
            ]
        )
    return out, "synthetic merchant marks (no QuickDraw data found)"


def query_payloads(n_distinct: int, k: int, seed: int, collection: str = "bench") -> tuple[list[bytes], str]:
    drawings, what = query_drawings(n_distinct, seed)
    return [json.dumps({"strokes": d, "k": k, "collection": collection}).encode() for d in drawings], what


# ----------------------------------------------------------------------------------------------- server
def start_server(
    folder: Path, model: str, workers: int, deadline: float, extra: list[str] | None = None
) -> tuple[subprocess.Popen, str]:
    """``sketchsearch serve`` (with the ``extra`` options) on a free loopback port; returns (process, base URL)
    once it answers."""
    import httpx

    env = {**os.environ, "PYTHONPATH": str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    cmd = [sys.executable, "-m", "sketchsearch", "serve", "--index", str(folder), "--model", model]
    cmd += ["--name", "bench", "--port", "0", "--workers", str(workers), "--log-level", "warning", *(extra or [])]
    log = WORKDIR / f"server-{Path(model).name}-{workers}.log"  # a file: a full stderr pipe would block it
    with open(log, "w") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True, env=env)
    assert proc.stdout is not None
    url = None
    for line in proc.stdout:  # the address line comes once every worker is up
        m = re.search(r"open (http://\S+?)/ ", line)
        if m:
            url = m.group(1)
            break
    if url is None:
        proc.wait(10)
        raise SystemExit(f"the server did not come up (exit {proc.returncode}): {log.read_text()[-2000:]}")
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/api/health", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.2)
    stop_server(proc)
    raise SystemExit("the server did not answer /api/health in time")


def stop_server(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


# ----------------------------------------------------------------------------------------------- load
async def load(
    url: str, payloads: list[bytes], total: int, clients: int, deadline: float, health_only: bool = False
) -> dict[str, Any]:
    """``total`` searches by ``clients`` concurrent clients; ``health_only``: the same load of ``GET /api/health``
    instead (the reference: what the server, the framework and the clients cost without a search)."""
    import httpx

    latencies: list[float] = []
    server_ms: list[float] = []
    batches: list[int] = []  # each search's batch size, from its Server-Timing header (batch;desc="N")
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
                    m = BATCH_RE.search(r.headers.get("server-timing", ""))
                    batches.append(int(m.group(1)) if m else 1)
                else:
                    errors[f"HTTP {r.status_code}"] = errors.get(f"HTTP {r.status_code}", 0) + 1
            except httpx.HTTPError as e:
                errors[type(e).__name__] = errors.get(type(e).__name__, 0) + 1

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60.0) as c:
        for p in payloads[: 2 * clients]:  # warm-up (not timed): every worker's first requests pay for caches
            await c.post("/api/search", content=p, headers={"content-type": "application/json"})
        t0 = time.perf_counter()
        await asyncio.gather(*(client(c) for _ in range(clients)))
        wall = time.perf_counter() - t0
    return {
        "latencies_ms": latencies,
        "server_ms": server_ms,
        "batches": batches,
        "errors": errors,
        "wall_s": wall,
        "asked": next_i,
    }


def pct(xs: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs), q)) if xs else float("nan")


def summarize(res: dict[str, Any], total: int) -> dict[str, Any]:
    lat = res["latencies_ms"]
    n_ok = len(lat)
    return {
        "ok": n_ok,
        "errors": total - n_ok,
        "error_kinds": res["errors"],
        "wall_s": round(res["wall_s"], 3),
        "per_s": round(n_ok / res["wall_s"], 1) if res["wall_s"] > 0 else None,
        "p50_ms": round(pct(lat, 50), 2),
        "p90_ms": round(pct(lat, 90), 2),
        "p99_ms": round(pct(lat, 99), 2),
        "max_ms": round(max(lat), 2) if lat else None,
        "mean_ms": round(statistics.fmean(lat), 2) if lat else None,
    }


def run_one(model: str, workers: int, folder: Path, payloads: list[bytes], args: argparse.Namespace) -> dict[str, Any]:
    deadline = time.monotonic() + args.time_limit
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    batching = ["--batch-max", str(args.batch_max), "--batch-wait-ms", str(args.batch_wait_ms)]
    proc, url = start_server(folder, model_path(model, args.workdir, args.seed), workers, deadline, batching)
    setup_s = time.perf_counter() - t0
    try:
        ref = asyncio.run(load(url, payloads, args.searches, args.clients, deadline, health_only=True))
        res = asyncio.run(load(url, payloads, args.searches, args.clients, deadline))
    finally:
        stop_server(proc)
    search, health = summarize(res, args.searches), summarize(ref, args.searches)
    return {
        "model": model,
        "workers": workers,
        "search": {
            **search,
            "server_took_ms_p50": round(pct(res["server_ms"], 50), 3),
            "server_took_ms_p99": round(pct(res["server_ms"], 99), 3),
            "batch_mean": round(statistics.fmean(res["batches"]), 2) if res["batches"] else None,
            "batch_max": max(res["batches"], default=None),
        },
        "health": health,
        "throughput_ratio": round(search["per_s"] / health["per_s"], 3)
        if search["per_s"] and health["per_s"]
        else None,
        "p99_ratio": round(search["p99_ms"] / health["p99_ms"], 3) if health["p99_ms"] else None,
        "server_setup_s": round(setup_s, 1),
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
    }


def goals(row: dict[str, Any]) -> dict[str, bool]:
    return {
        "throughput_ge_0.7x": bool(row["throughput_ratio"] is not None and row["throughput_ratio"] >= 0.7),
        "p99_le_2x": bool(row["p99_ratio"] is not None and row["p99_ratio"] <= 2.0),
        "zero_errors": row["search"]["errors"] == 0 and row["health"]["errors"] == 0,
    }


def markdown(out: dict[str, Any]) -> str:
    m = out["machine"]
    lines = [
        "# Service load benchmark",
        "",
        (
            f"`{out['command'].strip()}` — `sketchsearch serve --workers W` on 127.0.0.1, {out['clients']} concurrent "
            f"httpx clients in one process, {out['items']:,} items per index ({out['codes']}), k = {out['k']}, "
            f"{out['searches']:,} requests per phase; queries: {out['queries']}. Request batching: "
            f"{_batching(out['batching'])}. {m['cores']} CPUs ({m['cpu']}, "
            f"{m['platform']}): clients and workers share them. 1-minute load average "
            f"{out['load_average_before'][0]} before, {out['load_average_after'][0]} after "
            f"({out['load_note']})."
        ),
        "",
        (
            "| model | bits | workers | searches/s | p50 (ms) | p99 (ms) | health/s | health p50 / p99 (ms) "
            "| throughput vs health | p99 vs health | errors | server took p50 / p99 (ms) | batch mean / max |"
        ),
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in out["runs"]:
        s, h, g = r["search"], r["health"], r["goals"]
        lines.append(
            f"| {r['model']} | {r['nbits']} | {r['workers']} | {s['per_s']} | {s['p50_ms']} | {s['p99_ms']} | "
            f"{h['per_s']} | {h['p50_ms']} / {h['p99_ms']} | "
            f"**{r['throughput_ratio']:.2f}x** {'✓' if g['throughput_ge_0.7x'] else '✗'} | "
            f"**{r['p99_ratio']:.2f}x** {'✓' if g['p99_le_2x'] else '✗'} | "
            f"{s['errors'] + h['errors']} | {s['server_took_ms_p50']} / {s['server_took_ms_p99']} | "
            f"{s['batch_mean']} / {s['batch_max']} |"
        )
    lines += [
        "",
        (
            "Goals (issue: service, 16 clients, 10^6 items): search throughput ≥ 0.7x the health endpoint's and "
            "p99 ≤ 2x its p99, in the same run, zero errors (✓ met, ✗ not). Health is measured right before the "
            "searches, with the same server, workers and clients. Latency is client-side (sent to answer parsed), "
            "under full concurrency, so it includes queueing; the server's `took_ms` is encode + Hamming search + "
            "labels of one query, with the wait for its batch and the batch's encode and scan; batch: how many "
            "searches each search was encoded and scanned with (Server-Timing), mean and largest."
        ),
        "",
    ]
    return "\n".join(lines)


def _batching(b: dict[str, Any]) -> str:
    if b["batch_max"] <= 1:
        return "off (`--batch-max 1`: each search encoded and scanned alone)"
    return f"up to {b['batch_max']} searches encoded and scanned together, gathered for up to {b['batch_wait_ms']} ms"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--items", type=int, default=1_000_000)
    ap.add_argument("--models", nargs="+", default=list(MODELS))
    ap.add_argument("--workers", nargs="+", type=int, default=[1, 2])
    ap.add_argument("--searches", type=int, default=2_000, help="requests per phase (health, then search)")
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--distinct-queries", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--time-limit", type=float, default=300.0, help="seconds per (model, workers) run, start included")
    ap.add_argument("--workdir", type=Path, default=WORKDIR, help="where the index folders are made and kept")
    ap.add_argument("--load-note", default="a shared machine", help="what else ran on the machine")
    ap.add_argument("--out", type=Path, default=RESULTS / "service")
    defaults = BatchOptions()
    ap.add_argument(
        "--batch-max",
        type=int,
        default=defaults.max_batch,
        help="serve --batch-max: searches encoded and scanned together at most (1: off)",
    )
    ap.add_argument(
        "--batch-wait-ms",
        type=float,
        default=defaults.max_wait_ms,
        help="serve --batch-wait-ms: how long a batch waits for more after its first search",
    )
    args = ap.parse_args(argv)
    BatchOptions(max_batch=args.batch_max, max_wait_ms=args.batch_wait_ms)  # checked here, not by a server later
    args.workdir.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()
    payloads, what = query_payloads(args.distinct_queries, args.k, args.seed)
    runs = []
    index_bytes: dict[str, dict[str, int]] = {}  # the saved index folders' files, per model
    for model in args.models:
        mpath = model_path(model, args.workdir, args.seed)
        t0 = time.perf_counter()
        folder = index_folder(mpath, args.items, args.workdir, args.seed)
        print(f"{model}: index {folder} ready in {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
        from sketchsearch.index.store import read_manifest

        nbits = int(read_manifest(folder)["nbits"])
        index_bytes[model] = {
            "items": args.items,
            "nbits": nbits,
            "codes_bytes": (folder / "codes.npy").stat().st_size,
            "ids_bytes": (folder / "ids.npy").stat().st_size,
            "items_bytes": (folder / "items.sqlite").stat().st_size,
        }
        for w in args.workers:
            row = {"nbits": nbits, **run_one(model, w, folder, payloads, args)}
            row["goals"] = goals(row)
            runs.append(row)
            print(
                json.dumps({k: row[k] for k in ("model", "workers", "throughput_ratio", "p99_ratio")}), file=sys.stderr
            )
    out = {
        "benchmark": "service load (POST /api/search, strokes JSON) vs GET /api/health, same run",
        "items": args.items,
        "codes": "random codes of each model's width (uniform bits), saved as an index folder, memory-mapped",
        "queries": what,
        "clients": args.clients,
        "searches": args.searches,
        "k": args.k,
        "batching": {"batch_max": args.batch_max, "batch_wait_ms": args.batch_wait_ms},
        "runs": runs,
        "index_bytes": index_bytes,
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "load_note": args.load_note,
        "machine": machine_info(),
        "command": "python benchmarks/bench_service.py " + " ".join(argv if argv is not None else sys.argv[1:]),
    }
    md = markdown(out)
    write_results(args.out, out, md)
    print(md)
    return out


if __name__ == "__main__":
    main()
