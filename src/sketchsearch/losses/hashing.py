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

__all__ = [
    "class_centres",
    "discrete_code_step",
    "quantization_loss",
    "semantic_projection_step",
    "sketch_centre_loss",
    "unification_loss",
]


def _check_codes(f: Tensor, what: str = "f") -> None:
    if f.ndim != 2:
        raise ValueError(f"{what} must be (B, K) relaxed codes, got shape {tuple(f.shape)}")


def quantization_loss(
    f: Tensor, threshold: float = 0.5, low: float = 0.0, high: float = 1.0, target: Tensor | None = None
) -> Tensor:
    """mean_i || f_i - b_i ||^2 with b_i = ``high`` where f_i > ``threshold`` else ``low`` (no gradient through b).

    f: (B, K) float. Sigmoid codes: defaults (0.5, 0, 1); tanh codes: ``threshold=0, low=-1, high=1``.
    ``target`` (B, K): given binary codes to pull towards instead of the nearest corner (methods that learn
    discrete codes by their own update, e.g. GDH's B-step); then ``threshold``/``low``/``high`` are unused.
    Returns a scalar.
    """
    _check_codes(f)
    if target is not None:
        if target.shape != f.shape:
            raise ValueError(f"target must have the codes' shape {tuple(f.shape)}, got {tuple(target.shape)}")
        b = target.to(f.dtype).detach()
    else:
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


def class_centres(f: Tensor, labels: Tensor, n_classes: int, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
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


# ------------------------------------------------------------------------------ semantic factorization (FSDH)
def semantic_projection_step(codes: list[Tensor], labels: list[Tensor], n_classes: int) -> Tensor:
    """The D-step of Fast Supervised Discrete Hashing (Gui et al., TPAMI 2018) as GDH's Eq. (9).

    ``D = (sum_m Y_m^T Y_m + I)^-1 (sum_m Y_m^T B_m)``: the closed-form minimiser of
    ``sum_m ||B_m - Y_m D||^2 + ||D||^2``. ``codes``: binary codes B_m (n_m, K) in {-1, +1} (one per domain:
    images, sketches); ``labels``: (n_m,) long class indices in [0, n_classes) (entries < 0 are left out)
    or (n_m, c) float label matrices Y_m. Returns D (c, K) float32.
    """
    if len(codes) != len(labels) or not codes:
        raise ValueError(f"need one label set per code set, got {len(codes)} codes and {len(labels)} labels")
    K = codes[0].shape[1]
    dev = codes[0].device
    gram = torch.eye(n_classes, dtype=torch.float64, device=dev)
    rhs = torch.zeros(n_classes, K, dtype=torch.float64, device=dev)
    for b, y in zip(codes, labels):
        _check_codes(b, "B")
        Y = _label_matrix(y, n_classes).to(dev)
        if Y.shape[0] != b.shape[0]:
            raise ValueError(f"{Y.shape[0]} labels for {b.shape[0]} codes")
        gram += Y.T @ Y
        rhs += Y.T @ b.double()
    return torch.linalg.solve(gram, rhs).float()


def discrete_code_step(labels: Tensor, D: Tensor, relaxed: Tensor, alpha: float, n_classes: int) -> Tensor:
    """GDH's B-steps, Eqs. (12)-(13): ``B = sgn(Y D + alpha H)`` in {-1, +1} (sgn(0) = +1).

    The closed-form minimiser of ``||B - Y D||^2 + alpha ||H - B||^2`` over binary B. ``labels`` (n,) long or
    (n, c) float Y; ``D`` (c, K); ``relaxed`` H (n, K) the network's relaxed (tanh) codes. Returns (n, K) float.
    """
    _check_codes(relaxed, "H")
    Y = _label_matrix(labels, n_classes).to(D.device, torch.float32)
    q = Y @ D.float() + float(alpha) * relaxed.float().detach()
    return torch.where(q >= 0, torch.ones_like(q), -torch.ones_like(q))


def unification_loss(h_real: Tensor, h_migrated: Tensor) -> Tensor:
    """GDH's unification constraint ``||H(I) - H(G_I(S))||^2`` between the relaxed codes of paired real
    images and migrated sketches (B, K) each: mean over pairs of the squared L2 distance (sum over bits)."""
    _check_codes(h_real, "h_real")
    if h_real.shape != h_migrated.shape:
        raise ValueError(f"paired codes differ in shape: {tuple(h_real.shape)} vs {tuple(h_migrated.shape)}")
    return (h_real - h_migrated).pow(2).sum(dim=1).mean()


def _label_matrix(y: Tensor, n_classes: int) -> Tensor:
    """(n,) long class indices -> (n, c) float64 one-hot (rows of negative labels are zero); a float
    (n, c) matrix is returned as float64."""
    if y.ndim == 2:
        if y.shape[1] != n_classes:
            raise ValueError(f"label matrix must have {n_classes} columns, got {tuple(y.shape)}")
        return y.double()
    if y.ndim != 1:
        raise ValueError(f"labels must be (n,) class indices or an (n, c) matrix, got {tuple(y.shape)}")
    if (y >= n_classes).any():
        raise ValueError(f"labels go up to {int(y.max())} but n_classes={n_classes}")
    Y = torch.zeros(len(y), n_classes, dtype=torch.float64, device=y.device)
    keep = y >= 0
    Y[keep, y[keep]] = 1.0
    return Y
