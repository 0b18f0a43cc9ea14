"""DSML: deep metric learning and deep hashing with the signal-to-noise-ratio distance.

Yuan, Chen, Tan, Jin, Cai, Yu, Luo, "Signal-to-Noise Ratio: A Robust Distance Metric for Deep Metric
Learning", CVPR 2019. An encoder is trained with a contrastive loss that measures pairs by
``d_S(h_i, h_j) = var(h_j - h_i) / var(h_i)`` (PML's ``SignalToNoiseRatioContrastiveLoss``) on pairs chosen
by a miner, plus a regulariser that keeps each embedding's mean at zero (the SNR distance assumes it).
The hashing variant applies the same pairwise loss to relaxed codes ``tanh(W f)`` and adds a quantization
term ``mean((z - sign z)^2)``; the binary code is ``sign(z)``.

The distance is an option (``distance="euclidean" | "cosine" | "snr"``), so the paper's comparison is the
same network with only that argument changed (``benchmarks/dsml_compare.py``).

Retrieval: :meth:`DSML.encode_sketch` returns the L2-normalised embedding (the Method contract), which the
shared ``Retriever`` searches by cosine similarity. With ``normalize=True`` (default) the loss measured
the SNR distance on exactly these normalised embeddings; SNR ranking of them is available through
:func:`sketchsearch.losses.distances.knn` (and is close to cosine ranking when their means are near zero,
see that module). ``embed`` gives the raw embedding (what ``normalize=False`` trains).

Batches must hold several drawings of each class for a pairwise loss to see positives: the recipe
(:mod:`sketchsearch.recipes.dsml`) draws them with :class:`~sketchsearch.data.sampling.ClassBalancedSampler`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ..encoders import create_encoder
from ..losses.metric import DEFAULT_REGULARIZER_WEIGHT, MinedLoss, make_metric_loss, make_miner
from .base import METHODS, Batch, Method, Preprocessing, check_bounds

__all__ = [
    "DSML",
    "DSMLHash",
    "dsml",
    "quantization_loss",
]


def quantization_loss(z: Tensor) -> Tensor:
    """Mean squared gap between relaxed tanh codes ``z`` (B, nbits) and their signs (scalar), averaged over
    every element (sign(0) = 0). :func:`sketchsearch.losses.hashing.quantization_loss` is SketchMate's form
    (sigmoid codes, summed over bits); this one keeps DSML's published comparison reproducible."""
    return (z - torch.sign(z).detach()).pow(2).mean()


class DSML(Method):
    """SNR-distance metric learning on rasters (float embeddings); see the module docstring.

    ``encoder``: a registered encoder name (its ``out_dim`` features feed a linear head), built with
    ``raster_size`` from the preprocessing and ``width``; ``embedding_dim``: float embedding size;
    ``loss``: "contrastive" (DSML) or "triplet"; margins None -> the PML defaults
    (:data:`sketchsearch.losses.metric.DEFAULT_MARGINS`); ``miner``: a PML miner name or "none".
    """

    name = "dsml"
    output = "float"

    def __init__(
        self,
        preprocessing: Preprocessing | None = None,
        *,
        distance: str = "snr",  # DSML's SNR distance
        normalize: bool = True,  # PML's default: distances see L2-normalised embeddings
        hashing: bool = False,
        nbits: int = 64,
        embedding_dim: int = 128,
        loss: str = "contrastive",  # DSML: contrastive loss with the SNR distance
        pos_margin: float | None = None,  # None: PML default (0 for distances, 1 for cosine)
        neg_margin: float | None = None,  # None: PML default (1 for distances, 0 for cosine)
        margin: float | None = None,  # triplet only; None: PML default 0.05
        regularizer_weight: float = DEFAULT_REGULARIZER_WEIGHT,
        # zero-mean regulariser: "normalized" (ours, scale-free: losses/metric.py says why) or "raw" (PML's)
        regularizer: str = "normalized",
        quantization_weight: float = 0.1,  # hashing only; our choice (the abstract gives no value)
        miner: str = "multi_similarity",  # our choice among PML's miners
        encoder: str = "small_cnn",  # compact BatchNorm CNN (encoders/small_cnn.py); "sketch_a_net" also works
        width: float = 0.25,  # channel multiplier: a network that trains in minutes on a CPU
    ) -> None:
        super().__init__(preprocessing or Preprocessing(inputs=("raster",), raster_size=64))
        if "raster" not in self.preprocessing.inputs:
            raise ValueError(
                f"dsml reads rasters: preprocessing.inputs must include 'raster', got {self.preprocessing.inputs}"
            )
        if hashing != (type(self).output == "binary"):
            raise ValueError("build DSML through create_method('dsml', hashing=...) (or DSMLHash for hashing=True)")
        check_bounds(positive={"nbits": nbits, "embedding_dim": embedding_dim})
        self.hashing = hashing
        self.quantization_weight = float(quantization_weight)
        self.encoder = create_encoder(encoder, raster_size=self.preprocessing.raster_size, width=width)
        feat_dim = int(self.encoder.out_dim)
        self.head = nn.Linear(feat_dim, nbits if hashing else embedding_dim)
        self.criterion = MinedLoss(
            make_metric_loss(
                loss,  # type: ignore[arg-type]
                distance,
                normalize=normalize,
                pos_margin=pos_margin,
                neg_margin=neg_margin,
                margin=margin,
                regularizer_weight=regularizer_weight,
                regularizer=regularizer,  # type: ignore[arg-type]
            ),
            make_miner(miner, distance, normalize=normalize),
        )

    @property
    def code_size(self) -> int:
        return int(self.head.out_features)

    def embed(self, batch: Batch) -> Tensor:
        """Raw embeddings (B, embedding_dim) float, or relaxed codes tanh(.) (B, nbits) when hashing."""
        h = self.head(self.encoder(batch["raster"]))
        return torch.tanh(h) if self.hashing else h

    def training_losses(self, batch: Batch, phase: str = "all") -> dict[str, Tensor]:
        labels = batch["label"]
        if (labels < 0).any():
            raise ValueError("dsml trains on labelled drawings: batch['label'] has unknown (-1) labels")
        z = self.embed(batch)
        out = {"metric_loss": self.criterion(z, labels)}
        if self.hashing and self.quantization_weight > 0:
            out["quantization_loss"] = self.quantization_weight * quantization_loss(z)
        with torch.no_grad():  # logged only: |mean| / rms of the embeddings the distance sees
            zn = torch.nn.functional.normalize(z.float(), dim=1)
            out["mean_abs"] = zn.mean(dim=1).abs().mean() * (zn.shape[1] ** 0.5)
        return out

    def encode_sketch(self, batch: Batch) -> Tensor:
        z = self.embed(batch)
        return z if self.hashing else torch.nn.functional.normalize(z, dim=1)


class DSMLHash(DSML):
    """DSML's hashing variant: relaxed codes (B, nbits) in (-1, 1); bits = z > 0."""

    output = "binary"
    code_threshold = 0.0


@METHODS.register("dsml")
def dsml(preprocessing: Preprocessing | None = None, hashing: bool = False, **kwargs: Any) -> DSML:
    """``dsml`` (float embeddings) or, with ``hashing=True``, its hashing variant with ``nbits`` bits."""
    cls = DSMLHash if hashing else DSML
    return cls(preprocessing, hashing=hashing, **kwargs)
