"""Exact top-k Hamming search, one core: this project's numba scan vs faiss IndexBinaryFlat vs numpy.

    python benchmarks/bench_hamming.py [--sizes 100000 1000000 10000000] [--bits 64 128] [--queries 64]
                                       [--k 100] [--repeats 3] [--json] [--json-out PATH] [--md-out PATH]

Rows: ``numba`` (this project's scan, the index backend ``numba``; results before 2026-12 named it
``sketchsearch``), ``faiss-raw`` (a plain ``faiss.IndexBinaryFlat``, its ``search`` called as it is: the
speed reference, ``speedup_vs_faiss``),
``faiss`` (this project's faiss backend: the same index made tie-exact, which asks for extra hits and
sorts ties by id; the reference for *results*), ``numpy`` (the reference implementation).

Data: uniformly random codes and queries (seed 0). Every backend searches the same queries in the
same run with one thread (faiss.omp_set_num_threads(1); the numba kernel is single-threaded); the
figure is the best of ``--repeats`` runs, in ms per query, after a warm-up search (numba compile /
cache load and faiss's first touch are not counted). The numpy reference is slow, so above
``--numpy-max-work`` (n x queries) it runs on fewer queries; its row says how many. Each row also
says whether its results equal the tie-exact faiss backend's (ids and distances, ties broken by id);
faiss-raw orders ties its own way, so for it only the distances are compared.

Output: the results (markdown, or with ``--json`` the rows as JSON) on stdout, progress lines on stderr, so
``--json | python -m json.tool`` parses.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine_info, markdown_table, write_atomic

from sketchsearch.index import create_index

#: Row name -> index backend (None: the plain faiss index below).
BACKENDS = {"numba": "numba", "faiss-raw": None, "faiss": "faiss", "numpy": "numpy"}


class RawFaiss:
    """A plain ``faiss.IndexBinaryFlat`` (no tie handling): what the foundation issue's speed target names."""

    def __init__(self, nbits: int) -> None:
        import faiss

        self.index = faiss.IndexBinaryFlat(nbits)

    def add(self, codes: np.ndarray) -> None:
        self.index.add(codes)

    def search(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        return self.index.search(q, k)


def best_ms_per_query(index: Any, q: np.ndarray, k: int, repeats: int) -> tuple[float, tuple[np.ndarray, np.ndarray]]:
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
            for name, backend in BACKENDS.items():
                index = RawFaiss(nbits) if backend is None else create_index(backend, nbits=nbits)
                index.add(xb)
                index.search(q[:2], k)  # warm-up: compile / load kernels, build faiss's index
                nq_b = nq
                if name == "numpy" and n * nq > numpy_max_work:
                    nq_b = max(1, min(nq, int(numpy_max_work // n)))
                ms, (d, ids) = best_ms_per_query(index, q[:nq_b], k, repeats if nq_b == nq else 1)
                res[name] = {"ms": ms, "nq": nq_b, "d": d, "ids": ids}
                print(
                    f"{name:>12} n={n:>9} bits={nbits:>3}  {ms:8.3f} ms/query ({nq_b} queries)",
                    file=sys.stderr,
                    flush=True,
                )
                del index
            ref = res["faiss"]  # tie-exact results
            for name in BACKENDS:
                r = res[name]
                m = r["nq"]
                same_d = np.array_equal(r["d"], ref["d"][:m])
                agree = bool(same_d and (name == "faiss-raw" or np.array_equal(r["ids"], ref["ids"][:m])))
                rows.append(
                    {
                        "backend": name,
                        "n": n,
                        "bits": nbits,
                        "k": k,
                        "queries": m,
                        "ms_per_query": round(r["ms"], 4),
                        "speedup_vs_faiss": round(res["faiss-raw"]["ms"] / r["ms"], 2),
                        "speedup_vs_faiss_tie_exact": round(ref["ms"] / r["ms"], 2),
                        "speedup_vs_numpy": round(res["numpy"]["ms"] / r["ms"], 2),
                        "same_results_as_faiss": agree,
                        "note": (
                            f"numpy sampled: {m} of {nq} queries"
                            if m != nq
                            else "distances compared (ties in faiss's own order)"
                            if name == "faiss-raw"
                            else ""
                        ),
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
    ap.add_argument("--numpy-max-work", type=float, default=2e7, help="n x queries above which numpy is sampled")
    here = Path(__file__).resolve().parent / "results"
    ap.add_argument("--json", action="store_true", help="print the result rows as JSON on stdout")
    ap.add_argument("--json-out", default=str(here / "hamming.json"), help="results JSON file")
    ap.add_argument("--md-out", default=str(here / "hamming.md"), help="results markdown file")
    a = ap.parse_args(argv)
    rows = run(a.sizes, a.bits, a.queries, a.k, a.repeats, a.numpy_max_work)
    import json

    payload = {"benchmark": "hamming_knn", "k": a.k, "threads": 1, "machine": machine_info(), "rows": rows}
    write_atomic(a.json_out, json.dumps(payload, indent=2) + "\n")
    cols = [
        "backend",
        "n",
        "bits",
        "queries",
        "ms_per_query",
        "speedup_vs_faiss",
        "speedup_vs_faiss_tie_exact",
        "speedup_vs_numpy",
        "same_results_as_faiss",
        "note",
    ]
    md = f"# Exact top-{a.k} Hamming search, 1 thread\n\n" + markdown_table(rows, cols)
    md += (
        f"\nMachine: {payload['machine']['cpu']}, {payload['machine']['cores']} cores (others' jobs may share them).\n"
    )
    md += (
        "\n`speedup_vs_faiss`: against faiss-raw (plain `IndexBinaryFlat.search`); `speedup_vs_faiss_tie_exact`: "
        "against this project's tie-exact faiss backend; `same_results_as_faiss`: ids and distances equal to "
        "the tie-exact backend's (faiss-raw: distances).\n"
    )
    write_atomic(a.md_out, md)
    print(json.dumps(rows, indent=2) if a.json else md)


if __name__ == "__main__":
    main()
