"""The one split module: every protocol's split of a collection, deterministic from a seed, saved as item ids.

A :class:`Split` is a set of named *parts*, each an ordered list of item ids, plus the classes it treats as
seen and unseen. The part names say what a part is for, and every protocol uses the same names:

============================  =====================================================================
part                          meaning
============================  =====================================================================
``train``                     what a model is trained (or a baseline fitted) on; sketches and photos alike
``query`` / ``gallery``       the held-out evaluation of the seen classes (or of all classes)
``unseen_query`` / ``unseen_gallery``  zero-shot evaluation: classes no training item belongs to
============================  =====================================================================

A part's order is kept as the builder made it: ties in distance are broken by gallery position, so the
order is part of the split. Builders, one per protocol, registered by ``kind`` (:func:`make_split`):

* ``category`` — per class ``queries_per_class`` queries, the rest gallery (no train part: baselines are
  fitted on the gallery without labels); seeded per class, so a class's split does not move when others do.
* ``zero_shot`` — seen classes give ``train`` items, unseen classes none; per class a few queries and the
  rest gallery (the generic split: any collection, optional query/gallery modality, e.g. sketch -> photo).
* ``class_holdout`` — SketchMate's: classes shuffled into seen / unseen; each seen class cut into query,
  gallery and train fractions, each unseen class into query and gallery.
* ``photo_group`` — Doodle to Search on Sketchy: unseen classes' sketches query their photos; per seen class
  whole photo groups (every sketch drawn from one photo) are held out with their photos; the rest trains.
* ``heldout_instance`` — GDH on Sketchy: every class trains; per class held-out photos with all the sketches
  drawn from them (fine-grained queries whose own photo is in the gallery) plus distractor photos.
* ``instance`` — a dataset's own train / test split of sketch <-> photo pairs (QMUL): test sketches query
  test photos; relevance is the ``pair`` id.
* ``leave_one_out`` — one ``gallery`` part: each item queries all the others (the sketch-GAN protocol).

A split is written as ``splits.json`` (:meth:`Split.save`: canonical JSON, the same split gives the same
bytes) and read back with :meth:`Split.load`; :meth:`Split.check` verifies it against a collection (every id
known, parts disjoint, no unseen class in ``train``) and raises :class:`FormatError` naming the file and
key. A model card points to its split file, so ``evaluate`` rebuilds any model's split from that file alone.
"""

from __future__ import annotations

import json
import math
import random
import zlib
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .._io import atomic_write_text
from ..errors import FormatError
from ..registry import Registry
from .formats.base import Item

__all__ = [
    "SPLITS",
    "SPLIT_FORMAT",
    "Split",
    "category_split",
    "class_holdout_split",
    "heldout_instance_split",
    "instance_split",
    "leave_one_out_split",
    "list_splits",
    "make_split",
    "photo_group_split",
    "zero_shot_split",
]

#: Format tag written in every split file.
SPLIT_FORMAT = "sketchsearch.split/2"
#: The evaluation pairs a split can hold: (name of the result, query part, gallery part).
EVALUATIONS: tuple[tuple[str, str, str], ...] = (
    ("main", "query", "gallery"),
    ("zero_shot", "unseen_query", "unseen_gallery"),
)
_MODALITIES = ("sketch", "photo")


@dataclass(frozen=True)
class Split:
    """Named parts of item ids (ordered), the seen / unseen classes, and how the split was made."""

    kind: str
    seed: int
    params: dict[str, Any]
    parts: dict[str, list[str]]
    seen_classes: list[str] = field(default_factory=list)
    unseen_classes: list[str] = field(default_factory=list)
    data: str | None = None

    # ---- access
    def part(self, name: str) -> list[str]:
        """The ids of part ``name`` ([] when the split has no such part)."""
        return list(self.parts.get(name, []))

    @property
    def train(self) -> list[str]:
        return self.part("train")

    @property
    def query(self) -> list[str]:
        return self.part("query")

    @property
    def gallery(self) -> list[str]:
        return self.part("gallery")

    def evaluations(self) -> list[tuple[str, str, str]]:
        """``(result name, query part, gallery part)`` for each evaluation this split holds (both parts
        non-empty); a ``leave_one_out`` split gives ``("main", "gallery", "gallery")``."""
        if self.kind == "leave_one_out":
            return [("main", "gallery", "gallery")] if self.parts.get("gallery") else []
        return [(n, q, g) for n, q, g in EVALUATIONS if self.parts.get(q) and self.parts.get(g)]

    def summary(self) -> dict[str, Any]:
        """Sizes per part and class counts (what a model card records beside the file)."""
        return {
            "kind": self.kind,
            "seed": self.seed,
            **{k: len(v) for k, v in self.parts.items()},
            "seen_classes": len(self.seen_classes),
            "unseen_classes": len(self.unseen_classes),
        }

    # ---- files
    def to_json(self) -> str:
        """Canonical text (sorted keys, parts in their order): the same split gives the same bytes."""
        obj = {
            "format": SPLIT_FORMAT,
            "kind": self.kind,
            "seed": self.seed,
            "params": self.params,
            "data": self.data,
            "parts": self.parts,
            "seen_classes": sorted(self.seen_classes),
            "unseen_classes": sorted(self.unseen_classes),
        }
        return json.dumps(obj, sort_keys=True, indent=1, ensure_ascii=False) + "\n"

    def save(self, path: str | Path) -> Path:
        """Write the split file atomically; returns the path."""
        return atomic_write_text(path, self.to_json())

    @classmethod
    def from_dict(cls, obj: Any, source: str | Path = "<split>") -> Split:
        """A split from its JSON object; :class:`FormatError` naming ``source`` and the key when malformed."""
        if not isinstance(obj, dict) or obj.get("format") != SPLIT_FORMAT:
            raise FormatError(source, "format", f"expected a split file with format {SPLIT_FORMAT!r}")
        parts = obj.get("parts")
        if not isinstance(parts, dict):
            raise FormatError(source, "parts", "expected an object of part name -> list of item ids")
        for name, ids in parts.items():
            if not isinstance(ids, list) or not all(isinstance(x, str) for x in ids):
                raise FormatError(source, f"parts.{name}", "expected a list of item ids (strings)")
        for key in ("seen_classes", "unseen_classes"):
            v = obj.get(key, [])
            if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
                raise FormatError(source, key, "expected a list of class names")
        if not isinstance(obj.get("kind"), str) or obj["kind"] not in SPLITS:
            raise FormatError(source, "kind", f"expected one of {', '.join(SPLITS.names())}")
        return cls(
            kind=obj["kind"],
            seed=int(obj.get("seed", 0)),
            params=dict(obj.get("params") or {}),
            parts={k: list(v) for k, v in parts.items()},
            seen_classes=list(obj.get("seen_classes", [])),
            unseen_classes=list(obj.get("unseen_classes", [])),
            data=obj.get("data"),
        )

    @classmethod
    def load(cls, path: str | Path) -> Split:
        """Read a split file written by :meth:`save`."""
        p = Path(path)
        try:
            obj = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as e:
            raise FormatError(p, None, f"cannot read the split file: {e}") from None
        except json.JSONDecodeError as e:
            raise FormatError(p, None, f"not JSON ({e.msg} at line {e.lineno}); expected a split file") from None
        return cls.from_dict(obj, p)

    def check(self, items: Iterable[Item], source: str | Path = "<split>") -> None:
        """Verify the split against the items it splits: every id is one of theirs, no id is in two parts
        (a leave-one-out split has one part), and no unseen class has train items. FormatError otherwise."""
        label = {it.id: it.label for it in items}
        owner: dict[str, str] = {}
        for name, ids in self.parts.items():
            for i in ids:
                if i not in label:
                    raise FormatError(
                        source, f"parts.{name}", f"id {i!r} is not an item of the data ({len(label)} items)"
                    )
                if i in owner:
                    raise FormatError(source, f"parts.{name}", f"id {i!r} is in both {owner[i]!r} and {name!r}")
                owner[i] = name
        leaked = sorted({str(label[i]) for i in self.train} & set(self.unseen_classes))
        if leaked:
            raise FormatError(source, "parts.train", f"unseen classes {leaked[:5]} have train items")


SplitBuilder = Callable[..., Split]
SPLITS: Registry[Split] = Registry("split kind")


def make_split(kind: str, items: Sequence[Item], **params: Any) -> Split:
    """Build a split of ``items`` with the builder registered as ``kind`` (ValueError lists the kinds)."""
    return SPLITS.get(kind)(items, **params)


def list_splits() -> list[str]:
    return SPLITS.names()


def _classes(items: Iterable[Item]) -> list[str]:
    return sorted({it.label for it in items if it.label is not None})


# ---------------------------------------------------------------------------------------------- builders
@SPLITS.register("category")
def category_split(items: Sequence[Item], queries_per_class: int = 10, seed: int = 0) -> Split:
    """Per class ``queries_per_class`` random queries, the rest gallery; parts in the items' order.

    Seeded per class (``default_rng([seed, crc32(label)])`` permutes that class's items in input order), so a
    class's split does not depend on the other classes. A class with ``n <= queries_per_class`` items gives
    ``n - 1`` queries, keeping one relevant item in the gallery. Unlabelled items are gallery distractors.
    """
    if queries_per_class < 1:
        raise ValueError(f"queries_per_class must be >= 1, got {queries_per_class}")
    by_class: dict[str, list[int]] = defaultdict(list)
    for i, it in enumerate(items):
        if it.label is not None:
            by_class[str(it.label)].append(i)
    query: set[int] = set()
    for lab in sorted(by_class):
        idx = np.asarray(by_class[lab])
        rng = np.random.default_rng([seed, zlib.crc32(lab.encode("utf-8"))])
        take = min(queries_per_class, len(idx) - 1)
        query.update(idx[rng.permutation(len(idx))[:take]].tolist())
    parts = {
        "query": [it.id for i, it in enumerate(items) if i in query],
        "gallery": [it.id for i, it in enumerate(items) if i not in query],
    }
    return Split("category", seed, {"queries_per_class": queries_per_class}, parts, seen_classes=sorted(by_class))


@SPLITS.register("leave_one_out")
def leave_one_out_split(items: Sequence[Item], seed: int = 0) -> Split:
    """Every labelled item in one ``gallery`` part: each queries all the others."""
    ids = [it.id for it in items if it.label is not None]
    return Split("leave_one_out", seed, {}, {"gallery": ids}, seen_classes=_classes(items))


def _choose_unseen(classes: list[str], unseen: float | Sequence[str], seed: int) -> list[str]:
    if isinstance(unseen, bool):
        raise TypeError(f"unseen_classes must be an int, a fraction or a list of class names, got {unseen!r}")
    if isinstance(unseen, (int, np.integer)):
        k = int(unseen)
    elif isinstance(unseen, (float, np.floating)):
        if not 0.0 <= float(unseen) < 1.0:
            raise ValueError(f"unseen_classes as a fraction must be in [0, 1), got {unseen}")
        k = int(round(float(unseen) * len(classes)))
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


def _json_unseen(unseen: float | Sequence[str]) -> int | float | list[str]:
    if isinstance(unseen, (int, np.integer)):
        return int(unseen)
    if isinstance(unseen, (float, np.floating)):
        return float(unseen)
    return [unseen] if isinstance(unseen, str) else sorted(str(c) for c in unseen)


@SPLITS.register("zero_shot")
def zero_shot_split(
    items: Sequence[Item],
    seed: int = 0,
    query_per_class: int = 1,
    gallery_per_class: int | None = None,
    train_fraction: float = 0.5,
    unseen_classes: float | Sequence[str] = 0,
    query_modality: str | None = None,
    gallery_modality: str | None = None,
) -> Split:
    """The generic split: per class (shuffled, keyed by ``(seed, crc32(label))``) the first
    ``floor(train_fraction * n)`` items train (none for an unseen class); of the rest, ``query_per_class``
    become queries (of ``query_modality`` when given), capped so that at least one is left for the gallery;
    the remaining ones (of ``gallery_modality``) are the gallery, at most ``gallery_per_class`` of them.
    Unlabelled items are gallery distractors. Parts are sorted by id; an unseen class's test items are the
    ``unseen_query`` / ``unseen_gallery`` parts. ``unseen_classes``: a count, a fraction in [0, 1), or names.
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
    classes = _classes(items)
    unseen = set(_choose_unseen(classes, unseen_classes, seed))
    by_class: dict[str, list[Item]] = defaultdict(list)
    parts: dict[str, list[str]] = {p: [] for p in ("train", "query", "gallery", "unseen_query", "unseen_gallery")}
    for it in items:
        if it.label is None:
            if gallery_modality in (None, it.modality):
                parts["gallery"].append(it.id)
        else:
            by_class[it.label].append(it)
    for label in classes:
        members = sorted(by_class[label], key=lambda it: it.id)
        rng = np.random.default_rng([seed, zlib.crc32(label.encode("utf-8"))])
        members = [members[i] for i in rng.permutation(len(members))]
        n_train = 0 if label in unseen else int(math.floor(train_fraction * len(members)))
        parts["train"] += [it.id for it in members[:n_train]]
        test = members[n_train:]
        g_pool = [it for it in test if gallery_modality in (None, it.modality)]
        g_ids = {it.id for it in g_pool}
        # queries come first from items that could not be gallery items anyway (stable: shuffled order kept)
        q_pool = sorted((it for it in test if query_modality in (None, it.modality)), key=lambda it: it.id in g_ids)
        g_only = len(g_ids - {it.id for it in q_pool})
        cap = len(q_pool) if g_only > 0 else max(0, len(q_pool) - 1)
        chosen = q_pool[: min(query_per_class, cap)] if g_pool else []
        chosen_ids = {it.id for it in chosen}
        rest = [it.id for it in g_pool if it.id not in chosen_ids]
        prefix = "unseen_" if label in unseen else ""
        parts[prefix + "query"] += [it.id for it in chosen]
        parts[prefix + "gallery"] += rest if gallery_per_class is None else rest[:gallery_per_class]
    params = {
        "query_per_class": query_per_class,
        "gallery_per_class": gallery_per_class,
        "train_fraction": train_fraction,
        "unseen_classes": _json_unseen(unseen_classes),
        "query_modality": query_modality,
        "gallery_modality": gallery_modality,
    }
    return Split(
        "zero_shot",
        seed,
        params,
        {k: sorted(v) for k, v in parts.items()},
        seen_classes=sorted(set(classes) - unseen),
        unseen_classes=sorted(unseen),
    )


@SPLITS.register("class_holdout")
def class_holdout_split(
    items: Sequence[Item],
    seed: int = 0,
    unseen: float = 0.0,  # a fraction (< 1) or a count of classes held out for zero-shot
    query_frac: float = 0.1,
    gallery_frac: float = 0.3,
) -> Split:
    """SketchMate's split (Python's ``random.Random(seed)``): classes shuffled, the first ``unseen`` of them
    unseen; each class's items (in input order) shuffled; a seen class gives ``query_frac`` (>= 1) queries,
    ``gallery_frac`` (>= 1) gallery and the rest ``train``; an unseen class ``query_frac`` queries and the
    rest gallery. Parts keep this order (classes sorted, items shuffled)."""
    rng = random.Random(seed)
    by_class: dict[str, list[str]] = defaultdict(list)
    for it in items:
        if it.label is not None:
            by_class[it.label].append(it.id)
    names = sorted(by_class)
    n_unseen = int(round(unseen * len(names))) if isinstance(unseen, float) and unseen < 1 else int(unseen)
    if not 0 <= n_unseen < len(names):
        raise ValueError(f"unseen={unseen} leaves no seen class among {len(names)}")
    shuffled = names[:]
    rng.shuffle(shuffled)
    unseen_set = set(shuffled[:n_unseen])
    parts: dict[str, list[str]] = {p: [] for p in ("train", "query", "gallery", "unseen_query", "unseen_gallery")}
    for c in names:
        ids = by_class[c][:]
        rng.shuffle(ids)
        nq = max(1, int(round(query_frac * len(ids))))
        if c in unseen_set:
            parts["unseen_query"] += ids[:nq]
            parts["unseen_gallery"] += ids[nq:]
            continue
        ng = max(1, int(round(gallery_frac * len(ids))))
        parts["query"] += ids[:nq]
        parts["gallery"] += ids[nq : nq + ng]
        parts["train"] += ids[nq + ng :]
    params = {"unseen": unseen, "query_frac": query_frac, "gallery_frac": gallery_frac}
    return Split(
        "class_holdout",
        seed,
        params,
        parts,
        seen_classes=[c for c in names if c not in unseen_set],
        unseen_classes=sorted(unseen_set),
    )


def _by_class_modality(items: Sequence[Item]) -> tuple[dict[str, Item], dict[tuple[str, str], list[str]]]:
    by_id = {it.id: it for it in items}
    by: dict[tuple[str, str], list[str]] = defaultdict(list)
    for i in sorted(by_id):
        by[(str(by_id[i].label), by_id[i].modality)].append(i)
    return by_id, by


@SPLITS.register("photo_group")
def photo_group_split(items: Sequence[Item], n_unseen: float = 25, seed: int = 0, heldout: float = 0.2) -> Split:
    """Doodle to Search's zero-shot split of a sketch + photo collection (Sketchy ids ``sketch/<class>/...``,
    ``photo/<class>/<photo id>``; a sketch's ``pair`` is the id of the photo it was drawn from).

    ``n_unseen`` classes (a count, or a fraction < 1): their sketches are ``unseen_query``, their photos
    ``unseen_gallery``. Per seen class, whole photo groups (all sketches of one photo) are held out until at
    least ``heldout`` of the sketches are (``query``), with as many photos (the groups' own first) as the
    ``gallery``; the rest is ``train`` (sketches, then photos, per class)."""
    by_id, by = _by_class_modality(items)
    classes = _classes(items)
    k = int(round(n_unseen * len(classes))) if isinstance(n_unseen, float) and n_unseen < 1 else int(n_unseen)
    if not 0 < k < len(classes):
        raise ValueError(f"n_unseen={n_unseen} must leave seen and unseen classes among {len(classes)}")
    rng = random.Random(seed)
    order = classes[:]
    rng.shuffle(order)
    unseen = set(order[:k])
    parts: dict[str, list[str]] = {p: [] for p in ("train", "query", "gallery", "unseen_query", "unseen_gallery")}
    train_photos: list[str] = []
    for c in classes:
        sketches, photos = by[(c, "sketch")], by[(c, "photo")]
        if c in unseen:
            parts["unseen_query"] += sketches
            parts["unseen_gallery"] += photos
            continue
        groups: dict[str, list[str]] = defaultdict(list)
        for i in sketches:
            groups[str(by_id[i].pair)].append(i)
        want = max(1, round(heldout * len(sketches)))
        held: list[str] = []
        sources: list[str] = []
        for g in rng.sample(sorted(groups), len(groups)):
            if len(held) >= want:
                break
            held += groups[g]
            sources.append(f"photo/{c}/{g}")
        nph = max(1, round(heldout * len(photos)))
        rest = [p for p in photos if p not in sources]
        held_photos = [p for p in sources if p in photos][:nph]
        held_photos += rng.sample(rest, max(0, min(len(rest), nph - len(held_photos))))
        parts["query"] += sorted(held)
        parts["gallery"] += sorted(held_photos)
        parts["train"] += [i for i in sketches if i not in held]
        train_photos += [p for p in photos if p not in held_photos]
    parts["train"] += train_photos
    params = {"n_unseen": n_unseen, "heldout": heldout}
    return Split(
        "photo_group",
        seed,
        params,
        parts,
        seen_classes=[c for c in classes if c not in unseen],
        unseen_classes=sorted(unseen),
    )


@SPLITS.register("heldout_instance")
def heldout_instance_split(
    items: Sequence[Item],
    seed: int = 0,
    heldout_groups: int = 1,
    heldout_photos: int = 5,
    n_classes: int | None = None,
) -> Split:
    """GDH's split (every class trains): per class ``heldout_groups`` photos that sketches were drawn from go
    to the ``gallery`` with all their sketches as ``query`` (fine-grained: each query's own photo is in the
    gallery), plus random photos up to ``heldout_photos`` per class; the rest is ``train``. ``n_classes``: a
    seeded random subset of that many classes (None: all)."""
    by_id, by = _by_class_modality(items)
    rng = random.Random(seed)
    classes = _classes(items)
    if n_classes is not None:
        if not 2 <= n_classes <= len(classes):
            raise ValueError(f"n_classes must be in [2, {len(classes)}], got {n_classes}")
        classes = sorted(rng.sample(classes, n_classes))
    parts: dict[str, list[str]] = {"train": [], "query": [], "gallery": []}
    train_photos: list[str] = []
    for c in classes:
        sketches, photos = by[(c, "sketch")], by[(c, "photo")]
        groups: dict[str, list[str]] = defaultdict(list)
        for i in sketches:
            groups[f"photo/{c}/{by_id[i].pair}"].append(i)
        sources = [g for g in sorted(groups) if g in photos]
        held = rng.sample(sources, min(heldout_groups, max(0, len(sources) - 1)))
        rest = [p for p in photos if p not in held]
        gallery = held + rng.sample(rest, max(0, min(len(rest) - 1, heldout_photos - len(held))))
        query = sorted(i for g in held for i in groups[g])
        parts["query"] += query
        parts["gallery"] += sorted(gallery)
        parts["train"] += [i for i in sketches if i not in query]
        train_photos += [p for p in photos if p not in gallery]
    parts["train"] += train_photos
    params = {"heldout_groups": heldout_groups, "heldout_photos": heldout_photos, "n_classes": n_classes}
    return Split("heldout_instance", seed, params, parts, seen_classes=classes)


@SPLITS.register("instance")
def instance_split(items: Sequence[Item], seed: int = 0, test: str = "test") -> Split:
    """A dataset's own split of sketch <-> photo pairs (``item.meta['split']``, e.g. QMUL's train / test):
    items of split ``test`` give the ``query`` (sketches) and ``gallery`` (photos) parts, the others
    ``train``. Relevance is instance-level: a query's true photo shares its ``pair``."""
    parts: dict[str, list[str]] = {"train": [], "query": [], "gallery": []}
    for it in items:
        if str(it.meta.get("split")) != test:
            parts["train"].append(it.id)
        else:
            parts["query" if it.modality == "sketch" else "gallery"].append(it.id)
    if not parts["query"] or not parts["gallery"]:
        raise ValueError(f"no {test!r} sketches and photos (item.meta['split']) to make an instance split of")
    return Split("instance", seed, {"test": test}, parts, seen_classes=_classes(items))


def builder_params(kind: str) -> Mapping[str, Any]:
    """The keyword parameters of a builder and their defaults (for help texts and error messages)."""
    import inspect

    sig = inspect.signature(SPLITS.get(kind))
    return {n: p.default for n, p in list(sig.parameters.items())[1:]}
