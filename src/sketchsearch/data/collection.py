"""Collections: an ordered set of items with unique ids, and their manifest files.

A **manifest** lists a collection's items, one row each: ``id, label, modality (sketch|photo), source, pair``.
It is written as JSON lines (``manifest.jsonl``) or CSV (``manifest.csv``), chosen by the file suffix, atomically.
Collections are read from data by :func:`sketchsearch.data.sources.load_collection` and split by
:mod:`sketchsearch.data.splits`.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .._io import atomic_write_text
from ..errors import FormatError
from .formats.base import Item

__all__ = ["MANIFEST_FIELDS", "Collection"]

#: Columns of a manifest, in file order.
MANIFEST_FIELDS = ("id", "label", "modality", "source", "pair")
_MODALITIES = ("sketch", "photo")


# ----------------------------------------------------------------------------------------------- collection
@dataclass
class Collection:
    """An ordered set of :class:`Item` with unique ids. Items keep their sketch / image when they have one;
    a collection loaded from a manifest has rows only (``sketch`` and ``image`` are None)."""

    items: list[Item]
    name: str = "collection"
    #: where the items were read from (a path or a named source), when they were read
    path: str | None = None
    #: bad records skipped while reading, and the first of their errors (file, record, reason)
    skipped: int = 0
    errors: list[FormatError] = field(default_factory=list)
    _by_id: dict[str, int] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        self.items = list(self.items)
        for i, it in enumerate(self.items):
            if not isinstance(it.id, str) or not it.id:
                raise ValueError(f"item {i}: id must be a non-empty string, got {it.id!r}")
            if it.modality not in _MODALITIES:
                raise ValueError(f"item {it.id!r}: modality must be one of {_MODALITIES}, got {it.modality!r}")
            if it.id in self._by_id:
                raise ValueError(f"duplicate item id {it.id!r} (items {self._by_id[it.id]} and {i})")
            self._by_id[it.id] = i

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self) -> Iterator[Item]:
        return iter(self.items)

    def __contains__(self, item_id: object) -> bool:
        return item_id in self._by_id

    def __getitem__(self, item_id: str) -> Item:
        try:
            return self.items[self._by_id[item_id]]
        except KeyError:
            raise KeyError(f"no item with id {item_id!r} in {self.name}") from None

    @property
    def ids(self) -> list[str]:
        return [it.id for it in self.items]

    @property
    def classes(self) -> list[str]:
        """Sorted distinct labels (unlabelled items have none)."""
        return sorted({it.label for it in self.items if it.label is not None})

    def subset(self, ids: Iterable[str]) -> Collection:
        """The items with these ids, in the given order (unknown id -> KeyError naming it)."""
        return Collection([self[i] for i in ids], name=self.name, path=self.path)

    def error_dicts(self) -> list[dict[str, Any]]:
        return [{"file": e.file, "record": e.record, "reason": e.reason} for e in self.errors]

    # ---- manifest
    def manifest_rows(self) -> list[dict[str, str | None]]:
        return [{k: getattr(it, k) for k in MANIFEST_FIELDS} for it in self.items]

    def save_manifest(self, path: str | Path) -> Path:
        """Write the manifest: ``*.jsonl`` (a JSON object a line) or ``*.csv`` (header, rows; an empty cell is
        None). Atomic. Returns the path."""
        p = Path(path)
        rows = self.manifest_rows()
        if p.suffix == ".jsonl":
            text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
        elif p.suffix == ".csv":
            buf = io.StringIO()
            w = csv.DictWriter(buf, fieldnames=MANIFEST_FIELDS, lineterminator="\n")
            w.writeheader()
            w.writerows({k: ("" if v is None else v) for k, v in r.items()} for r in rows)
            text = buf.getvalue()
        else:
            raise ValueError(f"{p}: manifest must end in .jsonl or .csv")
        return atomic_write_text(p, text)

    @classmethod
    def load_manifest(cls, path: str | Path) -> Collection:
        """Read a manifest written by :meth:`save_manifest` (or by hand). Raises :class:`FormatError` naming
        file and the 1-based line for a bad row (not an object, missing id, bad modality, duplicate id)."""
        p = Path(path)
        try:
            text = p.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise FormatError(p, None, f"cannot read the manifest: {e}") from e
        rows: list[tuple[int, dict[str, Any]]] = []
        if p.suffix == ".csv":
            reader = csv.DictReader(io.StringIO(text))
            missing = [f for f in ("id", "label", "modality") if f not in (reader.fieldnames or [])]
            if missing:
                raise FormatError(p, 1, f"header lacks column(s) {missing}; expected {list(MANIFEST_FIELDS)}")
            for n, r in enumerate(reader, start=2):
                rows.append((n, {k: (v if v != "" else None) for k, v in r.items()}))
        elif p.suffix == ".jsonl":
            for n, line in enumerate(text.splitlines(), start=1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as e:
                    raise FormatError(p, n, f"not JSON ({e.msg})") from e
                if not isinstance(obj, dict):
                    raise FormatError(
                        p, n, f"expected a JSON object with {list(MANIFEST_FIELDS)}, got {type(obj).__name__}"
                    )
                rows.append((n, obj))
        else:
            raise FormatError(p, None, "manifest must end in .jsonl or .csv")
        items: list[Item] = []
        seen: dict[str, int] = {}
        for n, r in rows:
            iid, modality = r.get("id"), r.get("modality")
            if not isinstance(iid, str) or not iid:
                raise FormatError(p, n, f"'id' must be a non-empty string, got {iid!r}")
            if iid in seen:
                raise FormatError(p, n, f"duplicate id {iid!r} (first on line {seen[iid]})")
            if modality not in _MODALITIES:
                raise FormatError(p, n, f"'modality' must be one of {_MODALITIES}, got {modality!r}")
            label, pair = r.get("label"), r.get("pair")
            seen[iid] = n
            items.append(
                Item(
                    id=iid,
                    label=None if label is None else str(label),
                    modality=modality,
                    source=str(r.get("source") or ""),
                    pair=None if pair is None else str(pair),
                )
            )
        return cls(items, name=p.parent.name or p.stem)
