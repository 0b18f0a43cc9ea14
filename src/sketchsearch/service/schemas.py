"""The service's request and response models (pydantic), as the API and its OpenAPI document show them."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema

from ..data.strokes import FORMS
from .limits import MAX_ID

__all__ = [
    "CollectionInfo",
    "CollectionKind",
    "ErrorOut",
    "Health",
    "HitOut",
    "PageHitOut",
    "PageSearchResponse",
    "PageSize",
    "SearchRequest",
    "SearchResponse",
    "StrokePoint",
]

Metric = Literal["hamming", "cosine"]
"""How a collection compares codes: Hamming distance (binary) or cosine (float)."""

CollectionKind = Literal["items", "pages"]
"""What a collection's hits are: its items (drawings, pictures), or boxes on its document pages (a page
index, :mod:`sketchsearch.pages`)."""


class StrokePoint(BaseModel):
    """One recorded point: page pixels (y down) and the time in ms since the drawing began."""

    # Documentation only: it describes the page's stroke form in the OpenAPI document; the points are read
    # (as strictly: no strings or booleans as numbers, no other keys) by data.strokes.parse_strokes.
    model_config = ConfigDict(extra="forbid", strict=True)
    x: float = Field(allow_inf_nan=False, description="x in any unit (the page sends CSS pixels)")
    y: float = Field(allow_inf_nan=False, description="y in the same unit, pointing down")
    t: float | None = Field(default=None, allow_inf_nan=False, ge=0, description="ms since the drawing began")


_NUMBERS: dict[str, Any] = {"type": "array", "items": {"type": "number"}}
Strokes = Annotated[
    Any,  # read by parse_strokes (one reader for the API and the CLI), not by pydantic
    WithJsonSchema(
        {
            "description": f"the drawing, strokes in drawing order: {FORMS}",
            "anyOf": [
                {
                    "type": "array",
                    "items": {"type": "array", "items": StrokePoint.model_json_schema()},
                },
                {
                    "type": "array",
                    "items": {"type": "array", "items": {**_NUMBERS, "minItems": 2, "maxItems": 3}},
                },
                {
                    "type": "array",
                    "items": {"type": "array", "items": _NUMBERS, "minItems": 2, "maxItems": 3},
                },
                {
                    "type": "object",
                    "description": 'a wrapper: {"strokes": ...} or a QuickDraw record {"drawing": ...}',
                },
            ],
        }
    ),
]


class SearchRequest(BaseModel):
    """A search (``application/json``) by a drawing (``strokes``) or by an indexed item (``item``)."""

    model_config = ConfigDict(extra="forbid", strict=True)  # "k": "5" or true is a wrong type, not 5 / 1
    strokes: Strokes = None
    item: int | None = Field(
        default=None,
        ge=0,
        le=MAX_ID,
        description="search with an item of the collection as the query: its id (a hit's id); instead of strokes",
    )
    k: int = Field(default=10, ge=1, description="number of hits wanted (at most the server's max_k)")
    collection: str | None = Field(default=None, description="collection name; optional when only one is served")
    by_page: bool = Field(
        default=False,
        description="page collections only (refused by item collections): the best box of each page, the pages "
        "ranked by it (k pages); false: the best k boxes, several per page where they match. ``item`` is then a "
        "box's id (a page hit's ``id``)",
    )


class HitOut(BaseModel):
    """One ranked item of a search."""

    id: int = Field(description="the item's id in its collection (search with it: SearchRequest.item)")
    rank: int
    title: str = Field(
        description="what to call the item: its metadata title, else its source's file name, else its label, "
        "else 'item <id>'"
    )
    label: str | None = Field(description="its class, when the collection has classes")
    source: str | None = Field(
        description="where it came from: its path relative to the collection's folder, or its record id"
    )
    meta: dict[str, str] = Field(
        description="its metadata when the collection has any (e.g. title, date, place, url); empty otherwise"
    )
    distance: float = Field(
        description="Hamming distance (binary codes) or 1 - cosine (float embeddings); smaller is closer"
    )
    similarity: float = Field(
        description="1 - distance / nbits (binary) or cosine (float), in [-1, 1]; larger is closer"
    )
    thumbnail_url: str


class SearchResponse(BaseModel):
    collection: str
    k: int
    metric: Metric
    took_ms: float = Field(
        description="time the search took on the server (encode + index search + labels; for a batched search, "
        "with the wait for its batch), ms"
    )
    query: dict[str, int] = Field(description="what was searched: strokes/points, or the image's width/height")
    hits: list[HitOut]


class PageSize(BaseModel):
    width: int = Field(description="pixels, as the page was indexed (boxes are given in these pixels)")
    height: int


class PageHitOut(BaseModel):
    """One ranked box on a page of a page collection."""

    id: int = Field(description="the box's id in its collection (search with it: SearchRequest.item)")
    rank: int
    page: int = Field(description="the page's id in its collection (its preview: preview_url)")
    title: str = Field(description="what to call the page: its source's file name, else 'page <id>'")
    source: str | None = Field(
        description="the page's file, relative to the folder that was indexed ('file.pdf:3': a PDF's third page)"
    )
    box: list[int] = Field(
        min_length=4,
        max_length=4,
        description="x0, y0, x1, y1 in the page's pixels (page_size), x1 and y1 exclusive",
    )
    page_size: PageSize
    proposal: str | None = Field(description="how the box was proposed: 'ink' (a group of ink) or 'window'")
    distance: float = Field(
        description="Hamming distance (binary codes) or 1 - cosine (float embeddings) of the box's crop to the "
        "query; smaller is closer"
    )
    similarity: float = Field(
        description="1 - distance / nbits (binary) or cosine (float), in [-1, 1]; larger is closer"
    )
    preview_url: str = Field(description="the whole page as a JPEG (the box is not drawn on it)")
    crop_url: str = Field(description="the box's region of the page, enlarged, as a PNG")


class PageSearchResponse(BaseModel):
    """A page collection's answer: boxes on its pages."""

    collection: str
    kind: Literal["pages"] = Field(description="page hits (an item collection answers a SearchResponse)")
    k: int
    by_page: bool = Field(description="whether each page gave only its best box")
    metric: Metric
    took_ms: float = Field(
        description="time the search took on the server (encode + index search + per-page suppression), ms"
    )
    query: dict[str, int] = Field(description="what was searched: strokes/points, the image's width/height, or item")
    hits: list[PageHitOut]


class CollectionInfo(BaseModel):
    name: str = Field(description="the collection's id: what a search's `collection` names")
    title: str = Field(description="what to call it: its index's title, else its name")
    description: str | None = Field(description="a sentence or two about it, from its index; null when none")
    items: int
    model_id: str
    method: str
    metric: Metric
    code_size: int
    inputs: list[str] = Field(
        description="what the model reads: raster (strokes or images), points (stroke order: strokes, or "
        "traced from an image's pixels)"
    )
    kind: CollectionKind = Field(
        default="items",
        description="items: hits are its items (SearchResponse); pages: a page collection, hits are boxes on "
        "its document pages (PageSearchResponse)",
    )
    pages: int | None = Field(default=None, description="page collections: how many pages; null otherwise")
    boxes: int | None = Field(
        default=None, description="page collections: how many candidate boxes (its searched items); null otherwise"
    )


class Health(BaseModel):
    status: Literal["ok"]
    version: str
    collections: int
    items: int


class ErrorOut(BaseModel):
    detail: str
