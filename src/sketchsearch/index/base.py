"""The index contract: the :class:`Index` protocol, the :class:`IdStore` every index keeps its rows in,
and the one registry of index backends.

Every backend (``list_indexes()``: the Hamming scans of ``hamming.py``, multi-index hashing of
``mih.py``, the sharded scan of ``sharded.py``, the Milvus collection of ``milvus.py`` and the dense index of
``dense.py``) satisfies
:class:`Index`, and the Retriever and the on-disk store (``store.py``) use nothing else (the sharded
backend keeps its rows in shards of its own instead of an :class:`IdStore`). Backends register when their
module is imported; ``sketchsearch.index``'s ``__init__`` imports every backend module, and importing this
module runs that ``__init__`` first.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

import numpy as np
from numpy.typing import ArrayLike

from sketchsearch.errors import IndexArgumentError
from sketchsearch.registry import Registry

__all__ = [
    "ALIASES",
    "INDEXES",
    "METRICS",
    "STATE_ARRAYS",
    "IdStore",
    "Index",
    "check_k",
    "create_index",
    "list_indexes",
    "readonly_view",
    "state_arrays",
]

#: What an index's ``metric`` may be: Hamming distance over packed bits, or similarity of float vectors.
METRICS = ("hamming", "cosine", "ip")
#: The arrays of an index's :meth:`Index.state`; store.py writes each as ``<name>.npy``.
STATE_ARRAYS = ("codes", "ids")


@runtime_checkable
class Index(Protocol):
    """What every index backend provides.

    **Rows.** A Hamming index (``metric == "hamming"``) holds packed codes ``uint8 (n, nbits // 8)``
    (see :mod:`sketchsearch.index.codes`); a dense index (``"cosine"`` or ``"ip"``) holds float vectors
    ``(n, dim)``. Ids are ``int64 >= 0``, unique within an index; rows are kept in ascending id order.

    **Search** returns ``(scores (nq, k), ids int64 (nq, k))``, best first, ties broken by id ascending.
    Hamming: ``int32`` bit distances, ascending, a missing hit (``k > len``) is id ``-1`` with distance
    ``MISSING_DISTANCE`` (``2**31 - 1``, as faiss). Cosine / ip: ``float32`` similarities, descending,
    a missing hit is id ``-1`` with similarity ``-inf``.

    **Persistence.** ``create_index(index.name, **index.config())`` makes an empty index of the same
    kind and ``load_state(index.state())`` fills it; store.py records ``name``, ``metric`` and
    ``config()`` in the manifest and writes the ``state()`` arrays as ``.npy`` files.

    **Errors.** A bad argument (code width or dtype, ids, ``k``) raises
    :class:`~sketchsearch.errors.IndexArgumentError` naming the field, and the index is unchanged.
    """

    #: The backend's name in the registry (``create_index(name)``), recorded in saved manifests.
    name: str
    #: One of :data:`METRICS`.
    metric: str

    @property
    def ids(self) -> np.ndarray:
        """int64 (n,), ascending (read-only view)."""
        ...

    def __len__(self) -> int: ...

    def add(self, codes: np.ndarray, ids: ArrayLike | None = None) -> np.ndarray:
        """Add rows (n, ...) under ids (n,) (default: after the largest id); returns the ids int64 (n,).

        An id repeated or already in the index is refused (nothing is added).
        """
        ...

    def remove(self, ids: ArrayLike) -> int:
        """Remove the given ids (ids not in the index are ignored); returns how many were removed."""
        ...

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` best rows for each query row: (scores (nq, k), ids int64 (nq, k)), see above."""
        ...

    def config(self) -> dict[str, Any]:
        """Keyword arguments of ``create_index(self.name, ...)`` for an empty index like this one."""
        ...

    def state(self) -> dict[str, np.ndarray]:
        """``{"codes": rows in id order, "ids": int64 (n,) strictly ascending}`` (no copies)."""
        ...

    def load_state(self, state: Mapping[str, np.ndarray]) -> None:
        """Replace the contents by a :meth:`state` (arrays used as given, e.g. memory-mapped)."""
        ...


INDEXES: Registry[Index] = Registry("index backend")

#: Former backend names, still accepted so that saved indexes whose manifest records them load.
ALIASES = {"sketchsearch": "numba"}


def create_index(name: str, **config: Any) -> Index:
    """An empty index of backend ``name``.

    Hamming backends (``"numba"``, ``"faiss"``, ``"numpy"``, ``"mih"``, ``"sharded"``, ``"milvus"``) take ``nbits``
    (and their own options: ``mih``'s ``substrings``, ``sharded``'s ``shard_size``, ``threads``, ``max_deleted``,
    ``milvus``'s ``uri`` and ``collection``);
    ``"dense"`` takes ``dim`` and ``metric`` (``"cosine"`` or ``"ip"``). An unknown name raises ValueError
    listing the valid ones.
    """
    return INDEXES.create(ALIASES.get(name, name), **config)


def list_indexes() -> list[str]:
    """Names of every registered index backend (aliases excluded)."""
    return INDEXES.names()


def check_k(k: object) -> int:
    """``k`` as an int, refused unless it is an integer >= 1."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise IndexArgumentError(f"k must be an integer >= 1, got {k!r}", "k")
    return int(k)


def state_arrays(state: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """``(codes, ids)`` of an index state; refuses a mapping without exactly :data:`STATE_ARRAYS`."""
    if not isinstance(state, Mapping) or sorted(state) != sorted(STATE_ARRAYS):
        got = sorted(state) if isinstance(state, Mapping) else type(state).__name__
        raise IndexArgumentError(f"expected the arrays {list(STATE_ARRAYS)}, got {got}", "state")
    return state["codes"], state["ids"]


def readonly_view(a: np.ndarray) -> np.ndarray:
    """A view of ``a`` that cannot be written through (what an index hands out as ``codes`` / ``ids``)."""
    v = a.view()
    v.flags.writeable = False
    return v


def _check_ids(ids: object, n: int) -> np.ndarray:
    arr = np.asarray(ids)
    if arr.ndim != 1 or arr.shape[0] != n:
        raise IndexArgumentError(f"expected {n} ids in a 1-d array, got shape {arr.shape}", "ids")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise IndexArgumentError(f"expected integer ids, got dtype {arr.dtype}", "ids")
    arr = arr.astype(np.int64, copy=False)
    if arr.size and arr.min() < 0:
        raise IndexArgumentError(f"ids must be >= 0 (-1 marks a missing hit), got {int(arr.min())}", "ids")
    return arr


def _sort_new_ids(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(order, ids[order])`` of checked ids about to be added; an id given twice is refused."""
    order = np.argsort(ids, kind="stable")
    sorted_ids = ids[order]
    repeated = sorted_ids[1:][sorted_ids[1:] == sorted_ids[:-1]]
    if repeated.size:
        raise IndexArgumentError(f"id {int(repeated[0])} is given more than once", "ids")
    return order, sorted_ids


class IdStore:
    """An index's ids and rows, kept together in ascending id order.

    ``ids``: int64 (n,), >= 0, strictly ascending; ``rows``: (n, ...) packed codes or vectors, row ``i``
    belonging to ``ids[i]``. Both arrays are replaced on every change, never written in place, so they
    may be read-only memory maps. Rows in id order make "ties by id" the same as "ties by position"
    for every backend. Rows are validated by the index; ids here.
    """

    def __init__(self, empty_rows: np.ndarray) -> None:
        self.rows = empty_rows
        self.ids = np.zeros(0, np.int64)

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    def positions(self, ids: np.ndarray) -> np.ndarray:
        """Positions int64 of ``ids`` (int64, any shape) in the store; -1 for an id not stored."""
        pos = np.searchsorted(self.ids, ids)
        found = pos < len(self)
        found[found] = self.ids[pos[found]] == ids[found]
        return np.where(found, pos, -1)

    def ids_at(self, positions: np.ndarray) -> np.ndarray:
        """The ids int64 at ``positions`` (int64, any shape); position -1 (a missing hit) gives id -1."""
        out = np.full(positions.shape, -1, np.int64)
        ok = positions >= 0
        out[ok] = self.ids[positions[ok]]
        return out

    def add(self, rows: np.ndarray, ids: ArrayLike | None = None) -> np.ndarray:
        """Insert ``rows`` (n, ...) under ``ids`` (n,) (default: after the largest id); returns the ids.

        An id given twice, or already stored, is refused (IndexArgumentError) and nothing is added.
        """
        n = rows.shape[0]
        if ids is None:
            start = int(self.ids[-1]) + 1 if len(self) else 0
            ids = np.arange(start, start + n, dtype=np.int64)
        ids = _check_ids(ids, n)
        if n == 0:
            return ids
        order, sorted_ids = _sort_new_ids(ids)
        stored = sorted_ids[self.positions(sorted_ids) >= 0]
        if stored.size:
            raise IndexArgumentError(f"id {int(stored[0])} is already in the index", "ids")
        if not len(self) or sorted_ids[0] > self.ids[-1]:  # the common case: append after the stored ids
            self.rows = np.concatenate([self.rows, rows[order]])
            self.ids = np.concatenate([self.ids, sorted_ids])
        else:
            merge = np.argsort(np.concatenate([self.ids, ids]), kind="stable")
            self.rows = np.concatenate([self.rows, rows])[merge]
            self.ids = np.concatenate([self.ids, ids])[merge]
        return ids

    def remove(self, ids: ArrayLike) -> int:
        """Drop ``ids`` (integers, any shape) and their rows, ignoring ids not stored; returns the count."""
        arr = np.asarray(ids)
        if arr.size and not np.issubdtype(arr.dtype, np.integer):
            raise IndexArgumentError(f"expected integer ids, got dtype {arr.dtype}", "ids")
        keep = ~np.isin(self.ids, arr.reshape(-1))
        removed = len(self) - int(keep.sum())
        if removed:
            self.rows, self.ids = self.rows[keep], self.ids[keep]
        return removed

    def adopt(self, rows: np.ndarray, ids: object) -> None:
        """Take ``rows`` (validated by the caller) and ``ids`` as they are, e.g. memory-mapped from disk."""
        arr = _check_ids(ids, rows.shape[0])
        if arr.size > 1 and not np.all(arr[1:] > arr[:-1]):
            raise IndexArgumentError("ids must be strictly ascending (rows are stored in id order)", "ids")
        self.rows, self.ids = rows, arr

    def state(self) -> dict[str, np.ndarray]:
        """``{"codes": rows, "ids": ids}``, the arrays themselves (see :meth:`Index.state`)."""
        return {"codes": self.rows, "ids": self.ids}
