"""Metric-learning losses built on pytorch-metric-learning (PML), each with a ``distance=`` option.

:func:`make_metric_loss` builds a PML loss (contrastive or triplet) measuring with any registered distance
(``euclidean`` | ``cosine`` | ``snr``, see :mod:`sketchsearch.losses.distances`) plus the DSML zero-mean
regulariser; :func:`make_miner` builds a PML miner measuring with the same distance; :class:`MinedLoss`
runs the two together (``loss(emb, labels, miner(emb, labels))``). Hashing losses use the same pieces on
relaxed codes.

Default margins (PML 2.9 source, checked): ``ContrastiveLoss(pos_margin=0, neg_margin=1)`` and
``SignalToNoiseRatioContrastiveLoss`` inherits exactly those (it only swaps the default distance for
``SNRDistance``). So positive pairs are pulled to distance 0 and negative pairs pushed past 1: for the SNR
distance "1" means noise as strong as the signal (two unrelated zero-mean embeddings of equal variance sit
at about 2). For a *similarity* (``cosine``) the margins are read the other way round and PML's documented
values are ``pos_margin=1, neg_margin=0`` (pull positives to cos 1, push negatives below cos 0); those are
the defaults here. ``TripletMarginLoss(margin=0.05)`` is PML's default for every distance.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from pytorch_metric_learning import losses as pml_losses
from pytorch_metric_learning import miners as pml_miners
from pytorch_metric_learning.distances import BaseDistance, SNRDistance
from pytorch_metric_learning.losses import BaseMetricLossFunction
from pytorch_metric_learning.miners import BaseMiner
from pytorch_metric_learning.regularizers import BaseRegularizer, ZeroMeanRegularizer
from pytorch_metric_learning.utils import common_functions as c_f
from torch import Tensor, nn

from .distances import distance_name, get_distance

__all__ = [
    "DEFAULT_MARGINS",
    "DEFAULT_REGULARIZER_WEIGHT",
    "MinedLoss",
    "NormalizedZeroMeanRegularizer",
    "fine_grained_triplet_loss",
    "fine_grained_triplets",
    "list_miners",
    "make_metric_loss",
    "make_miner",
    "make_regularizer",
]

#: contrastive (pos_margin, neg_margin) per distance: PML's ContrastiveLoss defaults for distances, PML's
#: documented values for similarities (cosine)
DEFAULT_MARGINS: dict[str, tuple[float, float]] = {
    "euclidean": (0.0, 1.0),
    "snr": (0.0, 1.0),
    "cosine": (1.0, 0.0),
}
#: weight of the zero-mean regulariser. The DSML abstract gives no value; 0.1 is our choice (small next to a
#: contrastive loss of order 0.1-1, large enough to keep |mean| / rms of the embeddings near 0 in our runs)
DEFAULT_REGULARIZER_WEIGHT = 0.1


class NormalizedZeroMeanRegularizer(BaseRegularizer):
    """DSML's zero-mean regulariser ``|sum_m h_m|`` measured on L2-normalised embeddings.

    PML's :class:`ZeroMeanRegularizer` applies ``|sum_m h_m|`` to the raw embeddings. Every loss here is blind
    to the embeddings' scale (PML normalises them, and the SNR distance is scale-invariant), so a network
    can satisfy the raw regulariser by shrinking its embeddings without centring them. Hand-written (ten
    lines, PML has no scale-free variant): normalise first, so the only way down is a zero mean. Input
    float (N, D); per-element losses (N,), reduced by PML's reducer (mean by default).
    """

    def compute_loss(self, embeddings: Tensor) -> dict[str, Any]:
        x = torch.nn.functional.normalize(embeddings, p=2, dim=1)
        return {
            "loss": {
                "losses": torch.abs(torch.sum(x, dim=1)),
                "indices": c_f.torch_arange_from_size(x),
                "reduction_type": "element",
            }
        }


def make_regularizer(kind: Literal["normalized", "raw"] = "normalized") -> BaseRegularizer:
    """The zero-mean regulariser: "normalized" (scale-free, default) or "raw" (PML's ZeroMeanRegularizer)."""
    if kind == "normalized":
        return NormalizedZeroMeanRegularizer()
    if kind == "raw":
        return ZeroMeanRegularizer()
    raise ValueError(f"regularizer kind must be 'normalized' or 'raw', got {kind!r}")


def make_metric_loss(
    kind: Literal["contrastive", "triplet"] = "contrastive",
    distance: str | BaseDistance = "snr",
    *,
    normalize: bool | None = None,
    pos_margin: float | None = None,
    neg_margin: float | None = None,
    margin: float | None = None,
    regularizer_weight: float = DEFAULT_REGULARIZER_WEIGHT,
    regularizer: Literal["normalized", "raw"] = "normalized",
) -> BaseMetricLossFunction:
    """A PML loss measuring with ``distance``, with the zero-mean regulariser as ``embedding_regularizer``.

    ``kind="contrastive"``: ``SignalToNoiseRatioContrastiveLoss`` for ``snr``, ``ContrastiveLoss`` otherwise;
    ``pos_margin``/``neg_margin`` None -> :data:`DEFAULT_MARGINS`. ``kind="triplet"``: ``TripletMarginLoss``
    (``margin`` None -> PML's 0.05). ``normalize``: L2-normalise before measuring (None: PML's default, True).
    ``regularizer_weight`` 0 disables the regulariser. Call the result as ``loss(emb (B,D), labels (B,),
    indices_tuple=None)`` -> scalar Tensor.
    """
    dist = get_distance(distance, normalize=normalize)
    name = distance_name(dist)
    if regularizer_weight < 0:
        raise ValueError(f"regularizer_weight must be >= 0, got {regularizer_weight}")
    reg: dict[str, Any] = {}
    if regularizer_weight > 0:
        reg = {
            "embedding_regularizer": make_regularizer(regularizer),
            "embedding_reg_weight": float(regularizer_weight),
        }
    if kind == "contrastive":
        pm, nm = DEFAULT_MARGINS[name]
        pm = pm if pos_margin is None else float(pos_margin)
        nm = nm if neg_margin is None else float(neg_margin)
        cls = (
            pml_losses.SignalToNoiseRatioContrastiveLoss
            if isinstance(dist, SNRDistance)
            else pml_losses.ContrastiveLoss
        )
        return cls(pos_margin=pm, neg_margin=nm, distance=dist, **reg)
    if kind == "triplet":
        kw = {} if margin is None else {"margin": float(margin)}
        return pml_losses.TripletMarginLoss(distance=dist, **kw, **reg)
    raise ValueError(f"loss kind must be 'contrastive' or 'triplet', got {kind!r}")


_MINERS: dict[str, type[BaseMiner] | None] = {
    "multi_similarity": pml_miners.MultiSimilarityMiner,  # PML default epsilon=0.1
    "pair_margin": pml_miners.PairMarginMiner,  # PML defaults pos_margin=0.2, neg_margin=0.8
    "triplet_margin": pml_miners.TripletMarginMiner,  # PML defaults margin=0.2, type_of_triplets="all"
    "batch_hard": pml_miners.BatchHardMiner,
    "none": None,
}


def list_miners() -> list[str]:
    return sorted(_MINERS)


def make_miner(
    name: str = "multi_similarity",
    distance: str | BaseDistance = "snr",
    *,
    normalize: bool | None = None,
    **kwargs: Any,
) -> BaseMiner | None:
    """A PML miner measuring with the same distance as the loss ("none" -> None: every pair in the batch).

    ``kwargs`` go to the PML miner (e.g. ``epsilon=`` for multi_similarity). Unknown name -> ValueError.
    """
    if name not in _MINERS:
        raise ValueError(f"unknown miner {name!r}; valid names: {', '.join(list_miners())}")
    cls = _MINERS[name]
    if cls is None:
        return None
    return cls(distance=get_distance(distance, normalize=normalize), **kwargs)


class MinedLoss(nn.Module):
    """A PML loss and an optional miner run together: ``forward(emb (B,D), labels (B,)) -> scalar``.

    Mining runs without gradients (PML's ``BaseMiner.forward`` does that); with no miner every pair/triplet
    of the batch counts.
    """

    def __init__(self, loss: BaseMetricLossFunction, miner: BaseMiner | None = None) -> None:
        super().__init__()
        self.loss = loss
        self.miner = miner

    @property
    def distance(self) -> BaseDistance:
        return self.loss.distance

    def forward(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        indices = self.miner(embeddings, labels) if self.miner is not None else None
        return self.loss(embeddings, labels, indices)


def fine_grained_triplets(instance: Tensor, own: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """(anchor rows, negative rows) of every (own sketch i, its photo i, another instance's photo j) triplet of
    a pair batch (``instance`` (B,) the photo's instance; ``own`` (B,) bool, the sketch was drawn from that
    photo; None: all); the positive of anchor i is photo i."""
    own = own.bool() if own is not None else torch.ones_like(instance, dtype=torch.bool)
    return torch.nonzero(own[:, None] & (instance[:, None] != instance[None, :]), as_tuple=True)


def fine_grained_triplet_loss(
    loss: BaseMetricLossFunction, h_sketch: Tensor, h_photo: Tensor, instance: Tensor, own: Tensor | None = None
) -> Tensor:
    """``loss`` (PML, indices given) over :func:`fine_grained_triplets` of a batch of (sketch, photo) pair
    embeddings (B, D) each; 0 (with a graph) when the batch holds no triplet."""
    a, neg = fine_grained_triplets(instance, own)
    if len(a) == 0:
        return h_sketch.sum() * 0.0
    n = len(h_sketch)
    return loss(torch.cat([h_sketch, h_photo]), torch.cat([instance, instance]), (a, a + n, neg + n))
