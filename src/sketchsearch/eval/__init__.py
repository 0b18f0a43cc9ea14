"""Evaluation: metrics on ranked relevance (:mod:`.metrics`) and the retrieval protocol (:mod:`.protocol`).

``protocol`` is imported on first use (it pulls in the retriever and the data readers)."""

from __future__ import annotations

from typing import Any

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

_PROTOCOL = ("evaluate_retrieval", "run_benchmark", "evaluate_baseline", "category_split", "load_labelled")


def __getattr__(name: str) -> Any:
    if name in _PROTOCOL:
        from . import protocol

        return getattr(protocol, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "acc_at_k",
    "average_precision",
    "count_excluded",
    "map_at_all",
    "map_at_k",
    "map_at_r",
    "n_relevant_from_labels",
    "precision_at_k",
    "relevance_from_labels",
    *_PROTOCOL,
]
