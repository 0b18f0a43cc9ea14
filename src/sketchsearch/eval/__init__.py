"""Evaluation: metrics on ranked relevance (:mod:`.metrics`) and the one evaluation function (:mod:`.evaluate`)."""

from .metrics import (
    acc_at_k,
    average_precision,
    count_excluded,
    map_at_all,
    map_at_k,
    map_at_r,
    mean_rank,
    n_relevant_from_labels,
    precision_at_k,
    relevance_from_labels,
)

__all__ = [
    "acc_at_k",
    "average_precision",
    "count_excluded",
    "map_at_all",
    "map_at_k",
    "map_at_r",
    "mean_rank",
    "n_relevant_from_labels",
    "precision_at_k",
    "relevance_from_labels",
]
