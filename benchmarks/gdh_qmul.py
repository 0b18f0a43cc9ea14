"""GDH fine-grained on QMUL shoes and chairs: acc@1 / acc@10 / mean rank beside the paper's Tables 4-5.

Protocol (``eval.evaluate``'s ``instance`` protocol, QMUL's own train / test split: ``data.splits``'
``instance``): every test sketch queries the test photos; exactly one is right, the photo it was drawn from.
Shoes: 304 training pairs, 115 test; chairs: 200 / 97. **The photo domain is QMUL V1's edge maps** (the .mat
files here hold sketches and the photos' edge maps, not RGB photos), for every row, ours and the paper's
references alike (their HOG and triplet rows also read edge maps; GDH's own paper figures are on RGB photos).

Rows, in one run per dataset:

* references, closed form (fitted on the training sketches and edge maps together; these methods read
  drawings, so the edge maps enter as drawings): HOG (scikit-image, 128 px) float (PCA-128, cosine) and
  + ITQ at 32 / 64 / 128 bits; frozen ImageNet EfficientNet-Lite0 features (224 px, centred, cosine) and
  + ITQ at the same bits;
* the triplet Siamese network of "Sketch Me That Shoe" (``recipes`` ``siamese``: Lite0 with its top blocks
  trained, 256-d float), without and with augmentation;
* GDH (``recipes`` ``gdh-fg``: Algorithm 1 without the semantic steps, lambda = 1, batch 64, hash network
  Lite0 with its top blocks trained) at 32 / 64 / 128 bits; ablations at 128 bits: without L_gan (no
  migration networks: H on the raw sketch and edge map) and without attention.

Every trained row uses the same input size, frozen blocks and iterations (``--size``, ``--frozen``,
``--iterations``), the paper's batch (64 pairs) and lr (GDH 2e-4), seed 0, and records its acc@1 / acc@10
curve on the test pairs every ``--eval-every`` iterations (reported, never used to pick a model: each row is
its last iteration). Trained models are saved under ``--models`` (``runs/gdh_qmul``), a retrieval grid of the
best trained row per dataset goes to ``docs/``.

    python benchmarks/gdh_qmul.py                      # both datasets, every row (about 1-2 h on 2 CPU cores)
    python benchmarks/gdh_qmul.py --datasets shoes --rows siamese gdh-128
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import DATA_ROOT, RESULTS, ROOT, machine_info, markdown_table, write_results

from sketchsearch.data.batching import item_input
from sketchsearch.data.collection import Collection
from sketchsearch.data.sources import load_collection
from sketchsearch.data.splits import Split, make_split
from sketchsearch.eval.evaluate import evaluate, fit_on_split
from sketchsearch.eval.plots import curves, retrieval_grid
from sketchsearch.methods.base import create_method
from sketchsearch.model import save_model
from sketchsearch.recipes import run_recipe

#: the paper's Tables 4-5 (GDH, ECCV 2018): acc@1, acc@10 on shoes and chairs
PAPER: dict[str, dict[str, tuple[float, float] | None]] = {
    "HOG float": {"shoes": (0.244, 0.652), "chairs": (0.526, 0.938)},  # Dense-HOG + rankSVM
    "siamese": {"shoes": (0.330, 0.817), "chairs": (0.644, 0.956)},
    "siamese + aug": {"shoes": (0.391, 0.878), "chairs": (0.691, 0.979)},
    "GDH 32": {"shoes": (0.286, 0.720), "chairs": (0.392, 0.876)},
    "GDH 64": {"shoes": (0.323, 0.783), "chairs": (0.556, 0.959)},
    "GDH 128": {"shoes": (0.357, 0.843), "chairs": (0.671, 0.990)},
    "GDH 128 without L_gan": {"shoes": (0.226, 0.671), "chairs": None},
}
BITS = (32, 64, 128)
#: row key -> (table label, kind, options)
ROWS: dict[str, tuple[str, str, dict[str, Any]]] = {
    "hog": ("HOG float", "closed", {"method": "pca", "dim": 128, "features": "hog"}),
    **{f"hog-{b}": (f"HOG + ITQ {b}", "closed", {"method": "itq", "nbits": b, "features": "hog"}) for b in BITS},
    "imagenet": ("ImageNet Lite0 float", "closed", {"method": "pretrained"}),
    **{
        f"imagenet-{b}": (
            f"ImageNet Lite0 + ITQ {b}",
            "closed",
            {"method": "pretrained", "output": "binary", "code_size": b},
        )
        for b in BITS
    },
    "siamese": ("siamese", "siamese", {"augment": False}),
    "siamese-aug": ("siamese + aug", "siamese", {"augment": True}),
    **{f"gdh-{b}": (f"GDH {b}", "gdh-fg", {"nbits": b}) for b in BITS},
    "gdh-128-nogan": ("GDH 128 without L_gan", "gdh-fg", {"nbits": 128, "migration": False}),
    "gdh-128-noatt": ("GDH 128 without attention", "gdh-fg", {"nbits": 128, "attention": False}),
}
COLUMNS = ["row", "bits", "acc@1", "acc@10", "mean rank", "paper acc@1", "paper acc@10", "seconds"]


def as_drawings(coll: Collection) -> Collection:
    """The collection with its edge maps as drawings (modality ``sketch``): what raster-only methods read."""
    return Collection([dataclasses.replace(it, modality="sketch") for it in coll.items], name=coll.name)


def figures(main: dict[str, Any]) -> dict[str, Any]:
    return {"acc@1": main["acc@1"], "acc@10": main["acc@10"], "mean rank": main["mean_rank"]}


def run_row(key: str, dataset: str, coll: Collection, split: Split, a: argparse.Namespace) -> dict[str, Any]:
    label, kind, opts = ROWS[key]
    opts = dict(opts)
    t0 = time.perf_counter()
    paper = PAPER.get(label, {}).get(dataset)
    row: dict[str, Any] = {"key": key, "row": label, "bits": opts.get("nbits") or opts.get("code_size") or "float"}
    if kind == "closed":
        method = create_method(opts.pop("method"), **opts)
        drawings = as_drawings(coll)
        fit_on_split(method, drawings, split)
        main = evaluate(method, drawings, split, protocol="instance", ks=(1, 10))["main"]
        row.update(figures(main))
    else:
        trained = {"image_size": a.size, ("hash_frozen_blocks" if kind == "gdh-fg" else "frozen_blocks"): a.frozen}
        res = run_recipe(
            kind,
            str(coll_path(dataset, a)),
            {**trained, **opts, "eval_every": a.eval_every},
            seed=a.seed,
            iterations=a.iterations,
            progress=not a.quiet,
        )
        row.update(figures(res.metrics["main"]))
        row["curve"] = res.training.get("curve", [])
        row["train seconds"] = res.training["train_seconds"]
        row["last losses"] = res.training["last"]
        row["kwargs"] = res.method.hparams
        stem = a.models / dataset / key
        save_model(res.method, stem, training=res.training, metrics=res.metrics, split=res.split)
        row["model"] = shown(stem)
    row["seconds"] = round(time.perf_counter() - t0, 1)
    row["paper acc@1"], row["paper acc@10"] = paper if paper else ("", "")
    return row


def coll_path(dataset: str, a: argparse.Namespace) -> Path:
    return a.data / dataset


def shown(path: Path) -> str:
    """A path as results show it: relative to the repository when inside it."""
    return str(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path)


def write(a: argparse.Namespace, doc: dict[str, Any]) -> None:
    md = [f"# {doc['title']}\n"]
    for ds, part in doc["datasets"].items():
        md.append(f"\n## {ds} ({part['train_pairs']} training pairs, {part['test_pairs']} test; edge maps)\n\n")
        md.append(markdown_table(part["rows"], COLUMNS))
    md.append(f"\nCommand: `{doc['command']}`. Machine: {doc['machine']['cpu']}, {doc['machine']['cores']} cores.\n")
    write_results(a.out, doc, "".join(md))


def plot(doc: dict[str, Any], a: argparse.Namespace) -> None:
    """acc@1 on the test pairs against the iteration, every trained row (docs/gdh_qmul_<dataset>_curves.png)."""
    for ds, part in doc["datasets"].items():
        rows = [r for r in part["rows"] if r.get("curve")]
        if not rows:
            continue
        x = [c["iteration"] for c in rows[0]["curve"]]
        series = {r["row"]: [c["acc@1"] for c in r["curve"]] for r in rows if len(r["curve"]) == len(x)}
        path = a.docs / f"gdh_qmul_{ds}_curves.png"
        curves(x, series, path, xlabel="iteration (64 pairs each)", ylabel="acc@1, test pairs", title=f"QMUL {ds}")
        part["curves"] = shown(path)


def grid(dataset: str, coll: Collection, split: Split, row: dict[str, Any], a: argparse.Namespace) -> Path:
    """Eight test sketches, each with its top-10 edge maps by ``row``'s model; the true one framed green."""
    from sketchsearch.retrieval import Retriever

    r = Retriever.from_model(ROOT / row["model"])  # ROOT / an absolute path is that path
    photos = [coll[i] for i in split.gallery]
    r.add([item_input(p) for p in photos], modality="photo")
    queries = [coll[i] for i in split.query][:: max(1, len(split.query) // 8)][:8]
    ids = r.search_encoded(r.encode([item_input(q) for q in queries]), 10)[1]
    qimg = [1.0 - np.asarray(q.image, dtype=np.float32) / 255.0 for q in queries]
    res = [[np.asarray(photos[j].image, dtype=np.float32) / 255.0 for j in row_ids] for row_ids in ids]
    rel = np.array([[photos[j].pair == q.pair for j in row_ids] for q, row_ids in zip(queries, ids, strict=True)])
    path = a.docs / f"gdh_qmul_{dataset}_grid.png"
    return retrieval_grid(
        qimg, [[1.0 - x for x in rr] for rr in res], path, relevant=rel, legend=True,
        title=f"QMUL {dataset}: {row['row']}, top 10 edge maps (green: the true one)",
    )  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=DATA_ROOT / "qmul_v1")
    ap.add_argument("--datasets", nargs="+", default=["shoes", "chairs"], choices=["shoes", "chairs"])
    ap.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    ap.add_argument("--iterations", type=int, default=200, help="per trained row (64 pairs each)")
    ap.add_argument("--size", type=int, default=96, help="input px of every trained row")
    ap.add_argument("--frozen", type=int, default=13, help="Lite0 blocks frozen (of 16) in every trained row")
    ap.add_argument("--eval-every", type=int, default=25)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--models", type=Path, default=ROOT / "runs" / "gdh_qmul")
    ap.add_argument("--docs", type=Path, default=ROOT / "docs")
    ap.add_argument("--out", type=Path, default=RESULTS / "gdh_qmul")
    ap.add_argument("--quiet", action="store_true", help="no progress bars")
    a = ap.parse_args(argv)
    if not a.data.is_dir():
        print(f"{a.data} is absent: nothing to measure", file=sys.stderr)
        return 2
    torch.set_num_threads(a.threads)
    t_all = time.perf_counter()
    old = json.loads(a.out.with_suffix(".json").read_text()) if a.out.with_suffix(".json").exists() else {}
    doc: dict[str, Any] = {
        "title": "GDH fine-grained on QMUL V1 (sketch -> photo edge map), beside the paper's Tables 4-5",
        "command": "python benchmarks/gdh_qmul.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(a).items()},
        "machine": machine_info(),
        "datasets": old.get("datasets", {}),  # rows of earlier runs are kept unless re-run
    }
    for ds in a.datasets:
        coll = load_collection(coll_path(ds, a))
        split = make_split("instance", coll.items)
        part = doc["datasets"].setdefault(ds, {"rows": []})
        part["train_pairs"] = sum(coll[i].modality == "sketch" for i in split.train)
        part["test_pairs"] = len(split.query)
        for key in a.rows:
            row = run_row(key, ds, coll, split, a)
            part["rows"] = [r for r in part["rows"] if r.get("key") != key] + [row]
            part["rows"].sort(key=lambda r: list(ROWS).index(r["key"]))
            print(json.dumps({k: v for k, v in row.items() if k not in ("curve", "kwargs", "last losses")}), flush=True)
            write(a, doc)
        trained = [r for r in part["rows"] if r.get("model")]
        if trained:
            best = max(trained, key=lambda r: (r["acc@1"], r["acc@10"]))
            if (ROOT / best["model"]).with_suffix(".json").exists():
                part["grid"] = shown(grid(ds, coll, split, best, a))
    plot(doc, a)
    doc["seconds"] = round(time.perf_counter() - t_all, 1)
    write(a, doc)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
