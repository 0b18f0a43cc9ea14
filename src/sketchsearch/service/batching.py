"""Micro-batching of an item collection's searches: the drawings that arrive together are encoded in one
forward pass of the model and scanned in one search of the index.

Why: a search by itself pays a batch-of-one forward pass (sketchmate-quickdraw-64, CNN + GRU: ~9.6 ms a
drawing alone on one CPU thread, ~4.5 ms a drawing in batches of 32, preparation included) and a scan of every
code of the collection. Under concurrent clients, one pass over many drawings and one scan for many queries
(the codes read once for all of them) cost less than as many single ones. FastAPI and uvicorn have no request
batching, so it is done here by hand.

How: each item collection has one :class:`SearchBatcher`: a queue and one worker thread (started at its
first search). A search, on its thread-pool thread, puts its drawing (or an item's stored code) and its ``k``
on the queue and waits for its own future. The worker takes the first one, then whatever else arrives within
``max_wait_ms`` of it, up to ``max_batch``; encodes the drawings in one :meth:`Retriever.encode
<sketchsearch.retrieval.Retriever.encode>`, scans all the codes in one :meth:`Retriever.search_encoded
<sketchsearch.retrieval.Retriever.search_encoded>` for the largest ``k`` under the collection's lock, and
gives each search its own row cut to its own ``k`` (the index contract orders hits by distance, then id, so
the first ``k`` of more are the top ``k``). What the route does before (parsing, validation, limits) and after
(item rows, the answer) is unchanged, on the request's own thread.

Errors stay with their search: when the batch's forward pass fails, its drawings are encoded again one by one,
so only the failing one gets the error (the same one it would get alone); a scan error (an empty index) is
every search's own. The worker itself never stops on an error.
"""

from __future__ import annotations

import math
import queue
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..retrieval import Query, Retriever

__all__ = ["MAX_BATCH", "MAX_WAIT_MS", "BatchOptions", "SearchBatcher"]

MAX_BATCH = 1024
"""The largest ``max_batch`` accepted (a search's thread waits in the thread pool, whose 40 threads bound what
one batch gathers anyway)."""
MAX_WAIT_MS = 1000.0
"""The longest ``max_wait_ms`` accepted."""


@dataclass(frozen=True)
class BatchOptions:
    """How searches are batched: at most ``max_batch`` together, gathered for at most ``max_wait_ms`` after the
    first arrived (0: take what is queued, never wait). ``max_batch = 1`` turns batching off: every search
    encodes and scans alone on its own thread, as before batching."""

    max_batch: int = 32
    max_wait_ms: float = 0.0  # measured (benchmarks/results/service_*.md, 2 workers, quiet 2-core machine):
    # SketchMate 0.41x health throughput with 0 ms, 0.38x with 2 ms, 0.35x unbatched; a wait only adds latency

    def __post_init__(self) -> None:
        b, w = self.max_batch, self.max_wait_ms
        if isinstance(b, bool) or not isinstance(b, int) or not 1 <= b <= MAX_BATCH:
            raise ValueError(f"batch max must be an integer from 1 to {MAX_BATCH}, got {b!r}")
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not (math.isfinite(w) and 0 <= w <= MAX_WAIT_MS):
            raise ValueError(f"batch wait must be from 0 to {MAX_WAIT_MS:g} ms, got {w!r}")

    @property
    def enabled(self) -> bool:
        return self.max_batch > 1


@dataclass
class _Search:
    """One queued search: a drawing to encode (``query``) or a code (``code``, (1, width)), its ``k``, and the
    future its thread waits on: (distances (k,), ids (k,), how many searches were scanned together)."""

    k: int
    query: Query | None
    code: np.ndarray | None
    queued: float = field(default_factory=time.monotonic)
    future: Future[tuple[np.ndarray, np.ndarray, int]] = field(default_factory=Future)


_STOP = object()


class SearchBatcher:
    """One collection's batcher (see the module's docstring): :meth:`search` from any thread, :meth:`close` at
    shutdown. ``lock``: the collection's, taken for the scan (the Retriever makes no thread-safety promise)."""

    def __init__(self, retriever: Retriever, lock: threading.Lock, options: BatchOptions, name: str = "") -> None:
        self.retriever, self.lock, self.options, self.name = retriever, lock, options, name
        self._start = threading.Lock()
        self._queue: queue.SimpleQueue[Any] | None = None
        self._thread: threading.Thread | None = None

    def search(
        self, k: int, *, query: Query | None = None, code: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray, int]:
        """Search for ``query`` (a validated drawing, encoded in the batch) or ``code`` (an encoded one, (1,
        width)); blocks until its batch is done. (distances (k,), ids (k,), the batch's size); raises what the
        search raised."""
        if (query is None) == (code is None):
            raise ValueError("give a query or a code")
        item = _Search(k, query, code)
        with self._start:
            if self._queue is None:  # the first search (or the first after close) starts the worker
                self._queue = queue.SimpleQueue()
                self._thread = threading.Thread(
                    target=self._work, args=(self._queue,), name=f"sketchsearch-batch-{self.name}", daemon=True
                )
                self._thread.start()
            self._queue.put(item)
        return item.future.result()

    def close(self) -> None:
        """Stop the worker once the searches already queued are answered (a later search starts another)."""
        with self._start:
            q, thread, self._queue, self._thread = self._queue, self._thread, None, None
        if q is not None and thread is not None:
            q.put(_STOP)
            thread.join(10)

    # -------------------------------------------------------------------------------------------- worker
    def _work(self, q: queue.SimpleQueue[Any]) -> None:
        wait_s = self.options.max_wait_ms / 1000.0
        while True:
            first = q.get()
            if first is _STOP:
                return
            batch = [first]
            stop = False
            # wait from when the first search arrived: one that queued while the last batch ran waits no more
            deadline = first.queued + wait_s
            while len(batch) < self.options.max_batch:
                try:
                    left = deadline - time.monotonic()
                    nxt = q.get(timeout=left) if left > 0 else q.get_nowait()
                except queue.Empty:
                    break
                if nxt is _STOP:
                    stop = True
                    break
                batch.append(nxt)
            self._run(batch)
            if stop:
                return

    def _run(self, batch: Sequence[_Search]) -> None:
        """Encode, scan and answer one batch; every future is resolved, whatever happens."""
        try:
            live = self._encode(batch)
            if live:
                self._scan(live)
        except BaseException as e:  # noqa: BLE001 - handed to the searches waiting on it, never lost
            for s in batch:
                if not s.future.done():
                    s.future.set_exception(e)

    def _encode(self, batch: Sequence[_Search]) -> list[_Search]:
        """Give every drawing of ``batch`` its code (one forward pass); the searches still to scan."""
        todo = [s for s in batch if s.code is None]
        if todo:
            try:
                codes = self.retriever.encode([s.query for s in todo])  # type: ignore[misc]
                for i, s in enumerate(todo):
                    s.code = codes[i : i + 1]
            except Exception:  # noqa: BLE001 - whatever failed the batch, each drawing is tried alone below
                # one drawing failed the batch's pass: encode each alone, so that only it fails, with the error
                # it gets by itself
                for s in todo:
                    try:
                        s.code = self.retriever.encode([s.query])  # type: ignore[list-item]
                    except Exception as e:  # noqa: BLE001 - this search's own error
                        s.future.set_exception(e)
        return [s for s in batch if not s.future.done()]

    def _scan(self, live: Sequence[_Search]) -> None:
        codes = np.concatenate([s.code for s in live])  # type: ignore[misc]
        with self.lock:
            dist, ids = self.retriever.search_encoded(codes, max(s.k for s in live))
        for i, s in enumerate(live):
            s.future.set_result((dist[i, : s.k], ids[i, : s.k], len(live)))
