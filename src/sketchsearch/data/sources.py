"""The one entry point from a data spec to a :class:`~sketchsearch.data.collection.Collection` of Items.

A spec is a path any reader understands (:func:`sketchsearch.data.formats.read_any`), or a named source:
``default`` (the embedded default collection) or ``kanjivg`` (the SVGs of the installed ``kanjivg`` package,
one drawing per character). Training recipes, evaluation, the CLI and benchmarks all read data here.

Bad records are counted and reported (file + record), and skipped unless ``strict``; the named sources need
no network and no ../shared. To read a local folder that happens to be called ``kanjivg``, write it as a path
(``./kanjivg``).
"""

from __future__ import annotations

from pathlib import Path

from ..errors import FormatError
from .collection import Collection
from .formats.base import Item

__all__ = ["DEFAULT", "KANJIVG", "default_items", "load_collection", "named_source"]

DEFAULT = "default"
KANJIVG = "kanjivg"
MAX_ERRORS_KEPT = 100


def default_items(seed: int = 0) -> list[Item]:
    """The embedded default collection (generated; see :mod:`sketchsearch.data.synthetic`) as Items."""
    from .synthetic import default_collection

    return list(default_collection(seed=seed).items)


def named_source(spec: str | Path) -> str | None:
    """``"default"`` or ``"kanjivg"`` when ``spec`` names one of the built-in sources, else None (a path)."""
    return str(spec) if str(spec) in (DEFAULT, KANJIVG) else None


def load_collection(
    spec: str | Path, *, strict: bool = False, limit: int | None = None, seed: int = 0, fmt: str | None = None
) -> Collection:
    """Read every item of ``spec`` (a path, ``"default"`` or ``"kanjivg"``) into a Collection named after it;
    ``fmt`` forces a reader. The collection's ``skipped`` counts bad records and ``errors`` keeps the first
    100 of them (FormatError: file, record, reason)."""
    if str(spec) == DEFAULT:
        items = default_items(seed)
        return Collection(items[:limit] if limit is not None else items, name=DEFAULT, path=DEFAULT)
    from .formats import read_any

    errors: list[FormatError] = []
    skipped = 0

    def on_error(e: FormatError) -> None:
        nonlocal skipped
        skipped += 1
        if len(errors) < MAX_ERRORS_KEPT:
            errors.append(e)

    if named_source(spec) == KANJIVG:
        from .formats.kanjivg import iter_kanjivg

        stream = iter_kanjivg(None, strict=strict, on_error=on_error, limit=limit)
    else:
        stream = read_any(Path(spec), fmt=fmt, strict=strict, on_error=on_error, limit=limit)
    items = list(stream)
    return Collection(items, name=Path(str(spec)).name or str(spec), path=str(spec), skipped=skipped, errors=errors)
