"""The REST API (FastAPI's TestClient): searches by strokes and by image, every limit and malformed input.

The collection is tiny and built here: hand-drawn-looking simple shapes (circle, square, triangle, plus,
zigzag) encoded by a parameter-free pixel method (blurred raster, cosine), so a circle query must find
circles. Nothing a client sends may produce a 5xx.
"""

from __future__ import annotations

import io
import json
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from fastapi.testclient import TestClient
from PIL import Image

from sketchsearch.data.render import rasterize
from sketchsearch.data.sketch import Sketch
from sketchsearch.errors import IndexError_
from sketchsearch.methods.base import Method, Preprocessing
from sketchsearch.retrieval import Retriever, thumbnail_png
from sketchsearch.service import Limits, create_app, load_collections, warm_up

SHAPES = ("circle", "square", "triangle", "plus", "zigzag")


# ----------------------------------------------------------------------------------------------- data
def shape_strokes(kind: str, rng: np.random.Generator, box: float = 100.0) -> list[np.ndarray]:
    """A hand-drawn-looking ``kind`` in a [0, box] square (y down): jittered, slightly rotated/scaled."""

    def line(*pts: tuple[float, float], n: int = 12) -> np.ndarray:
        out = [np.linspace(pts[i], pts[i + 1], n, endpoint=False) for i in range(len(pts) - 1)]
        return np.concatenate(out + [np.asarray(pts[-1:], dtype=float)])

    if kind == "circle":
        a0 = rng.uniform(0, 2 * np.pi)
        a = a0 + np.linspace(0, 2 * np.pi * rng.uniform(1.0, 1.08), 48)
        strokes = [np.stack([0.5 + 0.4 * np.cos(a), 0.5 + 0.4 * np.sin(a)], axis=1)]
    elif kind == "square":
        strokes = [line((0.1, 0.1), (0.9, 0.1), (0.9, 0.9), (0.1, 0.9), (0.1, 0.1))]
    elif kind == "triangle":
        strokes = [line((0.5, 0.1), (0.9, 0.9), (0.1, 0.9), (0.5, 0.1))]
    elif kind == "plus":
        strokes = [line((0.5, 0.1), (0.5, 0.9)), line((0.1, 0.5), (0.9, 0.5))]
    elif kind == "zigzag":
        strokes = [line((0.1, 0.2), (0.35, 0.8), (0.5, 0.2), (0.65, 0.8), (0.9, 0.2))]
    else:
        raise ValueError(f"unknown shape {kind!r}; known: {SHAPES}")
    th = np.deg2rad(rng.uniform(-8, 8))
    rot = np.array([[np.cos(th), -np.sin(th)], [np.sin(th), np.cos(th)]])
    s = rng.uniform(0.85, 1.1)
    out = []
    for st in strokes:
        p = (st - 0.5) @ rot.T * s + 0.5 + rng.normal(0, 0.008, size=st.shape)
        out.append((p * box).astype(np.float32))
    return out


def shape_sketch(kind: str, seed: int) -> Sketch:
    strokes = shape_strokes(kind, np.random.default_rng([seed, SHAPES.index(kind)]))
    times, t = [], 0.0
    for st in strokes:
        times.append(t + 16.0 * np.arange(len(st)))
        t = float(times[-1][-1]) + 200.0
    return Sketch(strokes, times, label=kind)


class PixelCosine(Method):
    """Parameter-free float method for tests: the raster average-pooled to (64/pool)^2, compared by cosine."""

    name = "test-pixels"
    output = "float"

    def __init__(self, preprocessing: Preprocessing | None = None, pool: int = 4, reads_points: bool = False) -> None:
        inputs = ("raster", "points") if reads_points else ("raster",)
        super().__init__(preprocessing or Preprocessing(inputs=inputs, raster_size=64, line_width=3.0))
        self.pool = pool

    @property
    def code_size(self) -> int:
        return (self.preprocessing.raster_size // self.pool) ** 2

    def encode_sketch(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        x = F.avg_pool2d(batch["raster"], self.pool)
        return x.flatten(1)


class _NumpyCosine:
    """Exact inner-product search in numpy, used only while ``sketchsearch.index.dense`` is not in the tree."""

    def __init__(self, dim: int) -> None:
        self.x = np.zeros((0, dim), np.float32)
        self.ids = np.zeros(0, np.int64)

    def __len__(self) -> int:
        return len(self.ids)

    def add(self, x: np.ndarray, ids: np.ndarray) -> None:
        self.x, self.ids = np.concatenate([self.x, x]), np.concatenate([self.ids, ids])

    def search(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        sims = q @ self.x.T
        order = np.lexsort((np.broadcast_to(self.ids, sims.shape), -sims), axis=1)[:, :k]
        d, i = np.take_along_axis(sims, order, 1), self.ids[order]
        pad = k - d.shape[1]
        return np.pad(d, ((0, 0), (0, pad)), constant_values=-np.inf), np.pad(i, ((0, 0), (0, pad)), constant_values=-1)


def build_retriever(per_class: int = 6, reads_points: bool = False) -> Retriever:
    """A small in-memory collection of :data:`SHAPES` with thumbnails."""
    method = PixelCosine(reads_points=reads_points)
    try:
        from sketchsearch.index.dense import DenseIndex

        index: Any = DenseIndex(method.code_size)
    except ModuleNotFoundError:
        index = _NumpyCosine(method.code_size)
    r = Retriever(method, index, model_id="test-pixels")
    items = [shape_sketch(kind, seed) for kind in SHAPES for seed in range(per_class)]
    r.add(items, labels=[s.label for s in items], thumbnails=True)
    return r


def png_bytes(img: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def drawing_image(kind: str, seed: int = 99, size: int = 200) -> Image.Image:
    """A drawing as a photo of paper would give it: dark ink on white."""
    ink = rasterize(shape_sketch(kind, seed), size=size, line_width=6)
    return Image.fromarray(((1 - ink) * 255).astype(np.uint8)).convert("RGB")


def strokes_json(sketch: Sketch) -> list[list[dict[str, float]]]:
    assert sketch.times is not None
    return [
        [{"x": float(x), "y": float(y), "t": float(t)} for (x, y), t in zip(s, ts)]
        for s, ts in zip(sketch.strokes, sketch.times)
    ]


def strokes_as(form: str, sketch: Sketch) -> Any:
    """``sketch`` in one of the stroke forms the API reads (see sketchsearch.data.strokes)."""
    assert sketch.times is not None
    if form == "objects":
        return strokes_json(sketch)
    if form == "points":
        return [[[*map(float, p), float(t)] for p, t in zip(s, ts)] for s, ts in zip(sketch.strokes, sketch.times)]
    quickdraw = [[s[:, 0].tolist(), s[:, 1].tolist(), ts.tolist()] for s, ts in zip(sketch.strokes, sketch.times)]
    return quickdraw if form == "quickdraw" else {"drawing": quickdraw, "word": sketch.label}


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` (a decompression-bomb shape) with one tiny IDAT."""

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


# ----------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def shapes() -> Retriever:
    return build_retriever()


@pytest.fixture(scope="module")
def client(shapes: Retriever) -> Iterator[TestClient]:
    limits = Limits(
        max_body_bytes=200_000,
        max_strokes=20,
        max_points=2_000,
        max_image_side=1024,
        max_image_pixels=600_000,
        max_k=50,
    )
    app = create_app({"shapes": shapes, "ordered": build_retriever(per_class=2, reads_points=True)}, limits=limits)
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


def assert_4xx(resp: Any, status: int, *words: str) -> None:
    assert resp.status_code == status, (resp.status_code, resp.text)
    detail = resp.json()["detail"]
    assert isinstance(detail, str) and detail, resp.text
    for w in words:
        assert w.lower() in detail.lower(), (w, detail)


# ----------------------------------------------------------------------------------------------- happy paths
def test_health_and_collections(client: TestClient) -> None:
    h = client.get("/api/health").json()
    assert h["status"] == "ok" and h["collections"] == 2 and h["items"] == 6 * len(SHAPES) + 2 * len(SHAPES)
    cols = {c["name"]: c for c in client.get("/api/collections").json()}
    assert cols["shapes"]["items"] == 30 and cols["shapes"]["metric"] == "cosine"
    assert cols["shapes"]["code_size"] == 256 and cols["shapes"]["method"] == "test-pixels"
    assert (cols["shapes"]["inputs"], cols["ordered"]["inputs"]) == (["raster"], ["raster", "points"])
    # in memory, no index manifest: titled by name, no description
    assert (cols["shapes"]["title"], cols["shapes"]["description"]) == ("shapes", None)


@pytest.mark.parametrize("kind", SHAPES)
def test_search_by_strokes_finds_the_class(client: TestClient, shapes: Retriever, kind: str) -> None:
    query = shape_sketch(kind, seed=1000)
    resp = client.post("/api/search", json={"strokes": strokes_json(query), "k": 5, "collection": "shapes"})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["collection"] == "shapes" and body["metric"] == "cosine" and body["k"] == 5
    assert body["took_ms"] > 0 and "search;dur=" in resp.headers["server-timing"]
    assert body["query"] == {"strokes": len(query.strokes), "points": query.n_points}
    hits = body["hits"]
    assert [h["rank"] for h in hits] == [1, 2, 3, 4, 5]
    assert hits[0]["label"] == kind and sum(h["label"] == kind for h in hits) >= 4
    dists = [h["distance"] for h in hits]
    assert dists == sorted(dists) and all(abs(h["similarity"] - (1 - h["distance"])) < 1e-6 for h in hits)
    # The API answers exactly what the Retriever does (it is the only search path).
    direct = shapes.search(query, k=5)
    assert [h["id"] for h in hits] == [h.id for h in direct]


def test_thumbnail_of_a_hit(client: TestClient, shapes: Retriever) -> None:
    hit = client.post(
        "/api/search",
        json={"strokes": strokes_json(shape_sketch("plus", 7)), "k": 1} | {"collection": "shapes"},
    ).json()["hits"][0]
    resp = client.get(hit["thumbnail_url"])
    assert resp.status_code == 200 and resp.headers["content-type"] == "image/png"
    assert resp.content == shapes.thumbnail(hit["id"])
    assert Image.open(io.BytesIO(resp.content)).size == (96, 96)


def test_strokes_without_times_and_single_points(client: TestClient) -> None:
    q = shape_sketch("circle", 5)
    strokes = [[{"x": float(x), "y": float(y)} for x, y in s] for s in q.strokes] + [[{"x": 50, "y": 50}]]
    resp = client.post("/api/search", json={"strokes": strokes, "collection": "shapes"})
    assert resp.status_code == 200, resp.text
    assert resp.json()["hits"][0]["label"] == "circle" and len(resp.json()["hits"]) == 10


@pytest.mark.parametrize("form", ["objects", "points", "quickdraw", "quickdraw-record"])
def test_every_stroke_form_gives_the_same_search(client: TestClient, shapes: Retriever, form: str) -> None:
    query = shape_sketch("zigzag", 321)
    resp = client.post("/api/search", json={"strokes": strokes_as(form, query), "k": 6, "collection": "shapes"})
    assert resp.status_code == 200, resp.text
    assert resp.json()["query"] == {"strokes": len(query.strokes), "points": query.n_points}
    assert [h["id"] for h in resp.json()["hits"]] == [h.id for h in shapes.search(query, k=6)]


def test_hits_carry_title_source_and_meta_even_when_the_store_has_none(client: TestClient) -> None:
    hits = client.post(
        "/api/search",
        json={"strokes": strokes_json(shape_sketch("square", 8)), "k": 3, "collection": "shapes"},
    ).json()["hits"]
    # the in-memory collection has labels only: the label names the hit
    assert [(h["title"], h["source"], h["meta"]) for h in hits] == [(h["label"], None, {}) for h in hits]


def test_search_by_item_searches_with_its_stored_code(client: TestClient, shapes: Retriever) -> None:
    item = SHAPES.index("triangle") * 6 + 3  # build_retriever added shape_sketch("triangle", 3) under this id
    resp = client.post("/api/search", json={"item": item, "k": 5, "collection": "shapes"})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["query"] == {"item": item}
    hits = body["hits"]
    assert hits[0]["id"] == item and abs(hits[0]["distance"]) < 1e-5 and hits[0]["similarity"] <= 1.0
    assert sum(h["label"] == "triangle" for h in hits) >= 4
    # the same as searching with the drawing the item was made from
    assert [h["id"] for h in hits] == [h.id for h in shapes.search(shape_sketch("triangle", 3), k=5)]
    # a collection whose model reads stroke order is searched by item too (no image is involved)
    ordered = client.post("/api/search", json={"item": 0, "k": 2, "collection": "ordered"})
    assert ordered.status_code == 200 and ordered.json()["hits"][0]["id"] == 0


def test_search_by_unknown_item(client: TestClient) -> None:
    resp = client.post("/api/search", json={"item": 424242, "collection": "shapes"})
    assert_4xx(resp, 404, "424242", "'shapes'", "id of one of its hits")
    assert_4xx(client.post("/api/search", json={"item": 1}), 422, "collection", "shapes")


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
@pytest.mark.parametrize("kind", ["circle", "triangle"])
def test_search_by_image(client: TestClient, kind: str, fmt: str) -> None:
    data = png_bytes(drawing_image(kind), fmt)
    resp = client.post(
        "/api/search",
        files={"image": (f"q.{fmt.lower()}", data, f"image/{fmt.lower()}")},
        data={"k": "3", "collection": "shapes"},
    )
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["query"] == {"width": 200, "height": 200}
    assert [h["label"] for h in body["hits"]] == [kind] * 3


# ----------------------------------------------------------------------------------------------- collections
def test_unknown_collection_is_404_listing_known_ones(client: TestClient) -> None:
    resp = client.post("/api/search", json={"strokes": [[{"x": 1, "y": 2}]], "collection": "nope"})
    assert_4xx(resp, 404, "'nope'", "ordered", "shapes")
    assert_4xx(client.get("/api/items/0/thumbnail", params={"collection": "nope"}), 404, "shapes")


def test_collection_required_when_several(client: TestClient) -> None:
    assert_4xx(client.post("/api/search", json={"strokes": [[{"x": 1, "y": 2}]]}), 422, "collection", "shapes")


def test_single_collection_is_the_default(shapes: Retriever) -> None:
    with TestClient(create_app({"only": shapes}), raise_server_exceptions=False) as c:
        resp = c.post("/api/search", json={"strokes": strokes_json(shape_sketch("square", 3))})
        assert resp.status_code == 200 and resp.json()["collection"] == "only"
        assert resp.json()["hits"][0]["label"] == "square"
        assert c.get(resp.json()["hits"][0]["thumbnail_url"]).status_code == 200
        assert c.get("/api/items/0/thumbnail").status_code == 200


def test_image_query_to_a_stroke_order_model_is_traced(client: TestClient) -> None:
    """A model that reads stroke order gets an uploaded picture's strokes traced from its pixels."""

    def upload(img: Image.Image) -> Any:
        files = {"image": ("q.png", png_bytes(img), "image/png")}
        return client.post("/api/search", files=files, data={"collection": "ordered", "k": "2"})

    resp = upload(drawing_image("circle"))
    assert resp.status_code == 200, resp.text
    assert [h["label"] for h in resp.json()["hits"]] == ["circle", "circle"]
    blot = Image.new("L", (200, 200), 255)
    blot.paste(0, (60, 60, 140, 140))  # ink, but no line to trace: the raster-only "shapes" would take it
    assert_4xx(upload(blot), 422, "image", "no lines to trace")


def test_empty_index_is_a_conflict_not_a_crash() -> None:
    empty = Retriever(PixelCosine(), _NumpyCosine(256), model_id="empty")
    with TestClient(create_app({"empty": empty}), raise_server_exceptions=False) as c:
        assert_4xx(c.post("/api/search", json={"strokes": [[{"x": 1, "y": 2}, {"x": 3, "y": 4}]]}), 409, "empty")


# ----------------------------------------------------------------------------------------------- malformed input
MALFORMED_JSON: list[tuple[str, Any, int, str]] = [
    ("strokes not a list", {"strokes": "circle"}, 422, "strokes: expected a list of strokes"),
    ("point not a point", {"strokes": [[1, 2]]}, 422, "strokes[0][0]: expected a point"),
    ("x not a number", {"strokes": [[{"x": "left", "y": 2}]]}, 422, "strokes[0][0].x"),
    ("y missing", {"strokes": [[{"x": 1}]]}, 422, "strokes[0][0].y"),
    ("negative time", {"strokes": [[{"x": 1, "y": 2, "t": -5}]]}, 422, "strokes[0][0].t"),
    ("unknown field", {"strokes": [[{"x": 1, "y": 2}]], "colour": "red"}, 422, "colour"),
    ("k a word", {"strokes": [[{"x": 1, "y": 2}]], "k": "ten"}, 422, "k"),
    # strict types: no coercion of strings or booleans into numbers
    ("x a numeric string", {"strokes": [[{"x": "1", "y": 2}]]}, 422, "strokes[0][0].x"),
    ("y a boolean", {"strokes": [[{"x": 1, "y": True}]]}, 422, "strokes[0][0].y"),
    ("list point a string", {"strokes": [[[1, 2], [3, "4"]]]}, 422, "strokes[0][1][1]"),
    ("quickdraw rows differ", {"strokes": {"drawing": [[[1, 2, 3], [1, 2]]]}}, 422, "strokes.drawing[0]"),
    ("k a numeric string", {"strokes": [[{"x": 1, "y": 2}]], "k": "5"}, 422, "k"),
    ("k a boolean", {"strokes": [[{"x": 1, "y": 2}]], "k": True}, 422, "k"),
    ("collection a number", {"strokes": [[{"x": 1, "y": 2}]], "collection": 3}, 422, "collection"),
    ("k zero", {"strokes": [[{"x": 1, "y": 2}]], "k": 0}, 422, "k"),
    ("k over the limit", {"strokes": [[{"x": 1, "y": 2}]], "k": 51}, 422, "at most 50"),
    ("body a list", [[{"x": 1, "y": 2}]], 422, "valid dictionary"),
    ("body null", None, 422, "valid dictionary"),
    ("no strokes at all", {"strokes": []}, 422, "no points"),
    ("only empty strokes", {"strokes": [[], []]}, 422, "no points"),
    ("neither strokes nor item", {"k": 3}, 422, "either strokes"),
    ("strokes and item", {"strokes": [[{"x": 1, "y": 2}]], "item": 3}, 422, "not both"),
    ("item negative", {"item": -1}, 422, "item"),
    ("item a numeric string", {"item": "3"}, 422, "item"),
    ("item a boolean", {"item": True}, 422, "item"),
    ("coordinate too large for float32", {"strokes": [[{"x": 1e300, "y": 2}]]}, 422, "32-bit"),
    ("too many strokes", {"strokes": [[{"x": 1, "y": 2}]] * 21}, 413, "at most 20 strokes"),
    (
        "too many points",
        {"strokes": [[{"x": i, "y": 2} for i in range(1001)]] * 2},
        413,
        "at most 2000 points",
    ),
    ("too many points, QuickDraw", {"strokes": {"drawing": [[[0] * 2001, [0] * 2001]]}}, 413, "2000 points"),
]


@pytest.mark.parametrize("case", MALFORMED_JSON, ids=[c[0] for c in MALFORMED_JSON])
def test_malformed_json_gets_a_clear_4xx(client: TestClient, case: tuple[str, Any, int, str]) -> None:
    _, body, status, word = case
    if isinstance(body, dict) and "collection" not in body:
        body = {**body, "collection": "shapes"}
    resp = client.post("/api/search", content=json.dumps(body), headers={"content-type": "application/json"})
    assert_4xx(resp, status, word)


@pytest.mark.parametrize(
    "raw, word",
    [
        (b"{not json", "not valid JSON"),
        (b"", "not valid JSON"),
        (b"\xff\xfe\x00", "not valid JSON"),
        (b"[" * 5_000 + b"]" * 5_000, "not valid JSON"),  # nested past the interpreter's recursion limit
        (b'{"strokes": [[{"x": 1, "y": 1}]], "k": ' + b"9" * 5000 + b"}", "not valid JSON"),  # > 4300 digits
        (b'{"strokes": [[{"x": NaN, "y": 1}]], "collection": "shapes"}', "finite"),
        (b'{"strokes": [[{"x": Infinity, "y": 1}]], "collection": "shapes"}', "finite"),
        (b'{"strokes": [[[0, 0], [1, -Infinity]]], "collection": "shapes"}', "finite"),
    ],
)
def test_bad_json_text(client: TestClient, raw: bytes, word: str) -> None:
    resp = client.post("/api/search", content=raw, headers={"content-type": "application/json"})
    assert_4xx(resp, 400 if "JSON" in word else 422, word)


def test_unsupported_content_type(client: TestClient) -> None:
    assert_4xx(
        client.post("/api/search", content=b"x=1", headers={"content-type": "text/plain"}),
        415,
        "application/json",
    )
    assert_4xx(client.post("/api/search", content=b"x=1"), 415, "multipart/form-data")


def test_body_size_limit_declared_and_streamed(client: TestClient) -> None:
    big = b'{"strokes": [' + b" " * 250_000 + b"]}"
    assert_4xx(
        client.post("/api/search", content=big, headers={"content-type": "application/json"}),
        413,
        "200000 bytes",
    )

    def chunks() -> Iterator[bytes]:  # no Content-Length: chunked transfer, counted as it arrives
        yield b'{"strokes": ['
        for _ in range(30):
            yield b" " * 10_000
        yield b"]}"

    assert_4xx(
        client.post("/api/search", content=chunks(), headers={"content-type": "application/json"}),
        413,
        "bytes",
    )
    assert_4xx(
        client.post("/api/search", content=b"{}", headers={"content-type": "application/json", "content-length": "x"}),
        400,
        "content-length",
    )


# ----------------------------------------------------------------------------------------------- images
def _post_image(client: TestClient, data: bytes, ctype: str = "image/png", **form: str) -> Any:
    return client.post("/api/search", files={"image": ("q", data, ctype)}, data={"collection": "shapes", **form})


def test_decompression_bomb_refused_from_the_header(client: TestClient) -> None:
    assert_4xx(_post_image(client, png_header_only(60_000, 60_000)), 413, "too large")
    assert_4xx(_post_image(client, png_header_only(2000, 10)), 413, "at most 1024 pixels a side")
    # A real, highly compressible image: small file, too many pixels.
    assert_4xx(_post_image(client, png_bytes(Image.new("L", (1000, 1000), 255))), 413, "1000x1000")


@pytest.mark.parametrize(
    "data, words",
    [
        (b"", "the file is empty: choose a drawing saved as PNG or JPEG"),
        (
            b"GIF89a not allowed",
            "that file is not a PNG or JPEG image: choose a drawing saved as PNG or JPEG",
        ),
        (b"hello", "that file is not a PNG or JPEG image: choose a drawing saved as PNG or JPEG"),
        (png_bytes(Image.new("L", (40, 40), 255))[:60], "damaged"),
    ],
    ids=["empty", "gif", "text", "truncated"],
)
def test_unreadable_images_say_what_to_do(client: TestClient, data: bytes, words: str) -> None:
    resp = _post_image(client, data)
    assert_4xx(resp, 422, words, "PNG or JPEG")
    detail = resp.json()["detail"]
    assert "BytesIO" not in detail and "0x" not in detail, detail  # never Pillow's in-memory file


def test_transparent_png_is_read_as_ink_on_white(client: TestClient) -> None:
    # What a canvas exports: dark strokes on fully transparent (0, 0, 0, 0) pixels.
    ink = rasterize(shape_sketch("triangle", 42), size=160, line_width=5)
    rgba = np.zeros((160, 160, 4), np.uint8)
    rgba[..., 3] = (ink * 255).astype(np.uint8)
    resp = _post_image(client, png_bytes(Image.fromarray(rgba, "RGBA")), k="3")
    assert resp.status_code == 200, resp.text
    assert [h["label"] for h in resp.json()["hits"]] == ["triangle"] * 3


def test_gif_is_not_accepted_even_when_valid(client: TestClient) -> None:
    assert_4xx(_post_image(client, png_bytes(drawing_image("circle"), "GIF"), "image/gif"), 422, "png or jpeg")


def test_blank_image_is_refused_as_having_no_ink(client: TestClient) -> None:
    assert_4xx(_post_image(client, png_bytes(Image.new("RGB", (64, 64), "white"))), 422, "no ink")


@pytest.mark.parametrize(
    "form, word",
    [
        ({"k": "many"}, "integer"),
        ({"k": "0"}, ">= 1"),
        ({"k": "99"}, "at most 50"),
        ({"k": "1e3"}, "integer"),
    ],
)
def test_image_form_fields(client: TestClient, form: dict[str, str], word: str) -> None:
    assert_4xx(_post_image(client, png_bytes(drawing_image("circle")), **form), 422, word)


def test_multipart_without_image(client: TestClient) -> None:
    assert_4xx(
        client.post("/api/search", data={"k": "3", "collection": "shapes"}, files={"other": ("x", b"1", "text/plain")}),
        422,
        "'image'",
    )
    assert_4xx(
        client.post("/api/search", data={"image": "not a file", "collection": "shapes"}, files={"x": ("x", b"1")}),
        422,
        "'image'",
    )


# ----------------------------------------------------------------------------------------------- thumbnails
@pytest.mark.parametrize(
    "path, status",  # %2F decodes to '/', so those paths match no route at all: 404
    [
        ("/api/items/..%2F..%2Fpyproject.toml/thumbnail", 404),
        ("/api/items/%2Fetc%2Fpasswd/thumbnail", 404),
        ("/api/items/-1/thumbnail", 422),
        ("/api/items/1.5/thumbnail", 422),
        ("/api/items/abc/thumbnail", 422),
        (f"/api/items/{2**70}/thumbnail", 422),
        ("/api/items/999999/thumbnail", 404),
        ("/api/items/../../pyproject.toml", 404),
        ("/static/..%2F..%2Fapp.py", 404),
        ("/static/../app.py", 404),
    ],
)
def test_path_like_ids_never_reach_the_file_system(client: TestClient, path: str, status: int) -> None:
    resp = client.get(path, params={"collection": "shapes"})
    assert resp.status_code == status, (path, resp.status_code, resp.text)
    assert b"def create_app" not in resp.content and b"[project]" not in resp.content


def test_thumbnail_of_unknown_item_names_it(client: TestClient) -> None:
    assert_4xx(client.get("/api/items/424242/thumbnail", params={"collection": "shapes"}), 404, "424242")


# ----------------------------------------------------------------------------------------------- page, docs, CORS
def test_page_is_served_offline_with_a_strict_csp(client: TestClient) -> None:
    page = client.get("/")
    assert page.status_code == 200 and "<canvas" in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"]
    for asset in ("/static/app.js", "/static/style.css"):
        r = client.get(asset)
        assert r.status_code == 200 and len(r.content) > 500
        assert "http://" not in r.text and "https://" not in r.text, f"{asset} must not load anything remote"
    assert "http://" not in page.text and "https://" not in page.text


def test_api_docs_are_served_offline(client: TestClient) -> None:
    page = client.get("/docs")
    assert page.status_code == 200 and "/openapi.json" in page.text
    assert "https://" not in page.text and "http://" not in page.text, "/docs must not load a CDN"
    for asset in ("/docs-static/swagger-ui-bundle.js", "/docs-static/swagger-ui.css"):
        r = client.get(asset)
        assert r.status_code == 200 and len(r.content) > 10_000, asset
    assert client.get("/redoc").status_code == 404


def test_openapi_documents_both_request_bodies(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    body = spec["paths"]["/api/search"]["post"]["requestBody"]["content"]
    assert set(body) == {"application/json", "multipart/form-data"}
    req = spec["components"]["schemas"]["SearchRequest"]["properties"]
    assert {"strokes", "item", "k", "collection", "by_page"} == set(req)
    forms = req["strokes"]["anyOf"]
    assert set(forms[0]["items"]["items"]["properties"]) == {"x", "y", "t"}  # the page's form
    assert len(forms) == 4 and "QuickDraw" in req["strokes"]["description"]
    assert {"title", "source", "meta"} <= set(spec["components"]["schemas"]["HitOut"]["properties"])
    assert {"title", "description"} <= set(spec["components"]["schemas"]["CollectionInfo"]["properties"])
    assert {"/api/items/{item_id}/thumbnail", "/api/collections", "/api/health"} <= set(spec["paths"])


def test_openapi_is_version_3_0_for_the_bundled_swagger_ui(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    assert spec["openapi"].startswith("3.0."), spec["openapi"]  # Swagger UI 4.15 renders no 3.1 document

    def schemas_3_1_only(node: Any, where: str) -> Iterator[str]:
        if isinstance(node, list):
            for i, n in enumerate(node):
                yield from schemas_3_1_only(n, f"{where}[{i}]")
        elif isinstance(node, dict):
            if node.get("type") == "null" or isinstance(node.get("type"), list) or "const" in node:
                yield where
            for key, value in node.items():
                yield from schemas_3_1_only(value, f"{where}.{key}")

    assert list(schemas_3_1_only(spec, "$")) == []
    label = spec["components"]["schemas"]["HitOut"]["properties"]["label"]
    assert label["type"] == "string" and label["nullable"] is True  # was anyOf [string, null]


def test_cors_off_unless_asked(shapes: Retriever) -> None:
    hdr = {"origin": "https://elsewhere.example"}
    with TestClient(create_app({"s": shapes})) as c:
        assert "access-control-allow-origin" not in c.get("/api/health", headers=hdr).headers
    with TestClient(create_app({"s": shapes}, cors_origins=["https://elsewhere.example"])) as c:
        assert c.get("/api/health", headers=hdr).headers["access-control-allow-origin"] == "https://elsewhere.example"


def test_create_app_checks_its_arguments(shapes: Retriever) -> None:
    with pytest.raises(ValueError, match="at least one"):
        create_app({})
    with pytest.raises(ValueError, match="not valid"):
        create_app({"../x": shapes})
    with pytest.raises(ValueError, match="max_k"):
        Limits(max_k=0)


# ----------------------------------------------------------------------------------------------- loading
def test_load_collections_failure_names_collection_and_folder(tmp_path: Any) -> None:
    missing = tmp_path / "no-such-index"
    with pytest.raises(IndexError_, match=r"collection 'demo'.*no-such-index"):
        load_collections([("demo", None, missing)])
    with pytest.raises(ValueError, match="not valid"):
        load_collections([("a b", None, missing)])


def test_serve_command_stops_with_a_clear_message(tmp_path: Any) -> None:
    import typer
    from typer.testing import CliRunner

    from sketchsearch.cli.serve import register

    app = typer.Typer()
    register(app)

    @app.command("noop", hidden=True)
    def _noop() -> None:  # a second command keeps `serve` a named sub-command
        pass

    res = CliRunner().invoke(app, ["serve", "--index", str(tmp_path / "missing-index"), "--port", "0"])
    assert res.exit_code == 2, res.output
    assert "missing-index" in res.output and "Traceback" not in res.output


def test_json_roundtrip_of_a_real_page_payload(client: TestClient) -> None:
    # What app.js sends: CSS pixels, y down, t in ms (rounded to 0.1), plus collection and k.
    a = np.linspace(0, 2 * np.pi, 60)
    pts = [
        {"x": round(200 + 120 * np.cos(t), 1), "y": round(180 + 110 * np.sin(t), 1), "t": round(i * 16.7, 1)}
        for i, t in enumerate(a)
    ]
    resp = client.post(
        "/api/search",
        content=json.dumps({"strokes": [pts], "k": 12, "collection": "shapes"}),
        headers={"content-type": "application/json"},
    )
    assert resp.status_code == 200 and resp.json()["hits"][0]["label"] == "circle"


# ----------------------------------------------------------------------------------------------- binary codes
def shape_items() -> list[Sketch]:
    """The binary collection's drawings, in order: 6 of each shape."""
    return [shape_sketch(kind, seed) for kind in SHAPES for seed in range(6)]


def lsh_retriever() -> Retriever:
    """A binary (Hamming) collection of the shapes (:func:`shape_items`): 64-bit LSH."""
    from sketchsearch.methods import create_method

    method = create_method("lsh", nbits=64)
    items = shape_items()
    method.fit(items)
    r = Retriever(method, model_id="test-lsh-64")
    r.add(items, labels=[s.label for s in items], thumbnails=True)
    return r


def test_binary_collection_reports_hamming_distances() -> None:
    r = lsh_retriever()
    items = shape_items()
    with TestClient(create_app({"lsh": r}), raise_server_exceptions=False) as c:
        q = shape_sketch("zigzag", 500)
        body = c.post("/api/search", json={"strokes": strokes_json(q), "k": 8}).json()
        assert body["metric"] == "hamming"
        hits = body["hits"]
        direct = r.search(q, k=8)
        assert [(h["id"], h["distance"]) for h in hits] == [(h.id, float(h.distance)) for h in direct]
        assert all(float(h["distance"]).is_integer() and 0 <= h["distance"] <= 64 for h in hits)
        assert all(abs(h["similarity"] - (1 - h["distance"] / 64)) < 1e-9 for h in hits)
        assert c.get("/api/collections").json()[0]["code_size"] == 64
        # by item: its packed code is the query; it finds itself at 0 bits
        by_item = c.post("/api/search", json={"item": 7, "k": 8}).json()["hits"]
        assert by_item[0]["id"] == 7 and by_item[0]["distance"] == 0
        assert [h["id"] for h in by_item] == [h.id for h in r.search(items[7], k=8)]


def test_saved_index_served_through_load_collections(tmp_path: Any) -> None:
    pytest.importorskip("sketchsearch.index.store", reason="the on-disk index store is not in the tree yet")
    from sketchsearch.methods import create_method
    from sketchsearch.model import save_model

    method = create_method("lsh", nbits=64)
    items = [shape_sketch(kind, seed) for kind in SHAPES for seed in range(4)]
    method.fit(items)
    save_model(method, tmp_path / "lsh64")
    r = Retriever.from_model(tmp_path / "lsh64")
    r.add(items, labels=[s.label for s in items], thumbnails=True)
    r.save(tmp_path / "index")
    cols = load_collections([("saved", tmp_path / "lsh64", tmp_path / "index")])
    with TestClient(create_app(cols), raise_server_exceptions=False) as c:
        q = shape_sketch("circle", 77)
        hits = c.post("/api/search", json={"strokes": strokes_json(q), "k": 5}).json()["hits"]
        assert [h["id"] for h in hits] == [h.id for h in r.search(q, k=5)]
        assert set(warm_up(cols)) == {"saved"}
        thumb = c.get(hits[0]["thumbnail_url"])
        assert thumb.status_code == 200 and thumb.content == r.thumbnail(hits[0]["id"])


def test_saved_collection_shows_its_title_and_each_items_source_and_metadata(tmp_path: Path) -> None:
    from sketchsearch.index.store import save_index
    from sketchsearch.methods import create_method
    from sketchsearch.model import save_model

    method = create_method("lsh", nbits=64)
    items = [shape_sketch(kind, seed) for kind in SHAPES for seed in range(2)]
    method.fit(items)
    save_model(method, tmp_path / "lsh64")
    r = Retriever.from_model(tmp_path / "lsh64")
    ids = r.add(items, labels=[s.label for s in items])
    rows: list[dict[str, Any]] = [
        {
            "id": int(i),
            "label": s.label,
            "source": f"scans/{s.label}/{s.label}-{n:02d}.png",
            "thumbnail": thumbnail_png(s),
        }
        for n, (i, s) in enumerate(zip(ids, items))
    ]
    rows[0]["meta"] = {
        "title": "A circle, 1911",
        "date": "1911-05-02",
        "place": "Paris",
        "url": "https://example.org/c/1",
        "sheet": 12,
        "notes": None,  # absent values and nested ones are left out
        "scan": {"dpi": 300},
    }
    rows[1]["meta"] = None  # an item the sidecar had no row for
    rows[2].update(label=None, source=None)
    save_index(r.index, tmp_path / "index", model_id=r.model_id, items=rows, model_name=str(tmp_path / "lsh64"))
    manifest_path = tmp_path / "index" / "manifest.json"
    # as `index build --title ... --description ...` records them
    manifest = json.loads(manifest_path.read_text()) | {
        "title": "Shapes of 1911",
        "description": "Drawn by hand.",
    }
    manifest_path.write_text(json.dumps(manifest))

    with TestClient(create_app(load_collections([("shapes-1911", None, tmp_path / "index")]))) as c:
        [info] = c.get("/api/collections").json()
        assert (info["name"], info["title"], info["description"]) == (
            "shapes-1911",
            "Shapes of 1911",
            "Drawn by hand.",
        )
        hits = {h["id"]: h for h in c.post("/api/search", json={"item": 0, "k": 10}).json()["hits"]}
    assert len(hits) == 10 and hits[0]["rank"] == 1
    assert hits[0]["title"] == "A circle, 1911" and hits[0]["source"] == "scans/circle/circle-00.png"
    assert hits[0]["meta"] == {
        "title": "A circle, 1911",
        "date": "1911-05-02",
        "place": "Paris",
        "url": "https://example.org/c/1",
        "sheet": "12",
    }
    assert (hits[1]["title"], hits[1]["meta"]) == ("circle-01.png", {})  # meta None: named by its file
    assert (hits[2]["title"], hits[2]["label"], hits[2]["source"]) == ("item 2", None, None)
    assert (hits[3]["title"], hits[3]["label"], hits[3]["meta"]) == (
        "square-03.png",
        "square",
        {},
    )  # no meta key


def test_run_server_refuses_a_busy_port_before_printing_the_address(
    capsys: pytest.CaptureFixture[str],
) -> None:
    import socket

    from sketchsearch.cli.serve import run_server
    from sketchsearch.errors import SketchSearchError

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(SketchSearchError, match=f"cannot listen on 127.0.0.1:{port}.*--port"):
            run_server(object(), "127.0.0.1", port)
    assert "open http" not in capsys.readouterr().out


def test_serve_names_collections_by_their_manifests_slug_and_title(tmp_path: Path) -> None:
    """`serve --index A --index B` without --name: each collection's id is the slug `index build --name`
    made, its title the manifest's; an index without them is named by its folder."""
    import typer

    from sketchsearch.cli.serve import collection_specs
    from sketchsearch.index.store import collection_fields, save_index
    from sketchsearch.methods import create_method
    from sketchsearch.model import save_model

    method = create_method("lsh", nbits=64)
    items = [shape_sketch(kind, 0) for kind in SHAPES]
    method.fit(items)
    save_model(method, tmp_path / "lsh64")

    def index(folder: Path, collection: dict[str, Any] | None) -> Path:
        r = Retriever.from_model(tmp_path / "lsh64")
        r.add(items, labels=[s.label for s in items])
        save_index(
            r.index,
            folder,
            model_id=r.model_id,
            model_name=str(tmp_path / "lsh64"),
            items=[{"id": i, "label": s.label} for i, s in enumerate(items)],
            collection=collection,
        )
        return folder

    marks = index(tmp_path / "index", collection_fields("Merchant marks of Bristol", None, "Scanned, 1650-1700."))
    titled = index(tmp_path / "idx2", collection_fields("Shapes", "Shapes, drawn by hand"))
    plain = index(tmp_path / "plain-shapes", None)  # an index written before collections had names
    specs = collection_specs([marks, titled, plain], None, None)
    assert [name for name, _, _ in specs] == ["merchant-marks-of-bristol", "shapes", "plain-shapes"]
    with TestClient(create_app(load_collections(specs))) as c:
        cols = {col["name"]: col for col in c.get("/api/collections").json()}
    assert [(n, c["title"], c["description"]) for n, c in cols.items()] == [
        ("merchant-marks-of-bristol", "Merchant marks of Bristol", "Scanned, 1650-1700."),
        ("shapes", "Shapes, drawn by hand", None),
        ("plain-shapes", "plain-shapes", None),
    ]
    # --name still wins; two indexes of one name are refused with what to do
    assert [n for n, _, _ in collection_specs([marks, plain], None, ["a", "b"])] == ["a", "b"]
    with pytest.raises(typer.BadParameter, match=r"\['shapes'\] repeat: give each --index a --name"):
        collection_specs([titled, titled], None, None)
