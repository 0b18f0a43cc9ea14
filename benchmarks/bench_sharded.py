"""The sharded backend on 1 and 2 threads vs the numba scan: exact top-k, 64-bit random codes; add and compaction.

    python benchmarks/bench_sharded.py [--sizes 1000000 10000000] [--queries 200] [--k 100]
        [--shards 2] [--threads 1 2] [--repeats 7] [--add 1000000] [--remove 0.1]

Search (issue "Past one machine's linear scan", item 2: 2 threads over 2 shards >= 1.7x one thread at 10^7):
uniformly random 64-bit codes and queries (seed 0). Per size, the ``numba`` backend (the reference: the same
kernel on the whole array, one thread) and ``sharded`` indexes of ``--shards`` shards (``shard_size`` =
ceil(n / shards)) with each of ``--threads``, all holding the same codes, search the same queries in turn
within each of ``--repeats`` rounds, so that a change of the machine's load hits them alike. Figures per row:
the best and the median round (ms per query, after a warm-up search), ``x_1_thread`` (the sharded index on
one thread / this row, best rounds), ``x_numba`` (numba / this row), ``cpu_per_wall`` (the process's CPU
seconds per wall second over the rounds: 2 means both threads ran all the time) and ``same_results`` (ids
and distances equal to numba's, ties by id). The load average (1 min) before and after each size is
recorded: on the shared 2-core machine, other jobs take cores the second thread would use. The row
``numba in 2 processes (reference)`` measures what the machine allows two workers at that moment, GIL or not:
two forked processes each scan half of the codes with the numba backend, started together each round (the
slower one's time counts).

Maintenance, at the largest size, on a ``sharded`` index of the default ``shard_size`` (2**20): ``add`` of
``--add`` codes to the n-code index held in memory and to the same index loaded memory-mapped from a saved
folder, ``remove`` of ``--remove`` of the rows (tombstones), a search after it (equal to numba's after the
same remove), ``compact()`` and ``state()`` (what a save hands the store); the numba backend's ``add`` and
``remove`` of the same rows for reference (it rewrites its arrays).

Output: ``benchmarks/results/sharded.{json,md}``; progress on stderr.
"""

from __future__ import annotations

import argparse
import math
import multiprocessing as mp
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, machine_info, markdown_table, write_results

from sketchsearch.index import create_index
from sketchsearch.index.store import load_index, save_index

COLUMNS = [
    "n",
    "backend",
    "shards",
    "threads",
    "queries",
    "ms_per_query",
    "median_ms",
    "x_1_thread",
    "x_numba",
    "cpu_per_wall",
    "same_results",
    "load_before",
    "load_after",
]
OP_COLUMNS = ["n", "operation", "rows", "seconds", "numba_seconds", "note"]


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def load1() -> float:
    return round(os.getloadavg()[0], 2)


def timed(fn: Any) -> tuple[Any, float]:
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def _scan_in_child(part: np.ndarray, q: np.ndarray, k: int, repeats: int, barrier: Any, out: Any) -> None:
    """One process of the two-process reference: the numba scan of ``part``, started with the other's each round."""
    index = create_index("numba", nbits=64)
    index.add(part)
    index.search(q[:2], k)
    times = []
    for _ in range(repeats):
        barrier.wait()
        t0 = time.perf_counter()
        index.search(q, k)
        times.append(time.perf_counter() - t0)
    out.put(times)


def two_processes(xb: np.ndarray, q: np.ndarray, k: int, repeats: int) -> list[float]:
    """Wall time per round of two processes (fork) each scanning half of ``xb`` at the same moment: what the
    machine's free cores allow two workers, GIL or not (the slower process of each round)."""
    ctx = mp.get_context("fork")
    barrier, out = ctx.Barrier(2), ctx.Queue()
    half = xb.shape[0] // 2
    procs = [
        ctx.Process(target=_scan_in_child, args=(part, q, k, repeats, barrier, out)) for part in (xb[:half], xb[half:])
    ]
    for p in procs:
        p.start()
    times = [out.get() for _ in procs]
    for p in procs:
        p.join()
    return [max(a, b) for a, b in zip(*times)]


def run_search(
    xb: np.ndarray, q: np.ndarray, k: int, shards: int, threads: list[int], repeats: int
) -> list[dict[str, Any]]:
    n = xb.shape[0]
    size = math.ceil(n / shards)
    backends: dict[str, Any] = {"numba": create_index("numba", nbits=64)}
    for t in threads:
        backends[f"sharded t={t}"] = create_index("sharded", nbits=64, shard_size=size, threads=t)
    for index in backends.values():
        index.add(xb)
        index.search(q[:2], k)  # warm-up: kernels compiled or loaded from numba's cache
    load_before = load1()
    times: dict[str, list[float]] = {name: [] for name in backends}
    cpu = dict.fromkeys(backends, 0.0)
    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for _ in range(repeats):
        for name, index in backends.items():
            c0, t0 = time.process_time(), time.perf_counter()
            out[name] = index.search(q, k)
            wall = time.perf_counter() - t0
            cpu[name] += time.process_time() - c0
            times[name].append(wall)
    load_after = load1()
    procs = two_processes(xb, q, k, repeats)
    ref_d, ref_i = out["numba"]
    best = {name: min(v) * 1e3 / len(q) for name, v in times.items()}
    one = best.get("sharded t=1", best[f"sharded t={threads[0]}"])
    rows = []
    for name, index in backends.items():
        d, i = out[name]
        same = bool(np.array_equal(d, ref_d) and np.array_equal(i, ref_i))
        sharded = name != "numba"
        row = {
            "n": n,
            "backend": "sharded" if sharded else "numba",
            "shards": len(index.shards()) if sharded else 1,
            "threads": index.search_threads() if sharded else 1,
            "queries": len(q),
            "ms_per_query": round(best[name], 4),
            "median_ms": round(statistics.median(times[name]) * 1e3 / len(q), 4),
            "x_1_thread": round(one / best[name], 2),
            "x_numba": round(best["numba"] / best[name], 2),
            "cpu_per_wall": round(cpu[name] / sum(times[name]), 2),
            "same_results": same,
            "load_before": load_before,
            "load_after": load_after,
        }
        log("  ".join(f"{c}={row[c]}" for c in COLUMNS))
        rows.append(row)
    best_procs = min(procs) * 1e3 / len(q)
    row = {
        "n": n,
        "backend": "numba in 2 processes (reference)",
        "shards": 2,
        "threads": 2,
        "queries": len(q),
        "ms_per_query": round(best_procs, 4),
        "median_ms": round(statistics.median(procs) * 1e3 / len(q), 4),
        "x_1_thread": round(one / best_procs, 2),
        "x_numba": round(best["numba"] / best_procs, 2),
        "cpu_per_wall": "",
        "same_results": "",
        "load_before": load_after,
        "load_after": load1(),
    }
    log("  ".join(f"{c}={row[c]}" for c in COLUMNS))
    rows.append(row)
    return rows


def run_maintenance(xb: np.ndarray, q: np.ndarray, k: int, n_add: int, frac_remove: float) -> list[dict[str, Any]]:
    """add / remove / compact / state on the default shard size, against the numba backend's add / remove."""
    n = xb.shape[0]
    rng = np.random.default_rng(1)
    extra = rng.integers(0, 256, size=(n_add, 8), dtype=np.uint8)
    ops: list[dict[str, Any]] = []

    def op(name: str, rows: int, seconds: float, numba_seconds: float | str = "", note: str = "") -> None:
        row = {"n": n, "operation": name, "rows": rows, "seconds": round(seconds, 4)}
        row |= {"numba_seconds": round(numba_seconds, 4) if isinstance(numba_seconds, float) else numba_seconds}
        row["note"] = note
        log("  ".join(f"{c}={row[c]}" for c in OP_COLUMNS))
        ops.append(row)

    ref = create_index("numba", nbits=64)
    ref.add(xb)
    index = create_index("sharded", nbits=64)
    index.add(xb)
    nshards = len(index.shards())
    _, numba_add = timed(lambda: ref.add(extra))
    _, t_add = timed(lambda: index.add(extra))
    op("add (in memory)", n_add, t_add, numba_add, f"{nshards} -> {len(index.shards())} shards of 2**20")

    with tempfile.TemporaryDirectory(prefix="bench_sharded_") as tmp:
        folder = Path(tmp) / "idx"
        base = create_index("sharded", nbits=64)
        base.add(xb)
        t0 = time.perf_counter()
        save_index(base, folder, model_id="bench")
        t_save = time.perf_counter() - t0
        t0 = time.perf_counter()
        loaded, items = load_index(folder, verify=False)
        t_load = time.perf_counter() - t0
        items.close()
        t0 = time.perf_counter()
        loaded.add(extra)
        t_add_mapped = time.perf_counter() - t0
        mapped_note = f"save {t_save:.2f} s, load (mmap, verify=False) {t_load:.3f} s; earlier shards stay mapped"
        op("add (memory-mapped)", n_add, t_add_mapped, "", mapped_note)
        del loaded, base

    gone = rng.permutation(n + n_add)[: int(frac_remove * (n + n_add))]
    _, numba_remove = timed(lambda: ref.remove(gone))
    _, t_remove = timed(lambda: index.remove(gone))
    op("remove (tombstones)", gone.size, t_remove, numba_remove, f"{index.deleted} tombstones, no shard past 0.25")
    index.search(q[:2], k)
    (d, i), t_search = timed(lambda: index.search(q, k))
    rd, ri = ref.search(q, k)
    same = bool(np.array_equal(d, rd) and np.array_equal(i, ri))
    note = f"{t_search * 1e3 / len(q):.3f} ms/query, {index.search_threads()} threads; same as numba's: {same}"
    op("search after remove", len(q), t_search, "", note)
    dropped, t_compact = timed(index.compact)
    op("compact()", dropped, t_compact, "", f"{len(index)} live rows into {len(index.shards())} shards")
    (d, i), _ = timed(lambda: index.search(q, k))
    same_after = bool(np.array_equal(d, rd) and np.array_equal(i, ri))
    index.add(extra[:1000])
    _, t_state = timed(index.state)
    op("state() after an add", len(index), t_state, "", f"compacts (what a save writes); results kept: {same_after}")
    return ops


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 10_000_000])
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--k", type=int, default=100)
    ap.add_argument("--shards", type=int, default=2)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--add", type=int, default=1_000_000, help="codes added to the largest index (0: skip)")
    ap.add_argument("--remove", type=float, default=0.1, help="fraction of the rows removed")
    ap.add_argument("--out", type=Path, default=RESULTS / "sharded", help="results path without suffix")
    a = ap.parse_args(argv)

    rng = np.random.default_rng(0)
    q = rng.integers(0, 256, size=(a.queries, 8), dtype=np.uint8)
    rows: list[dict[str, Any]] = []
    ops: list[dict[str, Any]] = []
    for n in a.sizes:
        xb = rng.integers(0, 256, size=(n, 8), dtype=np.uint8)
        log(f"n={n}: load average {os.getloadavg()}")
        rows += run_search(xb, q, a.k, a.shards, a.threads, a.repeats)
        if n == max(a.sizes) and a.add:
            ops = run_maintenance(xb, q, a.k, a.add, a.remove)
        del xb
    doc = {
        "benchmark": "sharded_knn",
        "k": a.k,
        "bits": 64,
        "command": (f"nice -n {os.nice(0)} " if os.nice(0) else "")
        + "python benchmarks/bench_sharded.py "
        + " ".join(sys.argv[1:] if argv is None else argv),
        "machine": machine_info(),
        "rows": rows,
        "operations": ops,
    }
    md = f"# Exact top-{a.k} Hamming search, 64-bit random codes: the sharded backend on 1 and 2 threads\n\n"
    md += markdown_table(rows, COLUMNS)
    if ops:
        md += "\nAdd, remove and compaction (default shard size 2**20):\n\n" + markdown_table(ops, OP_COLUMNS)
    md += (
        f"\nMachine: {doc['machine']['cpu']}, {doc['machine']['cores']} cores, shared with other jobs (load "
        "average before and after each size in the table). "
        f"Command: `{doc['command'].strip()}`. `ms_per_query`: best of {a.repeats} rounds (`median_ms`: the "
        "median); `x_1_thread`: the sharded index on 1 thread / this row; `x_numba`: the numba backend / this row; "
        "`cpu_per_wall`: CPU seconds per wall second of the process while it searched; `same_results`: ids and "
        "distances equal to numba's (ties by id).\n"
    )
    write_results(a.out, doc, md)
    print(md)


if __name__ == "__main__":
    main()
