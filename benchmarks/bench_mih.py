"""Multi-index hashing (backend ``mih``) vs the numba linear scan: exact top-k, 64 bits, one thread.

    nice -n 5 python benchmarks/bench_mih.py [--sizes 1000000 10000000] [--base 10000] [--queries 200]
        [--k 100] [--flip 0.03] [--substrings 0 4 5] [--repeats 3] [--datasets structured uniform]
        [--folder runs/bench_mih_folders]

Data (issue 14's performance goal for MIH):

* ``structured``: codes with the structure of trained codes. ``--base`` QuickDraw drawings (raw ndjson under
  ``$SKETCHSEARCH_SHARED_DATA/quickdraw/raw``, shuffled with seed 0) are encoded by the shipped model
  ``sketchmate-quickdraw-64``; the database is those codes repeated in turn up to the size, each copy with
  every bit flipped with probability ``--flip``. The queries are the codes of ``--queries`` other drawings
  (held out: never in the base). The codes are cached in ``runs/bench_mih_codes.npz`` (``--cache``).
* ``uniform``: uniformly random codes and queries (seed 0), where MIH is known to gain little: the k-th
  neighbour of a random query is far, and the search probes many buckets.

Every index searches the same queries in the same run, one thread each (numba's scan is single-threaded,
and so is the MIH kernel), in turn within each of ``--repeats`` rounds, so that a change of the machine's
load hits them alike. Figures: the best round, ms per query, after a warm-up search (kernel compile / cache
load; MIH's table build is timed apart, as ``build_s``: the first search after a change builds the tables).
``same_results``: ids and distances equal to the scan's (ties by id).
``table_mb``: memory of MIH's tables (positions, offsets and the codes copied in table order);
``codes_mb``: the codes themselves, for scale. ``kth_distance``: the median distance of the k-th hit.
``--substrings 0`` is the backend's own choice of m (recorded as ``m``); other values force m.

``--folder DIR``: the codes of each size are written once as an index folder under ``DIR`` (``save_index``),
dropped from memory, and every backend searches them **memory-mapped** from that folder (``load_index(...,
mmap=True)``, the path ``sketchsearch serve`` and ``search`` take); MIH's tables are still built in memory from
the mapped codes. ``peak_rss_mb``: the process's peak resident memory so far (it only grows). Without it the
codes are generated and searched in memory.

Output: ``benchmarks/results/mih.{json,md}``; progress on stderr.
"""

from __future__ import annotations

import argparse
import resource
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import DATA_ROOT, RESULTS, ROOT, machine_info, table_markdown, write_results

from sketchsearch.index import create_index
from sketchsearch.index.store import load_index, save_index

MODEL = "sketchmate-quickdraw-64"
COLUMNS = [
    "data",
    "n",
    "backend",
    "m",
    "queries",
    "ms_per_query",
    "speedup_vs_scan",
    "same_results",
    "build_s",
    "table_mb",
    "codes_mb",
    "kth_distance",
    "memory",
    "peak_rss_mb",
]


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def encoded_drawings(n_base: int, n_queries: int, cache: Path) -> tuple[np.ndarray, np.ndarray]:
    """(base codes, query codes) of real QuickDraw drawings encoded by the shipped model (cached)."""
    if cache.exists():
        z = np.load(cache)
        if (int(z["asked"][0]), int(z["asked"][1]), str(z["model"])) == (n_base, n_queries, MODEL):
            return z["base"], z["queries"]
    from sketchsearch.data.sources import load_collection
    from sketchsearch.retrieval import Retriever

    t0 = time.perf_counter()
    coll = load_collection(DATA_ROOT / "quickdraw" / "raw")
    items = [it for it in coll if it.sketch is not None and not it.sketch.is_empty]
    if len(items) <= n_queries:
        raise SystemExit(f"only {len(items)} drawings: fewer than --queries {n_queries} plus a base")
    # The queries first (held out), then up to n_base drawings for the base.
    order = np.random.default_rng(0).permutation(len(items))[: n_base + n_queries]
    log(f"encoding {order.size} of {len(items)} QuickDraw drawings with {MODEL} ...")
    retriever = Retriever.from_model(MODEL)
    codes = retriever.encode([items[i].sketch for i in order])
    log(f"  {order.size / (time.perf_counter() - t0):.0f} drawings/s (reading included)")
    queries, base = codes[:n_queries], codes[n_queries:]
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.savez(cache, base=base, queries=queries, model=np.array(MODEL), asked=np.array([n_base, n_queries]))
    return base, queries


def replicate(base: np.ndarray, n: int, flip: float, rng: np.random.Generator, chunk: int = 250_000) -> np.ndarray:
    """``n`` codes: ``base`` repeated in turn, each bit of each copy flipped with probability ``flip``."""
    nbits = 8 * base.shape[1]
    out = np.empty((n, base.shape[1]), np.uint8)
    for s in range(0, n, chunk):
        e = min(n, s + chunk)
        noise = np.packbits(rng.random((e - s, nbits)) < flip, axis=1)
        out[s:e] = base[np.arange(s, e) % base.shape[0]] ^ noise
    return out


def peak_rss_mb() -> float:
    """The process's peak resident memory so far, MB (Linux reports ru_maxrss in KiB)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def to_folder(xb: np.ndarray, folder: Path) -> Path:
    """Write ``xb`` as an index folder (the scan's backend; any binary backend opens it)."""
    index = create_index("numba", nbits=8 * xb.shape[1])
    index.add(xb)
    if folder.exists():
        shutil.rmtree(folder)
    return save_index(index, folder, model_id=MODEL)


def mapped_state(folder: Path) -> dict[str, np.ndarray]:
    """The state (codes memory-mapped, ids) of the index folder, read once and shared by every backend."""
    mapped, store = load_index(folder, mmap=True, verify=False)
    store.close()
    state = mapped.state()
    if not is_mapped(state["codes"]):
        raise SystemExit(f"{folder}: the codes were not memory-mapped")
    return state


def is_mapped(a: np.ndarray) -> bool:
    """Whether ``a`` is (a view of) a memory-mapped file."""
    while a is not None:
        if isinstance(a, np.memmap):
            return True
        a = a.base if isinstance(a.base, np.ndarray) else None
    return False


def run_one(
    data: str, xb: np.ndarray | None, q: np.ndarray, k: int, repeats: int, ms: list[int], folder: Path | None = None
) -> list[dict[str, Any]]:
    """Build the scan and one MIH index per ``ms`` (over ``xb``, or the codes of ``folder`` memory-mapped),
    then time them in turn, ``repeats`` rounds (best kept), so that a change in the machine's load between
    measurements hits every backend alike."""
    nbits = 8 * q.shape[1]
    state = mapped_state(folder) if folder is not None else None

    def filled(name: str, **config: Any) -> Any:
        """An index of backend ``name`` holding ``xb``, or adopting the folder's mapped state (no copy)."""
        index = create_index(name, nbits=nbits, **config)
        if state is None:
            index.add(xb)
        else:
            index.load_state(state)
            if not is_mapped(index.state()["codes"]):
                raise SystemExit(f"{folder}: backend {name!r} copied the mapped codes")
        return index

    backends: dict[str, Any] = {"numba (scan)": filled("numba")}
    n = len(backends["numba (scan)"])
    codes_mb = n * q.shape[1] / 1e6
    build: dict[str, float] = {}
    for m in ms:
        name = f"mih m={m}" if m else "mih (auto m)"
        index = filled("mih", substrings=m or None)
        t0 = time.perf_counter()
        index.tables()
        build[name] = time.perf_counter() - t0
        backends[name] = index
    for index in backends.values():
        index.search(q[:2], k)  # warm-up: kernels compiled or loaded from numba's cache
    best = dict.fromkeys(backends, float("inf"))
    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for _ in range(repeats):
        for name, index in backends.items():
            t0 = time.perf_counter()
            out[name] = index.search(q, k)
            best[name] = min(best[name], (time.perf_counter() - t0) * 1e3 / len(q))
    ref_d, ref_i = out["numba (scan)"]
    scan_ms = best["numba (scan)"]
    kth = float(np.median(ref_d[:, -1]))
    rows = []
    for name, index in backends.items():
        d, i = out[name]
        mih = name != "numba (scan)"
        same = bool(np.array_equal(d, ref_d) and np.array_equal(i, ref_i))
        log(f"{data:>10} n={n:>9}  {name:>14} {best[name]:8.4f} ms/query  x{scan_ms / best[name]:.2f}  same={same}")
        rows.append(
            {
                "data": data,
                "n": n,
                "backend": name,
                "m": index.tables().m if mih else "",
                "queries": len(q),
                "ms_per_query": round(best[name], 4),
                "speedup_vs_scan": round(scan_ms / best[name], 2),
                "same_results": same,
                "build_s": round(build[name], 2) if mih else "",
                "table_mb": round(index.table_nbytes / 1e6, 1) if mih else "",
                "codes_mb": round(codes_mb, 1),
                "kth_distance": kth,
                "memory": "mmap" if folder is not None else "in memory",
                "peak_rss_mb": peak_rss_mb(),
            }
        )
    return rows


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 10_000_000])
    ap.add_argument("--datasets", nargs="+", default=["structured", "uniform"], choices=["structured", "uniform"])
    ap.add_argument("--base", type=int, default=10_000, help="real drawings encoded for the structured codes (at most)")
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--k", type=int, default=100)
    ap.add_argument("--flip", type=float, default=0.03, help="probability of flipping each bit of a copy")
    ap.add_argument("--substrings", type=int, nargs="+", default=[0], help="MIH's m; 0 = the backend's choice")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--cache", type=Path, default=ROOT / "runs" / "bench_mih_codes.npz")
    ap.add_argument("--out", type=Path, default=RESULTS / "mih", help="results path without suffix")
    ap.add_argument("--folder", type=Path, help="search the codes memory-mapped from index folders written here")
    a = ap.parse_args(argv)

    import numba

    numba.set_num_threads(1)
    rng = np.random.default_rng(0)
    rows: list[dict[str, Any]] = []
    for data in a.datasets:
        if data == "structured":
            base, q = encoded_drawings(a.base, a.queries, a.cache)
        else:
            q = rng.integers(0, 256, size=(a.queries, 8), dtype=np.uint8)
        for n in a.sizes:
            if data == "structured":
                xb = replicate(base, n, a.flip, rng)
            else:
                xb = rng.integers(0, 256, size=(n, 8), dtype=np.uint8)
            if a.folder is not None:
                folder = to_folder(xb, a.folder / f"{data}-{n}")
                del xb
                log(f"{data:>10} n={n:>9}  written to {folder}; searched memory-mapped")
                rows += run_one(data, None, q, a.k, a.repeats, a.substrings, folder)
                shutil.rmtree(folder)
            else:
                rows += run_one(data, xb, q, a.k, a.repeats, a.substrings)
                del xb
    doc = {
        "benchmark": "mih_knn",
        "k": a.k,
        "bits": 64,
        "threads": 1,
        "model": MODEL,
        "base_drawings": int(base.shape[0]) if "structured" in a.datasets else 0,
        "flip": a.flip,
        "memory": "mmap" if a.folder is not None else "in memory",
        "command": "nice -n 5 python benchmarks/bench_mih.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": machine_info(),
        "rows": rows,
    }
    md = table_markdown(doc, COLUMNS, f"Exact top-{a.k} Hamming search, 64 bits, 1 thread: MIH vs the numba scan")
    md += (
        f"\nCommand: `{doc['command'].strip()}`. structured: {doc['base_drawings']} QuickDraw drawings encoded by "
        f"{MODEL}, "
        f"repeated with each bit flipped with p={a.flip}; queries: {a.queries} other drawings' codes. "
        "uniform: random codes and queries. `same_results`: ids and distances equal to the scan's. "
        "`build_s`, `table_mb`: MIH's tables (built on the first search after a change). `memory`: codes searched "
        "in memory, or memory-mapped from an index folder (`--folder`); `peak_rss_mb`: the process's peak resident "
        "memory so far. Others' jobs may share the cores: compare rows of one run.\n"
    )
    write_results(a.out, doc, md)
    print(md)


if __name__ == "__main__":
    main()
