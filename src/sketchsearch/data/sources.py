"""One entry point from a data spec to Items: a path, or a named source: ``default`` (the embedded default
collection) or ``kanjivg`` (the SVGs of the installed ``kanjivg`` package, one drawing per character).

Batch commands use this: bad records are counted and reported (file + record), and skipped unless
``strict``; the named sources need no network and no ../shared. To read a local folder that happens to be
called ``kanjivg``, write it as a path (``./kanjivg``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..errors import FormatError
from .formats.base import Item
from .sketch import Sketch

__all__ = ["DEFAULT", "KANJIVG", "LoadResult", "item_query", "load_items", "named_source"]

DEFAULT = "default"
KANJIVG = "kanjivg"
MAX_ERRORS_KEPT = 100


@dataclass
class LoadResult:
    items: list[Item]
    skipped: int = 0
    errors: list[FormatError] = field(default_factory=list)

    def error_dicts(self) -> list[dict[str, Any]]:
        return [{"file": e.file, "record": e.record, "reason": e.reason} for e in self.errors]


def default_items(seed: int = 0) -> list[Item]:
    """The embedded default collection (generated; see :mod:`sketchsearch.data.synthetic`) as Items."""
    from .synthetic import default_collection

    return list(default_collection(seed=seed).items)


def named_source(spec: str | Path) -> str | None:
    """``"default"`` or ``"kanjivg"`` when ``spec`` names one of the built-in sources, else None (a path)."""
    return str(spec) if str(spec) in (DEFAULT, KANJIVG) else None


def load_items(
    spec: str | Path, *, strict: bool = False, limit: int | None = None, seed: int = 0, fmt: str | None = None
) -> LoadResult:
    """Read every item of ``spec`` (a path any reader understands, ``"default"`` or ``"kanjivg"``);
    ``fmt`` forces a reader."""
    if str(spec) == DEFAULT:
        items = default_items(seed)
        return LoadResult(items[:limit] if limit is not None else items)
    from .formats import read_any

    res = LoadResult(items=[])

    def on_error(e: FormatError) -> None:
        res.skipped += 1
        if len(res.errors) < MAX_ERRORS_KEPT:
            res.errors.append(e)

    if named_source(spec) == KANJIVG:
        from .formats.kanjivg import iter_kanjivg

        items = iter_kanjivg(None, strict=strict, on_error=on_error, limit=limit)
    else:
        items = read_any(Path(spec), fmt=fmt, strict=strict, on_error=on_error, limit=limit)
    for item in items:
        res.items.append(item)
    return res


def item_query(item: Item) -> Sketch | np.ndarray | Image.Image:
    """What an encoder reads from an item: its strokes, else its image (photos as PIL RGB images)."""
    if item.sketch is not None:
        return item.sketch
    if item.image is None:
        raise FormatError(item.source, None, "item has neither strokes nor an image")
    # As a PIL image, so that image_to_raster decides ink polarity from the border (QuickDraw bitmaps are
    # light-on-dark, Omniglot and scans dark-on-light) and frames the ink like a stroke query.
    return Image.fromarray(np.ascontiguousarray(item.image))
