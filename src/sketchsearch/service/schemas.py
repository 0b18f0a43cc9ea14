"""The service's request and response models (pydantic), as the API and its OpenAPI document show them."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

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

    # strict: a string or a boolean is a wrong type (422), not a number to coerce ("1" -> 1.0, true -> 1.0)
    model_config = ConfigDict(extra="forbid", strict=True)
    x: float = Field(allow_inf_nan=False, description="x in any unit (the page sends CSS pixels)")
    y: float = Field(allow_inf_nan=False, description="y in the same unit, pointing down")
    t: float | None = Field(default=None, allow_inf_nan=False, ge=0, description="ms since the drawing began")


class SearchRequest(BaseModel):
    """A search by strokes (``application/json``)."""

    model_config = ConfigDict(extra="forbid", strict=True)  # "k": "5" or true is a wrong type, not 5 / 1
    strokes: list[list[StrokePoint]] = Field(description="strokes in drawing order, each a list of points")
    k: int = Field(default=10, ge=1, description="number of hits wanted (at most the server's max_k)")
    collection: str | None = Field(
        default=None, description="collection name; optional when only one is served"
    )


class HitOut(BaseModel):
    id: int
    rank: int
    label: str | None
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
        description="time the search took on the server (encode + index search + labels), ms"
    )
    query: dict[str, int] = Field(
        description="what was searched: strokes/points, or the image's width/height"
    )
    hits: list[HitOut]


class CollectionInfo(BaseModel):
    name: str
    items: int
    model_id: str
    method: str
    metric: Metric
    code_size: int
    inputs: list[str] = Field(
        description="what the model reads: raster (strokes or images), points (strokes only)"
    )
    accepts_images: bool


class Health(BaseModel):
    status: Literal["ok"]
    version: str
    collections: int
    items: int


class ErrorOut(BaseModel):
    detail: str
