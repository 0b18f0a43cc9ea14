"""Doodle to Search on Sketchy: zero-shot sketch -> photo retrieval, the full method and its ablations.

    python benchmarks/d2s_sketchy.py [--data ../shared/data/sketchy] [--iterations 1500] [--seeds 0 1 2]
        [--split-seed 0] [--n-unseen 25] [--input-size 224]

Data: the Sketchy subset (100 classes x 25 sketches + 25 photos, 128 px). A seeded class split
(``sketchy_split``, seed 0) keeps 25 classes unseen; it is saved to
``benchmarks/results/d2s_sketchy_split.json`` (the shipped model's card names the same split). Seen classes
also hold out ~20% of their sketches (whole photo groups) and 5 photos each for a seen-class check.

Rows, every one on the same split with the same training seeds, iterations and batches (class-balanced
triplets: 64 per batch, Adam lr 1e-3), differing only in the loss weights:

* ``frozen ImageNet (no training)``: cosine on the frozen EfficientNet-Lite0 features (reference);
* ``D2S full``: triplet + domain + semantic; ``- domain``: domain weight 0; ``- semantic``: semantic weight 0;
  ``triplet only``: both 0.

Backbone features are computed once (frozen backbone; cached in ``runs/d2s_sketchy/``, reused when the
backbone file, normalisation and input size match) and the heads trained on them. Every ranking comes from the
shared ``Retriever`` (dense cosine index); metrics from ``sketchsearch.eval.metrics``. For the first seed of
``D2S full`` the unseen classes are also run end to end through ``Retriever.add(photos, modality="photo")`` /
``Retriever.search_many(sketch images)`` on the raw images, which must give the same mAP (a check of the
feature cache) and gives the encode throughput.

Metrics: mAP@all over the whole gallery; P@10 and P@25. (P@100, what ZS-SBIR papers report on full Sketchy,
cannot be measured here: each class has only 25 photos, so P@100 <= 0.25 for a perfect ranking; P@25 is the
R-precision.) Seen held-out: mAP@all and P@5 (5 relevant photos per class).

Writes ``benchmarks/results/d2s_sketchy.{json,md}``.
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

from sketchsearch.eval import metrics as M
from sketchsearch.methods.base import Batch, Method
from sketchsearch.methods.doodle2search import (
    Doodle2Search,
    TripletDataset,
    cached_backbone_features,
    class_name_embeddings,
    collate_triplets,
    evaluate_zero_shot,
    item_input,
    load_sketchy,
    sketchy_split,
)
from sketchsearch.retrieval import Retriever
from sketchsearch.train import TrainConfig, train

ROWS: list[tuple[str, dict[str, Any]]] = [
    ("D2S full", {}),
    ("- domain", {"domain_weight": 0.0}),
    ("- semantic", {"semantic_weight": 0.0}),
    ("triplet only", {"domain_weight": 0.0, "semantic_weight": 0.0}),
]


class FrozenFeatures(Method):
    """The reference row: L2-normalised frozen backbone features (cosine), no training."""

    name = "frozen-efficientnet-lite0"
    output = "float"

    def __init__(self, base: Doodle2Search) -> None:
        super().__init__(base.preprocessing)
        self.base = base

    @property
    def code_size(self) -> int:
        return 1280

    def _unit_features(self, batch: Batch, modality: str) -> torch.Tensor:
        key = f"{modality}_features"  # cached features when the batch has them, else the backbone on images
        f = batch[key] if key in batch else self.base.backbone_features(batch, modality)
        return torch.nn.functional.normalize(f, dim=1)

    def encode_sketch(self, batch: Batch) -> torch.Tensor:
        return self._unit_features(batch, "sketch")

    def encode_photo(self, batch: Batch) -> torch.Tensor:
        return self._unit_features(batch, "photo")


def mean_std(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{np.mean(values):.4f} ± {np.std(values, ddof=1):.4f}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=DATA_ROOT / "sketchy")
    ap.add_argument("--iterations", type=int, default=1500)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--split-seed", type=int, default=0)
    ap.add_argument("--n-unseen", type=int, default=25)
    ap.add_argument("--input-size", type=int, default=224)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument(
        "--cache", type=Path, default=None, help="default runs/d2s_sketchy/features<size>.safetensors"
    )
    ap.add_argument("--out", type=Path, default=RESULTS / "d2s_sketchy")
    a = ap.parse_args(argv)
    if not a.data.is_dir():
        print(f"{a.data} is absent: nothing to measure", file=sys.stderr)
        return 2
    torch.set_num_threads(a.threads)
    t_all = time.perf_counter()
    items = load_sketchy(a.data)
    split = sketchy_split(items, n_unseen=a.n_unseen, seed=a.split_seed)
    split_file = a.out.parent / "d2s_sketchy_split.json"
    split.save(split_file)
    torch.manual_seed(0)
    base = Doodle2Search(input_size=a.input_size)
    cache = a.cache or ROOT / "runs" / "d2s_sketchy" / f"features{a.input_size}.safetensors"
    t0 = time.perf_counter()
    need = split.train_sketches + split.train_photos + split.seen_query + split.seen_gallery
    need += split.unseen_query + split.unseen_gallery
    feats = cached_backbone_features(base, items, need, cache)
    feature_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    semantic = class_name_embeddings(split.seen_classes)
    semantic_s = time.perf_counter() - t0

    def stack(ids: list[str]) -> np.ndarray:
        return np.stack([feats[i] for i in ids])

    def labels(ids: list[str]) -> list[str]:
        return [items[i].label for i in ids]

    def evaluate(m: Method) -> dict[str, Any]:
        zs = evaluate_zero_shot(m, stack(split.unseen_query), labels(split.unseen_query),
                                stack(split.unseen_gallery), labels(split.unseen_gallery), ks=(10, 25))  # type: ignore[arg-type]  # fmt: skip
        seen = evaluate_zero_shot(m, stack(split.seen_query), labels(split.seen_query),
                                  stack(split.seen_gallery), labels(split.seen_gallery), ks=(5,))  # type: ignore[arg-type]  # fmt: skip
        return {"unseen mAP@all": zs["mAP@all"], "unseen P@10": zs["P@10"], "unseen P@25": zs["P@25"],
                "seen mAP@all": seen["mAP@all"], "seen P@5": seen["P@5"]}  # fmt: skip

    cls = {c: i for i, c in enumerate(split.seen_classes)}
    ds_args = (
        stack(split.train_sketches), [cls[items[i].label] for i in split.train_sketches],
        stack(split.train_photos), [cls[items[i].label] for i in split.train_photos], semantic,
    )  # fmt: skip
    payload: dict[str, Any] = {
        "title": "Doodle to Search: zero-shot sketch -> photo retrieval on Sketchy (unseen classes)",
        "command": "python benchmarks/d2s_sketchy.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "protocol": {
            "data": str(a.data),
            "split": split.summary(),
            "split_file": str(
                split_file.relative_to(ROOT) if split_file.is_relative_to(ROOT) else split_file
            ),
            "unseen_classes": split.unseen_classes,
            "iterations": a.iterations,
            "batch_size": a.batch_size,
            "lr": a.lr,
            "optimizer": "Adam",
            "seeds": a.seeds,
            "input_size": a.input_size,
            "threads": a.threads,
            "method_defaults": base.hparams,
        },
        "timing": {
            "backbone_features_s": round(feature_s, 1),
            "features": len(need),
            "class_name_embeddings_s": round(semantic_s, 1),
        },
        "machine": machine_info(),
        "runs": [],
        "rows": [],
    }
    ref = {
        "row": "frozen ImageNet (no training)",
        "seeds": "-",
        **evaluate(FrozenFeatures(base)),
        "train s": 0.0,
    }
    payload["rows"].append(ref)
    print(ref, flush=True)
    write(a.out, payload)
    for name, kw in ROWS:
        runs = []
        for seed in a.seeds:
            torch.manual_seed(seed)
            m = Doodle2Search(input_size=a.input_size, **kw)
            ds = TripletDataset(*ds_args, features=True, seed=seed)
            cfg = TrainConfig(iterations=a.iterations, batch_size=a.batch_size, lr=a.lr, seed=seed, device="cpu",
                              progress=False, log_every=100)  # fmt: skip
            res = train(m, ds, cfg, collate_fn=collate_triplets)
            m.cpu().eval()
            run = {"row": name, "seed": seed, **evaluate(m), "train s": round(res.seconds, 1),
                   "last": res.history[-1] if res.history else {}}  # fmt: skip
            if name == "D2S full" and seed == a.seeds[0]:
                run["end_to_end"] = end_to_end(m, items, split, run["unseen mAP@all"])
                payload["timing"]["end_to_end"] = run["end_to_end"]
            runs.append(run)
            payload["runs"].append(run)
            print({k: v for k, v in run.items() if k != "last"}, flush=True)
        row: dict[str, Any] = {"row": name, "seeds": len(runs)}
        for k in ("unseen mAP@all", "unseen P@10", "unseen P@25", "seen mAP@all", "seen P@5"):
            row[k] = mean_std([r[k] for r in runs])
            row[k + " mean"] = float(np.mean([r[k] for r in runs]))
        row["train s"] = round(float(np.mean([r["train s"] for r in runs])), 1)
        payload["rows"].append(row)
        write(a.out, payload)
    payload["seconds"] = round(time.perf_counter() - t_all, 1)
    write(a.out, payload)
    print(f"done in {payload['seconds']}s -> {a.out}.{{json,md}}")
    return 0


@torch.no_grad()
def end_to_end(m: Doodle2Search, items: dict[str, Any], split: Any, cached_map: float) -> dict[str, Any]:
    """Unseen photos indexed and unseen sketch images searched straight from the images through the
    Retriever (backbone + heads on every call): mAP@all (vs. the cached-feature value) and throughput."""
    r = Retriever(m, batch_size=16)
    photos = [item_input(items[i]) for i in split.unseen_gallery]
    sketches = [item_input(items[i]) for i in split.unseen_query]
    g_labels = [items[i].label for i in split.unseen_gallery]
    q_labels = [items[i].label for i in split.unseen_query]
    t0 = time.perf_counter()
    r.add(photos, ids=np.arange(len(photos)), labels=g_labels, modality="photo")
    photo_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    _, ids = r.search_many(sketches, k=len(photos))
    sketch_s = time.perf_counter() - t0
    rel = M.relevance_from_labels(ids, g_labels, q_labels)
    got = M.map_at_all(rel, M.n_relevant_from_labels(g_labels, q_labels))
    return {
        "mAP@all": got,
        "abs diff vs cached features": abs(got - cached_map),
        "photos_per_s": round(len(photos) / photo_s, 1),
        "sketch_queries_per_s (encode + search)": round(len(sketches) / sketch_s, 1),
    }


def write(stem: Path, payload: dict[str, Any]) -> None:
    cols = [
        "row",
        "seeds",
        "unseen mAP@all",
        "unseen P@10",
        "unseen P@25",
        "seen mAP@all",
        "seen P@5",
        "train s",
    ]
    p, t = payload["protocol"], payload["timing"]
    sp = p["split"]
    notes = (
        f"\nCommand: `{payload['command'].strip()}`"
        + (
            f" ({payload['seconds']} s in all, {p['threads']} thread)"
            if "seconds" in payload
            else " (running: rows so far)"
        )
        + f".\n\nSplit (seed {sp['seed']}, `{p['split_file']}`): {sp['seen_classes']} seen / {sp['unseen_classes']} "
        f"unseen classes. Zero-shot: {sp['unseen_query']} unseen sketches query {sp['unseen_gallery']} unseen photos "
        f"(25 relevant each). Training: {sp['train_sketches']} sketches + {sp['train_photos']} photos of the seen "
        f"classes; seen held-out: {sp['seen_query']} sketches (whole photo groups) vs {sp['seen_gallery']} photos "
        f"(5 per class). {p['iterations']} iterations x {p['batch_size']} class-balanced triplets, Adam lr {p['lr']}, "
        f"training seeds {p['seeds']} (± = std over seeds); input {p['input_size']} px.\n\n"
        "Rows differ only in the loss weights (1 / 1 / 1 for triplet / domain / semantic, else 0). Backbone: "
        "EfficientNet-Lite0 (ImageNet, frozen), features computed once "
        f"({t['features']} images in {t['backbone_features_s']} s, or read from the cache); heads train on them. "
        "P@25 = R-precision; P@100 (the papers' measure on full Sketchy) is impossible with 25 photos a class. "
        "Chance: unseen mAP ~ 0.04 (1/25 classes), seen mAP ~ 0.013 (1/75).\n"
    )
    if "end_to_end" in t:
        e = t["end_to_end"]
        notes += (
            f"\nEnd to end through the Retriever on the raw images (D2S full, first seed): unseen mAP@all "
            f"{e['mAP@all']:.4f} (|diff| vs cached features {e['abs diff vs cached features']:.1e}); encode "
            f"{e['photos_per_s']} photos/s, {e['sketch_queries_per_s (encode + search)']} sketch queries/s "
            f"(backbone + head, {p['input_size']} px, CPU).\n"
        )
    write_results(stem, payload, table_markdown(payload, cols, payload["title"]) + notes)


if __name__ == "__main__":
    raise SystemExit(main())
