"""The service's request and response models (pydantic), as the API and its OpenAPI document show them."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema

from ..data.strokes import FORMS
from .limits import MAX_ID

__all__ = [
    "CollectionInfo",
    "ErrorOut",
    "Health",
    "HitOut",
    "SearchRequest",
    "SearchResponse",
    "StrokePoint",
]

Metric = Literal["hamming", "cosine"]
"""How a collection compares codes: Hamming distance (binary) or cosine (float)."""


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
    took_ms: float = Field(description="time the search took on the server (encode + index search + labels), ms")
    query: dict[str, int] = Field(description="what was searched: strokes/points, or the image's width/height")
    hits: list[HitOut]


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


class Health(BaseModel):
    status: Literal["ok"]
    version: str
    collections: int
    items: int


class ErrorOut(BaseModel):
    detail: str
