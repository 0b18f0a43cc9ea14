"""DSML's recipe: the SNR-distance (or Euclidean) contrastive loss on class-balanced batches.

Batches hold ``batch_size // per_class`` classes x ``per_class`` drawings (:class:`ClassBalancedSampler`), so
every batch has positive pairs. Split ``class_holdout``: ``unseen`` classes held out for zero-shot
evaluation, per seen class ``query_frac`` queries and ``gallery_frac`` gallery held out.

``sketchsearch train dsml --data ../shared/data/quickdraw/raw --set distance=snr --set unseen=0.2``
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from ..data.batching import SketchDataset, item_input
from ..data.collection import Collection
from ..data.sampling import ClassBalancedSampler, Indexed
from ..data.splits import Split
from ..methods.dsml import DSML
from ..train import TrainConfig, train
from . import RECIPES, Recipe


def fit(
    method: DSML,
    coll: Collection,
    split: Split | None,
    cfg: TrainConfig,
    *,
    per_class: int = 4,  # drawings per class in a batch (>= 2, so that positives exist)
) -> dict[str, Any]:
    assert split is not None
    if per_class < 2:
        raise ValueError(f"per_class (drawings per class in a batch) must be >= 2, got {per_class}")
    index = {c: i for i, c in enumerate(split.seen_classes)}
    items = [coll[i] for i in split.train]
    labels = [index[str(it.label)] for it in items]
    data = Indexed(SketchDataset([item_input(it) for it in items], labels, method.preprocessing))
    sampler = ClassBalancedSampler(labels, per_class=per_class, seed=cfg.seed)
    res = train(
        method, data, replace(cfg, batch_size=max(per_class, cfg.batch_size // per_class * per_class)), sampler=sampler
    )
    return {
        "per_class": per_class,
        "n_train": len(items),
        "seconds": round(res.seconds, 1),
        "device": res.device,
        "last": res.history[-1] if res.history else {},
    }


RECIPES.register("dsml")(
    lambda: Recipe(
        method="dsml",
        fit=fit,
        iterations=500,
        batch_size=64,
        lr=1e-3,
        split="class_holdout",
        split_defaults={"unseen": 0.2, "query_frac": 0.1, "gallery_frac": 0.3},
    )
)
