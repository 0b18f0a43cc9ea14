"""SketchMate's recipe: four stages through the one training loop on a class-holdout split.

Stages (see :mod:`sketchsearch.methods.sketchmate`): each branch pretrained alone with its classifier, the fused
network + hash layer with cross-entropy, class centres from the pretrained model after entropy noise removal,
then the full objective. The split (``class_holdout``): ``unseen`` classes held out for zero-shot evaluation;
per seen class ``query_frac`` queries, ``gallery_frac`` gallery and the rest training drawings.

``sketchsearch train sketchmate --data ../shared/data/quickdraw/raw --set unseen=50 --set nbits=64``
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from ..data.batching import Batch, SketchDataset, item_input, make_batch
from ..data.collection import Collection
from ..data.splits import Split
from ..methods.base import Method
from ..methods.sketchmate import SketchMate
from ..progress import phase as report_phase
from ..train import TrainConfig, train
from . import RECIPES, Recipe


def _labelled(coll: Collection, split: Split) -> tuple[list[Any], list[int]]:
    index = {c: i for i, c in enumerate(split.seen_classes)}
    items = [coll[i] for i in split.train]
    return [item_input(it) for it in items], [index[str(it.label)] for it in items]


def _batches(method: Method, inputs: Sequence[Any], labels: Sequence[int], size: int = 256) -> Iterator[Batch]:
    for i in range(0, len(inputs), size):
        yield make_batch(inputs[i : i + size], method.preprocessing, labels[i : i + size])


def fit(
    method: SketchMate,
    coll: Collection,
    split: Split | None,
    cfg: TrainConfig,
    *,
    pretrain_iterations: int | None = None,  # branch pretraining (default: the full stage's iterations)
    fused_iterations: int | None = None,  # fused pretraining (default: a third of the full stage's)
    noise_removal: bool = True,
    keep: float = 0.9,  # the paper: keep the middle 90% of each class's entropy distribution
) -> dict[str, Any]:
    """The four stages, each one call of the one training loop. Returns timings and each stage's last losses."""
    assert split is not None
    inputs, labels = _labelled(coll, split)
    data = SketchDataset(inputs, labels, method.preprocessing)
    pre_it = cfg.iterations if pretrain_iterations is None else pretrain_iterations
    fused_it = max(1, cfg.iterations // 3) if fused_iterations is None else fused_iterations
    stages = [(p, pre_it) for p, on in (("pretrain_cnn", method.cnn), ("pretrain_rnn", method.rnn)) if on is not None]
    stages += [("pretrain_fused", fused_it), ("centres", 0), ("full", cfg.iterations)]
    info: dict[str, Any] = {"stages": {}}
    for phase, its in stages:
        if phase == "centres":
            if method.use_centre_loss:
                t0 = time.perf_counter()
                with report_phase("class centres"):
                    info["centres"] = method.compute_centres(
                        _batches(method, inputs, labels), keep=keep, noise_removal=noise_removal
                    )
                info["centres"]["seconds"] = round(time.perf_counter() - t0, 1)
            continue
        if its <= 0:
            continue
        stage = replace(cfg, phase=phase, iterations=its, out=str(Path(cfg.out) / phase) if cfg.out else None)
        res = train(method, data, stage)
        info["stages"][phase] = {
            "iterations": its,
            "seconds": round(res.seconds, 1),
            "device": res.device,
            "last": res.history[-1] if res.history else {},
        }
    info["train_seconds"] = round(sum(s["seconds"] for s in info["stages"].values()), 1)
    return info


@torch.no_grad()
def recognition_accuracy(method: SketchMate, coll: Collection, split: Split) -> dict[str, Any]:
    """Top-1 accuracy of the fused network's classifier on the held-out seen-class drawings."""
    index = {c: i for i, c in enumerate(split.seen_classes)}
    items = [coll[i] for i in split.query + split.gallery]
    method.eval()
    right = 0
    for b in _batches(method, [item_input(it) for it in items], [index[str(it.label)] for it in items]):
        right += int((method.logits(b).argmax(1) == b["label"]).sum())
    return {"recognition_acc": right / max(len(items), 1)}


RECIPES.register("sketchmate")(
    lambda: Recipe(
        method="sketchmate",
        fit=fit,
        iterations=300,
        batch_size=64,
        lr=1e-3,  # CPU-sized: the shipped model's
        split="class_holdout",
        split_defaults={"unseen": 0.0, "query_frac": 0.1, "gallery_frac": 0.3},
        method_defaults=lambda coll, split: {"n_classes": len(split.seen_classes) if split else len(coll.classes)},
        extra_metrics=recognition_accuracy,
    )
)
