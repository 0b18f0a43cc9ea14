"""Doodle to Search on Sketchy: zero-shot sketch -> photo retrieval, the full method and its ablations.

    python benchmarks/d2s_sketchy.py [--data ../shared/data/sketchy] [--iterations 1500] [--seeds 0 1 2]
        [--split-seed 0] [--n-unseen 25] [--input-size 224] [--validation]

Data: the Sketchy subset (100 classes x 25 sketches + 25 photos, 128 px), read by ``load_collection``. The
split is ``data.splits``' ``photo_group`` (seed 0), the one the recipe trains on: 25 classes unseen; seen
classes hold out ~20% of their sketches (whole photo groups) and 5 photos each for a seen-class check. It is
saved to ``benchmarks/results/d2s_sketchy_split.json`` (the shipped model's split).

Rows, every one on the same split with the same training seeds, iterations and batches (the recipe's
``fit``: class-balanced triplets, 64 per batch, Adam lr 1e-3, through the one training loop), differing only
in the loss weights:

* ``frozen ImageNet (no training)``: cosine on the frozen EfficientNet-Lite0 features (reference);
* ``D2S full``: triplet + domain + semantic; ``- domain``: domain weight 0; ``- semantic``: semantic weight 0;
  ``triplet only``: both 0.
* ours (issue 15, ``Doodle2Search(feature_norm="power_centred", head="residual")``): ``frozen, power-centred``
  (no training: signed square root of the features, each domain's training mean removed); residual heads at
  rank 64 (the shipped ``doodle2search-residual-sketchy``) and full rank, triplet only; rank 64 with all three
  D2S losses. These train 200 iterations at lr 1e-4, chosen with ``--validation``: the unseen classes left
  out, 15 seen classes held out in their place (``results/d2s_sketchy_validation.*``).

Training reads backbone features computed once (frozen backbone; cached in ``runs/d2s_sketchy/``, reused
when the backbone file, normalisation and input size match). Every row is scored by ``eval.evaluate`` on
the raw images through the ``Retriever`` (dense cosine index), sketches through the sketch branch and photos
through the photo branch. All rows share one frozen backbone, and ``evaluate`` encodes the same images in
the same batches for each, so the backbone's output on each evaluation batch is memoised (by content) the
first time and read back, identical, for the other rows: the heads, the search and the scoring run per row.

Metrics: mAP@all over the whole gallery; P@10 and P@25. (P@100, what ZS-SBIR papers report on full Sketchy,
cannot be measured here: each class has only 25 photos, so P@100 <= 0.25 for a perfect ranking; P@25 is the
R-precision.) Seen held-out: mAP@all and P@5 (5 relevant photos per class).

Writes ``benchmarks/results/d2s_sketchy.{json,md}``.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine_info, table_markdown, write_atomic, write_results

from sketchsearch.data.collection import Collection
from sketchsearch.data.sources import load_collection
from sketchsearch.data.splits import Split, make_split
from sketchsearch.eval.evaluate import evaluate
from sketchsearch.methods.base import Batch, Method
from sketchsearch.methods.doodle2search import Doodle2Search
from sketchsearch.recipes.doodle2search import cached_backbone_features, feature_key, fit
from sketchsearch.train import TrainConfig, seed_everything

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
#: ours (issue 15): power-centred backbone features and residual heads; iterations and lr chosen on seen classes
#: held out as validation: a sweep (a scratch script, not kept) of 50-1,000 steps at lr 3e-5 / 1e-4 / 1e-3 on 15
#: seen classes peaked near 200 steps at 1e-4 and fell after (the heads then fit the seen classes); ``--validation``
#: measures the chosen setting on its own 15 seen classes (power-centred 0.296 -> 0.403 mAP@all)
RESIDUAL = {"feature_norm": "power_centred", "head": "residual", "embedding_dim": 1280}
RESIDUAL_TRAINING = {"iterations": 200, "lr": 1e-4}
#: row name, method kwargs, training settings replacing the command's (--iterations, --lr) for that row
ROWS: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
    ("D2S full", {}, {}),
    ("- domain", {"domain_weight": 0.0}, {}),
    ("- semantic", {"semantic_weight": 0.0}, {}),
    ("triplet only", {"domain_weight": 0.0, "semantic_weight": 0.0}, {}),
    (
        "power-centred, residual heads rank 64, triplet only (shipped)",
        {**RESIDUAL, "rank": 64, "domain_weight": 0.0, "semantic_weight": 0.0},
        RESIDUAL_TRAINING,
    ),
    (
        "power-centred, residual heads full rank, triplet only",
        {**RESIDUAL, "domain_weight": 0.0, "semantic_weight": 0.0},
        RESIDUAL_TRAINING,
    ),
    ("power-centred, residual heads rank 64, D2S full", {**RESIDUAL, "rank": 64}, RESIDUAL_TRAINING),
]
KS = (5, 10, 25)


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

    def encode_sketch(self, batch: Batch) -> torch.Tensor:
        return torch.nn.functional.normalize(self.base.backbone_features(batch, "sketch"), dim=1)

    def encode_photo(self, batch: Batch) -> torch.Tensor:
        return torch.nn.functional.normalize(self.base.backbone_features(batch, "photo"), dim=1)


class MemoisedBackbone(torch.nn.Module):
    """A frozen backbone whose output on a batch (float (B, 3, S, S) -> (B, 1280)) is memoised by the batch's
    bytes in ``store``, shared by every row of one backbone (see the module docstring)."""

    def __init__(self, backbone: torch.nn.Module, store: dict[bytes, torch.Tensor]) -> None:
        super().__init__()
        self.inner, self.store = backbone, store

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        key = hashlib.sha256(x.detach().cpu().contiguous().numpy().tobytes()).digest()
        if key not in self.store:
            self.store[key] = self.inner(x)
        return self.store[key]


def memoised(m: Doodle2Search, stores: dict[str, dict[bytes, torch.Tensor]]) -> Doodle2Search:
    """``m`` with its (frozen) backbone memoised in the store of its :func:`feature_key`."""
    store = stores.setdefault(feature_key(m), {})
    m.backbone = MemoisedBackbone(m.backbone, store)  # type: ignore[assignment]
    return m


def scores(m: Method, coll: Collection, split: Split) -> dict[str, Any]:
    """The table's figures of one model (``eval.evaluate`` on the split) and its encode / search speeds."""
    res = evaluate(m, coll, split, ks=KS)
    zs, seen = res["zero_shot"], res["main"]
    return {
        "unseen mAP@all": zs["mAP@all"],
        "unseen P@10": zs["P@10"],
        "unseen P@25": zs["P@25"],
        "seen mAP@all": seen["mAP@all"],
        "seen P@5": seen["P@5"],
        "encode_per_s": zs["encode_per_s"],
        "ms_per_query": zs["ms_per_query"],
    }


def mean_std(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{np.mean(values):.4f} ± {np.std(values, ddof=1):.4f}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "sketchy")
    ap.add_argument("--iterations", type=int, default=1500)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--split-seed", type=int, default=0)
    ap.add_argument("--n-unseen", type=int, default=25)
    ap.add_argument("--input-size", type=int, default=224)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--cache", type=Path, default=None, help="default runs/d2s_sketchy/features<size>.safetensors")
    ap.add_argument("--out", type=Path, default=None, help="default results/d2s_sketchy[_validation]")
    ap.add_argument(
        "--validation",
        action="store_true",
        help="the same rows with the split's unseen classes left out and 15 seen classes held out as 'unseen' "
        "(what settings are chosen on)",
    )
    a = ap.parse_args(argv)
    a.out = a.out or RESULTS / ("d2s_sketchy_validation" if a.validation else "d2s_sketchy")
    if not a.data.is_dir():
        print(f"{a.data} is absent: nothing to measure", file=sys.stderr)
        return 2
    torch.set_num_threads(a.threads)
    t_all = time.perf_counter()
    coll = load_collection(a.data)
    split = make_split("photo_group", coll.items, seed=a.split_seed, n_unseen=a.n_unseen, heldout=0.2)
    split_file = a.out.parent / "d2s_sketchy_split.json"
    if a.validation:  # never the unseen classes: 15 of the seen ones play their part
        seen = set(split.seen_classes)
        items = [it for it in coll.items if str(it.label) in seen]
        split = make_split("photo_group", items, seed=a.split_seed, n_unseen=15, heldout=0.2)
        split_file = a.out.parent / "d2s_sketchy_validation_split.json"
    split.save(split_file)
    train_by = {m: [i for i in split.train if coll[i].modality == m] for m in ("sketch", "photo")}
    stores: dict[str, dict[bytes, torch.Tensor]] = {}
    torch.manual_seed(0)
    base = Doodle2Search(input_size=a.input_size)
    cache = a.cache or ROOT / "runs" / "d2s_sketchy" / f"features{a.input_size}.safetensors"
    t0 = time.perf_counter()
    feats = cached_backbone_features(base, coll, split.train, cache)  # once; every row's fit reads the cache
    feature_s = time.perf_counter() - t0
    payload: dict[str, Any] = {
        "title": "Doodle to Search: zero-shot sketch -> photo retrieval on Sketchy (unseen classes)",
        "command": "python benchmarks/d2s_sketchy.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "protocol": {
            "data": str(a.data),
            "split": split.summary(),
            "split_file": str(split_file.relative_to(ROOT) if split_file.is_relative_to(ROOT) else split_file),
            "train_sketches": len(train_by["sketch"]),
            "train_photos": len(train_by["photo"]),
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
        "timing": {"backbone_features_s": round(feature_s, 1), "features": len(split.train)},
        "machine": machine_info(),
        "runs": [],
        "rows": [],
    }
    t0 = time.perf_counter()
    frozen = FrozenFeatures(memoised(base, stores))
    ref = {"row": "frozen ImageNet (no training)", "seeds": "-", "iterations": 0, "lr": "-"}
    ref |= {**scores(frozen, coll, split), "train s": 0.0}
    payload["timing"]["first_evaluation_s"] = round(time.perf_counter() - t0, 1)  # the backbone, every image
    payload["rows"].append(ref)
    print(ref, flush=True)
    # ours, no training: the same features, signed square root, each domain's training mean removed
    centred = Doodle2Search(input_size=a.input_size, **RESIDUAL, domain_weight=0.0, semantic_weight=0.0)
    centred.fit_feature_stats(
        *(torch.from_numpy(np.stack([feats[i] for i in train_by[d]])) for d in ("sketch", "photo"))
    )
    row = {"row": "frozen, power-centred (no training)", "seeds": "-", "iterations": 0, "lr": "-"}
    row |= {**scores(memoised(centred.eval(), stores), coll, split), "train s": 0.0}
    payload["rows"].append(row)
    print(row, flush=True)
    write(a.out, payload)
    for name, kw, training in ROWS:
        runs = []
        for seed in a.seeds:
            seed_everything(seed)  # the heads' initialisation, as run_recipe seeds it
            m = Doodle2Search(input_size=a.input_size, **kw)
            cfg = TrainConfig(
                iterations=training.get("iterations", a.iterations),
                batch_size=a.batch_size,
                lr=training.get("lr", a.lr),
                seed=seed,
                device="cpu",
                progress=False,
                log_every=100,
            )
            record = fit(m, coll, split, cfg, feature_cache=str(cache))
            m.cpu().eval()
            run = {
                "row": name,
                "seed": seed,
                **scores(memoised(m, stores), coll, split),
                "train s": record["train_seconds"],
                "last": record["last"],
            }
            runs.append(run)
            payload["runs"].append(run)
            print({k: v for k, v in run.items() if k != "last"}, flush=True)
        row = {"row": name, "seeds": len(runs), "iterations": cfg.iterations, "lr": cfg.lr}
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


def write(stem: Path, payload: dict[str, Any]) -> None:
    cols = [
        "row",
        "seeds",
        "iterations",
        "lr",
        "unseen mAP@all",
        "unseen P@10",
        "unseen P@25",
        "seen mAP@all",
        "seen P@5",
        "train s",
    ]
    write_results(stem, payload, table_markdown(payload, cols, payload["title"]))
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
        f"(25 relevant each). Training: {p['train_sketches']} sketches + {p['train_photos']} photos of the "
        f"seen classes; seen held-out: {sp['query']} sketches (whole photo groups) vs {sp['gallery']} photos "
        f"(5 per class). {p['iterations']} iterations x {p['batch_size']} class-balanced triplets, Adam lr {p['lr']}, "
        f"training seeds {p['seeds']} (± = std over seeds); input {p['input_size']} px.\n\n"
        "The D2S rows differ only in the loss weights (1 / 1 / 1 for triplet / domain / semantic, else 0). "
        "Ours (issue 15): 'power-centred' maps each backbone feature to sign(f) sqrt(|f|) minus its domain's mean "
        "over the training features; 'residual heads' are g + U V g with the update zero-initialised (the "
        "identity at first), trained full-rank and, at rank 64, factored by truncated SVD; these rows train "
        f"{RESIDUAL_TRAINING['iterations']} iterations at lr {RESIDUAL_TRAINING['lr']} (chosen on 15 seen "
        "classes held out as validation: `--validation`). Backbone: "
        "EfficientNet-Lite0 (ImageNet, frozen), training features computed once "
        f"({t['features']} images in {t['backbone_features_s']} s, or read from the cache); heads train on them. "
        "P@25 = R-precision; P@100 (the papers' measure on full Sketchy) is impossible with 25 photos a class. "
        f"Chance: unseen mAP ~ {1 / sp['unseen_classes']:.3f} (1/{sp['unseen_classes']} classes), seen mAP ~ "
        f"{1 / sp['seen_classes']:.3f} (1/{sp['seen_classes']}).\n"
    )
    ref = payload["rows"][0]
    n_eval = sp["query"] + sp["gallery"] + sp["unseen_query"] + sp["unseen_gallery"]
    notes += (
        f"\nEvery row is scored by `eval.evaluate` on the raw images through the Retriever. The first (the "
        f"reference) ran the backbone on all {n_eval} evaluation images in {t['first_evaluation_s']} s "
        f"({ref['encode_per_s']:.1f} zero-shot images/s, "
        f"{p['input_size']} px, CPU); the other rows read its output on the same batches back (memoised).\n"
    )
    md = stem.with_suffix(".md")
    write_atomic(md, md.read_text() + notes)


if __name__ == "__main__":
    raise SystemExit(main())
