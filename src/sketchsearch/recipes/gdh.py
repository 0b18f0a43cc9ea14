"""GDH's recipe: generative domain migration + hashing on sketch / photo pairs (category-level, Sketchy).

Split ``heldout_instance``: every class trains; per class held-out photos with the sketches drawn from them
(fine-grained queries) plus distractor photos. Training pairs come from the one class-balanced sampler over the
training photos' classes (``per_class`` pairs of one class in a row, so in-batch triplets have same-class
negatives); a pair is, with probability ``own_fraction``, a sketch and the photo it was drawn from, else a
random sketch and a random photo of the class (the paper's Ŝ). Metrics: category mAP@all and, on the same
split, instance acc@1 / acc@10 (a query is right when the photo it was drawn from is among its first k).

``sketchsearch train gdh --data ../shared/data/sketchy --set n_classes=20``

Fine-grained (instance-level, the paper's Tables 4-5), on a dataset's own train / test pairs (split
``instance``, QMUL): recipe ``gdh-fg`` (Algorithm 1 without the semantic steps, lambda = 1, batch 64, an
ImageNet Lite0 hash network) and its reference ``siamese`` (the triplet network of "Sketch Me That Shoe",
``methods/siamese.py``) share :func:`fit`; every pair is a sketch and the photo it was drawn from, and the
batch's other photos are the triplets' negatives. ``--set eval_every=N`` records acc@1 / acc@10 on the
split's test pairs every N iterations (the training curve; the model is the last iteration's, never the best).

``sketchsearch train gdh-fg --data ../shared/data/qmul_v1/shoes --set nbits=128``
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from ..data.batching import Batch, Preprocessing, item_input, make_batch, make_photo_batch
from ..data.collection import Collection
from ..data.sampling import ClassBalancedSampler
from ..data.splits import Split
from ..eval.evaluate import evaluate
from ..methods.base import Method
from ..methods.gdh import GDH
from ..progress import phase
from ..train import TrainConfig, train
from . import RECIPES, Recipe

__all__ = ["PairDataset", "collate_pairs", "fit", "fit_fine_grained", "load_arrays"]


def load_arrays(inputs: Sequence[Any], photo: bool, pre: Preprocessing) -> np.ndarray:
    """Inputs -> float32 arrays as the Retriever builds batches: sketches (n, 1, S, S) rasters (ink = 1) or
    photos (n, 3, S, S) RGB in [0, 1]."""
    if not inputs:
        return np.zeros((0, 3 if photo else 1, pre.raster_size, pre.raster_size), dtype=np.float32)
    if photo:
        return make_photo_batch(list(inputs), pre.photo_size)["photo"].numpy()
    return make_batch(list(inputs), pre)["raster"].numpy()


class PairDataset(Dataset[dict[str, Any]]):
    """Sketch-photo pairs keyed by ``(photo index, draw)``: a pair of that photo's class, seeded by
    ``(seed, draw)``: with probability ``own_fraction`` a sketch and the photo it was drawn from (``own``), else
    a random sketch of the class with the keyed photo.

    ``rasters`` (n2, 1, S, S), ``photos`` (n1, 3, S, S); ``sketch_labels`` / ``photo_labels`` class indices;
    ``sketch_photo`` (n2,) the index of each sketch's own photo (-1: not in the set).
    """

    def __init__(
        self,
        rasters: np.ndarray,
        sketch_labels: Sequence[int],
        photos: np.ndarray,
        photo_labels: Sequence[int],
        sketch_photo: Sequence[int],
        *,
        own_fraction: float = 0.5,
        seed: int = 0,
    ) -> None:
        self.rasters, self.photos = rasters, photos
        self.sl, self.pl, self.sp = np.asarray(sketch_labels), np.asarray(photo_labels), np.asarray(sketch_photo)
        if not (len(self.sl) == len(rasters) == len(self.sp) and len(self.pl) == len(photos)):
            raise ValueError("one label and one photo index per sketch, one label per photo")
        classes = sorted(set(self.sl.tolist()) & set(self.pl.tolist()))
        if not classes:
            raise ValueError("no class has both sketches and photos")
        self.s_of = {c: np.flatnonzero(self.sl == c) for c in classes}
        self.own_of = {c: self.s_of[c][self.sp[self.s_of[c]] >= 0] for c in classes}
        self.own_fraction, self.seed = float(own_fraction), int(seed)

    def __len__(self) -> int:
        return len(self.photos)

    def __getitem__(self, key: tuple[int, int]) -> dict[str, Any]:
        p, draw = key
        rng = np.random.default_rng([self.seed, draw])
        c = int(self.pl[p])
        if c not in self.s_of:
            raise ValueError(f"photo {p}'s class {c} has no sketch")
        if len(self.own_of[c]) and rng.random() < self.own_fraction:
            s = int(rng.choice(self.own_of[c]))
            p = int(self.sp[s])
        else:
            s = int(rng.choice(self.s_of[c]))
        return {
            "raster": self.rasters[s],
            "photo": self.photos[p],
            "label": c,
            "photo_index": p,
            "sketch_index": s,
            "instance": p,
            "own": int(self.sp[s] == p),
        }


def collate_pairs(examples: Sequence[dict[str, Any]]) -> Batch:
    """Stack :class:`PairDataset` examples into a batch."""
    out: Batch = {
        "raster": torch.from_numpy(np.stack([e["raster"] for e in examples]).astype(np.float32)),
        "photo": torch.from_numpy(np.stack([e["photo"] for e in examples]).astype(np.float32)),
    }
    for k in ("label", "photo_index", "sketch_index", "instance"):
        out[k] = torch.tensor([int(e[k]) for e in examples], dtype=torch.long)
    out["own"] = torch.tensor([bool(e["own"]) for e in examples])
    return out


def fit(
    method: Method,
    coll: Collection,
    split: Split | None,
    cfg: TrainConfig,
    *,
    per_class: int = 2,  # pairs of one class in a row (same-class negatives for the triplet loss)
    own_fraction: float = 0.5,
    eval_every: int = 0,  # 0: no curve; N: instance acc@1 / acc@10 on the split's test pairs every N iterations
) -> dict[str, Any]:
    """Train on the split's ``train`` part: pairs keyed by training photo (see :class:`PairDataset`), the code
    bank over every training photo and sketch (GDH). Returns the training record: ``own_sketches`` (training
    sketches whose own photo trains too: the triplet's anchors), timings, the last logged losses and, with
    ``eval_every``, the ``curve`` of instance acc@1 / acc@10 by iteration."""
    assert split is not None
    cls = {c: i for i, c in enumerate(split.seen_classes)}
    sk = [coll[i] for i in split.train if coll[i].modality == "sketch"]
    ph = [coll[i] for i in split.train if coll[i].modality == "photo"]
    pre = method.preprocessing
    p_index = {(p.label, p.pair): j for j, p in enumerate(ph) if p.pair is not None}  # an instance: (label, pair)
    sp = [p_index.get((it.label, it.pair), -1) for it in sk]
    sl, pl = [cls[str(it.label)] for it in sk], [cls[str(it.label)] for it in ph]
    with phase(f"loading {len(sk)} sketches and {len(ph)} photos"):
        ds = PairDataset(
            load_arrays([item_input(it) for it in sk], False, pre),
            sl,
            load_arrays([item_input(it) for it in ph], True, pre),
            pl,
            sp,
            own_fraction=own_fraction,
            seed=cfg.seed,
        )
    if isinstance(method, GDH):
        method.set_training_data(pl, sl, len(split.seen_classes), seed=cfg.seed)
    curve = None
    if eval_every:
        cfg = dataclasses.replace(cfg, eval_every=int(eval_every))

        def curve(m: Method) -> dict[str, Any]:
            res = evaluate(m, coll, split, protocol="instance", ks=(1, 10))["main"]
            return {k: res[k] for k in ("acc@1", "acc@10", "mean_rank")}

    sampler = ClassBalancedSampler(pl, per_class, seed=cfg.seed)
    res = train(method, ds, cfg, evaluate=curve, collate_fn=collate_pairs, sampler=sampler)
    return {
        "own_sketches": int(sum(j >= 0 for j in sp)),
        "train_seconds": round(res.seconds, 1),
        "device": res.device,
        "last": res.history[-1] if res.history else {},
        **({"curve": res.evaluations} if eval_every else {}),
    }


def instance_metrics(method: Method, coll: Collection, split: Split) -> dict[str, Any]:
    """Fine-grained figures on the same split: a query's true photo is the one it was drawn from."""
    return {"instance": evaluate(method, coll, split, protocol="instance", ks=(1, 10))["main"]}


RECIPES.register("gdh")(
    lambda: Recipe(
        # batch 32 pairs and lr 2e-4 are the paper's (Sec. 4.1); iterations are ours, CPU-sized (the paper: 30 epochs)
        method="gdh",
        fit=fit,
        iterations=200,
        batch_size=32,
        lr=2e-4,
        split="heldout_instance",
        split_defaults={"heldout_groups": 1, "heldout_photos": 5},
        extra_metrics=instance_metrics,
    )
)


def fit_fine_grained(
    method: Method,
    coll: Collection,
    split: Split | None,
    cfg: TrainConfig,
    *,
    own_fraction: float = 1.0,  # every pair a sketch and its own photo (the triplets' anchor and positive)
    eval_every: int = 0,  # as fit's
) -> dict[str, Any]:
    """:func:`fit` with the fine-grained defaults (one pair per photo: its own sketch)."""
    return fit(method, coll, split, cfg, per_class=2, own_fraction=own_fraction, eval_every=eval_every)  # type: ignore[arg-type]


def _fine_grained(method: str, iterations: int, lr: float, defaults: dict[str, Any]) -> Recipe:
    """A fine-grained recipe on a dataset's own train / test pairs (the module docstring)."""
    return Recipe(
        method=method,
        fit=fit_fine_grained,
        iterations=iterations,
        batch_size=64,
        lr=lr,
        split="instance",
        method_defaults=lambda coll, split: dict(defaults),
    )


# GDH fine-grained, Sec. 4.1: lambda = 1, no semantic steps, batch 64, lr 2e-4; iterations ours (the paper: 200
# epochs of 304 pairs = ~950 iterations at batch 64), CPU-sized; 128 px (ours; the paper: 256)
RECIPES.register("gdh-fg")(
    lambda: _fine_grained(
        "gdh",
        300,
        2e-4,
        {"semantic": False, "triplet_weight": 1.0, "hash_backbone": "lite0", "image_size": 128},
    )
)
# Sketch Me That Shoe's triplet network (methods/siamese.py); lr ours (Adam 1e-4 on the top blocks)
RECIPES.register("siamese")(lambda: _fine_grained("siamese", 300, 1e-4, {}))
