"""``sketchsearch data info PATH``: what a dataset holds and what could not be read.

Streams every item once through the one data entry point (nothing is rendered or kept), counting items,
classes and modalities (and whether they were judged from the pixels), the sidecar metadata rows that
matched, and collecting the bad records the readers skipped (a file that cannot be read at all is one of
them) and the files left out on purpose (KanjiVG variants unless asked for). ``PATH`` may also be
``kanjivg`` (the SVGs of the installed ``kanjivg`` package) or ``default`` (see
:mod:`sketchsearch.data.sources`).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from ..errors import FormatError
from .formats.base import ReadLimits

__all__ = ["KANJIVG_VARIANTS", "MAX_ERRORS", "inspect_dataset"]

#: At most this many errors are listed in the result; ``skipped`` always holds the full count.
MAX_ERRORS = 100


#: Why KanjiVG variant files are not counted as items without ``variants=True`` (key of ``excluded``).
KANJIVG_VARIANTS = (
    "kanjivg variant files (<hex>-<variant>.svg: other forms or stroke orders of a character already "
    "read; read them with --variants)"
)


def inspect_dataset(
    path: str | Path,
    strict: bool = False,
    *,
    fmt: str | None = None,
    max_errors: int = MAX_ERRORS,
    variants: bool = False,
    modality: str = "auto",
    limits: ReadLimits | None = None,
) -> dict[str, Any]:
    """Read the dataset at ``path`` through the one data entry point
    (:func:`~sketchsearch.data.sources.read_source`) and summarise it. Returns a JSON-serialisable dict:

    ``path``, ``format`` (reader name), ``items`` (int, readable items), ``classes`` (int, distinct
    non-None labels), ``unlabelled`` (items with no label), ``class_counts`` (label -> count, most
    common first), ``modalities`` ({"sketch": n, "photo": n}), ``modality`` (the option: auto, sketch or
    photo), ``from_pixels`` (True when each item's modality was judged from its pixels: a plain image
    folder read with ``auto``), ``with_strokes`` / ``with_images`` (items carrying a Sketch / a raster),
    ``pairs`` (distinct instance ids), ``metadata`` (None, or the sidecar: ``files``, ``rows``,
    ``matched`` rows, the first ``max_errors`` ``unmatched`` keys), ``skipped`` (bad records skipped, a
    data file that cannot be read at all counting as one), ``errors`` (the first ``max_errors`` of them as
    ``{file, record, reason}``; ``record`` is None for a whole file), ``excluded`` (reason -> number of
    files deliberately not read, e.g. KanjiVG variants; not errors).

    ``path`` ``"kanjivg"`` reads the installed ``kanjivg`` package, ``"default"`` the embedded default;
    ``variants`` (KanjiVG only) reads the variant files as items too; ``modality`` and ``limits`` (the bounds on
    one record: a zip-bomb ``.npz`` member, a compressed-bomb ``.mat``, an over-long ndjson line, an
    over-budget image is a skipped bad record naming the limit) as in ``read_source``.
    With ``strict`` the first bad record or unreadable file raises :class:`FormatError`; a bad path
    (missing, format unknown) always raises.
    """
    from .formats import detect_format
    from .sources import KANJIVG, named_source, read_source

    name = named_source(path) or fmt or detect_format(path)
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
    excluded: Counter[str] = Counter()
    options: dict[str, Any] = {}
    if name == KANJIVG:

        def on_variant(_: Path) -> None:
            excluded[KANJIVG_VARIANTS] += 1

        options = {"variants": variants, "on_variant": on_variant}
    elif variants:
        raise ValueError(f"variants applies to KanjiVG data only, not to the {name!r} format")
    reading = read_source(
        path,
        fmt=fmt if named_source(path) else name,
        strict=strict,
        on_error=on_error,
        modality=modality,
        limits=limits,
        **options,
    )
    n = unlabelled = with_strokes = with_images = 0
    for item in reading.items:
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
    meta = reading.metadata
    return {
        "path": str(path),
        "format": reading.format,
        "items": n,
        "classes": len(labels),
        "unlabelled": unlabelled,
        "class_counts": dict(labels.most_common()),
        "modalities": dict(modalities),
        "modality": modality,
        "from_pixels": reading.from_pixels,
        "with_strokes": with_strokes,
        "with_images": with_images,
        "pairs": len(pairs),
        "metadata": None
        if meta is None
        else {
            "files": meta.files,
            "rows": len(meta.rows),
            "matched": len(meta.matched),
            "unmatched": meta.unmatched[:max_errors],
        },
        "skipped": skipped,
        "errors": errors,
        "excluded": dict(excluded),
    }
