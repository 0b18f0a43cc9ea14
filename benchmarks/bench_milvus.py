"""The milvus backend (embedded milvus-lite) beside the numba scan and faiss's IndexBinaryFlat: exact top-k.

    nice -n 5 python benchmarks/bench_milvus.py [--n 100000] [--bits 64 256] [--queries 500] [--k 100]
        [--repeats 3]

Data: ``--n`` uniformly random codes of each of ``--bits`` and ``--queries`` random queries (seed 0); ids
0..n-1. Rows, each searching the same queries in the same run, in turn within each of ``--repeats`` rounds (so
that a change of the machine's load hits them alike; the best round is kept, after a warm-up search):

* ``numba (scan)``: the default backend, one thread.
* ``faiss IndexBinaryFlat``: the ``faiss`` backend (faiss's flat scan, its tie re-sort included), one thread.
* ``milvus-lite``: the ``milvus`` backend on this process's embedded milvus-lite (BIN_FLAT, HAMMING): what
  ``index build --backend milvus`` searches with, ties proven complete (``index/milvus.py``).
* ``milvus-lite, one plain search``: the same collection asked once with ``limit=k`` through pymilvus, its
  hits sorted by (distance, id): what a client gets without the tie proof. Its ``same_results`` says whether
  Milvus's cut at ``k`` kept the rows with the smallest ids.

The milvus-lite server is a separate process with threads of its own (not limited to one). ``ms_per_query``:
search only; ``vs_numba``: ms/query over the scan's in the same run (above 1 = slower); ``same_results``:
ids and distances equal to the scan's (ties by id); ``add_s``: the add of the n codes (for milvus: creating
the collection and inserting every row); ``fallbacks``: queries the milvus backend answered with its local
scan (ties past Milvus's topk limit; none expected here).

Output: ``benchmarks/results/milvus.{json,md}``; progress on stderr.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, machine_info, table_markdown, write_results

from sketchsearch.index import MISSING_DISTANCE, create_index

COLUMNS = ["bits", "n", "backend", "queries", "k", "ms_per_query", "vs_numba", "same_results", "add_s", "fallbacks"]
SCAN, FAISS, MILVUS, PLAIN = "numba (scan)", "faiss IndexBinaryFlat", "milvus-lite", "milvus-lite, one plain search"


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def plain_search(index: Any, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """One pymilvus search of the milvus index's collection with ``limit=k``, hits sorted by (distance, id)."""
    from sketchsearch.index.milvus import _client

    found = _client(index.uri).search(
        index.collection,
        data=[row.tobytes() for row in q],
        anns_field="code",
        limit=k,
        search_params={"metric_type": "HAMMING"},
        output_fields=[],
    )
    dist = np.full((len(q), k), MISSING_DISTANCE, np.int32)
    ids = np.full((len(q), k), -1, np.int64)
    for j, hits in enumerate(found):
        d, i = np.asarray(hits.distances, np.int32), np.asarray(hits.ids, np.int64)
        order = np.lexsort((i, d))
        dist[j, : len(i)], ids[j, : len(i)] = d[order], i[order]
    return dist, ids


def run_one(nbits: int, n: int, n_queries: int, k: int, repeats: int, rng: np.random.Generator) -> list[dict[str, Any]]:
    xb = rng.integers(0, 256, size=(n, nbits // 8), dtype=np.uint8)
    q = rng.integers(0, 256, size=(n_queries, nbits // 8), dtype=np.uint8)
    indexes: dict[str, Any] = {}
    add_s: dict[str, float] = {}
    for name, backend in ((SCAN, "numba"), (FAISS, "faiss"), (MILVUS, "milvus")):
        index = create_index(backend, nbits=nbits)
        t0 = time.perf_counter()
        index.add(xb)
        add_s[name] = time.perf_counter() - t0
        indexes[name] = index
    searches = {name: index.search for name, index in indexes.items()}
    searches[PLAIN] = lambda queries, kk: plain_search(indexes[MILVUS], queries, kk)
    for search in searches.values():
        search(q[:2], k)  # warm-up: numba's kernel loaded, faiss's index built, the collection loaded
    best = dict.fromkeys(searches, float("inf"))
    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for r in range(repeats):
        for name, search in searches.items():
            t0 = time.perf_counter()
            out[name] = search(q, k)
            best[name] = min(best[name], (time.perf_counter() - t0) * 1e3 / len(q))
        log(f"  round {r + 1}/{repeats}: " + ", ".join(f"{name} {best[name]:.3f}" for name in searches))
    ref_d, ref_i = out[SCAN]
    rows = []
    for name in searches:
        d, i = out[name]
        same = bool(np.array_equal(d, ref_d) and np.array_equal(i, ref_i))
        log(
            f"{nbits:>4} bits n={n}  {name:>30} {best[name]:8.4f} ms/query  x{best[name] / best[SCAN]:.2f}  same={same}"
        )
        rows.append(
            {
                "bits": nbits,
                "n": n,
                "backend": name,
                "queries": n_queries,
                "k": k,
                "ms_per_query": round(best[name], 4),
                "vs_numba": round(best[name] / best[SCAN], 2),
                "same_results": same,
                "add_s": round(add_s[name], 3) if name in add_s else "",
                "fallbacks": indexes[MILVUS].local_fallbacks if name == MILVUS else "",
            }
        )
    return rows


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--bits", type=int, nargs="+", default=[64, 256])
    ap.add_argument("--queries", type=int, default=500)
    ap.add_argument("--k", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=RESULTS / "milvus", help="results path without suffix")
    a = ap.parse_args(argv)

    import faiss
    import numba
    import pymilvus

    numba.set_num_threads(1)
    faiss.omp_set_num_threads(1)
    rng = np.random.default_rng(0)
    rows: list[dict[str, Any]] = []
    for nbits in a.bits:
        rows += run_one(nbits, a.n, a.queries, a.k, a.repeats, rng)
    from importlib.metadata import version

    doc = {
        "benchmark": "milvus_knn",
        "k": a.k,
        "n": a.n,
        "pymilvus": pymilvus.__version__,
        "milvus_lite": version("milvus-lite"),
        "faiss": faiss.__version__,
        "command": "nice -n 5 python benchmarks/bench_milvus.py "
        + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": machine_info(),
        "rows": rows,
    }
    md = table_markdown(
        doc, COLUMNS, f"Exact top-{a.k} Hamming search on {a.n} random codes: milvus-lite vs the numba scan and faiss"
    )
    md += (
        f"\nCommand: `{doc['command'].strip()}` (pymilvus {doc['pymilvus']}, milvus-lite {doc['milvus_lite']}, "
        f"faiss {doc['faiss']}). numba and faiss: one thread in this process; milvus-lite: a server process with "
        "threads of its own. `vs_numba`: ms/query over the scan's in the same run. `same_results`: ids and "
        "distances equal to the scan's (ties by id). `milvus-lite, one plain search`: the same collection asked "
        "once with limit=k, hits sorted by (distance, id), without the backend's tie proof. `add_s`: adding the "
        "codes (milvus: creating the collection and inserting them). Others' jobs may share the cores: compare "
        "rows of one run.\n"
    )
    write_results(a.out, doc, md)
    print(md)


if __name__ == "__main__":
    main()
