"""What the service serves: the collections (name -> :class:`Retriever`, one lock each, with the title and
description their collection fields give: an index's manifest, and for an item collection the
:class:`~.batching.SearchBatcher` its searches go through) and the limits.

A collection may be a page collection (a page index, :class:`~sketchsearch.pages.PageIndex`: boxes on
document pages, whose manifest has the ``"pages"`` field): it is served through its
:attr:`PageIndex.retriever <sketchsearch.pages.PageIndex.retriever>` like any other, and its page table
gives the page hits their pages and previews.

:func:`load_collections` opens collections from disk and :func:`warm_up` runs a first search in each;
:func:`~sketchsearch.service.app.create_app` keeps a :class:`ServiceState` on ``app.state.service``, and
the routes get it through the :func:`get_state` dependency.
"""

from __future__ import annotations

import asyncio
import re
import threading
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from fastapi import Request
from starlette.exceptions import HTTPException

from ..data.sketch import Sketch
from ..errors import IndexError_, SketchSearchError
from ..pages import PageIndex
from ..retrieval import Retriever
from .batching import BatchOptions, SearchBatcher
from .limits import Limits
from .schemas import CollectionKind, Metric

__all__ = [
    "CollectionSpec",
    "ServedCollection",
    "ServiceState",
    "check_name",
    "get_state",
    "load_collections",
    "warm_up",
]

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")

CollectionSpec = tuple[str, "str | Path | None", "str | Path"]
"""(name, model name/path or None for the model the index's manifest names, index folder)."""

Served = Retriever | PageIndex
"""What a collection is served from: a Retriever (an item collection), or a page index (a page collection)."""


def check_name(name: str) -> None:
    """ValueError unless ``name`` is a valid collection name (it appears in URLs and thumbnail links)."""
    if not _NAME_RE.match(name):
        raise ValueError(
            f"collection name {name!r} is not valid: "
            "use 1-64 letters, digits, '_', '.' or '-', starting with a letter or digit"
        )


def load_collections(specs: Sequence[CollectionSpec]) -> dict[str, Served]:
    """Open every ``(name, model, index_folder)`` with :meth:`Retriever.load`; a page index (its manifest has
    the ``"pages"`` field) is opened as a :class:`~sketchsearch.pages.PageIndex` over that Retriever.

    Raises :class:`~sketchsearch.errors.IndexError_` naming the collection, the folder and the cause when
    any of them fails (the CLI prints it and stops: a half-started service is worse than none).
    """
    out: dict[str, Served] = {}
    for name, model, folder in specs:
        check_name(name)
        if name in out:
            raise IndexError_(f"collection {name!r} is given twice; give each --index its own --name")
        try:
            r = Retriever.load(folder, model)
            out[name] = PageIndex.from_retriever(r, folder) if PageIndex.holds_pages(r) else r
        except Exception as e:
            what = f"model {str(model)!r} and index {str(folder)!r}" if model else f"index {str(folder)!r}"
            cause = str(e) if isinstance(e, SketchSearchError) else f"{type(e).__name__}: {e}"
            raise IndexError_(f"collection {name!r}: cannot load {what}: {cause}") from e
    return out


def warm_up(collections: Mapping[str, Served]) -> dict[str, float]:
    """Run one small search per non-empty collection so the first visitor does not pay for lazy set-up
    (JIT-compiled search kernels, index caches). Returns the ms each took."""
    probe = Sketch([np.array([[0, 0], [10, 10], [20, 0]], dtype=np.float32)])
    out = {}
    for name, served in collections.items():
        r = served.retriever if isinstance(served, PageIndex) else served
        if len(r):
            t0 = time.perf_counter()
            r.search(probe, k=1)
            out[name] = (time.perf_counter() - t0) * 1000.0
    return out


def _presentation(name: str, retriever: Retriever) -> tuple[str, str | None]:
    """(title, description) of a collection: the ``title`` (else ``name``) and ``description`` of its
    collection fields (``index build --name/--title/--description``, read from the index's manifest by
    :meth:`Retriever.load`) when it has them; the title falls back to the name it is served under."""
    fields = retriever.collection or {}
    title = next((v.strip() for k in ("title", "name") if isinstance(v := fields.get(k), str) and v.strip()), name)
    description = fields.get("description")
    return title, description.strip() if isinstance(description, str) and description.strip() else None


@dataclass
class ServedCollection:
    """One collection as served: its name, title and description, its Retriever and the lock searches take,
    for a page collection its :class:`~sketchsearch.pages.PageIndex` (whose ``retriever`` is this one), and for
    an item collection served with batching its :class:`~.batching.SearchBatcher` (None: each search alone)."""

    name: str
    retriever: Retriever
    # The Retriever makes no thread-safety promise (its item store may hold an sqlite connection, indexes
    # keep scratch buffers), so one collection answers one search at a time; collections run in parallel.
    lock: threading.Lock
    title: str
    description: str | None
    pages: PageIndex | None = None
    batcher: SearchBatcher | None = None

    @property
    def metric(self) -> Metric:
        return "hamming" if self.retriever.binary else "cosine"

    @property
    def kind(self) -> CollectionKind:
        return "items" if self.pages is None else "pages"

    def page_index(self) -> PageIndex:
        """Its page index; 404 naming the collection when it is an item collection."""
        if self.pages is None:
            raise HTTPException(
                404, f"collection {self.name!r} holds items, not pages: it has no page images; see GET /api/collections"
            )
        return self.pages


@dataclass(frozen=True)
class ServiceState:
    """Everything the routes read: the served collections by name, the request limits, and the slots for
    large JSON searches (:meth:`large_search_slot`). :meth:`close` stops the collections' batchers."""

    collections: dict[str, ServedCollection]
    limits: Limits
    large_searches: asyncio.Semaphore = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "large_searches", asyncio.Semaphore(self.limits.max_large_searches))

    @asynccontextmanager
    async def large_search_slot(self, body_bytes: int) -> AsyncIterator[None]:
        """Wait for one of ``limits.max_large_searches`` slots when a JSON search's body is over
        ``limits.large_json_bytes`` (its parsing and encoding hold the interpreter lock for long stretches:
        several at once would stall every other request); smaller searches pass straight through."""
        if body_bytes <= self.limits.large_json_bytes:
            yield
            return
        async with self.large_searches:
            yield

    @classmethod
    def build(
        cls, collections: Mapping[str, Served], limits: Limits, batching: BatchOptions = BatchOptions()
    ) -> ServiceState:
        """Check every name and give each collection its own lock, and each item collection a batcher when
        ``batching`` is on; ValueError when there is none. A Retriever loaded from a page index
        (:meth:`PageIndex.holds_pages`) is served as its page index.

        Page collections are not batched: their search (:meth:`PageIndex.search_encoded
        <sketchsearch.pages.PageIndex.search_encoded>`) takes ``by_page`` and scans a number of candidate boxes
        that depends on ``k``, so a batch would have to be grouped by both; they are searched one by one."""
        if not collections:
            raise ValueError("create_app needs at least one collection (name -> Retriever or PageIndex)")
        served: dict[str, ServedCollection] = {}
        for name, given in collections.items():
            check_name(name)
            if isinstance(given, Retriever) and PageIndex.holds_pages(given):
                given = PageIndex.from_retriever(given)
            pages = given if isinstance(given, PageIndex) else None
            retriever = given.retriever if isinstance(given, PageIndex) else given
            lock = threading.Lock()
            batcher = SearchBatcher(retriever, lock, batching, name) if batching.enabled and pages is None else None
            served[name] = ServedCollection(
                name, retriever, lock, *_presentation(name, retriever), pages=pages, batcher=batcher
            )
        return cls(served, limits)

    def close(self) -> None:
        """Stop the batchers' worker threads (the app's shutdown); searches already queued are answered."""
        for col in self.collections.values():
            if col.batcher is not None:
                col.batcher.close()

    def pick(self, name: str | None) -> ServedCollection:
        """The collection a request names: 404 when it is not served; 422 when none is named and several are."""
        if name is None:
            if len(self.collections) == 1:
                return next(iter(self.collections.values()))
            raise HTTPException(422, f"collection: several are served, name one of {sorted(self.collections)}")
        col = self.collections.get(name)
        if col is None:
            raise HTTPException(404, f"collection {name!r} is not served; known: {sorted(self.collections)}")
        return col


async def get_state(request: Request) -> ServiceState:
    """FastAPI dependency: the :class:`ServiceState` of the app serving ``request``.

    ``async`` so that FastAPI calls it on the event loop instead of sending it to the thread pool.
    """
    state: ServiceState = request.app.state.service
    return state
