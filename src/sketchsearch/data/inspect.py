"""``sketchsearch data info PATH``: what a dataset holds and what could not be read.

Streams every item once (nothing is rendered or kept), counting items, classes and modalities and
collecting the bad records the readers skipped.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from ..errors import FormatError
from .formats import detect_format, read_any

__all__ = ["MAX_ERRORS", "inspect_dataset"]

#: At most this many errors are listed in the result; ``skipped`` always holds the full count.
MAX_ERRORS = 100


def inspect_dataset(
    path: str | Path, strict: bool = False, *, fmt: str | None = None, max_errors: int = MAX_ERRORS
) -> dict[str, Any]:
    """Read the dataset at ``path`` and summarise it. Returns a JSON-serialisable dict:

    ``path``, ``format`` (reader name), ``items`` (int, readable items), ``classes`` (int, distinct
    non-None labels), ``unlabelled`` (items with no label), ``class_counts`` (label -> count, most
    common first), ``modalities`` ({"sketch": n, "photo": n}), ``with_strokes`` / ``with_images``
    (items carrying a Sketch / a raster), ``pairs`` (distinct instance ids), ``skipped`` (bad records
    skipped), ``errors`` (the first ``max_errors`` of them as ``{file, record, reason}``).

    With ``strict`` the first bad record raises :class:`FormatError`; a whole-file problem always raises.
    """
    name = fmt or detect_format(path)
    errors: list[dict[str, Any]] = []
    skipped = 0

    def on_error(e: FormatError) -> None:
        nonlocal skipped
        skipped += 1
        if len(errors) < max_errors:
            errors.append({"file": e.file, "record": e.record, "reason": e.reason})

    labels: Counter[str] = Counter()
    modalities: Counter[str] = Counter({"sketch": 0, "photo": 0})
    pairs: set[str] = set()
    n = unlabelled = with_strokes = with_images = 0
    for item in read_any(path, fmt=name, strict=strict, on_error=on_error):
        n += 1
        modalities[item.modality] += 1
        if item.label is None:
            unlabelled += 1
        else:
            labels[item.label] += 1
        with_strokes += item.sketch is not None
        with_images += item.image is not None
        if item.pair is not None:
            pairs.add(item.pair)
    return {
        "path": str(path),
        "format": name,
        "items": n,
        "classes": len(labels),
        "unlabelled": unlabelled,
        "class_counts": dict(labels.most_common()),
        "modalities": dict(modalities),
        "with_strokes": with_strokes,
        "with_images": with_images,
        "pairs": len(pairs),
        "skipped": skipped,
        "errors": errors,
    }
