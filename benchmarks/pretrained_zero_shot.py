"""Frozen ImageNet backbones (``pretrained``) vs pixel ITQ vs the shipped models, on classes no model was trained on.

    nice -n 5 python benchmarks/pretrained_zero_shot.py [--backbones lite0 lite2] [--fit-limit 1000]
        [--omniglot-chars 0] [--threads 2] [--models models/universal-64 ...] [--no-pixel] [--no-shipped]
        [--datasets quickdraw omniglot sketchy sketchy-photo quickdraw-seen omniglot-other] [--power]
        [--levels stage5+stage6+head]

* **QuickDraw** (raw strokes): the shipped ``sketchmate-quickdraw-64``'s own split (``model_split``): its
  ``unseen_query`` / ``unseen_gallery`` parts are 50 classes no model saw (zero-shot), evaluated query ->
  gallery. The closed-form rows (pixel ITQ, the frozen backbones' centring / PCA / ITQ) are fitted, without
  labels, on a seeded ``--fit-limit`` subset of the split's ``train`` part (seen classes only).
* **Omniglot** (``strokes_background_small1``: 136 characters x 20 drawers): the shipped ``sketch-gan``'s split,
  leave-one-out (every drawing queries all the others; same character = relevant). The closed-form rows are
  fitted on the gallery itself, without labels (``eval.evaluate.fit_on_split``), as the GAN benchmark's
  baselines; the ImageNet backbones never saw a character of any alphabet. (sketch-GAN was trained,
  unlabelled, on sketch-rnn's omniglot.npz, drawn from the whole Omniglot set.) ``--omniglot-chars N`` keeps
  a seeded N of the characters (all 20 drawings each) to fit a time budget; 0 = all.
* **Sketchy sketches** (sketch -> sketch, 128 px PNG rasters, no strokes): the 25 classes the shipped
  ``doodle2search-sketchy``'s split keeps unseen, leave-one-out over their 625 sketches; the closed-form rows
  fitted (no labels) on ``--fit-limit`` of that split's training sketches (seen classes).
* **Validation sets** (not zero-shot figures; where settings are chosen): ``quickdraw-seen``, 1,500 seeded
  training drawings of the split's *seen* classes, leave-one-out, closed-form rows fitted on ``--fit-limit``
  others (no frozen backbone saw a QuickDraw class; trained models did); ``omniglot-other``, the small1
  characters outside the ``--omniglot-chars`` subset the Omniglot rows evaluate, leave-one-out.
* **Sketchy sketch -> photo** (``sketchy-photo``): the same split's zero-shot part (625 unseen sketches query
  625 unseen photos), rows only for models with a photo branch: the shipped ``doodle2search-sketchy`` (the
  paper's configuration) and ``doodle2search-residual-sketchy`` (power-centred features, residual heads), and
  any such ``--models``. The frozen and pixel rows cannot encode photos; ``benchmarks/d2s_sketchy.py`` has the
  frozen-features references and the ablations.

Rows: pixel ITQ-64 (``itq``, 32 x 32), frozen Lite0 / Lite2 float (1280-d centred, cosine) and + ITQ-64 (Hamming),
the shipped sketch models (``sketch-gan``, ``sketchmate-quickdraw-64``, ``universal-64``, on every sketch set;
each was trained on one of them: sketch-GAN on unlabelled Omniglot drawings, the other two on QuickDraw's seen
classes), and any ``--models`` (a trained ``universal`` model also as its float
features, same weights). Columns: mAP@all, P@100, ms/query (search only, the evaluation's), and
encode/s: drawings per second on **one CPU thread, rendering from strokes included**, one drawing per call
(as the page encodes while a person draws). Every row is scored by ``eval.evaluate.evaluate`` on the same split.

Within one backbone the float and ITQ rows share the backbone's features (memoised per rendered raster in this
script only), so each drawing goes through each network once. Writes ``benchmarks/results/pretrained_zero_shot.
{json,md}``.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import DATA_ROOT, RESULTS, machine_info, table_markdown, write_results

from sketchsearch.data.batching import item_input, query_to_batch
from sketchsearch.data.collection import Collection
from sketchsearch.data.sources import load_collection
from sketchsearch.data.splits import Split
from sketchsearch.eval.evaluate import evaluate, fit_on_split
from sketchsearch.methods.base import Method, create_method
from sketchsearch.methods.pretrained import PretrainedFeatures
from sketchsearch.model import load_model, model_split

KS = (1, 10, 100)
DATASETS = ("quickdraw", "omniglot", "sketchy", "sketchy-photo", "quickdraw-seen", "omniglot-other")
#: the shipped models of every sketch -> sketch set, and of sketch -> photo
SHIPPED_SKETCH = ["sketch-gan", "sketchmate-quickdraw-64", "universal-64"]
SHIPPED_PHOTO = ["doodle2search-sketchy", "doodle2search-residual-sketchy"]
COLUMNS = ("data", "label", "mAP@all", "P@100", "ms/query", "encode/s", "fit_items", "seconds")


def _memoise(method: PretrainedFeatures, store: dict[bytes, torch.Tensor]) -> Callable[[], None]:
    """Share backbone features between rows of one backbone (keyed by the rendered raster); returns undo."""
    orig = method.features

    def features(batch: dict[str, torch.Tensor]) -> torch.Tensor:
        r = batch["raster"]
        keys = [hashlib.blake2b(x.numpy().tobytes(), digest_size=16).digest() for x in r]
        todo = [i for i, k in enumerate(keys) if k not in store]
        if todo:
            for i, f in zip(todo, orig({"raster": r[todo]})):
                store[keys[i]] = f
        return torch.stack([store[k] for k in keys])

    method.features = features  # type: ignore[method-assign]
    return lambda: method.__dict__.pop("features", None)


def encode_per_s(method: Method, drawings: list[Any], threads: int = 1) -> float:
    """Drawings/s encoding one at a time from strokes (rendering included) on ``threads`` CPU threads."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        method.eval()
        with torch.no_grad():
            method.encode_sketch(query_to_batch(drawings[0], method.preprocessing))  # warm-up
            t0 = time.perf_counter()
            for d in drawings:
                method.encode_sketch(query_to_batch(d, method.preprocessing))
            return len(drawings) / (time.perf_counter() - t0)
    finally:
        torch.set_num_threads(before)


def _row(
    data: str,
    label: str,
    method: Method,
    coll: Collection,
    split: Split,
    speed_drawings: list[Any],
    fit: dict[str, Any] | None,
    t0: float,
) -> dict[str, Any]:
    res = evaluate(method, coll, split, ks=KS)
    name, r = next(iter(res.items()))
    row = {
        "data": data,
        "label": label,
        "evaluation": name,
        "mAP@all": r["mAP@all"],
        "P@100": r["P@100"],
        "P@10": r["P@10"],
        "ms/query": r["ms_per_query"],
        "fit_items": (fit or {}).get("n_train", "-"),
        "output": method.output,
        "code_size": int(method.code_size),
        "n_queries": r["n_queries"],
        "n_gallery": r["n_gallery"],
        "fit": fit or {},
    }
    row["encode/s"] = encode_per_s(method, speed_drawings)
    row["seconds"] = time.perf_counter() - t0
    print(
        f"{data:9s} {label:28s} mAP@all {row['mAP@all']:.4f}  P@100 {row['P@100']:.4f}  "
        f"encode/s {row['encode/s']:.1f}  ({row['seconds']:.0f}s)",
        flush=True,
    )
    return row


def encodes_photos(method: Method) -> bool:
    return type(method).encode_photo is not Method.encode_photo


def run_dataset(
    data: str, coll: Collection, split: Split, shipped: list[str], backbones: list[str], args: argparse.Namespace
) -> list[dict[str, Any]]:
    q_part = split.evaluations()[0][1]
    speed = [item_input(coll[i]) for i in split.part(q_part)[: args.speed_n]]
    photos = any(coll[i].modality == "photo" for i in split.part(split.evaluations()[0][2]))
    rows = []
    t0 = time.perf_counter()
    if photos:  # sketch -> photo: only models with a photo branch
        backbones = []
    if args.pixel and not photos:
        itq = create_method("itq", nbits=64)
        rows.append(_row(data, "pixel ITQ-64", itq, coll, split, speed, fit_on_split(itq, coll, split), t0))
    for bb in backbones:
        store: dict[bytes, torch.Tensor] = {}
        for output, label in (("float", "float {}-d"), ("binary", "+ ITQ-64")):
            t0 = time.perf_counter()
            kw = {"code_size": 64} if output == "binary" else {}
            m = PretrainedFeatures(
                backbone=bb, output=output, resolution=args.resolution, power=args.power, levels=args.levels, **kw
            )
            undo = _memoise(m, store)
            fit = fit_on_split(m, coll, split)
            res = evaluate(m, coll, split, ks=KS)
            undo()
            name, r = next(iter(res.items()))
            row = {
                "data": data,
                "label": f"frozen {bb} {label.format(m.code_size)}"
                + (", power" if args.power else "")
                + (f", {args.levels}" if args.levels != "head" else ""),
                "evaluation": name,
                "mAP@all": r["mAP@all"],
                "P@100": r["P@100"],
                "P@10": r["P@10"],
                "ms/query": r["ms_per_query"],
                "fit_items": fit.get("n_train"),
                "output": m.output,
                "code_size": m.code_size,
                "input_size": m.input_size,
                "n_queries": r["n_queries"],
                "n_gallery": r["n_gallery"],
                "fit": fit,
                "encode/s": encode_per_s(m, speed),
                "seconds": time.perf_counter() - t0,
            }
            print(
                f"{data:9s} {row['label']:28s} mAP@all {row['mAP@all']:.4f}  P@100 {row['P@100']:.4f}  "
                f"encode/s {row['encode/s']:.1f}  ({row['seconds']:.0f}s)",
                flush=True,
            )
            rows.append(row)
    specs = [(f"{name} (shipped)", name) for name in shipped] + [(_model_label(spec), spec) for spec in args.models]
    for label, spec in specs:
        t0 = time.perf_counter()
        model, _ = load_model(spec)
        if photos and not encodes_photos(model):
            print(f"{data:9s} {spec}: no photo branch, no row", file=sys.stderr, flush=True)
            continue
        rows.append(_row(data, label, model, coll, split, speed, None, t0))
        if model.name == "universal" and model.output == "binary":  # its float features, same weights
            t0 = time.perf_counter()
            flt = create_method("universal", **{**model.hparams, "output": "float", "pretrained": True})
            flt.load_state_dict(model.state_dict())
            rows.append(_row(data, f"{label} float {flt.code_size}-d", flt, coll, split, speed, None, t0))
    return rows


def _model_label(spec: str) -> str:
    """A model's row label: its file name, or its folder's when the file is a recipe's ``.../model``."""
    path = Path(spec)
    return f"{path.parent.name}/{path.name}" if path.name == "model" and path.parent.name else path.name


def quickdraw_split(path: str, fit_limit: int) -> tuple[Collection, Split]:
    coll = load_collection(path)
    full = model_split("sketchmate-quickdraw-64")
    assert full is not None
    train = full.part("train")
    if fit_limit and fit_limit < len(train):
        keep = np.sort(np.random.default_rng(0).choice(len(train), fit_limit, replace=False))
        train = [train[i] for i in keep]
    parts = {"train": train, **{k: full.part(k) for k in ("unseen_query", "unseen_gallery")}}
    return coll, Split(full.kind, full.seed, dict(full.params), parts, full.seen_classes, full.unseen_classes, path)


def quickdraw_seen_split(path: str, fit_limit: int, n: int = 1500) -> tuple[Collection, Split]:
    """Validation for the closed-form rows' settings: ``n`` seeded training drawings of sketchmate-quickdraw-64's
    *seen* classes, leave-one-out, the rows fitted on ``fit_limit`` others. No frozen backbone saw any QuickDraw
    class, so choices made here never look at the unseen ones; a model trained on the split's seen classes has
    seen these (its figure here is not zero-shot)."""
    coll = load_collection(path)
    full = model_split("sketchmate-quickdraw-64")
    assert full is not None
    train = full.part("train")
    order = np.random.default_rng(1).permutation(len(train))
    fit, gallery = [train[i] for i in order[:fit_limit]], [train[i] for i in order[fit_limit : fit_limit + n]]
    return coll, Split("leave_one_out", full.seed, {}, {"train": fit, "gallery": gallery}, data=path)


def omniglot_split(path: str, chars: int, other: bool = False) -> tuple[Collection, Split]:
    """sketch-gan's leave-one-out split; ``chars``: a seeded subset of its characters (the zero-shot table's), or
    with ``other`` every character outside that subset (a validation set no table evaluates)."""
    coll = load_collection(path)
    full = model_split("sketch-gan")
    assert full is not None
    gallery = full.gallery
    if chars:
        labels = sorted({coll[i].label for i in gallery})
        keep = set(np.random.default_rng(0).choice(labels, chars, replace=False).tolist())
        gallery = [i for i in gallery if (coll[i].label in keep) != other]
    elif other:
        raise ValueError("omniglot-other is the characters outside --omniglot-chars: give --omniglot-chars N > 0")
    return coll, Split(full.kind, full.seed, dict(full.params), {"gallery": gallery}, data=path)


def sketchy_split(path: str, fit_limit: int, photos: bool) -> tuple[Collection, Split]:
    """The shipped doodle2search-sketchy's split: its zero-shot part (``photos``), or leave-one-out over its
    unseen sketches with (a seeded ``fit_limit`` of) its training sketches to fit closed-form rows on."""
    coll = load_collection(path)
    full = model_split("doodle2search-sketchy")
    assert full is not None
    if photos:
        parts = {k: full.part(k) for k in ("unseen_query", "unseen_gallery")}
        return coll, Split(full.kind, full.seed, dict(full.params), parts, full.seen_classes, full.unseen_classes, path)
    train = [i for i in full.part("train") if coll[i].modality == "sketch"]
    if fit_limit and fit_limit < len(train):
        keep = np.sort(np.random.default_rng(0).choice(len(train), fit_limit, replace=False))
        train = [train[i] for i in keep]
    parts = {"train": train, "gallery": full.part("unseen_query")}
    return coll, Split("leave_one_out", full.seed, {}, parts, seen_classes=full.unseen_classes, data=path)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quickdraw", default=str(DATA_ROOT / "quickdraw" / "raw"))
    ap.add_argument("--omniglot", default=str(DATA_ROOT / "omniglot" / "strokes_background_small1"))
    ap.add_argument("--backbones", nargs="*", default=["lite0", "lite2"], help="frozen backbone rows (none: skip)")
    ap.add_argument("--models", nargs="*", default=[], help="trained models (names or paths) to add as rows")
    ap.add_argument("--no-pixel", dest="pixel", action="store_false", help="skip the pixel ITQ-64 row")
    ap.add_argument("--no-shipped", dest="shipped", action="store_false", help="skip the shipped models' rows")
    ap.add_argument("--sketchy", default=str(DATA_ROOT / "sketchy"))
    ap.add_argument(
        "--datasets", nargs="+", default=["quickdraw", "omniglot", "sketchy", "sketchy-photo"], choices=DATASETS
    )
    ap.add_argument("--fit-limit", type=int, default=1000, help="QuickDraw train items the closed-form rows fit on")
    ap.add_argument("--omniglot-chars", type=int, default=0, help="seeded subset of characters (0: all 136)")
    ap.add_argument("--resolution", type=int, default=None, help="backbone input (default: 224 Lite0, 260 Lite2)")
    ap.add_argument("--power", action="store_true", help="frozen rows: signed square roots of the features")
    ap.add_argument("--levels", default="head", help="frozen rows: pooled levels, e.g. stage5+stage6+head")
    ap.add_argument("--speed-n", type=int, default=30, help="drawings timed one by one on one thread")
    ap.add_argument("--threads", type=int, default=2, help="torch threads for the evaluation itself")
    ap.add_argument("--out", default=str(RESULTS / "pretrained_zero_shot"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    t_all = time.perf_counter()
    rows: list[dict[str, Any]] = []
    # each set: (its name, its rows' label, how its collection and split are read), in the table's order
    sets: list[tuple[str, str, Callable[[], tuple[Collection, Split]]]] = [
        ("quickdraw", "quickdraw", lambda: quickdraw_split(args.quickdraw, args.fit_limit)),
        ("omniglot", "omniglot", lambda: omniglot_split(args.omniglot, args.omniglot_chars)),
        ("quickdraw-seen", "qd-seen", lambda: quickdraw_seen_split(args.quickdraw, args.fit_limit or 600)),
        ("omniglot-other", "omni-oth", lambda: omniglot_split(args.omniglot, args.omniglot_chars, other=True)),
        ("sketchy", "sketchy", lambda: sketchy_split(args.sketchy, args.fit_limit, False)),
        ("sketchy-photo", "sketchy-photo", lambda: sketchy_split(args.sketchy, args.fit_limit, True)),
    ]
    for name, label, read in sets:
        if name in args.datasets:
            coll, split = read()
            print(f"{name}: {split.summary()}", flush=True)
            shipped = (SHIPPED_PHOTO if name == "sketchy-photo" else SHIPPED_SKETCH) if args.shipped else []
            rows += run_dataset(label, coll, split, shipped, args.backbones, args)
    doc = {
        "title": "Zero-shot: every labelled set, unseen classes",
        "args": {k: v for k, v in vars(args).items()},
        "command": "python benchmarks/pretrained_zero_shot.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "rows": rows,
        "seconds": time.perf_counter() - t_all,
        "machine": machine_info(),
    }
    md = table_markdown(doc, COLUMNS, doc["title"])
    md += (
        f"\nCommand: `{doc['command']}` ({doc['seconds'] / 60:.1f} min). QuickDraw: the unseen classes of "
        "sketchmate-quickdraw-64's split, query -> gallery; closed-form rows fitted on "
        f"{args.fit_limit or 'all'} of its train items (seen classes, no labels). Omniglot: sketch-gan's "
        "leave-one-out split"
        + (f" on {args.omniglot_chars} seeded characters" if args.omniglot_chars else "")
        + ", closed-form rows fitted on the gallery without labels. Sketchy: doodle2search-sketchy's 25 unseen "
        "classes, sketch -> sketch leave-one-out (closed-form rows fitted on its seen training sketches) and "
        "sketch -> photo (models with a photo branch). encode/s: one CPU thread, one drawing per call, rendering "
        "from strokes included (Sketchy: from 128 px images); ms/query: search only."
        + (
            " Validation sets (for choosing settings, not zero-shot figures): qd-seen, 1,500 seeded training "
            "drawings of the seen classes, leave-one-out (trained models saw those classes); omni-oth, the "
            "Omniglot characters outside the evaluated subset, leave-one-out."
            if {"quickdraw-seen", "omniglot-other"} & set(args.datasets)
            else ""
        )
        + "\n"
    )
    write_results(args.out, doc, md)
    print(md)


if __name__ == "__main__":
    main()
