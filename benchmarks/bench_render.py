"""Rasterisation throughput (sketches/s), antialiased vs the plain aliased Pillow draw as reference.

    python benchmarks/bench_render.py [--n 2000] [--sizes 64 224] [--out benchmarks/results/render]

Sketches: the embedded default collection (hand-drawn-looking marks and kanji, ~40-150 points each).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, machine_info, table_markdown, write_results

from sketchsearch.data.render import rasterize
from sketchsearch.data.synthetic import default_collection


def rate(fn, items, repeats: int = 3) -> float:
    best = 0.0
    for _ in range(repeats):
        t0 = time.perf_counter()
        for s in items:
            fn(s)
        best = max(best, len(items) / (time.perf_counter() - t0))
    return best


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 224])
    ap.add_argument("--out", default=str(RESULTS / "render"))
    a = ap.parse_args(argv)
    sketches = [it.sketch for it in default_collection(seed=0).items[: a.n]]
    pts = sum(s.n_points for s in sketches) / len(sketches)
    rows = []
    for size in a.sizes:
        lw = 1.5 * size / 64
        ours = rate(lambda s, size=size, lw=lw: rasterize(s, size=size, line_width=lw), sketches)
        ref = rate(lambda s, size=size, lw=lw: rasterize(s, size=size, line_width=lw, supersample=1), sketches)
        rows.append(
            {
                "renderer": "sketchsearch (4x supersampled, antialiased)",
                "size": size,
                "sketches_per_s": ours,
                "ratio_vs_aliased": ours / ref,
            }
        )
        rows.append(
            {
                "renderer": "reference: aliased Pillow draw",
                "size": size,
                "sketches_per_s": ref,
                "ratio_vs_aliased": 1.0,
            }
        )
        print(f"{size}x{size}: {ours:,.0f} sketches/s antialiased, {ref:,.0f} aliased", flush=True)
    payload = {
        "machine": machine_info(),
        "n_sketches": len(sketches),
        "mean_points": pts,
        "threads": 1,
        "rows": rows,
    }
    columns = ["renderer", "size", "sketches_per_s", "ratio_vs_aliased"]
    write_results(a.out, payload, table_markdown(payload, columns, "Rasterisation throughput (one core)"))


if __name__ == "__main__":
    main()
