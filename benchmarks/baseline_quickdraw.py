"""Pixel-hashing baselines on QuickDraw raw: ITQ and LSH (and a PCA float row) at 16/32/64/128 bits.

Protocol: every drawing of ``--data`` (``data.sources.load_collection``) rendered to a 32 x 32 raster; the
``category`` split (``data.splits``: per class ``--queries-per-class`` random queries, seeded per class, the
rest is the gallery); ITQ / LSH / PCA are fitted on the *gallery* (these baselines are unsupervised, so no
label is used, but they do see the gallery's pixels); every query ranks the whole gallery by Hamming
distance (cosine for PCA), ties by id; same label = relevant (``eval.evaluate.evaluate_rows``).

    python benchmarks/baseline_quickdraw.py [--data ../shared/data/quickdraw/raw] [--json ...] [--md ...]

writes benchmarks/results/baselines_quickdraw.{json,md} and the split (item ids, ``Split.save``) to
benchmarks/results/quickdraw_raw_split_q10_seed0.json, reused (and checked against the data) by later runs.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch
from threadpoolctl import threadpool_limits

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import DATA_ROOT, RESULTS, machine_info

from sketchsearch.data.collection import Collection
from sketchsearch.data.sources import load_collection
from sketchsearch.data.splits import Split, make_split
from sketchsearch.eval.evaluate import Row, evaluate_rows

COLUMNS = ("mAP@all", "P@100", "mAP@100", "mAP@100_min", "P@200", "acc@1", "MAP@R")


def category_split(coll: Collection, path: Path | None, queries_per_class: int, seed: int) -> Split:
    """The category split saved at ``path`` (checked against ``coll`` and the asked parameters), or a new one,
    saved there when a path is given."""
    if path is None or not path.is_file():
        split = make_split("category", coll.items, queries_per_class=queries_per_class, seed=seed)
        if path is not None:
            dataclasses.replace(split, data=coll.path).save(path)
        return split
    split = Split.load(path)
    split.check(coll.items, path)
    asked = ("category", seed, queries_per_class)
    if (split.kind, split.seed, split.params.get("queries_per_class")) != asked:
        raise ValueError(
            f"{path}: a {split.kind} split with seed={split.seed}, params {split.params}; asked for "
            f"a category split with seed={seed}, queries_per_class={queries_per_class}"
        )
    return split


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=os.path.relpath(DATA_ROOT / "quickdraw" / "raw"))
    ap.add_argument("--json", default=str(RESULTS / "baselines_quickdraw.json"))
    ap.add_argument("--md", default=str(RESULTS / "baselines_quickdraw.md"))
    ap.add_argument("--bits", type=int, nargs="+", default=[16, 32, 64, 128])
    ap.add_argument("--pca-dims", type=int, nargs="*", default=[64], help="float PCA rows (none: --pca-dims)")
    ap.add_argument("--queries-per-class", type=int, default=10)
    ap.add_argument("--split-seed", type=int, default=0)
    ap.add_argument("--seed", type=int, default=0, help="seed of the LSH hyperplanes and the ITQ initial rotation")
    ap.add_argument(
        "--split-file",
        default=None,
        help="default: results/quickdraw_raw_split_q{Q}_seed{S}.json (with --limit: none, the split is not saved)",
    )
    ap.add_argument("--limit", type=int, default=None, help="read at most this many drawings (smoke runs)")
    args = ap.parse_args(argv)

    torch.set_num_threads(1)
    default_split = RESULTS / f"quickdraw_raw_split_q{args.queries_per_class}_seed{args.split_seed}.json"
    split_file = Path(args.split_file) if args.split_file else None if args.limit else default_split
    rows = []
    for b in args.bits:
        rows.append(Row(f"ITQ {b}", method="itq", kwargs={"nbits": b, "seed": args.seed}))
        rows.append(Row(f"LSH {b}", method="lsh", kwargs={"nbits": b, "seed": args.seed}))
    rows += [Row(f"PCA {d} (float, cosine)", method="pca", kwargs={"dim": d}) for d in args.pca_dims]
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
    if split_file is not None:
        notes.append(f"Split file: {split_file.name} (item ids of the query and gallery parts).")
    meta = {
        "command": " ".join(
            [Path(sys.argv[0]).name if argv is None else "baseline_quickdraw.py", *(argv or sys.argv[1:])]
        )
    }
    meta["machine"] = machine_info()
    t0 = time.perf_counter()
    with threadpool_limits(1):
        coll = load_collection(args.data, limit=args.limit)
        split = category_split(coll, split_file, args.queries_per_class, args.split_seed)
        doc = evaluate_rows(
            rows,
            coll,
            split,
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
