"""The one class-balanced sampler of the training recipes.

Metric-learning and triplet recipes need batches holding several classes with several items each, and
their datasets draw extra random items per example (a triplet's positive and negative photos). Ours rather
than pytorch-metric-learning's ``MPerClassSampler`` because (1) that one draws from numpy's global RNG,
so a run is not reproducible from its seed alone, and (2) a dataset that draws extra items per example
needs a seed per draw that does not live in the dataset: DataLoader workers each hold a copy of the dataset,
so a per-dataset visit counter restarts in every worker and every epoch and repeats its draws.

So the sampler yields ``(index, draw)`` pairs: ``index`` is the dataset item, ``draw`` a number unique to
this position of this epoch of this run; a dataset seeds its extra draws with ``(seed, draw)``. Datasets
that need no extra draws use ``index`` alone (:class:`Indexed`).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
from torch.utils.data import Dataset, Sampler

__all__ = ["ClassBalancedSampler", "Indexed", "MixedSampler"]


class _GroupSampler(Sampler[tuple[int, int]]):
    """What both samplers share: ``n_groups`` groups of ``per_class`` draws an epoch, seeded by ``(seed,
    epoch)``, and sharding of the groups across DDP processes."""

    per_class: int
    n_groups: int
    epoch: int
    num_replicas: int
    rank: int

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def shard(self, num_replicas: int, rank: int) -> None:
        """Under DDP: this process takes every ``num_replicas``-th group, starting at ``rank``."""
        self.num_replicas, self.rank = int(num_replicas), int(rank)

    def __len__(self) -> int:
        return len(range(self.rank, self.n_groups, self.num_replicas)) * self.per_class


class ClassBalancedSampler(_GroupSampler):
    """Groups of ``per_class`` items of one class, classes in a seeded random order, one epoch =
    ``len(labels)`` draws (rounded up to whole groups). With ``batch_size`` a multiple of ``per_class`` a batch
    holds ``batch_size // per_class`` classes. A class with fewer than ``per_class`` items is drawn with
    replacement. Deterministic for ``(seed, epoch)``; :meth:`set_epoch` is called by the training loop.

    labels: (N,) class index per dataset item (>= 0). Yields ``(index, draw)``.
    """

    def __init__(self, labels: Sequence[int] | np.ndarray, per_class: int = 4, seed: int = 0) -> None:
        lab = np.asarray(labels, dtype=np.int64)
        if lab.ndim != 1 or len(lab) == 0 or (lab < 0).any():
            raise ValueError("labels must be a non-empty 1-d sequence of class indices >= 0")
        if per_class < 1:
            raise ValueError(f"per_class must be >= 1, got {per_class}")
        self.per_class, self.seed, self.epoch = int(per_class), int(seed), 0
        self.classes = np.unique(lab)
        self.members = [np.flatnonzero(lab == c) for c in self.classes]
        self.n_groups = max(len(self.classes), -(-len(lab) // self.per_class))
        self.num_replicas, self.rank = 1, 0

    def __iter__(self) -> Iterator[tuple[int, int]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        n_c = len(self.classes)
        order = np.concatenate([rng.permutation(n_c) for _ in range(-(-self.n_groups // n_c))])[: self.n_groups]
        base = self.epoch * self.n_groups * self.per_class
        for g in range(self.rank, self.n_groups, self.num_replicas):
            members = self.members[order[g]]
            pick = rng.choice(members, size=self.per_class, replace=len(members) < self.per_class)
            for j, i in enumerate(pick):
                yield int(i), base + g * self.per_class + j


class Indexed(Dataset[Any]):
    """A dataset read with ``(index, draw)`` keys by one that has no extra draws: ``ds[(i, d)] = base[i]``."""

    def __init__(self, base: Dataset[Any]) -> None:
        self.base = base

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int]) -> Any:
        return self.base[key[0]]


class MixedSampler(_GroupSampler):
    """Groups of ``per_class`` draws: with probability ``labelled_fraction`` (when there are both kinds) the
    items of one labelled class (classes drawn uniformly; with replacement when a class has fewer items),
    else ``per_class`` distinct random unlabelled items (label < 0). One epoch = ``len(labels)`` draws
    rounded up to whole groups. So a batch of a self-supervised + supervised recipe holds several items of
    a few classes (positives for a supervised contrastive loss) beside unlabelled drawings, whatever the
    sizes of the two pools. Deterministic for ``(seed, epoch)``; yields ``(index, draw)`` as
    :class:`ClassBalancedSampler`.
    """

    def __init__(
        self, labels: Sequence[int] | np.ndarray, per_class: int = 2, labelled_fraction: float = 0.5, seed: int = 0
    ) -> None:
        lab = np.asarray(labels, dtype=np.int64)
        if lab.ndim != 1 or len(lab) == 0:
            raise ValueError("labels must be a non-empty 1-d sequence (class index >= 0, or -1: unlabelled)")
        if per_class < 1:
            raise ValueError(f"per_class must be >= 1, got {per_class}")
        if not 0.0 <= labelled_fraction <= 1.0:
            raise ValueError(f"labelled_fraction must be in [0, 1], got {labelled_fraction}")
        self.per_class, self.seed, self.epoch = int(per_class), int(seed), 0
        self.unlabelled = np.flatnonzero(lab < 0)
        classes = np.unique(lab[lab >= 0])
        self.members = [np.flatnonzero(lab == c) for c in classes]
        if not self.members:
            labelled_fraction = 0.0
        elif len(self.unlabelled) == 0:
            labelled_fraction = 1.0
        self.labelled_fraction = float(labelled_fraction)
        self.n_groups = -(-len(lab) // self.per_class)
        self.num_replicas, self.rank = 1, 0

    def __iter__(self) -> Iterator[tuple[int, int]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        base = self.epoch * self.n_groups * self.per_class
        n_u = len(self.unlabelled)
        for g in range(self.n_groups):
            # every group's draws are made on every rank, so that shards partition one sequence
            if rng.random() < self.labelled_fraction:
                members = self.members[int(rng.integers(len(self.members)))]
                pick = rng.choice(members, size=self.per_class, replace=len(members) < self.per_class)
            else:
                pick = self.unlabelled[rng.choice(n_u, size=self.per_class, replace=n_u < self.per_class)]
            if g % self.num_replicas != self.rank:
                continue
            for j, i in enumerate(pick):
                yield int(i), base + g * self.per_class + j
