"""GDH on Sketchy at CPU scale: category-level mAP@all and fine-grained acc@1 / acc@10, full method and ablations.

    python benchmarks/gdh_sketchy.py [--data ../shared/data/sketchy] [--iterations 150] [--bits 32 64]
        [--seed 0] [--split-seed 0] [--classes 20] [--threads 1]

Data: the Sketchy subset (100 classes x 25 sketches + 25 photos; 64 px here), read by ``load_collection``, of
which a seeded subset of ``--classes`` (default 20, so that ~16 epochs fit ~10 CPU minutes; with all 100
classes 200 iterations are ~3 epochs and every row measured at chance). GDH is not zero-shot (the paper's
category-level task is on seen classes), so the split (``data.splits``' ``heldout_instance``, seed 0; saved to
``benchmarks/results/gdh_sketchy_split.json``) holds out *instances* of every class: per class one photo that
sketches were drawn from, with all its sketches (the queries), plus 4 more photos (a gallery of 5 a class).
Category level: a held-out sketch against all held-out photos, same class = relevant, mAP@all.
Fine-grained (``eval.evaluate``'s ``instance`` protocol): the same ranking, right when the photo the sketch
was drawn from is in the first 1 / 10 hits.

Rows (one training seed; same split, batches and iterations; batch = 32 image-sketch pairs, two of a class
in a row, Adam lr 2e-4 as the paper, H at 5x that: ours, for the short CPU budget), each trained by the GDH
recipe (``run_recipe``) on the saved split:

* ``GDH full``: all five losses with lambda = 1 (the triplet on), semantic D/B-steps on;
* ``- triplet``: lambda = 0, the paper's category-level setting;
* ``- GAN``: no domain migration (no G_I, G_S, D_I, D_S): H reads the raw sketch raster as an image, lambda = 1;
* ``pixel ITQ``: ITQ on 64 px pixels (methods/baselines.py), photos as inverted grey images (dark = ink), fitted
  on the training sketches and photos together, so both live in one space;
* ``ImageNet Lite0 + ITQ`` (``--references imagenet``): frozen ImageNet EfficientNet-Lite0 features (224 px,
  pooled 1280-d) of sketches (dark ink on white) and photos, centred and ITQ-rotated on the training sketches
  and photos together: the reference the category-level GDH has to beat (issue 13).

``--hash-backbone lite0``: GDH's hash network is ImageNet Lite0 with its top blocks trained
(``methods/gdh.py``), as the paper's is an ImageNet ResNet-18. ``--rows`` picks the GDH rows (``full``,
``no-triplet``, ``no-gan``).

Every ranking comes from ``eval.evaluate`` through the ``Retriever`` (Hamming index) on the raw images. Writes
``benchmarks/results/gdh_sketchy.{json,md}``.
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
from _common import machine_info, table_markdown, write_atomic, write_results

from sketchsearch.data.batching import item_input
from sketchsearch.data.collection import Collection
from sketchsearch.data.sources import load_collection
from sketchsearch.data.splits import Split, make_split
from sketchsearch.eval import metrics as M
from sketchsearch.eval.evaluate import evaluate
from sketchsearch.methods.base import Batch, Method
from sketchsearch.methods.baselines import PixelITQ
from sketchsearch.recipes import run_recipe
from sketchsearch.recipes.gdh import instance_metrics, load_arrays

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
ROWS: dict[str, tuple[str, dict[str, Any]]] = {
    "full": ("GDH full (lambda=1)", {"triplet_weight": 1.0}),
    "no-triplet": ("- triplet (lambda=0)", {"triplet_weight": 0.0}),
    "no-gan": ("- GAN (no migration, lambda=1)", {"triplet_weight": 1.0, "migration": False}),
}


class ImageNetITQ(Method):
    """Frozen ImageNet Lite0 features of sketches and photos, one ITQ fitted on both (the module docstring)."""

    name = "imagenet-itq"
    output = "binary"

    def __init__(self, nbits: int, size: int = 224) -> None:
        from sketchsearch.encoders.photo_cnn import IMAGENET_MEAN, IMAGENET_STD, EfficientNetLite0
        from sketchsearch.methods.base import Preprocessing

        super().__init__(Preprocessing(inputs=("raster",), raster_size=size, photo_size=size, line_width=size / 75))
        self.nbits = nbits
        self.backbone = EfficientNetLite0(mean=IMAGENET_MEAN, std=IMAGENET_STD).eval().requires_grad_(False)
        self.register_buffer("mean", torch.zeros(1280))
        self.register_buffer("projection", torch.zeros(1280, nbits))

    @property
    def code_size(self) -> int:
        return self.nbits

    @torch.no_grad()
    def features(self, batch: Batch, modality: str) -> torch.Tensor:
        from sketchsearch.encoders.photo_cnn import raster_to_rgb

        x = batch["photo"] if modality == "photo" else raster_to_rgb(batch["raster"])
        return self.backbone(x)

    def fit_items(self, sketches: list[Any], photos: list[Any], chunk: int = 64) -> None:
        from sketchsearch.data.batching import make_batch, make_photo_batch
        from sketchsearch.methods.baselines import itq_rotation, pca_basis

        pre = self.preprocessing
        f = [self.features(make_batch(sketches[i : i + chunk], pre), "sketch") for i in range(0, len(sketches), chunk)]
        f += [
            self.features(make_photo_batch(photos[i : i + chunk], pre.photo_size), "photo")
            for i in range(0, len(photos), chunk)
        ]
        x = torch.cat(f).double().numpy()
        mean, comps = pca_basis(x, self.nbits)
        rot, _ = itq_rotation((x - mean) @ comps)
        self.mean.copy_(torch.from_numpy(mean))
        self.projection.copy_(torch.from_numpy(comps @ rot))

    def encode_sketch(self, batch: Batch) -> torch.Tensor:
        return (self.features(batch, "sketch") - self.mean) @ self.projection

    def encode_photo(self, batch: Batch) -> torch.Tensor:
        return (self.features(batch, "photo") - self.mean) @ self.projection


class PhotoSketchITQ(Method):
    """Pixel ITQ with photos mapped into the sketch raster space (1 - grey: dark strokes become ink)."""

    name = "itq-photo-sketch"
    output = "binary"

    def __init__(self, nbits: int, size: int) -> None:
        itq = PixelITQ(nbits=nbits)
        super().__init__(itq.preprocessing.__class__(inputs=("raster",), raster_size=size, photo_size=size))
        self.itq = PixelITQ(self.preprocessing, nbits=nbits)

    @property
    def code_size(self) -> int:
        return self.itq.code_size

    @staticmethod
    def photo_raster(photo: torch.Tensor) -> torch.Tensor:
        grey = 0.299 * photo[:, 0:1] + 0.587 * photo[:, 1:2] + 0.114 * photo[:, 2:3]
        return 1.0 - grey

    def encode_sketch(self, batch: Batch) -> torch.Tensor:
        return self.itq.encode_sketch(batch)

    def encode_photo(self, batch: Batch) -> torch.Tensor:
        return self.itq.encode_sketch({"raster": self.photo_raster(batch["photo"])})


def figures(metrics: dict[str, Any]) -> dict[str, Any]:
    """The table's columns from a model's ``main`` (category) and ``instance`` evaluations of the split."""
    main, inst = metrics["main"], metrics["instance"]
    return {
        "mAP@all": main["mAP@all"],
        "acc@1": inst["acc@1"],
        "acc@10": inst["acc@10"],
        "queries": main["n_queries"],
        "gallery": main["n_gallery"],
        "encode_per_s": round(main["encode_per_s"], 1),
        "search_ms_per_query": round(main["ms_per_query"], 3),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "sketchy")
    ap.add_argument("--iterations", type=int, default=150)
    ap.add_argument("--batch-size", type=int, default=16, help="pairs per batch / 2 (pairs come two of a class)")
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--hash-lr-mult", type=float, default=5.0)
    ap.add_argument("--bits", type=int, nargs="+", default=[32, 64])
    ap.add_argument("--fine-bits", type=int, default=64, help="rows other than '- triplet' only at these bits")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--split-seed", type=int, default=0)
    ap.add_argument("--classes", type=int, default=20, help="seeded class subset (100 = all; see the notes)")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=RESULTS / "gdh_sketchy")
    ap.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    ap.add_argument("--references", nargs="+", default=["pixel"], choices=["pixel", "imagenet"])
    ap.add_argument("--hash-backbone", default="small", choices=["small", "lite0"])
    ap.add_argument("--hash-frozen", type=int, default=13, help="lite0: blocks frozen (of 16)")
    a = ap.parse_args(argv)
    if not a.data.is_dir():
        print(f"{a.data} is absent: nothing to measure", file=sys.stderr)
        return 2
    torch.set_num_threads(a.threads)
    t_all = time.perf_counter()
    coll = load_collection(a.data)
    split = make_split(
        "heldout_instance",
        coll.items,
        seed=a.split_seed,
        n_classes=a.classes if a.classes < len(coll.classes) else None,
    )
    split_file = a.out.parent / f"{a.out.name}_split.json"  # gdh_sketchy_split.json for the default --out
    split.save(split_file)
    train = {m: [coll[i] for i in split.train if coll[i].modality == m] for m in ("sketch", "photo")}
    payload: dict[str, Any] = {
        "title": "GDH: sketch -> photo hashing on Sketchy (held-out instances of seen classes)",
        "command": "python benchmarks/gdh_sketchy.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "protocol": {
            "data": str(a.data),
            "split": split.summary(),
            "split_file": str(split_file.relative_to(ROOT) if split_file.is_relative_to(ROOT) else split_file),
            "train_sketches": len(train["sketch"]),
            "train_photos": len(train["photo"]),
            "iterations": a.iterations,
            "batch_pairs": 2 * a.batch_size,
            "lr": a.lr,
            "hash_lr_mult": a.hash_lr_mult,
            "seed": a.seed,
            "size": a.size,
            "threads": a.threads,
            "hash_backbone": a.hash_backbone,
            "hash_frozen_blocks": a.hash_frozen if a.hash_backbone == "lite0" else None,
        },
        "timing": {},
        "chance": chance(coll, split),
        "machine": machine_info(),
        "rows": [],
    }
    t0 = time.perf_counter()
    pre = PhotoSketchITQ(a.bits[0], a.size).preprocessing
    rasters = load_arrays([item_input(it) for it in train["sketch"]], False, pre)[:, 0]
    photos = load_arrays([item_input(it) for it in train["photo"]], True, pre)
    photo_rasters = PhotoSketchITQ.photo_raster(torch.from_numpy(photos)).numpy()[:, 0]
    payload["timing"]["load_images_s"] = round(time.perf_counter() - t0, 1)
    for ref in a.references:  # the references first: seconds
        for nbits in a.bits:
            t0 = time.perf_counter()
            itq: Method
            if ref == "pixel":
                itq = PhotoSketchITQ(nbits, a.size)
                itq.itq.fit(np.concatenate([rasters, photo_rasters]))
            else:
                itq = ImageNetITQ(nbits)
                itq.fit_items([item_input(it) for it in train["sketch"]], [item_input(it) for it in train["photo"]])
            fit_s = time.perf_counter() - t0
            metrics = {**evaluate(itq, coll, split), **instance_metrics(itq, coll, split)}  # as the recipe's
            row = {
                "row": "pixel ITQ (reference)" if ref == "pixel" else "ImageNet Lite0 + ITQ (reference)",
                "bits": nbits,
                **figures(metrics),
                **fit_check(itq, coll, split),
                "train s": round(fit_s, 1),
            }
            payload["rows"].append(row)
            print(row, flush=True)
            write(a.out, payload)
    for key in a.rows:
        name, kw = ROWS[key]
        for nbits in a.bits:
            if nbits != a.fine_bits and not name.startswith("- triplet") and not name.startswith("GDH full"):
                continue
            if a.hash_backbone == "lite0":
                kw = {**kw, "hash_backbone": "lite0", "hash_frozen_blocks": a.hash_frozen}
            res = run_recipe(
                "gdh",
                str(a.data),
                seed=a.seed,
                device="cpu",
                iterations=a.iterations,
                batch_size=2 * a.batch_size,
                lr=a.lr,
                split_file=split_file,
                progress=False,
                per_class=2,
                image_size=a.size,
                nbits=nbits,
                hash_lr_mult=a.hash_lr_mult,
                **kw,
            )
            t = res.training
            payload["protocol"].setdefault("method_defaults", res.method.hparams)
            row = {
                "row": name,
                "bits": nbits,
                **figures(res.metrics),
                **fit_check(res.method, coll, split),
                "train s": t["train_seconds"],
                "s/iter": round(t["train_seconds"] / a.iterations, 2),
                "last": t["last"],
            }
            payload["rows"].append(row)
            print({k: v for k, v in row.items() if k != "last"}, flush=True)
            write(a.out, payload)
    payload["seconds"] = round(time.perf_counter() - t_all, 1)
    write(a.out, payload)
    print(f"done in {payload['seconds']}s -> {a.out}.{{json,md}}")
    return 0


def chance(coll: Collection, split: Split, repeats: int = 5) -> dict[str, float]:
    """The measures on random rankings of the held-out gallery (mean over ``repeats``): relevance by class
    for mAP@all, by instance (the photo a sketch was drawn from) for acc@k."""
    rng = np.random.default_rng(0)
    g, q = [coll[i] for i in split.gallery], [coll[i] for i in split.query]
    cat = ([it.label for it in g], [it.label for it in q])
    inst = ([f"{it.label}/{it.pair}" for it in g], [f"{it.label}/{it.pair}" for it in q])
    out: dict[str, list[float]] = {"mAP@all": [], "acc@1": [], "acc@10": []}
    for _ in range(repeats):
        ids = np.stack([rng.permutation(len(g)) for _ in q])
        rel, n = M.relevance_from_labels(ids, *cat), M.n_relevant_from_labels(*cat)
        out["mAP@all"].append(M.map_at_all(rel, n))
        rel, n = M.relevance_from_labels(ids, *inst), M.n_relevant_from_labels(*inst)
        out["acc@1"].append(M.acc_at_k(rel, 1, n))
        out["acc@10"].append(M.acc_at_k(rel, 10, n))
    return {k: round(float(np.mean(v)), 4) for k, v in out.items()}


def fit_check(m: Method, coll: Collection, split: Split, per_class: int = 5) -> dict[str, float]:
    """How well a model fits its *training* data (a diagnostic, not a result): ``eval.evaluate`` on the first
    ``per_class`` training sketches and photos of each class, category mAP@all of sketch -> photo and
    photo -> photo (each photo querying the others)."""
    first: dict[str, list[str]] = {"sketch": [], "photo": []}
    count: dict[tuple[str, str], int] = {}
    for i in split.train:
        it = coll[i]
        k = (str(it.label), it.modality)
        if count.get(k, 0) < per_class:
            count[k] = count.get(k, 0) + 1
            first[it.modality].append(i)
    sk = Split("heldout_instance", split.seed, {}, {"query": first["sketch"], "gallery": first["photo"]})
    ph = Split("leave_one_out", split.seed, {}, {"gallery": first["photo"]})
    return {
        "train sketch->photo mAP": evaluate(m, coll, sk)["main"]["mAP@all"],
        "train photo->photo mAP": evaluate(m, coll, ph)["main"]["mAP@all"],
    }


def write(stem: Path, payload: dict[str, Any]) -> None:
    cols = [
        "row",
        "bits",
        "mAP@all",
        "acc@1",
        "acc@10",
        "train sketch->photo mAP",
        "train photo->photo mAP",
        "train s",
        "encode_per_s",
        "search_ms_per_query",
    ]
    write_results(stem, payload, table_markdown(payload, cols, payload["title"]))
    p = payload["protocol"]
    sp = p["split"]
    notes = (
        f"\nCommand: `{payload['command'].strip()}`"
        + (f" ({payload['seconds']} s in all, {p['threads']} thread)" if "seconds" in payload else " (running)")
        + f".\n\nSplit (seed {sp['seed']}, `{p['split_file']}`): {sp['seen_classes']} classes (a seeded subset of "
        f"Sketchy's 100 here, so that ~{p['iterations'] * p['batch_pairs'] / max(p['train_photos'], 1):.0f} epochs fit "
        f"the CPU budget: the paper trains 20-30), all of them trained; held out per class one source photo with all "
        f"its sketches (the {sp['query']} queries) and 4 more photos (the {sp['gallery']}-photo gallery). Training: "
        f"{p['train_sketches']} sketches, {p['train_photos']} photos. mAP@all: category level; acc@k: the "
        f"sketch's own photo among the first k of all {sp['gallery']}. Chance (random rankings): "
        f"{payload['chance']}. {p['iterations']} iterations x {p['batch_pairs']} pairs, Adam lr {p['lr']} "
        f"(H x {p['hash_lr_mult']}), seed {p['seed']}, {p['size']} px, CPU. 'train ...' columns: a diagnostic of "
        "fit, the same category mAP on 5 *training* sketches / photos per class. Speed, from `eval.evaluate`: "
        "items encoded per second through the Retriever, and ms per query of the Hamming search.\n"
    )
    md = stem.with_suffix(".md")
    write_atomic(md, md.read_text() + notes)


if __name__ == "__main__":
    raise SystemExit(main())
