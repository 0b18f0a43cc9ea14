"""Pixel-hashing baselines on QuickDraw raw: ITQ and LSH (and a PCA float row) at 16/32/64/128 bits.

Protocol: every labelled drawing of ``--data`` rendered to a 32 x 32 raster; per class ``--queries-per-class``
random queries (seeded, per class), the rest is the gallery; ITQ / LSH / PCA are fitted on the *gallery*
(these baselines are unsupervised, so no label is used, but they do see the gallery's pixels); every query
ranks the whole gallery by Hamming distance (cosine for PCA), ties by id; same label = relevant.

    python benchmarks/baseline_quickdraw.py [--data ../shared/data/quickdraw/raw] [--json ...] [--md ...]

writes benchmarks/results/baselines_quickdraw.{json,md} and the split (item ids) to
benchmarks/results/quickdraw_raw_split_q10_seed0.json, reused by later runs.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch
from threadpoolctl import threadpool_limits

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import DATA_ROOT, machine_info

from sketchsearch.eval.protocol import run_benchmark

HERE = Path(__file__).resolve().parent
COLUMNS = ("mAP@all", "P@100", "mAP@100", "mAP@100_min", "P@200", "acc@1", "MAP@R")


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=os.path.relpath(DATA_ROOT / "quickdraw" / "raw"))
    ap.add_argument("--json", default=str(HERE / "results" / "baselines_quickdraw.json"))
    ap.add_argument("--md", default=str(HERE / "results" / "baselines_quickdraw.md"))
    ap.add_argument("--bits", type=int, nargs="+", default=[16, 32, 64, 128])
    ap.add_argument("--pca-dims", type=int, nargs="*", default=[64], help="float PCA rows (none: --pca-dims)")
    ap.add_argument("--queries-per-class", type=int, default=10)
    ap.add_argument("--split-seed", type=int, default=0)
    ap.add_argument(
        "--seed", type=int, default=0, help="seed of the LSH hyperplanes and the ITQ initial rotation"
    )
    ap.add_argument(
        "--split-file", default=None, help="default: results/quickdraw_raw_split_q{Q}_seed{S}.json"
    )
    ap.add_argument("--limit", type=int, default=None, help="read at most this many drawings (smoke runs)")
    args = ap.parse_args(argv)

    torch.set_num_threads(1)
    split_file = (
        args.split_file
        or HERE / "results" / f"quickdraw_raw_split_q{args.queries_per_class}_seed{args.split_seed}.json"
    )
    rows = []
    for b in args.bits:
        rows.append({"label": f"ITQ {b}", "method": "itq", "kwargs": {"nbits": b, "seed": args.seed}})
        rows.append({"label": f"LSH {b}", "method": "lsh", "kwargs": {"nbits": b, "seed": args.seed}})
    rows += [
        {"label": f"PCA {d} (float, cosine)", "method": "pca", "kwargs": {"dim": d}} for d in args.pca_dims
    ]
    notes = [
        (
            "Pixels: 32x32 rasters (line width 1.5 px), flattened and centred; LSH = sign of seeded Gaussian"
            " projections; ITQ = PCA to the code length + 50 ITQ iterations (Gong & Lazebnik 2011)."
        ),
        "ITQ, LSH (mean) and PCA are fitted on the gallery part of the split (unsupervised: no labels used).",
        (
            "Full ranking of the gallery per query; ties in distance broken by id; queries without any relevant"
            " gallery item would be excluded (none here)."
        ),
        "mAP@k is normalised by #relevant, mAP@k_min by min(k, #relevant); MAP@R after Musgrave et al. 2020.",
        (
            "QuickDraw raw has few drawings per class, so P@100 is bounded by the mean min(R, 100) / 100"
            " (R = relevant gallery items of a query; mean R is in the JSON as mean_relevant)."
        ),
        "Search ms/query: exact Hamming scan (cosine for PCA) on one thread of a shared 2-core machine.",
    ]
    meta = {
        "command": " ".join(
            [Path(sys.argv[0]).name if argv is None else "baseline_quickdraw.py", *(argv or sys.argv[1:])]
        ),
        "machine": machine_info(),
    }
    t0 = time.perf_counter()
    with threadpool_limits(1):
        doc = run_benchmark(
            rows,
            {"path": args.data, "limit": args.limit},
            {"queries_per_class": args.queries_per_class, "seed": args.split_seed, "file": str(split_file)},
            json_path=args.json,
            md_path=args.md,
            columns=COLUMNS,
            title="Pixel-hashing baselines on QuickDraw (raw)",
            notes=notes,
            meta=meta,
            progress=lambda s: print(s, flush=True),
        )
    print(f"done in {time.perf_counter() - t0:.1f} s -> {args.json}, {args.md}")
    return doc


if __name__ == "__main__":
    main()
