"""GDH on Sketchy at CPU scale: category-level mAP@all and fine-grained acc@1 / acc@10, full method and ablations.

    python benchmarks/gdh_sketchy.py [--data ../shared/data/sketchy] [--iterations 150] [--bits 32 64]
        [--seed 0] [--split-seed 0] [--classes 20] [--threads 1]

Data: the Sketchy subset (100 classes x 25 sketches + 25 photos; 64 px here), of which a seeded subset of
``--classes`` (default 20, so that ~16 epochs fit ~10 CPU minutes; with all 100 classes 200 iterations are ~3
epochs and every row measured at chance). GDH is not zero-shot (the paper's
category-level task is on seen classes), so the split (``gdh_split``, seed 0; saved to
``benchmarks/results/gdh_sketchy_split.json``) holds out *instances* of every class: per class one photo that
sketches were drawn from, with all its sketches (the queries), plus 4 more photos (a gallery of 5 a class).
Category level: a held-out sketch against all held-out photos, same class = relevant, mAP@all.
Fine-grained: the same ranking, right when the photo the sketch was drawn from is in the first 1 / 10 hits.

Rows (one training seed; same split, batches and iterations; batch = 32 image-sketch pairs, Adam lr 2e-4
as the paper, H at 5x that: ours, for the short CPU budget):

* ``GDH full``: all five losses with lambda = 1 (the triplet on), semantic D/B-steps on;
* ``- triplet``: lambda = 0, the paper's category-level setting;
* ``- GAN``: no domain migration (no G_I, G_S, D_I, D_S): H reads the raw sketch raster as an image, lambda = 1;
* ``pixel ITQ``: ITQ on 64 px pixels (methods/baselines.py), photos as inverted grey images (dark = ink), fitted
  on the training sketches and photos together, so both live in one space.

Every ranking comes from ``Retriever`` (Hamming index) on the raw images. Writes
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
from _common import DATA_ROOT, RESULTS, ROOT, machine_info, table_markdown, write_results

from sketchsearch.methods.base import Batch, Method
from sketchsearch.methods.baselines import PixelITQ
from sketchsearch.methods.doodle2search import load_sketchy
from sketchsearch.methods.gdh import GDH, GDHSplit, build_training, collate_pairs, evaluate_gdh, gdh_split
from sketchsearch.train import TrainConfig, seed_everything, train

ROWS: list[tuple[str, dict[str, Any]]] = [
    ("GDH full (lambda=1)", {"triplet_weight": 1.0}),
    ("- triplet (lambda=0)", {"triplet_weight": 0.0}),
    ("- GAN (no migration, lambda=1)", {"triplet_weight": 1.0, "migration": False}),
]


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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=DATA_ROOT / "sketchy")
    ap.add_argument("--iterations", type=int, default=150)
    ap.add_argument("--batch-size", type=int, default=16, help="PairDataset items (2 pairs each)")
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--hash-lr-mult", type=float, default=5.0)
    ap.add_argument("--bits", type=int, nargs="+", default=[32, 64])
    ap.add_argument(
        "--fine-bits", type=int, default=64, help="rows other than '- triplet' only at these bits"
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--split-seed", type=int, default=0)
    ap.add_argument("--classes", type=int, default=20, help="seeded class subset (100 = all; see the notes)")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=RESULTS / "gdh_sketchy")
    a = ap.parse_args(argv)
    if not a.data.is_dir():
        print(f"{a.data} is absent: nothing to measure", file=sys.stderr)
        return 2
    torch.set_num_threads(a.threads)
    t_all = time.perf_counter()
    items = load_sketchy(a.data)
    split = gdh_split(items, seed=a.split_seed, n_classes=a.classes if a.classes < 100 else None)
    split_file = a.out.parent / "gdh_sketchy_split.json"
    split.save(split_file)
    base = GDH(image_size=a.size)
    t0 = time.perf_counter()
    ds, pl, sl = build_training(items, split, base.preprocessing, seed=a.seed)
    load_s = time.perf_counter() - t0
    payload: dict[str, Any] = {
        "title": "GDH: sketch -> photo hashing on Sketchy (held-out instances of seen classes)",
        "command": "python benchmarks/gdh_sketchy.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "protocol": {
            "data": str(a.data),
            "split": split.summary(),
            "split_file": str(
                split_file.relative_to(ROOT) if split_file.is_relative_to(ROOT) else split_file
            ),
            "iterations": a.iterations,
            "batch_pairs": 2 * a.batch_size,
            "lr": a.lr,
            "hash_lr_mult": a.hash_lr_mult,
            "seed": a.seed,
            "size": a.size,
            "threads": a.threads,
            "method_defaults": base.hparams,
        },
        "timing": {"load_images_s": round(load_s, 1)},
        "chance": chance(items, split),
        "machine": machine_info(),
        "rows": [],
    }
    for nbits in a.bits:  # the reference first: seconds
        t0 = time.perf_counter()
        itq = PhotoSketchITQ(nbits, a.size)
        fit = np.concatenate(
            [ds.rasters[:, 0], PhotoSketchITQ.photo_raster(torch.from_numpy(ds.photos)).numpy()[:, 0]]
        )
        itq.itq.fit(fit)
        fit_s = time.perf_counter() - t0
        row = {
            "row": "pixel ITQ (reference)",
            "bits": nbits,
            **evaluate_gdh(itq, items, split),
            **fit_check(itq, items, split),
            "train s": round(fit_s, 1),
        }
        payload["rows"].append(row)
        print(row, flush=True)
        write(a.out, payload)
    for name, kw in ROWS:
        for nbits in a.bits:
            if nbits != a.fine_bits and not name.startswith("- triplet") and not name.startswith("GDH full"):
                continue
            seed_everything(a.seed)
            m = GDH(image_size=a.size, nbits=nbits, hash_lr_mult=a.hash_lr_mult, **kw)
            m.set_training_data(pl, sl, len(split.classes), seed=a.seed)
            cfg = TrainConfig(iterations=a.iterations, batch_size=a.batch_size, lr=a.lr, seed=a.seed, device="cpu",
                              progress=False, log_every=25)  # fmt: skip
            res = train(m, ds, cfg, collate_fn=collate_pairs)
            m.cpu().eval()
            row = {"row": name, "bits": nbits, **evaluate_gdh(m, items, split), **fit_check(m, items, split),
                   "train s": round(res.seconds, 1), "s/iter": round(res.seconds / a.iterations, 2), "first": res.history[0] if res.history else {},
                   "last": res.history[-1] if res.history else {}}  # fmt: skip
            payload["rows"].append(row)
            print({k: v for k, v in row.items() if k not in ("first", "last")}, flush=True)
            write(a.out, payload)
    payload["seconds"] = round(time.perf_counter() - t_all, 1)
    write(a.out, payload)
    print(f"done in {payload['seconds']}s -> {a.out}.{{json,md}}")
    return 0


def chance(items: dict[str, Any], split: GDHSplit, repeats: int = 5) -> dict[str, float]:
    """The measures on random rankings of the held-out gallery (mean over ``repeats``)."""
    from sketchsearch.eval import metrics as M

    rng = np.random.default_rng(0)
    g = [items[i].label for i in split.gallery]
    q = [items[i].label for i in split.query]
    gi = list(split.gallery)
    qi = [f"photo/{items[i].label}/{items[i].pair}" for i in split.query]
    out: dict[str, list[float]] = {"mAP@all": [], "acc@1": [], "acc@10": []}
    for _ in range(repeats):
        ids = np.stack([rng.permutation(len(g)) for _ in q])
        out["mAP@all"].append(
            M.map_at_all(M.relevance_from_labels(ids, g, q), M.n_relevant_from_labels(g, q))
        )
        rel = M.relevance_from_labels(ids, gi, qi)
        n = M.n_relevant_from_labels(gi, qi)
        out["acc@1"].append(M.acc_at_k(rel, 1, n))
        out["acc@10"].append(M.acc_at_k(rel, 10, n))
    return {k: round(float(np.mean(v)), 4) for k, v in out.items()}


@torch.no_grad()
def fit_check(m: Method, items: dict[str, Any], split: GDHSplit, per_class: int = 5) -> dict[str, float]:
    """How well a model fits its *training* data (a diagnostic, not a result): the first ``per_class``
    training sketches and photos of each class, category mAP@all of sketch -> photo and photo -> photo."""
    from sketchsearch.eval import metrics as M
    from sketchsearch.methods.doodle2search import item_input
    from sketchsearch.retrieval import Retriever

    def first(ids: list[str]) -> list[str]:
        seen: dict[str, int] = {}
        out = []
        for i in ids:
            c = items[i].label
            if seen.get(c, 0) < per_class:
                seen[c] = seen.get(c, 0) + 1
                out.append(i)
        return out

    sk, ph = first(split.train_sketches), first(split.train_photos)
    r = Retriever(m.eval(), batch_size=64)
    g_labels = [items[i].label for i in ph]
    r.add([item_input(items[i]) for i in ph], ids=np.arange(len(ph)), labels=g_labels, modality="photo")
    out = {}
    for name, qs, mod in (("train sketch->photo mAP", sk, "sketch"), ("train photo->photo mAP", ph, "photo")):
        _, ids = r.search_many([item_input(items[i]) for i in qs], k=len(ph), modality=mod)
        q_labels = [items[i].label for i in qs]
        if mod == "photo":  # the query itself is in the gallery: drop it from its own ranking
            ids = np.stack([row[row != j] for j, row in enumerate(ids)])
        rel = M.relevance_from_labels(ids, g_labels, q_labels)
        out[name] = M.map_at_all(rel, M.n_relevant_from_labels(g_labels, q_labels) - (mod == "photo"))
    return out


def write(stem: Path, payload: dict[str, Any]) -> None:
    cols = ["row", "bits", "mAP@all", "acc@1", "acc@10", "train sketch->photo mAP", "train photo->photo mAP",
            "train s", "photos_per_s", "sketch_queries_per_s"]  # fmt: skip
    p = payload["protocol"]
    sp = p["split"]
    notes = (
        f"\nCommand: `{payload['command'].strip()}`"
        + (
            f" ({payload['seconds']} s in all, {p['threads']} thread)"
            if "seconds" in payload
            else " (running)"
        )
        + f".\n\nSplit (seed {sp['seed']}, `{p['split_file']}`): {sp['classes']} classes (a seeded subset of Sketchy's "
        f"100 here, so that ~{p['iterations'] * p['batch_pairs'] / max(sp['train_photos'], 1):.0f} epochs fit the CPU "
        f"budget: the paper trains 20-30), all of them trained; held out per class one source photo with all its "
        f"sketches (the {sp['query']} queries) and 4 more photos (the {sp['gallery']}-photo gallery). Training: "
        f"{sp['train_sketches']} sketches, {sp['train_photos']} photos. mAP@all: category level; acc@k: the "
        f"sketch's own photo among the first k of all {sp['gallery']}. Chance (random rankings): "
        f"{payload['chance']}. {p['iterations']} iterations x {p['batch_pairs']} pairs, Adam lr {p['lr']} "
        f"(H x {p['hash_lr_mult']}), seed {p['seed']}, {p['size']} px, CPU. 'train ...' columns: a diagnostic of "
        "fit, the same category mAP on 5 *training* sketches / photos per class. Throughput: items/s through the "
        "Retriever (encode; + Hamming search for the sketch queries).\n"
    )
    write_results(stem, payload, table_markdown(payload, cols, payload["title"]) + notes)


if __name__ == "__main__":
    raise SystemExit(main())
