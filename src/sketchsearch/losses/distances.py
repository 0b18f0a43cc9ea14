"""The distance option shared by every metric-learning and hashing loss: a name -> a PML distance object.

``euclidean`` (:class:`~pytorch_metric_learning.distances.LpDistance`, p=2), ``cosine``
(:class:`~pytorch_metric_learning.distances.CosineSimilarity`, a similarity: larger is closer) and ``snr``
(:class:`~pytorch_metric_learning.distances.SNRDistance`).

The SNR distance (DSML: Yuan et al., "Signal-to-Noise Ratio: A Robust Distance Metric for Deep Metric
Learning", CVPR 2019) treats the anchor ``h_i`` as the signal and ``h_j - h_i`` as the noise::

    d_S(h_i, h_j) = var(h_j - h_i) / var(h_i)        (var over the D elements of the embedding)

It is not symmetric, and it is invariant to a common scale of both embeddings (``d_S(a h_i, a h_j) =
d_S(h_i, h_j)``), unlike the Euclidean distance. It assumes zero-mean embeddings: PML's
:class:`~pytorch_metric_learning.regularizers.ZeroMeanRegularizer` (``|sum_m h_im|`` per embedding, the
DSML regulariser) is re-exported here and plugged into the losses as ``embedding_regularizer=`` by
:func:`sketchsearch.losses.metric.make_metric_loss`.

**Normalisation.** PML's distances L2-normalise the embeddings before measuring (``normalize_embeddings=True``
is PML's default for all three; CosineSimilarity cannot turn it off). :func:`get_distance` keeps that default
and lets ``normalize=False`` measure the raw embeddings (the only way the SNR distance's scale invariance
matters). For *zero-mean, unit-norm* embeddings ``d_S = 2 - 2 cos``, so on normalised, well-regularised
embeddings SNR ranking and cosine ranking coincide; they differ by the embeddings' means otherwise.

**Searching by SNR** (hand-written: neither PML nor faiss has it). For a fixed query ``q`` with centred
vectors ``c = h - mean(h)``, ``d_S(q, g) = (|c_g|^2 - 2 c_q . c_g) / |c_q|^2 + 1``, so ranking a gallery by
SNR is ranking by ``|c_g|^2 - 2 c_q . c_g``: an exact maximum-inner-product search on the transformed
vectors ``q' = [2 c_q, -1]``, ``g' = [c_g, |c_g|^2]`` (:func:`snr_inner_product_vectors`). :func:`knn` is the
brute-force reference over any PML distance, with ties broken by gallery position (the project's rule).
"""

from __future__ import annotations

import numpy as np
import torch
from pytorch_metric_learning.distances import BaseDistance, CosineSimilarity, LpDistance, SNRDistance
from pytorch_metric_learning.regularizers import ZeroMeanRegularizer
from torch import Tensor

from ..registry import Registry

__all__ = [
    "DISTANCES",
    "ZeroMeanRegularizer",
    "distance_name",
    "get_distance",
    "knn",
    "list_distances",
    "snr_inner_product_vectors",
]

DISTANCES: Registry[BaseDistance] = Registry("distance")


@DISTANCES.register("euclidean")
def _euclidean(normalize: bool = True) -> BaseDistance:
    return LpDistance(p=2, power=1, normalize_embeddings=normalize)


@DISTANCES.register("cosine")
def _cosine(normalize: bool = True) -> BaseDistance:
    if not normalize:
        raise ValueError("distance 'cosine' always L2-normalises (normalize=False would make it a dot product)")
    return CosineSimilarity()


@DISTANCES.register("snr")
def _snr(normalize: bool = True) -> BaseDistance:
    return SNRDistance(normalize_embeddings=normalize)


def get_distance(name: str | BaseDistance, normalize: bool | None = None) -> BaseDistance:
    """A PML distance by name ("euclidean" | "cosine" | "snr"); a distance object is returned unchanged.

    ``normalize``: L2-normalise embeddings before measuring (None: PML's default, True). Unknown name ->
    ValueError listing the valid names.
    """
    if isinstance(name, BaseDistance):
        return name
    return DISTANCES.create(name, normalize=normalize)


def list_distances() -> list[str]:
    return DISTANCES.names()


def distance_name(distance: BaseDistance) -> str:
    """The registry name of a PML distance object (ValueError for a type not in the registry)."""
    for cls, name in ((SNRDistance, "snr"), (CosineSimilarity, "cosine"), (LpDistance, "euclidean")):
        if isinstance(distance, cls):
            return name
    raise ValueError(f"{type(distance).__name__} is not one of the registered distances {list_distances()}")


def knn(
    query: Tensor,
    reference: Tensor,
    k: int | None,
    distance: BaseDistance | str,
    batch_size: int | None = None,
) -> tuple[Tensor, Tensor]:
    """Exact k nearest neighbours by brute force with a PML distance.

    ``query`` float (nq, D), ``reference`` float (n, D); ``k`` None = the whole reference. Returns
    ``distances`` float (nq, k) (the distance's own values: similarities for ``cosine``, in decreasing
    order) and ``indices`` int64 (nq, k), nearest first; ties are broken by reference position, ascending
    (a stable sort, unlike ``torch.topk``). ``batch_size``: queries per block (None: as many as keep PML's
    (block, n, D) pairwise-difference tensor of the SNR distance near 32 M elements).
    """
    dist = get_distance(distance)
    if query.ndim != 2 or reference.ndim != 2 or query.shape[1] != reference.shape[1]:
        raise ValueError(
            f"query (nq, D) and reference (n, D) must share D, got {tuple(query.shape)} and {tuple(reference.shape)}"
        )
    n = reference.shape[0]
    k = n if k is None else int(k)
    if not 0 < k <= n:
        raise ValueError(f"k must be in 1..{n} (the reference size), got {k}")
    if batch_size is None:
        batch_size = max(1, (1 << 25) // max(1, n * query.shape[1]))
    out_d, out_i = [], []
    with torch.no_grad():
        for s in range(0, query.shape[0], batch_size):
            mat = dist(query[s : s + batch_size], reference)
            key = -mat if dist.is_inverted else mat
            idx = torch.sort(key, dim=1, stable=True).indices[:, :k]
            out_i.append(idx)
            out_d.append(torch.gather(mat, 1, idx))
    if not out_i:
        return torch.zeros(0, k), torch.zeros(0, k, dtype=torch.long)
    return torch.cat(out_d), torch.cat(out_i).long()


def snr_inner_product_vectors(emb: np.ndarray, side: str) -> np.ndarray:
    """Transform embeddings so that maximum inner product ranks a gallery by SNR distance exactly.

    ``emb`` float (n, D); ``side`` "query" -> (n, D+1) ``[2 c, -1]`` or "gallery" -> (n, D+1) ``[c, |c|^2]``
    with ``c = emb - mean(emb, axis=1)``. For any query ``q`` the gallery order by ``q' . g'`` (decreasing)
    is the order by ``d_S(q, g)`` (increasing), so a faiss ``IndexFlatIP`` (or the project's dense index
    with an inner-product metric) can serve SNR search. float32 out. (The embeddings are used as given:
    L2-normalise them first to match a distance built with ``normalize=True``.)
    """
    x = np.asarray(emb, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"embeddings must be (n, D), got shape {x.shape}")
    c = x - x.mean(axis=1, keepdims=True)
    if side == "query":
        extra = -np.ones((len(c), 1))
        return np.hstack([2.0 * c, extra]).astype(np.float32)
    if side == "gallery":
        return np.hstack([c, (c * c).sum(axis=1, keepdims=True)]).astype(np.float32)
    raise ValueError(f"side must be 'query' or 'gallery', got {side!r}")
