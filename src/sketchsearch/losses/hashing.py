"""Hashing losses that pytorch-metric-learning does not have: quantization and SketchMate's sketch-centre loss.

Both work on *relaxed codes* ``f`` (B, K) float; with sigmoid codes in (0, 1) the binary code is
``b = 1[f > 0.5]`` in {0, 1} (SketchMate writes ``b = sign(f - 0.5)``; {0, 1} is the same bits on the
scale of ``f``, so ``f - b`` is the distance to the nearest corner of the cube).

Reduction: mean over the batch of the per-sample squared L2 distance (a sum over bits); the SketchMate
paper sums over samples, and the loss weights absorb the difference (see methods/sketchmate.py).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["class_centres", "quantization_loss", "sketch_centre_loss"]


def _check_codes(f: Tensor, what: str = "f") -> None:
    if f.ndim != 2:
        raise ValueError(f"{what} must be (B, K) relaxed codes, got shape {tuple(f.shape)}")


def quantization_loss(f: Tensor, threshold: float = 0.5, low: float = 0.0, high: float = 1.0) -> Tensor:
    """mean_i || f_i - b_i ||^2 with b_i = ``high`` where f_i > ``threshold`` else ``low`` (no gradient through b).

    f: (B, K) float. Sigmoid codes: defaults (0.5, 0, 1); tanh codes: ``threshold=0, low=-1, high=1``.
    Returns a scalar.
    """
    _check_codes(f)
    b = torch.where(f > threshold, torch.full_like(f, high), torch.full_like(f, low)).detach()
    return (f - b).pow(2).sum(dim=1).mean()


def sketch_centre_loss(
    f: Tensor, labels: Tensor, centres: Tensor, distance: str = "euclidean", threshold: float = 0.5
) -> Tensor:
    """SketchMate's sketch-centre loss: mean_i d(f_i, c_{y_i}) with *fixed* centres.

    ``distance`` (the DSML issue: no loss hard-codes its distance):

    * ``"euclidean"`` (the paper): d = 1/2 || f - c ||^2;
    * ``"cosine"``: d = 1 - cos(f - t, c - t), t = ``threshold``: the angle in the signed code space
      (where sign(f - t) is the code), since sigmoid codes all lie in the positive orthant;
    * ``"snr"``: d = var((f - t) - (c - t)) / var(c - t), the SNR distance (PML ``SNRDistance``) with the
      centre as the signal, measured on the same signed codes (SNR assumes zero-mean vectors).

    f: (B, K) float; labels: (B,) long in [0, C) (entries < 0 = unknown class are ignored);
    centres: (C, K) float, computed once from the pretrained model (:func:`class_centres`), not learned:
    unlike Wen et al.'s centre loss the centres do not move, so they cannot collapse onto the codes.
    Returns a scalar (0 when no sample has a known label).
    """
    _check_codes(f)
    if centres.ndim != 2 or centres.shape[1] != f.shape[1]:
        raise ValueError(f"centres must be (C, {f.shape[1]}), got {tuple(centres.shape)}")
    known = labels >= 0
    if (labels >= centres.shape[0]).any():
        raise ValueError(f"labels go up to {int(labels.max())} but there are only {centres.shape[0]} centres")
    if not bool(known.any()):
        return f.sum() * 0.0
    c = centres[labels[known]].to(f.dtype)
    fk = f[known]
    if distance == "euclidean":
        return 0.5 * (fk - c).pow(2).sum(dim=1).mean()
    if distance not in ("cosine", "snr"):
        raise ValueError(f"centre-loss distance must be 'euclidean', 'cosine' or 'snr', got {distance!r}")
    from .distances import get_distance  # PML distances, paired rows: pairwise_distance(anchor, other)

    d = get_distance(distance, normalize=False if distance == "snr" else None)
    a, b = d.maybe_normalize(c - threshold), d.maybe_normalize(fk - threshold)  # pairwise_distance skips it
    if distance == "cosine":
        return (1.0 - d.pairwise_distance(a, b)).mean()
    # A centre with (near) constant entries has no signal (var 0: the SNR is undefined); it pulls nothing,
    # like the "middle of the cube" centre of a class without samples.
    ok = a.var(dim=1) > 1e-12
    if not bool(ok.any()):
        return f.sum() * 0.0
    return d.pairwise_distance(a[ok], b[ok]).mean()


def class_centres(
    f: Tensor, labels: Tensor, n_classes: int, mask: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Per-class mean of ``f`` over the samples where ``mask`` (B,) bool is true (all when None).

    Returns ``(centres (C, K) float, counts (C,) long)``; a class with no kept sample gets the mean over all
    of its samples, and a class with no sample at all a centre of 0.5 (the middle of the cube: no pull).
    """
    _check_codes(f)
    keep = torch.ones_like(labels, dtype=torch.bool) if mask is None else mask.bool()
    valid = labels >= 0
    K = f.shape[1]
    sums = torch.zeros(n_classes, K, dtype=torch.float64, device=f.device)
    counts = torch.zeros(n_classes, dtype=torch.long, device=f.device)
    sel = keep & valid
    sums.index_add_(0, labels[sel], f[sel].double())
    counts.index_add_(0, labels[sel], torch.ones_like(labels[sel]))
    all_sums = torch.zeros_like(sums).index_add_(0, labels[valid], f[valid].double())
    all_counts = torch.zeros_like(counts).index_add_(0, labels[valid], torch.ones_like(labels[valid]))
    centres = torch.full((n_classes, K), 0.5, dtype=torch.float64, device=f.device)
    has = counts > 0
    centres[has] = sums[has] / counts[has, None]
    fallback = (~has) & (all_counts > 0)
    centres[fallback] = all_sums[fallback] / all_counts[fallback, None]
    return centres.to(f.dtype), counts
