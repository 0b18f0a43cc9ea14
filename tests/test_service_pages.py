"""The REST API over a page collection (a page index, :mod:`sketchsearch.pages`), served beside an item collection.

Two generated pages (500 x 700 px, grey paper with noise) carry five marks of the embedded collection, each the
first drawing of its class; the queries are the *second* drawing of a class, so a mark is found as another
hand drew it. Built through the library with fixed window steps (no invariance measurement: fast), saved as an
index folder and loaded back as ``sketchsearch serve`` does.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from test_service import assert_4xx, build_retriever, png_bytes, shape_sketch, strokes_json

from sketchsearch.data.render import rasterize
from sketchsearch.data.sketch import Sketch
from sketchsearch.data.synthetic import default_collection
from sketchsearch.index.store import collection_fields
from sketchsearch.pages import PageIndex, ProposalConfig, box_iou
from sketchsearch.retrieval import Retriever
from sketchsearch.service import Limits, create_app, load_collections

PAGE_W, PAGE_H = 500, 700
MARK_SIDE = 130
#: page file -> the marks on it: (class, top-left corner)
PAGES = {
    "letters/a.png": [("mark_000", (60, 80)), ("mark_010", (300, 250)), ("mark_020", (100, 500))],
    "letters/b.png": [("mark_030", (280, 60)), ("mark_035", (70, 400))],
}
LABELS = [label for marks in PAGES.values() for label, _ in marks]
TITLE = "Letters with marks"

Box = tuple[int, int, int, int]


@cache
def drawings() -> dict[str, list[Sketch]]:
    """The embedded collection's drawings by class (several each)."""
    out: dict[str, list[Sketch]] = {}
    for it in default_collection().items:
        if it.sketch is not None:
            out.setdefault(str(it.label), []).append(it.sketch)
    return out


def make_page(seed: int, marks: list[tuple[str, tuple[int, int]]]) -> tuple[np.ndarray, dict[str, Box]]:
    """A page with ``marks`` (each the first drawing of its class) inked on noisy paper, and each mark's true
    box: the bounding box of its ink on the page (x1, y1 exclusive)."""
    rng = np.random.default_rng(seed)
    page = np.full((PAGE_H, PAGE_W), 235.0) + rng.normal(0, 6, (PAGE_H, PAGE_W))
    truth = {}
    for label, (x, y) in marks:
        ink = rasterize(drawings()[label][0], size=MARK_SIDE, line_width=2.5)
        page[y : y + MARK_SIDE, x : x + MARK_SIDE] *= 1 - 0.8 * ink
        ys, xs = np.nonzero(ink > 0.1)
        truth[label] = (x + int(xs.min()), y + int(ys.min()), x + int(xs.max()) + 1, y + int(ys.max()) + 1)
    return np.clip(page, 0, 255).astype(np.uint8), truth


def build_page_index(folder: Path) -> dict[str, tuple[int, Box]]:
    """The two pages indexed with sketch-gan into ``folder``; class -> (page id, true box)."""
    index = PageIndex(
        Retriever.from_model("sketch-gan", collection=collection_fields(TITLE, None, "Two letters, five marks.")),
        ProposalConfig(step=0.25, scale_ratio=1.6),
    )
    pages = [make_page(seed, marks) for seed, marks in enumerate(PAGES.values())]
    report = index.add_pages([(name, lambda a=a: a) for name, (a, _) in zip(PAGES, pages)])
    assert report.pages == 2 and not report.skipped
    index.save(folder)
    return {label: (page_id, box) for page_id, (_, truth) in enumerate(pages) for label, box in truth.items()}


def query_json(label: str, sample: int = 1) -> list[list[list[float]]]:
    """Another drawing of the class than the one on the page, as the API's stroke points."""
    return [[[float(x), float(y)] for x, y in s] for s in drawings()[label][sample].strokes]


def iou(a: Any, b: Any) -> float:
    return float(box_iou(np.array([a]), np.array([b]))[0, 0])


# ----------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def pages_folder(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, tuple[int, Box]]]:
    folder = tmp_path_factory.mktemp("pages") / "letters-index"
    return folder, build_page_index(folder)


@pytest.fixture(scope="module")
def client(pages_folder: tuple[Path, Any]) -> Iterator[TestClient]:
    folder, _ = pages_folder
    collections = load_collections([("letters", None, folder)])  # as `sketchsearch serve --index` opens it
    collections["shapes"] = build_retriever(per_class=2)
    with TestClient(create_app(collections, limits=Limits(max_k=50)), raise_server_exceptions=False) as c:
        yield c


def search(client: TestClient, label: str, **body: Any) -> dict[str, Any]:
    resp = client.post("/api/search", json={"strokes": query_json(label), "collection": "letters", **body})
    assert resp.status_code == 200, resp.text
    return resp.json()


# ----------------------------------------------------------------------------------------------- listing
def test_a_page_collection_lists_as_pages(client: TestClient) -> None:
    cols = {c["name"]: c for c in client.get("/api/collections").json()}
    letters, shapes = cols["letters"], cols["shapes"]
    assert (letters["kind"], letters["pages"], letters["title"]) == ("pages", 2, TITLE)
    assert letters["boxes"] == letters["items"] > len(LABELS)  # every candidate box is an item
    assert (letters["method"], letters["metric"]) == ("gan", "cosine")
    assert (shapes["kind"], shapes["pages"], shapes["boxes"], shapes["items"]) == ("items", None, None, 10)
    health = client.get("/api/health").json()
    assert health["collections"] == 2 and health["items"] == letters["items"] + 10


# ----------------------------------------------------------------------------------------------- search
@pytest.mark.parametrize("label", LABELS)
def test_another_drawing_of_a_mark_finds_its_box_first(
    client: TestClient, pages_folder: tuple[Path, dict[str, tuple[int, Box]]], label: str
) -> None:
    _, truth = pages_folder
    page, box = truth[label]
    body = search(client, label, k=8)
    assert (body["kind"], body["collection"], body["by_page"], body["k"]) == ("pages", "letters", False, 8)
    hits = body["hits"]
    assert len(hits) == 8 and [h["rank"] for h in hits] == list(range(1, 9))
    assert hits[0]["page"] == page and iou(hits[0]["box"], box) >= 0.7, (truth[label], hits[0])
    names = list(PAGES)
    for h in hits:
        x0, y0, x1, y1 = h["box"]
        assert h["page_size"] == {"width": PAGE_W, "height": PAGE_H}
        assert 0 <= x0 < x1 <= PAGE_W and 0 <= y0 < y1 <= PAGE_H, h
        assert h["source"] == names[h["page"]] and h["title"] == Path(names[h["page"]]).name
        assert h["preview_url"] == f"/api/collections/letters/pages/{h['page']}"
        assert h["crop_url"] == f"{h['preview_url']}/crop?box={x0},{y0},{x1},{y1}"
        assert h["proposal"] in ("ink", "window") and abs(h["similarity"] - (1 - h["distance"])) < 1e-9
    assert [h["distance"] for h in hits] == sorted(h["distance"] for h in hits)


def test_the_service_answers_what_the_library_does(client: TestClient, pages_folder: tuple[Path, Any]) -> None:
    pages = PageIndex.load(pages_folder[0])
    for by_page in (False, True):
        body = search(client, "mark_010", k=6, by_page=by_page)
        direct = pages.search(Sketch([np.asarray(s, np.float32) for s in query_json("mark_010")]), 6, by_page=by_page)
        assert [(h["id"], h["page"], tuple(h["box"])) for h in body["hits"]] == [(h.id, h.page, h.box) for h in direct]
        assert np.allclose([h["distance"] for h in body["hits"]], [h.distance for h in direct], atol=1e-6)


def test_by_page_gives_at_most_one_hit_per_page(client: TestClient) -> None:
    boxes = search(client, "mark_030", k=10)["hits"]
    assert len(boxes) == 10 and len({h["page"] for h in boxes}) < len(boxes)  # several boxes of one page
    body = search(client, "mark_030", k=10, by_page=True)
    pages = [h["page"] for h in body["hits"]]
    assert body["by_page"] is True and len(pages) == len(set(pages)) == 2
    assert body["hits"][0]["id"] == boxes[0]["id"]  # the best box overall leads its page
    assert [h["rank"] for h in body["hits"]] == [1, 2]


def test_an_uploaded_picture_takes_by_page_as_a_form_field(client: TestClient) -> None:
    ink = rasterize(drawings()["mark_020"][1], size=200, line_width=5)
    picture = png_bytes(Image.fromarray(((1 - ink) * 255).astype(np.uint8)))
    files = {"image": ("mark.png", picture, "image/png")}
    resp = client.post("/api/search", files=files, data={"collection": "letters", "k": "5", "by_page": "true"})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["kind"] == "pages" and body["by_page"] is True and body["query"] == {"width": 200, "height": 200}
    assert len({h["page"] for h in body["hits"]}) == len(body["hits"]) <= 2
    resp = client.post("/api/search", files=files, data={"collection": "letters", "by_page": "sometimes"})
    assert_4xx(resp, 422, "by_page", "true or false")


def test_a_box_searches_with_its_own_code(client: TestClient) -> None:
    first = search(client, "mark_035", k=3)["hits"][0]
    body = client.post("/api/search", json={"item": first["id"], "k": 3, "collection": "letters"}).json()
    assert body["kind"] == "pages" and body["query"] == {"item": first["id"]}
    assert body["hits"][0]["id"] == first["id"] and abs(body["hits"][0]["distance"]) < 1e-6
    resp = client.post("/api/search", json={"item": 10**9, "collection": "letters"})
    assert_4xx(resp, 404, "item", "1000000000", "letters")


def test_by_page_is_refused_by_an_item_collection(client: TestClient) -> None:
    body = {"strokes": strokes_json(shape_sketch("circle", 5)), "collection": "shapes"}
    assert_4xx(client.post("/api/search", json={**body, "by_page": True}), 422, "by_page", "shapes", "page collections")
    assert_4xx(client.post("/api/search", json={**body, "by_page": "yes"}), 422, "by_page")  # strict, as k is


def test_an_item_collection_beside_it_answers_as_before(client: TestClient) -> None:
    body = {"strokes": strokes_json(shape_sketch("circle", 5)), "collection": "shapes", "k": 4}
    answer = client.post("/api/search", json=body).json()
    assert set(answer) == {"collection", "k", "metric", "took_ms", "query", "hits"}  # no page fields
    assert answer["hits"][0]["label"] == "circle" and "thumbnail_url" in answer["hits"][0]
    assert "box" not in answer["hits"][0]
    again = client.post("/api/search", json={**body, "by_page": False}).json()  # false is no request at all
    assert [h["id"] for h in again["hits"]] == [h["id"] for h in answer["hits"]]


# ----------------------------------------------------------------------------------------------- pictures
def test_a_page_preview_is_its_jpeg(client: TestClient) -> None:
    resp = client.get("/api/collections/letters/pages/1")
    assert resp.status_code == 200 and resp.headers["content-type"] == "image/jpeg"
    assert resp.content[:3] == b"\xff\xd8\xff"
    assert Image.open(io.BytesIO(resp.content)).size == (PAGE_W, PAGE_H)  # smaller than the preview side
    small = client.get("/api/collections/letters/pages/1?size=140")
    assert small.content[:3] == b"\xff\xd8\xff" and Image.open(io.BytesIO(small.content)).size == (100, 140)
    assert_4xx(client.get("/api/collections/letters/pages/1?size=8"), 422, "size")


def test_a_crop_is_the_box_enlarged(client: TestClient, pages_folder: tuple[Path, dict[str, tuple[int, Box]]]) -> None:
    page, (x0, y0, x1, y1) = pages_folder[1]["mark_010"]
    url = f"/api/collections/letters/pages/{page}/crop?box={x0},{y0},{x1},{y1}"
    resp = client.get(url)
    assert resp.status_code == 200 and resp.headers["content-type"] == "image/png"
    assert resp.content[:8] == b"\x89PNG\r\n\x1a\n"
    crop = np.asarray(Image.open(io.BytesIO(resp.content)).convert("L"), dtype=np.float64)
    assert max(crop.shape) == 192  # the default size: enlarged from a box of ~120 px
    # its shape: the box's, plus 10% of its longer side each way (clipped to the page)
    pad = 0.1 * max(x1 - x0, y1 - y0)
    w, h = min(PAGE_W, x1 + pad) - max(0, x0 - pad), min(PAGE_H, y1 + pad) - max(0, y0 - pad)
    assert abs(crop.shape[1] / crop.shape[0] - w / h) < 0.05, (crop.shape, w, h)
    paper = np.asarray(
        Image.open(io.BytesIO(client.get(f"/api/collections/letters/pages/{page}/crop?box=300,600,420,690").content))
    )
    assert crop.min() < 110 and paper.min() > 170  # the mark's ink is in its crop; blank paper has none
    exact = client.get(url + "&margin=0&size=300").content
    assert Image.open(io.BytesIO(exact)).size[0] == 300 or Image.open(io.BytesIO(exact)).size[1] == 300


@pytest.mark.parametrize(
    "box, words",
    [
        ("1,2,3", "four integers"),
        ("a,b,c,d", "four integers"),
        ("1,2,3,4,5", "four integers"),
        ("1.5,2,30,40", "four integers"),
        ("", "four integers"),
        ("10,10,5,20", "inside page 0"),
        ("10,20,30,20", "inside page 0"),
        ("0,0,501,10", "500 x 700"),
        ("0,650,10,701", "500 x 700"),
        ("-1,0,5,5", "inside page 0"),
        ("1," * 40 + "1", "at most 64"),
    ],
)
def test_a_bad_box_is_a_422_naming_it(client: TestClient, box: str, words: str) -> None:
    assert_4xx(client.get(f"/api/collections/letters/pages/0/crop?box={box}"), 422, "box", words)


def test_a_crop_needs_a_box(client: TestClient) -> None:
    assert_4xx(client.get("/api/collections/letters/pages/0/crop"), 422, "box")


def test_unknown_pages_and_collections_are_404_naming_them(client: TestClient) -> None:
    assert_4xx(client.get("/api/collections/letters/pages/7"), 404, "page", "7", "letters", "2 pages")
    assert_4xx(client.get("/api/collections/letters/pages/7/crop?box=0,0,10,10"), 404, "page", "7")
    assert_4xx(client.get("/api/collections/shapes/pages/0"), 404, "shapes", "holds items, not pages")
    assert_4xx(client.get("/api/collections/nowhere/pages/0"), 404, "nowhere")
    assert_4xx(client.get("/api/collections/letters/pages/first"), 422, "page")
    assert_4xx(client.get("/api/collections/letters/pages/-1"), 422, "page")


# ----------------------------------------------------------------------------------------------- serving
def test_a_page_index_or_its_retriever_is_served_as_pages(pages_folder: tuple[Path, Any]) -> None:
    folder, _ = pages_folder
    for given in (PageIndex.load(folder), Retriever.load(folder)):
        with TestClient(create_app({"p": given})) as c:
            assert c.get("/api/collections").json()[0]["kind"] == "pages"
            body = c.post("/api/search", json={"strokes": query_json("mark_000"), "k": 2}).json()
            assert body["kind"] == "pages" and body["hits"][0]["page"] == 0


def test_serve_loads_a_page_index_like_any_index(pages_folder: tuple[Path, Any]) -> None:
    from sketchsearch.cli.serve import ServeOptions, build_service, collection_specs
    from sketchsearch.service.limits import ConnectionLimits

    folder, _ = pages_folder
    specs = collection_specs([folder], None, None)
    assert [name for name, _, _ in specs] == ["letters-with-marks"]  # the slug of its --name, as for any index
    opts = ServeOptions(
        specs=tuple((n, m, str(p)) for n, m, p in specs), limits=Limits(), connections=ConnectionLimits()
    )
    app, lines = build_service(opts)
    assert len(lines) == 1 and "2 pages" in lines[0] and "boxes" in lines[0] and TITLE in lines[0], lines
    with TestClient(app) as c:
        hit = c.post("/api/search", json={"strokes": query_json("mark_020"), "k": 1}).json()["hits"][0]
        assert c.get(hit["crop_url"]).status_code == 200 and c.get(hit["preview_url"]).status_code == 200


def test_openapi_documents_page_collections(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    schemas = spec["components"]["schemas"]
    assert "by_page" in schemas["SearchRequest"]["properties"]
    assert {"page", "box", "page_size", "preview_url", "crop_url"} <= set(schemas["PageHitOut"]["properties"])
    assert {"kind", "pages", "boxes"} <= set(schemas["CollectionInfo"]["properties"])
    search_op = spec["paths"]["/api/search"]["post"]
    assert "by_page" in search_op["requestBody"]["content"]["multipart/form-data"]["schema"]["properties"]
    answers = str(search_op["responses"]["200"])
    assert "SearchResponse" in answers and "PageSearchResponse" in answers
    preview = spec["paths"]["/api/collections/{name}/pages/{page}"]["get"]
    crop = spec["paths"]["/api/collections/{name}/pages/{page}/crop"]["get"]
    assert "image/jpeg" in preview["responses"]["200"]["content"] and "image/png" in crop["responses"]["200"]["content"]
    assert {p["name"] for p in crop["parameters"]} == {"name", "page", "box", "margin", "size"}
    assert "const" not in str(spec) and "'type': 'null'" not in str(spec)  # OpenAPI 3.0 throughout
