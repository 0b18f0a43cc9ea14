"""The one entry point from a data spec to a :class:`~sketchsearch.data.collection.Collection` of Items.

A spec is a path any reader understands (:func:`sketchsearch.data.formats.read_any`), or a named source:
``default`` (the embedded default collection) or ``kanjivg`` (the SVGs of the installed ``kanjivg`` package,
one drawing per character). Training recipes, evaluation, the CLI and benchmarks all read data here
(:func:`load_collection`); ``data info`` streams the same read (:func:`read_source`).

What this adds to the readers' items:

* **Modality.** ``modality="auto"`` keeps what the layout says (Sketchy's ``sketch/`` and ``photo/``,
  stroke data) and judges each image of a plain image folder from its pixels
  (:func:`~sketchsearch.data.formats.images.guess_modality`); ``"sketch"`` / ``"photo"`` reads a plain
  image folder as that and keeps only the items of that modality of any other data.
* **Identity.** ``item.source`` is the item's file relative to the collection's root (the folder given,
  or the folder holding the file given), POSIX-style, with its record when the file holds several
  (``"cat/0001.png"``, ``"cat.ndjson:17"``); an item of the embedded default keeps its generated source.
* **Metadata.** A sidecar ``metadata.csv`` and/or ``metadata.json`` in the root adds fields to
  ``item.meta`` (title, date, place, url, any others; they win over the reader's own extras of the same
  name). Each row names its item by a key column, the first of ``source``, ``path``, ``file``, ``id``:
  the item's relative source (``cat/0001.png``) or its id (``cat/0001``). CSV: a header line, a row per
  item, empty cells left out. JSON: ``{key: {field: value}}``, or a list of objects that each hold a key
  field. A sidecar that cannot be read, and a row without a key or with a repeated one, are bad records
  (below); rows that match no item are counted (:attr:`Metadata.unmatched`).

Bad records are counted and reported (file + record), and skipped unless ``strict``; the named sources need
no network and no ../shared. To read a local folder that happens to be called ``kanjivg``, write it as a path
(``./kanjivg``).
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any

from ..errors import FormatError
from .collection import Collection
from .formats.base import Item, OnError, ReadLimits, check_limit, report
from .formats.images import IMAGE_MODALITIES

__all__ = [
    "DEFAULT",
    "KANJIVG",
    "METADATA_FILES",
    "METADATA_KEYS",
    "MODALITIES",
    "Metadata",
    "Reading",
    "default_items",
    "load_collection",
    "named_source",
    "read_metadata",
    "read_source",
]

DEFAULT = "default"
KANJIVG = "kanjivg"
MAX_ERRORS_KEPT = 100
#: ``modality`` of :func:`read_source`: ``auto`` keeps the layout's word and judges plain images by their pixels
MODALITIES = IMAGE_MODALITIES
#: sidecar files read from a collection's root, in this order (a later one wins for the same item and field)
METADATA_FILES = ("metadata.csv", "metadata.json")
#: the columns / fields that name a sidecar row's item, the first present is used
METADATA_KEYS = ("source", "path", "file", "id")


def default_items(seed: int = 0) -> list[Item]:
    """The embedded default collection (generated; see :mod:`sketchsearch.data.synthetic`) as Items."""
    from .synthetic import default_collection

    return list(default_collection(seed=seed).items)


def named_source(spec: str | Path) -> str | None:
    """``"default"`` or ``"kanjivg"`` when ``spec`` names one of the built-in sources, else None (a path)."""
    return str(spec) if str(spec) in (DEFAULT, KANJIVG) else None


# ---------------------------------------------------------------------------------------------- metadata
@dataclass
class Metadata:
    """The sidecar metadata of a collection: ``files`` read, ``rows`` (key -> fields), and the keys that
    matched an item while the collection streamed (``matched``)."""

    files: list[str] = field(default_factory=list)
    rows: dict[str, dict[str, Any]] = field(default_factory=dict)
    matched: set[str] = field(default_factory=set)

    @property
    def unmatched(self) -> list[str]:
        """Keys of rows that named no item read (sorted)."""
        return sorted(set(self.rows) - self.matched)

    def attach(self, item: Item) -> None:
        """Add the fields of ``item``'s row (by relative source, else by id) to ``item.meta``."""
        for key in (item.source, item.id):
            row = self.rows.get(key)
            if row is not None:
                item.meta.update(row)
                self.matched.add(key)
                return


def _key(value: Any) -> str:
    """A sidecar key as items are named: POSIX separators, no leading ``./``."""
    text = str(value).strip().replace("\\", "/")
    while text.startswith("./"):
        text = text[2:]
    return text


#: one sidecar row: (record: line number or key, the item's key or None, fields, or the reason it is bad)
Row = tuple[int | str, Any, dict[str, Any] | str]


def _csv_rows(f: Path, text: str) -> Iterator[Row]:
    reader = csv.DictReader(io.StringIO(text))
    columns = reader.fieldnames or []
    key = next((k for k in METADATA_KEYS if k in columns), None)
    if key is None:
        raise FormatError(
            f, None, f"no column naming the item; give one of {', '.join(METADATA_KEYS)} (columns: {columns})"
        )
    for row in reader:
        fields = {k: v for k, v in row.items() if k not in (key, None) and v not in (None, "")}
        yield reader.line_num, row.get(key), fields


def _json_rows(f: Path, text: str) -> Iterator[Row]:
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise FormatError(f, None, f"not JSON ({e.msg} at line {e.lineno})") from None
    if not isinstance(obj, (dict, list)):
        raise FormatError(f, None, f"expected an object {{key: {{field: value}}}} or a list, got {type(obj).__name__}")
    records = obj.items() if isinstance(obj, dict) else enumerate(obj, 1)
    for record, fields in records:
        if not isinstance(fields, dict):
            yield record, None, f"expected an object of fields, got {type(fields).__name__}"
        elif isinstance(obj, dict):
            yield record, record, fields
        else:
            name = next((k for k in METADATA_KEYS if k in fields), None)
            yield (
                record,
                None if name is None else fields[name],
                {k: v for k, v in fields.items() if k != name},
            )


def read_metadata(root: Path, *, strict: bool = False, on_error: OnError | None = None) -> Metadata:
    """The sidecar files of ``root`` (see the module docstring); bad files and rows follow the bad-record rule."""
    meta = Metadata()
    for name in METADATA_FILES:
        f = root / name
        if not f.is_file():
            continue
        meta.files.append(str(f))
        parse = _csv_rows if name.endswith(".csv") else _json_rows
        first: dict[str, int | str] = {}
        try:
            for record, key, fields in parse(f, f.read_text(encoding="utf-8-sig")):
                k = "" if key is None else _key(key)
                if isinstance(fields, str):
                    reason = fields
                elif not k:
                    reason = f"no {' / '.join(METADATA_KEYS)} naming the item"
                elif k in first:
                    reason = f"{k!r} is named again (first at record {first[k]}); this row is not used"
                else:
                    first[k] = record
                    meta.rows.setdefault(k, {}).update(fields)
                    continue
                report(FormatError(f, record, reason), strict, on_error)
        except (OSError, UnicodeDecodeError, csv.Error) as e:
            report(FormatError(f, None, f"cannot read the metadata file: {e}"), strict, on_error)
        except FormatError as e:
            report(e, strict, on_error)
    return meta


# ---------------------------------------------------------------------------------------------- reading
@dataclass
class Reading:
    """One read of a data spec, as it streams: the reader's ``format`` name, the collection's ``root``
    (None for the embedded default), the sidecar ``metadata`` (None when there is none) and the ``items``.
    ``from_pixels``: the items' modality was judged from their pixels (a plain image folder, ``auto``)."""

    format: str
    root: Path | None
    metadata: Metadata | None
    from_pixels: bool
    items: Iterator[Item]


def _relative(source: str, root: Path) -> str:
    """``source`` (a reader's file path, maybe ``:record``) relative to ``root``, with ``/`` separators."""
    prefix = str(root)
    if prefix != ".":
        for sep in {os.sep, "/"}:
            if source.startswith(prefix + sep):
                source = source[len(prefix) + 1 :]
                break
        else:
            return source
    return source.replace(os.sep, "/")


def _identify(items: Iterable[Item], root: Path, metadata: Metadata | None) -> Iterator[Item]:
    for item in items:
        item.source = _relative(item.source, root)
        if metadata is not None:
            metadata.attach(item)
        yield item


def read_source(
    spec: str | Path,
    *,
    fmt: str | None = None,
    strict: bool = False,
    on_error: OnError | None = None,
    limit: int | None = None,
    modality: str = "auto",
    seed: int = 0,
    limits: ReadLimits | None = None,
    **options: Any,
) -> Reading:
    """Start reading ``spec`` (a path, ``"default"`` or ``"kanjivg"``): the :class:`Reading` whose ``items``
    stream lazily, with modality, relative sources and sidecar metadata as in the module docstring.

    ``fmt`` forces a reader; ``limit`` counts the items kept (after the ``modality`` filter); ``seed``
    makes the embedded default; ``limits`` bounds what one record may cost (:class:`~.formats.base.ReadLimits`,
    default ``READ_LIMITS``: decompressed members, line length, points per drawing, image decode budget);
    ``options`` go to the reader (e.g. KanjiVG's ``variants``). Raises
    ValueError for an unknown ``modality`` or ``fmt``, FormatError for a bad path."""
    if modality not in MODALITIES:
        raise ValueError(f"modality must be one of {', '.join(MODALITIES)}, got {modality!r}")
    limit = check_limit(limit)
    name = named_source(spec)
    if name is not None and fmt not in (None, name):
        raise ValueError(f"{name!r} names a built-in source; it cannot be read as {fmt!r} (write a path: ./{name})")
    root: Path | None
    metadata = None
    if limits is not None:
        options = {**options, "limits": limits}
    if name == DEFAULT:
        stream: Iterator[Item] = iter(default_items(seed))
        root = None
    elif name == KANJIVG:
        from .formats.kanjivg import iter_kanjivg, kanjivg_files

        files = kanjivg_files()
        root = files[0].parent if files else Path(".")
        stream = _identify(iter_kanjivg(None, strict=strict, on_error=on_error, **options), root, None)
    else:
        from .formats import READERS, detect_format

        path = Path(spec)
        name = fmt or detect_format(path)
        if name == "images":
            options = {**options, "modality": modality}
        reader = READERS.get(name)
        root = path if path.is_dir() else path.parent
        metadata = read_metadata(root, strict=strict, on_error=on_error)
        if not metadata.files:
            metadata = None
        stream = _identify(reader(path, strict=strict, on_error=on_error, **options), root, metadata)
    from_pixels = name == "images" and modality == "auto"
    if modality != "auto" and name != "images":
        stream = (it for it in stream if it.modality == modality)
    return Reading(name, root, metadata, from_pixels, islice(stream, limit))


def load_collection(
    spec: str | Path,
    *,
    strict: bool = False,
    limit: int | None = None,
    seed: int = 0,
    fmt: str | None = None,
    modality: str = "auto",
    limits: ReadLimits | None = None,
) -> Collection:
    """Read every item of ``spec`` (a path, ``"default"`` or ``"kanjivg"``) into a Collection named after it
    (see :func:`read_source` for ``fmt``, ``modality``, ``limit``, ``limits``). The collection's ``skipped`` counts bad
    records and ``errors`` keeps the first 100 of them (FormatError: file, record, reason)."""
    errors: list[FormatError] = []
    skipped = 0

    def on_error(e: FormatError) -> None:
        nonlocal skipped
        skipped += 1
        if len(errors) < MAX_ERRORS_KEPT:
            errors.append(e)

    reading = read_source(
        spec, fmt=fmt, strict=strict, on_error=on_error, limit=limit, modality=modality, seed=seed, limits=limits
    )
    items = list(reading.items)
    return Collection(items, name=Path(str(spec)).name or str(spec), path=str(spec), skipped=skipped, errors=errors)
