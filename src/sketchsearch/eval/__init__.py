"""Evaluation: metrics on ranked relevance (:mod:`.metrics`) and the retrieval protocol (:mod:`.protocol`)."""

from .metrics import (
    acc_at_k,
    average_precision,
    count_excluded,
    map_at_all,
    map_at_k,
    map_at_r,
    n_relevant_from_labels,
    precision_at_k,
    relevance_from_labels,
)
from .protocol import category_split, evaluate_baseline, evaluate_retrieval, load_labelled, run_benchmark

__all__ = [
    "acc_at_k",
    "average_precision",
    "category_split",
    "count_excluded",
    "evaluate_baseline",
    "evaluate_retrieval",
    "load_labelled",
    "map_at_all",
    "map_at_k",
    "map_at_r",
    "n_relevant_from_labels",
    "precision_at_k",
    "relevance_from_labels",
    "run_benchmark",
]
