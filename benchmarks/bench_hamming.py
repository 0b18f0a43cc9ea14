"""Exact top-k Hamming search, one core: the "sketchsearch" numba scan vs faiss IndexBinaryFlat vs numpy.

    python benchmarks/bench_hamming.py [--sizes 100000 1000000 10000000] [--bits 64 128] [--queries 64]
                                       [--k 100] [--repeats 3] [--json PATH] [--md PATH]

Data: uniformly random codes and queries (seed 0). Every backend searches the same queries in the
same run with one thread (faiss.omp_set_num_threads(1); the numba kernel is single-threaded); the
figure is the best of ``--repeats`` runs, in ms per query, after a warm-up search (numba compile /
cache load and faiss's first touch are not counted). The numpy reference is slow, so above
``--numpy-max-work`` (n x queries) it runs on fewer queries; its row says how many. Each row also
says whether its results equal the faiss backend's (ids and distances, ties broken by id).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, markdown_table, write_atomic

from sketchsearch.index.hamming import create_index

BACKENDS = ("sketchsearch", "faiss", "numpy")


def best_ms_per_query(
    index: Any, q: np.ndarray, k: int, repeats: int
) -> tuple[float, tuple[np.ndarray, np.ndarray]]:
    best = float("inf")
    out = None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = index.search(q, k)
        best = min(best, (time.perf_counter() - t0) * 1e3 / len(q))
    assert out is not None
    return best, out


def run(
    sizes: list[int], bits: list[int], nq: int, k: int, repeats: int, numpy_max_work: float
) -> list[dict[str, Any]]:
    import faiss
    import numba

    faiss.omp_set_num_threads(1)
    numba.set_num_threads(1)
    rng = np.random.default_rng(0)
    rows: list[dict[str, Any]] = []
    for nbits in bits:
        for n in sizes:
            xb = rng.integers(0, 256, size=(n, nbits // 8), dtype=np.uint8)
            q = rng.integers(0, 256, size=(nq, nbits // 8), dtype=np.uint8)
            res: dict[str, dict[str, Any]] = {}
            for name in BACKENDS:
                index = create_index(name, nbits=nbits)
                index.add(xb)
                index.search(q[:2], k)  # warm-up: compile / load kernels, build faiss's index
                nq_b = nq
                if name == "numpy" and n * nq > numpy_max_work:
                    nq_b = max(1, min(nq, int(numpy_max_work // n)))
                ms, (d, ids) = best_ms_per_query(index, q[:nq_b], k, repeats if nq_b == nq else 1)
                res[name] = {"ms": ms, "nq": nq_b, "d": d, "ids": ids}
                print(f"{name:>12} n={n:>9} bits={nbits:>3}  {ms:8.3f} ms/query ({nq_b} queries)", flush=True)
                del index
            ref = res["faiss"]
            for name in BACKENDS:
                r = res[name]
                m = r["nq"]
                agree = bool(
                    np.array_equal(r["ids"], ref["ids"][:m]) and np.array_equal(r["d"], ref["d"][:m])
                )
                rows.append(
                    {
                        "backend": name,
                        "n": n,
                        "bits": nbits,
                        "k": k,
                        "queries": m,
                        "ms_per_query": round(r["ms"], 4),
                        "speedup_vs_faiss": round(ref["ms"] / r["ms"], 2),
                        "speedup_vs_numpy": round(res["numpy"]["ms"] / r["ms"], 2),
                        "same_results_as_faiss": agree,
                        "note": "" if m == nq else f"numpy sampled: {m} of {nq} queries",
                    }
                )
    return rows


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000, 10_000_000])
    ap.add_argument("--bits", type=int, nargs="+", default=[64, 128])
    ap.add_argument("--queries", type=int, default=64)
    ap.add_argument("--k", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument(
        "--numpy-max-work", type=float, default=2e7, help="n x queries above which numpy is sampled"
    )
    here = Path(__file__).resolve().parent / "results"
    ap.add_argument("--json", default=str(here / "hamming.json"))
    ap.add_argument("--md", default=str(here / "hamming.md"))
    a = ap.parse_args(argv)
    rows = run(a.sizes, a.bits, a.queries, a.k, a.repeats, a.numpy_max_work)
    import json

    payload = {"benchmark": "hamming_knn", "k": a.k, "threads": 1, "machine": machine(), "rows": rows}
    write_atomic(a.json, json.dumps(payload, indent=2) + "\n")
    cols = [
        "backend",
        "n",
        "bits",
        "queries",
        "ms_per_query",
        "speedup_vs_faiss",
        "speedup_vs_numpy",
        "same_results_as_faiss",
        "note",
    ]
    md = f"# Exact top-{a.k} Hamming search, 1 thread\n\n" + markdown_table(rows, cols)
    md += f"\nMachine: {payload['machine']['cpu']}, {payload['machine']['cores']} cores (others' jobs may share them).\n"
    write_atomic(a.md, md)
    print(md)


if __name__ == "__main__":
    main()
