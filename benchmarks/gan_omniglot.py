"""sketch-GAN vs thin-GAN vs untrained discriminators vs pixel ITQ / LSH on Omniglot, leave-one-out.

    python benchmarks/gan_omniglot.py [--omniglot ../shared/data/omniglot/strokes_background_small1]
        [--train ../shared/data/sketchrnn/omniglot.npz] [--models sketch-gan thin-gan] [--update-cards]

The sketch-GAN paper judged retrieval only by eye on (non-public) merchant marks; this measures it. The
stand-in: Omniglot "small1" (136 characters x 20 people = 2,720 drawings, strokes rendered at 64 x 64 with
each model's own preprocessing); every drawing queries the other 2,719, and drawings of the same character
are relevant (19 per query). The data is read by ``data.sources.load_collection``, split by
``data.splits`` (``leave_one_out``) and every row is scored by ``eval.evaluate.evaluate``, through the shared
``Retriever`` (the same path as ``sketchsearch evaluate --protocol leave-one-out``). Rows:

* the shipped GAN encoders (float 1024-d, cosine) and their 1024-bit centred binary codes (Hamming);
* the same discriminators with random weights (seed 0), batch norm calibrated and centred on the same
  unlabelled training drawings as the trained ones: what training adds;
* the foundation's pixel baselines (ITQ, LSH at 64 and 256 bits, and PCA 256-d float) fitted on the same
  unlabelled drawings (``--fit-on`` of them, a seeded subset of ``--train``, read as the GAN recipe reads it).

No method sees a label. The GANs were trained on sketch-rnn's omniglot.npz, which is drawn from the whole
Omniglot set, so the evaluation characters' *classes* (not labels) may occur in training, as for the pixel
baselines fitted on the same file: an unsupervised, transductive-style setting like the paper's (it trained
and searched the same 2,000 marks).

Also writes the Fig. 6-like retrieval grids (15 queries + top 8 each) to ``docs/gan/retrieval_<model>.png``,
and measures encoding throughput (drawings/s) of each encoder on pre-rendered rasters (network only) and
end to end from strokes (rendering included).
Writes ``benchmarks/results/gan_omniglot.{json,md}``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import DATA_ROOT, RESULTS, ROOT, machine_info, table_markdown, write_results

from sketchsearch.data.collection import Collection
from sketchsearch.data.sources import load_collection
from sketchsearch.data.splits import Split, make_split
from sketchsearch.eval.evaluate import evaluate
from sketchsearch.eval.plots import retrieval_grid
from sketchsearch.methods.base import Method, create_method
from sketchsearch.methods.gan_encoder import GANEncoder, binary_variant, encode_rasters
from sketchsearch.model import load_model, resolve_model, save_model
from sketchsearch.recipes.gan import drawings, load_unlabelled, render
from sketchsearch.retrieval import Retriever

KS = (1, 8, 100)


def _eval(label: str, method: Method, coll: Collection, split: Split, extra: dict[str, Any]) -> dict[str, Any]:
    t0 = time.perf_counter()
    res = evaluate(method, coll, split, ks=KS)["main"]
    row = {
        "label": label,
        "output": method.output,
        "code_size": int(method.code_size),
        **{k: res[k] for k in ("mAP@all", "P@8", "P@1", "MAP@R", "encode_per_s")},
        "seconds": time.perf_counter() - t0,
        **extra,
    }
    print(f"{label:32s} mAP@all {row['mAP@all']:.4f}  P@8 {row['P@8']:.4f}  ({row['seconds']:.0f}s)", flush=True)
    return row


def _network_throughput(method: Method, rasters: np.ndarray) -> float:
    encode_rasters(method, rasters[:64])  # warm-up
    t0 = time.perf_counter()
    encode_rasters(method, rasters)
    return len(rasters) / (time.perf_counter() - t0)


def _grid(
    method: Method, rasters: np.ndarray, labels: list[str], queries: np.ndarray, path: Path, title: str
) -> dict[str, Any]:
    r = Retriever(method)
    codes = r.encode(list(rasters))
    r.add(list(rasters), ids=np.arange(len(rasters), dtype=np.int64), encoded=codes)
    _, ids = r.search_encoded(codes[queries], 9)
    top = np.stack([[i for i in row if i != q][:8] for row, q in zip(np.asarray(ids), queries)])
    rel = np.array([[labels[j] == labels[q] for j in row] for row, q in zip(top, queries)])
    retrieval_grid(rasters[queries], rasters[top], path, relevant=rel, title=title)
    return {"queries": queries.tolist(), "top8": top.tolist(), "relevant_in_top8": int(rel.sum())}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--omniglot", default=str(DATA_ROOT / "omniglot" / "strokes_background_small1"))
    ap.add_argument("--train", default=str(DATA_ROOT / "sketchrnn" / "omniglot.npz"))
    ap.add_argument("--models", nargs="+", default=["sketch-gan", "thin-gan"])
    ap.add_argument(
        "--fit-on", type=int, default=10_000, help="unlabelled drawings for baselines / untrained calibration"
    )
    ap.add_argument("--update-cards", action="store_true", help="write the measured metrics into the models' cards")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(RESULTS / "gan_omniglot"))
    ap.add_argument("--figures", default=str(ROOT / "docs" / "gan"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    coll = load_collection(args.omniglot)
    split = make_split("leave_one_out", coll.items)  # every labelled drawing queries all the others
    labels = [str(coll[i].label) for i in split.gallery]
    print(
        f"omniglot: {len(labels)} drawings, {len(set(labels))} characters ({coll.skipped} skipped)",
        flush=True,
    )
    train = load_unlabelled(args.train)
    train_sketches, _ = drawings(train, args.fit_on, seed=0)
    rng = np.random.default_rng(0)
    chars = sorted(set(labels))
    pick = rng.choice(len(chars), size=15, replace=False)
    queries = np.array([rng.choice([i for i, y in enumerate(labels) if y == chars[c]]) for c in pick])
    gallery = coll.subset(split.gallery)

    rows: list[dict[str, Any]] = []
    grids: dict[str, Any] = {}
    for name in args.models:
        method, card = load_model(name)
        assert isinstance(method, GANEncoder)
        rasters, _ = render(gallery, method, None, 0)
        info = {"model": card.name, "model_id": card.model_id, "iterations": card.training.get("iterations")}
        rows.append(
            _eval(
                f"{card.name} (float)",
                method,
                coll,
                split,
                {**info, "network_per_s": _network_throughput(method, rasters)},
            )
        )
        rows.append(_eval(f"{card.name} (1024-bit centred)", binary_variant(method), coll, split, info))
        grids[card.name] = _grid(
            method,
            rasters,
            labels,
            queries,
            Path(args.figures) / f"retrieval_{card.name}.png",
            f"{card.name}: query (purple) + top 8 (green = same character)",
        )
        if args.update_cards:
            row = rows[-2]
            metrics = {
                "omniglot_small1_leave_one_out": {
                    k: round(float(row[k]), 4) for k in ("mAP@all", "P@8", "P@1", "MAP@R")
                },
                "omniglot_small1_leave_one_out_binary_1024": {
                    k: round(float(rows[-1][k]), 4) for k in ("mAP@all", "P@8")
                },
                "measured_by": "python benchmarks/gan_omniglot.py --update-cards",
            }
            stem = resolve_model(name)
            save_model(method, stem, training=card.training, metrics=metrics)
        arch = method.arch
        torch.manual_seed(0)
        untrained = create_method("gan", arch=arch)
        assert isinstance(untrained, GANEncoder)
        train_r, _ = render(train, untrained, args.fit_on, 0)  # the same drawings as train_sketches
        untrained.calibrate(torch.from_numpy(train_r)[:, None])
        rows.append(
            _eval(
                f"{arch} untrained D (float)",
                untrained,
                coll,
                split,
                {"network_per_s": _network_throughput(untrained, rasters)},
            )
        )
        rows.append(_eval(f"{arch} untrained D (1024-bit centred)", binary_variant(untrained), coll, split, {}))

    for method_name, kw in (
        ("itq", {"nbits": 64}),
        ("itq", {"nbits": 256}),
        ("lsh", {"nbits": 64}),
        ("lsh", {"nbits": 256}),
        ("pca", {"dim": 256}),
    ):
        try:
            m = create_method(method_name, **kw)
        except ValueError as e:
            print(f"skipping {method_name}: {e}", flush=True)
            continue
        t0 = time.perf_counter()
        m.fit(train_sketches)
        fit_s = time.perf_counter() - t0
        size = m.preprocessing.raster_size
        rows.append(
            _eval(
                f"pixel {method_name.upper()} {next(iter(kw.values()))} ({size}x{size})",
                m,
                coll,
                split,
                {"fit_seconds": fit_s},
            )
        )

    payload = {
        "benchmark": "gan_omniglot",
        "dataset": {
            "path": args.omniglot,
            "drawings": len(labels),
            "characters": len(chars),
            "relevant": "same character",
        },
        "protocol": "leave-one-out: each drawing queries the other 2,719; complete rankings; ties by gallery position",
        "unlabelled_training_data": {"path": args.train, "fit_on": len(train_sketches)},
        "machine": machine_info(),
        "threads": args.threads,
        "rows": rows,
        "retrieval_figures": grids,
    }
    columns = ["label", "output", "code_size", "mAP@all", "P@8", "P@1", "MAP@R", "encode_per_s"]
    title = "GAN encoders on Omniglot (leave-one-out)"
    write_results(args.out, payload, table_markdown(payload, columns, title))
    print(f"wrote {args.out}.json / .md", flush=True)


if __name__ == "__main__":
    main()
