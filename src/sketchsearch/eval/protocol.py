"""The retrieval protocol: split a labelled set, encode, index, search, score; and the benchmark runner.

* :func:`load_labelled` reads any dataset ``read_any`` knows into drawings + labels (unlabelled and empty
  records are skipped and counted);
* :func:`category_split` is the standard split for category retrieval: per class ``queries_per_class``
  queries, the rest gallery, seeded per class (adding or removing a class leaves the other classes' splits
  unchanged); :func:`save_split` / :func:`load_split` keep it in a JSON file of item ids. (Written here
  because ``data/collection.py``'s ``make_splits`` does not exist yet; it can replace this one when it does.)
* :func:`evaluate_retrieval` scores one retriever (or method, or model path) on gallery + queries, or
  leave-one-out on one set (Omniglot protocol: each item queries the rest);
* :func:`recorded_split` / :func:`rebuild_training_split` read a trained model's split from its card and
  rebuild it (item keys per part), so that a model is never evaluated with or against its training items;
* :func:`run_benchmark` runs a table of rows (methods x code lengths) on one dataset split and writes JSON and
  a markdown table atomically (a trained model on its own data: on its card's held-out split instead);
  :func:`evaluate_baseline` is the one-row call behind
  ``sketchsearch evaluate --method itq --bits 64 --data PATH``.

Search goes through :class:`~sketchsearch.retrieval.Retriever`, the path the CLI and the service use.
``Retriever.search_many(q, k)`` is ``search_encoded(encode(q), k)``; the protocol calls the two halves itself
so that encoding and searching are timed apart (``encode_per_s``, ``ms_per_query``); the results are the
same (``tests/test_protocol.py`` checks it). Rankings are complete (``k`` = gallery size) so that mAP@all
and MAP@R are exact; ties in distance are broken by id, ascending, by the index, and gallery ids are the
gallery positions, so every figure is deterministic.
"""

from __future__ import annotations

import datetime as _dt
import json
import platform
import sys
import time
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import __version__
from .._io import atomic_write_text
from ..errors import FormatError, ModelError
from .metrics import (
    acc_at_k,
    map_at_all,
    map_at_k,
    map_at_r,
    n_relevant_from_labels,
    precision_at_k,
    relevance_from_labels,
)

__all__ = [
    "DEFAULT_KS",
    "LabelledSet",
    "Split",
    "TrainingSplit",
    "category_split",
    "evaluate_baseline",
    "evaluate_retrieval",
    "load_labelled",
    "load_split",
    "markdown_table",
    "rebuild_training_split",
    "recorded_split",
    "run_benchmark",
    "save_split",
]

#: cut-offs reported by default: acc@1 (nearest neighbour), @10, P@100 (baseline tables), @200 (DSH / GDH)
DEFAULT_KS: tuple[int, ...] = (1, 10, 100, 200)
SPLIT_FORMAT = 1


# ---------------------------------------------------------------------------------------------- data
@dataclass
class LabelledSet:
    """Drawings (``Sketch``, or the raster / image array for bitmap formats) with their labels and ids."""

    items: list[Any]
    labels: list[str]
    ids: list[str]
    path: str
    skipped: int = 0
    errors: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.items)


def load_labelled(
    path: str | Path, *, fmt: str | None = None, limit: int | None = None, strict: bool = False
) -> LabelledSet:
    """Read every labelled drawing of ``path`` (any format ``sketchsearch.data.formats.read_any`` knows).

    Bad records are skipped and counted (``strict=True`` raises instead, as the readers do); items without a
    label or without content (no strokes and no image) are skipped and counted too. Raises FormatError when
    nothing usable is left.
    """
    from ..data.sources import item_query, load_items

    res = load_items(path, fmt=fmt, strict=strict, limit=limit)
    ds = LabelledSet(items=[], labels=[], ids=[], path=str(path), skipped=res.skipped)
    errors = [str(e) for e in res.errors[:20]]
    for it in res.items:
        has_content = (it.sketch is not None and not it.sketch.is_empty) or it.image is not None
        if it.label is None or not has_content:
            ds.skipped += 1
            continue
        # strokes, or the image as PIL (ink polarity decided from its border, see data.sources.item_query)
        ds.items.append(item_query(it))
        ds.labels.append(str(it.label))
        ds.ids.append(str(it.id))
    ds.errors = errors
    if not ds.items:
        raise FormatError(path, None, f"no labelled drawings found ({ds.skipped} records skipped)")
    return ds


@dataclass(frozen=True)
class Split:
    """Indices (int64, ascending) into a :class:`LabelledSet`: ``query`` and ``gallery`` (disjoint)."""

    query: np.ndarray
    gallery: np.ndarray
    seed: int
    queries_per_class: int

    def describe(self) -> dict[str, Any]:
        return {"kind": "category", "queries_per_class": self.queries_per_class, "seed": self.seed,
                "n_query": len(self.query), "n_gallery": len(self.gallery)}  # fmt: skip


def category_split(labels: Sequence[str], queries_per_class: int = 10, seed: int = 0) -> Split:
    """Per class, ``queries_per_class`` random queries and the rest gallery.

    Seeded per class (``default_rng([seed, crc32(label)])`` permutes that class's items in input order), so a
    class's split does not depend on the other classes. A class with ``n <= queries_per_class`` items gives
    ``n - 1`` queries, keeping one relevant item in the gallery (a class of one item is gallery only).
    """
    if queries_per_class < 1:
        raise ValueError(f"queries_per_class must be >= 1, got {queries_per_class}")
    by_class: dict[str, list[int]] = {}
    for i, lab in enumerate(labels):
        by_class.setdefault(str(lab), []).append(i)
    query: list[int] = []
    for lab in sorted(by_class):
        idx = np.asarray(by_class[lab])
        rng = np.random.default_rng([seed, zlib.crc32(lab.encode("utf-8"))])
        take = min(queries_per_class, len(idx) - 1)
        query.extend(idx[rng.permutation(len(idx))[:take]].tolist())
    q = np.sort(np.asarray(query, dtype=np.int64))
    g = np.setdiff1d(np.arange(len(labels), dtype=np.int64), q)
    return Split(query=q, gallery=g, seed=seed, queries_per_class=queries_per_class)


def save_split(split: Split, path: str | Path, ids: Sequence[str], dataset: str | None = None) -> None:
    """Write the split as item ids (JSON, atomically), so it survives re-reading the data in another order."""
    doc = {"format": SPLIT_FORMAT, **split.describe(), "dataset": dataset,
           "query": [ids[i] for i in split.query], "gallery": [ids[i] for i in split.gallery]}  # fmt: skip
    atomic_write_text(path, json.dumps(doc, indent=1) + "\n")


def load_split(path: str | Path, ids: Sequence[str]) -> Split:
    """Read a split written by :func:`save_split` against the item ids of the loaded data."""
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
        pos = {x: i for i, x in enumerate(ids)}
        q = np.sort(np.asarray([pos[x] for x in doc["query"]], dtype=np.int64))
        g = np.sort(np.asarray([pos[x] for x in doc["gallery"]], dtype=np.int64))
        return Split(
            query=q, gallery=g, seed=int(doc["seed"]), queries_per_class=int(doc["queries_per_class"])
        )
    except (OSError, json.JSONDecodeError, TypeError) as e:
        raise FormatError(path, None, f"not a split file ({e})") from None
    except KeyError as e:
        raise FormatError(path, None, f"split names item or field {e} that the data does not have") from None


# ---------------------------------------------------------------------------------------------- evaluation
def _as_retriever(obj: Any) -> Any:
    from ..methods.base import Method
    from ..retrieval import Retriever

    if isinstance(obj, Method):
        return Retriever(obj)
    if isinstance(obj, (str, Path)):
        return Retriever.from_model(obj)
    if all(hasattr(obj, a) for a in ("encode", "add", "search_encoded")):
        if len(obj) != 0:
            raise ValueError(
                f"evaluate_retrieval needs an empty retriever (it adds the gallery itself); this one holds {len(obj)} items"
            )
        return obj
    raise TypeError(f"expected a Retriever, a Method or a model path, got {type(obj).__name__}")


def evaluate_retrieval(
    retriever_or_method: Any,
    gallery: Sequence[Any],
    gallery_labels: Sequence[Any],
    queries: Sequence[Any] | None = None,
    query_labels: Sequence[Any] | None = None,
    ks: Iterable[int] = DEFAULT_KS,
    leave_one_out: bool = False,
    *,
    modality: str = "sketch",
    query_modality: str | None = None,
    chunk: int = 512,
) -> dict[str, Any]:
    """Score category retrieval: same label = relevant.

    ``retriever_or_method``: an *empty* ``Retriever``, a ``Method`` (a fresh in-memory index is made) or a
    model path/name. The gallery gets ids ``0..n-1`` (its positions). ``leave_one_out``: leave ``queries``
    unset; every gallery item queries the gallery, its own entry removed from its ranking.

    Returns floats ``mAP@all``, ``MAP@R``, and per k in ``ks``: ``mAP@k`` (normalised by #relevant),
    ``mAP@k_min`` (by min(k, #relevant)), ``P@k``, ``acc@k``; ints ``n_queries`` (all queries),
    ``n_excluded`` (queries without any relevant item, left out of every mean), ``n_gallery``;
    ``mean_relevant`` (mean #relevant of the counted queries: P@k cannot exceed min(R, k) / k); timings
    ``ms_per_query`` (search only, per query) and ``encode_per_s`` (drawings encoded per second, gallery and
    queries, rendering included).
    """
    ks = tuple(int(k) for k in ks)
    if leave_one_out:
        if queries is not None or query_labels is not None:
            raise ValueError(
                "leave_one_out queries the gallery with itself: leave queries and query_labels unset"
            )
    elif queries is None or query_labels is None:
        raise ValueError("give queries and query_labels, or set leave_one_out=True")
    n_g = len(gallery)
    if n_g == 0:
        raise ValueError("the gallery is empty")
    if len(gallery_labels) != n_g:
        raise ValueError(f"{len(gallery_labels)} gallery labels for {n_g} gallery items")
    if not leave_one_out:
        assert queries is not None and query_labels is not None
        if len(queries) == 0:
            raise ValueError("no queries")
        if len(query_labels) != len(queries):
            raise ValueError(f"{len(query_labels)} query labels for {len(queries)} queries")
    r = _as_retriever(retriever_or_method)

    t0 = time.perf_counter()
    g_codes = r.encode(gallery, modality)
    n_encoded = n_g
    if leave_one_out:
        q_codes, q_labels = g_codes, list(gallery_labels)
    else:
        q_codes, q_labels = r.encode(queries, query_modality or modality), list(query_labels)  # type: ignore[arg-type]
        n_encoded += len(q_codes)
    t_encode = time.perf_counter() - t0
    g_labels = list(gallery_labels)
    r.add(
        gallery,
        ids=np.arange(n_g, dtype=np.int64),
        labels=[None if x is None else str(x) for x in g_labels],
        encoded=g_codes,
    )

    n_q = len(q_codes)
    n_rel_all = n_relevant_from_labels(g_labels, q_labels, leave_one_out=leave_one_out)
    metric_fns: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
        "mAP@all": map_at_all,
        "MAP@R": map_at_r,
    }
    for k in ks:
        metric_fns[f"mAP@{k}"] = lambda rel, n, k=k: map_at_k(rel, k, n, norm="relevant")
        metric_fns[f"mAP@{k}_min"] = lambda rel, n, k=k: map_at_k(rel, k, n, norm="min")
        metric_fns[f"P@{k}"] = lambda rel, n, k=k: precision_at_k(rel, k, n)
        metric_fns[f"acc@{k}"] = lambda rel, n, k=k: acc_at_k(rel, k, n)
    sums = dict.fromkeys(metric_fns, 0.0)
    r.search_encoded(
        q_codes[:1], 1
    )  # untimed warm-up: a backend may compile its kernels on first use (numba)
    t_search = 0.0
    for s in range(0, n_q, chunk):
        e = min(s + chunk, n_q)
        t1 = time.perf_counter()
        _, ids = r.search_encoded(q_codes[s:e], n_g)
        t_search += time.perf_counter() - t1
        ids = np.asarray(ids, dtype=np.int64)
        if leave_one_out:
            own = np.arange(s, e)[:, None]
            keep = ids != own
            if not (keep.sum(axis=1) == n_g - 1).all():
                raise RuntimeError(
                    "leave-one-out: a query's own item is missing from (or repeated in) its full ranking"
                )
            ids = ids[keep].reshape(e - s, n_g - 1)
        rel = relevance_from_labels(ids, g_labels, q_labels[s:e])
        n_rel = n_rel_all[s:e]
        n_valid = int((n_rel > 0).sum())
        if n_valid:
            for name, fn in metric_fns.items():
                sums[name] += fn(rel, n_rel) * n_valid
    n_valid_all = int((n_rel_all > 0).sum())
    out: dict[str, Any] = {
        name: (v / n_valid_all if n_valid_all else float("nan")) for name, v in sums.items()
    }
    method = getattr(r, "method", None)
    out.update(
        {
            "n_queries": int(n_q),
            "n_excluded": int(n_q - n_valid_all),
            "n_gallery": int(n_g),
            "mean_relevant": float(n_rel_all[n_rel_all > 0].mean()) if n_valid_all else 0.0,
            "leave_one_out": bool(leave_one_out),
            "ks": list(ks),
            "ms_per_query": 1000.0 * t_search / max(n_q, 1),
            "encode_per_s": n_encoded / t_encode if t_encode > 0 else float("inf"),
            "method": getattr(method, "name", None),
            "output": getattr(method, "output", None),
            "code_size": int(method.code_size) if method is not None else None,
            "model_id": getattr(r, "model_id", None),
        }
    )
    return out


# ---------------------------------------------------------------------------------------------- model cards
Key = tuple[str, str]  # (label, item id): how an item of the data is matched with a model's training items


@dataclass
class TrainingSplit:
    """A trained model's data split, rebuilt from what its card records: item keys ``(label, id)`` per part.

    ``kind`` ``"by_class"`` (the SketchMate recipe, :func:`sketchsearch.methods.sketchmate.split_by_class`):
    parts ``train``, ``query``, ``gallery`` (seen classes) and ``unseen_query``, ``unseen_gallery`` (classes
    never trained on). ``kind`` ``"category"`` (the closed-form recipes, :func:`category_split`): ``query``
    and ``gallery``; the gallery is what the model was fitted on (without labels). Each part keeps the
    recipe's order (ties in distance are broken by gallery position, so the order matters).
    """

    kind: str
    data: str
    parts: dict[str, list[Key]]
    params: dict[str, Any]
    seen_classes: list[str] = field(default_factory=list)
    unseen_classes: list[str] = field(default_factory=list)

    @property
    def train(self) -> list[Key]:
        """The items the model was trained (or fitted) on."""
        return self.parts["train"] if self.kind == "by_class" else self.parts["gallery"]

    def describe(self) -> str:
        p = self.params
        if self.kind == "by_class":
            return (f"SketchMate class split of {self.data}, split_seed {p['split_seed']}, query_frac "
                    f"{p['query_frac']}, gallery_frac {p['gallery_frac']}, {len(self.seen_classes)} seen + "
                    f"{len(self.unseen_classes)} unseen classes")  # fmt: skip
        return f"category split of {self.data}, queries_per_class {p['queries_per_class']}, seed {p['seed']}"


def recorded_split(training: Mapping[str, Any]) -> dict[str, Any] | None:
    """What a card's ``training`` record says about the split the model was trained on, or None.

    ``{"kind": "by_class", "data", "split_seed", "query_frac", "gallery_frac", "classes", "unseen_classes",
    "summary"}`` for the SketchMate recipe; ``{"kind": "category", "data", "queries_per_class", "seed",
    "n_query", "n_gallery"}`` for the closed-form recipes (fitted on the gallery of a category split).
    Cards that record no split (the GANs: trained unlabelled on every drawing of a file) give None.
    """
    data = training.get("data")
    if not isinstance(data, str) or not data:
        return None
    sp = training.get("split")
    fields = ("split_seed", "query_frac", "gallery_frac", "classes", "unseen_classes")
    if all(k in training for k in fields) and all(isinstance(training[k], list) for k in fields[-2:]):
        return {"kind": "by_class", "data": data, **{k: training[k] for k in fields},
                "summary": sp if isinstance(sp, dict) else {}}  # fmt: skip
    if isinstance(sp, dict) and sp.get("kind") == "category" and {"queries_per_class", "seed"} <= set(sp):
        return {"kind": "category", "data": data, "queries_per_class": int(sp["queries_per_class"]),
                "seed": int(sp["seed"]), "n_query": sp.get("n_query"), "n_gallery": sp.get("n_gallery")}  # fmt: skip
    return None


_TRAINING_SPLITS: dict[tuple[str, str], TrainingSplit] = {}


def rebuild_training_split(training: Mapping[str, Any], *, data: str | Path | None = None) -> TrainingSplit:
    """Rebuild the split a card's ``training`` record describes (:func:`recorded_split`) from ``data`` (default:
    the card's own ``data`` path), read the way the recipe read it; check it against what the card recorded
    (class lists, part sizes). Raises ModelError when the card records no split, the data is not there, or
    the data no longer gives the recorded split (it changed since training)."""
    rec = recorded_split(training)
    if rec is None:
        raise ModelError("the model card records no training split")
    src = str(data if data is not None else rec["data"])
    if not Path(src).exists():
        raise ModelError(f"the model's training data {src} is not there, so its split cannot be rebuilt")
    key = (str(Path(src).resolve()), json.dumps(rec, sort_keys=True, default=str))
    if key in _TRAINING_SPLITS:
        return _TRAINING_SPLITS[key]
    if rec["kind"] == "by_class":
        from ..methods.sketchmate import load_quickdraw_sketches, split_by_class

        by_class, _ = load_quickdraw_sketches(src)  # the recipe's reader: the same drawings in the same order
        keyed: dict[str, list[Any]] = {
            c: [(str(s.label), str(s.id)) for s in sk] for c, sk in by_class.items()
        }
        seen, unseen = [str(c) for c in rec["classes"]], sorted(str(c) for c in rec["unseen_classes"])
        if sorted(keyed) != sorted(seen + unseen):
            raise ModelError(f"{src} does not hold exactly the {len(seen)} seen + {len(unseen)} unseen classes "
                             f"its model card records ({len(keyed)} classes)")  # fmt: skip
        s = split_by_class(keyed, unseen=len(unseen), query_frac=float(rec["query_frac"]),
                           gallery_frac=float(rec["gallery_frac"]), seed=int(rec["split_seed"]))  # fmt: skip
        if s.classes != seen or s.unseen_classes != unseen:
            raise ModelError(f"{src}: split_seed {rec['split_seed']} does not give the seen/unseen classes "
                             "its model card records")  # fmt: skip
        parts: dict[str, list[Key]] = {"train": s.train, "query": s.query, "gallery": s.gallery,
                                       "unseen_query": s.unseen_query, "unseen_gallery": s.unseen_gallery}  # fmt: skip
        want = {p: rec["summary"][p] for p in parts if isinstance(rec["summary"].get(p), int)}
        params = {k: rec[k] for k in ("split_seed", "query_frac", "gallery_frac")}
        out = TrainingSplit("by_class", rec["data"], parts, params, s.classes, s.unseen_classes)
    else:
        ds = load_labelled(src)  # the closed-form recipes' reader
        keys = list(zip(ds.labels, ds.ids))
        sp = category_split(ds.labels, queries_per_class=rec["queries_per_class"], seed=rec["seed"])
        parts = {"query": [keys[i] for i in sp.query], "gallery": [keys[i] for i in sp.gallery]}
        want = {p: rec[f"n_{p}"] for p in parts if isinstance(rec.get(f"n_{p}"), int)}
        params = {k: rec[k] for k in ("queries_per_class", "seed")}
        out = TrainingSplit("category", rec["data"], parts, params)
    got = {p: len(out.parts[p]) for p in want}
    if got != want:
        raise ModelError(f"{src} no longer gives the split its model card records (part sizes {got}, card "
                         f"{want}): the data changed since training")  # fmt: skip
    _TRAINING_SPLITS[key] = out
    return out


def _same_path(a: str | Path, b: str | Path) -> bool:
    try:
        return Path(a).exists() and Path(a).resolve() == Path(b).resolve()
    except (OSError, ValueError):
        return False


@dataclass
class _Plan:
    """What one row is evaluated on (index arrays into the data set) and what the results must say about it."""

    gallery: np.ndarray
    query: np.ndarray
    split: dict[str, Any]
    zero_shot: tuple[np.ndarray, np.ndarray] | None = None  # (gallery, query) of the unseen classes
    notes: list[str] = field(default_factory=list)


def _class_notes(
    label: str, ds: LabelledSet, *, seen: Iterable[str], unseen: Iterable[str], checked: bool
) -> list[str]:
    """Notes on classes of ``ds`` that the model was trained on (or held out as unseen)."""
    labels = set(ds.labels)
    s, u = sorted(labels & set(seen)), sorted(labels & set(unseen))
    out = []
    if s:
        how = ("none of the drawings evaluated is one of its training drawings" if checked
               else "the drawings may differ from its training drawings (they could not be checked)")  # fmt: skip
        out.append(f"{label}: {len(s)} of the {len(labels)} classes of {ds.path} are classes the model was "
                   f"trained on ({', '.join(s[:5])}{', ...' if len(s) > 5 else ''}): seen classes; {how}")  # fmt: skip
    if u:
        out.append(f"{label}: {len(u)} classes of {ds.path} are classes its training held out (unseen)")
    return out


def _card_plan(label: str, training: Mapping[str, Any], ds: LabelledSet, default: _Plan) -> _Plan:
    """Keep a trained model's own training items out of its evaluation (see :func:`run_benchmark`)."""
    rec = recorded_split(training)
    data = training.get("data")
    same = isinstance(data, str) and _same_path(data, ds.path)
    if rec is None:
        if same:
            default.notes.append(f"{label}: the model was trained on {data} and its card records no split, "
                                 "so its training items could not be left out: the figures are not held-out")  # fmt: skip
        return default
    if rec["kind"] == "by_class" and not set(ds.labels) & {*rec["classes"], *rec["unseen_classes"]}:
        return default  # no class in common, so no training item
    try:  # from the card's data; when that is not here, from this data (perhaps a copy of it)
        ts = rebuild_training_split(training, data=None if Path(rec["data"]).exists() else ds.path)
    except (ModelError, FormatError) as e:
        if same:
            raise ModelError(f"{label} is evaluated on its own training data, but {e}") from None
        default.notes.append(f"{label}: its training drawings could not be identified ({e})")
        default.notes += _class_notes(label, ds, seen=rec.get("classes") or [],
                                      unseen=rec.get("unseen_classes") or [], checked=False)  # fmt: skip
        return default
    where: dict[Key, list[int]] = {}
    for i, k in enumerate(zip(ds.labels, ds.ids)):
        where.setdefault(k, []).append(i)
    part_of = {k: p for p, keys in ts.parts.items() for k in keys}
    n_train = sum(len(where.get(k, ())) for k in ts.train)
    if all(k in part_of for k in where):  # the model's data, or part of it: its own held-out split
        idx = {p: np.asarray([i for k in keys for i in where.get(k, ())], dtype=np.int64)
               for p, keys in ts.parts.items()}  # fmt: skip
        g, q = idx["gallery"], idx["query"]
        split = {"kind": "model_card", "card_split": ts.kind, "data": ts.data, **ts.params}
        if ts.kind == "category":
            note = (f"{label}: evaluated on the split recorded in its model card ({ts.describe()}): the {len(q)} "
                    f"queries are held out; the gallery ({len(g)}) is what the model was fitted on, without "
                    "labels, as --method baselines are; the requested split (queries_per_class, seed, file) does not "
                    "apply to this row")  # fmt: skip
            split.update({"n_query": len(q), "n_gallery": len(g)})
            return _Plan(gallery=g, query=q, split=split, notes=[note])
        zg, zq = idx["unseen_gallery"], idx["unseen_query"]
        notes = [(f"{label}: evaluated on the split recorded in its model card ({ts.describe()}); its {n_train} "
                  f"training drawings in {ds.path} were left out (neither queries nor gallery); the requested "
                  "split (queries_per_class, seed, file) does not apply to this row")]  # fmt: skip
        if not (len(g) and len(q)):  # e.g. only unseen classes here: the figures are the zero-shot ones
            if not (len(zg) and len(zq)):
                raise ValueError(
                    f"{label}: {ds.path} holds no held-out queries and gallery of the model's split"
                )
            notes.append(f"{label}: {ds.path} holds no held-out seen-class queries and gallery; the figures "
                         f"are the unseen classes' (zero-shot): {len(zq)} queries against {len(zg)} gallery")  # fmt: skip
            split.update(
                {"classes": "unseen", "n_query": len(zq), "n_gallery": len(zg), "n_train_excluded": n_train}
            )
            return _Plan(gallery=zg, query=zq, split=split, notes=notes)
        split.update({"classes": "seen", "n_query": len(q), "n_gallery": len(g), "n_train_excluded": n_train})
        text = (f"{label}: mAP@all etc. are the seen classes' held-out queries ({len(q)}) against their "
                f"held-out gallery ({len(g)}); ")  # fmt: skip
        if not (len(zg) and len(zq)):
            notes.append(text + "no unseen-class queries and gallery here, so no zero_shot figures")
            return _Plan(gallery=g, query=q, split=split, notes=notes)
        notes.append(
            text + f"zero_shot: the unseen classes' queries ({len(zq)}) against their gallery ({len(zg)})"
        )
        split.update({"n_unseen_query": len(zq), "n_unseen_gallery": len(zg)})
        return _Plan(gallery=g, query=q, split=split, zero_shot=(zg, zq), notes=notes)
    if n_train:  # some items are the model's training items: leave them out, split the rest as usual
        hits = np.asarray(sorted(i for k in ts.train for i in where.get(k, ())), dtype=np.int64)
        keep = np.setdiff1d(np.arange(len(ds), dtype=np.int64), hits)
        qpc, seed = int(default.split["queries_per_class"]), int(default.split["seed"])
        sub = category_split([ds.labels[i] for i in keep], queries_per_class=qpc, seed=seed)
        split = {**sub.describe(), "n_train_excluded": n_train, "card_split": ts.kind, "data": ts.data}
        notes = [(f"{label}: {n_train} drawings of {ds.path} are the model's training drawings "
                  f"({ts.describe()}) and were left out; the other {len(keep)} were split as usual "
                  f"({qpc} queries per class, seed {seed})")]  # fmt: skip
        notes += _class_notes(label, ds, seen=ts.seen_classes, unseen=ts.unseen_classes, checked=True)
        return _Plan(gallery=keep[sub.gallery], query=keep[sub.query], split=split, notes=notes)
    default.notes += _class_notes(label, ds, seen=ts.seen_classes, unseen=ts.unseen_classes, checked=True)
    return default


# ---------------------------------------------------------------------------------------------- benchmark
_DATA_CACHE: dict[tuple[str, str | None, int | None], LabelledSet] = {}


def _dataset(spec: str | Path | Mapping[str, Any]) -> tuple[LabelledSet, dict[str, Any]]:
    d = {"path": str(spec)} if isinstance(spec, (str, Path)) else dict(spec)
    key = (str(Path(d["path"]).resolve()), d.get("fmt"), d.get("limit"))
    if key not in _DATA_CACHE:
        _DATA_CACHE[key] = load_labelled(d["path"], fmt=d.get("fmt"), limit=d.get("limit"))
    ds = _DATA_CACHE[key]
    desc = {**d, "n_items": len(ds), "n_classes": len(set(ds.labels)), "skipped": ds.skipped}
    return ds, desc


def _split(ds: LabelledSet, spec: Mapping[str, Any] | None) -> Split:
    spec = dict(spec or {})
    qpc, seed, file = int(spec.get("queries_per_class", 10)), int(spec.get("seed", 0)), spec.get("file")
    if file and Path(file).is_file():
        split = load_split(file, ds.ids)
        if (split.seed, split.queries_per_class) != (seed, qpc):
            raise ValueError(f"{file}: split made with seed={split.seed}, queries_per_class={split.queries_per_class}; "
                             f"asked for seed={seed}, queries_per_class={qpc}")  # fmt: skip
        return split
    split = category_split(ds.labels, queries_per_class=qpc, seed=seed)
    if file:
        save_split(split, file, ds.ids, dataset=ds.path)
    return split


def _rendered(items: Sequence[Any], pre: Any, cache: dict[tuple[Any, ...], np.ndarray]) -> Sequence[Any]:
    """Raster-only methods: render each drawing once per (size, line width) and hand rasters to the retriever
    (``make_batch`` passes a raster of the right size through unchanged, so the results are identical)."""
    if tuple(pre.inputs) != ("raster",):
        return items
    key = (id(items), pre.raster_size, pre.line_width)
    if key not in cache:
        from ..data.batching import make_example

        cache[key] = np.stack([make_example(x, pre)["raster"] for x in items])
    return cache[key]  # type: ignore[return-value]


def _build(row: Mapping[str, Any]) -> tuple[Any, bool, Any]:
    """A row -> (method, whether it must be fitted on the gallery, the model card or None)."""
    if row.get("model"):
        from ..model import load_model

        method, card = load_model(row["model"])
        return method, False, card
    from ..methods.base import create_method

    method = create_method(row["method"], **dict(row.get("kwargs", {})))
    if not method.closed_form:
        raise ModelError(
            f"row {row.get('label')!r}: method {row['method']!r} needs training; give a trained 'model' path"
        )
    return method, True, None


def run_benchmark(
    rows: Sequence[Mapping[str, Any]],
    dataset: str | Path | Mapping[str, Any],
    split: Mapping[str, Any] | None = None,
    *,
    ks: Iterable[int] = DEFAULT_KS,
    json_path: str | Path | None = None,
    md_path: str | Path | None = None,
    columns: Sequence[str] = ("mAP@all", "P@100"),
    title: str = "Retrieval benchmark",
    notes: Sequence[str] = (),
    meta: Mapping[str, Any] | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Evaluate every row on one dataset split; write JSON and a markdown table (atomically) when paths are given.

    ``rows``: dicts with ``label`` and either ``method`` (+ ``kwargs``; closed-form methods are fitted on the
    gallery part) or ``model`` (a trained artifact). ``dataset``: a path, or ``{"path", "fmt", "limit"}``.
    ``split``: ``{"queries_per_class": 10, "seed": 0, "file": optional split JSON (loaded if present, else
    written)}``. ``meta`` (e.g. the command line, the machine) is stored as is. Returns ``{"title", "dataset",
    "split", "rows": [{label, ..., metrics, "split", "notes"}], "notes", "environment", "meta", ...}``.

    A ``model`` row is never evaluated with or against its own training items. When its card records the
    split it was trained on (:func:`recorded_split`) and every item of the data belongs to that split (the
    model's own data, or part of it), the row uses that split, rebuilt (:func:`rebuild_training_split`):
    held-out seen-class queries against the held-out gallery, and the unseen classes apart as ``zero_shot``
    (SketchMate recipe), or the recorded queries against the fitted gallery (closed-form recipes). When only
    some items are training items, those are left out and the rest is split as usual. Each case, and classes
    the data shares with the model's training, is said in the row's and the document's ``notes``; the
    document's ``split`` is the rows' split when they share one.
    """
    ks = tuple(ks)
    ds, ds_desc = _dataset(dataset)
    sp = _split(ds, split)
    # (items, labels) per index array, kept for the whole run: the raster cache keys on the list's id()
    parts: dict[bytes, tuple[list[Any], list[str]]] = {}

    def part(idx: np.ndarray) -> tuple[list[Any], list[str]]:
        key = np.asarray(idx, dtype=np.int64).tobytes()
        if key not in parts:
            parts[key] = ([ds.items[i] for i in idx], [ds.labels[i] for i in idx])
        return parts[key]

    cache: dict[tuple[Any, ...], np.ndarray] = {}
    results = []
    all_notes = list(notes)
    for row in rows:
        if "label" not in row or not ({"method", "model"} & set(row)):
            raise ValueError(f"a benchmark row needs 'label' and 'method' or 'model', got {dict(row)}")
        method, fit, card = _build(row)
        plan = _Plan(gallery=sp.gallery, query=sp.query, split=sp.describe())
        training = card.training if card is not None and isinstance(card.training, dict) else {}
        if card is not None:  # a trained model: never search with or among its own training items
            plan = _card_plan(str(row["label"]), training, ds, plan)
        (gallery, g_labels), (queries, q_labels) = part(plan.gallery), part(plan.query)
        g_items = _rendered(gallery, method.preprocessing, cache)
        q_items = _rendered(queries, method.preprocessing, cache)
        fit_info: dict[str, Any] = {}
        if fit:
            method.fit(g_items)
            fit_info = dict(getattr(method, "fit_info", {}))
        res = evaluate_retrieval(method, g_items, g_labels, q_items, q_labels, ks=ks)
        entry = {"label": row["label"], "method": row.get("method", res["method"]), "model": row.get("model"),
                 "kwargs": dict(row.get("kwargs", {})), "trained_on": "gallery" if fit else row.get("trained_on"),
                 "fit": fit_info, **res, "split": plan.split, "notes": plan.notes}  # fmt: skip
        if plan.zero_shot is not None:  # the classes the model never saw, on their own
            (zg, zgl), (zq, zql) = part(plan.zero_shot[0]), part(plan.zero_shot[1])
            entry["zero_shot"] = evaluate_retrieval(
                method, _rendered(zg, method.preprocessing, cache), zgl,
                _rendered(zq, method.preprocessing, cache), zql, ks=ks,
            )  # fmt: skip
        if card is not None:  # a trained artifact: say which one, and what it was trained on
            entry["model_id"] = card.model_id
            entry["trained_on"] = row.get("trained_on") or training.get("data")
        if g_items is not gallery:  # raster cache: encode_per_s then excludes rendering
            entry["encode_per_s_note"] = "drawings rendered once beforehand; encode_per_s excludes rendering"
        results.append(entry)
        all_notes += plan.notes
        if progress:
            line = f"{row['label']}: " + ", ".join(f"{c} {res.get(c, float('nan')):.4f}" for c in columns)
            if "zero_shot" in entry:
                line += "; zero-shot " + ", ".join(
                    f"{c} {entry['zero_shot'].get(c, float('nan')):.4f}" for c in columns
                )
            progress(line)
    splits = [r["split"] for r in results]
    one_split = all(s == splits[0] for s in splits)
    doc_split = splits[0] if one_split else sp.describe()
    if not one_split:
        all_notes.append("the rows are evaluated on different splits: each row's `split` says which")
    doc = {
        "title": title,
        "dataset": ds_desc,
        "split": doc_split,
        "ks": list(ks),
        "notes": all_notes,
        "meta": dict(meta or {}),
        "rows": results,
        "environment": {"sketchsearch": __version__, "python": sys.version.split()[0], "torch": torch.__version__,
                        "numpy": np.__version__, "platform": platform.platform(), "torch_threads": torch.get_num_threads()},
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }  # fmt: skip
    if json_path:
        atomic_write_text(json_path, json.dumps(doc, indent=2, default=_json_default) + "\n")
    if md_path:
        atomic_write_text(md_path, markdown_table(doc, columns))
    return doc


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.integer, np.floating)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def _split_text(sp: Mapping[str, Any]) -> str:
    if sp.get("kind") == "model_card":
        text = f"the model card's split of `{sp['data']}`"
        if sp.get("card_split") == "by_class":
            text += (f" (split_seed {sp['split_seed']}), {sp['n_train_excluded']} training drawings left out: "
                     f"{sp.get('classes', 'seen')} classes' held-out {sp['n_query']} queries against "
                     f"{sp['n_gallery']} gallery")  # fmt: skip
            if "n_unseen_query" in sp:
                text += f"; zero-shot {sp['n_unseen_query']} queries against {sp['n_unseen_gallery']} gallery"
            return text + "."
        return f"{text} (seed {sp['seed']}): {sp['n_query']} queries, {sp['n_gallery']} gallery (the fitted set)."
    text = (f"{sp['queries_per_class']} queries per class, the rest gallery, seed {sp['seed']} "
            f"({sp['n_query']} queries, {sp['n_gallery']} gallery")  # fmt: skip
    if sp.get("n_train_excluded"):
        text += f"; {sp['n_train_excluded']} training drawings of the model left out first"
    return text + ")."


def markdown_table(doc: Mapping[str, Any], columns: Sequence[str] = ("mAP@all", "P@100")) -> str:
    """A results document (from :func:`run_benchmark`) -> markdown: title, data + split line, one table row
    per result (label, code size, the chosen metric columns, search ms/query; a row's zero-shot figures on a
    line of their own), then the notes."""
    ds = doc["dataset"]
    lines = [f"# {doc['title']}", "",
             (f"Data: `{ds['path']}` ({ds['n_items']} drawings, {ds['n_classes']} classes, {ds['skipped']} skipped). "
              f"Split: {_split_text(doc['split'])}"), "",
             "| method | bits/dim | " + " | ".join(columns) + " | search ms/query |",
             "|---|---:|" + "---:|" * len(columns) + "---:|"]  # fmt: skip
    for row in doc["rows"]:
        for label, r in ((row["label"], row), (f"{row['label']} (zero-shot)", row.get("zero_shot"))):
            if r is None:
                continue
            vals = " | ".join(
                f"{r[c]:.4f}" if isinstance(r.get(c), float) else str(r.get(c, "")) for c in columns
            )
            lines.append(f"| {label} | {r['code_size']} | {vals} | {r['ms_per_query']:.3f} |")
    if doc.get("notes"):
        lines += [""] + [f"- {n}" for n in doc["notes"]]
    return "\n".join(lines) + "\n"


def evaluate_baseline(
    method: str,
    bits: int,
    data_path: str | Path,
    split_seed: int = 0,
    queries_per_class: int = 10,
    ks: Iterable[int] = DEFAULT_KS,
    seed: int = 0,
) -> dict[str, Any]:
    """One closed-form baseline (``itq``, ``lsh``; ``pca`` with ``bits`` as its dimension) fitted on the gallery
    of the standard category split of ``data_path`` and evaluated on its queries. Returns the result row
    (``mAP@all``, ``P@100``, ...); this is what ``sketchsearch evaluate --method M --bits B --data PATH`` runs."""
    kwargs: dict[str, Any] = {"dim": bits} if method == "pca" else {"nbits": bits, "seed": seed}
    doc = run_benchmark(
        [{"label": f"{method} {bits}", "method": method, "kwargs": kwargs}],
        data_path,
        {"queries_per_class": queries_per_class, "seed": split_seed},
        ks=ks,
    )
    row = dict(doc["rows"][0])
    row["dataset"], row["split"] = doc["dataset"], doc["split"]
    return row
