"""The universal encoder's recipe: one labelled set split by class, any number of extra drawing sources, two
augmented views of every drawing, the one training loop, the one evaluation on the split's unseen classes.

``--data EVAL[,EXTRA,...]``: the first spec is the **labelled evaluation set**, split ``class_holdout`` (or
read from ``--split``, e.g. the shipped ``sketchmate-quickdraw-64``'s, so the figures compare with the
pretrained benchmark's rows); its ids are kept. Each further spec (any path or named source the data entry
point reads) is a **training-only extra**: its items join the collection with ids prefixed ``"<n>:"`` and no
label (the source's label kept in ``meta["source_label"]``), so they are in no part of the split.

What trains (:func:`training_set`): the split's ``train`` items, labelled by seen class, and the extras, except

* an extra whose source label is one of the split's **unseen classes** (e.g. the simplified copy of an unseen
  QuickDraw class): unseen classes never train, not even without labels;
* an extra whose own id is the id of a query / gallery item of the split (the same drawing in another
  format: QuickDraw's raw and simplified files share ``key_id``);
* photos (the encoder is for drawings).

Extras are unlabelled (``extra_labels="none"``), or (``"seen"``, default) labelled by the seen class their
source label names (same name as a class of the split), or (``"all"``) also labelled by their own source's
other labels (as new classes; mind that a source's labels then train: never for a set you will evaluate on).

Batches (:class:`ViewDataset`, :func:`collate_views`): two views of each drawing (``data/augment.py``:
stroke-level partial drawing, dropped / shortened strokes, jitter, rotation, stretch; line width; the
invariance study's raster scale / shift), seeded by ``(seed, index, draw)``; drawn by the one
:class:`~sketchsearch.data.sampling.MixedSampler`: groups of ``per_class`` drawings of one seen class
(positives of each other under SupCon) with probability ``labelled_fraction``, else random extras.

Smoke run (CPU, one thread, on the 2-core development machine while other jobs loaded it; the pipeline end to
end, *not* a result): 20 iterations of batch 32 on QuickDraw raw + sketch-rnn Omniglot with the shipped
sketchmate-quickdraw-64 split::

    OMP_NUM_THREADS=1 sketchsearch train universal \\
        --data ../shared/data/quickdraw/raw,../shared/data/sketchrnn/omniglot.npz \\
        --split src/sketchsearch/pretrained/sketchmate-quickdraw-64.split.json --iterations 20 --batch-size 32 \\
        --out /tmp/universal-smoke/universal-64 --workdir /tmp/universal-smoke/run

1 min 36 s wall: 22.0 s of training (1.10 s / iteration: 64 views rendered, augmented and through the
network), ~60 s evaluating both of the split's evaluations (4,127 drawings), the rest reading the data. The
saved model encodes 56-67 drawings/s one at a time on one thread, rendering from strokes included
(``benchmarks/pretrained_zero_shot.py``'s ``encode_per_s``). A view takes ~4 ms to make on one core (QuickDraw
raw, 96 px), so the data, not the network, bounds a GPU run: ``--set workers=N`` renders in N processes.

**The shipped ``universal-64``** (CPU, 2 cores): the whole backbone frozen (``frozen_blocks=17``) at 128 px, the
pooled features of three of its levels (``levels=stage5+stage6+head``) of two views of each drawing computed
once (``cache_views=2``: 51,624 drawings, 103,248 views, 18 min; ``views.npy`` in the work folder, reused by
every run with the same drawings and backbone settings), then 2,000 steps of 256 drawings on them (~3 min),
contrast on the codes' signs only (``code_contrast=sign``, ``projection_weight=0``), the frozen features'
neighbour ranking distilled into the codes (``distill_weight=1``) and the feature layer on their signed square
roots (``feature_power=true``)::

    OMP_NUM_THREADS=2 sketchsearch train universal \
        --data $D/quickdraw/raw,$D/quickdraw/simplified,$D/sketchrnn/omniglot.npz,$D/sketchrnn/kanji.rdp100.npz \
        --split src/sketchsearch/pretrained/sketchmate-quickdraw-64.split.json --iterations 2000 \
        --batch-size 256 --lr 1e-3 --set frozen_blocks=17 --set input_size=128 --set cache_views=2 \
        --set workers=1 --set code_contrast=sign --set projection_weight=0 --set nbits=64 \
        --set distill_weight=1 --set feature_power=true --set levels=stage5+stage6+head \
        --out models/universal-64 --workdir runs/universal

Unseen QuickDraw classes: mAP@all 0.265 (64 bits), 0.320 (its float features); Omniglot 0.440 / 0.540; without
``levels`` 0.261 / 0.300 and 0.383 / 0.484. The README's tables have the rest and how the settings were chosen
(validation runs below, on seen classes held out of head training: 64 bits on sets 0 / 1 0.255 / 0.288 without
distillation, 0.282 / 0.318 with it and ``feature_power``, 0.309 / 0.338 with ``levels`` too).

**Choosing settings** (``--set validate_classes=N``): a validation run of the same command keeps N of the split's
*seen* classes (drawn by ``validate_seed``, :func:`validation_split`) out of training (their train drawings and the
extras labelled by them) and scores its model on their held-out query / gallery drawings (the record's
``validation``, in the card's ``training``). The views are cached before anything is left out, so a
validation run and the full run share one ``views.npy``. The split's unseen classes are never looked at.

**Top blocks trained on CPU, on cached trunk maps** (measured; not shipped): with ``frozen_blocks`` < 17 the
cache holds the frozen trunk's output maps instead of pooled features, and the trained top runs every step.
The shipped command with ``--set frozen_blocks=15`` (stage 7 and the 1,280-channel head trained, at ``lr x
top_lr_mult``) and ``--set validate_classes=50``: the cache took 11.7 min (103,248 views of 192 x 4 x 4, 0.6 GiB;
``--workdir runs/uni/top15/run``), 2,000 steps 0.6 s each on 2 threads (~1.1 s on one). 64-bit mAP@all on
validation classes set 0: ``top_lr_mult`` 0.1 **0.230**, 0.01 0.222, 0.001 0.226, against the head-only
settings' 0.255 (all without distillation). Training the top scores worse on classes it never saw at every
rate tried; that even a 1e-6 rate loses pointed at the top's batch-norm statistics, re-estimated on drawings in
training mode, rather than its weights; ``--set top_bn=frozen`` (ImageNet's statistics kept, scale and shift
trained, ``top_lr_mult`` 0.1) scores **0.250**: most of the loss recovered, not above 0.255. So the shipped
model keeps the backbone frozen.

**A full training run with the top blocks trained** (a later session; not run yet, no quality claimed), on a
GPU if one is lent (the loop picks CUDA and bf16 autocast by itself; on one CPU core it would be ~2 s /
iteration at batch 64), all the drawings the issue names, 64 bits (then ``--set nbits=128``)::

    D=../shared/data
    sketchsearch train universal \\
        --data $D/quickdraw/raw,$D/quickdraw/simplified,$D/quickdraw/bitmap,$D/sketchrnn/omniglot.npz,\\
    $D/sketchrnn/kanji.rdp100.npz,kanjivg,$D/sketchy \\
        --split src/sketchsearch/pretrained/sketchmate-quickdraw-64.split.json \\
        --iterations 20000 --batch-size 256 --lr 1e-3 --set nbits=64 --set frozen_blocks=6 --set workers=14 \\
        --out models/universal-64 --workdir runs/universal-64

Checked here (reading only): the spec reads 92,995 items in 31 s; with that split, 4,232 train drawings and
71,295 extras train (20,184 of them labelled by a seen class: QuickDraw simplified and bitmaps, Sketchy
sketches); dropped: 8,825 extras of unseen classes, 2,316 copies of query / gallery drawings, 2,200 photos.
Estimated (not measured): 512 views of ~4 ms over 14 workers, ~0.15 s / iteration, about an hour for 20,000.
``frozen_blocks=6`` trains stages 4-7 (the CPU default 11: stages 6-7). The kanji sets are the same drawings
at three simplifications: one is enough. Omniglot ``small1`` is *not* an extra: it is the evaluation set of
the Omniglot goal (sketch-rnn's omniglot.npz, drawn from all of Omniglot, is unlabelled here, as for the
shipped sketch-gan). Then (commands not run here)::

    sketchsearch evaluate --data $D/quickdraw/raw --model models/universal-64
    sketchsearch evaluate --data $D/omniglot/strokes_background_small1 --model models/universal-64 \\
        --split src/sketchsearch/pretrained/sketch-gan.split.json --protocol leave-one-out

Compare with ``benchmarks/pretrained_zero_shot.py``'s rows (pixel ITQ-64, frozen Lite0 float and ITQ-64) on
the same two evaluations: QuickDraw's unseen classes of sketchmate-quickdraw-64's split (this recipe's
``zero_shot`` figures with that ``--split``) and Omniglot small1 leave-one-out on sketch-gan's split
(``sketchsearch evaluate`` with the trained model). The issue's goals: 64-bit mAP@all >= 2.5x pixel ITQ-64 on
the unseen QuickDraw classes, >= 2x on the unseen Omniglot alphabets, above the frozen backbone's float
figure on both, and >= 50 drawings/s encoded on one CPU thread, rendering included.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from torch.utils.data import DataLoader, Dataset

from ..data.augment import AugmentConfig, augment_sketch, render_view
from ..data.batching import Batch, Preprocessing, item_input, make_example, pad_points, sketch_points
from ..data.collection import Collection
from ..data.sampling import MixedSampler
from ..data.sketch import Sketch
from ..data.sources import load_collection, named_source
from ..data.splits import Split
from ..errors import FormatError
from ..eval.evaluate import evaluate
from ..methods.base import Method
from ..progress import phase
from ..train import TrainConfig, train
from . import RECIPES, Recipe

__all__ = [
    "EXTRA_LABELS",
    "CachedViews",
    "ViewDataset",
    "cache_features",
    "cache_strokes",
    "collate_cached",
    "collate_views",
    "drawings_digest",
    "fit",
    "load_sources",
    "stroke_view",
    "training_set",
    "validation_split",
]

EXTRA_LABELS = ("none", "seen", "all")


def load_sources(data: str) -> Collection:
    """The first ``","``-separated spec as it is (the labelled evaluation set), then every further spec's items
    with ids ``"<n>:<id>"`` (n = its position, from 1), no label and ``meta["source_label"]`` /
    ``meta["extra_source"]`` (see the module docstring)."""
    specs = [p.strip() for p in data.split(",") if p.strip()]
    if not specs:
        raise FormatError(data, None, "no data spec given")
    items, skipped, errors = [], 0, []
    for n, part in enumerate(specs):
        if n and named_source(part) is None and not Path(part).exists():
            raise FormatError(part, None, "no such file or folder (an extra source: a data path or a named source)")
        coll = load_collection(part)
        if n == 0:
            items += coll.items
        else:
            items += [
                replace(
                    it, id=f"{n}:{it.id}", label=None, meta={**it.meta, "source_label": it.label, "extra_source": n}
                )
                for it in coll.items
            ]
        skipped, errors = skipped + coll.skipped, errors + coll.errors
    return Collection(items, name=data, path=data, skipped=skipped, errors=errors)


def training_set(coll: Collection, split: Split, extra_labels: str = "seen") -> tuple[list[Any], list[int], dict]:
    """What trains: (drawings as encoders read them, labels (class index, -1 unlabelled), counts); see the
    module docstring. Class indices: the split's seen classes in order, then (``extra_labels="all"``) the
    extras' other labels as ``"<n>:<label>"``."""
    if extra_labels not in EXTRA_LABELS:
        raise ValueError(f"extra_labels must be one of {', '.join(EXTRA_LABELS)}, got {extra_labels!r}")
    index = {c: i for i, c in enumerate(split.seen_classes)}
    unseen = set(split.unseen_classes)
    held = {i for name, ids in split.parts.items() if name != "train" for i in ids}
    inputs: list[Any] = []
    labels: list[int] = []
    for i in split.train:
        it = coll[i]
        if str(it.label) in unseen:  # Split.check refuses such a split; never trained, whatever made it
            raise FormatError(coll.path or "data", f"parts.train: {i}", f"unseen class {it.label!r} in train")
        inputs.append(item_input(it))
        labels.append(index[str(it.label)])
    counts = {"train_items": len(inputs), "extras": 0, "extras_labelled": 0}
    dropped = {"unseen_class": 0, "held_out_id": 0, "photo": 0, "empty": 0}
    for it in coll.items:
        n = it.meta.get("extra_source")
        if not n:
            continue
        src = it.meta.get("source_label")
        src = None if src is None else str(src)
        own_id = it.id.split(":", 1)[1]
        if src is not None and src in unseen:
            dropped["unseen_class"] += 1
        elif own_id in held:
            dropped["held_out_id"] += 1
        elif it.modality != "sketch":
            dropped["photo"] += 1
        elif (it.sketch is None or it.sketch.is_empty) and it.image is None:
            dropped["empty"] += 1
        else:
            y = -1
            if src is not None and extra_labels != "none":
                if src in index:
                    y = index[src]
                elif extra_labels == "all":
                    y = index.setdefault(f"{n}:{src}", len(index))
            inputs.append(item_input(it))
            labels.append(y)
            counts["extras"] += 1
            counts["extras_labelled"] += int(y >= 0)
    counts["classes"] = len(index)
    return inputs, labels, {**counts, "dropped_extras": dropped}


def stroke_view(x: Any, pre: Preprocessing, rng: np.random.Generator | None, cfg: AugmentConfig | None) -> np.ndarray:
    """A view of a drawing's stroke points for a stroke branch, (T, 4) float32 (at most ``pre.max_points``): its
    strokes through :func:`~sketchsearch.data.augment.augment_sketch` (``cfg=None``: as they are), then read as
    at encoding (:func:`~sketchsearch.data.batching.sketch_points`). ~1.5 ms on one core (QuickDraw raw). A
    drawing given as an image has none here (an empty sequence): tracing its pixels (what encoding does) would
    cost more than the rest of a training view."""
    if not isinstance(x, Sketch):
        return np.zeros((0, 4), np.float32)
    s = augment_sketch(x, rng, cfg) if cfg is not None and rng is not None else x
    return sketch_points(s, pre.max_points).astype(np.float32)


def _stroke_views(x: Any, pre: Preprocessing, seed: list[int], cfg: AugmentConfig | None, k: int) -> list[np.ndarray]:
    """``k`` stroke views of one drawing (:func:`stroke_view`) on their own random stream, ``seed + [1]`` (apart
    from the raster views' ``seed``)."""
    rng = np.random.default_rng([*seed, 1])
    return [stroke_view(x, pre, rng, cfg) for _ in range(k)]


def _with_points(ex: dict[str, Any], x: Any, pre: Preprocessing, seed: list[int], cfg: AugmentConfig | None) -> None:
    """Add ``points`` / ``points2`` (two stroke views, :func:`_stroke_views`) to ``ex`` when ``pre`` asks for
    points."""
    if "points" in pre.inputs:
        ex["points"], ex["points2"] = _stroke_views(x, pre, seed, cfg, 2)


def _collate_points(out: Batch, examples: Sequence[dict[str, Any]]) -> Batch:
    if "points" in examples[0]:
        out["points"], out["lengths"] = pad_points([e["points"] for e in examples])
        out["points2"], out["lengths2"] = pad_points([e["points2"] for e in examples])
    return out


class ViewDataset(Dataset[dict[str, Any]]):
    """Two augmented views of each drawing, keyed by ``(index, draw)`` (the sampler's): the views of a key are
    seeded by ``(seed, index, draw)``, so a run is reproducible from its seed whatever the workers.
    ``augment=None``: both views are the plain rendering. When ``pre`` asks for points, two stroke views too
    (``points`` / ``points2``, :func:`stroke_view`)."""

    def __init__(
        self,
        inputs: Sequence[Any],
        labels: Sequence[int],
        pre: Preprocessing,
        augment: AugmentConfig | None = AugmentConfig(),
        seed: int = 0,
    ) -> None:
        if len(inputs) != len(labels):
            raise ValueError(f"{len(labels)} labels for {len(inputs)} drawings")
        self.inputs, self.labels, self.pre, self.augment, self.seed = list(inputs), list(labels), pre, augment, seed

    def __len__(self) -> int:
        return len(self.inputs)

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        i, draw = (key, 0) if isinstance(key, int | np.integer) else key
        x = self.inputs[i]
        if self.augment is None:
            r = make_example(x, replace(self.pre, inputs=("raster",)))["raster"]
            ex = {"raster": r, "raster2": r, "label": int(self.labels[i])}
        else:
            rng = np.random.default_rng([self.seed, int(i), int(draw)])
            v1 = render_view(x, self.pre, rng, self.augment)
            v2 = render_view(x, self.pre, rng, self.augment)
            ex = {"raster": v1, "raster2": v2, "label": int(self.labels[i])}
        _with_points(ex, x, self.pre, [self.seed, int(i), int(draw)], self.augment)
        return ex


class CachedViews(Dataset[dict[str, Any]]):
    """The frozen backbone's features of ``k`` augmented views of each drawing, ``feats`` (N, k, ...): pooled
    (N, k, 1280) or the trunk's maps (N, k, C, h, w), given to the model as ``key`` / ``key + "2"`` (the
    model's ``cache_key``). A key ``(index, draw)`` picks two different views of drawing ``index``, seeded by
    ``(seed, index, draw)`` (one view, ``k = 1``: the same one twice). With ``strokes`` (:func:`cache_strokes`:
    ``points`` (N, k, T, 4) and ``lengths`` (N, k)), the same two views' stroke points too: view ``a``'s raster
    and strokes go together."""

    def __init__(
        self,
        feats: np.ndarray,
        labels: Sequence[int],
        seed: int = 0,
        *,
        strokes: tuple[np.ndarray, np.ndarray] | None = None,
        key: str = "pooled",
    ) -> None:
        if feats.ndim < 3 or len(feats) != len(labels):
            raise ValueError(f"feats must be (N, k, ...) for {len(labels)} drawings, got shape {feats.shape}")
        if strokes is not None and (strokes[0].shape[:2] != feats.shape[:2] or strokes[1].shape != feats.shape[:2]):
            raise ValueError(
                f"stroke views must be (N, k, T, 4) and (N, k) with (N, k) = {feats.shape[:2]}, "
                f"got {strokes[0].shape} and {strokes[1].shape}"
            )
        self.feats, self.labels, self.seed, self.strokes, self.key = feats, list(labels), seed, strokes, key

    def __len__(self) -> int:
        return len(self.feats)

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        i, draw = (key, 0) if isinstance(key, int | np.integer) else key
        k = self.feats.shape[1]
        a, b = np.random.default_rng([self.seed, int(i), int(draw)]).permutation(k)[:2] if k > 1 else (0, 0)
        ex = {self.key: self.feats[i, a], self.key + "2": self.feats[i, b], "label": int(self.labels[i])}
        if self.strokes is not None:
            pts, n = self.strokes
            ex["points"], ex["points2"] = pts[i, a, : n[i, a]], pts[i, b, : n[i, b]]
        return ex


class _StrokeViews(Dataset[tuple[np.ndarray, np.ndarray]]):
    """Drawing ``i``'s ``k`` stroke views (:func:`_stroke_views` of ``(seed, i)``), zero-padded, and their
    lengths: what :func:`cache_strokes` computes in its workers."""

    def __init__(self, inputs: Sequence[Any], pre: Preprocessing, k: int, seed: int, augment: AugmentConfig | None):
        self.inputs, self.pre, self.k, self.seed, self.augment = inputs, pre, k, seed, augment

    def __len__(self) -> int:
        return len(self.inputs)

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        pts = np.zeros((self.k, self.pre.max_points, 4), np.float32)
        n = np.zeros(self.k, np.int64)
        for v, p in enumerate(_stroke_views(self.inputs[i], self.pre, [self.seed, int(i)], self.augment, self.k)):
            pts[v, : len(p)], n[v] = p, len(p)
        return pts, n


def cache_strokes(
    inputs: Sequence[Any], pre: Preprocessing, k: int, *, seed: int = 0, augment: AugmentConfig | None, workers: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """``k`` stroke views of each drawing, computed once beside the cached raster views (``cache_views``): the
    stroke points (N, k, max_points, 4) float32, zero-padded, and their lengths (N, k). Not written to disk
    (~1.5 ms a view: 2.6 min on one core for 103,248 views)."""
    ds = _StrokeViews(inputs, pre, k, seed, augment)
    loader = DataLoader(ds, batch_size=512, num_workers=workers, collate_fn=list)
    pts = np.zeros((len(inputs), k, pre.max_points, 4), np.float32)
    lengths = np.zeros((len(inputs), k), np.int64)
    done = 0
    with Progress(
        TextColumn("[bold]stroke views[/]"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} drawings"),
        TimeElapsedColumn(),
        console=Console(stderr=True),
    ) as bar:
        task = bar.add_task("strokes", total=len(inputs))
        for part in loader:
            for p, n in part:
                pts[done], lengths[done] = p, n
                done += 1
            bar.update(task, advance=len(part))
    return pts, lengths


def collate_cached(examples: Sequence[dict[str, Any]]) -> Batch:
    """Stack :class:`CachedViews` examples: ``pooled`` / ``pooled2`` (B, 1280) or ``trunk`` / ``trunk2``
    (B, C, h, w), float32, ``label`` (B,); stroke views as ``points`` / ``lengths`` and ``points2`` / ``lengths2``
    (zero-padded)."""
    key = "pooled" if "pooled" in examples[0] else "trunk"
    out = {k: torch.from_numpy(np.stack([e[k] for e in examples]).astype(np.float32)) for k in (key, key + "2")}
    out["label"] = torch.tensor([int(e["label"]) for e in examples], dtype=torch.long)
    return _collate_points(out, examples)


class _Keys(Dataset[dict[str, Any]]):
    """``ds[keys[j]]`` for j: the cache's pass over every (drawing, draw) once, in order."""

    def __init__(self, ds: ViewDataset, keys: list[tuple[int, int]]) -> None:
        self.ds, self.keys = ds, keys

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, j: int) -> dict[str, Any]:
        return self.ds[self.keys[j]]


def validation_split(coll: Collection, split: Split, n: int, seed: int) -> tuple[list[str], Split]:
    """``n`` of ``split``'s seen classes, drawn by ``seed``, and a split whose query / gallery are those classes'
    drawings in ``split``'s own query / gallery parts (held out of training already): what a validation run
    keeps out of training and scores, so that settings are chosen without the split's unseen classes."""
    seen = list(split.seen_classes)
    if not 0 < n < len(seen):
        raise ValueError(f"validate_classes must be in [1, {len(seen) - 1}] (the split has {len(seen)} seen classes)")
    order = np.random.default_rng(seed).permutation(len(seen))
    classes = sorted(seen[i] for i in order[:n])
    chosen = set(classes)
    parts = {p: [i for i in split.part(p) if str(coll[i].label) in chosen] for p in ("query", "gallery")}
    params = {**split.params, "validate_classes": n, "validation_seed": seed}
    return classes, Split(split.kind, split.seed, params, parts, seen_classes=classes, data=split.data)


def drawings_digest(inputs: Sequence[Any], labels: Sequence[int]) -> str:
    """SHA-256 of every drawing (its strokes' points, or its image's pixels) and label, in order: what a cache
    of their features is keyed by. A count and labels are not enough: sketch-rnn's kanji files hold the same
    drawings, unlabelled, at three simplifications."""
    h = hashlib.sha256()
    for x, y in zip(inputs, labels, strict=True):
        if isinstance(x, Sketch):
            for s in x.strokes:
                h.update(np.ascontiguousarray(s, dtype=np.float64).tobytes() + b"|")
        else:  # a PIL image (item_input)
            h.update(f"{x.mode}{x.size}".encode() + x.tobytes())
        h.update(f"#{int(y)};".encode())
    return h.hexdigest()


def cache_features(
    method: Method,
    ds: ViewDataset,
    k: int,
    *,
    batch_size: int = 64,
    workers: int = 0,
    path: Path | None = None,
    stats: dict[str, Any] | None = None,
    max_gib: float = 8.0,
) -> np.ndarray:
    """(N, k, ...) float16: what training never changes in ``k`` views of each of ``ds``'s drawings, the model's
    ``cache_input`` (:attr:`~sketchsearch.methods.universal.UniversalEncoder.cache_key`): a frozen backbone's
    pooled features (N, k, 1280), or the frozen trunk's output maps (N, k, C, h, w) under trained top blocks.
    The views are :class:`ViewDataset`'s pairs ``(i, d)``, d < ceil(k / 2), so a view is the one the on-the-fly
    recipe would render for that key. With ``path``, a cache whose fingerprint (the drawings and labels
    themselves, :func:`drawings_digest`; k, seed, augmentation, preprocessing, backbone settings) matches is
    read back instead of recomputed (and ``stats["cache_reused"]`` names the file); a new one is written there.
    Why a cache: the frozen part's forward pass is most of a training step on a CPU (>99% with the whole backbone
    frozen; Lite0 at 128 px with stages 1-6 frozen: a step of 512 views through stage 7 and the head takes
    ~0.6 s on 2 cores, the trunk ~3 s more), and the same views would be recomputed every epoch. A cache larger
    than ``max_gib`` is refused before anything is computed (the option to raise it, or freeze more blocks)."""
    if k < 1:
        raise ValueError(f"cache_views must be >= 1, got {k}")
    if not hasattr(method, "cache_input"):
        raise ValueError(f"cache_views: method {method.name!r} has no frozen part to cache (universal has)")
    n = len(ds)
    fingerprint = {
        "n": n,
        "drawings": drawings_digest(ds.inputs, ds.labels),
        "k": k,
        "seed": ds.seed,
        "augment": ds.augment.to_dict() if ds.augment else None,
        # the views are rasters: the stroke points a model may also read (and their max_points) do not change
        # them, so they do not key the cache (a stroke-branch run reuses the raster-only run's views)
        "preprocessing": repr(replace(ds.pre, inputs=("raster",), max_points=Preprocessing.max_points)),
        # what the backbone's features depend on (not the heads': one cache serves 64 and 128 bits)
        "backbone": {
            k: method.hparams.get(k) for k in ("backbone", "frozen_blocks", "input_size", "ink", "pretrained")
        },
    }
    levels = method.hparams.get("levels", "head")
    if levels != "head":  # the default stays out of the key: caches made before the option stay valid
        fingerprint["backbone"]["levels"] = levels
    meta_path = path.with_suffix(".json") if path else None
    if (
        path
        and meta_path
        and path.is_file()
        and meta_path.is_file()
        and json.loads(meta_path.read_text()) == fingerprint
    ):
        feats = np.load(path, mmap_mode="r")
        if feats.shape[:2] == (n, k):
            if stats is not None:
                stats["cache_reused"] = str(path)
            return np.asarray(feats)
    keys = [(i, d) for d in range(-(-k // 2)) for i in range(n)]
    ds = ViewDataset(ds.inputs, ds.labels, replace(ds.pre, inputs=("raster",)), ds.augment, ds.seed)  # no strokes
    was_training = method.training
    method.eval()
    with torch.no_grad():  # the shape of one view's cache entry, from one plain rendering
        shape = tuple(method.cache_input(collate_views([ds[0]])["raster"]).shape[1:])
    gib = n * k * int(np.prod(shape)) * 2 / 2**30
    if gib > max_gib:
        method.train(was_training)
        raise ValueError(
            f"cache_views: {k} views of {n} drawings at {shape} float16 need {gib:.1f} GiB, over "
            f"cache_max_gib={max_gib:g}: raise it, or freeze more blocks (frozen_blocks)"
        )
    loader = DataLoader(_Keys(ds, keys), batch_size=batch_size, collate_fn=collate_views, num_workers=workers)
    feats = np.zeros((n, k, *shape), dtype=np.float16)
    done = 0
    with (
        torch.no_grad(),
        Progress(
            TextColumn("[bold]caching[/] backbone features"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total} views"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=Console(stderr=True),
        ) as bar,
    ):
        task = bar.add_task("cache", total=n * k)
        for batch in loader:
            rows = keys[done : done + len(batch["raster"])]
            done += len(rows)
            idx = np.array([i for i, _ in rows])
            col = np.array([2 * d for _, d in rows])
            feats[idx, col] = method.cache_input(batch["raster"]).numpy()
            second = col + 1 < k
            if second.any():
                h2 = method.cache_input(batch["raster2"][torch.from_numpy(second)]).numpy()
                feats[idx[second], col[second] + 1] = h2
            bar.update(task, advance=int(len(rows) + second.sum()))
    method.train(was_training)
    if path and meta_path:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp.npy")
        np.save(tmp, feats)
        tmp.replace(path)
        meta_path.write_text(json.dumps(fingerprint))
    return feats


def collate_views(examples: Sequence[dict[str, Any]]) -> Batch:
    """Stack :class:`ViewDataset` examples: ``raster`` / ``raster2`` (B, 1, S, S), ``label`` (B,); stroke views
    as :func:`collate_cached`'s."""
    out = {
        "raster": torch.from_numpy(np.stack([e["raster"] for e in examples]))[:, None],
        "raster2": torch.from_numpy(np.stack([e["raster2"] for e in examples]))[:, None],
        "label": torch.tensor([int(e["label"]) for e in examples], dtype=torch.long),
    }
    return _collate_points(out, examples)


def fit(
    method: Method,
    coll: Collection,
    split: Split | None,
    cfg: TrainConfig,
    *,
    extra_labels: str = "seen",  # "none" | "seen" | "all" (module docstring)
    per_class: int = 2,  # drawings of one class in a row: SupCon positives beyond the two views
    labelled_fraction: float = 0.5,  # share of the groups drawn from the labelled classes (when there are extras)
    augment: bool = True,  # False: both views are the plain rendering (a control, not a training setting)
    affine_p: float = 0.5,  # the raster-level scale / shift's probability (data/augment.py)
    workers: int = 0,  # DataLoader processes rendering the views (0: in the training process)
    cache_views: int = 0,  # > 0: a frozen backbone's features of this many views per drawing, computed once
    # (cache_features) and trained on for every iteration (CPU: the head trains in seconds, the views cost ~10
    # ms each); 0: views rendered and passed through the backbone every step. With top blocks trained
    # (frozen_blocks < 17), the frozen trunk's output maps are cached instead and the top runs every step
    cache_max_gib: float = 8.0,  # the largest cache_views cache allowed (refused before computing it)
    validate_classes: int = 0,  # > 0: a validation run. This many seen classes (validation_split, validate_seed)
    # never train: their drawings (train items and extras labelled by them) are left out after the views are
    # cached, so the cache is the full run's; the record's "validation" holds the figures on their held-out
    # query / gallery drawings. How settings are chosen without looking at the split's unseen classes.
    validate_seed: int = 0,  # draws the validation classes (apart from --seed, so that seeds of training can be
    # compared on the same classes)
) -> dict[str, Any]:
    """Train on :func:`training_set` with two views per drawing; returns counts, timings, the last losses."""
    if split is None:
        raise ValueError("universal trains on a class_holdout split of its first (labelled) data source")
    if workers < 0:
        raise ValueError(f"workers must be >= 0, got {workers}")
    t0 = time.perf_counter()
    with phase("collecting the training drawings"):
        inputs, labels, info = training_set(coll, split, extra_labels)
    collect_s = time.perf_counter() - t0
    if not inputs:
        raise ValueError("no training drawings: the split's train part and the extras are empty")
    val_classes, val_split, keep = [], None, np.ones(len(labels), bool)
    if validate_classes:
        if extra_labels == "none":  # an unlabelled extra may be a copy of a held-out class's drawing
            raise ValueError("validate_classes needs extra_labels 'seen' or 'all', got 'none'")
        val_classes, val_split = validation_split(coll, split, int(validate_classes), int(validate_seed))
        held = {split.seen_classes.index(c) for c in val_classes}  # training_set's class indices
        keep = np.array([y not in held for y in labels], bool)
        info["validation_dropped"] = int((~keep).sum())
    kept = [y for y, k in zip(labels, keep, strict=True) if k]
    cfg_aug = AugmentConfig(affine_p=float(affine_p)) if augment else None
    ds = ViewDataset(inputs, labels, method.preprocessing, cfg_aug, seed=cfg.seed)
    sampler = MixedSampler(kept, per_class=per_class, labelled_fraction=labelled_fraction, seed=cfg.seed)
    cache_s, cache_info = 0.0, {}
    if cache_views:
        t1 = time.perf_counter()
        cache = Path(cfg.out) / "views.npy" if cfg.out else None
        with phase(f"backbone features of {cache_views} views of {len(inputs)} drawings"):
            feats = cache_features(
                method,
                ds,
                int(cache_views),
                workers=int(workers),
                path=cache,
                stats=cache_info,
                max_gib=float(cache_max_gib),
            )
        cache_s = time.perf_counter() - t1
        rows = np.flatnonzero(keep)
        strokes = None
        if "points" in method.preprocessing.inputs:  # a stroke branch: as many stroke views, once, in memory
            t2 = time.perf_counter()
            only = [inputs[i] for i in rows]
            with phase(f"{cache_views} stroke views of {len(only)} drawings"):
                strokes = cache_strokes(
                    only, method.preprocessing, int(cache_views), seed=cfg.seed, augment=cfg_aug, workers=int(workers)
                )
            cache_info["stroke_views_seconds"] = round(time.perf_counter() - t2, 1)
        feats = feats if keep.all() else feats[rows]
        res = train(
            method,
            CachedViews(feats, kept, seed=cfg.seed, strokes=strokes, key=method.cache_key),
            cfg,
            collate_fn=collate_cached,
            sampler=sampler,
        )
    else:
        if not keep.all():
            only = [x for x, k in zip(inputs, keep, strict=True) if k]
            ds = ViewDataset(only, kept, method.preprocessing, cfg_aug, seed=cfg.seed)
        res = train(method, ds, replace(cfg, num_workers=int(workers)), collate_fn=collate_views, sampler=sampler)
    record = {
        **info,
        "labelled_fraction": sampler.labelled_fraction,
        "augment": cfg_aug.to_dict() if cfg_aug else None,
        "collect_seconds": round(collect_s, 1),
        "cache_views": int(cache_views),
        "cache_seconds": round(cache_s, 1),  # reading it back, when it was reused (cache_reused)
        **cache_info,
        "train_seconds": round(res.seconds, 1),
        "seconds_per_iteration": round(res.seconds / max(cfg.iterations, 1), 3),
        "device": res.device,
        "last": res.history[-1] if res.history else {},
    }
    if val_split is not None:
        with phase(f"evaluating on the {len(val_classes)} validation classes"):
            record["validation"] = {"classes": val_classes, **evaluate(method, coll, val_split)["main"]}
    return record


RECIPES.register("universal")(
    lambda: Recipe(
        method="universal",
        fit=fit,
        iterations=300,  # CPU-sized default (a smoke run); the full run's settings: the module docstring
        batch_size=64,
        lr=1e-3,  # the heads'; the pretrained top blocks get lr x top_lr_mult
        split="class_holdout",
        split_defaults={"unseen": 50, "query_frac": 0.1, "gallery_frac": 0.3},  # sketchmate-quickdraw-64's
        load=load_sources,
        doc="two-view contrastive hashing on an ImageNet Lite backbone, extras as training-only sources",
    )
)
