"""A universal sketch encoder: an ImageNet backbone taught drawings by contrast between two views of each.

Issue "A sketch encoder worth defaulting to", item 2. Not a paper's method: the pieces are

* **backbone**: ImageNet EfficientNet-Lite0 (``backbone="lite2"``: Lite2) with its stem and first
  ``frozen_blocks`` blocks frozen and the rest trained (``encoders/photo_cnn.py``'s :class:`TopTunedLite`,
  whose frozen trunk is loaded from the installed package and left out of the artifact), a linear layer to
  ``feature_dim`` features ``h`` and a ReLU. Drawings are shown as white ink on black with ImageNet's
  mean / std (``ink="light"``: what measured better for the frozen features, ``methods/pretrained.py``);
* **projection head** (SimCLR, Chen et al., ICML 2020): ``h`` -> Linear, ReLU, Linear -> ``projection_dim``,
  used by the contrastive loss only (``projection_weight = 0`` leaves it out);
* **hash head**: ``h`` -> Linear -> tanh: the relaxed ``nbits``-bit code ``u`` in (-1, 1)^nbits; bit = u > 0.

Loss (``training_losses``), on a batch of two augmented views of each drawing (``raster``, ``raster2``)::

    L = projection_weight * SupCon(proj(h1), proj(h2)) + code_weight * SupCon(c1, c2)
        + quant_weight * 1/2 (||u1 - sign(u1)||^2 + ||u2 - sign(u2)||^2)
        + distill_weight * KL(P_teacher || P_c)

SupCon is pytorch-metric-learning's ``SupConLoss`` (Khosla et al., NeurIPS 2020; cosine similarity,
``temperature``) over the 2B embeddings: a drawing's positives are its other view and, with
``supervised=True``, every view of a drawing of the same class (``label >= 0``). An unlabelled drawing
(``label = -1``) gets a label of its own, so its only positive is its other view: SupCon is then exactly
NT-Xent (SimCLR's loss). The recipe (``recipes/universal.py``) gives labels only to the seen classes of its
split; unseen classes never train. ``c = u`` (``code_contrast="relaxed"``) or ``c = sign(u)`` with a
straight-through gradient (``"sign"``: Greedy Hash, Su et al., NeurIPS 2018), so that the code contrast ranks
by the Hamming distance itself. The quantization term is SketchMate's (``losses/hashing.py``: the squared
distance of the relaxed code to its binary corner, summed over bits; here on the tanh scale, corners +-1).
The distillation term (ours, off by default; :func:`relational_distillation`) asks the codes to rank the
batch's other drawings as a teacher does: row i of P is the softmax over j != i of cosine(i, j) / temperature,
the teacher being the backbone's pooled features centred on the batch (``distill_from="pooled"``; with several
``levels`` each level centred, then brought to one norm) or ``h`` detached (``"features"``). Its aim: the
codes lose 0.05-0.10 mAP to the float features on unseen classes, and the supervised contrast pulls them
towards the seen classes' structure.

Encoding: ``encode_sketch`` -> ``u`` (B, nbits), ``output="binary"`` (Hamming search of ``u > 0``), or with
``output="float"`` the ``feature_dim`` features ``h`` (cosine); the same weights serve both.

**Stroke order** (``stroke_branch=True``; the issue's "if it helps; measure it"): SketchMate's bidirectional
GRU (``encoders/stroke_rnn.py``) reads the drawing's 4-d stroke points (``points``, at most ``max_points`` after
RDP) and a fusion layer (Linear, ReLU; SketchMate's late fusion) maps ``[h; gru]`` back to ``feature_dim``: the
fused features are ``h`` for the heads and the float output. In training each view's points come from its own
stroke-level augmentation (the recipe). A drawing given only as an image is traced into strokes at encoding
(``data/batching.make_example``). Measured (README, "The universal encoder"; the shipped command with
``--set stroke_branch=true``): 64-bit mAP@all 0.233 on unseen QuickDraw classes (without: 0.251), 0.420 on
Omniglot (0.377), 0.238 on the validation classes (0.255): not the shipped setting. Weights chosen by scale
(comments at the constructor).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from pytorch_metric_learning.losses import SupConLoss
from torch import Tensor, nn

from ..encoders.heads import HashHead
from ..encoders.photo_cnn import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    TopTunedLite,
    normalize_levels,
    raster_to_rgb,
    signed_sqrt,
)
from ..encoders.stroke_rnn import StrokeRNN
from ..losses.hashing import quantization_loss
from .base import METHODS, Batch, Method, Preprocessing, check_bounds

__all__ = ["BACKBONES", "UniversalEncoder", "contrastive_labels", "default_preprocessing", "relational_distillation"]

BACKBONES = ("lite0", "lite2")
INKS = ("dark", "light")
DISTILL_FROM = ("pooled", "features")


def default_preprocessing(size: int = 96, stroke_branch: bool = False) -> Preprocessing:
    """Rasters at the backbone's input size, lines 1.5 px at 64 (2.25 px at 96, SketchMate's Lite0 branch); with
    the stroke branch also at most 64 stroke points (SketchMate's, ``methods/sketchmate.py``)."""
    inputs = ("raster", "points") if stroke_branch else ("raster",)
    points = {"max_points": 64} if stroke_branch else {}
    return Preprocessing(inputs=inputs, raster_size=size, line_width=1.5 * size / 64, **points)


def contrastive_labels(label: Tensor) -> Tensor:
    """(B,) long, -1 = unlabelled -> (2B,) labels of the two views' embeddings ``[view 1; view 2]``: a
    labelled drawing keeps its class, an unlabelled one gets a label no other drawing has."""
    y = label.long()
    fresh = y.max().clamp_min(-1) + 1 + torch.arange(len(y), device=y.device)
    lab = torch.where(y >= 0, y, fresh)
    return torch.cat([lab, lab])


class UniversalEncoder(Method):
    """Two-view contrastive hashing on a partly trained ImageNet backbone (see the module docstring).

    Training batches: ``raster`` and ``raster2`` (B, 1, S, S) ink = 1, two views of the same drawings, and
    ``label`` (B,) long (-1: unlabelled). ``encode_sketch``: ``raster`` -> (B, nbits) relaxed codes in (-1, 1).
    """

    name = "universal"
    output = "binary"
    code_threshold = 0.0  # tanh codes

    def __init__(
        self,
        preprocessing: Preprocessing | None = None,
        *,
        nbits: int = 64,  # the issue: 64- and 128-bit codes
        backbone: str = "lite0",  # or "lite2" (larger, ~2x slower)
        frozen_blocks: int = 11,  # Lite0: stem + 11 of 16 blocks frozen, stages 6-7 + head trained (Lite2: of 21);
        # 17 (Lite2: 22) freezes the head too: only the layers after pooling train, on cached features (CPU)
        input_size: int = 96,  # ours: a CPU budget (Lite0 at 96 px: 56-67 drawings/s on one thread, rendering included)
        feature_dim: int = 512,  # h (Sketch-a-Net's fc7 width, SketchMate's CNN branch)
        projection_dim: int = 128,  # SimCLR's projection output
        temperature: float = 0.1,  # SupCon's (Khosla et al.); PML's default 0.1
        projection_weight: float = 1.0,  # the SimCLR head's loss; 0: contrast on the codes only
        code_weight: float = 1.0,  # contrast on the relaxed codes themselves (what is searched)
        code_contrast: str = "relaxed",  # "relaxed": SupCon on u; "sign": on sign(u) with a straight-through
        # gradient (Greedy Hash, Su et al., NeurIPS 2018): the cosine of two +-1 codes is 1 - 2 hamming / nbits,
        # so the contrast then ranks by the Hamming distance that is searched
        quant_weight: float = 0.01,  # chosen by scale: ||u - sign(u)||^2 summed over 64 bits starts near 30 for
        # tanh codes; 0.01 keeps it under a tenth of SupCon (~log 2B = 4.8 at batch 64) so the codes saturate
        # without stalling the contrast (SketchMate's 0.01, on its sigmoid scale)
        top_lr_mult: float = 0.1,  # the pretrained top blocks learn 10x slower than the new heads
        top_bn: str = "train",  # the trained top blocks' batch-norm statistics: re-estimated ("train") or kept at
        # ImageNet's ("frozen"; scale and shift still train), photo_cnn.TopTunedLite
        supervised: bool = True,  # labelled drawings of one class are positives of each other (False: views only)
        ink: str = "light",  # white ink on black (see the module docstring)
        pretrained: bool = True,  # ImageNet weights from the backbone's package (False: random, for tests)
        output: str = "binary",  # "binary": the nbits codes (Hamming); "float": the feature_dim features h (cosine),
        # the same weights (a float view of a trained binary model: load its weights into this variant)
        feature_power: bool = False,  # ours: signed square roots of the pooled backbone features before the
        # feature layer (power normalisation; it lifts the frozen features on every set, methods/pretrained.py)
        levels: str = "head",  # ours: the backbone levels pooled for the feature layer and the distillation
        # teacher, e.g. "stage5+stage6+head" (photo_cnn.parse_levels; each level brought to one norm after
        # feature_power; a frozen backbone only): at 128 px the stride-16 stages keep shape detail the 4 x 4 head
        # map loses (chosen on validation classes, README "Several levels in the encoder")
        stroke_branch: bool = False,  # SketchMate's GRU on the stroke points, fused with h (module docstring)
        rnn_hidden: int = 128,  # GRU units per direction, one layer (SketchMate's CPU setting here)
        distill_weight: float = 0.0,  # ours: relational distillation into the codes (module docstring); 0: off
        distill_from: str = "pooled",  # its teacher: "pooled", the backbone's pooled features, batch-centred;
        # "features": h itself, detached (the float view, which scores above the codes on unseen classes)
    ) -> None:
        if output not in ("binary", "float"):
            raise ValueError(f"universal: output must be 'binary' or 'float', got {output!r}")
        if backbone not in BACKBONES:
            raise ValueError(f"universal: backbone must be one of {', '.join(BACKBONES)}, got {backbone!r}")
        if ink not in INKS:
            raise ValueError(f"universal: ink must be one of {', '.join(INKS)}, got {ink!r}")
        check_bounds(
            positive={
                "nbits": nbits,
                "feature_dim": feature_dim,
                "projection_dim": projection_dim,
                "rnn_hidden": rnn_hidden,
            },
            non_negative={
                "projection_weight": projection_weight,
                "code_weight": code_weight,
                "distill_weight": distill_weight,
            },
            who="universal: ",
        )
        if nbits % 8:
            raise ValueError(f"universal: nbits must be a multiple of 8 (packed bytes), got {nbits}")
        if temperature <= 0:
            raise ValueError(f"universal: temperature must be > 0, got {temperature}")
        if code_contrast not in ("relaxed", "sign"):
            raise ValueError(f"universal: code_contrast must be 'relaxed' or 'sign', got {code_contrast!r}")
        if distill_from not in DISTILL_FROM:
            raise ValueError(f"universal: distill_from must be one of {', '.join(DISTILL_FROM)}, got {distill_from!r}")
        if projection_weight == 0 and code_weight == 0:
            raise ValueError("universal: projection_weight and code_weight are both 0: nothing to contrast")
        pre = preprocessing or default_preprocessing(input_size, stroke_branch)
        if "raster" not in pre.inputs:
            raise ValueError(f"universal reads rasters; preprocessing.inputs must include 'raster', got {pre.inputs}")
        if stroke_branch and "points" not in pre.inputs:
            raise ValueError(f"universal: stroke_branch reads points; preprocessing.inputs has {pre.inputs}")
        super().__init__(pre)
        self.nbits, self.input_size, self.ink = int(nbits), int(input_size), ink
        self.output = output  # type: ignore[misc]  # per instance: the float variant shares the weights
        self.feature_dim = int(feature_dim)
        self.projection_weight, self.code_weight = float(projection_weight), float(code_weight)
        self.code_contrast = code_contrast
        self.feature_power = bool(feature_power)
        self.quant_weight, self.top_lr_mult, self.supervised = float(quant_weight), float(top_lr_mult), supervised
        self.distill_weight, self.distill_from = float(distill_weight), distill_from
        self.net = TopTunedLite(
            feature_dim,
            backbone=backbone,
            frozen_blocks=frozen_blocks,
            pretrained=pretrained,
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
            top_bn=top_bn,
            levels=levels,
        )
        # channels-last convolutions: ~1.3x faster on one CPU thread (measured: 17 -> 13 ms a drawing at 96 px)
        self.net.to(memory_format=torch.channels_last)
        self.rnn = StrokeRNN(hidden=int(rnn_hidden), layers=1) if stroke_branch else None
        self.fusion = (
            nn.Sequential(nn.Linear(feature_dim + self.rnn.out_dim, feature_dim), nn.ReLU(inplace=True))
            if self.rnn is not None
            else None
        )
        # no projection head at all without its loss (it would be saved untrained)
        self.projection = (
            nn.Sequential(
                nn.Linear(feature_dim, feature_dim), nn.ReLU(inplace=True), nn.Linear(feature_dim, projection_dim)
            )
            if projection_weight > 0
            else None
        )
        self.hash = HashHead(feature_dim, nbits, activation="tanh")
        self.contrast = SupConLoss(temperature=float(temperature))

    @property
    def code_size(self) -> int:
        return self.nbits if self.output == "binary" else self.feature_dim

    def external_weights(self) -> dict[str, dict[str, Any]]:
        """The frozen trunk comes from the backbone's package, not from the artifact."""
        return self.net.external("net.")

    def configure_optimizers(self, lr: float) -> dict[str, torch.optim.Optimizer]:
        top = [p for p in self.net.top.parameters() if p.requires_grad]
        ids = {id(p) for p in top}
        heads = [p for p in self.parameters() if p.requires_grad and id(p) not in ids]
        groups = [{"params": heads, "lr": lr}, {"params": top, "lr": lr * self.top_lr_mult}]
        return {"all": torch.optim.Adam([g for g in groups if g["params"]], lr=lr)}

    # ------------------------------------------------------------------ forward pieces
    def backbone_input(self, raster: Tensor) -> Tensor:
        """Rasters (B, 1, H, W) ink = 1 -> RGB (B, 3, input_size, input_size) as the backbone sees them."""
        x = raster_to_rgb(raster, self.input_size)  # dark ink on white
        x = 1.0 - x if self.ink == "light" else x
        return x.contiguous(memory_format=torch.channels_last)

    @property
    def cache_key(self) -> str:
        """What the recipe's cache of a view holds (``cache_views``), the batch key its features are read from:
        ``"pooled"``, the (B, 1280) pooled features (with several ``levels``: every level's, concatenated), when
        the whole backbone is frozen (``frozen_blocks`` = its blocks + 1); else ``"trunk"``, the frozen trunk's
        output maps (B, C, h, w) (Lite0 at 128 px with 15 blocks frozen: 192 x 4 x 4), which the trained top
        blocks read in every step."""
        return "pooled" if self.net.frozen else "trunk"

    def cache_input(self, raster: Tensor) -> Tensor:
        """(B, 1, S, S) rasters -> what training never changes (:attr:`cache_key`), computed once per view."""
        x = self.backbone_input(raster)
        return self.net.pooled(x) if self.net.frozen else self.net.trunk_maps(x)

    def pooled(self, raster: Tensor) -> Tensor:
        """(B, 1, S, S) rasters -> (B, 1280) pooled backbone features (with several ``levels``: concatenated)."""
        return self.net.pooled(self.backbone_input(raster))

    def features(self, batch: Batch) -> Tensor:
        """(B, feature_dim) features ``h`` (>= 0, after the ReLU) of ``batch["raster"]``, or of a cache's
        (:attr:`cache_key`): pooled backbone features ``batch["pooled"]`` (B, 1280) of a frozen backbone, or the
        frozen trunk's maps ``batch["trunk"]``; with the stroke branch, fused with the GRU's features of
        ``batch["points"]`` / ``batch["lengths"]``."""
        return self._features_and_pooled(batch)[0]

    def _features_and_pooled(self, batch: Batch) -> tuple[Tensor, Tensor]:
        """:meth:`features` and the pooled backbone features they were made from (signed square roots with
        ``feature_power``; with several ``levels`` the feature layer reads each level brought to one norm,
        photo_cnn.normalize_levels)."""
        if "pooled" in batch:
            if not self.net.frozen:
                raise ValueError(
                    "universal: cached 'pooled' features need a frozen backbone (frozen_blocks = blocks + 1); "
                    "a partly trained one reads the trunk's maps, 'trunk'"
                )
            p = batch["pooled"].float()
        elif "trunk" in batch:
            p = self.net.pool_top(batch["trunk"].float().contiguous(memory_format=torch.channels_last))
        else:
            p = self.pooled(batch["raster"])
        p = signed_sqrt(p) if self.feature_power else p
        h = F.relu(self.net.head(normalize_levels(p, self.net.level_sizes)))
        if self.rnn is None or self.fusion is None:
            return h, p
        if "points" not in batch or "lengths" not in batch:
            raise ValueError("universal: the stroke branch needs 'points' and 'lengths' in the batch")
        g = self.rnn(batch["points"].to(h.device).float(), batch["lengths"])
        return self.fusion(torch.cat([h, g.to(h.dtype)], dim=1)), p

    def encode_sketch(self, batch: Batch) -> Tensor:
        """(B, nbits) relaxed codes in (-1, 1), the bits are ``u > 0``; ``output="float"``: the (B, feature_dim)
        features ``h``, searched by cosine."""
        h = self.features(batch)
        return self.hash(h) if self.output == "binary" else h

    # ------------------------------------------------------------------ training
    def _both_points(self, batch: Batch) -> Batch:
        """The stroke branch's input for the two views stacked as one batch (``points`` / ``lengths`` of view 1,
        ``points2`` / ``lengths2`` of view 2, zero-padded to one length); nothing without the branch."""
        if self.rnn is None:
            return {}
        need = ("points", "lengths", "points2", "lengths2")
        if any(k not in batch for k in need):
            raise ValueError(f"universal: the stroke branch trains on both views' points: the batch needs {need}")
        a, b = batch["points"], batch["points2"]
        t = max(a.shape[1], b.shape[1])
        a, b = F.pad(a, (0, 0, 0, t - a.shape[1])), F.pad(b, (0, 0, 0, t - b.shape[1]))
        return {"points": torch.cat([a, b]), "lengths": torch.cat([batch["lengths"], batch["lengths2"]])}

    def training_losses(self, batch: Batch, phase: str = "all") -> dict[str, Tensor]:
        key = next((k for k in ("pooled", "trunk") if k in batch), None)
        if key is not None:  # cached backbone features of the two views (recipe option cache_views)
            if key + "2" not in batch:
                raise ValueError(f"universal: cached features need both views, {key!r} and '{key}2'")
            n = len(batch[key])
            h, p = self._features_and_pooled(
                {key: torch.cat([batch[key], batch[key + "2"]]), **self._both_points(batch)}
            )
        elif "raster2" not in batch:
            raise ValueError("universal trains on two views of each drawing: the batch needs 'raster' and 'raster2'")
        else:
            n = len(batch["raster"])
            h, p = self._features_and_pooled(
                {"raster": torch.cat([batch["raster"], batch["raster2"]]), **self._both_points(batch)}
            )
        label = batch.get("label")
        if label is None or not self.supervised:
            label = torch.full((n,), -1, dtype=torch.long, device=h.device)
        lab = contrastive_labels(label.to(h.device))
        u = self.hash(h)
        z = self.projection(h) if self.projection is not None else None
        out: dict[str, Tensor] = {}
        # the losses in float32 even under the loop's bf16 autocast (CUDA): softmax over 2B similarities
        with torch.autocast(h.device.type, enabled=False):
            u = u.float()
            if z is not None:
                out["contrastive_loss"] = self.projection_weight * self.contrast(z.float(), lab)
            c = u + (torch.sign(u) - u).detach() if self.code_contrast == "sign" else u
            if self.code_weight > 0:
                out["code_contrastive_loss"] = self.code_weight * self.contrast(c, lab)
            if self.distill_weight > 0:
                teacher = _centred_levels(p, self.net.level_sizes) if self.distill_from == "pooled" else h
                out["distill_loss"] = self.distill_weight * relational_distillation(
                    c, teacher.detach().float(), self.contrast.temperature
                )
            q = quantization_loss(u, threshold=0.0, low=-1.0, high=1.0)  # the mean over both views
            out["quantization_loss"] = self.quant_weight * q
        with torch.no_grad():
            out["bits_saturated"] = (u.abs() > 0.9).float().mean()
            same = (u[:n] > 0) == (u[n:] > 0)
            out["view_bit_agreement"] = same.float().mean()  # the two views' codes, bit by bit
        return out


def _centred_levels(pooled: Tensor, sizes: list[int]) -> Tensor:
    """The distillation teacher from pooled features: centred on the batch; with several levels each level
    centred on the batch first, then brought to one norm (as ``pretrained`` does with its fitted means), then
    centred together. Centring a level before normalising it measured better for the teacher (validation 64-bit
    mAP@all set 0 / set 1 / Omniglot characters no table evaluates: 0.309 / 0.338 / 0.355 vs 0.294 / 0.337 /
    0.339 normalising the uncentred levels)."""
    t = normalize_levels(pooled - pooled.mean(0, keepdim=True), sizes)
    return t - t.mean(0, keepdim=True)


def relational_distillation(student: Tensor, teacher: Tensor, temperature: float) -> Tensor:
    """KL(P_teacher || P_student) averaged over rows, where row i of P is the softmax over j != i of the cosine
    similarities of item i to the others, divided by ``temperature`` (both sides): the student learns the
    teacher's neighbour ranking, not its similarity scale (the codes' cosines are 1 - 2 hamming / nbits, the
    features' are not). Written here: pytorch-metric-learning has no distillation loss; this is the relational
    form of CompRess (Abbasi Koohpayegani et al., NeurIPS 2020) / SEED (Fang et al., ICLR 2021) on one batch."""
    n = len(student)
    if n < 2:
        return student.sum() * 0.0
    eye = torch.eye(n, dtype=torch.bool, device=student.device)
    a, b = F.normalize(student, dim=1), F.normalize(teacher, dim=1)
    s, t = a @ a.T / temperature, b @ b.T / temperature
    log_ps = F.log_softmax(s.masked_fill(eye, float("-inf")), dim=1).masked_fill(eye, 0.0)
    log_pt = F.log_softmax(t.masked_fill(eye, float("-inf")), dim=1).masked_fill(eye, 0.0)
    return (log_pt.exp() * (log_pt - log_ps)).sum(1).mean()


@METHODS.register("universal")
def _create(**kw: Any) -> UniversalEncoder:
    return UniversalEncoder(**kw)
