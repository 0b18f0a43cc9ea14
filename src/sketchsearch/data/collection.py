"""Collections (a manifest of items) and deterministic, saved splits.

A **manifest** lists a collection's items, one row each: ``id, label, modality (sketch|photo), source, pair``.
It is written as JSON lines (``manifest.jsonl``) or CSV (``manifest.csv``), chosen by the file suffix.

**Splits** (:func:`make_splits`) cut a collection into ``train`` / ``gallery`` / ``query`` id lists, with
``seen`` / ``unseen`` classes for zero-shot retrieval; they are saved as ``splits.json`` holding the seed, the
parameters and sorted lists, so the same collection and seed give a byte-identical file. The rule, per class:

1. unseen classes (``unseen_classes``) get no train items: all their items are *test* items;
   a seen class's items are shuffled and the first ``floor(train_fraction * n)`` go to ``train``, the rest
   are test;
2. from the test items, ``query_per_class`` become queries (of ``query_modality`` when given), **capped so
   that at least one test item is left for the gallery** (a class with a single test item gets no query,
   never a crash); the class's actual query count is recorded in ``query_counts``;
3. the remaining test items (of ``gallery_modality`` when given) go to the ``gallery``, at most
   ``gallery_per_class`` of them (None = all). Test items beyond that are left out of every list.

Items without a label cannot be judged relevant to anything: they go to the gallery as distractors.
Shuffles are keyed by ``(seed, crc32(label))``, so a class's split does not move when other classes change.
All files are written atomically (temporary file in the same folder, then rename).
"""

from __future__ import annotations

import csv
import io
import json
import math
import zlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .._io import atomic_write_text
from ..errors import FormatError
from .formats.base import Item

__all__ = [
    "MANIFEST_FIELDS",
    "SPLITS_FORMAT",
    "Collection",
    "Splits",
    "atomic_write_text",
    "load_splits",
    "make_splits",
]

#: Columns of a manifest, in file order.
MANIFEST_FIELDS = ("id", "label", "modality", "source", "pair")
#: Format tag written in every splits file.
SPLITS_FORMAT = "sketchsearch.splits/1"
_MODALITIES = ("sketch", "photo")


# ----------------------------------------------------------------------------------------------- collection
@dataclass
class Collection:
    """An ordered set of :class:`Item` with unique ids. Items keep their sketch / image when they have one;
    a collection loaded from a manifest has rows only (``sketch`` and ``image`` are None)."""

    items: list[Item]
    name: str = "collection"
    _by_id: dict[str, int] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        self.items = list(self.items)
        for i, it in enumerate(self.items):
            if not isinstance(it.id, str) or not it.id:
                raise ValueError(f"item {i}: id must be a non-empty string, got {it.id!r}")
            if it.modality not in _MODALITIES:
                raise ValueError(
                    f"item {it.id!r}: modality must be one of {_MODALITIES}, got {it.modality!r}"
                )
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
        return Collection([self[i] for i in ids], name=self.name)

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


# ----------------------------------------------------------------------------------------------- splits
@dataclass(frozen=True)
class Splits:
    """Train / gallery / query ids and seen / unseen classes (all sorted), with the seed and parameters."""

    seed: int
    params: dict[str, Any]
    train: list[str]
    gallery: list[str]
    query: list[str]
    seen_classes: list[str]
    unseen_classes: list[str]
    query_counts: dict[str, int]

    def to_json(self) -> str:
        """Canonical text: sorted keys, sorted lists, one trailing newline (same splits -> same bytes)."""
        obj = {
            "format": SPLITS_FORMAT,
            "seed": self.seed,
            "params": self.params,
            "train": sorted(self.train),
            "gallery": sorted(self.gallery),
            "query": sorted(self.query),
            "seen_classes": sorted(self.seen_classes),
            "unseen_classes": sorted(self.unseen_classes),
            "query_counts": dict(sorted(self.query_counts.items())),
        }
        return json.dumps(obj, sort_keys=True, indent=1, ensure_ascii=False) + "\n"

    def save(self, path: str | Path) -> Path:
        """Write ``splits.json`` atomically. Returns the path."""
        return atomic_write_text(path, self.to_json())


def _choose_unseen(classes: list[str], unseen: float | Sequence[str], seed: int) -> list[str]:
    if isinstance(unseen, bool):
        raise TypeError(f"unseen_classes must be an int, a fraction or a list of class names, got {unseen!r}")
    if isinstance(unseen, (int, np.integer)):
        k = int(unseen)
    elif isinstance(unseen, (float, np.floating)):
        unseen = float(unseen)
        if not 0.0 <= unseen < 1.0:
            raise ValueError(f"unseen_classes as a fraction must be in [0, 1), got {unseen}")
        k = int(round(unseen * len(classes)))
    else:
        names = [unseen] if isinstance(unseen, str) else [str(c) for c in unseen]
        unknown = sorted(set(names) - set(classes))
        if unknown:
            raise ValueError(f"unseen_classes names classes not in the collection: {unknown[:10]}")
        return sorted(set(names))
    if not 0 <= k <= len(classes):
        raise ValueError(f"unseen_classes={k} but the collection has {len(classes)} classes")
    pick = np.random.default_rng([seed, 0x5EE]).choice(len(classes), size=k, replace=False)
    return sorted(classes[i] for i in pick)


def _param_of_unseen(unseen: float | Sequence[str]) -> int | float | list[str]:
    """JSON-safe record of the ``unseen_classes`` argument (numpy scalars -> Python numbers)."""
    if isinstance(unseen, (int, np.integer)):
        return int(unseen)
    if isinstance(unseen, (float, np.floating)):
        return float(unseen)
    return [unseen] if isinstance(unseen, str) else sorted(str(c) for c in unseen)


def make_splits(
    collection: Collection,
    seed: int = 0,
    query_per_class: int = 1,
    gallery_per_class: int | None = None,
    train_fraction: float = 0.5,
    unseen_classes: float | Sequence[str] = 0,
    query_modality: str | None = None,
    gallery_modality: str | None = None,
) -> Splits:
    """Deterministic splits of ``collection`` (see the module docstring for the rule).

    ``unseen_classes``: a count, a fraction of the classes (float in [0, 1)), or the class names; unseen
    classes never appear in ``train``. ``query_modality`` / ``gallery_modality`` (``'sketch'`` / ``'photo'``;
    None = any)
    restrict what may be a query / a gallery item, e.g. sketch queries against a photo gallery.
    Raises ValueError on out-of-range parameters.
    """
    if not isinstance(query_per_class, int) or query_per_class < 0:
        raise ValueError(f"query_per_class must be a non-negative int, got {query_per_class!r}")
    if gallery_per_class is not None and (not isinstance(gallery_per_class, int) or gallery_per_class < 0):
        raise ValueError(f"gallery_per_class must be a non-negative int or None, got {gallery_per_class!r}")
    if not 0.0 <= train_fraction < 1.0:
        raise ValueError(f"train_fraction must be in [0, 1), got {train_fraction}")
    for name, m in (("query_modality", query_modality), ("gallery_modality", gallery_modality)):
        if m is not None and m not in _MODALITIES:
            raise ValueError(f"{name} must be one of {_MODALITIES} or None, got {m!r}")
    classes = collection.classes
    unseen = _choose_unseen(classes, unseen_classes, seed)
    unseen_set = set(unseen)
    by_class: dict[str, list[Item]] = {}
    train: list[str] = []
    gallery: list[str] = []
    query: list[str] = []
    for it in collection.items:
        if it.label is None:
            if gallery_modality in (None, it.modality):
                gallery.append(it.id)  # unlabelled: a distractor, relevant to no query
        else:
            by_class.setdefault(it.label, []).append(it)
    counts: dict[str, int] = {}
    for label in classes:
        members = sorted(by_class[label], key=lambda it: it.id)
        rng = np.random.default_rng([seed, zlib.crc32(label.encode("utf-8"))])
        members = [members[i] for i in rng.permutation(len(members))]
        n_train = 0 if label in unseen_set else int(math.floor(train_fraction * len(members)))
        train += [it.id for it in members[:n_train]]
        test = members[n_train:]
        g_pool = [it for it in test if gallery_modality in (None, it.modality)]
        g_ids = {it.id for it in g_pool}
        # queries come first from items that could not be gallery items anyway (stable: shuffled order kept)
        q_pool = sorted(
            (it for it in test if query_modality in (None, it.modality)), key=lambda it: it.id in g_ids
        )
        q_ids = {it.id for it in q_pool}
        # keep at least one gallery item: queries may take at most the pool minus one item that is in both
        g_only = len(g_ids - q_ids)
        cap = len(q_pool) if g_only > 0 else max(0, len(q_pool) - 1)
        chosen = q_pool[: min(query_per_class, cap)] if g_pool else []
        chosen_ids = {it.id for it in chosen}
        rest = [it.id for it in g_pool if it.id not in chosen_ids]
        query += [it.id for it in chosen]
        gallery += rest if gallery_per_class is None else rest[:gallery_per_class]
        counts[label] = len(chosen)
    params: dict[str, Any] = {
        "query_per_class": query_per_class,
        "gallery_per_class": gallery_per_class,
        "train_fraction": train_fraction,
        "unseen_classes": _param_of_unseen(unseen_classes),
        "query_modality": query_modality,
        "gallery_modality": gallery_modality,
        "n_items": len(collection),
    }
    return Splits(
        seed=seed,
        params=params,
        train=sorted(train),
        gallery=sorted(gallery),
        query=sorted(query),
        seen_classes=sorted(set(classes) - unseen_set),
        unseen_classes=unseen,
        query_counts=counts,
    )


def _find_manifest(folder: Path) -> Path | None:
    for name in ("manifest.jsonl", "manifest.csv"):
        if (folder / name).is_file():
            return folder / name
    return None


def load_splits(path: str | Path, manifest: Collection | str | Path | None = None) -> Splits:
    """Read a ``splits.json`` and check it against the manifest (by default ``manifest.jsonl`` or ``.csv``
    beside it). Raises :class:`FormatError` ``(splits file, key, reason)`` when the file is not a splits file,
    a list is missing or not a list of strings, an id is unknown to the manifest, an id is in two lists,
    or an unseen class has train items."""
    p = Path(path)
    try:
        obj = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as e:
        raise FormatError(p, None, f"cannot read the splits file: {e}") from e
    except json.JSONDecodeError as e:
        raise FormatError(p, None, f"not JSON ({e.msg} at line {e.lineno}); expected a splits file") from e
    if not isinstance(obj, dict) or obj.get("format") != SPLITS_FORMAT:
        raise FormatError(p, "format", f"expected format {SPLITS_FORMAT!r}")
    lists: dict[str, list[str]] = {}
    for key in ("train", "gallery", "query", "seen_classes", "unseen_classes"):
        v = obj.get(key)
        if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
            raise FormatError(p, key, "expected a list of strings")
        lists[key] = v
    if isinstance(manifest, Collection):
        coll = manifest
    else:
        mpath = Path(manifest) if manifest is not None else _find_manifest(p.parent)
        if mpath is None:
            raise FormatError(
                p, None, f"no manifest.jsonl or manifest.csv beside it in {p.parent}; pass the manifest"
            )
        coll = Collection.load_manifest(mpath)
    owner: dict[str, str] = {}
    for key in ("train", "gallery", "query"):
        for iid in lists[key]:
            if iid not in coll:
                raise FormatError(
                    p, key, f"id {iid!r} is not in the manifest ({coll.name}, {len(coll)} items)"
                )
            if iid in owner:
                raise FormatError(
                    p, key, f"id {iid!r} is in both {owner[iid]!r} and {key!r}; splits must be disjoint"
                )
            owner[iid] = key
    unseen = set(lists["unseen_classes"])
    leaked = sorted({coll[i].label for i in lists["train"]} & unseen)  # type: ignore[misc]
    if leaked:
        raise FormatError(p, "train", f"unseen classes {leaked[:5]} have train items")
    counts = obj.get("query_counts", {})
    return Splits(
        seed=int(obj.get("seed", 0)),
        params=dict(obj.get("params", {})),
        train=lists["train"],
        gallery=lists["gallery"],
        query=lists["query"],
        seen_classes=lists["seen_classes"],
        unseen_classes=lists["unseen_classes"],
        query_counts={str(k): int(v) for k, v in counts.items()} if isinstance(counts, dict) else {},
    )
