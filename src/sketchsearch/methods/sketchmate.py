"""SketchMate: deep hashing of human sketches with stroke order.

Xu, Huang, Yang, Song, Hospedales, "SketchMate: Deep Hashing for Million-Scale Human Sketch Retrieval",
CVPR 2018, https://arxiv.org/abs/1804.01401

Network: a Sketch-a-Net style CNN on the rendered sketch and a bidirectional GRU on the 4-d stroke points
``(dx, dy, pen_down, pen_up)``; their features are concatenated and a fully connected layer with a sigmoid
gives the relaxed code ``f`` in (0, 1)^K; the code is ``b = 1[f > 0.5]`` (the paper's ``sign(f - 0.5)``).

Objective (stage ``full``)::

    L = CE(W f, y) + quant_weight * ||f - b||^2 + centre_weight * 1/2 ||f - c_y||^2

Training procedure (one call of ``sketchsearch.train.train`` per stage, ``TrainConfig(phase=...)``):

1. ``pretrain_cnn`` / ``pretrain_rnn``: each branch alone with its own softmax classifier (cross-entropy);
2. ``pretrain_fused``: the fused network + hash layer with cross-entropy only. The paper computes the
   centres "based on the pretrained model" without saying how the (new) hash layer is pretrained; without
   this stage the centres would be the means of a random projection. Our reading, said here;
3. :meth:`SketchMate.compute_centres`: per class, the entropy of the pretrained classifier's prediction for
   each training sketch; keep the middle 90% (:func:`entropy_filter`); centres = mean ``f`` of those kept;
4. ``full``: the full objective above.

Loss weights: the paper's values are not in our source texts (the equations' images are missing), so they
are chosen by scale (see the constructor's comments). Every choice is a constructor kwarg saved in the card.
"""

from __future__ import annotations

import random
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..data.sketch import Sketch
from ..encoders.heads import HashHead
from ..encoders.sketch_cnn import SketchANet
from ..encoders.stroke_rnn import StrokeRNN
from ..errors import FormatError, ModelError
from ..losses.hashing import class_centres, quantization_loss, sketch_centre_loss
from .base import METHODS, RECIPES, Batch, Method, Preprocessing

__all__ = [
    "PHASES",
    "QuickDrawSplit",
    "SketchMate",
    "batches_of",
    "entropy_filter",
    "load_quickdraw_sketches",
    "prediction_entropy",
    "recognition_accuracy",
    "retrieval_metrics",
    "sketchmate_recipe",
    "split_by_class",
    "train_sketchmate",
]

PHASES = ("pretrain_cnn", "pretrain_rnn", "pretrain_fused", "full")
Branches = Literal["both", "cnn", "rnn"]


def default_preprocessing(branches: str = "both") -> Preprocessing:
    """Raster 64 px (Sketch-a-Net used 225; 64 keeps training on 2 CPU cores within minutes) and at most
    64 stroke points after RDP (the GRU's cost grows with the length; the raw subset averages 184 points,
    QuickDraw's own RDP-simplified form ~50)."""
    inputs = {"both": ("raster", "points"), "cnn": ("raster",), "rnn": ("points",)}[branches]
    return Preprocessing(inputs=inputs, raster_size=64, line_width=1.5, max_points=64)


# ---------------------------------------------------------------------------------------------- noise removal
def prediction_entropy(probs: Tensor) -> Tensor:
    """Shannon entropy (nats) of each row of ``probs`` (N, C) float (rows sum to 1) -> (N,) float."""
    p = probs.clamp_min(0)
    return -(torch.where(p > 0, p * p.log(), torch.zeros_like(p))).sum(dim=1)


def entropy_filter(probs: Tensor, labels: Tensor, keep: float = 0.9) -> Tensor:
    """SketchMate's noise removal: per class, keep the middle ``keep`` fraction of the entropy distribution.

    probs: (N, C) float class probabilities of a pretrained classifier; labels: (N,) long (< 0 = unknown,
    never kept). For a class with n sketches, ``round(n * (1 - keep) / 2)`` of the lowest-entropy and as many
    of the highest-entropy sketches are dropped (ties broken by position, stably). Returns (N,) bool.
    """
    if not 0.0 < keep <= 1.0:
        raise ValueError(f"keep must be in (0, 1], got {keep}")
    if probs.ndim != 2 or labels.shape != probs.shape[:1]:
        raise ValueError(
            f"expected probs (N, C) and labels (N,), got {tuple(probs.shape)} and {tuple(labels.shape)}"
        )
    ent = prediction_entropy(probs.double()).cpu().numpy()
    lab = labels.cpu().numpy()
    mask = np.zeros(len(lab), dtype=bool)
    for c in np.unique(lab[lab >= 0]):
        idx = np.flatnonzero(lab == c)
        drop = int(round(len(idx) * (1.0 - keep) / 2.0))
        order = idx[np.argsort(ent[idx], kind="stable")]
        mask[order[drop : len(order) - drop]] = True
    return torch.from_numpy(mask).to(labels.device)


# ---------------------------------------------------------------------------------------------- the method
class SketchMate(Method):
    """CNN + RNN two-branch deep hashing network (see the module docstring).

    Batches: ``raster`` (B,1,H,W), ``points`` (B,T,4) + ``lengths`` (B,), ``label`` (B,) (per ``branches``).
    ``encode_sketch`` -> (B, nbits) float in (0, 1); bits are ``f > 0.5``.
    """

    name = "sketchmate"
    output = "binary"
    code_threshold = 0.5  # sigmoid codes

    def __init__(
        self,
        preprocessing: Preprocessing | None = None,
        nbits: int = 64,  # the paper: 16, 24, 32, 64 (and 128)
        n_classes: int = 345,  # QuickDraw's 345 classes (the paper trains on all of them)
        branches: Branches = "both",
        use_centre_loss: bool = True,
        quant_weight: float = 0.01,  # chosen: ||f-b||^2 summed over 64 bits starts near 64*0.06; 0.01 makes it
        # a fraction of CE (~log C) so codes saturate without stalling classification
        centre_weight: float = 0.1,  # chosen: 1/2||f-c||^2 starts at ~1-3 for 64 bits; 0.1 keeps it below CE
        centre_distance: str = "euclidean",  # the paper's squared L2; "cosine" / "snr" (see sketch_centre_loss)
        cnn_width: float = 0.5,  # Sketch-a-Net channels x0.5 (64-bit artifact ~4 MB)
        cnn_batch_norm: bool = True,  # not in Sketch-a-Net; much faster convergence from scratch (see sketch_cnn)
        rnn_hidden: int = 128,  # GRU units per direction
        rnn_layers: int = 1,  # chosen for 2 CPU cores: a 2nd layer triples the RNN's step time
        dropout: float = 0.5,  # Sketch-a-Net's fc dropout
    ) -> None:
        branches = branches.lower()  # type: ignore[assignment]
        if branches not in ("both", "cnn", "rnn"):
            raise ValueError(f"branches must be 'both', 'cnn' or 'rnn', got {branches!r}")
        pre = preprocessing or default_preprocessing(branches)
        need = {"both": {"raster", "points"}, "cnn": {"raster"}, "rnn": {"points"}}[branches]
        if not need <= set(pre.inputs):
            raise ValueError(
                f"branches={branches!r} needs preprocessing inputs {sorted(need)}, got {list(pre.inputs)}"
            )
        super().__init__(pre)
        if nbits <= 0 or n_classes <= 1:
            raise ValueError(f"need nbits > 0 and n_classes > 1, got nbits={nbits}, n_classes={n_classes}")
        self.save_hparams(
            nbits=nbits, n_classes=n_classes, branches=branches, use_centre_loss=use_centre_loss,
            quant_weight=quant_weight, centre_weight=centre_weight, centre_distance=centre_distance, cnn_width=cnn_width, cnn_batch_norm=cnn_batch_norm,
            rnn_hidden=rnn_hidden, rnn_layers=rnn_layers, dropout=dropout,
        )  # fmt: skip
        self.nbits, self.n_classes, self.branches = nbits, n_classes, branches
        self.use_centre_loss = use_centre_loss
        self.quant_weight, self.centre_weight = quant_weight, centre_weight
        if centre_distance not in ("euclidean", "cosine", "snr"):
            raise ValueError(
                f"centre_distance must be 'euclidean', 'cosine' or 'snr', got {centre_distance!r}"
            )
        self.centre_distance = centre_distance
        feat = 0
        self.cnn: SketchANet | None = None
        self.rnn: StrokeRNN | None = None
        if branches in ("both", "cnn"):
            self.cnn = SketchANet(
                raster_size=pre.raster_size, width=cnn_width, dropout=dropout, batch_norm=cnn_batch_norm
            )
            self.cnn_classifier = nn.Linear(self.cnn.out_dim, n_classes)  # pretraining only
            feat += self.cnn.out_dim
        if branches in ("both", "rnn"):
            self.rnn = StrokeRNN(hidden=rnn_hidden, layers=rnn_layers)
            self.rnn_classifier = nn.Linear(self.rnn.out_dim, n_classes)  # pretraining only
            feat += self.rnn.out_dim
        self.hash = HashHead(feat, nbits, activation="sigmoid")
        self.classifier = nn.Linear(nbits, n_classes)  # softmax over the fused feature f
        self.register_buffer("centres", torch.full((n_classes, nbits), 0.5))
        self.register_buffer("centres_ready", torch.zeros((), dtype=torch.bool))

    @property
    def code_size(self) -> int:
        return self.nbits

    # ------------------------------------------------------------------ forward pieces
    def features(self, batch: Batch) -> Tensor:
        """Concatenated branch features (B, D) float."""
        parts = []
        if self.cnn is not None:
            parts.append(self.cnn(batch["raster"]))
        if self.rnn is not None:
            parts.append(self.rnn(batch["points"], batch["lengths"]))
        return torch.cat(parts, dim=1)

    def encode_sketch(self, batch: Batch) -> Tensor:
        """(B, nbits) relaxed codes f in (0, 1)."""
        return self.hash(self.features(batch))

    def logits(self, batch: Batch) -> Tensor:
        """(B, n_classes) recognition logits of the fused network (the paper re-purposes it for recognition)."""
        return self.classifier(self.encode_sketch(batch))

    # ------------------------------------------------------------------ training
    def training_losses(self, batch: Batch, phase: str = "full") -> dict[str, Tensor]:
        phase = "full" if phase == "all" else phase
        y = batch["label"]
        if phase == "pretrain_cnn" or phase == "pretrain_rnn":
            branch = self.cnn if phase == "pretrain_cnn" else self.rnn
            if branch is None:
                raise ValueError(
                    f"phase {phase!r} needs that branch, but this model has branches={self.branches!r}"
                )
            feats = (
                self.cnn(batch["raster"])
                if phase == "pretrain_cnn"
                else self.rnn(batch["points"], batch["lengths"])
            )  # type: ignore[misc]
            head = self.cnn_classifier if phase == "pretrain_cnn" else self.rnn_classifier
            logits = head(feats)
            return {
                "ce_loss": F.cross_entropy(logits, y),
                "acc": (logits.argmax(1) == y).float().mean().detach(),
            }
        if phase not in ("pretrain_fused", "full"):
            raise ValueError(f"unknown phase {phase!r}; valid phases: {', '.join(PHASES)}")
        f = self.encode_sketch(batch)
        logits = self.classifier(f)
        out = {"ce_loss": F.cross_entropy(logits, y), "acc": (logits.argmax(1) == y).float().mean().detach()}
        q = quantization_loss(f, threshold=self.code_threshold)
        if phase == "pretrain_fused":
            out["quantization"] = q.detach()
            return out
        out["quantization_loss"] = self.quant_weight * q
        if self.use_centre_loss:
            if not bool(self.centres_ready):
                raise ModelError(
                    "phase 'full' with the centre loss needs class centres: call compute_centres() first"
                )
            out["centre_loss"] = self.centre_weight * sketch_centre_loss(
                f, y, self.centres, distance=self.centre_distance, threshold=self.code_threshold
            )
        return out

    # ------------------------------------------------------------------ centres (stage 3)
    @torch.no_grad()
    def compute_centres(
        self, batches: Iterable[Batch], keep: float = 0.9, noise_removal: bool = True
    ) -> dict[str, Any]:
        """Set the class centres from the current (pretrained) model: entropy noise removal, then per-class
        mean of ``f``. ``batches`` must carry labels. Returns counts for the training record."""
        was_training = self.training
        self.eval()
        device = self.centres.device
        fs, ps, ys = [], [], []
        for b in batches:
            b = {k: v.to(device) for k, v in b.items()}
            f = self.encode_sketch(b)
            fs.append(f)
            ps.append(F.softmax(self.classifier(f), dim=1))
            ys.append(b["label"])
        f, p, y = torch.cat(fs), torch.cat(ps), torch.cat(ys)
        mask = entropy_filter(p, y, keep) if noise_removal else (y >= 0)
        centres, counts = class_centres(f, y, self.n_classes, mask)
        self.centres.copy_(centres)
        self.centres_ready.fill_(True)
        self.train(was_training)
        return {"sketches": len(y), "kept": int(mask.sum()), "classes_with_centre": int((counts > 0).sum()),
                "noise_removal": noise_removal, "keep": keep}  # fmt: skip


@METHODS.register("sketchmate")
def _create(**kw: Any) -> SketchMate:
    return SketchMate(**kw)


# ---------------------------------------------------------------------------------------------- data + protocol
@dataclass
class QuickDrawSplit:
    """Class-disjoint seen/unseen split of a QuickDraw folder and per-class train/gallery/query splits.

    Seen classes: ``train`` / ``gallery`` / ``query`` lists of Sketch (label = class name). Unseen classes
    (zero-shot): ``unseen_gallery`` / ``unseen_query``; never trained on.
    """

    classes: list[str]
    unseen_classes: list[str]
    train: list[Sketch] = field(default_factory=list)
    gallery: list[Sketch] = field(default_factory=list)
    query: list[Sketch] = field(default_factory=list)
    unseen_gallery: list[Sketch] = field(default_factory=list)
    unseen_query: list[Sketch] = field(default_factory=list)
    skipped: int = 0

    def label_ids(self, sketches: Sequence[Sketch]) -> list[int]:
        index = {c: i for i, c in enumerate(self.classes)}
        return [index.get(str(s.label), -1) for s in sketches]

    def summary(self) -> dict[str, Any]:
        return {
            "seen_classes": len(self.classes), "unseen_classes": len(self.unseen_classes),
            "train": len(self.train), "gallery": len(self.gallery), "query": len(self.query),
            "unseen_gallery": len(self.unseen_gallery), "unseen_query": len(self.unseen_query),
            "skipped_records": self.skipped,
        }  # fmt: skip


def load_quickdraw_sketches(
    path: str | Path, limit_per_class: int | None = None
) -> tuple[dict[str, list[Sketch]], int]:
    """Every QuickDraw ndjson drawing (raw or simplified) in a file or folder, grouped by class, streaming.

    Returns ``(class -> sketches, number of bad records skipped)``.
    """
    from ..data.formats.quickdraw import read_quickdraw_ndjson

    by_class: dict[str, list[Sketch]] = defaultdict(list)
    bad: list[FormatError] = []
    for item in read_quickdraw_ndjson(path, on_error=bad.append):
        if item.sketch is None or item.label is None:
            continue
        group = by_class[item.label]
        if limit_per_class is None or len(group) < limit_per_class:
            group.append(item.sketch)
    if not by_class:
        raise FormatError(path, None, "no QuickDraw drawings found (expected .ndjson files)")
    return dict(by_class), len(bad)


def split_by_class(
    by_class: dict[str, list[Sketch]],
    unseen: float = 0.0,
    query_frac: float = 0.1,
    gallery_frac: float = 0.3,
    seed: int = 0,
) -> QuickDrawSplit:
    """Split classes into seen / unseen (``unseen``: a fraction of classes, or a count), then each seen class
    into query (``query_frac``, >= 1), gallery (``gallery_frac``, >= 1) and train (the rest, >= 1); unseen
    classes into query (``query_frac``, >= 1) and gallery (the rest). Deterministic for a seed."""
    rng = random.Random(seed)
    names = sorted(by_class)
    n_unseen = int(round(unseen * len(names))) if isinstance(unseen, float) and unseen < 1 else int(unseen)
    if not 0 <= n_unseen < len(names):
        raise ValueError(f"unseen={unseen} leaves no seen class among {len(names)}")
    shuffled = names[:]
    rng.shuffle(shuffled)
    unseen_set = set(shuffled[:n_unseen])
    split = QuickDrawSplit(
        classes=[c for c in names if c not in unseen_set], unseen_classes=sorted(unseen_set)
    )
    for c in names:
        items = by_class[c][:]
        rng.shuffle(items)
        nq = max(1, int(round(query_frac * len(items))))
        if c in unseen_set:
            split.unseen_query += items[:nq]
            split.unseen_gallery += items[nq:]
            continue
        ng = max(1, int(round(gallery_frac * len(items))))
        split.query += items[:nq]
        split.gallery += items[nq : nq + ng]
        split.train += items[nq + ng :]
    return split


def batches_of(
    method: Method, sketches: Sequence[Sketch], labels: Sequence[int], batch_size: int = 256
) -> Iterable[Batch]:
    """Batches (per the method's preprocessing) of labelled sketches, in order."""
    from ..data.batching import make_batch

    for i in range(0, len(sketches), batch_size):
        yield make_batch(sketches[i : i + batch_size], method.preprocessing, labels[i : i + batch_size])


@torch.no_grad()
def recognition_accuracy(method: SketchMate, sketches: Sequence[Sketch], labels: Sequence[int]) -> float:
    """Top-1 accuracy of the fused network's classifier (labels < 0 are ignored)."""
    method.eval()
    device = method.centres.device
    right = total = 0
    for b in batches_of(method, sketches, labels):
        y = b["label"].to(device)
        pred = method.logits({k: v.to(device) for k, v in b.items()}).argmax(1)
        right += int(((pred == y) & (y >= 0)).sum())
        total += int((y >= 0).sum())
    return right / max(total, 1)


def retrieval_metrics(
    method: Method,
    queries: Sequence[Any],
    query_labels: Sequence[object],
    gallery: Sequence[Any],
    gallery_labels: Sequence[object],
    ks: Sequence[int] = (10,),
) -> dict[str, Any]:
    """Class-level retrieval (same label = relevant) through the shared protocol
    (:func:`sketchsearch.eval.protocol.evaluate_retrieval`, i.e. the Retriever and eval.metrics).

    Returns ``{"mAP@all", "P@k" per k, "queries", "gallery", "encode_per_second", "protocol": <full result>}``.
    """
    from ..eval.protocol import evaluate_retrieval

    res = evaluate_retrieval(
        method, list(gallery), list(gallery_labels), list(queries), list(query_labels), ks=tuple(ks)
    )
    out: dict[str, Any] = {"mAP@all": res["mAP@all"], **{f"P@{k}": res[f"P@{k}"] for k in ks}}
    out.update({"queries": res["n_queries"], "gallery": res["n_gallery"], "encode_per_second": res["encode_per_s"],
                "protocol": res})  # fmt: skip
    return out


# ---------------------------------------------------------------------------------------------- recipe
def _stage_cfg(cfg: Any, phase: str, iterations: int, out: str | None) -> Any:
    return replace(
        cfg, phase=phase, iterations=iterations, out=(str(Path(out) / phase) if out else None), resume=False
    )


def train_sketchmate(
    method: SketchMate,
    train_set: Sequence[Sketch],
    train_labels: Sequence[int],
    cfg: Any,
    *,
    pretrain_iterations: int | None = None,
    fused_iterations: int | None = None,
    noise_removal: bool = True,
    keep: float = 0.9,  # the paper: keep the middle 90% of each class's entropy distribution
    skip_branch_pretraining: bool = False,
) -> dict[str, Any]:
    """The four stages, each one call of the one training loop. ``cfg.iterations`` = the ``full`` stage's;
    branch pretraining defaults to the same, the fused pretraining to a third of it. Returns timings."""
    from ..data.batching import SketchDataset
    from ..train import train

    data = SketchDataset(list(train_set), list(train_labels), method.preprocessing)
    pre_it = cfg.iterations if pretrain_iterations is None else pretrain_iterations
    fused_it = max(1, cfg.iterations // 3) if fused_iterations is None else fused_iterations
    info: dict[str, Any] = {"stages": {}}
    stages: list[tuple[str, int]] = []
    if not skip_branch_pretraining:
        stages += [
            (p, pre_it)
            for p, on in (("pretrain_cnn", method.cnn), ("pretrain_rnn", method.rnn))
            if on is not None
        ]
    stages.append(("pretrain_fused", fused_it))
    for phase, its in stages:
        if its > 0:
            res = train(method, data, _stage_cfg(cfg, phase, its, cfg.out))
            info["stages"][phase] = {"iterations": its, "seconds": round(res.seconds, 1), "device": res.device,
                                     "last": res.history[-1] if res.history else {}}  # fmt: skip
    if method.use_centre_loss:
        t0 = time.perf_counter()
        info["centres"] = method.compute_centres(
            batches_of(method, data.items, data.labels), keep=keep, noise_removal=noise_removal
        )
        info["centres"]["seconds"] = round(time.perf_counter() - t0, 1)
    res = train(method, data, _stage_cfg(cfg, "full", cfg.iterations, cfg.out))
    info["stages"]["full"] = {"iterations": cfg.iterations, "seconds": round(res.seconds, 1), "device": res.device,
                              "last": res.history[-1] if res.history else {}}  # fmt: skip
    info["train_seconds"] = round(sum(s["seconds"] for s in info["stages"].values()), 1)
    return info


#: full-stage iterations, batch size and learning rate of the recipe when the command line does not set them
RECIPE_DEFAULTS: dict[str, Any] = {"iterations": 300, "batch_size": 64, "lr": 1e-3}


@RECIPES.register("sketchmate")
def sketchmate_recipe(
    data: str,
    cfg: Any,
    *,
    unseen: float = 0.0,  # fraction (or count) of classes held out for zero-shot evaluation
    split_seed: int = 0,
    query_frac: float = 0.1,
    gallery_frac: float = 0.3,
    pretrain_iterations: int | None = None,
    fused_iterations: int | None = None,
    noise_removal: bool = True,
    keep: float = 0.9,
    p_at: int = 10,
    **method_kwargs: Any,
) -> tuple[SketchMate, dict[str, Any], dict[str, Any]]:
    """QuickDraw ndjson folder -> trained SketchMate, its training record and held-out metrics."""
    explicit = set(getattr(cfg, "extra", {}).get("explicit", ["iterations", "batch_size", "lr"]))
    # CPU-sized defaults (those of the shipped 64-bit model) unless the command line set them
    cfg = replace(cfg, **{k: v for k, v in RECIPE_DEFAULTS.items() if k not in explicit})
    if pretrain_iterations is None and "iterations" not in explicit:
        pretrain_iterations, fused_iterations = 300, 100 if fused_iterations is None else fused_iterations
    by_class, skipped = load_quickdraw_sketches(data)
    split = split_by_class(
        by_class, unseen=unseen, query_frac=query_frac, gallery_frac=gallery_frac, seed=split_seed
    )
    split.skipped = skipped
    method_kwargs.setdefault("n_classes", len(split.classes))
    method = SketchMate(**{k: v for k, v in method_kwargs.items() if v is not None})
    info = train_sketchmate(
        method, split.train, split.label_ids(split.train), cfg,
        pretrain_iterations=pretrain_iterations, fused_iterations=fused_iterations, noise_removal=noise_removal, keep=keep,
    )  # fmt: skip
    method.cpu().eval()
    info.update({"data": str(data), "split": split.summary(), "split_seed": split_seed, "classes": split.classes,
                 "unseen_classes": split.unseen_classes, "query_frac": query_frac, "gallery_frac": gallery_frac})  # fmt: skip
    metrics: dict[str, Any] = {}
    held = split.query + split.gallery
    metrics["recognition_acc"] = recognition_accuracy(method, held, split.label_ids(held))
    ks = (p_at,)
    metrics["seen"] = retrieval_metrics(
        method,
        split.query,
        [s.label for s in split.query],
        split.gallery,
        [s.label for s in split.gallery],
        ks,
    )
    if split.unseen_classes:
        metrics["zero_shot"] = retrieval_metrics(
            method, split.unseen_query, [s.label for s in split.unseen_query],
            split.unseen_gallery, [s.label for s in split.unseen_gallery], ks,
        )  # fmt: skip
    metrics["mAP@all"] = metrics["seen"]["mAP@all"]
    return method, info, metrics
