"""Retrieval metrics as plain functions on *ranked relevance*.

Every function takes ``rel``: bool (or 0/1) array ``(n_queries, n_ranked)`` holding, for each query, whether
the item at rank 1, 2, ... is relevant, in rank order. How the ranking was made is not their business: the
index ranks by distance and **breaks ties in distance by id, ascending** (``Retriever`` / ``index`` say so),
so a ranking, and therefore every number here, is deterministic. Missing hits (an index smaller than the
list, ids ``-1``) are simply not relevant.

``n_relevant`` (int ``(n_queries,)``) is the number of relevant items in the *whole* gallery for each query;
it normalises the @all/@k averages when the ranking is truncated. When omitted it is ``rel.sum(1)``, which
is right only for full rankings.

**Queries with no relevant item** (``n_relevant == 0``) have no defined AP: every averaged metric here
excludes them from the mean (all of them, so that all metrics average over the same queries);
:func:`count_excluded` says how many. If every query is excluded the mean is ``nan``.

Definitions (rank ``i`` is 1-based, ``P@i`` = relevant among the first ``i`` / ``i``, ``R = n_relevant``):

* AP (mAP@all): ``sum_i P@i * rel_i / R`` over the whole ranking;
* mAP@k, ``norm="relevant"``: ``sum_{i<=k} P@i * rel_i / R`` (truncated AP: the usual IR definition; it is
  bounded by recall@k, so it cannot reach 1 when ``R > k``);
* mAP@k, ``norm="min"``: the same sum ``/ min(k, R)`` (reaches 1 for a perfect top-k; the ``apk`` of Kaggle's
  ``ml_metrics`` and of most recommender-system papers);
* mAP@k, ``norm="retrieved"``: the same sum ``/ (relevant items within the top k)``: what
  ``sklearn.metrics.average_precision_score`` gives on a top-k list, and what hashing and ZS-SBIR evaluation
  code commonly reports as mAP@200 (e.g. DeepHash-pytorch's ``CalcTopMap``; the SEM-PCYC /
  Doodle-to-Search test scripts apply sklearn's AP to the top 200). Not in the default result tables;
* MAP@R (Musgrave, Belongie & Lim, "A Metric Learning Reality Check", ECCV 2020): mAP@k with ``k = R`` per
  query, normalised by ``R`` (used by the DSML issue);
* P@k: relevant among the first ``k`` / ``k`` (DSH, GDH, SketchMate report P@200 this way);
* recall@k: relevant among the first ``k`` / ``R`` (page search: the share of a query's true boxes found);
* acc@k: 1 when any of the first ``k`` is relevant (top-k accuracy / hit rate; acc@1 = nearest-neighbour
  accuracy, as instance-level SBIR papers report it);
* mean rank: the mean 1-based rank of a query's first relevant item (instance-level SBIR's "mean rank" of
  the true photo; 1 is perfect); a ranking that misses every relevant item counts it at ``n_ranked + 1``.

mAP@all is identical under all three normalisations (the full ranking holds every relevant item).
Papers that report plain "mAP" on sketch hashing (DSH, Liu et al. CVPR 2017; GDH, Zhang et al. ECCV 2018)
mean mAP@all.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np

__all__ = [
    "Norm",
    "acc_at_k",
    "average_precision",
    "count_excluded",
    "map_at_all",
    "map_at_k",
    "map_at_r",
    "mean_rank",
    "n_relevant_from_labels",
    "precision_at_k",
    "recall_at_k",
    "relevance_from_labels",
    "valid_queries",
]

Norm = Literal["relevant", "min", "retrieved"]
_NORMS = ("relevant", "min", "retrieved")


def _as_rel(rel: np.ndarray | Sequence[Sequence[bool]]) -> np.ndarray:
    r = np.asarray(rel)
    if r.ndim == 1:
        r = r[None, :]
    if r.ndim != 2:
        raise ValueError(f"rel must be (n_queries, n_ranked) relevance in rank order, got shape {r.shape}")
    if r.dtype != bool:
        if r.size and not np.isin(r, (0, 1)).all():
            raise ValueError("rel must hold booleans or 0/1 values (relevance in rank order)")
        r = r.astype(bool)
    return r


def _as_n_relevant(rel: np.ndarray, n_relevant: np.ndarray | Sequence[int] | None) -> np.ndarray:
    found = rel.sum(axis=1)
    if n_relevant is None:
        return found.astype(np.int64)
    n = np.asarray(n_relevant, dtype=np.int64).reshape(-1)
    if n.shape != (rel.shape[0],):
        raise ValueError(f"n_relevant must have one entry per query ({rel.shape[0]}), got shape {n.shape}")
    if (n < found).any():
        q = int(np.argmax(n < found))
        raise ValueError(
            f"n_relevant[{q}] = {n[q]} but its ranking already holds {found[q]} relevant items: "
            "n_relevant must count the relevant items of the whole gallery"
        )
    return n


def _check_k(k: int) -> int:
    if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 1:
        raise ValueError(f"k must be an integer >= 1, got {k!r}")
    return int(k)


def _mean(values: np.ndarray, valid: np.ndarray) -> float:
    return float(values[valid].mean()) if valid.any() else float("nan")


def valid_queries(n_relevant: np.ndarray | Sequence[int]) -> np.ndarray:
    """bool (n_queries,): the queries that count (at least one relevant item in the gallery)."""
    return np.asarray(n_relevant, dtype=np.int64) > 0


def count_excluded(n_relevant: np.ndarray | Sequence[int]) -> int:
    """How many queries the means leave out because they have no relevant item."""
    return int((~valid_queries(n_relevant)).sum())


def _precision_sums(rel: np.ndarray, k: int | None) -> np.ndarray:
    """float64 (nq,): sum over ranks i <= k of P@i * rel_i."""
    r = rel if k is None else rel[:, :k]
    if r.shape[1] == 0:
        return np.zeros(r.shape[0])
    ranks = np.arange(1, r.shape[1] + 1, dtype=np.float64)
    prec = np.cumsum(r, axis=1, dtype=np.float64) / ranks
    return (prec * r).sum(axis=1)


def average_precision(
    rel: np.ndarray | Sequence[Sequence[bool]],
    n_relevant: np.ndarray | Sequence[int] | None = None,
    k: int | None = None,
    norm: Norm = "relevant",
) -> np.ndarray:
    """Per-query (truncated) average precision, float64 ``(n_queries,)``; ``nan`` where ``n_relevant == 0``.

    ``k=None``: over the whole given ranking (AP). ``norm`` picks the denominator of AP@k (module docstring):
    ``"relevant"`` (R), ``"min"`` (min(k, R)) or ``"retrieved"`` (relevant within the top k; 0 when none).
    """
    r = _as_rel(rel)
    n = _as_n_relevant(r, n_relevant)
    if norm not in _NORMS:
        raise ValueError(f"norm must be one of {', '.join(_NORMS)}; got {norm!r}")
    if k is not None:
        k = _check_k(k)
    sums = _precision_sums(r, k)
    if norm == "relevant" or k is None and norm == "min":
        denom = n.astype(np.float64)
    elif norm == "min":
        denom = np.minimum(n, k).astype(np.float64)
    else:
        denom = (r if k is None else r[:, :k]).sum(axis=1).astype(np.float64)
    out = np.full(r.shape[0], np.nan)
    ok = n > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        vals = np.where(denom > 0, sums / np.where(denom > 0, denom, 1.0), 0.0)
    out[ok] = vals[ok]
    return out


def map_at_all(
    rel: np.ndarray | Sequence[Sequence[bool]], n_relevant: np.ndarray | Sequence[int] | None = None
) -> float:
    """mAP@all: mean AP over the full ranking (queries without relevant items excluded)."""
    r = _as_rel(rel)
    n = _as_n_relevant(r, n_relevant)
    return _mean(average_precision(r, n), n > 0)


def map_at_k(
    rel: np.ndarray | Sequence[Sequence[bool]],
    k: int,
    n_relevant: np.ndarray | Sequence[int] | None = None,
    norm: Norm = "relevant",
) -> float:
    """mAP@k with the chosen normalisation. Result tables name them ``mAP@k`` (``norm="relevant"``) and
    ``mAP@k_min`` (``norm="min"``); see the module docstring for which papers use which."""
    r = _as_rel(rel)
    n = _as_n_relevant(r, n_relevant)
    return _mean(average_precision(r, n, k=k, norm=norm), n > 0)


def map_at_r(rel: np.ndarray | Sequence[Sequence[bool]], n_relevant: np.ndarray | Sequence[int] | None = None) -> float:
    """MAP@R (Musgrave et al. 2020): per query ``sum_{i<=R} P@i * rel_i / R`` with ``R = n_relevant``.

    The ranking must hold at least ``max(R)`` items for queries that count (ValueError otherwise).
    """
    r = _as_rel(rel)
    n = _as_n_relevant(r, n_relevant)
    ok = n > 0
    if ok.any() and n[ok].max() > r.shape[1]:
        raise ValueError(f"MAP@R needs rankings of at least max(R) = {n[ok].max()} items, got {r.shape[1]}")
    ranks = np.arange(1, r.shape[1] + 1)
    within = ranks[None, :] <= n[:, None]
    prec = np.cumsum(r, axis=1, dtype=np.float64) / ranks
    sums = (prec * (r & within)).sum(axis=1)
    vals = np.where(ok, sums / np.maximum(n, 1), np.nan)
    return _mean(vals, ok)


def precision_at_k(
    rel: np.ndarray | Sequence[Sequence[bool]], k: int, n_relevant: np.ndarray | Sequence[int] | None = None
) -> float:
    """Mean P@k = (relevant among the first k) / k. Rankings shorter than k count the missing ranks as
    not relevant (the denominator stays k)."""
    r = _as_rel(rel)
    n = _as_n_relevant(r, n_relevant)
    k = _check_k(k)
    return _mean(r[:, :k].sum(axis=1) / k, n > 0)


def recall_at_k(
    rel: np.ndarray | Sequence[Sequence[bool]], k: int, n_relevant: np.ndarray | Sequence[int] | None = None
) -> float:
    """Mean recall@k = (relevant among the first k) / R: the share of each query's relevant items found."""
    r = _as_rel(rel)
    n = _as_n_relevant(r, n_relevant)
    k = _check_k(k)
    return _mean(r[:, :k].sum(axis=1) / np.maximum(n, 1), n > 0)


def acc_at_k(
    rel: np.ndarray | Sequence[Sequence[bool]], k: int, n_relevant: np.ndarray | Sequence[int] | None = None
) -> float:
    """Mean top-k accuracy: 1 for a query when at least one of its first k results is relevant."""
    r = _as_rel(rel)
    n = _as_n_relevant(r, n_relevant)
    k = _check_k(k)
    return _mean(r[:, :k].any(axis=1).astype(np.float64), n > 0)


def mean_rank(
    rel: np.ndarray | Sequence[Sequence[bool]], n_relevant: np.ndarray | Sequence[int] | None = None
) -> float:
    """Mean 1-based rank of each query's first relevant item (queries without relevant items excluded). A
    ranking holding none of a query's relevant items (truncated) counts it at ``n_ranked + 1``: a lower bound."""
    r = _as_rel(rel)
    n = _as_n_relevant(r, n_relevant)
    hit = r.any(axis=1)
    first = np.where(hit, r.argmax(axis=1) + 1, r.shape[1] + 1).astype(np.float64)
    return _mean(first, n > 0)


def relevance_from_labels(
    ranked_ids: np.ndarray,
    gallery_labels: np.ndarray | Sequence[object],
    query_labels: np.ndarray | Sequence[object],
) -> np.ndarray:
    """Ranked gallery ids -> ranked relevance (same label = relevant).

    ``ranked_ids``: int64 (nq, k), gallery positions (ids are 0..n_gallery-1), ``-1`` = missing hit (never
    relevant); ``gallery_labels`` (n_gallery,) and ``query_labels`` (nq,) any comparable labels (str or int).
    Returns bool (nq, k). A ``None`` label is never relevant (unlabelled items).
    """
    ids = np.asarray(ranked_ids)
    if ids.ndim != 2:
        raise ValueError(f"ranked_ids must be (n_queries, k), got shape {ids.shape}")
    gl, ql = _codes_for(gallery_labels, query_labels)
    if len(ql) != ids.shape[0]:
        raise ValueError(f"{len(ql)} query labels for {ids.shape[0]} rankings")
    if ids.size and ids.max() >= len(gl):
        raise ValueError(f"ranked id {int(ids.max())} is outside the gallery (n_gallery = {len(gl)})")
    missing = ids < 0
    lab = gl[np.where(missing, 0, ids)] if len(gl) else np.full(ids.shape, -1)
    return (lab == ql[:, None]) & ~missing & (ql[:, None] >= 0)


def n_relevant_from_labels(
    gallery_labels: np.ndarray | Sequence[object],
    query_labels: np.ndarray | Sequence[object],
    leave_one_out: bool = False,
) -> np.ndarray:
    """int64 (nq,): relevant gallery items per query (same label). ``leave_one_out``: the queries are the
    gallery itself and each query's own item is not counted."""
    gl, ql = _codes_for(gallery_labels, query_labels)
    counts = np.bincount(gl[gl >= 0], minlength=int(max(gl.max(initial=-1), ql.max(initial=-1)) + 1))
    n = np.where(ql >= 0, counts[np.maximum(ql, 0)] if len(counts) else 0, 0).astype(np.int64)
    if leave_one_out:
        n = np.maximum(n - (ql >= 0), 0)
    return n


def _codes_for(
    gallery_labels: np.ndarray | Sequence[object], query_labels: np.ndarray | Sequence[object]
) -> tuple[np.ndarray, np.ndarray]:
    """Map labels of both sides to shared int codes; None -> -1."""
    g = list(np.asarray(gallery_labels, dtype=object).reshape(-1))
    q = list(np.asarray(query_labels, dtype=object).reshape(-1))
    table: dict[object, int] = {}
    for lab in g + q:
        if lab is not None and lab not in table:
            table[lab] = len(table)
    gc = np.array([table[x] if x is not None else -1 for x in g], dtype=np.int64)
    qc = np.array([table[x] if x is not None else -1 for x in q], dtype=np.int64)
    return gc, qc
