"""Request batching (sketchsearch.service.batching): concurrent searches of an item collection are encoded in
one forward pass and scanned in one search, and answer exactly what each search alone does; a bad search fails
alone; ``max_batch = 1`` searches one by one; the options are checked, on the command line as one plain line.

Requests are sent concurrently through httpx's ASGI transport (``asyncio.gather``); the batch's size comes back
in the answer's ``Server-Timing`` header (``batch;desc="N"``).
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from test_service import SHAPES, build_retriever, lsh_retriever, shape_sketch, strokes_json
from typer.testing import CliRunner

from sketchsearch.cli import app as cli_app
from sketchsearch.data.sketch import Sketch
from sketchsearch.errors import IndexError_, InvalidSketchError
from sketchsearch.retrieval import Retriever
from sketchsearch.service import Limits, create_app
from sketchsearch.service.batching import BatchOptions, SearchBatcher

OFF = BatchOptions(max_batch=1)


# ----------------------------------------------------------------------------------------------- helpers
def count_encodes(r: Retriever, refuse: Callable[[Sequence[Any]], bool] | None = None) -> list[int]:
    """Wrap ``r.encode`` (on the instance) to record each call's number of queries; ``refuse(items)`` true ->
    InvalidSketchError, as an encoder refusing a drawing would."""
    calls: list[int] = []
    encode = r.encode

    def counted(items: Sequence[Any], modality: str = "sketch") -> np.ndarray:
        calls.append(len(items))
        if refuse is not None and refuse(items):
            raise InvalidSketchError("three strokes: this test's encoder refuses them", "strokes")
        return encode(items, modality)

    r.encode = counted  # type: ignore[method-assign]
    return calls


def post_all(app: FastAPI, bodies: Sequence[dict[str, Any]]) -> list[httpx.Response]:
    """POST every body to /api/search at once (one asyncio.gather through the ASGI transport)."""

    async def run() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test", timeout=60) as c:
            return list(await asyncio.gather(*(c.post("/api/search", json=b) for b in bodies)))

    try:
        return asyncio.run(run())
    finally:
        app.state.service.close()


def batch_of(resp: httpx.Response) -> int | None:
    m = re.search(r'batch;desc="(\d+)"', resp.headers["server-timing"])
    return int(m.group(1)) if m else None


def without_time(resp: httpx.Response) -> dict[str, Any]:
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body.pop("took_ms") > 0
    return body


def mixed_bodies(collection: str) -> list[dict[str, Any]]:
    """Drawings of every shape with different k, and searches by item: one batch of each kind of search."""
    bodies = [
        {"strokes": strokes_json(shape_sketch(kind, 500 + i)), "k": k, "collection": collection}
        for i, (kind, k) in enumerate(zip(SHAPES * 2, (1, 3, 5, 10, 30, 2, 4, 7, 12, 50)))
    ]
    return bodies + [{"item": item, "k": k, "collection": collection} for item, k in ((0, 5), (13, 12), (29, 1))]


@pytest.fixture(scope="module")
def collections() -> dict[str, Retriever]:
    return {"shapes": build_retriever(), "lsh": lsh_retriever()}


# ----------------------------------------------------------------------------------------------- batched = alone
@pytest.mark.parametrize("collection", ["shapes", "lsh"])
def test_concurrent_searches_are_one_batch_and_answer_what_each_alone_does(
    collections: dict[str, Retriever], collection: str
) -> None:
    bodies = mixed_bodies(collection)
    alone = post_all(create_app(collections, batching=OFF), bodies)
    assert all(batch_of(r) is None for r in alone)
    calls = count_encodes(collections[collection])
    try:
        # the batch closes when all have arrived (max_batch), long before the wait
        batched_app = create_app(collections, batching=BatchOptions(max_batch=len(bodies), max_wait_ms=1000))
        batched = post_all(batched_app, bodies)
    finally:
        del collections[collection].encode  # the wrapper: the class's method again
    assert calls == [10]  # the 10 drawings in one forward pass; the 3 items use their stored codes
    assert [batch_of(r) for r in batched] == [len(bodies)] * len(bodies)  # and all 13 in one scan
    for a, b, body in zip(alone, batched, bodies):
        assert without_time(b) == without_time(a)  # same ids, distances, order, titles
        assert len(b.json()["hits"]) == min(body["k"], 30)
    # ... which is what the Retriever answers
    q = shape_sketch(SHAPES[1], 501)
    assert [h["id"] for h in batched[1].json()["hits"]] == [h.id for h in collections[collection].search(q, k=3)]


def test_the_default_options_batch_what_is_queued(collections: dict[str, Retriever]) -> None:
    """Defaults (32 searches, no wait): every search answered, in batches of 1 up to what arrived together."""
    bodies = mixed_bodies("lsh") * 3
    answers = post_all(create_app(collections), bodies)
    sizes = [batch_of(r) for r in answers]
    assert all(r.status_code == 200 for r in answers) and all(s is not None and 1 <= s <= 32 for s in sizes)
    alone = post_all(create_app(collections, batching=OFF), bodies)
    assert [without_time(r) for r in answers] == [without_time(r) for r in alone]


# ----------------------------------------------------------------------------------------------- errors stay alone
def test_a_bad_search_fails_alone_with_the_status_it_gets_alone(collections: dict[str, Retriever]) -> None:
    good = mixed_bodies("shapes")[:6]
    three = Sketch([np.array([[0, 0], [9, 9]], np.float32)] * 3)  # valid; refused by this test's encoder
    bad = [
        {"strokes": [[], []], "collection": "shapes"},  # no points: refused before joining a batch
        {"item": 4242, "collection": "shapes"},  # not in the collection
        {"strokes": [[{"x": float(x), "y": float(y)} for x, y in s] for s in three.strokes], "collection": "shapes"},
    ]
    bodies = good[:3] + bad + good[3:]
    r = collections["shapes"]
    calls = count_encodes(r, refuse=lambda items: any(len(q.strokes) == 3 for q in items))
    try:
        alone = post_all(create_app(collections, batching=OFF), bodies)
        del calls[:]
        batched_app = create_app(collections, batching=BatchOptions(max_batch=len(bodies) - 2, max_wait_ms=1000))
        batched = post_all(batched_app, bodies)
    finally:
        del r.encode
    # the batch of 7 drawings failed in the encoder; each was encoded again alone, and only one failed
    assert calls == [7] + [1] * 7
    statuses = [a.status_code for a in batched]
    assert statuses == [200, 200, 200, 422, 404, 422, 200, 200, 200], [a.text for a in batched]
    assert "no points" in batched[3].json()["detail"] and "4242" in batched[4].json()["detail"]
    assert batched[5].json()["detail"] == "strokes: three strokes: this test's encoder refuses them"
    for a, b in zip(alone, batched):
        assert b.status_code == a.status_code
        assert (without_time(b) if b.status_code == 200 else b.json()) == (
            without_time(a) if a.status_code == 200 else a.json()
        )
    assert {batch_of(b) for b in batched if b.status_code == 200} == {6}  # the 6 good ones, scanned together


def test_an_empty_collection_is_a_conflict_for_every_search_of_the_batch() -> None:
    empty = Retriever(build_retriever(per_class=1).method, model_id="empty")
    body = {"strokes": strokes_json(shape_sketch("circle", 1))}
    answers = post_all(create_app({"empty": empty}, batching=BatchOptions(max_batch=3, max_wait_ms=1000)), [body] * 3)
    assert [a.status_code for a in answers] == [409] * 3 and all("empty" in a.json()["detail"] for a in answers)


def test_the_batcher_answers_each_search_and_survives_errors() -> None:
    r = lsh_retriever()
    calls = count_encodes(r, refuse=lambda items: any(len(q.strokes) == 3 for q in items))
    batcher = SearchBatcher(r, threading.Lock(), BatchOptions(max_batch=4, max_wait_ms=1000), "t")
    queries: list[Any] = [shape_sketch("plus", 1), Sketch([np.array([[0, 0], [5, 5]], np.float32)] * 3)]
    queries += [shape_sketch("circle", 2), r.encode([shape_sketch("square", 3)])]
    del calls[:]
    out: list[Any] = [None] * 4

    def one(i: int) -> None:
        kw = {"code": queries[i]} if isinstance(queries[i], np.ndarray) else {"query": queries[i]}
        try:
            out[i] = batcher.search(3 + i, **kw)
        except InvalidSketchError as e:
            out[i] = e

    threads = [threading.Thread(target=one, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert isinstance(out[1], InvalidSketchError) and calls == [3, 1, 1, 1]
    for i in (0, 2, 3):
        dist, ids, size = out[i]
        assert size == 3 and dist.shape == ids.shape == (3 + i,)
        q = queries[i] if isinstance(queries[i], np.ndarray) else r.encode([queries[i]])
        want_d, want_ids = r.search_encoded(q, 3 + i)
        assert np.array_equal(ids, want_ids[0]) and np.array_equal(dist, want_d[0])
    # closed, then used again: a new worker starts
    batcher.close()
    dist, ids, size = batcher.search(2, query=shape_sketch("zigzag", 4))
    assert size == 1 and len(ids) == 2
    batcher.close()
    with pytest.raises(ValueError, match="a query or a code"):
        batcher.search(2)
    empty = SearchBatcher(Retriever(r.method), threading.Lock(), BatchOptions(max_wait_ms=0))
    with pytest.raises(IndexError_, match="empty"):
        empty.search(1, code=q)
    empty.close()


# ----------------------------------------------------------------------------------------------- off, options
def test_batch_max_1_searches_each_alone(collections: dict[str, Retriever]) -> None:
    app = create_app(collections, batching=OFF)
    assert all(c.batcher is None for c in app.state.service.collections.values())
    r = collections["lsh"]
    calls = count_encodes(r)
    try:
        answers = post_all(app, mixed_bodies("lsh")[:5])
    finally:
        del r.encode
    assert calls == [1] * 5 and all(a.status_code == 200 and batch_of(a) is None for a in answers)


def test_uploads_are_searched_alone_and_the_app_stops_its_batchers(collections: dict[str, Retriever]) -> None:
    from test_service import drawing_image, png_bytes

    app = create_app(collections, limits=Limits(max_k=50))
    batcher = app.state.service.collections["shapes"].batcher
    with TestClient(app) as c:
        files = {"image": ("q.png", png_bytes(drawing_image("circle")), "image/png")}
        up = c.post("/api/search", files=files, data={"collection": "shapes", "k": "3"})
        assert up.status_code == 200 and batch_of(up) is None  # not batched: its preparation is large
        assert batcher._thread is None
        drawn = c.post("/api/search", json={"strokes": strokes_json(shape_sketch("circle", 3)), "collection": "shapes"})
        assert drawn.status_code == 200 and batch_of(drawn) == 1
        worker = batcher._thread
        assert worker is not None and worker.is_alive()
    assert not worker.is_alive() and batcher._thread is None  # the app's shutdown stopped it


@pytest.mark.parametrize(
    "kw, word",
    [
        ({"max_batch": 0}, "batch max"),
        ({"max_batch": 2000}, "batch max"),
        ({"max_batch": True}, "batch max"),
        ({"max_batch": 2.0}, "batch max"),
        ({"max_wait_ms": -1}, "batch wait"),
        ({"max_wait_ms": float("nan")}, "batch wait"),
        ({"max_wait_ms": 5000}, "batch wait"),
    ],
)
def test_batch_options_are_checked(kw: dict[str, Any], word: str) -> None:
    with pytest.raises(ValueError, match=word):
        BatchOptions(**kw)


@pytest.fixture(scope="module")
def index_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from sketchsearch.model import save_model

    root = tmp_path_factory.mktemp("batch")
    save_model(lsh_retriever().method, root / "lsh64")
    r = Retriever.from_model(root / "lsh64")
    items = [shape_sketch(kind, seed) for kind in SHAPES for seed in range(2)]
    r.add(items, labels=[s.label for s in items])
    r.save(root / "index")
    return root / "index"


@pytest.fixture
def served(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Any]]:
    """``serve`` up to the point it would listen: the apps it built (torch's thread count, which serve sets,
    restored after)."""
    import torch

    import sketchsearch.cli.serve as serve_mod

    apps: list[Any] = []
    monkeypatch.setattr(serve_mod, "run_server", lambda app, *a, **kw: apps.append(app))
    threads = torch.get_num_threads()
    yield apps
    torch.set_num_threads(threads)


@pytest.mark.parametrize(
    "args, options",
    [
        ([], BatchOptions()),
        (["--batch-max", "8", "--batch-wait-ms", "0"], BatchOptions(max_batch=8, max_wait_ms=0.0)),
        (["--batch-max", "1"], None),
    ],
)
def test_serve_passes_the_batch_options(
    index_folder: Path, served: list[Any], args: list[str], options: BatchOptions | None
) -> None:
    res = CliRunner().invoke(cli_app, ["serve", "--index", str(index_folder), "--name", "c", "--port", "0", *args])
    assert res.exit_code == 0, res.output
    (app,) = served
    batcher = app.state.service.collections["c"].batcher
    assert (batcher.options if batcher is not None else None) == options
    q = {"strokes": strokes_json(shape_sketch("circle", 9)), "k": 2}
    (answer,) = post_all(app, [q])
    assert answer.status_code == 200 and json.loads(answer.text)["hits"][0]["label"] == "circle"


@pytest.mark.parametrize(
    "args, option",
    [
        (["--batch-max", "0"], "--batch-max"),
        (["--batch-max", "many"], "--batch-max"),
        (["--batch-wait-ms", "-1"], "--batch-wait-ms"),
        (["--batch-wait-ms", "2000"], "--batch-wait-ms"),
    ],
)
def test_serve_batch_option_errors_are_one_plain_line(tmp_path: Path, args: list[str], option: str) -> None:
    res = CliRunner().invoke(cli_app, ["serve", "--index", str(tmp_path), *args])
    assert res.exit_code == 2
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and option in lines[0] and "Traceback" not in res.stderr, res.stderr
